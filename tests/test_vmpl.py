"""VMPLs: VMPL0 runs code at VMPL1 on a vCPU of its own, from a VMSA it built and tagged with
RMPADJUST; VMPL1 reaches only the pages VMPL0 gave it, with the permissions it gave, and
asks for reports with VMPCK1, which the firmware answers only for VMPL1 and below."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import blocks_found, symbol
from sevsim import Host
from sevsim.abi.rmp import PERM_ALL, PERM_EXEC_SUPER, PERM_READ, PERM_WRITE
from sevsim.abi.snp_report import REPORT_SIZE, verify_report
from sevsim.abi.svm import NPF_FETCH, NPF_RMP, NPF_VMPL, NPF_WRITE
from sevsim.errors import GuestFault, RmpInstructionError
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.engine import PAGE
from sevsim.testing import memory_controller, snp_context

SECRET = b"VMPL0-ONLY-SECRT"
NONCE = bytes(range(0x80, 0xC0))


def vmpl_vm(build: Callable[..., Path], action: bytes) -> tuple[Host, VirtualMachine]:
    host = Host(chip="milan")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("vmpl"))
    vm.host_input = action + NONCE
    vm.launch()
    return host, vm


def test_vmpl1_gets_a_report_for_vmpl1_signed_by_the_vcek(build: Callable[..., Path]) -> None:
    host, vm = vmpl_vm(build, b"r")
    result = vm.run(timeout=30)
    assert result.exit_code == 0, result.console
    assert "VMPL0: rmpadjust 0, VMPL1 on vCPU 1" in result.console
    assert "VMPL1 report rc 0" in result.console
    [blob] = vm.outputs
    assert len(blob) == REPORT_SIZE
    firmware = host.firmware
    report = verify_report(blob, firmware.vcek_public_key(firmware.tcb))
    assert report.vmpl == 1 and report.report_data == NONCE
    assert report.measurement == snp_context(firmware, vm.hv.firmware_handle).launch_digest
    assert [v.vmpl for v in vm.hv.vcpus] == [0, 1]
    # VMPL1's secrets page holds VMPCK1-3 only: VMPCK0 never left VMPL0's page
    vmpck0 = snp_context(firmware, vm.hv.firmware_handle).vmpcks[0]
    assert not blocks_found(host.dram_dump(), vmpck0)  # nor anywhere the host can see


@pytest.mark.parametrize(("action", "gpa_from_end", "bits"), [
    (b"s", 16, NPF_RMP | NPF_VMPL),  # read of a page VMPL1 was given nothing on
    (b"w", 17, NPF_RMP | NPF_VMPL | NPF_WRITE),  # write of a page it may only read
])
def test_vmpl1_faults_outside_its_permissions(build: Callable[..., Path], action: bytes,
                                              gpa_from_end: int, bits: int) -> None:
    _, vm = vmpl_vm(build, action)
    exits: list[tuple[int, int]] = []
    vm.hv.npf_handler = lambda hv_vm, vcpu, gpa, info1: exits.append((gpa, info1)) is not None
    with pytest.raises(GuestFault, match="VMPL1 permission fault"):
        vm.run(timeout=30)
    [(gpa, info1)] = exits
    assert gpa == symbol(build("vmpl"), "_end") + gpa_from_end * PAGE
    assert info1 & bits == bits
    assert "secret byte" not in vm.console and "wrote the read-only" not in vm.console


def test_vmpl1_cannot_fetch_code_without_execute_permission(
        build: Callable[..., Path]) -> None:
    _, vm = vmpl_vm(build, b"x")
    exits: list[int] = []
    vm.hv.npf_handler = lambda hv_vm, vcpu, gpa, info1: exits.append(info1) is not None
    with pytest.raises(GuestFault, match="VMPL1 permission fault"):
        vm.run(timeout=30)
    assert exits and exits[0] & NPF_FETCH and exits[0] & NPF_VMPL


def test_vmpl1_cannot_do_what_only_vmpl0_may(build: Callable[..., Path]) -> None:
    _, vm = vmpl_vm(build, b"p")
    result = vm.run(timeout=30)
    assert result.exit_code == 0, result.console
    lines = dict(line.rsplit(" ", 1) for line in result.console.splitlines()[1:])
    assert lines == {"rmpadjust same VMPL": "-1", "rmpadjust more than held": "-1",
                     "rmpadjust read to VMPL2": "0", "set shared": "-1", "vmpl start": "-1"}


def test_the_secret_page_stays_vmpl0s(build: Callable[..., Path]) -> None:
    host, vm = vmpl_vm(build, b"s")
    with pytest.raises(GuestFault):
        vm.run(timeout=30)
    rmp = memory_controller(host).rmp
    frames = np.flatnonzero(rmp.assigned & (rmp.asid == vm.hv.asid))
    vmsas = frames[rmp.vmsa[frames]]
    assert len(vmsas) >= 2  # the launch VMSA and the one VMPL0 built for VMPL1
    assert not blocks_found(host.dram_dump(), SECRET)


def test_rmpadjust_rules() -> None:
    host = Host()
    host.firmware.snp_init()
    rmp = memory_controller(host).rmp
    frames = np.arange(0x3000, 0x3004)
    rmp.rmpupdate(frames, 7, np.arange(4))
    rmp.pvalidate(frames, True)
    frame = int(frames[0])
    assert rmp.perms[frame].tolist() == [PERM_ALL, 0, 0, 0]
    rmp.rmpadjust(frame, 0, 1, PERM_READ | PERM_WRITE)
    rmp.rmpadjust(frame, 1, 2, PERM_READ)  # VMPL1 passes on part of what it holds
    before = rmp.perms.copy(), rmp.vmsa.copy()
    for caller, target, perms, vmsa, code in (
            (1, 2, PERM_EXEC_SUPER, False, "FAIL_PERMISSION"),  # more than VMPL1 holds
            (2, 1, PERM_READ, False, "FAIL_PERMISSION"),  # upwards
            (1, 1, PERM_READ, False, "FAIL_PERMISSION"),  # its own level
            (1, 2, 0, True, "FAIL_PERMISSION"),  # only VMPL0 makes VMSAs
            (0, 4, PERM_READ, False, "FAIL_INPUT"),  # no VMPL4
            (0, 1, 0x10, False, "FAIL_INPUT")):  # no such permission bit
        with pytest.raises(RmpInstructionError, match=code):
            rmp.rmpadjust(frame, caller, target, perms, vmsa)
    assert (rmp.perms == before[0]).all() and (rmp.vmsa == before[1]).all()
    rmp.rmpadjust(int(frames[1]), 0, 1, 0, vmsa=True)
    assert rmp.vmsa[frames[1]]
    rmp.rmpadjust(int(frames[1]), 0, 1, 0, vmsa=False)
    assert not rmp.vmsa[frames[1]]
    rmp.pvalidate(frames[:1], False)  # rescinding validation drops every VMPL's permissions
    assert rmp.perms[frame].tolist() == [0, 0, 0, 0]


def test_busy_hypervisor_makes_the_guest_send_the_same_message_again(
        build: Callable[..., Path]) -> None:
    host = Host(chip="milan")
    host.hypervisor.request_rate = (50.0, 1)  # one request now, then 50 per second
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("snp_key"))
    vm.launch()
    result = vm.run(timeout=30)
    assert result.exit_code == 0, result.console
    assert [line for line in result.console.splitlines() if line.startswith("key")] == [
        "key 0 rc 0", "key 1 rc 0", "key 2 rc 0"]
    assert vm.hv.busy_answers > 0  # the hypervisor did say BUSY, and nothing was lost
    assert len(set(vm.outputs)) == 1 and vm.outputs[0] != bytes(32)
