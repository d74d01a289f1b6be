"""A VM with a host-provided vTPM: the guest kernel measures the boot into a real swtpm and logs
it, a C program extends, reads and quotes through the command channel (the GHCB under SEV-ES
and SNP), and sevsim, tpm2_checkquote and tpm2_eventlog agree on the result. Faults (swtpm
missing, failing, killed mid-run; the guest crashing; Python raising) stop the VM and leave no
swtpm process or socket behind."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sevsim import Host, migrate
from sevsim.abi import tpm2
from sevsim.abi.svm import (
    SEVSIM_HC_TPM_BOOT_READ,
    SEVSIM_HC_TPM_EVENT_LOG,
    SEVSIM_HC_TPM_TRANSMIT,
)
from sevsim.abi.tcg_eventlog import (
    ConfidentialTechnology,
    EventLog,
    EventType,
    extend,
    replay,
)
from sevsim.abi.tpm2 import HashAlg
from sevsim.abi.tpm_channel import CHANNEL_ERROR, BootItem
from sevsim.attest import replay_event_log, verify_quote
from sevsim.cli.main import app
from sevsim.errors import ConfigError, GuestFault, QuoteError, VtpmError
from sevsim.guest.kernel import TPM_GPA
from sevsim.host.migration import MigrationError
from sevsim.host.vmm import VirtualMachine
from sevsim.host.vtpm import Vtpm
from test_tcg_eventlog import by_name, listed_events, listed_pcrs, tpm2_eventlog
from test_vtpm_host import checkquote, no_orphan_swtpm, swtpm_children  # noqa: F401

NONCE = hashlib.sha256(b"vm quote nonce").digest()
SELECTION = {HashAlg.SHA256: [0, 4, 7, 8, 16], HashAlg.SHA384: [0, 16]}  # tpm_quote.c's
TECHNOLOGY = {"none": ConfidentialTechnology.NONE, "sev": ConfidentialTechnology.AMD_SEV,
              "sev-es": ConfidentialTechnology.AMD_SEV_ES,
              "snp": ConfidentialTechnology.AMD_SEV_SNP}
MODES = list(TECHNOLOGY)


def pcr16() -> dict[HashAlg, bytes]:
    """PCR 16 after tpm_quote.c's one extend per bank of bytes 0xA0, 0xA1, ..."""
    return {alg: extend(alg, bytes(alg.digest_size), bytes(range(0xA0, 0xA0 + alg.digest_size)))
            for alg in (HashAlg.SHA256, HashAlg.SHA384)}


def planted_secret() -> bytes:
    """The run-time part of tpm_quote.c's secret (its LCG, bytes 10..63)."""
    x, out = 0x7E57AB1E5EC2E7, bytearray()
    for i in range(64):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        if i >= 10:
            out.append(x >> 56)
    return bytes(out)


def booted(build: Callable[..., Path], mode: str, host: Host | None = None,
           **vm_options: object) -> VirtualMachine:
    host = host or Host(seed=b"vtpm vm")
    vm = host.create_vm(mode=mode, memory="16M", vtpm=True, **vm_options)  # type: ignore[arg-type]
    vm.load(build("tpm_quote"))
    vm.host_input = NONCE
    vm.launch()
    return vm


@pytest.fixture
def swtpm_gone() -> Iterator[list[Vtpm]]:
    """Vtpms a test hands in: each must be stopped, its sockets removed, when the test ends."""
    seen: list[Vtpm] = []
    yield seen
    for tpm in seen:
        assert tpm.stopped and tpm.proc.poll() is not None and not tpm.runtime.exists()


