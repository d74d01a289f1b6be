"""`sevsim measure --mode snp:svsm` and `sevsim report --svsm`: an SVSM (coconut-svsm) with
the OVMF it runs, laid out and launched as QEMU does. The digest must equal sev-snp-measure
0.0.13's (the independent reference, API and CLI) on every option: vCPU counts and types, the
variable store by size or by file, SVSM images with and without a CAA section, Debian's real
OVMF (combined, and CODE with its VARS) and synthetic ones; the report's MEASUREMENT must be
the simulated firmware's own digest of the same launch; bad input must get a typed error."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import measure_entry_point
from ovmf_images import AMDSEV_SECTIONS, SVSM_SECTIONS, make_ovmf, make_svsm
from sevsim.abi import ovmf
from sevsim.abi.snp_launch import VMSA_GPA, PageType
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.vmsa import Vmsa
from sevsim.attest import measure as m
from sevsim.attest.snp_verify import CertBundle, verify_report_chain
from sevsim.cli.common import EXIT_ERROR
from sevsim.cli.main import app
from sevsim.errors import ConfigError, OvmfError
from sevsim.host.machine import Host
from sevsim.testing import host_frames

runner = CliRunner()
VCPU_CHOICES = [["--vcpu-type", "EPYC-v4"], ["--vcpu-type", "EPYC-Rome"],
                ["--vcpu-type", "EPYC-Milan"], ["--vcpu-type", "EPYC-Genoa"],
                ["--vcpu-type", "EPYC-Turin"], ["--vcpu-sig", "0xa10f11"]]
DEBIAN_SPLIT = (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SVSM images (with and without a CAA section, and bad ones), a synthetic OVMF and a
    variable store of the size Debian's 4M build has."""
    root = tmp_path_factory.mktemp("svsm")
    images = {"svsm": make_svsm(), "svsm-nocaa": make_svsm(SVSM_SECTIONS[:3], entry=0x2010),
              "svsm-nometa": make_svsm(metadata=False), "svsm-noinfo": make_svsm(info=False),
              "svsm-nosecrets": make_svsm([SVSM_SECTIONS[0]]),
              "ovmf": make_ovmf(AMDSEV_SECTIONS, size=0x80000), "vars": bytes(0x84000),
              "garbage": bytes(0x10000)}
    for name, data in images.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in images} | {"missing": root / "missing"}


def _firmware(name: str, files: dict[str, Path], ovmf_path: Path) -> tuple[Path, Path]:
    """The OVMF image and its variable store."""
    if name == "debian":
        return ovmf_path, files["vars"]
    if name == "debian-split":
        if not all(path.exists() for path in DEBIAN_SPLIT):
            pytest.skip("Debian's OVMF_CODE.fd / OVMF_VARS.fd are not installed")
        return DEBIAN_SPLIT
    return files["ovmf"], files["vars"]


def _reference_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                   args: list[str]) -> str:
    """sev-snp-measure's own command line, run in this process."""
    from sevsnpmeasure import cli

    monkeypatch.setattr(sys, "argv", ["sev-snp-measure", *args])
    assert cli.main() == 0
    return capsys.readouterr().out.strip()


def _reference(snp_measure: ModuleType, svsm: Path, firmware: Path, vars_size: int,
               vcpus: int, sig: int) -> bytes:
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vmm_types import VMMType

    digest: bytes = snp_measure.calc_launch_digest(
        SevMode.SEV_SNP_SVSM, vcpus, sig, str(firmware), None, None, None, 1, "",
        VMMType.QEMU, False, str(svsm), vars_size)
    return digest


# -- the digest against sev-snp-measure ----------------------------------------------------------

@pytest.mark.parametrize(("firmware", "svsm", "vars_by"), list(itertools.product(
    ("debian", "debian-split", "synthetic"), ("svsm", "svsm-nocaa"), ("size", "file"))))
