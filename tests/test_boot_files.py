"""Boot data files, as GRUB loads an initrd: the host offers them on the VM's boot disk, the
guest kernel reads each once, measures it into PCR 9 when the VM has a vTPM and hands the very
same bytes to the program (sev_boot_file). The log names each file; its replay is the TPM's
PCR 9 and tpm2_eventlog agrees; a changed file moves PCR 9 alone; the host cannot swap a file
after the kernel read it; bad files are refused before anything changes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sevsim import Host, migrate
from sevsim.abi.tcg_eventlog import EventLog, EventType, replay
from sevsim.abi.tpm2 import HashAlg
from sevsim.abi.tpm_channel import (
    MAX_BOOT_FILE_NAME,
    MAX_BOOT_FILE_SIZE,
    MAX_BOOT_FILES,
    BootItem,
    split_boot_arg,
)
from sevsim.attest import replay_event_log
from sevsim.cli.main import app
from sevsim.errors import ConfigError, GuestFault
from sevsim.guest.build import sdk_dir
from sevsim.guest.kernel import SYS_BOOT_FILE
from sevsim.guest.tpm import BOOT_FILE_DIR
from sevsim.host.migration import MigrationError
from sevsim.host.vmm import RunResult, VirtualMachine
from sevsim.host.vtpm import Vtpm
from test_tcg_eventlog import by_name, listed_events, listed_pcrs, tpm2_eventlog
from test_vtpm_host import no_orphan_swtpm  # noqa: F401

INITRD = bytes(range(256)) * 40 + b"tail"  # more than two pages: read in pieces
CONFIG = b"set default=0\nlinux /vmlinuz console=ttyS0\n"
BANKS = {HashAlg.SHA256: [9], HashAlg.SHA384: [9]}


def fnv(data: bytes) -> int:
    """boot_files.c's FNV-1a hash."""
    value = 2166136261
    for byte in data:
        value = (value ^ byte) * 16777619 % (1 << 32)
    return value


def boot(build: Callable[..., Path], mode: str, files: list[tuple[str, bytes]],
         vtpm: bool = True, state: Path | None = None) -> tuple[VirtualMachine, RunResult]:
    vm = Host(seed=b"boot files").create_vm(mode=mode, memory="16M", vtpm=vtpm,
                                            vtpm_state=state)
    vm.load(build("boot_files"), files=files)
    vm.launch()
    return vm, vm.run(timeout=120)


def pcr9_events(log: EventLog) -> list[tuple[bytes, bytes]]:
    return [(e.data, e.digests[HashAlg.SHA256]) for e in log.events if e.pcr == 9]


@pytest.mark.parametrize("mode", ["none", "snp"])
def test_the_program_reads_what_pcr9_measured_and_the_log_replays_to_the_tpm(
        build: Callable[..., Path], mode: str, tmp_path: Path) -> None:
    config = tmp_path / "grub.cfg"
    config.write_bytes(CONFIG)
    vm = Host(seed=b"boot files").create_vm(mode=mode, memory="16M", vtpm=True,
                                            vtpm_state=tmp_path / "state")
    vm.load(build("boot_files"), files=[("initrd.img", INITRD), config])
    vm.launch()
    result = vm.run(timeout=120)
    assert result.exit_code == 2, result.console
    assert vm.outputs == [b"initrd.img\0" + INITRD, b"grub.cfg\0" + CONFIG]
    for index, (name, data) in enumerate((("initrd.img", INITRD), ("grub.cfg", CONFIG))):
        assert f"boot file {index} {name} {len(data)} fnv {fnv(data):08x}" in result.console

    log = EventLog.from_bytes(result.event_log)
    assert [(e.pcr, EventType(e.event_type)) for e in log.events[-2:]] == \
        [(9, EventType.EV_IPL)] * 2
    assert pcr9_events(log) == [
        (f"{BOOT_FILE_DIR}initrd.img\0".encode(), hashlib.sha256(INITRD).digest()),
        (f"{BOOT_FILE_DIR}grub.cfg\0".encode(), hashlib.sha256(CONFIG).digest())]
    assert log.events[-1].digests[HashAlg.SHA384] == hashlib.sha384(CONFIG).digest()

    values = replay_event_log(result.event_log)
    with Vtpm(tmp_path / "state", resume=True) as tpm:  # the VM's stop saved the PCRs
        assert tpm.pcr_read(BANKS) == {int(alg): {9: values[alg][9]} for alg in BANKS}
    yaml = tpm2_eventlog(result.event_log, tmp_path)
    assert listed_events(yaml)[-2:] == [(9, "EV_IPL")] * 2
    assert listed_pcrs(yaml) == by_name(replay(log))