@pytest.mark.parametrize("mode", MODES)
def test_guest_quote_verifies_and_the_log_replays_to_the_tpms_pcrs(
        build: Callable[..., Path], mode: str, tmp_path: Path, swtpm_gone: list[Vtpm]) -> None:
    vm = booted(build, mode, vtpm_state=tmp_path / "state")
    assert vm.vtpm is not None
    swtpm_gone.append(vm.vtpm.tpm)
    result = vm.run(timeout=120)
    assert result.exit_code == 0 and "tpm ok" in result.console, result.console
    ak_public, attest, signature, log_bytes = vm.outputs
    assert log_bytes == result.event_log  # what the program read is what the host was given

    log = EventLog.from_bytes(result.event_log)
    assert log.banks == (HashAlg.SHA256, HashAlg.SHA384)
    events = [(e.pcr, EventType(e.event_type)) for e in log.events]
    assert events[:2] == [(0, EventType.EV_S_CRTM_VERSION), (0, EventType.EV_NONHOST_INFO)]
    assert events[-2:] == [(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION),
                           (8, EventType.EV_IPL)]
    assert log.events[1].data[16] == TECHNOLOGY[mode]  # NonHostInfo names the technology
    program = build("tpm_quote").read_bytes()
    assert log.events[-2].digests[HashAlg.SHA256] == hashlib.sha256(program).digest()
    assert log.events[-1].data == b"kernel_cmdline: tpm_quote.elf\0"

    values = replay_event_log(result.event_log)
    assert values == {int(alg): v for alg, v in replay(log).items()}
    for alg, value in pcr16().items():
        values[alg][16] = value
        assert f"pcr16 {alg.hashlib_name} {value[:4].hex()}" in result.console
    quoted = {alg: {pcr: values[alg][pcr] for pcr in pcrs} for alg, pcrs in SELECTION.items()}
    assert verify_quote(ak_public, attest, signature, NONCE, quoted).extra_data == NONCE
    with pytest.raises(QuoteError):
        verify_quote(ak_public, attest, signature, NONCE[::-1], quoted)

    class Ak:
        public = ak_public

    ok = checkquote(tmp_path, Ak(), attest, signature, NONCE, quoted,  # type: ignore[arg-type]
                    SELECTION)
    assert ok.returncode == 0, ok.stderr
    moved = {alg: dict(v) for alg, v in quoted.items()}
    moved[HashAlg.SHA256][4] = bytes(32)  # another program
    assert checkquote(tmp_path, Ak(), attest, signature, NONCE, moved,  # type: ignore[arg-type]
                      SELECTION).returncode != 0

    yaml = tpm2_eventlog(result.event_log, tmp_path)
    assert [pcr for pcr, _ in listed_events(yaml)[1:]] == [e.pcr for e in log.events]
    assert listed_pcrs(yaml) == by_name(replay(log))

    # TPM2_Shutdown(STATE) at the VM's stop: a TPM2_Startup(STATE) resumes the boot's PCRs 0-15
    # (swtpm keeps them in its state directory); PCR 16 is reset, and STARTUP(CLEAR) resets all
    with Vtpm(tmp_path / "state", startup=False) as tpm:
        tpm2.parse_startup_response(tpm.execute(tpm2.startup_command(tpm2.Su.STATE)))
        resumed = tpm.pcr_read(SELECTION)
    assert all(resumed[alg][pcr] == values[alg][pcr] for alg, pcrs in SELECTION.items()
               for pcr in pcrs if pcr < 16)
    assert all(resumed[alg][16] == bytes(alg.digest_size) for alg in SELECTION)


@pytest.mark.parametrize("mode", ["sev-es", "snp"])
def test_planted_secret_never_reaches_the_host(build: Callable[..., Path], mode: str,
                                               tmp_path: Path) -> None:
    vm = booted(build, mode, vtpm_state=tmp_path / "state")
    assert vm.vtpm is not None
    wire: list[bytes] = []  # every command and response swtpm saw
    real = vm.vtpm.tpm.transmit

    def recorded(command: bytes) -> bytes:
        wire.append(command)
        wire.append(real(command))
        return wire[-1]

    vm.vtpm.tpm.transmit = recorded  # type: ignore[method-assign]
    result = vm.run(timeout=120)
    assert "tpm ok" in result.console
    secret = planted_secret()
    assert len(wire) > 40 and all(secret[:16] not in blob for blob in wire)
    assert secret not in vm.host_view()  # private pages are ciphertext to the host
    assert TPM_GPA in vm.shared_pages()
    for gpa in vm.shared_pages():
        assert secret[:16] not in vm.read_gpa(gpa, 4096)
    assert vm.read_gpa(TPM_GPA, 4096) == bytes(4096)  # the channel page is wiped after use
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert stored and secret[:16] not in stored
    assert all(secret[:16] not in blob for blob in [*vm.outputs, result.console.encode()])


def test_the_planted_secret_is_real(build: Callable[..., Path]) -> None:
    """The secret search above can fail: in a plain VM the host reads the secret."""
    vm = booted(build, "none")
    vm.run(timeout=120)
    assert planted_secret() in vm.host_view()


