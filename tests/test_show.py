"""`sevsim show`: every field of v2, v3 and v5 reports by name, decoded per generation, as a
table and as JSON; hex input; malformed input refused with a typed error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.snp_report import OFFSETS, AttestationReport, SignerInfo
from sevsim.abi.snp_tcb import (
    Generation,
    PlatformInfo,
    PolicyFlags,
    SigningKey,
    SnpPolicy,
    TcbVersion,
)
from sevsim.attest.snp_show import report_fields
from sevsim.attest.snp_verify import load_report

VECTORS = Path(__file__).resolve().parent / "data" / "snp"
KEY = ec.generate_private_key(ec.SECP384R1())


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def v5_turin() -> AttestationReport:
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    return AttestationReport(
        version=5, guest_svn=7, policy=SnpPolicy(PolicyFlags.SMT | PolicyFlags.DEBUG, 1, 55)
        .to_int(), family_id=b"F" * 16, image_id=b"I" * 16, vmpl=1,
        current_tcb=tcb.to_int(), platform_info=int(PlatformInfo.SMT_EN | PlatformInfo.TIO_EN),
        signer_info=SignerInfo(True, False, SigningKey.VLEK), report_data=bytes(range(64)),
        measurement=b"\x11" * 48, host_data=b"\x22" * 32, reported_tcb=tcb.to_int(),
        cpuid_fam_id=0x1A, cpuid_mod_id=0x02, cpuid_step=1, chip_id=b"\x99" * 8 + bytes(56),
        committed_tcb=tcb.to_int(), current_build=21, current_minor=55, current_major=1,
        committed_build=20, committed_minor=55, committed_major=1, launch_tcb=tcb.to_int(),
        launch_mit_vector=0x3, current_mit_vector=0x7).sign(KEY)


def v3_genoa() -> AttestationReport:
    tcb = TcbVersion(bootloader=9, tee=0, snp=21, microcode=72)
    return AttestationReport(version=3, reported_tcb=tcb.to_int(), current_tcb=tcb.to_int(),
                             cpuid_fam_id=0x19, cpuid_mod_id=0x11, chip_id=b"\x42" * 64
                             ).sign(KEY)


def test_v5_turin_fields_are_all_named_and_decoded(tmp_path: Path) -> None:
    path = tmp_path / "report.bin"
    path.write_bytes(v5_turin().to_bytes())
    ran = sevsim("show", path, "--json")
    assert ran.returncode == 0, ran.stderr
    fields = json.loads(ran.stdout)
    named = {n for n in OFFSETS if not n.startswith("reserved_")}
    assert named <= fields.keys()
    assert fields["product"] == "Turin" and fields["version"] == 5
    assert fields["reported_tcb"] == {"raw": f"0x{v5_turin().reported_tcb:016x}", "fmc": 5,
                                      "bootloader": 1, "tee": 2, "snp": 3, "microcode": 4}
    assert fields["policy"]["debug"] is True and fields["policy"]["smt"] is True
    assert fields["policy"]["migrate_ma"] is False
    assert (fields["policy"]["abi_major"], fields["policy"]["abi_minor"]) == (1, 55)
    assert fields["platform_info"]["smt_en"] and fields["platform_info"]["tio_en"]
    assert not fields["platform_info"]["tsme_en"]
    assert fields["signer_info"] == {"author_key_en": True, "mask_chip_key": False,
                                     "signing_key": "VLEK"}
    assert fields["launch_mit_vector"] == 3 and fields["current_mit_vector"] == 7
    assert fields["current_version"] == "1.55.21" and fields["committed_version"] == "1.55.20"
    assert fields["chip_id"] == "99" * 8 + "00" * 56
    assert fields["measurement"] == "11" * 48 and fields["vmpl"] == 1
    table = sevsim("show", path)
    assert table.returncode == 0, table.stderr
    for row in ("reported_tcb.fmc", "policy.debug", "signer_info.signing_key",
                "current_mit_vector", "cpuid_fam_id", "report_id_ma", "signature_r"):
        assert row in table.stdout, row


def test_v3_genoa_and_real_v2_milan() -> None:
    fields = report_fields(v3_genoa())
    assert fields["product"] == "Genoa"
    assert fields["reported_tcb"] == {"raw": f"0x{v3_genoa().reported_tcb:016x}",
                                      "bootloader": 9, "tee": 0, "snp": 21, "microcode": 72}
    real = AttestationReport.from_bytes((VECTORS / "milan-v2-a" / "report.bin").read_bytes())
    fields = report_fields(real)
    assert fields["version"] == 2 and fields["product"] == "Milan"
    assert fields["reported_tcb"]["microcode"] == 68  # as the VCEK certifies (ucodeSPL 68)
    assert fields["signer_info"]["signing_key"] == "VCEK"


def test_hex_input_equals_binary(tmp_path: Path) -> None:
    hex_path = VECTORS / "milan-v2-b" / "report.hex"
    blob = load_report(hex_path.read_bytes())
    (tmp_path / "report.bin").write_bytes(blob)
    from_hex = sevsim("show", "--json", hex_path)
    from_bin = sevsim("show", "--json", tmp_path / "report.bin")
    assert from_hex.returncode == 0, from_hex.stderr
    assert from_hex.stdout == from_bin.stdout
    assert json.loads(from_hex.stdout)["reported_tcb"]["microcode"] \
        == 115


@pytest.mark.parametrize("case", ["truncated", "oversized", "version", "reserved", "text"])
def test_malformed_reports_are_refused(tmp_path: Path, case: str) -> None:
    blob = bytearray(v3_genoa().to_bytes())
    if case == "truncated":
        blob = blob[:-3]
    elif case == "oversized":
        blob += b"\0"
    elif case == "version":
        blob[0] = 9
    elif case == "reserved":
        blob[OFFSETS["reserved_0x330"][0]] = 1
    else:
        blob = bytearray(b"not a report at all\n")
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(blob))
    ran = sevsim("show", path)
    assert ran.returncode == 125
    assert "ReportFormatError" in ran.stderr and "Traceback" not in ran.stderr


def test_wrong_product_for_tcb_decoding_is_shown_not_crashed() -> None:
    """A Turin TCB decoded as Milan sets Milan's reserved bytes: the row says so."""
    fields = report_fields(v5_turin(), generation=None)
    assert "error" not in fields["reported_tcb"]
    milan = report_fields(v5_turin(), Generation.MILAN)
    assert "error" in milan["reported_tcb"]