def test_a_changed_file_changes_pcr9_and_nothing_else(build: Callable[..., Path]) -> None:
    runs = [boot(build, "none", [("initrd.img", data)])[1]
            for data in (INITRD, INITRD[:-1] + b"!")]
    before, after = (replay_event_log(run.event_log) for run in runs)
    for alg in before:
        assert {pcr for pcr in before[alg] if before[alg][pcr] != after[alg][pcr]} == {9}


def test_without_a_vtpm_the_program_still_gets_its_files(build: Callable[..., Path]) -> None:
    vm, result = boot(build, "sev-es", [("initrd.img", INITRD), ("empty", b"")], vtpm=False)
    assert result.exit_code == 2, result.console
    assert vm.outputs == [b"initrd.img\0" + INITRD, b"empty\0"]
    assert result.event_log == b""


def test_no_files_no_entries(build: Callable[..., Path]) -> None:
    vm, result = boot(build, "none", [])
    assert result.exit_code == 0 and vm.outputs == []
    assert pcr9_events(EventLog.from_bytes(result.event_log)) == []


def test_a_host_swapping_a_file_after_the_kernel_read_it_swaps_nothing(
        build: Callable[..., Path]) -> None:
    """The kernel reads a file once: what the host offers later never reaches the program,
    which gets exactly the bytes PCR 9 measured."""
    vm = Host(seed=b"boot files").create_vm(mode="snp", memory="16M", vtpm=True)
    vm.load(build("boot_files"), files=[("initrd.img", INITRD)])
    vm.launch()
    disk, real = vm.boot_disk, vm.boot_disk.hypercall
    swapped: list[int] = []

    def toctou(mem: object, args: tuple[int, ...]) -> int:
        answer = real(mem, args)  # type: ignore[arg-type]
        if split_boot_arg(args[1])[0] == BootItem.FILE_DATA and answer == 0:
            disk.files = [("initrd.img", b"evil" * 100)]  # the kernel has read it all
            swapped.append(args[2])
        return answer

    disk.hypercall = toctou  # type: ignore[method-assign]
    result = vm.run(timeout=120)
    assert swapped == [len(INITRD)] and result.exit_code == 1, result.console
    assert vm.outputs == [b"initrd.img\0" + INITRD]
    assert pcr9_events(EventLog.from_bytes(result.event_log)) == [
        (f"{BOOT_FILE_DIR}initrd.img\0".encode(), hashlib.sha256(INITRD).digest())]


@pytest.mark.parametrize(("files", "why"), [
    ([("a/b", b"")], "name 'a/b'"),
    ([("", b"")], "0 characters"),
    ([("tab\there", b"")], "printable ASCII"),
    ([("caf\u00e9", b"")], "printable ASCII"),
    ([("x" * (MAX_BOOT_FILE_NAME + 1), b"")], f"{MAX_BOOT_FILE_NAME + 1} characters"),
    ([("big", bytes(MAX_BOOT_FILE_SIZE + 1))], "at most"),
    ([(f"f{i}", b"") for i in range(MAX_BOOT_FILES + 1)], f"{MAX_BOOT_FILES + 1} boot files"),
    (["/nonexistent/initrd"], "No such file"),
])
def test_bad_boot_files_are_refused_and_change_nothing(
        build: Callable[..., Path], files: list[tuple[str, bytes]], why: str) -> None:
    vm = Host(seed=b"boot files").create_vm(mode="none", memory="16M")
    with pytest.raises(ConfigError, match=re.escape(why)):
        vm.load(build("boot_files"), files=files)
    assert vm.image is None and vm.boot_disk.files == [] and vm.boot_disk.program == b""
    vm.load(build("boot_files"), files=[("ok", b"1")])
    vm.launch()
    assert vm.run(timeout=60).exit_code == 1


