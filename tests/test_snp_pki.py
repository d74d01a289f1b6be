"""The SNP platform identity: CHIP_ID, VCEK per TCB, the simulated X.509 root, report signing."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_report import AttestationReport, verify_report
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.firmware.snp_pki import (
    ISSUED,
    LEAF_YEARS,
    SnpPki,
    snp_ca_chain,
    snp_vlek_ca_chain,
    vlek_certificate,
)
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import sign_report

MILAN_TCB = TcbVersion(3, 0, 8, 0x73)
TURIN_TCB = TcbVersion(1, 0, 3, 0x48, fmc=2)


def platform(chip: str = "milan", seed: bytes | None = b"chip-1") -> SnpPki:
    preset = PRESETS[chip]
    return SnpPki(preset, MemoryController(1 << 20, EncryptionEngine(preset.tweak)), seed=seed)


def test_same_chip_and_tcb_same_vcek_other_tcb_or_chip_another() -> None:
    a, again, other = platform(), platform(), platform(seed=b"chip-2")
    key = a.vcek_public_key(MILAN_TCB).public_numbers()
    assert key == again.vcek_public_key(MILAN_TCB).public_numbers()
    assert a.chip_id() == again.chip_id() != other.chip_id()
    assert key != other.vcek_public_key(MILAN_TCB).public_numbers()
    assert a.vcek_certificate(MILAN_TCB) == again.vcek_certificate(MILAN_TCB)  # as KDS serves
    newer = TcbVersion(3, 0, 9, 0x73)  # an SNP firmware update: a new VCEK
    assert key != a.vcek_public_key(newer).public_numbers()


@pytest.mark.parametrize(("chip", "tcb", "hwid"), [("milan", MILAN_TCB, 64),
                                                    ("genoa", MILAN_TCB, 64),
                                                    ("turin", TURIN_TCB, 8)])
def test_vcek_certificate_carries_the_tcb_and_chip_and_chains_to_the_simulated_ask(
        chip: str, tcb: TcbVersion, hwid: int) -> None:
    fw = platform(chip)
    cert = SnpCertificate.from_der(fw.vcek_certificate(tcb))  # strict: KDS's exact layout
    product = fw.chip.product
    ask_key = snp_ca_chain(product)[0].public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey)
    cert.verify(ask_key)
    assert cert.tbs.serial == 0 and not cert.is_vlek
    assert cert.tbs.public_key().public_numbers() == fw.vcek_public_key(tcb).public_numbers()
    assert cert.amd.tcb == tcb and cert.amd.hw_id == fw.chip_id()[:hwid]
    assert cert.amd.struct_version == (1 if chip == "turin" else 0)
    assert fw.chip_id()[hwid:] == bytes(64 - hwid)
    other_root = snp_ca_chain("Genoa" if product != "Genoa" else "Milan")[0].public_key()
    assert isinstance(other_root, rsa.RSAPublicKey)
    with pytest.raises(InvalidSignature):
        cert.verify(other_root)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verify_accepts_ark_ask_vcek(tmp_path: Path) -> None:
    fw = platform("milan")
    ask, ark = snp_ca_chain("Milan")
    pem = serialization.Encoding.PEM
    (tmp_path / "ark.pem").write_bytes(ark.public_bytes(pem))
    (tmp_path / "ask.pem").write_bytes(ask.public_bytes(pem))
    der = fw.vcek_certificate(MILAN_TCB)
    (tmp_path / "vcek.der").write_bytes(der)
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", tmp_path / "vcek.der",
                    "-out", tmp_path / "vcek.pem"], check=True)
    ok = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ark.pem", "-untrusted",
                         tmp_path / "ask.pem", tmp_path / "vcek.pem"], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    forged = bytearray(der)
    forged[-10] ^= 1  # inside the signature
    (tmp_path / "forged.der").write_bytes(bytes(forged))
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", tmp_path / "forged.der",
                    "-out", tmp_path / "forged.pem"], check=True)
    bad = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ark.pem", "-untrusted",
                          tmp_path / "ask.pem", tmp_path / "forged.pem"], capture_output=True,
                         check=False)
    assert bad.returncode != 0


def test_signed_report_verifies_with_the_vcek_of_its_reported_tcb() -> None:
    fw = platform()
    report = AttestationReport(report_data=b"nonce".ljust(64, b"\0"),
                               reported_tcb=MILAN_TCB.to_int(), chip_id=fw.chip_id(),
                               cpuid_fam_id=0x19, cpuid_mod_id=0x01, cpuid_step=1)
    signed = sign_report(fw, report.to_bytes(), MILAN_TCB)
    verify_report(signed, fw.vcek_public_key(MILAN_TCB))
    with pytest.raises(InvalidSignature):
        verify_report(signed, fw.vcek_public_key(TcbVersion(3, 0, 9, 0x73)))
    tampered = bytearray(signed)
    tampered[0x50] ^= 1  # REPORT_DATA
    with pytest.raises(InvalidSignature):
        verify_report(bytes(tampered), fw.vcek_public_key(MILAN_TCB))


def test_certificate_table_holds_vcek_ask_ark_in_amds_guid_format() -> None:
    from cryptography import x509

    from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VCEK, parse_cert_table

    fw = platform("genoa")
    entries = dict(parse_cert_table(fw.certificate_table(MILAN_TCB)))
    assert set(entries) == {GUID_VCEK, GUID_ASK, GUID_ARK}
    assert entries[GUID_VCEK] == fw.vcek_certificate(MILAN_TCB)
    ask = x509.load_der_x509_certificate(entries[GUID_ASK])
    ark = x509.load_der_x509_certificate(entries[GUID_ARK])
    assert ask.issuer == ark.subject
    ask_key = ask.public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey)
    SnpCertificate.from_der(entries[GUID_VCEK]).verify(ask_key)


def _bounds(der: bytes) -> tuple[str, str]:
    tbs = SnpCertificate.from_der(der).tbs
    return tbs.not_before.text, tbs.not_after.text


def test_leaf_validity_is_amds_vcek_pattern_and_still_ahead() -> None:
    """VCEK and VLEK alike: issued at one fixed instant (reproducible bytes), valid 7 years as
    KDS issues VCEKs (the real vectors: 2022-09-24 to 2029-09-24...), inside their CAs; and the
    end is years ahead, so verifiers do not silently start reporting them expired."""
    fw = platform("genoa")
    vlek = vlek_certificate("Genoa", "cc.example", MILAN_TCB)
    assert vlek == vlek_certificate("Genoa", "cc.example", MILAN_TCB)
    assert SnpCertificate.from_der(vlek).is_vlek
    end = ISSUED.replace(year=ISSUED.year + LEAF_YEARS)
    assert LEAF_YEARS == 7
    for der in (vlek, fw.vcek_certificate(MILAN_TCB)):
        assert _bounds(der) == (f"{ISSUED:%y%m%d%H%M%S}Z", f"{end:%y%m%d%H%M%S}Z")
    for ca in (*snp_ca_chain("Genoa"), *snp_vlek_ca_chain("Genoa")):
        assert ca.not_valid_before_utc == ISSUED and ca.not_valid_after_utc > end
    now = datetime.datetime.now(datetime.UTC)
    assert end - now > datetime.timedelta(days=365), (
        f"sevsim's VCEKs and VLEKs expire {end:%Y-%m-%d}: move ISSUED in firmware/snp_pki.py")
