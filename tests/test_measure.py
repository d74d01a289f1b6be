"""`sevsim measure` and sevsim.attest.measure: launch digests equal to what the simulated
firmware measures for sevsim guests, and byte for byte equal to sev-snp-measure (the
independent implementation) for OVMF images across modes, vCPUs, vCPU and VMM types and
kernel hashes. The reference and Debian's OVMF are installed by .ci/run; the tests that need
them skip only when they are absent."""

from __future__ import annotations

import contextlib
import itertools
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import measure_entry_point
from ovmf_images import AMDSEV_SECTIONS, make_ovmf
from sevsim.abi import ovmf
from sevsim.attest import measure as m
from sevsim.cli.common import EXIT_ERROR
from sevsim.cli.main import app
from sevsim.errors import ConfigError, OvmfError
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host
from sevsim.testing import launch_digest, snp_context

runner = CliRunner()


def _reference(snp_measure: ModuleType, mode: str, path: Path, vcpus: int, vcpu_type: str | None,
               vmm: str, kernel: Path | None = None, initrd: Path | None = None,
               append: str | None = None, features: int = 1) -> bytes:
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS
    from sevsnpmeasure.vmm_types import VMMType

    sig = CPU_SIGS[vcpu_type] if vcpu_type else 0
    vmm_type = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}[vmm]
    digest: bytes = snp_measure.calc_launch_digest(
        SevMode.from_str(mode), vcpus, sig, str(path), str(kernel) if kernel else None,
        str(initrd) if initrd else None, append, features, vmm_type=vmm_type)
    return digest


# -- OVMF.fd against sev-snp-measure ---------------------------------------------------------------

@pytest.mark.parametrize(("mode", "vcpus", "vmm"), list(itertools.product(
    ("snp", "seves", "sev"), (1, 2, 4), ("qemu", "ec2", "gce"))))
def test_ovmf_digest_equals_sev_snp_measure(snp_measure: ModuleType, ovmf_path: Path, mode: str,
                                            vcpus: int, vmm: str) -> None:
    data = ovmf_path.read_bytes()
    for vcpu_type in ("EPYC-v4", "EPYC-Milan", "EPYC-Genoa"):
        ours = m.ovmf_digest(mode, data, vcpus, vcpu_type, vmm_type=vmm)
        assert ours == _reference(snp_measure, mode, ovmf_path, vcpus, vcpu_type, vmm)
        assert len(ours) == (48 if mode == "snp" else 32)


@pytest.mark.parametrize("vcpu_type", sorted(ovmf.VCPU_SIGNATURES))
def test_every_vcpu_type_equals_sev_snp_measure(snp_measure: ModuleType, ovmf_path: Path,
                                                vcpu_type: str) -> None:
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    if vcpu_type not in CPU_SIGS:
        pytest.skip(f"{vcpu_type} is not in this sev-snp-measure version")
    assert ovmf.vcpu_signature(vcpu_type) == CPU_SIGS[vcpu_type]
    data = ovmf_path.read_bytes()
    for mode in ("snp", "seves"):
        assert m.ovmf_digest(mode, data, 2, vcpu_type) == _reference(
            snp_measure, mode, ovmf_path, 2, vcpu_type, "qemu")


def test_signatures_are_the_cpuid_values_of_the_real_parts() -> None:
    assert ovmf.vcpu_signature("epyc") == 0x00800F12
    assert ovmf.vcpu_signature("EPYC-Rome") == 0x00830F10
    assert ovmf.vcpu_signature("EPYC-Milan") == 0x00A00F11
    assert ovmf.vcpu_signature("EPYC-Genoa") == 0x00A10F10
    assert ovmf.vcpu_signature("EPYC-Turin") == 0x00B00F00
    assert ovmf.cpu_signature(25, 1, 1) == ovmf.vcpu_signature("EPYC-Milan")


def test_explicit_signature_and_guest_features(snp_measure: ModuleType, ovmf_path: Path) -> None:
    data = ovmf_path.read_bytes()
    milan = m.snp_ovmf_digest(data, 2, "EPYC-Milan")
    assert m.snp_ovmf_digest(data, 2, vcpu_sig=0x00A00F11) == milan
    assert m.snp_ovmf_digest(data, 2, vcpu_sig=0x00A00F12) != milan
    for features in (0x1, 0x21, 0x41):
        ours = m.snp_ovmf_digest(data, 2, "EPYC-Milan", guest_features=features)
        assert ours == _reference(snp_measure, "snp", ovmf_path, 2, "EPYC-Milan", "qemu",
                                  features=features)
    assert m.snp_ovmf_digest(data, 2, "EPYC-Milan", guest_features=0x21) != milan