def test_cli_equals_sev_snp_measure(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str],
                                    snp_measure: ModuleType, ovmf_path: Path,
                                    files: dict[str, Path], firmware: str, svsm: str,
                                    vars_by: str) -> None:
    image, variables = _firmware(firmware, files, ovmf_path)
    vars_args = (["--vars-size", str(variables.stat().st_size)] if vars_by == "size"
                 else ["--vars-file", str(variables)])
    seen = set()
    for vcpus, vcpu in itertools.product((1, 2, 4), VCPU_CHOICES):
        args = ["--mode", "snp:svsm", "--ovmf", str(image), "--svsm", str(files[svsm]),
                "--vcpus", str(vcpus), *vcpu, *vars_args]
        status, out, err = measure_entry_point(monkeypatch, capsys, args)
        assert (status, err) == (0, ""), err
        assert out.strip() == _reference_cli(monkeypatch, capsys, args)
        sig = (int(vcpu[1], 16) if vcpu[0] == "--vcpu-sig"
               else ovmf.vcpu_signature(vcpu[1]))
        api = m.snp_svsm_digest(files[svsm].read_bytes(), image.read_bytes(), vcpus,
                                vars_size=variables.stat().st_size, vcpu_sig=sig)
        assert api.hex() == out.strip()
        assert api == _reference(snp_measure, files[svsm], image, variables.stat().st_size,
                                 vcpus, sig)
        seen.add(api)
    assert len(seen) == 3 * len(VCPU_CHOICES)  # every count and signature its own digest
    typer_result = runner.invoke(app, ["measure", *args])
    assert typer_result.exit_code == 0, typer_result.output
    assert typer_result.stdout == out


def test_the_fast_path_stays_light(files: dict[str, Path]) -> None:
    """snp:svsm is measured before Typer loads, and pulls in neither cryptography nor the
    simulator."""
    heavy = ("typer", "click", "rich", "numpy", "unicorn", "cryptography", "sevsim.host",
             "sevsim.firmware")
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print([m for m in sys.modules if m.startswith({heavy})]))\n"
            "from sevsim.cli.fast import main\n"
            "sys.argv[0] = 'sevsim'\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code, "measure", "--mode", "snp:svsm",
                           "--ovmf", str(files["ovmf"]), "--svsm", str(files["svsm"]),
                           "--vars-file", str(files["vars"]), "--vcpu-type", "EPYC-Milan"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    digest, imported = done.stdout.splitlines()
    assert len(digest) == 96 and imported == "[]"


def test_every_option_reaches_the_digest(snp_measure: ModuleType, ovmf_path: Path,
                                         files: dict[str, Path], tmp_path: Path) -> None:
    """A changed SVSM byte, OVMF byte, variable store size or a missing CAA section each
    change the digest, and sev-snp-measure agrees on every changed one."""
    svsm, firmware = files["svsm"].read_bytes(), ovmf_path.read_bytes()
    base = m.snp_svsm_digest(svsm, firmware, 2, "EPYC-Milan", vars_size=0x20000)
    flipped_svsm, flipped_ovmf = bytearray(svsm), bytearray(firmware)
    flipped_svsm[0x2345] ^= 1
    flipped_ovmf[0x2345] ^= 1
    (tmp_path / "svsm").write_bytes(flipped_svsm)
    (tmp_path / "ovmf").write_bytes(flipped_ovmf)
    milan = ovmf.vcpu_signature("EPYC-Milan")
    variants = [
        (bytes(flipped_svsm), firmware, 0x20000, tmp_path / "svsm", ovmf_path),
        (svsm, bytes(flipped_ovmf), 0x20000, files["svsm"], tmp_path / "ovmf"),
        (svsm, firmware, 0x21000, files["svsm"], ovmf_path),
        (svsm, firmware, 0, files["svsm"], ovmf_path),
    ]
    digests = {base}
    for svsm_bytes, ovmf_bytes, vars_size, svsm_path, ovmf_file in variants:
        digest = m.snp_svsm_digest(svsm_bytes, ovmf_bytes, 2, "EPYC-Milan",
                                   vars_size=vars_size)
        assert digest == _reference(snp_measure, svsm_path, ovmf_file, vars_size, 2, milan)
        digests.add(digest)
    without_caa = make_svsm(SVSM_SECTIONS[:3])
    digests.add(m.snp_svsm_digest(without_caa, firmware, 2, "EPYC-Milan", vars_size=0x20000))
    assert len(digests) == len(variants) + 2


