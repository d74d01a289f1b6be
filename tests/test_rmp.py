"""SEV-SNP's reverse map table: host writes, remapping, validation, page state changes."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import blocks_found, secret_bytes, symbol
from sevsim import Host
from sevsim.abi.bootinfo import BOOTINFO_GPA, MAGIC
from sevsim.abi.rmp import FRAMES_2M, PAGE_2M, PERM_READ, RmpResult
from sevsim.abi.svm import NPF_RMP
from sevsim.errors import (
    FirmwareError,
    GuestFault,
    PageNotValidated,
    RmpInstructionError,
    RmpViolation,
)
from sevsim.guest.kernel import GHCB_GPA, KERNEL_END
from sevsim.host.hypervisor import HvVm
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.cpu import GuestCpu, Vcpu
from sevsim.hw.engine import PAGE
from sevsim.testing import memory_controller

SECRET = secret_bytes()


def launched(host: Host, elf: object, mode: str = "snp", memory: str = "16M") -> VirtualMachine:
    vm = host.create_vm(mode=mode, memory=memory)
    vm.load(elf)  # type: ignore[arg-type]
    vm.launch()
    return vm


def frame_of(vm: VirtualMachine, gpa: int) -> int:
    return vm.hypervisor.gpa_to_spa(vm.hv, gpa) // PAGE


# -- host writes ------------------------------------------------------------------------------

def test_host_writes_to_snp_private_pages_fault_and_change_nothing(build) -> None:
    host = Host()
    vm = launched(host, build("hello"))
    assert vm.run(timeout=10).exit_code == 0
    before_gpa, before_dram = vm.read_gpa(BOOTINFO_GPA, PAGE), host.dram_dump().tobytes()
    with pytest.raises(RmpViolation, match=r"belongs to ASID 1"):
        vm.write_gpa(BOOTINFO_GPA + 0x10, b"\0" * 16)
    with pytest.raises(RmpViolation):  # a write spanning a shared and a private page
        host.hypervisor.write_spa(frame_of(vm, BOOTINFO_GPA) * PAGE - 8, b"\0" * 16)
    gctx = vm.hv.firmware_handle
    with pytest.raises(RmpViolation, match="the firmware"):
        host.hypervisor.write_spa(gctx, b"\0" * 16)
    assert vm.read_gpa(BOOTINFO_GPA, PAGE) == before_gpa  # reads still work: ciphertext
    assert MAGIC not in before_gpa
    assert host.dram_dump().tobytes() == before_dram
    # the GHCB is shared: the hypervisor writes it on every exit
    vm.write_gpa(GHCB_GPA, b"\0" * 16)


def test_sev_and_sev_es_guests_are_unaffected_on_an_snp_host(build) -> None:
    host = Host()
    launched(host, build("hello")).run(timeout=10)
    assert memory_controller(host).rmp.enabled
    for mode in ("sev", "sev-es"):
        vm = launched(host, build("hello"), mode)
        vm.run(timeout=10)
        vm.write_gpa(BOOTINFO_GPA, b"\0" * 16)  # no RMP for them: SEV's integrity gap stays
        assert not memory_controller(host).rmp.assigned[frame_of(vm, BOOTINFO_GPA)]


def test_the_secret_is_in_no_host_visible_byte_under_snp(build) -> None:
    host = Host()
    vm = launched(host, build("secret"))
    result = vm.run(timeout=20)
    assert result.exit_code == 0
    shared = symbol(build("secret"), "shared_page")
    assert b"PUBLIC-MESSAGE-FOR-THE-HOST" in vm.read_gpa(shared, PAGE)
    assert not memory_controller(host).rmp.assigned[frame_of(vm, shared)]  # PSC made it the host's
    for name, view in (("host view", vm.host_view()), ("DRAM", host.dram_dump().tobytes())):
        assert blocks_found(view, SECRET) == 0, name
    # the plaintext is in the guest's own view
    cpu = GuestCpu(vm.hv.vcpus[0])
    assert cpu.read(symbol(build("secret"), "secret_page"), PAGE) == SECRET


def test_examples_print_the_same_console_under_snp(build) -> None:
    host = Host(memory="256M")
    for name, vcpus in (("secret", 1), ("smp", 3), ("plant", 1), ("apstart", 2)):
        consoles = []
        for mode in ("sev-es", "snp"):
            vm = host.create_vm(mode=mode, memory="16M", vcpus=vcpus)
            vm.load(build(name))
            vm.launch()
            result = vm.run(timeout=60)
            vm.destroy()
            assert result.exit_code == 0, (mode, name, result.console)
            consoles.append(result.console)
        assert consoles[0] == consoles[1], name


@pytest.mark.parametrize(("refuse_from", "message"), [
    (0, "refused the state change of GFN 0x11"),  # the GHCB, over the MSR protocol
    (KERNEL_END // PAGE, "hypervisor did 0 of 1 page state changes"),  # SYS_SET_SHARED
])
def test_a_refused_page_state_change_terminates_the_guest(refuse_from: int, message: str,
                                                         build) -> None:
    host = Host()
    vm = launched(host, build("secret"))
    honest = host.hypervisor.page_state_change

    def refuse(hv: HvVm, gfn: int, operation: int) -> int:
        return 1 if gfn >= refuse_from else honest(hv, gfn, operation)

    host.hypervisor.page_state_change = refuse  # type: ignore[method-assign]
    with pytest.raises(GuestFault, match=message):
        vm.run(timeout=10)
    assert vm.hv.termination is not None


def test_a_psc_the_hypervisor_only_pretends_to_do_leaves_the_ghcb_unusable(build) -> None:
    host = Host()
    vm = launched(host, build("hello"))
    host.hypervisor.page_state_change = lambda hv, gfn, op: 0  # type: ignore[method-assign]
    with pytest.raises(GuestFault, match="guest write of 0x11000"):
        vm.run(timeout=10)
    assert memory_controller(host).rmp.assigned[frame_of(vm, GHCB_GPA)]
    # the guest's zeroing of its "shared" GHCB did not reach the frame the RMP still gives it
    assert host.hypervisor.read_spa(frame_of(vm, GHCB_GPA) * PAGE, 16) != bytes(16)


# -- nested translation ---------------------------------------------------------------------

def test_a_remapped_frame_works_under_sev_and_is_an_rmp_npf_under_snp(build) -> None:
    """SEVered's move: map another frame of the same guest at a GPA. Under SEV the guest reads
    that page's plaintext; under SNP the RMP's GPA does not match and the access exits (the
    kernel's own read at boot takes the #NPF as an instruction's would)."""
    elf = build("window")
    window = symbol(elf, "window")
    host = Host()
    seen: list[tuple[int, int]] = []

    def on_npf(vm: HvVm, vcpu: Vcpu, gpa: int, info1: int) -> bool:
        seen.append((gpa, info1))
        return False

    for mode in ("sev", "snp"):
        vm = launched(host, elf, mode)
        vm.hv.npf_handler = on_npf
        host.hypervisor.npt_map(vm.hv, window, frame_of(vm, BOOTINFO_GPA) * PAGE)
        if mode == "sev":
            console = vm.run(timeout=10).console
            assert " ".join(f"{b:02x}" for b in MAGIC) in console
        else:
            with pytest.raises(GuestFault, match="nested page fault"):
                vm.run(timeout=10)
            assert seen == [(window, seen[0][1])] and seen[0][1] & NPF_RMP
            # the first to touch the page is the kernel, measuring the program into the
            # SNP-bound vTPM at boot: it takes the #NPF, the program never runs
            assert vm.console == ""


def test_a_page_the_hypervisor_reassigned_is_not_validated(build) -> None:
    elf = build("window")
    window = symbol(elf, "window")
    host = Host()
    vm = launched(host, elf)
    host.hypervisor.rmp_assign(vm.hv, window // PAGE, 1)  # same ASID, same GPA: validated lost
    with pytest.raises(PageNotValidated, match=f"#VC page not validated at GPA 0x{window:x}"):
        vm.run(timeout=10)


def test_pvalidate_reports_double_validation_and_checks_ownership(build) -> None:
    host = Host()
    vm = launched(host, build("hello"))
    vm.run(timeout=10)
    cpu = GuestCpu(vm.hv.vcpus[0])
    heap = 0x800000
    assert cpu.pvalidate(heap, 2, True).tolist() == [True, True]  # the kernel validated it
    assert cpu.pvalidate(heap, 1, False).tolist() == [False]
    assert cpu.pvalidate(heap, 2, False).tolist() == [True, False]
    assert cpu.pvalidate(heap, 2, True).tolist() == [False, False]
    with pytest.raises(RmpInstructionError, match="FAIL_INPUT"):
        cpu.pvalidate(GHCB_GPA, 1, True)  # a shared page: the hypervisor's
    cpu.rmpadjust(heap, 1, PERM_READ)
    assert memory_controller(host).rmp.perms[frame_of(vm, heap)].tolist() == [15, PERM_READ, 0, 0]
    with pytest.raises(GuestFault, match="outside SEV-SNP"):
        GuestCpu(launched(host, build("hello"), "sev-es").hv.vcpus[0]).pvalidate(heap, 1, True)


def test_the_kernel_terminates_when_a_page_was_already_validated(build) -> None:
    host = Host()
    vm = launched(host, build("hello"))
    ghcb_frame = frame_of(vm, GHCB_GPA)
    # a page the kernel validates at boot, validated already behind its back
    memory_controller(host).rmp.validated[ghcb_frame] = True
    with pytest.raises(GuestFault, match=r"already validated"):
        vm.run(timeout=10)
    assert vm.hv.termination is not None


# -- the instructions ------------------------------------------------------------------------

def test_rmpupdate_refuses_vmsa_and_firmware_pages_and_changes_nothing(build) -> None:
    host = Host()
    vm = launched(host, build("hello"))
    rmp = memory_controller(host).rmp
    vmsa = vm.hv.vcpus[0].vmsa_spa // PAGE  # type: ignore[operator]
    gctx = vm.hv.firmware_handle // PAGE
    state = (rmp.assigned.copy(), rmp.validated.copy(), rmp.asid.copy())
    with pytest.raises(RmpInstructionError) as err:
        rmp.rmpupdate(np.array([vmsa]))
    assert err.value.code in (RmpResult.FAIL_PERMISSION, RmpResult.FAIL_INUSE)
    with pytest.raises(RmpInstructionError, match="FAIL_PERMISSION"):
        rmp.rmpupdate(np.array([gctx]))
    with pytest.raises(RmpInstructionError, match="FAIL_INPUT"):
        rmp.rmpupdate(np.array([rmp.nframes]))
    assert all((a == b).all() for a, b in zip(state, (rmp.assigned, rmp.validated, rmp.asid),
                                              strict=True))
    assert vm.run(timeout=10).exit_code == 0


def test_psmash_splits_a_2m_entry_and_rmpadjust_sets_vmpl_permissions() -> None:
    host = Host()
    host.firmware.snp_init()
    rmp = memory_controller(host).rmp
    frames = np.arange(4 * FRAMES_2M, 5 * FRAMES_2M)
    with pytest.raises(RmpInstructionError, match="FAIL_INPUT"):
        rmp.rmpupdate(frames[1:], 5, np.arange(1, FRAMES_2M), PAGE_2M)
    with pytest.raises(RmpInstructionError, match="FAIL_SIZEMISMATCH"):
        rmp.psmash(int(frames[0]))
    rmp.rmpupdate(frames, 5, np.arange(FRAMES_2M), PAGE_2M)
    with pytest.raises(RmpInstructionError, match="FAIL_SIZEMISMATCH"):
        rmp.pvalidate(frames[:1], True)
    rmp.psmash(int(frames[0]))
    assert rmp.pvalidate(frames[:1], True).tolist() == [False]
    rmp.rmpadjust(int(frames[0]), 0, 1, PERM_READ)
    assert rmp.perms[frames[0]].tolist() == [15, PERM_READ, 0, 0]
    with pytest.raises(RmpInstructionError, match="FAIL_PERMISSION"):
        rmp.rmpadjust(int(frames[0]), 1, 1, PERM_READ)
    with pytest.raises(RmpInstructionError, match="FAIL_INPUT"):
        rmp.rmpadjust(int(frames[1]), 0, 1, PERM_READ)  # not validated


def test_destroying_an_snp_vm_gives_every_page_back(build) -> None:
    host = Host(memory="128M")
    vm = launched(host, build("secret"), memory="32M")
    vm.run(timeout=20)
    frames = np.concatenate((vm.hv.frames, vm.hv.vmsa_frames, [vm.hv.gctx_frame]))
    vm.destroy()
    assert not memory_controller(host).rmp.assigned[frames].any()
    assert host.firmware.snp_platform_status().guest_count == 0
    again = launched(host, build("secret"), memory="32M")
    assert again.run(timeout=20).exit_code == 0


def test_legacy_sev_commands_cannot_be_aimed_at_snp_or_firmware_pages(build) -> None:
    host = Host()
    snp = launched(host, build("hello"))
    fw = host.firmware
    handle = fw.launch_start(0x5)  # a legacy SEV-ES guest, still in LUPDATE
    fw.activate(handle, 2)
    victims = [frame_of(snp, BOOTINFO_GPA) * PAGE, snp.hv.firmware_handle,
               snp.hv.vcpus[0].vmsa_spa]
    before = host.dram_dump().tobytes()
    for spa in victims:
        for command in (fw.launch_update_data, fw.launch_update_vmsa):
            with pytest.raises(FirmwareError, match=r"INVALID_ADDRESS.*RMP violation"):
                command(handle, spa, PAGE)
    assert host.dram_dump().tobytes() == before
    assert snp.run(timeout=10).exit_code == 0