def test_ec2_and_gce_need_no_vcpu_type(snp_measure: ModuleType, ovmf_path: Path) -> None:
    data = ovmf_path.read_bytes()
    for vmm in ("ec2", "gce"):
        assert m.snp_ovmf_digest(data, 2, vmm_type=vmm) == _reference(
            snp_measure, "snp", ovmf_path, 2, None, vmm)
    with pytest.raises(OvmfError, match="vCPU type"):
        m.snp_ovmf_digest(data, 2)


def test_a_changed_image_byte_changes_every_digest(ovmf_path: Path) -> None:
    data = bytearray(ovmf_path.read_bytes())
    before = [m.ovmf_digest(mode, bytes(data), 2, "EPYC") for mode in ("snp", "sev-es", "sev")]
    data[0x1234] ^= 1
    after = [m.ovmf_digest(mode, bytes(data), 2, "EPYC") for mode in ("snp", "sev-es", "sev")]
    assert all(b != a for b, a in zip(before, after, strict=True))


def test_debian_ovmf_metadata_is_parsed(ovmf_path: Path) -> None:
    image = ovmf.OvmfImage.parse(ovmf_path.read_bytes())
    assert image.has_sev_metadata and image.reset_eip
    kinds = {s.type for s in image.sections}
    section = ovmf.SectionType
    assert {section.SNP_SEC_MEM, section.SNP_SECRETS, section.CPUID} <= kinds
    assert image.gpa + len(image.data) == 1 << 32


# -- kernel hashes (synthetic AmdSev-like image) against sev-snp-measure ---------------------------

@pytest.fixture(scope="module")
def direct_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("direct")
    (root / "ovmf.fd").write_bytes(make_ovmf(AMDSEV_SECTIONS, hash_table_gpa=0x80F000 + 0x400))
    (root / "vmlinuz").write_bytes(bytes(range(256)) * 300)
    (root / "initrd").write_bytes(b"initramfs" * 1000)
    return root / "ovmf.fd", root / "vmlinuz", root / "initrd"


@pytest.mark.parametrize(("mode", "vcpus", "vmm", "with_initrd", "append"), [
    ("snp", 1, "qemu", True, "console=ttyS0 root=/dev/vda"),
    ("snp", 4, "ec2", False, None),
    ("snp", 2, "gce", True, ""),
    ("seves", 2, "qemu", True, "quiet"),
    ("seves", 1, "gce", False, "x"),
    ("sev", 1, "qemu", True, "console=ttyS0"),
    ("sev", 1, "qemu", False, None),
])
def test_kernel_hashes_equal_sev_snp_measure(snp_measure: ModuleType, direct_boot: tuple[Path, ...],
                                             mode: str, vcpus: int, vmm: str,
                                             with_initrd: bool, append: str | None) -> None:
    ovmf, kernel, initrd = direct_boot
    ours = m.ovmf_digest(mode, ovmf.read_bytes(), vcpus, "EPYC-Genoa", vmm_type=vmm,
                         kernel=kernel.read_bytes(),
                         initrd=initrd.read_bytes() if with_initrd else None, append=append)
    assert ours == _reference(snp_measure, mode, ovmf, vcpus, "EPYC-Genoa", vmm, kernel,
                              initrd if with_initrd else None, append)
    without = m.ovmf_digest(mode, ovmf.read_bytes(), vcpus, "EPYC-Genoa", vmm_type=vmm)
    assert without != ours
    assert without == _reference(snp_measure, mode, ovmf, vcpus, "EPYC-Genoa", vmm)


def test_the_hashes_table_is_qemus_layout() -> None:
    table = ovmf.KernelHashes.of(b"k", b"i", "c").table()
    assert len(table) == 0xB0 and struct.unpack_from("<H", table, 16)[0] == 0xA8
    assert table[:16] == ovmf.HASH_TABLE_HEADER_GUID.bytes_le
    hashes = ovmf.KernelHashes
    assert hashes.of(b"k", None, None).cmdline == hashes.of(b"k", b"", "").cmdline


