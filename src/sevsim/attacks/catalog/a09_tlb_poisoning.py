"""A9: TLB poisoning, stale translations of one vCPU used by another vCPU of the same ASID."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab

SECRET_BYTES = 32


class TlbPoisoning(Attack):
    """The VM's vCPUs share its ASID, and TLB entries are tagged by ASID only. KVM flushes
    the ASID when a different vCPU of the VM runs on the CPU; the malicious hypervisor leaves
    that out. The tenant process on vCPU 1 (the attacker's unprivileged foothold) fills the
    TLB with its translation of window page 0; the service on vCPU 0 then stores its key
    through the same virtual page, hits the tenant's entry, and writes the key into the
    tenant's page, which the tenant reports."""

    id = "A9"
    name = "TLB poisoning"
    actor = "malicious hypervisor with an unprivileged process in the VM"
    source = ("Li, Zhang, Wang, Li, Cheng: TLB Poisoning Attacks on AMD Secure Encrypted "
              "Virtualization, ACSAC 2021")

    def not_applicable(self, setting: Setting) -> str | None:
        """No SEV: the hypervisor reads the service's memory directly (A0)."""
        if setting.mode == "none":
            return "no memory encryption: the hypervisor reads the vault directly (A0)"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Run the two processes with the flush between their vCPUs left out."""
        victim = lab.victim("tlb_tenants", vcpus=2)
        vm, hv = victim.vm, lab.hypervisor
        hv.skip_tlb_flush(vm)
        lab.trace(f"ASID {vm.asid}: vCPU 0 (service) and vCPU 1 (tenant) scheduled on one CPU "
                  "without KVM's TLB flush between them")
        hv.run(vm)
        report = vm.outputs[0][:SECRET_BYTES] if vm.outputs else b""
        lab.trace(f"the tenant reports its scratch page: {report.hex()}")
        saw = ("the tenant's page stayed empty: the service's store did not use the tenant's "
               "TLB entry (the CPU flushed the ASID when the other vCPU's VMSA ran)"
               if report == bytes(SECRET_BYTES) else f"the tenant reported {report.hex()}")
        return Attempt(report, saw)