def test_the_launch_layout(ovmf_path: Path, files: dict[str, Path]) -> None:
    """OVMF ends at 4 GiB, the SVSM ends where the variable store begins; OVMF's pages,
    the SVSM's, the SVSM's sections (CAA as a zero page), then one VMSA per vCPU."""
    firmware = ovmf_path.read_bytes()
    launch = ovmf.SvsmLaunch.parse(files["svsm"].read_bytes(), firmware, 0x84000)
    assert launch.ovmf.gpa == (1 << 32) - len(firmware)
    assert launch.svsm.end == launch.ovmf.gpa - 0x84000
    assert launch.entry == launch.svsm.gpa + 0x1000
    pages = list(ovmf.svsm_launch_pages(launch, 3, 0xA00F11))
    n_ovmf, n_svsm = len(firmware) // 4096, len(launch.svsm.data) // 4096
    assert [p.gpa for p in pages[:n_ovmf + n_svsm]] == [
        *range(launch.ovmf.gpa, 1 << 32, 4096), *range(launch.svsm.gpa, launch.svsm.end, 4096)]
    sections = pages[n_ovmf + n_svsm:-3]
    assert [(p.type, p.gpa) for p in sections] == [
        *((PageType.ZERO, 0x1000000 + i * 4096) for i in range(8)),
        (PageType.SECRETS, 0x1008000), (PageType.CPUID, 0x1009000), (PageType.ZERO, 0x100A000)]
    assert all(p.type is PageType.VMSA and p.gpa == VMSA_GPA for p in pages[-3:])


def test_the_vmsa_is_sev_snp_measures_vmpl0_svsm_state(snp_measure: ModuleType) -> None:
    from sevsnpmeasure.vmsa import VMSA_SVSM

    for eip, sig in ((0xFFC01000, 0xA00F11), (0xFF7BE010, 0x00B00F00)):
        page = ovmf.svsm_vmsa(eip, sig)
        assert page == next(VMSA_SVSM(eip, sig).pages(1))
        vmsa = Vmsa.from_bytes(page)
        assert vmsa.regs["rip"] == eip and vmsa.regs["rdx"] == sig
        assert vmsa.regs["cr0"] == 0x11 and vmsa.regs["sev_features"] == 1
        assert "vmpl" not in vmsa.regs  # VMPL0
        assert vmsa.segments["cs"] == (8, 0xC9B, 0xFFFFFFFF, 0)
        assert vmsa.segments["ds"] == (16, 0xC93, 0xFFFFFFFF, 0)


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "snp:svsm", "--vars-size", "4096"], "needs the SVSM image"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}"], "exactly one of --vars-size"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}", "--vars-size", "4096", "--vars-file",
      "{vars}"], "exactly one of --vars-size"),
    (["--mode", "snp", "--svsm", "{svsm}", "--vars-size", "4096"], "are for --mode snp:svsm"),
    (["--mode", "snp", "--vars-file", "{vars}"], "are for --mode snp:svsm"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}", "--vars-size", "4096", "--vmm-type", "gce"],
     "do not apply"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}", "--vars-size", "4096", "--kernel", "{vars}"],
     "do not apply"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}", "--vars-size", "4096", "--guest-features",
      "0x21"], "do not apply"),
    (["--mode", "snp:svsm", "--svsm", "{svsm}", "--vars-size", "0x1000"], "vars-size"),
])
def test_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                      files: dict[str, Path], args: list[str], message: str) -> None:
    argv = ["--ovmf", str(files["ovmf"]), "--vcpu-type", "EPYC",
            *(a.format(**files) for a in args)]
    status, out, err = measure_entry_point(monkeypatch, capsys, argv)
    typer_result = runner.invoke(app, ["measure", *argv], terminal_width=300)
    assert status == typer_result.exit_code == 2
    assert message in " ".join(typer_result.stderr.split()), typer_result.stderr
    assert "Traceback" not in out + err
    with_elf = runner.invoke(app, ["measure", str(files["garbage"]), "--svsm",
                                   str(files["svsm"])])
    assert with_elf.exit_code == 2 and "are for --ovmf" in " ".join(with_elf.stderr.split())