# -- sevsim's own guests: the digest the simulated firmware computes ----------------------------

@pytest.mark.parametrize("vcpus", [1, 2])
def test_snp_guest_digest_is_what_the_firmware_measured(build: Any, vcpus: int) -> None:
    elf: Path = build("hello")
    host = Host()
    vm = host.create_vm(mode="snp", memory="16M", vcpus=vcpus)
    vm.load(elf)
    vm.launch()
    measured = snp_context(host.firmware, vm.hv.firmware_handle).launch_digest
    image = parse_elf(elf.read_bytes())
    assert m.guest_digest("snp", image, vm.memory_size, vcpus, kernel_identity()) == measured
    assert m.guest_digest("snp", image, vm.memory_size, vcpus + 1,
                          kernel_identity()) != measured


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_legacy_guest_digest_is_what_the_firmware_measured(build: Any, mode: str) -> None:
    elf: Path = build("hello")
    host = Host()
    vm = host.create_vm(mode=mode, memory="16M", vcpus=2)
    vm.load(elf)
    vm.launch()
    measured = launch_digest(host, vm)
    image = parse_elf(elf.read_bytes())
    assert m.guest_digest(mode, image, vm.memory_size, 2, kernel_identity()) == measured
    other = "sev" if mode == "sev-es" else "sev-es"
    assert m.guest_digest(other, image, vm.memory_size, 2, kernel_identity()) != measured


def test_cli_measures_a_sevsim_guest_as_it_launches(build: Any) -> None:
    elf: Path = build("hello")
    host = Host()
    vm = host.create_vm(mode="snp", memory="16M", vcpus=2)
    vm.load(elf)
    vm.launch()
    measured = snp_context(host.firmware, vm.hv.firmware_handle).launch_digest
    result = runner.invoke(app, ["measure", str(elf), "--mode", "snp", "--vcpus", "2",
                                 "--memory", "16M"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == measured.hex()


# -- the command -------------------------------------------------------------------------------

def test_cli_ovmf_equals_the_reference_cli(ovmf_path: Path, direct_boot: tuple[Path, ...]
                                           ) -> None:
    pytest.importorskip("sevsnpmeasure")
    ovmf, kernel, initrd = direct_boot
    for args in (["--mode", "snp", "--ovmf", str(ovmf_path), "--vcpus", "2",
                  "--vcpu-type", "EPYC-Milan"],
                 ["--mode", "seves", "--ovmf", str(ovmf_path), "--vcpus", "4",
                  "--vcpu-type", "EPYC-Rome", "--vmm-type", "gce"],
                 ["--mode", "snp", "--ovmf", str(ovmf), "--vcpus", "1", "--vcpu-type",
                  "EPYC-v4", "--kernel", str(kernel), "--initrd", str(initrd), "--append",
                  "ro quiet", "--vmm-type", "ec2"]):
        result = runner.invoke(app, ["measure", *args])
        assert result.exit_code == 0, result.output
        reference = subprocess.run([sys.executable, "-m", "sevsnpmeasure.cli", *args],
                                   capture_output=True, text=True, check=True)
        assert result.stdout.strip() == reference.stdout.strip()
    result = runner.invoke(app, ["measure", "--mode", "snp", "--ovmf", str(ovmf_path),
                                 "--vcpu-type", "EPYC", "--guest-features", "21"])
    assert result.exit_code == 0
    assert result.stdout.strip() == m.snp_ovmf_digest(ovmf_path.read_bytes(), 1, "EPYC",
                                                      guest_features=0x21).hex()


@pytest.mark.parametrize(("args", "message"), [
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC-Nope"], "unknown vCPU type"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC", "--vcpus", "0"], "at least one vCPU"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC", "--vmm-type", "xen"], "unknown VMM type"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC", "--mode", "tdx"], "unknown mode"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC", "--kernel", "{kernel}"],
     "no SNP_KERNEL_HASHES"),
    (["--ovmf", "{garbage}", "--vcpu-type", "EPYC"], "not an OVMF image"),
    (["--ovmf", "{nometa}", "--vcpu-type", "EPYC"], "no SEV metadata"),
    (["--ovmf", "{missing}", "--vcpu-type", "EPYC"], "cannot read"),
    (["{missing}"], "cannot read"),
    (["{garbage}", "--mode", "sev"], "ImageError"),
])
def test_cli_bad_input_is_a_typed_error(tmp_path: Path, args: list[str], message: str) -> None:
    files = {"ovmf": tmp_path / "ovmf.fd", "kernel": tmp_path / "k",
             "garbage": tmp_path / "garbage", "nometa": tmp_path / "nometa.fd",
             "missing": tmp_path / "missing"}
    files["ovmf"].write_bytes(make_ovmf(AMDSEV_SECTIONS[:4]))
    files["kernel"].write_bytes(b"kernel")
    files["garbage"].write_bytes(bytes(0x10000))
    files["nometa"].write_bytes(make_ovmf([], metadata=False))
    result = runner.invoke(app, ["measure", *(a.format(**files) for a in args)])
    assert result.exit_code == EXIT_ERROR, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_cli_needs_exactly_one_input(tmp_path: Path) -> None:
    assert runner.invoke(app, ["measure", "--mode", "snp"]).exit_code == 2
    image = tmp_path / "x"
    image.write_bytes(b"")
    both = runner.invoke(app, ["measure", str(image), "--ovmf", str(image)])
    assert both.exit_code == 2


