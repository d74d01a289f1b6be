"""Attacks through the nested page tables and the vCPU controls (attacks.md A5-A9, A11; their
verdicts at every level are checked in tests/test_attack_matrix.py); the mechanisms they
stand on (the key follows VMCB.ASID, a resumed access faults again, VMRUN's VMSA checks, the
ASID-tagged TLB and who flushes it) are tested on their own."""

from __future__ import annotations

import contextlib

import pytest

from sevsim import Host
from sevsim.abi.svm import NPF_RMP
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import MODES, Attempt, Setting, Trace
from sevsim.attacks.lab import Lab
from sevsim.attacks.runner import run_attack
from sevsim.errors import GuestFault, VmrunError
from sevsim.host.hypervisor import HvVm
from sevsim.hw.cpu import Vcpu
from sevsim.hw.tlb import WINDOW_BASE, Tlb
from sevsim.testing import vcpu_engine


def test_each_attack_is_deterministic() -> None:
    first = run_attack(ATTACKS["A6"], Setting("sev"))
    assert run_attack(ATTACKS["A6"], Setting("sev")) == first


def test_the_key_follows_the_asid_in_the_vmcb() -> None:
    """The attacker's VM maps the victim's secret frame: under its own ASID it reads the
    frame's decryption under its own key (garbage); with the victim's ASID written into its
    VMCB it reads the victim's plaintext, and its own memory turns to garbage instead."""
    lab = Lab(Setting("sev"), Trace())
    victim = lab.victim("secret_in_memory")
    victim.vm.run(timeout=30)
    own = lab.victim("crossline_attacker")
    hv = lab.hypervisor
    while not own.vm.outputs:
        hv.step(own.vm)
    engine = vcpu_engine(own.vm.hv.vcpus[0])
    probe, code = 0x800000, own.symbol("main")
    hv.remap(own.vm, probe, hv.gpa_to_spa(victim.vm, victim.symbol("secret")))
    own_key, own_code = bytes(engine.mem_read(probe, 32)), bytes(engine.mem_read(code, 16))
    assert not lab.judge(Attempt(own_key, ""))
    hv.set_asid(own.vm, victim.vm.asid)
    # VMRUN with the victim's ASID; its own code, decrypted under that key, may not decode
    with contextlib.suppress(GuestFault):
        hv.step(own.vm)
    assert lab.judge(Attempt(bytes(engine.mem_read(probe, 32)), ""))
    assert bytes(engine.mem_read(code, 16)) != own_code


@pytest.mark.parametrize(("mode", "why"), [
    ("sev-es", "fails its integrity check"),
    ("snp", "does not tag SPA 0x[0-9a-f]+ as a VMSA of ASID"),
])
def test_vmrun_refuses_an_own_vmsa_under_another_asid(mode: str, why: str) -> None:
    """CrossLine with the attacker VM's own register state: under SEV-ES its VMSA decrypts to
    garbage under the victim's key and fails the integrity check; under SNP the RMP does not
    tag it as a VMSA of the victim's ASID."""
    lab = Lab(Setting(mode), Trace())
    victim = lab.victim("secret_in_memory")
    own = lab.victim("crossline_attacker")
    lab.hypervisor.step(own.vm)
    lab.hypervisor.set_asid(own.vm, victim.vm.asid)
    with pytest.raises(VmrunError, match=why):
        lab.hypervisor.step(own.vm)


def test_vmrun_refuses_an_asid_without_a_key() -> None:
    lab = Lab(Setting("sev"), Trace())
    victim = lab.victim("secret_in_memory")
    lab.hypervisor.step(victim.vm)
    lab.hypervisor.set_asid(victim.vm, victim.vm.asid + 7)  # a slot nothing activated
    with pytest.raises(VmrunError, match=f"ASID {victim.vm.asid + 7} has no key loaded"):
        lab.hypervisor.step(victim.vm)