@pytest.mark.parametrize(("args", "message"), [
    (["--svsm", "{svsm-nometa}", "--vars-size", "4096"],
     "OvmfError: the SVSM image carries no SEV metadata"),
    (["--svsm", "{svsm-noinfo}", "--vars-size", "4096"],
     "OvmfError: not an SVSM image: its footer table has no SVSM_INFO entry"),
    (["--svsm", "{garbage}", "--vars-size", "4096"],
     "OvmfError: the SVSM image: not an OVMF image with a footer GUID table"),
    (["--svsm", "{svsm}", "--vars-size", "1000"],
     "OvmfError: an OVMF variable store is whole 4 KiB pages"),
    (["--svsm", "{svsm}", "--vars-size", "-4096"],
     "OvmfError: an OVMF variable store is whole 4 KiB pages"),
    (["--svsm", "{svsm}", "--vars-size", "4294967296"], "OvmfError: a 4294967296-byte"),
    (["--svsm", "{svsm}", "--vars-file", "{missing}"], "cannot read {missing}"),
    (["--svsm", "{missing}", "--vars-size", "4096"], "cannot read {missing}"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vcpus", "0"], "ConfigError: a VM has at"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vcpu-type", "EPYC-Nope"],
     "OvmfError: unknown vCPU type"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vcpu-type", "EPYC", "--vcpu-sig", "1"],
     "OvmfError: give a vCPU type or a signature, not both"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vcpu-type", ""],
     "OvmfError: unknown vCPU type"),
])
def test_bad_input_is_a_typed_error(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str], files: dict[str, Path],
                                    args: list[str], message: str) -> None:
    argv = ["--mode", "snp:svsm", "--ovmf", str(files["ovmf"]),
            *(a.format(**files) for a in args)]
    if "--vcpu-type" not in argv:
        argv += ["--vcpu-type", "EPYC"]
    status, out, err = measure_entry_point(monkeypatch, capsys, argv)
    assert (status, out) == (EXIT_ERROR, "")
    assert err.startswith("sevsim measure: " + message.format(**files)), err
    assert err == runner.invoke(app, ["measure", *argv]).stderr


def test_qemu_needs_a_vcpu_signature(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str],
                                     files: dict[str, Path]) -> None:
    status, _, err = measure_entry_point(monkeypatch, capsys, [
        "--mode", "snp:svsm", "--ovmf", str(files["ovmf"]), "--svsm", str(files["svsm"]),
        "--vars-size", "4096"])
    assert status == EXIT_ERROR and "signature in RDX" in err