# -- bad images through the API ---------------------------------------------------------------

def test_bad_images_are_typed_errors() -> None:
    good = make_ovmf(AMDSEV_SECTIONS)
    assert m.snp_ovmf_digest(good, 2, "EPYC")
    with pytest.raises(OvmfError, match="whole 4 KiB pages"):
        ovmf.OvmfImage.parse(good[:-1])
    with pytest.raises(OvmfError, match="footer"):
        ovmf.OvmfImage.parse(bytes(len(good)))
    no_meta = ovmf.OvmfImage.parse(make_ovmf([], metadata=False))
    assert not no_meta.has_sev_metadata
    assert m.sev_ovmf_digest(no_meta)  # plain SEV needs no metadata
    with pytest.raises(OvmfError, match="no SEV metadata"):
        m.snp_ovmf_digest(no_meta, 1, "EPYC")
    bad_sig = bytearray(good)
    bad_sig[len(good) - 0x1000] ^= 0xFF
    with pytest.raises(OvmfError, match="ASEV"):
        ovmf.OvmfImage.parse(bytes(bad_sig))
    with pytest.raises(OvmfError, match="unknown type 9"):
        ovmf.OvmfImage.parse(make_ovmf([(0x800000, 0x1000, 9)]))
    with pytest.raises(OvmfError, match="whole pages"):
        ovmf.OvmfImage.parse(make_ovmf([(0x800010, 0x1000, 1)]))
    with pytest.raises(OvmfError, match="reset block"):
        m.snp_ovmf_digest(make_ovmf(AMDSEV_SECTIONS, reset_eip=0), 2, "EPYC")
    assert m.snp_ovmf_digest(make_ovmf(AMDSEV_SECTIONS, reset_eip=0), 1, "EPYC")
    with pytest.raises(OvmfError, match="not inside"):
        m.snp_ovmf_digest(make_ovmf(AMDSEV_SECTIONS, hash_table_gpa=0x90000), 1, "EPYC",
                          kernel=b"k")
    with pytest.raises(OvmfError, match="no SEV hash table"):
        m.seves_ovmf_digest(make_ovmf(AMDSEV_SECTIONS), 1, "EPYC", kernel=b"k")
    with pytest.raises(ConfigError, match="only with a kernel"):
        m.sev_ovmf_digest(good, initrd=b"i")
    with pytest.raises(OvmfError, match="not both"):
        m.snp_ovmf_digest(good, 1, "EPYC", vcpu_sig=1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_footers_fail_only_with_ovmf_error(data: st.DataObject) -> None:
    image = bytearray(make_ovmf(AMDSEV_SECTIONS, size=0x4000))
    tail = len(image) - 0x1000  # the metadata and the footer table live in the last page
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(tail, len(image) - 1))
        image[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(OvmfError):  # anything else (a crash) fails the test
        m.ovmf_digest(data.draw(st.sampled_from(["snp", "sev-es", "sev"])), bytes(image), 2,
                      "EPYC")


# -- the fast path: `sevsim` runs `measure` before importing Typer --------------------------------

@pytest.mark.parametrize("args", [
    ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan"],
    ["--mode", "seves", "--vcpus", "2", "--vcpu-type", "EPYC-Rome"],
    ["--mode", "sev"],
    ["--vmm-type", "ec2", "--vcpus", "2"],
    ["--vmm-type=gce", "--guest-features", "0x21"],
    ["--vcpu-sig", "0xa00f11", "--mode", "sev-es"],
    ["--vcpu-type", "EPYC", "--kernel", "{kernel}", "--initrd", "{initrd}", "--append", "ro"],
])
def test_fast_path_prints_the_typer_commands_digest(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        direct_boot: tuple[Path, Path, Path], args: list[str]) -> None:
    image, kernel, initrd = direct_boot
    argv = ["--ovmf", str(image), *(a.format(kernel=kernel, initrd=initrd) for a in args)]
    status, out, err = measure_entry_point(monkeypatch, capsys, argv)
    typer_result = runner.invoke(app, ["measure", *argv])
    assert (status, err) == (0, "") and typer_result.exit_code == 0
    assert out == typer_result.stdout and len(bytes.fromhex(out.strip())) in (32, 48)


def test_fast_path_measures_a_sevsim_guest(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           build: Any) -> None:
    argv = [str(build("hello")), "--mode", "sev-es", "--vcpus", "2", "--memory", "16M"]
    status, out, _ = measure_entry_point(monkeypatch, capsys, argv)
    assert status == 0 and out == runner.invoke(app, ["measure", *argv]).stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--ovmf", "{garbage}", "--vcpu-type", "EPYC"], "OvmfError: "),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC-Nope"], "OvmfError: unknown vCPU type"),
    (["--ovmf", "{ovmf}", "--mode", "tdx"], "ConfigError: unknown mode 'tdx'"),
    (["--ovmf", "{missing}"], "cannot read {missing}: No such file or directory"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC", "--kernel", "{missing}"], "cannot read"),
])
def test_fast_path_bad_input_is_the_same_typed_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        args: list[str], message: str) -> None:
    files = {"ovmf": tmp_path / "ovmf.fd", "garbage": tmp_path / "garbage",
             "missing": tmp_path / "missing"}
    files["ovmf"].write_bytes(make_ovmf(AMDSEV_SECTIONS[:4]))
    files["garbage"].write_bytes(bytes(0x10000))
    argv = [a.format(**files) for a in args]
    status, out, err = measure_entry_point(monkeypatch, capsys, argv)
    assert (status, out) == (EXIT_ERROR, "")
    assert err.startswith("sevsim measure: " + message.format(**files)), err
    assert err == runner.invoke(app, ["measure", *argv]).stderr


