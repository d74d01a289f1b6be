"""SEV-ES end to end: registers in an encrypted, integrity-checked VMSA; #VC and the GHCB.

Guest programs run unchanged in every mode. Under `sev` the hypervisor reads and rewrites a
register that holds secret data; under `sev-es` the same program's registers are nowhere the
hypervisor can look (VMCB, VMSA ciphertext, guest memory, DRAM, the GHCB), and the GHCB holds
only what each event needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from unicorn import x86_const as x86

from conftest import MASK64, blocks_found, fnv1a64, secret_bytes, symbol
from sevsim import Host
from sevsim.abi import ghcb, vmsa
from sevsim.abi.bootinfo import BOOTINFO_GPA, BootInfo
from sevsim.abi.ghcb import (
    FIELDS,
    PROTOCOL_MAX,
    RESULT_ERROR,
    SHARED_BUFFER_OFFSET,
    Ghcb,
    GhcbError,
    MsrCode,
    VmgexitEvent,
    msr_code,
    parse_sev_info,
    sev_info,
)
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.sev_session import measurement
from sevsim.abi.status import GuestState, SevStatus
from sevsim.abi.svm import (
    IOIO_REP,
    IOIO_STR,
    KVM_HC_MAP_GPA_RANGE,
    ExitCode,
    ioio_info,
)
from sevsim.abi.vmsa import PAGE_SIZE, Segment, Vmsa, reset_state
from sevsim.errors import (
    ConfigError,
    FirmwareError,
    GuestFault,
    ResourceExhausted,
    VmrunError,
    VmStateError,
)
from sevsim.firmware.sev import SevFirmware
from sevsim.guest.kernel import GHCB_GPA
from sevsim.host.hypervisor import HvVm
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.chips import PRESETS
from sevsim.hw.cpu import Vcpu, VcpuState, VmExit
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import ghcb_answer, memory_controller, vcpu_engine

SECRET = secret_bytes()
PLANTED = SECRET[:8], SECRET[8:16]  # what tests/guests/plant.c keeps in R12 and R13
MODES = ("none", "sev", "sev-es")
Hook = Callable[[HvVm, Vcpu, VmExit], bool]


def launched(host: Host, elf: Path, mode: str, memory: str = "16M", vcpus: int = 1
             ) -> VirtualMachine:
    vm = host.create_vm(mode=mode, memory=memory, vcpus=vcpus)
    vm.load(elf)
    vm.launch()
    return vm


def hook_exits(host: Host, hook: Callable[[HvVm, Vcpu, VmExit, Hook], bool]) -> None:
    """Put `hook` in front of the hypervisor's exit handler (it calls on with the original)."""
    original = host.hypervisor.handle_exit
    host.hypervisor.handle_exit = (  # type: ignore[method-assign]
        lambda vm, vcpu, exit: hook(vm, vcpu, exit, original))


def full_ghcb_exit(vcpu: Vcpu, exit: VmExit) -> bool:
    return exit.code is ExitCode.VMGEXIT and not msr_code(vcpu.vmcb.ghcb_gpa)


# -- the same programs, the same consoles ---------------------------------------------------------

def test_examples_print_the_same_console_in_every_mode(build) -> None:
    host = Host(memory="256M")
    consoles: dict[str, list[str]] = {}
    for mode in MODES:
        for name, vcpus in (("secret", 1), ("smp", 3), ("plant", 1)):
            vm = launched(host, build(name), mode, vcpus=vcpus)
            result = vm.run(timeout=60)
            vm.destroy()
            assert result.exit_code == 0, (mode, name, result.console)
            consoles.setdefault(name, []).append(result.console)
    for name, seen in consoles.items():
        assert seen[0] == seen[1] == seen[2], name
    assert f"secret digest: 0x{fnv1a64(SECRET):016x}" in consoles["secret"][0]
    assert f"vcpus 3 sum {sum(i * i for i in range(2000000))}" in consoles["smp"][0]
    assert "registers kept: yes" in consoles["plant"][0]


@pytest.mark.parametrize("chip", ["rome", "milan", "genoa", "turin"])
def test_an_es_guest_sees_its_mode_on_every_es_chip(chip: str, build) -> None:
    host = Host(chip=chip)
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    assert vm.asid in range(1, host.chip.min_sev_asid)  # ES ASIDs lie below EDX
    console = vm.run(timeout=10).console
    assert console.startswith("Hello from a sevsim guest!\n")
    assert "SEV_STATUS=0x3 sev=1 es=1 snp=0" in console
    assert "eax=0x0000000a" in console  # CPUID 8000001F: SEV | SEV-ES, through the GHCB
    assert f"c-bit={host.chip.c_bit}" in console


def test_sev_es_and_snp_need_a_chip_with_them() -> None:
    with pytest.raises(ConfigError, match="does not support"):
        Host(chip="naples").create_vm(mode="sev-es")
    with pytest.raises(ConfigError, match="does not support"):
        Host(chip="rome").create_vm(mode="snp")


def test_es_asids_run_out_on_their_own(build) -> None:
    host = Host(chip=PRESETS["milan"].with_asids(8, 3), memory="64M")  # ES: ASIDs 1 and 2
    vms = [host.create_vm(mode="sev-es", memory="1M") for _ in range(2)]
    assert sorted(vm.asid for vm in vms) == [1, 2]
    with pytest.raises(ResourceExhausted, match=r"no free sev-es ASID"):
        host.create_vm(mode="sev-es", memory="1M")
    assert host.create_vm(mode="sev", memory="1M").asid == 3
    vms[0].destroy()
    assert host.create_vm(mode="sev-es", memory="1M").asid == vms[0].asid


