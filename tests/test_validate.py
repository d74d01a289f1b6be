"""`sevsim validate`: real Milan reports and sevsim's own reports against TOML policies; each
failing check named; bad policies refused with a typed error; any single relevant change to a
report makes validation fail."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sevsim.abi.snp_report import AttestationReport, SignerInfo
from sevsim.abi.snp_tcb import Generation, PolicyFlags, SigningKey, TcbVersion
from sevsim.attest.snp_policy import (
    Policy,
    TcbMinimum,
    policy_for,
    validate_report,
)
from sevsim.cli.main import app
from sevsim.errors import PolicyError, ReportFormatError

VECTORS = Path(__file__).resolve().parent / "data" / "snp"
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def milan_a() -> bytes:
    return (VECTORS / "milan-v2-a" / "report.bin").read_bytes()


def milan_b() -> bytes:
    return bytes.fromhex((VECTORS / "milan-v2-b" / "report.hex").read_text().strip())


# What the two real reports claim, written out by hand (not read back from the parser), so a
# misparsed field makes the matching policy fail.
@dataclass(frozen=True)
class Real:
    blob: Callable[[], bytes]
    measurement: str
    chip_id: str
    report_data_prefix: str
    tcb: tuple[int, int, int, int]
    firmware: str
    debug: bool


REAL = {
    "milan-v2-a": Real(
        blob=milan_a,
        measurement="b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                    "6bdf8a9ece31a5a608eb0cf2e4872b01",
        chip_id="3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
                "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
        report_data_prefix="0102030405", tcb=(2, 0, 5, 68), firmware="1.49.3", debug=True),
    "milan-v2-b": Real(
        blob=milan_b,
        measurement="7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                    "3e1a0dc39b2c60bd95b9c480cd81841f",
        chip_id="d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
                "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6",
        report_data_prefix="d447b55d197491bfe15cf298f9de9986", tcb=(3, 0, 8, 115),
        firmware="1.52.4", debug=False),
}


def real_policy(name: str, vmpls: tuple[int, ...] = (0,), **override: Any) -> str:
    """A TOML policy that every claim of the named real report satisfies (tightly: TCB and
    firmware minimums equal to what the report shows)."""
    v = replace(REAL[name], **override)
    bl, tee, snp, ucode = v.tcb
    tcb = "".join(f"[tcb.{field}]\nbootloader = {bl}\ntee = {tee}\nsnp = {snp}\n"
                  f"microcode = {ucode}\n" for field in ("reported", "committed", "launch",
                                                         "current"))
    return f"""
[report]
versions = [2]
min_version = 2
signing_keys = ["vcek"]
vmpls = {list(vmpls)}
chip_ids = ["{v.chip_id}"]

[guest]
measurements = ["{"00" * 48}", "{v.measurement}"]
host_data = "{"00" * 32}"
report_data_prefix = "{v.report_data_prefix}"
id_key_digests = ["{"00" * 48}"]
author_key_digests = ["{"00" * 48}"]
family_id = "{"00" * 16}"
image_id = "{"00" * 16}"
min_svn = 0

[guest_policy]
allow_debug = {str(v.debug).lower()}
allow_migrate_ma = false

[platform]
smt_enabled = true
tsme_enabled = false
ecc_enabled = false
rapl_disabled = false
ciphertext_hiding_enabled = false