@pytest.mark.parametrize(("args", "status"), [
    (["{ovmf}", "--ovmf", "{ovmf}"], 2),  # both inputs
    (["--mode", "snp"], 2),  # neither
    (["{ovmf}", "--vcpu-type", "EPYC"], 2),  # an OVMF option for an ELF
    (["--ovmf", "{ovmf}", "--bogus"], 2),
    (["--ovmf", "{ovmf}", "--vcpu"], 2),  # no abbreviations, as in Typer
    (["--ovmf", "{ovmf}", "--vcpus", "x"], 2),
    (["--ovmf", "{ovmf}", "--vcpu-sig", "zz"], 2),
    (["--help"], 0),
])
def test_fast_path_hands_usage_errors_and_help_to_typer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        args: list[str], status: int) -> None:
    image = tmp_path / "ovmf.fd"
    image.write_bytes(make_ovmf(AMDSEV_SECTIONS[:4]))
    argv = [a.format(ovmf=image) for a in args]
    code, out, err = measure_entry_point(monkeypatch, capsys, argv)
    assert code == status == runner.invoke(app, ["measure", *argv]).exit_code
    assert "measure [OPTIONS] [elf]" in out + err and "Traceback" not in err


def test_typer_command_documents_every_fast_option() -> None:
    from sevsim.cli import common, fast

    assert fast.EXIT_ERROR == common.EXIT_ERROR
    shown = runner.invoke(app, ["measure", "--help"], terminal_width=200).stdout
    for option in fast.OPTIONS:
        flag = option.name if option.positional else "--" + option.name.replace("_", "-")
        assert flag in shown and option.help.split()[-1] in shown