def test_without_a_vtpm_the_guest_gets_enodev_and_no_log(build: Callable[..., Path]) -> None:
    vm = Host(seed=b"vtpm vm").create_vm(mode="sev-es", memory="16M")
    vm.load(build("tpm_quote"))
    vm.host_input = NONCE
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 1 and "extend sha256 failed: -19" in result.console
    assert result.event_log == b"" and TPM_GPA not in vm.shared_pages()


def test_swtpm_killed_mid_run_stops_the_vm(build: Callable[..., Path],
                                           swtpm_gone: list[Vtpm]) -> None:
    vm = booted(build, "snp")
    assert vm.vtpm is not None
    tpm = vm.vtpm.tpm
    swtpm_gone.append(tpm)
    real = tpm.transmit

    def kill_at_the_programs_first_extend(command: bytes) -> bytes:
        if vm.vtpm is not None and vm.vtpm.event_log:  # measured boot is over
            os.kill(tpm.pid, signal.SIGKILL)
            tpm.proc.wait(5)
        return real(command)

    tpm.transmit = kill_at_the_programs_first_extend  # type: ignore[method-assign]
    with pytest.raises(VtpmError, match=rf"swtpm \(pid {tpm.pid}\) killed by signal 9"):
        vm.run(timeout=60)
    assert vm.finished and "tpm ok" not in vm.console
    assert vm.stop_vtpm() is None  # stopped already, quietly


def test_swtpm_dying_after_its_last_command_is_reported(build: Callable[..., Path]) -> None:
    """It cannot save the state at the VM's stop: the run says so rather than pass."""
    vm = Host(seed=b"vtpm vm").create_vm(mode="sev", memory="16M", vtpm=True)
    vm.load(build("hello"))
    vm.launch()
    device = vm.vtpm
    assert device is not None
    pid, real = device.tpm.pid, device.hypercall

    def kill_after_the_log(mem: VirtualMachine, nr: int, args: tuple[int, ...]) -> int:
        answer = real(mem, nr, args)
        if nr == SEVSIM_HC_TPM_EVENT_LOG:  # the boot's last TPM exchange
            os.kill(pid, signal.SIGKILL)
            device.tpm.proc.wait(5)
        return answer

    device.hypercall = kill_after_the_log  # type: ignore[method-assign]
    with pytest.raises(VtpmError, match=rf"pid {pid}\) killed by signal 9"):
        vm.run(timeout=60)
    assert device.tpm.stopped and "c-bit" in vm.console  # hello.c ran to its end


def test_guest_fault_and_python_exceptions_stop_swtpm(build: Callable[..., Path],
                                                      swtpm_gone: list[Vtpm]) -> None:
    host = Host(seed=b"vtpm vm")
    crash = host.create_vm(mode="sev-es", memory="16M", vtpm=True)
    crash.load(build("crash", "-DCRASH=2"))
    crash.launch()
    assert crash.vtpm is not None
    swtpm_gone.append(crash.vtpm.tpm)
    with pytest.raises(GuestFault):
        crash.run(timeout=60)
    vm = booted(build, "sev", host)
    assert vm.vtpm is not None
    swtpm_gone.append(vm.vtpm.tpm)

    def boom(*_: object) -> int:
        raise KeyboardInterrupt

    vm.vtpm.hypercall = boom  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        vm.run(timeout=60)
    assert vm.finished


def test_host_run_stops_every_vtpm(build: Callable[..., Path], swtpm_gone: list[Vtpm]) -> None:
    host = Host(seed=b"vtpm vm")
    vms = [booted(build, mode, host) for mode in ("sev", "none")]
    swtpm_gone.extend(vm.vtpm.tpm for vm in vms if vm.vtpm is not None)
    results = host.run(vms, timeout=120)
    for vm in vms:
        result = results[vm.hv.vm_id]
        assert result.error is None and "tpm ok" in result.console
        assert EventLog.from_bytes(result.event_log).events[1].data[16] in (1, 0)