def test_api_refuses_what_it_cannot_measure(files: dict[str, Path]) -> None:
    svsm, firmware = files["svsm"].read_bytes(), files["ovmf"].read_bytes()
    assert m.snp_svsm_digest(svsm, firmware, 1, "EPYC", vars_size=0)
    with pytest.raises(ConfigError, match="snp_svsm_digest"):
        m.ovmf_digest("snp:svsm", firmware, 1, "EPYC")
    with pytest.raises(ConfigError, match="not sevsim guests"):
        m.guest_digest("sev-snp:svsm", None, 1 << 24, 1, b"")  # type: ignore[arg-type]
    with pytest.raises(OvmfError, match="outside the"):
        m.snp_svsm_digest(make_svsm(entry=0x40000), firmware, 1, "EPYC", vars_size=0)
    with pytest.raises(OvmfError, match="does not fit below"):
        m.snp_svsm_digest(svsm, firmware, 1, "EPYC", vars_size=(1 << 32) - 4096)
    with pytest.raises(OvmfError, match="the SVSM image: an OVMF image is whole 4 KiB"):
        m.snp_svsm_digest(svsm, firmware, 1, "EPYC", vars_size=(1 << 32) - len(firmware)
                          - 4096)
    with pytest.raises(OvmfError, match="footer"):
        m.snp_svsm_digest(svsm, files["garbage"].read_bytes(), 1, "EPYC", vars_size=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_svsm_footers_fail_only_with_ovmf_error(data: st.DataObject) -> None:
    image = bytearray(make_svsm(size=0x4000))
    firmware = make_ovmf(AMDSEV_SECTIONS[:4], size=0x4000)
    tail = len(image) - 0x1000  # the metadata and the footer table live in the last page
    for _ in range(data.draw(st.integers(1, 8))):
        image[data.draw(st.integers(tail, len(image) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(OvmfError):  # anything else (a crash) fails the test
        m.snp_svsm_digest(bytes(image), firmware, 2, "EPYC", vars_size=0x2000)


# -- `sevsim report --svsm`: the firmware's own digest -------------------------------------------

@pytest.fixture(scope="module")
def host() -> Host:
    return Host(chip="milan", memory="256M", seed=b"svsm report")


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_the_firmware_measures_what_sev_snp_measure_predicts(
        host: Host, snp_measure: ModuleType, ovmf_path: Path, files: dict[str, Path],
        vcpus: int) -> None:
    svsm = files["svsm"] if vcpus != 2 else files["svsm-nocaa"]
    guest = host.launch_svsm(svsm.read_bytes(), ovmf_path.read_bytes(), 0x84000, vcpus,
                             vcpu_type="EPYC-Genoa", host_data=b"\x11" * 32)
    try:
        blob, table = guest.report(bytes(range(64)))
    finally:
        guest.destroy()
    expected = _reference(snp_measure, svsm, ovmf_path, 0x84000, vcpus,
                          ovmf.vcpu_signature("EPYC-Genoa"))
    report = AttestationReport.from_bytes(blob)
    assert report.measurement == expected == m.snp_svsm_digest(
        svsm.read_bytes(), ovmf_path.read_bytes(), vcpus, "EPYC-Genoa", vars_size=0x84000)
    assert report.report_data == bytes(range(64)) and report.host_data == b"\x11" * 32
    assert verify_report_chain(blob, CertBundle.from_cert_table(table), trust="sevsim").ok


def test_cli_report_equals_measure_and_the_reference(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ovmf_path: Path, files: dict[str, Path], tmp_path: Path) -> None:
    config = ["--ovmf", str(ovmf_path), "--svsm", str(files["svsm"]), "--vars-file",
              str(files["vars"]), "--vcpus", "2", "--vcpu-type", "EPYC-Milan"]
    result = runner.invoke(app, ["report", *config, "-o", str(tmp_path / "r.bin"),
                                 "--certs-out", str(tmp_path / "certs"), "--seed", "x"])
    assert result.exit_code == 0, result.output
    measured = AttestationReport.from_bytes((tmp_path / "r.bin").read_bytes()).measurement
    assert f"MEASUREMENT {measured.hex()}" in result.stderr
    status, out, _ = measure_entry_point(monkeypatch, capsys, ["--mode", "snp:svsm", *config])
    assert status == 0 and out.strip() == measured.hex()
    assert _reference_cli(monkeypatch, capsys, ["--mode", "snp:svsm", *config]) == (
        measured.hex())
    verified = runner.invoke(app, ["verify", str(tmp_path / "r.bin"), "--certs",
                                   str(tmp_path / "certs"), "--trust", "sevsim"])
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--vars-size", "4096"], 2, "come with --svsm"),
    (["--svsm", "{svsm}"], 2, "exactly one of --vars-size"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vars-file", "{vars}"], 2, "exactly one"),
    (["--svsm", "{svsm}", "--vars-size", "4096", "--vmm-type", "ec2"], 2, "do not apply"),
    (["--svsm", "{svsm-nometa}", "--vars-size", "4096"], EXIT_ERROR, "no SEV metadata"),
    (["--svsm", "{svsm-nosecrets}", "--vars-size", "4096"], EXIT_ERROR, "SNP_SECRETS"),
    (["--svsm", "{svsm}", "--vars-file", "{missing}"], EXIT_ERROR, "cannot read"),
])
def test_cli_report_bad_input(files: dict[str, Path], tmp_path: Path, args: list[str],
                              status: int, message: str) -> None:
    argv = ["report", "--ovmf", str(files["ovmf"]), "--vcpu-type", "EPYC", "-o",
            str(tmp_path / "r.bin"), *(a.format(**files) for a in args)]
    result = runner.invoke(app, argv, terminal_width=300)
    assert result.exit_code == status, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (tmp_path / "r.bin").exists()


def test_refused_launches_leave_the_host_as_it_was(host: Host, files: dict[str, Path]) -> None:
    svsm, firmware = files["svsm"].read_bytes(), files["ovmf"].read_bytes()
    free = host_frames(host).free
    beyond_ram = make_svsm([(0x8000000, 0x1000, 2)])  # 128 MiB: past the VM's 64 MiB
    cases: list[tuple[bytes, dict[str, object], str]] = [
        (svsm, {"vcpus": 2}, "signature in RDX"),
        (svsm, {"vars_size": 100, "vcpu_type": "EPYC"}, "whole 4 KiB pages"),
        (files["svsm-nosecrets"].read_bytes(), {"vcpu_type": "EPYC"}, "SNP_SECRETS"),
        (beyond_ram, {"vcpu_type": "EPYC"}, "no room"),
        (files["svsm-noinfo"].read_bytes(), {"vcpu_type": "EPYC"}, "SVSM_INFO"),
    ]
    for image, options, match in cases:
        kwargs: dict[str, object] = {"vars_size": 0x2000, **options}
        with pytest.raises(OvmfError, match=match):
            host.launch_svsm(image, firmware, **kwargs)  # type: ignore[arg-type]
        assert not host.hypervisor.vms
        assert host_frames(host).free == free
    guest = host.launch_svsm(svsm, firmware, 0x2000, vcpu_type="EPYC")  # and still launches
    try:
        assert guest.measurement == m.snp_svsm_digest(svsm, firmware, 1, "EPYC",
                                                      vars_size=0x2000)
    finally:
        guest.destroy()