def test_a_hypervisor_that_never_maps_the_page_livelocks_the_guest_into_a_fault() -> None:
    lab = Lab(Setting("sev"), Trace())
    victim = lab.victim("page_channel")
    hv, vm = lab.hypervisor, victim.vm
    hv.step(vm)
    calls: list[int] = []

    def handler(record: HvVm, vcpu: Vcpu, gpa: int, info1: int) -> bool:
        calls.append(gpa)
        return True  # "resolved", but the page stays unmapped

    vm.hv.npf_handler = handler
    hv.unmap(vm, victim.symbol("tick"))
    with pytest.raises(GuestFault, match="1000 #NPFs at GPA"):
        hv.run(vm)
    assert set(calls) == {victim.symbol("tick")} and len(calls) == 1000


def test_a_resumed_access_to_a_page_still_refused_faults_again() -> None:
    """The hypervisor answers a #NPF by remapping the page to a frame the RMP refuses at that
    GPA: the guest's access executes again and faults again, now with the RMP bit."""
    lab = Lab(Setting("snp"), Trace())
    victim = lab.victim("page_channel")
    hv, vm = lab.hypervisor, victim.vm
    hv.step(vm)  # past the guest kernel's boot
    tick, elsewhere = victim.symbol("tick"), hv.gpa_to_spa(vm, victim.symbol("zeros"))
    seen: list[int] = []

    def handler(record: HvVm, vcpu: Vcpu, gpa: int, info1: int) -> bool:
        del record, vcpu
        seen.append(info1)
        if len(seen) == 1:
            assert gpa == tick
            hv.remap(vm, tick, elsewhere)
            return True
        return False

    vm.hv.npf_handler = handler
    hv.unmap(vm, tick)
    with pytest.raises(GuestFault, match=r"RMP check failed .* gives it to ASID"):
        hv.run(vm)
    assert len(seen) == 2 and not seen[0] & NPF_RMP and seen[1] & NPF_RMP


@pytest.mark.parametrize("mode", ["sev", "sev-es", "snp"])
def test_with_kvms_flush_each_process_uses_its_own_translation(mode: str) -> None:
    """The same two processes without the attacker: KVM flushes the ASID when the other vCPU
    ran last, every window walk uses its own vCPU's page table, the key stays in the vault."""
    lab = Lab(Setting(mode), Trace())
    victim = lab.victim("tlb_tenants", vcpus=2)
    lab.hypervisor.run(victim.vm)
    assert victim.vm.outputs == [bytes(32)]
    assert "key stored" in victim.vm.console


def test_the_tlb_is_tagged_by_asid_and_flushed_by_whoever_may() -> None:
    """Cached translations survive VMRUN for every vCPU of the ASID until a flush; SEV-SNP's
    flush at a change of VMSA is the hardware's and nothing the host sets turns it off."""
    tlb = Tlb()
    tlb.fill(5, WINDOW_BASE, 0x123)
    assert tlb.entries(5) == {WINDOW_BASE: 0x123} and tlb.entries(6) == {}
    assert tlb.ran(5, 0x1000) is None and tlb.ran(5, 0x2000) == 0x1000
    tlb.flush(5)
    assert tlb.entries(5) == {}
    lab = Lab(Setting("snp"), Trace())
    victim = lab.victim("tlb_tenants", vcpus=2)
    lab.hypervisor.skip_tlb_flush(victim.vm)
    lab.hypervisor.run(victim.vm)
    assert victim.vm.outputs == [bytes(32)]  # skipped by the host, flushed by the CPU


@pytest.mark.parametrize("mode", MODES)
def test_a_window_maps_only_the_programs_own_pages_inside_the_window_range(
        build, mode: str) -> None:
    """sev_map_window: -EINVAL below or beyond the window range, for an unaligned page or a
    kernel page; a good window reaches the page it names."""
    vm = Host().create_vm(mode, "16M")
    vm.load(build("windows"))
    vm.launch()
    assert vm.run(timeout=30).console == "-22 -22 -22 -22 0 5eed\n"