def test_swtpm_missing_or_failing_leaves_no_vm(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(seed=b"vtpm vm")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VtpmError, match="swtpm: not found on PATH"):
        host.create_vm(mode="snp", memory="16M", vtpm=True)
    fake = tmp_path / "swtpm"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('no TPM today')\nsys.exit(3)\n")
    fake.chmod(0o755)
    with pytest.raises(VtpmError, match="exited with status 3 at start: no TPM today"):
        host.create_vm(mode="snp", memory="16M", vtpm=True)
    assert not host.hypervisor.vms  # nothing half-made: the ASIDs are free again
    with pytest.raises(ConfigError, match="vtpm=True"):
        host.create_vm(mode="sev", vtpm_state=tmp_path)


def test_channel_refuses_what_it_cannot_frame(build: Callable[..., Path]) -> None:
    """The VMM side on its own: bad lengths, addresses and items get CHANNEL_ERROR, never an
    exception; a framed but malformed command gets the TPM's own response code."""
    vm = Host(seed=b"vtpm vm").create_vm(mode="none", memory="16M", vtpm=True)
    vm.load(build("hello"))
    device = vm.vtpm
    assert device is not None
    page = 0x200000
    try:
        assert device.hypercall(vm, SEVSIM_HC_TPM_TRANSMIT, (page, 0, 0)) == 0  # the probe
        for length in (5, 4097, 1 << 40):
            assert device.hypercall(vm, SEVSIM_HC_TPM_TRANSMIT, (page, length, 0)) == \
                CHANNEL_ERROR
        vm.write_gpa(page, tpm2.get_random_command(8)[:6] + b"\0\0\0\0")  # size 12, 10 sent
        assert device.hypercall(vm, SEVSIM_HC_TPM_TRANSMIT, (page, 10, 0)) == CHANNEL_ERROR
        assert device.hypercall(vm, SEVSIM_HC_TPM_TRANSMIT, (page + 1, 12, 0)) == CHANNEL_ERROR
        assert vm.boot_disk.hypercall(vm, (page, 7, 0)) == CHANNEL_ERROR
        assert device.commands == 0  # none of them reached swtpm
        garbage = b"\x12\x34" + (12).to_bytes(4, "big") + b"\xde\xad\xbe\xef\0\0"
        vm.write_gpa(page, garbage)
        length = device.hypercall(vm, SEVSIM_HC_TPM_TRANSMIT, (page, 12, 0))
        assert length == 10 and tpm2.response_code(vm.read_gpa(page, 10)) != 0
        assert vm.boot_disk.hypercall(vm, (page, BootItem.CMDLINE, 0)) == len("hello.elf")
    finally:
        vm.destroy()
    assert device.tpm.stopped


def test_cli_run_with_vtpm_writes_the_event_log(build: Callable[..., Path],
                                                tmp_path: Path) -> None:
    log, state = tmp_path / "boot.log", tmp_path / "state"
    before = swtpm_children()
    done = CliRunner().invoke(app, ["run", str(build("hello")), "--mode", "snp", "--memory",
                                    "16M", "--vtpm", "--vtpm-state", str(state),
                                    "--event-log", str(log)])
    assert done.exit_code == 0, done.output
    assert "sevsim: vTPM " in done.output and str(state) in done.output
    parsed = EventLog.from_bytes(log.read_bytes())
    assert parsed.events[1].data[16] == ConfidentialTechnology.AMD_SEV_SNP
    assert any(state.iterdir()) and swtpm_children() == before
    refused = CliRunner().invoke(app, ["run", str(build("hello")), "--event-log", str(log)])
    assert refused.exit_code != 0 and "need --vtpm" in refused.output
    missing = CliRunner().invoke(app, ["run", str(build("hello")), "--vtpm"],
                                 env={"PATH": str(tmp_path)})
    assert missing.exit_code == 125 and "swtpm: not found on PATH" in missing.output