def test_fast_path_imports_neither_typer_nor_the_simulator(tmp_path: Path) -> None:
    image = tmp_path / "ovmf.fd"
    image.write_bytes(make_ovmf(AMDSEV_SECTIONS))
    heavy = ("typer", "click", "rich", "numpy", "unicorn", "sevsim.host", "sevsim.firmware")
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print([m for m in sys.modules if m.startswith({heavy})]))\n"
            "from sevsim.cli.fast import main\n"
            "sys.argv[0] = 'sevsim'\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code, "measure", "--ovmf", str(image),
                           "--vcpu-type", "EPYC-Milan"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    digest, imported = done.stdout.splitlines()
    assert len(digest) == 96 and imported == "[]"


def test_guids_are_stored_as_efi_does() -> None:
    """abi.ovmf.Guid reads and writes the mixed-endian form uuid.UUID calls bytes_le."""
    import uuid

    for text in (ovmf.FOOTER_TABLE_GUID, ovmf.HASH_KERNEL_GUID,
                 "00112233-4455-6677-8899-aabbccddeeff"):
        guid = ovmf.Guid(text)
        assert guid.bytes_le == uuid.UUID(text).bytes_le
        assert ovmf.Guid.from_bytes_le(guid.bytes_le) == text


# -- a precomputed OVMF hash (sev-snp-measure's snp:ovmf-hash and --snp-ovmf-hash) ------------


def test_the_ovmf_hash_finishes_to_the_full_digest(snp_measure: ModuleType,
                                                   ovmf_path: Path) -> None:
    data = ovmf_path.read_bytes()
    ovmf_hash = m.snp_ovmf_hash(data)
    assert ovmf_hash == snp_measure.calc_snp_ovmf_hash(str(ovmf_path))
    for vmm, vcpu_type in (("qemu", "EPYC-Milan"), ("gce", None), ("ec2", None)):
        full = m.snp_ovmf_digest(data, 2, vcpu_type, vmm_type=vmm)
        assert m.snp_ovmf_digest(data, 2, vcpu_type, vmm_type=vmm, ovmf_hash=ovmf_hash) == full
    other = bytes(range(48))  # what matters is the hash, not the image's own pages
    assert m.snp_ovmf_digest(data, 4, "EPYC-Genoa", ovmf_hash=other) == _reference_from_hash(
        snp_measure, ovmf_path, other)
    with pytest.raises(ConfigError, match="48 bytes"):
        m.snp_ovmf_digest(data, 1, "EPYC", ovmf_hash=b"short")
    with pytest.raises(ConfigError, match="SNP digest"):
        m.ovmf_digest("sev-es", data, 1, "EPYC", ovmf_hash=ovmf_hash)


def _reference_from_hash(snp_measure: ModuleType, path: Path, ovmf_hash: bytes) -> bytes:
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    digest: bytes = snp_measure.calc_launch_digest(
        SevMode.SEV_SNP, 4, CPU_SIGS["EPYC-Genoa"], str(path), None, None, None, 1,
        ovmf_hash.hex())
    return digest


def test_cli_ovmf_hash_modes(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], ovmf_path: Path) -> None:
    status, out, _ = measure_entry_point(monkeypatch, capsys, ["--mode", "snp:ovmf-hash", "--ovmf",
                                                 str(ovmf_path)])
    assert status == 0 and out.strip() == m.snp_ovmf_hash(ovmf_path.read_bytes()).hex()
    args = ["--ovmf", str(ovmf_path), "--vcpus", "2", "--vcpu-type", "EPYC-Milan"]
    status, finished, _ = measure_entry_point(monkeypatch, capsys,
                                              [*args, "--snp-ovmf-hash", out.strip()])
    assert status == 0 and finished == measure_entry_point(monkeypatch, capsys, args)[1]
    status, _, err = measure_entry_point(monkeypatch, capsys,
                                         [*args, "--snp-ovmf-hash", "00" * 47])
    assert status == EXIT_ERROR and "48 bytes" in err
    assert measure_entry_point(monkeypatch, capsys, [*args, "--snp-ovmf-hash", "zz"])[0] == 2