# -- registers: readable and writable under SEV, nowhere to be found under SEV-ES ---------------

def test_sev_hypervisor_reads_and_changes_registers_holding_secret_data(build) -> None:
    host = Host()
    vm = launched(host, build("plant"), "sev")
    stolen: list[tuple[int, int]] = []

    def steal(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if exit.code is ExitCode.IOIO and exit.info1 == ioio_info(0x80, 1, False):
            stolen.append((vcpu.vmcb.read("r12"), vcpu.vmcb.read("r13")))
            vcpu.vmcb.write("r12", vcpu.vmcb.read("r12") ^ 1)
        return original(hv, vcpu, exit)

    hook_exits(host, steal)
    console = vm.run(timeout=10).console
    assert [(a.to_bytes(8, "little"), b.to_bytes(8, "little")) for a, b in stolen] == [PLANTED]
    assert "registers kept: no" in console  # the guest computed on the hypervisor's value
    assert vm.hv.vcpus[0].vmsa_spa is None  # no VMSA: the VMCB save area is the state


def test_sev_es_registers_are_in_no_host_visible_byte(build) -> None:
    host = Host(memory="128M")
    vm = launched(host, build("plant"), "sev-es")
    vcpu = vm.hv.vcpus[0]
    assert vcpu.vmsa_spa is not None
    snapshots: list[bytes] = []  # VMSA ciphertext at every exit
    plaintexts: list[bytes] = []  # what the SoC holds there (the test's oracle, not the host's)
    refused: list[str] = []
    events: list[Ghcb] = []

    def spy(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        for attempt in (lambda: vcpu.vmcb.read("r12"), lambda: vcpu.vmcb.write("r12", 0)):
            try:
                attempt()
            except VmStateError as err:
                refused.append(str(err))
        snapshots.append(host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE))
        cells = memory_controller(host).cells
        plaintexts.append(cells[vcpu.vmsa_spa:vcpu.vmsa_spa + PAGE].tobytes())
        if full_ghcb_exit(vcpu, exit):
            events.append(Ghcb.from_bytes(vm.read_gpa(vcpu.vmcb.ghcb_gpa, PAGE)))
        return original(hv, vcpu, exit)

    hook_exits(host, spy)
    result = vm.run(timeout=10)
    assert "registers kept: yes" in result.console
    assert len(refused) == 2 * len(snapshots) and "encrypted VMSA" in refused[0]
    # the register file really was in the VMSA, under the VM key: the oracle finds it
    assert any(PLANTED[0] in p and PLANTED[1] in p for p in plaintexts)
    views = {"VMSA ciphertext": b"".join(snapshots), "host view": vm.host_view(),
             "DRAM dump": host.dram_dump().tobytes(),
             "GHCBs": b"".join(e.to_bytes() for e in events)}
    for name, view in views.items():
        for word in PLANTED:
            assert word not in view, name
        assert blocks_found(view, SECRET) == 0, name
    # the GHCB held what each event needed and nothing else: the page is exactly those fields
    def only(code: int, rax: int) -> Ghcb:
        [event] = [e for e in events if (e.save["sw_exit_code"], e.save.get("rax")) == (code, rax)]
        assert event.to_bytes() == Ghcb(event.save, b"", PROTOCOL_MAX).to_bytes()
        return event

    exits = {"sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"}
    assert only(ExitCode.IOIO, 0x5A).save == {"rax": 0x5A, "sw_exit_code": ExitCode.IOIO,
                                              "sw_exit_info_1": ioio_info(0x80, 1, False),
                                              "sw_exit_info_2": 0}
    assert set(only(ExitCode.CPUID, 0x8000_001F).save) == {"rax", "rcx", *exits}
    hypercall = only(ExitCode.VMMCALL, 0x5E5EC0DE).save
    assert set(hypercall) == {"rax", "rbx", "rcx", "rdx", "rsi", "cpl", *exits}


def test_the_vmsa_ciphertext_changes_with_the_registers(build) -> None:
    """Deterministic encryption, fresh state: each exit's VMSA differs, never the plaintext."""
    host = Host()
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    vcpu = vm.hv.vcpus[0]
    seen: list[bytes] = []

    def record(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        seen.append(host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE))
        return original(hv, vcpu, exit)

    hook_exits(host, record)
    vm.run(timeout=10)
    assert len(seen) > 3 and len(set(seen)) > 1
    assert all(page != reset_state().to_bytes() for page in seen)
    assert vcpu.vmsa_spa // PAGE not in vm.hv.frames  # outside the guest's RAM


# -- VMRUN refuses a VMSA the host touched --------------------------------------------------------

def tamper_at_exit(host: Host, vm: VirtualMachine, nth: int,
                   change: Callable[[Vcpu, list[bytes]], None]) -> None:
    """At `vm`'s nth exit, `change` the VMSA (given the ciphertexts seen so far)."""
    seen: list[bytes] = []

    def hook(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if hv is vm.hv:
            seen.append(host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE))
            if len(seen) == nth:
                change(vcpu, seen)
        return original(hv, vcpu, exit)

    hook_exits(host, hook)


@pytest.mark.parametrize("how", ["flip RAX", "zero a reserved block", "replay an older VMSA"])
def test_a_tampered_vmsa_stops_its_vm_and_not_the_others(how: str, build) -> None:
    host = Host(memory="256M")
    bystanders = [launched(host, build("secret"), "sev-es"), launched(host, build("hello"), "sev")]
    victim = launched(host, build("plant"), "sev-es")

    def change(vcpu: Vcpu, seen: list[bytes]) -> None:
        spa = vcpu.vmsa_spa
        if how == "flip RAX":
            block = bytearray(seen[-1][0x1F0:0x200])
            block[8] ^= 1
            host.hypervisor.write_spa(spa + 0x1F0, bytes(block))
        elif how == "zero a reserved block":
            host.hypervisor.write_spa(spa + 0x800, bytes(16))
        else:
            assert seen[0] != seen[-1]
            host.hypervisor.write_spa(spa, seen[0])

    tamper_at_exit(host, victim, 6, change)
    results = host.run([*bystanders, victim], timeout=60)
    error = results[victim.hv.vm_id].error
    assert isinstance(error, VmrunError) and "integrity check" in str(error)
    assert victim.hv.stopped and victim.hv.vcpus[0].vmcb.exit_code == ExitCode.INVALID
    assert victim.hv.vcpus[0].state is VcpuState.STOPPED
    assert "registers kept" not in victim.console
    for vm in bystanders:
        assert results[vm.hv.vm_id].error is None and results[vm.hv.vm_id].exit_code == 0
    assert "secret digest" in bystanders[0].console


def test_writing_back_the_same_ciphertext_is_no_tampering(build) -> None:
    host = Host()
    vm = launched(host, build("plant"), "sev-es")
    tamper_at_exit(host, vm, 4, lambda vcpu, seen: host.hypervisor.write_spa(vcpu.vmsa_spa,
                                                                              seen[-1]))
    assert "registers kept: yes" in vm.run(timeout=10).console


def test_vmrun_checks_the_launch_vmsa_and_every_time_slice(build) -> None:
    host = Host()
    before_first_run = launched(host, build("hello"), "sev-es", memory="8M")
    spa = before_first_run.hv.vcpus[0].vmsa_spa
    host.hypervisor.write_spa(spa, bytes(16))  # after LAUNCH_UPDATE_VMSA sealed it
    with pytest.raises(VmrunError, match="integrity"):
        before_first_run.run(timeout=10)
    assert "Hello" not in before_first_run.console

    paused = launched(host, build("crash", "-DCRASH=3"), "sev-es", memory="8M")  # spins
    spa = paused.hv.vcpus[0].vmsa_spa
    at_launch = host.hypervisor.read_spa(spa, PAGE)
    assert not paused.run_for(0.05)  # the time slice ends: an exit, the VMSA saved and sealed
    assert not paused.run_for(0.05)  # an untouched VMSA runs on
    assert host.hypervisor.read_spa(spa, PAGE) != at_launch
    host.hypervisor.write_spa(spa, at_launch)  # replay the launch VMSA: a rollback
    with pytest.raises(VmrunError):
        paused.run_for(0.05)
    assert paused.hv.stopped and "about to misbehave" in paused.console


def test_a_vmsa_pointer_elsewhere_is_refused(build) -> None:
    host = Host(memory="128M")
    one = launched(host, build("hello"), "sev-es", memory="8M")
    other = launched(host, build("hello"), "sev-es", memory="8M")
    one.hv.vcpus[0].vmsa_spa = other.hv.vcpus[0].vmsa_spa  # another VM's sealed VMSA
    with pytest.raises(VmrunError):
        one.run(timeout=10)
    assert other.run(timeout=10).exit_code == 0


def test_mapping_the_vmsa_frame_into_the_guest_leaks_nothing(build) -> None:
    """The hypervisor maps the VMSA frame at a shared GPA (its cells then hold DRAM bytes):
    the hardware keeps writing the VMSA through the VM key and the guest runs on."""
    host = Host()
    vm = launched(host, build("plant"), "sev-es", memory="8M")
    vcpu = vm.hv.vcpus[0]
    window = vm.memory_size  # just above RAM: the guest never marked it private
    seen: list[bytes] = []

    def remap(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if not seen:
            host.hypervisor.npt_map(hv, window, vcpu.vmsa_spa)
        seen.append(vm.read_gpa(window, PAGE))
        return original(hv, vcpu, exit)

    hook_exits(host, remap)
    assert "registers kept: yes" in vm.run(timeout=10).console
    # the frame's cells are DRAM bytes
    assert memory_controller(host).domain[vcpu.vmsa_spa // PAGE] == 0
    assert seen[-1] == host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE)
    assert not any(word in page for page in seen for word in PLANTED)


# -- LAUNCH_UPDATE_VMSA ----------------------------------------------------------------------------

ES_POLICY = int(PolicyFlags.NODBG | PolicyFlags.ES)


def firmware(nframes: int = 8) -> tuple[SevFirmware, MemoryController]:
    memory = MemoryController(nframes * PAGE, EncryptionEngine(PRESETS["milan"].tweak))
    fw = SevFirmware(PRESETS["milan"], memory)
    fw.init()
    return fw, memory


def refused(fw: SevFirmware, memory: MemoryController, status: SevStatus,
            command: Callable[[], object]) -> None:
    """The command fails with `status` and changes nothing the host can see."""
    def snapshot() -> tuple[object, ...]:
        guests: list[object] = []
        for handle in (1, 2, 3):
            try:
                guests.append(fw.guest_status(handle))
            except FirmwareError as err:
                guests.append(err.status)
        return guests, memory.domain.tobytes(), memory.dram_dump().tobytes()

    before = snapshot()
    with pytest.raises(FirmwareError) as info:
        command()
    assert info.value.status is status, str(info.value)
    assert snapshot() == before


def test_launch_update_vmsa_state_and_argument_checks() -> None:
    fw, memory = firmware()
    page = reset_state().to_bytes()
    memory.write(PAGE, page)
    refused(fw, memory, SevStatus.INVALID_GUEST, lambda: fw.launch_update_vmsa(9, PAGE))
    plain = fw.launch_start(int(PolicyFlags.NODBG))
    fw.activate(plain, 100)
    refused(fw, memory, SevStatus.POLICY_FAILURE, lambda: fw.launch_update_vmsa(plain, PAGE))
    handle = fw.launch_start(ES_POLICY)
    refused(fw, memory, SevStatus.INACTIVE, lambda: fw.launch_update_vmsa(handle, PAGE))
    fw.activate(handle, 1)
    for spa, length, status in ((PAGE + 16, PAGE, SevStatus.INVALID_ADDRESS),
                                (8 * PAGE, PAGE, SevStatus.INVALID_ADDRESS),
                                (-PAGE, PAGE, SevStatus.INVALID_ADDRESS),
                                (PAGE, 0x670, SevStatus.INVALID_LENGTH)):
        refused(fw, memory, status,
                lambda spa=spa, length=length: fw.launch_update_vmsa(handle, spa, length))
    fw.launch_update_vmsa(handle, PAGE)
    assert memory.domain[1] == 1 and memory.cells[PAGE:2 * PAGE].tobytes() == page
    assert memory.read(PAGE, PAGE) != page  # the host now reads ciphertext
    fw.launch_measure(handle)
    refused(fw, memory, SevStatus.INVALID_GUEST_STATE, lambda: fw.launch_update_vmsa(handle, PAGE))
    fw.shutdown()
    with pytest.raises(FirmwareError) as info:
        fw.launch_update_vmsa(handle, PAGE)
    assert info.value.status is SevStatus.INVALID_PLATFORM_STATE


def test_launch_measure_covers_each_vmsa_in_order(monkeypatch) -> None:
    """The digest is SHA-256 over the data, then every VMSA page (spec-formats.md §6.3)."""
    fw, memory = firmware()
    drawn: list[bytes] = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: drawn.append(real(n)) or drawn[-1])
    handle = fw.launch_start(ES_POLICY)
    monkeypatch.setattr(os, "urandom", real)
    fw.activate(handle, 1)
    data = os.urandom(PAGE)
    bsp, ap = reset_state(), reset_state()
    ap.regs["rdx"] = 1
    memory.write(2 * PAGE, data)
    memory.write(3 * PAGE, bsp.to_bytes())
    memory.write(4 * PAGE, ap.to_bytes())
    fw.launch_update_data(handle, 2 * PAGE, PAGE)
    fw.launch_update_vmsa(handle, 3 * PAGE)
    fw.launch_update_vmsa(handle, 4 * PAGE)
    result = fw.launch_measure(handle)
    assert fw.guest_status(handle).state is GuestState.LSECRET

    def explains(digest: bytes) -> bool:
        chip = PRESETS["milan"]
        return any(measurement(tik, (chip.api_major, chip.api_minor), chip.build, ES_POLICY,
                               digest, result.mnonce) == result.measure
                   for tik in drawn if len(tik) == 16)

    assert explains(hashlib.sha256(data + bsp.to_bytes() + ap.to_bytes()).digest())
    assert not explains(hashlib.sha256(data + ap.to_bytes() + bsp.to_bytes()).digest())
    assert not explains(hashlib.sha256(data).digest())


def test_the_guest_owner_measures_the_vmsas_of_an_es_launch(build) -> None:
    """An owner who expects the VMM's reset-state VMSAs (the default for sev-es) gets the ES
    launch; one who expects other register state refuses it: the registers are attested."""
    from sevsim.attest.sev_owner import GuestOwner, expected_launch_digest
    from sevsim.errors import MeasurementError
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.elf import parse_elf

    image = parse_elf(build("hello").read_bytes())
    vmsas = [reset_state().to_bytes()] * 2
    policy = int(PolicyFlags.NODBG | PolicyFlags.NOKS | PolicyFlags.ES)
    good = expected_launch_digest(image, 8 << 20, 2, kernel_identity(), "sev-es", vmsas)
    assert good == expected_launch_digest(image, 8 << 20, 2, kernel_identity(), "sev-es")
    other = bytearray(vmsas[0])
    other[0x178] ^= 1  # another entry RIP
    bad = expected_launch_digest(image, 8 << 20, 2, kernel_identity(), "sev-es",
                                 [bytes(other), vmsas[1]])
    host = Host()
    for digest, ok in ((good, True), (bad, False)):
        vm = host.create_vm(mode="sev-es", memory="8M", vcpus=2)
        vm.load(build("hello"))
        owner = GuestOwner(b"es-secret", digest, policy=policy, trust="sevsim")
        if ok:
            vm.launch(owner=owner)
            assert vm.run(timeout=10).exit_code == 0
        else:
            with pytest.raises(MeasurementError):
                vm.launch(owner=owner)
        vm.destroy()


# -- #VC and the GHCB: both protocols ------------------------------------------------------------

def test_boot_uses_the_msr_protocol_then_the_ghcb_page(build) -> None:
    host = Host()
    vm = launched(host, build("regs"), "sev-es", memory="8M", vcpus=2)
    requests: list[int] = []
    answers: list[int] = []
    events: list[Ghcb] = []

    def spy(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if exit.code is not ExitCode.VMGEXIT:
            return original(hv, vcpu, exit)
        request = vcpu.vmcb.ghcb_gpa
        if msr_code(request):
            requests.append(request)
            keep = original(hv, vcpu, exit)
            answers.append(vcpu.vmcb.ghcb_gpa)
            return keep
        events.append(Ghcb.from_bytes(vm.read_gpa(request, PAGE)))
        return original(hv, vcpu, exit)

    hook_exits(host, spy)
    result = vm.run(timeout=10)
    assert result.exit_code == 3 and "rdmsr SEV_STATUS=0x3" in result.console
    assert [msr_code(r) for r in requests] == [MsrCode.SEV_INFO_REQ, MsrCode.CPUID_REQ,
                                              MsrCode.REG_GPA_REQ]
    assert parse_sev_info(answers[0]) == (2, 1, host.chip.c_bit)
    assert answers[0] == sev_info(2, 1, host.chip.c_bit)
    assert requests[1] == (0x8000_001F << 32 | 1 << 30 | MsrCode.CPUID_REQ)  # EBX
    assert answers[1] >> 32 == host.chip.leaf_8000001f().ebx
    assert answers[2] == (GHCB_GPA | MsrCode.REG_GPA_RESP)
    assert vm.hv.ghcb_gpas == {0: GHCB_GPA}
    kinds = [(e.save["sw_exit_code"], e.save["sw_exit_info_1"]) for e in events]
    assert kinds[0] == (ExitCode.VMMCALL, 0)  # KVM_HC_MAP_GPA_RANGE for the GHCB pages
    assert events[0].save["rax"] == KVM_HC_MAP_GPA_RANGE
    assert (events[0].save["rbx"], events[0].save["rcx"]) == (GHCB_GPA, 2)
    assert vm.shared_pages() == [GHCB_GPA, GHCB_GPA + PAGE]
    assert (ExitCode.MSR, 0) in kinds  # the program's RDMSR 0x10 (SEV_STATUS needs no exit)
    console = [e for e in events if e.save["sw_exit_info_1"] & IOIO_STR]
    assert console and all(e.save["sw_exit_info_1"] == ioio_info(0x3F8, 1, False) | IOIO_STR
                           | IOIO_REP for e in console)
    assert b"".join(e.shared_buffer[:e.save["sw_exit_info_2"]] for e in console) == (
        result.console.encode())
    assert all(e.save["sw_scratch"] == GHCB_GPA + SHARED_BUFFER_OFFSET for e in console)


def test_only_automatic_exits_reach_the_hypervisor(build) -> None:
    host = Host()
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    codes: set[ExitCode] = set()

    def record(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        codes.add(exit.code)
        return original(hv, vcpu, exit)

    hook_exits(host, record)
    assert vm.run(timeout=10).exit_code == 0
    assert codes == {ExitCode.VMGEXIT, ExitCode.HLT}


def test_hypervisor_answers_a_malformed_request_with_a_ghcb_error(build) -> None:
    """The hypervisor side: a request it cannot serve gets SW_EXITINFO1 = 2 and a reason."""
    host = Host()
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    vm.run(timeout=10)
    cases = [
        (Ghcb({"sw_exit_code": ExitCode.CPUID, "sw_exit_info_1": 0, "sw_exit_info_2": 0}),
         GhcbError.MISSING_INPUT),
        (Ghcb({"sw_exit_code": VmgexitEvent.MMIO_READ, "sw_exit_info_1": 0,
               "sw_exit_info_2": 0}), GhcbError.INVALID_EVENT),  # no MMIO in sevsim's VMs
        (Ghcb({"sw_exit_code": ExitCode.CPUID}, usage=1), GhcbError.INVALID_USAGE),
        (Ghcb({"sw_exit_code": ExitCode.IOIO, "sw_exit_info_1": ioio_info(0x80, 1, False)
               | IOIO_STR, "sw_exit_info_2": 4000, "sw_scratch": GHCB_GPA + 0x800}),
         GhcbError.INVALID_SCRATCH_AREA),
        (Ghcb({"sw_exit_code": ExitCode.IOIO, "sw_exit_info_1": ioio_info(0x80, 1, False),
               "sw_exit_info_2": 0}), GhcbError.MISSING_INPUT),
    ]
    for request, error in cases:
        answer = ghcb_answer(host, vm, GHCB_GPA, request)
        assert answer == {"sw_exit_info_1": RESULT_ERROR, "sw_exit_info_2": error}


# -- a malicious hypervisor: typed errors, never a crash ------------------------------------------

def lie_at(host: Host, vm: VirtualMachine, nth: int, page: bytes | None, msr: int) -> None:
    """After the hypervisor answers `vm`'s nth VMGEXIT, replace the answer: the GHCB page
    with `page` (full-page requests) or the GHCB MSR with `msr` (MSR protocol)."""
    count = [0]

    def hook(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        full = full_ghcb_exit(vcpu, exit)
        gpa = vcpu.vmcb.ghcb_gpa
        keep = original(hv, vcpu, exit)
        if exit.code is ExitCode.VMGEXIT:
            count[0] += 1
            if count[0] == nth:
                if full and page is not None:
                    host.hypervisor.write_gpa(hv, gpa, page)
                else:
                    vcpu.vmcb.ghcb_gpa = msr
        return keep

    hook_exits(host, hook)


ghcb_pages = st.builds(
    lambda save, buffer, version, usage: Ghcb(save, buffer, version, usage).to_bytes(),
    st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 3) | st.integers(0, MASK64).map(
        lambda v: v & 0xFF)), st.binary(max_size=64), st.integers(0, 3), st.integers(0, 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nth=st.integers(1, 14), page=st.none() | ghcb_pages | st.binary(min_size=PAGE_SIZE,
                                                                         max_size=PAGE_SIZE),
       msr=st.integers(0, MASK64) | st.sampled_from(list(MsrCode)).map(int)
       | st.integers(0, 1 << 20).map(lambda v: v << 12 | MsrCode.REG_GPA_RESP))
def test_malicious_ghcb_answers_end_the_guest_with_a_typed_error(
        plant_elf: Path, nth: int, page: bytes | None, msr: int) -> None:
    """Whatever the hypervisor answers, the guest either finishes with its registers intact
    or stops with a GuestFault; nothing else escapes the guest kernel."""
    host = Host(memory="64M")
    vm = launched(host, plant_elf, "sev-es", memory="8M")
    lie_at(host, vm, nth, page, msr)
    try:
        result = vm.run(timeout=20)
    except GuestFault as fault:
        event(f"stopped: {type(fault).__name__}")
        assert vm.hv.stopped
        return
    event("finished")
    assert result.exit_code == 0 and "registers kept: yes" in result.console


@pytest.fixture(scope="module")
def plant_elf(build) -> Path:
    return Path(build("plant"))


@pytest.mark.parametrize("nth, lie, message, termination", [
    (1, sev_info(9, 5, 51), "protocol 5..9", (0, 1)),
    (1, sev_info(2, 1, 47), "C-bit 47, its CPUID 51", (0, 0)),
    (1, MsrCode.CPUID_RESP, "answered GHCB MSR request 0x002 with 0x5", (0, 0)),
    (3, 0x42 << 12 | MsrCode.REG_GPA_RESP, "registered GHCB GFN 0x42", (1, 0)),
])
def test_lying_msr_protocol_answers_terminate_the_vm(nth: int, lie: int, message: str,
                                                     termination: tuple[int, int],
                                                     build) -> None:
    host = Host()
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    lie_at(host, vm, nth, None, lie)
    with pytest.raises(GuestFault, match=message):
        vm.run(timeout=10)
    assert vm.hv.termination == termination and vm.hv.stopped
    assert vm.console == ""


@pytest.mark.parametrize("answer, message", [
    (Ghcb({"sw_exit_info_1": 0}), "lacks rax, rbx, rcx, rdx"),
    (Ghcb({"sw_exit_info_1": RESULT_ERROR, "sw_exit_info_2": GhcbError.INVALID_INPUT}),
     "GHCB error INVALID_INPUT"),
    (Ghcb({"sw_exit_info_1": 7}), "SW_EXITINFO1 0x7"),
    (Ghcb({}), "left SW_EXITINFO1 invalid"),
])
def test_bad_ghcb_answers_to_cpuid_terminate_the_vm(answer: Ghcb, message: str, build) -> None:
    host = Host()
    vm = launched(host, build("hello"), "sev-es", memory="8M")
    nth = [0]

    def hook(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        full = full_ghcb_exit(vcpu, exit)
        sent = Ghcb.from_bytes(vm.read_gpa(vcpu.vmcb.ghcb_gpa, PAGE)) if full else Ghcb()
        keep = original(hv, vcpu, exit)
        if sent.save.get("sw_exit_code") == ExitCode.CPUID and not nth[0]:
            nth[0] = 1
            host.hypervisor.write_gpa(hv, vcpu.vmcb.ghcb_gpa, answer.to_bytes())
        return keep

    hook_exits(host, hook)
    with pytest.raises(GuestFault, match=f"CPUID 0x8000001f.*{message}|{message}.*CPUID"):
        vm.run(timeout=10)
    assert vm.hv.termination == (0, 0)


def test_an_unknown_msr_is_a_gp_the_hypervisor_injects_through_the_ghcb(build) -> None:
    host = Host(memory="128M")
    bystander = launched(host, build("hello"), "sev-es", memory="8M")
    vm = launched(host, build("crash", "-DCRASH=4"), "sev-es", memory="8M")
    with pytest.raises(GuestFault, match="#GP: RDMSR of MSR 0xc0de0001"):
        vm.run(timeout=10)
    assert "about to misbehave" in vm.console and vm.hv.stopped
    assert bystander.run(timeout=10).exit_code == 0


def test_unresolved_npf_and_ud_still_stop_an_es_guest(build) -> None:
    host = Host()
    for crash, message in ((1, "nested page fault at GPA 0x7f000000"), (2, "#UD")):
        vm = launched(host, build("crash", f"-DCRASH={crash}"), "sev-es", memory="8M")
        with pytest.raises(GuestFault, match=message):
            vm.run(timeout=10)
        assert "about to misbehave" in vm.console


# -- application processors: the guest starts them -----------------------------------------------

@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_an_ap_the_guest_did_not_ask_for_halts(mode: str, build) -> None:
    host = Host()
    vm = launched(host, build("crash", "-DCRASH=3"), mode, memory="8M", vcpus=2)  # BSP spins
    ap_exits: list[ExitCode] = []

    def kick(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if vcpu.index == 1:
            ap_exits.append(exit.code)
        elif hv.vcpus[1].state is VcpuState.WAIT_FOR_SIPI:
            hv.vcpus[1].start()  # INIT-SIPI, with no start request in guest memory
        return original(hv, vcpu, exit)

    hook_exits(host, kick)
    assert not vm.run_for(0.2)
    # it ran only its guest kernel (under SEV-ES: registering its GHCB), then halted
    assert ap_exits == ([ExitCode.VMGEXIT] if mode == "sev-es" else []) + [ExitCode.HLT]
    assert vm.hv.vcpus[1].state is VcpuState.HALTED
    assert vm.hv.vcpus[0].state is VcpuState.RUNNABLE and "about to misbehave" in vm.console


@pytest.mark.parametrize("mode", MODES)
def test_ap_start_requests_are_the_guests(mode: str, build) -> None:
    vm = launched(Host(), build("apstart"), mode, memory="8M", vcpus=2)
    result = vm.run(timeout=10)
    assert "first 0 second -22 missing -22 ran 1" in result.console


def test_the_hypervisor_cannot_set_an_es_aps_registers(build) -> None:
    host = Host()
    vm = launched(host, build("smp"), "sev-es", vcpus=2)
    ap = vm.hv.vcpus[1]
    with pytest.raises(VmStateError):
        ap.vmcb.write("rip", 0x400000)
    halted: list[int] = []

    def record(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if exit.code is ExitCode.HLT:
            halted.append(vcpu.index)
        return original(hv, vcpu, exit)

    hook_exits(host, record)
    result = vm.run(timeout=30)
    assert result.exit_code == 0 and "vcpus 2 sum" in result.console
    assert halted[0] == 1  # the AP ran the worker the BSP asked for, then halted


# -- the host's write path still invalidates translated code --------------------------------------

def test_host_writes_to_guest_code_take_effect(build) -> None:
    host = Host()
    vm = launched(host, build("patch"), "none", memory="8M")
    answer = symbol(build("patch"), "answer")

    def patch(hv: HvVm, vcpu: Vcpu, exit: VmExit, original: Hook) -> bool:
        if exit.code is ExitCode.IOIO and exit.info1 == ioio_info(0x80, 1, False):
            host.hypervisor.write_gpa(hv, answer, b"\xb8\x02\x00\x00\x00")
        return original(hv, vcpu, exit)

    hook_exits(host, patch)
    assert f"answer at 0x{answer:x}: 1 then 2" in vm.run(timeout=10).console


# -- the command line ------------------------------------------------------------------------------

def test_sevsim_run_mode_sev_es(build) -> None:
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", str(build("secret")), "--mode",
                          "sev-es", "--memory", "16M"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"mode=sev-es chip=milan asid=\d+ memory=16M", ran.stderr)
    assert "launch measurement" in ran.stderr
    assert f"secret digest: 0x{fnv1a64(SECRET):016x}" in ran.stdout


# -- the formats -----------------------------------------------------------------------------------

def test_boot_info_and_reset_state_agree_with_the_engine(build) -> None:
    """The measured reset VMSA is the state a fresh vCPU engine is in (VMRUN checks it)."""
    host = Host()
    vm = host.create_vm(mode="sev-es", memory="8M")
    vm.load(build("hello"))
    boot = BootInfo.from_bytes(vm.read_gpa(BOOTINFO_GPA, PAGE))
    assert boot.mode == "sev-es"
    engine = vcpu_engine(vm.hv.vcpus[0])
    state = reset_state().regs
    assert state["cr0"] == engine.reg_read(x86.UC_X86_REG_CR0)
    assert state["cr4"] == engine.reg_read(x86.UC_X86_REG_CR4)
    assert state["efer"] == engine.reg_read(x86.UC_X86_REG_MSR, 0xC000_0080)
    assert struct.unpack_from("<Q", reset_state().to_bytes(), 0xD0)[0] == state["efer"]
    assert np.frombuffer(reset_state().to_bytes()[0x670:], dtype=np.uint8).sum() == 0


# Offsets in Linux's struct sev_es_save_area and struct ghcb (arch/x86/include/asm/svm.h).
VMSA_OFFSETS = {"es": 0x0, "cs": 0x10, "tr": 0x90, "vmpl": 0xCA, "cpl": 0xCB, "efer": 0xD0,
                "xss": 0x140, "cr4": 0x148, "cr3": 0x150, "cr0": 0x158, "dr7": 0x160,
                "dr6": 0x168, "rflags": 0x170, "rip": 0x178, "rsp": 0x1D8, "rax": 0x1F8,
                "cr2": 0x240, "g_pat": 0x268, "pkru": 0x2E8, "rcx": 0x308, "rdx": 0x310,
                "rbx": 0x318, "rbp": 0x328, "rsi": 0x330, "rdi": 0x338, "r8": 0x340,
                "r15": 0x378, "guest_exit_info_1": 0x390, "sev_features": 0x3B0,
                "event_inj": 0x3E0, "xcr0": 0x3E8, "x87_dp": 0x400, "mxcsr": 0x408,
                "x87_fcw": 0x410, "fpreg_x87": 0x420, "fpreg_xmm": 0x470, "fpreg_ymm": 0x570}
GHCB_OFFSETS = {"cpl": 0xCB, "xss": 0x140, "dr7": 0x160, "rip": 0x178, "rsp": 0x1D8,
                "rax": 0x1F8, "rcx": 0x308, "rbx": 0x318, "r15": 0x378, "sw_exit_code": 0x390,
                "sw_exit_info_1": 0x398, "sw_exit_info_2": 0x3A0, "sw_scratch": 0x3A8,
                "xcr0": 0x3E8, "valid_bitmap": 0x3F0, "x87_state_gpa": 0x400}


def test_vmsa_and_ghcb_layouts_match_linux() -> None:
    assert {name: vmsa.OFFSETS[name][0] for name in VMSA_OFFSETS} == VMSA_OFFSETS
    assert {name: ghcb.OFFSETS[name][0] for name in GHCB_OFFSETS} == GHCB_OFFSETS
    assert vmsa.SAVE_AREA_SIZE == 1648 and ghcb.SAVE_AREA_SIZE == 1032  # EXPECTED_*_SIZE
    shared = [name for name in ghcb.FIELDS if name in vmsa.OFFSETS]
    assert len(shared) == 21  # CPL, XSS, DR7, RIP, the 16 GPRs, XCR0
    for name in shared:  # each sits where the VMSA keeps the same register
        assert ghcb.OFFSETS[name] == vmsa.OFFSETS[name], name
    assert ghcb.valid_bit("rax") == 0x1F8 // 8 and ghcb.valid_bit("cpl") == 25
    page = Ghcb({"rax": 1, "sw_exit_code": 2}, b"buf", 2, 0).to_bytes()
    assert page[0x3F0 + 0x1F8 // 64] == 1 << (0x1F8 // 8 % 8)  # the valid bit, set
    assert page[0x800:0x803] == b"buf" and page[0xFFA:0xFFC] == b"\x02\x00"
    with pytest.raises(ValueError, match="layout"):
        vmsa.layout_offsets((("a", 8), ("reserved_0x10", 8)), 16)


def test_ghcb_msr_protocol_encodings() -> None:
    assert sev_info(2, 1, 51) == 0x0002_0001_3300_0001
    assert ghcb.cpuid_request(0x8000_001F, ghcb.CpuidReg.EBX) == 0x8000_001F_4000_0004
    assert ghcb.parse_cpuid_request(0x8000_001F_4000_0004) == (0x8000_001F, ghcb.CpuidReg.EBX)
    assert ghcb.cpuid_response(0x1234) == 0x1234_0000_0005
    assert ghcb.reg_gpa_request(0x11) == 0x11012 and ghcb.msr_gfn(0x11013) == 0x11
    assert ghcb.term_request(1, 3) == 0x31100
    assert ghcb.parse_term_request(0x31100) == (1, 3)


scalars = st.dictionaries(st.sampled_from(["rax", "r15", "rip", "cr3", "efer", "sev_features",
                                           "mxcsr", "x87_fcw", "pkru", "cpl"]),
                          st.integers(0, 0xFF))


@given(regs=scalars, xmm=st.binary(min_size=256, max_size=256), selector=st.integers(0, 0xFFFF),
       base=st.integers(0, MASK64))
def test_vmsa_round_trips(regs: dict[str, int], xmm: bytes, selector: int, base: int) -> None:
    state = Vmsa(regs, {"fs": Segment(selector, 0x93, 0xFFFF, base)}, fpreg_xmm=xmm)
    page = state.to_bytes()
    assert len(page) == PAGE_SIZE and Vmsa.from_bytes(page).to_bytes() == page
    back = Vmsa.from_bytes(page)
    assert {k: v for k, v in back.regs.items()} == {k: v for k, v in regs.items() if v}
    assert back.fpreg_xmm == xmm


@given(save=st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 0xFF)),
       buffer=st.binary(max_size=2032), version=st.integers(0, 0xFFFF))
def test_ghcb_round_trips(save: dict[str, int], buffer: bytes, version: int) -> None:
    page = Ghcb(save, buffer, version).to_bytes()
    back = Ghcb.from_bytes(page)
    assert back.save == save and back.protocol_version == version
    assert back.shared_buffer[:len(buffer)] == buffer and back.to_bytes() == page


def test_bad_vmsa_and_ghcb_values_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Vmsa({"cpl": 256}).to_bytes()
    with pytest.raises(ValueError, match="no scalar"):
        Vmsa({"xmm0": 1}).to_bytes()
    with pytest.raises(ValueError, match="no segment"):
        Vmsa(segments={"hs": Segment()}).to_bytes()
    with pytest.raises(ValueError, match="fpreg_xmm"):
        Vmsa(fpreg_xmm=b"short").to_bytes()
    with pytest.raises(ValueError, match="shorter"):
        Vmsa.from_bytes(bytes(0x66F))
    with pytest.raises(ValueError, match="no field"):
        Ghcb({"rip2": 1}).to_bytes()
    with pytest.raises(ValueError, match="shared buffer"):
        Ghcb(shared_buffer=bytes(2033)).to_bytes()
    with pytest.raises(ValueError, match="4 KiB"):
        Ghcb.from_bytes(bytes(100))