def test_tpm2_tools_are_the_oracle() -> None:
    """The checks above lean on tpm2-tools; CI installs them, so their absence fails."""
    for tool in ("tpm2_checkquote", "tpm2_eventlog", "swtpm"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, tool


def test_a_host_offering_another_program_file_stops_the_boot(build: Callable[..., Path]) -> None:
    """PCR 4 names the program that runs: the kernel measures the host's file only if its
    loadable segments are the launched ones."""
    program = build("tpm_quote").read_bytes()
    with build("tpm_quote").open("rb") as fh:
        text = next(s for s in ELFFile(fh).iter_segments()
                    if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1)
        flip_at = text["p_offset"] + text["p_filesz"] // 2
    flipped = bytearray(program)
    flipped[flip_at] ^= 1
    for offered, why in ((build("hello").read_bytes(), "entry|segments"),
                         (bytes(flipped), "differs from the launched bytes"),
                         (b"MZ not an ELF", "not an ELF file")):
        vm = booted(build, "sev-es")
        assert vm.vtpm is not None
        vm.boot_disk.program = offered
        with pytest.raises(GuestFault, match=f"program file the host offered: .*({why})"):
            vm.run(timeout=60)
        assert vm.console == "" and vm.vtpm.tpm.stopped


@pytest.fixture(scope="module")
def device_vm(build: Callable[..., Path]) -> Iterator[VirtualMachine]:
    vm = Host(seed=b"vtpm fuzz").create_vm(mode="none", memory="16M", vtpm=True)
    vm.load(build("hello"))
    yield vm
    vm.destroy()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nr=st.sampled_from([SEVSIM_HC_TPM_TRANSMIT, SEVSIM_HC_TPM_BOOT_READ,
                           SEVSIM_HC_TPM_EVENT_LOG]),
       gpa=st.one_of(st.just(0x200000), st.integers(0, (1 << 64) - 1)),
       length=st.one_of(st.integers(0, 5000), st.integers(0, (1 << 64) - 1)),
       third=st.integers(0, (1 << 64) - 1), body=st.binary(max_size=64))
def test_any_hypercall_gets_a_number_never_an_exception(
        device_vm: VirtualMachine, nr: int, gpa: int, length: int, third: int,
        body: bytes) -> None:
    """Whatever the guest puts in its registers and page: CHANNEL_ERROR, a length, or 0; a
    framed command of arbitrary bytes gets a framed TPM response from swtpm itself."""
    device = device_vm.vtpm
    assert device is not None
    command = b"\x80\x01" + (10 + len(body)).to_bytes(4, "big") + b"\0\0\x01\x7b" + body
    device_vm.write_gpa(0x200000, body)
    if nr == SEVSIM_HC_TPM_BOOT_READ:  # the VM's boot disk serves it, vTPM or not
        answer = device_vm.boot_disk.hypercall(device_vm, (gpa, length, third))
    else:
        answer = device.hypercall(device_vm, nr, (gpa, length, third))
    assert isinstance(answer, int) and 0 <= answer <= CHANNEL_ERROR
    device_vm.write_gpa(0x200000, command)
    framed = device.hypercall(device_vm, SEVSIM_HC_TPM_TRANSMIT, (0x200000, len(command), 0))
    assert 10 <= framed <= 4096
    response = device_vm.read_gpa(0x200000, framed)
    assert int.from_bytes(response[2:6], "big") == framed


def test_a_refused_timeout_leaves_the_vm_and_its_vtpm_as_they_were(
        build: Callable[..., Path]) -> None:
    vm = booted(build, "sev")
    assert vm.vtpm is not None
    with pytest.raises(ConfigError):
        vm.run(timeout=float("nan"))
    assert not vm.vtpm.tpm.stopped and not vm.finished
    assert "tpm ok" in vm.run(timeout=120).console and vm.vtpm.tpm.stopped


def test_a_vm_with_a_vtpm_does_not_migrate(build: Callable[..., Path]) -> None:
    vm = booted(build, "sev")
    target = Host(seed=b"vtpm target")
    with pytest.raises(MigrationError, match="the VM has a vTPM"):
        migrate(vm, target)
    assert not target.hypervisor.vms
    assert "tpm ok" in vm.run(timeout=120).console  # the source VM runs on, TPM and all


def test_host_run_stops_every_vm_when_one_vtpm_dies(build: Callable[..., Path],
                                                    swtpm_gone: list[Vtpm]) -> None:
    host = Host(seed=b"vtpm vm")
    vms = [booted(build, mode, host) for mode in ("sev-es", "sev")]
    tpms = [vm.vtpm.tpm for vm in vms if vm.vtpm is not None]
    swtpm_gone.extend(tpms)
    victim = tpms[0]
    real = victim.transmit

    def die(command: bytes) -> bytes:
        if vms[0].vtpm is not None and vms[0].vtpm.event_log:
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(5)
        return real(command)

    victim.transmit = die  # type: ignore[method-assign]
    with pytest.raises(VtpmError, match=rf"pid {victim.pid}\) killed by signal 9"):
        host.run(vms, timeout=120)
    assert all(vm.finished for vm in vms)