@pytest.mark.parametrize(("offered", "why"), [
    ([("bad\x00name", b"")], "boot file 0's name"),
    ([(f"f{i}", b"") for i in range(MAX_BOOT_FILES + 1)], "the VMM answered 0x11"),
])
def test_a_host_offering_what_no_boot_file_is_stops_the_boot(
        build: Callable[..., Path], offered: list[tuple[str, bytes]], why: str) -> None:
    """The kernel checks what the host offers against the same limits the VMM's API does."""
    vm = Host(seed=b"boot files").create_vm(mode="sev-es", memory="16M")
    vm.load(build("boot_files"))
    vm.launch()
    vm.boot_disk.files = offered  # the host is untrusted: it need not use load()
    with pytest.raises(GuestFault, match=re.escape(why)):
        vm.run(timeout=60)
    assert vm.console == ""


def test_cli_boot_file(build: Callable[..., Path], tmp_path: Path) -> None:
    initrd, config, log = tmp_path / "initrd.img", tmp_path / "a=b.cfg", tmp_path / "boot.log"
    initrd.write_bytes(INITRD)
    config.write_bytes(CONFIG)
    done = CliRunner().invoke(app, ["run", str(build("boot_files")), "--mode", "none",
                                    "--memory", "16M", "--vtpm", "--event-log", str(log),
                                    "--boot-file", str(initrd),
                                    "--boot-file", f"grub.cfg={config}"])
    assert done.exit_code == 2, done.output
    assert f"boot file 1 grub.cfg {len(CONFIG)} fnv {fnv(CONFIG):08x}" in done.output
    assert [data for data, _ in pcr9_events(EventLog.from_bytes(log.read_bytes()))] == [
        f"{BOOT_FILE_DIR}initrd.img\0".encode(), f"{BOOT_FILE_DIR}grub.cfg\0".encode()]
    bad = CliRunner().invoke(app, ["run", str(build("boot_files")), "--vtpm",
                                   "--boot-file", f"a/b={config}"])
    assert bad.exit_code == 125 and "printable ASCII other than '/'" in bad.output
    missing = CliRunner().invoke(app, ["run", str(build("boot_files")),
                                       "--boot-file", str(tmp_path / "absent")])
    assert missing.exit_code == 125 and "cannot read" in missing.output


def test_a_vm_with_boot_files_does_not_migrate(build: Callable[..., Path]) -> None:
    """The kernel keeps the files it read outside the memory the stream carries: moved, the
    program would find none, so the VM stays and runs on where it is."""
    vm = Host(seed=b"boot files").create_vm(mode="sev", memory="16M")
    vm.load(build("boot_files"), files=[("initrd.img", INITRD)])
    vm.launch()
    target = Host(seed=b"boot files target")
    with pytest.raises(MigrationError, match="boot data files"):
        migrate(vm, target)
    assert not target.hypervisor.vms
    assert vm.run(timeout=60).exit_code == 1 and vm.outputs == [b"initrd.img\0" + INITRD]


def test_the_sdk_header_states_the_channel_s_limits() -> None:
    """sevsim.h repeats the limits for C programs; this keeps the two in step."""
    header = (sdk_dir() / "include" / "sevsim.h").read_text()
    defined = dict(re.findall(r"^#define (SEV_BOOT_\w+|SYS_BOOT_FILE) +(\S+)", header, re.M))
    assert defined == {"SYS_BOOT_FILE": str(SYS_BOOT_FILE),
                       "SEV_BOOT_FILES_MAX": str(MAX_BOOT_FILES),
                       "SEV_BOOT_FILE_SIZE_MAX": str(MAX_BOOT_FILE_SIZE),
                       "SEV_BOOT_FILE_NAME_MAX": str(MAX_BOOT_FILE_NAME + 1)}