{tcb}
[firmware]
min_current = "{v.firmware}"
min_committed = "{v.firmware}"
"""


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_reports_pass_a_policy_that_matches_them(name: str) -> None:
    result = validate_report(REAL[name].blob(), Policy.from_toml(real_policy(name)))
    assert result.ok, result.failed
    # every configured check ran: allow_debug = true removes one
    assert len(result.checks) == (38 if REAL[name].debug else 39)
    assert result["guest.measurements"].actual == REAL[name].measurement


def _failed(name: str, blob: bytes | None = None, **override: Any) -> set[str]:
    result = validate_report(blob if blob is not None else REAL[name].blob(),
                             Policy.from_toml(real_policy(name, **override)))
    assert result.ok is not bool(result.failed)
    return set(result.failed)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_reports_fail_exactly_the_named_checks(name: str) -> None:
    report = AttestationReport.from_bytes(REAL[name].blob())
    bl, tee, snp, ucode = REAL[name].tcb
    # a wrong measurement
    assert _failed(name, measurement="ab" * 48) == {"guest.measurements"}
    # a wrong chip
    assert _failed(name, chip_id="cd" * 64) == {"report.chip_ids"}
    # a minimum TCB one above what the report shows, in one component
    assert _failed(name, tcb=(bl, tee, snp + 1, ucode)) == {
        f"tcb.{f}.snp" for f in ("reported", "committed", "launch", "current")}
    # a report whose reported TCB is below the policy's (microcode one lower)
    low = TcbVersion(bl, tee, snp, ucode - 1).to_int()
    assert _failed(name, replace(report, reported_tcb=low).to_bytes()) == {
        "tcb.reported.microcode"}
    # a newer firmware demanded
    assert _failed(name, firmware="1.55.0") == {"firmware.min_current",
                                                "firmware.min_committed"}
    # VMPL 1: refused by default, accepted when the policy says so
    vmpl1 = replace(report, vmpl=1).to_bytes()
    assert _failed(name, vmpl1) == {"report.vmpls"}
    assert _failed(name, vmpl1, vmpls=(0, 1)) == set()
    # a debuggable guest where the policy refuses debugging
    debug = replace(report, policy=report.policy | PolicyFlags.DEBUG).to_bytes()
    assert _failed(name, debug, debug=False) == {"guest_policy.allow_debug"}


def test_the_debug_report_is_refused_by_default() -> None:
    """milan-v2-a really was launched with DEBUG (policy 0xB0000): the default refuses it."""
    result = validate_report(milan_a(), Policy())
    assert result.failed == ("guest_policy.allow_debug",)
    assert "DEBUG" in result["guest_policy.allow_debug"].actual
    assert validate_report(milan_b(), Policy()).ok


def test_the_example_policy_accepts_milan_b_only() -> None:
    policy = Policy.from_toml((ROOT / "examples" / "policy.toml").read_text())
    assert validate_report(milan_b(), policy).ok
    assert "guest.measurements" in validate_report(milan_a(), policy).failed


# -- the Python API --------------------------------------------------------------------------

def test_report_data_exact_and_prefix() -> None:
    report = AttestationReport.from_bytes(milan_b())
    ok = validate_report(report, Policy(report_data=report.report_data))
    assert ok.ok and "guest.report_data" in {c.name for c in ok.checks}
    other = report.report_data[:-1] + bytes([report.report_data[-1] ^ 1])
    assert validate_report(report, Policy(report_data=other)).failed == ("guest.report_data",)
    assert validate_report(report, Policy(report_data_prefix=report.report_data[:8])).ok
    assert validate_report(report, Policy(report_data_prefix=b"\0" * 8)).failed == (
        "guest.report_data_prefix",)


def test_signing_key_version_and_platform_checks() -> None:
    report = AttestationReport.from_bytes(milan_b())
    vlek = replace(report, signer_info=SignerInfo(signing_key=SigningKey.VLEK))
    assert validate_report(vlek, Policy()).ok  # VCEK or VLEK by default
    only_vcek = Policy(signing_keys=frozenset({SigningKey.VCEK}))
    assert validate_report(vlek, only_vcek).failed == ("report.signing_keys",)
    masked = replace(report, signer_info=SignerInfo(signing_key=SigningKey.NONE))
    assert validate_report(masked, Policy()).failed == ("report.signing_keys",)
    assert validate_report(report, Policy(versions=frozenset({3, 5}))).failed == (
        "report.versions",)
    assert validate_report(report, Policy(min_version=3)).failed == ("report.min_version",)
    # bits a v2 report cannot carry fail closed, whatever value the policy wants
    for wanted in (True, False):
        result = validate_report(report, Policy(platform={"alias_check_complete": wanted}))
        assert result.failed == ("platform.alias_check_complete",)
        assert "not reported before version 3" in result.checks[-1].actual
    v3 = replace(report, version=3, cpuid_fam_id=0x19, cpuid_mod_id=0x01,
                 platform_info=report.platform_info | 0x20)
    assert validate_report(v3, Policy(platform={"alias_check_complete": True})).ok
    assert validate_report(report, Policy(platform={"smt_enabled": False})).failed == (
        "platform.smt_enabled",)


def test_guest_policy_restrictions_and_permissions() -> None:
    report = AttestationReport.from_bytes(milan_b())
    strict = Policy.from_toml("[guest_policy]\nrequire_single_socket = true\n"
                              "require_aes_256_xts = true\nallow_smt = false\n")
    assert set(validate_report(report, strict).failed) == {
        "guest_policy.require_single_socket", "guest_policy.require_aes_256_xts",
        "guest_policy.allow_smt"}
    hardened = replace(report, policy=int(PolicyFlags.RESERVED_MBO | PolicyFlags.SINGLE_SOCKET
                                          | PolicyFlags.MEM_AES_256_XTS))
    assert validate_report(hardened, strict).ok
    ma = replace(report, policy=report.policy | PolicyFlags.MIGRATE_MA)
    assert validate_report(ma, Policy()).failed == ("guest_policy.allow_migrate_ma",)
    assert validate_report(ma, Policy.from_toml("[guest_policy]\nallow_migrate_ma = true")).ok


def test_turin_fmc_and_eight_byte_chip_ids() -> None:
    """Turin TCBs have an FMC SPL; its CHIP_ID is an 8-byte hwID, given as 8 bytes."""
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5).to_int()
    turin = AttestationReport(version=3, cpuid_fam_id=0x1A, cpuid_mod_id=0x02,
                              chip_id=bytes(range(1, 9)).ljust(64, b"\0"), reported_tcb=tcb,
                              current_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb)
    assert turin.generation is Generation.TURIN
    policy = Policy.from_toml(f'[report]\nchip_ids = ["{bytes(range(1, 9)).hex()}"]\n'
                              "[tcb.reported]\nfmc = 5\nsnp = 3\n")
    assert validate_report(turin.to_bytes(), policy).ok
    assert validate_report(turin, replace(policy, tcb={"reported": TcbMinimum(fmc=6)})
                           ).failed == ("tcb.reported.fmc",)
    # a Milan TCB has no FMC: the fmc minimum does not apply, the others still do
    milan = AttestationReport.from_bytes(milan_b())
    assert validate_report(milan, Policy(tcb={"reported": TcbMinimum(fmc=200)})).ok


def test_result_json_names_every_check() -> None:
    result = validate_report(milan_a(), Policy.from_toml(real_policy("milan-v2-b")))
    data = json.loads(result.to_json())
    assert data["ok"] is False and data["failed"] == list(result.failed)
    assert {c["name"] for c in data["checks"]} == {c.name for c in result.checks}
    assert all(set(c) == {"name", "passed", "expected", "actual"} for c in data["checks"])


def test_bytes_that_are_not_a_report_raise() -> None:
    with pytest.raises(ReportFormatError):
        validate_report(milan_b()[:-1], Policy())
    bad = bytearray(milan_b())
    bad[0x4C] = 1  # reserved
    with pytest.raises(ReportFormatError):
        validate_report(bytes(bad), Policy())


# -- bad policies fail closed ----------------------------------------------------------------

BAD_POLICIES = [
    ("[gust]\n", "gust"),
    ("measurements = []\n", "measurements"),
    ("[guest]\nmeasurment = ['00']\n", "guest.measurment"),
    ("[guest]\nmeasurements = 'ab'\n", "guest.measurements"),
    ("[guest]\nmeasurements = []\n", "guest.measurements"),
    (f"[guest]\nmeasurements = ['{'zz' * 48}']\n", "guest.measurements[0]"),
    (f"[guest]\nmeasurements = ['{'ab' * 47}']\n", "guest.measurements[0]"),
    (f"[guest]\nmeasurements = ['{'a' * 95}']\n", "guest.measurements[0]"),
    ("[guest]\nmeasurements = [48]\n", "guest.measurements[0]"),
    ("[guest]\nhost_data = '00'\n", "guest.host_data"),
    ("[guest]\nmin_svn = '1'\n", "guest.min_svn"),
    ("[guest]\nmin_svn = -1\n", "guest.min_svn"),
    ("[guest]\nmin_svn = true\n", "guest.min_svn"),
    ("[guest]\nreport_data_prefix = ''\n", "guest.report_data_prefix"),
    (f"[guest]\nreport_data = '{'00' * 64}'\nreport_data_prefix = '00'\n",
     "guest.report_data_prefix"),
    ("[guest_policy]\nallow_debug = 'no'\n", "guest_policy.allow_debug"),
    ("[guest_policy]\nallow_debug = 0\n", "guest_policy.allow_debug"),
    ("[guest_policy]\ndebug = false\n", "guest_policy.debug"),
    ("[report]\nvmpls = [4]\n", "report.vmpls[0]"),
    ("[report]\nversions = [1]\n", "report.versions[0]"),
    ("[report]\nsigning_keys = ['none']\n", "report.signing_keys[0]"),
    ("[report]\nchip_ids = ['0011']\n", "report.chip_ids[0]"),
    ("[report]\nvmpl = 0\n", "report.vmpl"),
    ("[platform]\nsmt = true\n", "platform.smt"),
    ("[tcb.reported]\nsnp = 256\n", "tcb.reported.snp"),
    ("[tcb.reported]\nspl4 = 1\n", "tcb.reported.spl4"),
    ("[tcb.reportd]\nsnp = 1\n", "tcb.reportd"),
    ("[tcb]\nreported = 3\n", "tcb.reported"),
    ("[firmware]\nmin_current = '1.55'\n", "firmware.min_current"),
    ("[firmware]\nmin_current = '1.256.0'\n", "firmware.min_current"),
    ("[firmware]\nmin_current = 1.55\n", "firmware.min_current"),
    ("[firmware]\nmin_build = 3\n", "firmware.min_build"),
    ("report = 1\n", "report"),
    ("[guest\n", "toml"),
]


@pytest.mark.parametrize(("text", "key"), BAD_POLICIES)
def test_bad_policies_raise_a_typed_error_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(text)
    assert caught.value.key == key
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("text", "key"), BAD_POLICIES[2:8:2])
def test_the_cli_exits_125_on_a_bad_policy(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "p.toml").write_text(text)
    (tmp_path / "r.bin").write_bytes(milan_b())
    ran = runner.invoke(app, ["validate", str(tmp_path / "r.bin"), "--policy",
                              str(tmp_path / "p.toml")])
    assert ran.exit_code == 125
    assert "PolicyError" in ran.output and key in ran.output


def test_the_cli_exits_125_on_a_bad_report(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("")
    (tmp_path / "r.bin").write_bytes(milan_b()[:100])
    ran = runner.invoke(app, ["validate", str(tmp_path / "r.bin"), "--policy",
                              str(tmp_path / "p.toml")])
    assert ran.exit_code == 125 and "ReportFormatError" in ran.output
    ran = runner.invoke(app, ["validate", str(tmp_path / "missing.bin"), "--policy",
                              str(tmp_path / "p.toml")])
    assert ran.exit_code == 125 and "cannot read" in ran.output


def test_the_cli_prints_failing_checks_one_per_line_and_json(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(real_policy("milan-v2-b"))
    (tmp_path / "a.bin").write_bytes(milan_a())
    (tmp_path / "b.hex").write_text(milan_b().hex())
    ok = runner.invoke(app, ["validate", str(tmp_path / "b.hex"), "-p", str(tmp_path / "p.toml")])
    assert ok.exit_code == 0 and "FAIL" not in ok.stdout
    bad = runner.invoke(app, ["validate", str(tmp_path / "a.bin"), "-p",
                              str(tmp_path / "p.toml")])
    assert bad.exit_code == 1
    lines = [line for line in bad.stdout.splitlines() if line.startswith("FAIL ")]
    named = {re.match(r"FAIL (\S+):", line).group(1) for line in lines}  # type: ignore[union-attr]
    expected = set(validate_report(milan_a(), Policy.from_toml(real_policy("milan-v2-b"))
                                   ).failed)
    assert named == expected and len(lines) == len(expected)
    assert {"guest.measurements", "guest_policy.allow_debug", "report.chip_ids"} <= named
    js = runner.invoke(app, ["validate", str(tmp_path / "a.bin"), "-p",
                             str(tmp_path / "p.toml"), "--json"])
    assert js.exit_code == 1
    assert set(json.loads(js.stdout)["failed"]) == expected


# -- reports from sevsim's own SNP platform --------------------------------------------------

@pytest.mark.parametrize("chip", ["milan", "turin"])
def test_sevsim_reports_validate(build: Callable[..., Path], tmp_path: Path, chip: str) -> None:
    elf = build("report")
    nonce = bytes(range(32))
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", str(elf), "--mode", "snp",
                          "--chip", chip, "--memory", "16M", "--report-data", nonce.hex(),
                          "--host-data", "5a" * 32, "--report-out", str(tmp_path / "r.bin")],
                         capture_output=True, text=True, timeout=180, check=False)
    assert ran.returncode == 0, ran.stderr
    digest = re.search(r"SNP launch digest ([0-9a-f]{96})", ran.stderr).group(1)  # type: ignore[union-attr]
    report = AttestationReport.from_bytes((tmp_path / "r.bin").read_bytes())
    tcb = report.tcb("reported_tcb")
    fmc = f"fmc = {tcb.fmc}\n" if chip == "turin" else ""
    policy = (f'[guest]\nmeasurements = ["{digest}"]\nhost_data = "{"5a" * 32}"\n'
              f'report_data_prefix = "{nonce.hex()}"\n'
              f"[tcb.reported]\nsnp = {tcb.snp}\nmicrocode = {tcb.microcode}\n{fmc}"
              f"[report]\nchip_ids = [\"{report.chip_id.hex()}\"]\n")
    (tmp_path / "p.toml").write_text(policy)
    ok = runner.invoke(app, ["validate", str(tmp_path / "r.bin"), "-p", str(tmp_path / "p.toml"),
                             "--json"])
    assert ok.exit_code == 0, ok.output
    names = {c["name"] for c in json.loads(ok.stdout)["checks"]}
    assert {"guest.measurements", "guest.host_data", "guest.report_data_prefix",
            "tcb.reported.snp", "report.vmpls", "guest_policy.allow_debug"} <= names
    assert ("tcb.reported.fmc" in names) is (chip == "turin")
    (tmp_path / "q.toml").write_text(policy.replace(digest, "00" * 48))
    bad = runner.invoke(app, ["validate", str(tmp_path / "r.bin"), "-p",
                              str(tmp_path / "q.toml")])
    assert bad.exit_code == 1 and "FAIL guest.measurements:" in bad.stdout


# -- property: any single relevant change fails validation ------------------------------------

def _base() -> AttestationReport:
    """milan-v2-b with an ID block's worth of identity and a hardened guest policy, so every
    check has something to pin."""
    report = AttestationReport.from_bytes(milan_b())
    return replace(report, guest_svn=5, family_id=b"F" * 16, image_id=b"I" * 16,
                   host_data=b"H" * 32, id_key_digest=b"K" * 48, author_key_digest=b"A" * 48,
                   signer_info=SignerInfo(author_key_en=True),
                   policy=int(PolicyFlags.RESERVED_MBO | PolicyFlags.SINGLE_SOCKET
                              | PolicyFlags.MEM_AES_256_XTS | PolicyFlags.RAPL_DIS
                              | PolicyFlags.CIPHERTEXT_HIDING | PolicyFlags.PAGE_SWAP_DISABLE))


BASE = _base()
PINNED = policy_for(BASE)


def _other_bytes(size: int, original: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size).filter(lambda b: b != original)


def _tcb_lowered(name: str) -> st.SearchStrategy[tuple[dict[str, object], set[str]]]:
    tcb = BASE.tcb(f"{name}_tcb")
    present = [c for c in ("bootloader", "tee", "snp", "microcode")
               if getattr(tcb, c) > 0]

    def lower(args: tuple[str, int]) -> tuple[dict[str, object], set[str]]:
        component, value = args
        new = replace(tcb, **{component: value})
        return {f"{name}_tcb": new.to_int()}, {f"tcb.{name}.{component}"}

    return st.sampled_from(present).flatmap(
        lambda c: st.tuples(st.just(c), st.integers(0, getattr(tcb, c) - 1))).map(lower)


def _flag_cleared() -> st.SearchStrategy[tuple[dict[str, object], set[str]]]:
    from sevsim.attest.snp_policy import PERMISSIONS, RESTRICTIONS

    cleared = st.sampled_from(sorted(RESTRICTIONS)).map(
        lambda k: ({"policy": BASE.policy & ~RESTRICTIONS[k]}, {f"guest_policy.{k}"}))
    forbidden = st.sampled_from([k for k in sorted(PERMISSIONS)
                                 if PERMISSIONS[k] not in PINNED.allowed_flags]).map(
        lambda k: ({"policy": BASE.policy | PERMISSIONS[k]}, {f"guest_policy.{k}"}))
    return cleared | forbidden


def _platform_flipped() -> st.SearchStrategy[tuple[dict[str, object], set[str]]]:
    from sevsim.attest.snp_policy import PLATFORM_BITS

    return st.sampled_from(sorted(PINNED.platform)).map(
        lambda k: ({"platform_info": BASE.platform_info ^ PLATFORM_BITS[k][0]},
                   {f"platform.{k}"}))


def _lower_firmware(prefix: str) -> st.SearchStrategy[tuple[dict[str, object], set[str]]]:
    major, minor, build = (getattr(BASE, f"{prefix}_{p}") for p in ("major", "minor", "build"))

    def change(v: int) -> tuple[dict[str, object], set[str]]:
        return ({f"{prefix}_major": v >> 16, f"{prefix}_minor": (v >> 8) & 0xFF,
                 f"{prefix}_build": v & 0xFF}, {f"firmware.min_{prefix}"})

    return st.integers(0, (major << 16 | minor << 8 | build) - 1).map(change)


MUTATIONS = st.one_of(
    _other_bytes(48, BASE.measurement).map(lambda b: ({"measurement": b},
                                                      {"guest.measurements"})),
    _other_bytes(32, BASE.host_data).map(lambda b: ({"host_data": b}, {"guest.host_data"})),
    _other_bytes(64, BASE.report_data).map(lambda b: ({"report_data": b},
                                                      {"guest.report_data"})),
    _other_bytes(48, BASE.id_key_digest).map(lambda b: ({"id_key_digest": b},
                                                        {"guest.id_key_digests"})),
    _other_bytes(48, BASE.author_key_digest).map(lambda b: ({"author_key_digest": b},
                                                            {"guest.author_key_digests"})),
    _other_bytes(16, BASE.family_id).map(lambda b: ({"family_id": b}, {"guest.family_id"})),
    _other_bytes(16, BASE.image_id).map(lambda b: ({"image_id": b}, {"guest.image_id"})),
    _other_bytes(64, BASE.chip_id).map(lambda b: ({"chip_id": b}, {"report.chip_ids"})),
    st.integers(0, BASE.guest_svn - 1).map(lambda v: ({"guest_svn": v}, {"guest.min_svn"})),
    st.integers(1, 3).map(lambda v: ({"vmpl": v}, {"report.vmpls"})),
    st.just(({"signer_info": SignerInfo(True, False, SigningKey.VLEK)},
             {"report.signing_keys"})),
    *(_tcb_lowered(name) for name in ("reported", "committed", "launch", "current")),
    _flag_cleared(),
    _platform_flipped(),
    _lower_firmware("current"),
    _lower_firmware("committed"),
)


def test_the_pinned_base_report_passes() -> None:
    result = validate_report(BASE.to_bytes(), PINNED)
    assert result.ok and len(result.checks) >= 40


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(MUTATIONS)
def test_any_single_relevant_change_fails_exactly_its_check(
        mutation: tuple[dict[str, object], set[str]]) -> None:
    changes, expected = mutation
    mutated = replace(BASE, **changes).to_bytes()  # type: ignore[arg-type]
    result = validate_report(mutated, PINNED)
    assert not result.ok
    assert set(result.failed) == expected
