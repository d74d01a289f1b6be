"""A15: CacheWarp: the host's INVD drops the victim's latest store (Dropforge)."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Fault

HONEST = b"access denied"
CHANGED = b"access granted"


class CacheWarp(Attack):
    """Single-step the victim to the store that locks it, let the store retire into a dirty
    cache line and drop the line with INVD: the lock "warps back" to what DRAM held."""

    id = "A15"
    name = "CacheWarp (INVD drops dirty lines)"
    actor = "malicious hypervisor"
    source = ("R. Zhang et al., 'CacheWarp: Software-based Fault Injection using Selective "
              "State Reset', USENIX Security 2024; CVE-2023-20592, AMD-SB-3005")
    fixes = (Setting("snp", features=frozenset({"invd-fixed-ucode"})), Setting("snp", "genoa"))
    flaws = frozenset({"vulnerable_cachewarp"})

    def not_applicable(self, setting: Setting) -> str | None:
        """Without memory encryption the host writes guest memory directly: nothing to warp."""
        if setting.mode == "none":
            return "no memory encryption: the hypervisor writes the guest's memory directly"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Trace the victim's page of `locked`; at its first write fault write the cache back,
        let that one store retire, INVD, run the victim to its answer."""
        victim = lab.victim("lock_then_check", honest=HONEST)
        hv, vm = lab.hypervisor, victim.vm
        gpa = victim.symbol("locked")
        lab.trace(f"victim's `locked` is at GPA 0x{gpa:x} (SPA "
                  f"0x{hv.gpa_to_spa(vm, gpa):x}); it is 0 in the launched image")
        hv.step(vm)  # the guest kernel boots (and validates its memory) on the first VMRUN

        def at_fault(fault: Fault) -> None:
            # the store is about to retire: everything dirty before it goes to DRAM now
            lab.trace(f"#NPF at GPA 0x{fault.gpa:x} (write={fault.write}): WBINVD wrote back "
                      f"{hv.wbinvd()} dirty line(s); the next store is the victim's lock")

        with hv.holding_cache(), hv.tracing_faults(vm, [gpa], at_fault) as trace:
            steps = 0
            while not trace.faults and hv.step(vm):
                steps += 1
            lab.trace(f"single-stepped {steps} instruction(s) to the store into that page")
            lab.trace(f"INVD right after the store, with {hv.invd()} dirty line(s) cached")
        hv.run(vm)
        console = vm.console.strip()
        lab.trace(f"the victim answered {console!r}")
        answer = CHANGED if CHANGED.decode() in console else HONEST
        return Attempt(answer, f"the victim still answered {console!r}: the lock reached "
                               "DRAM (INVD wrote the dirty line back)")
