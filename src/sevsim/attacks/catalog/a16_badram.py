"""A16: BadRAM. A rewritten SPD makes every DRAM cell answer at two SPAs.

A physical attacker reprograms the modules' SPD EEPROM to claim one more address bit; after a
reboot the memory controller maps twice the installed memory, and SPA s + size reaches the
cells of SPA s. The RMP is indexed by SPA and the alias has no guest entry, so the colluding
hypervisor writes an SNP guest's cells through the alias unchecked: the replay that the RMP
stops in A3 goes through. The victim is A3's PIN pad with its attempt counter.

The fix (AMD-SB-3015) is in the boot firmware: sevsim's SNP_INIT probes the memory map for
aliases when the platform runs it (`alias-check`) and refuses to initialise SNP
(INVALID_CONFIG), so no SNP guest ever starts on the doctored modules.
"""

from __future__ import annotations

from sevsim.abi.svm import SEVSIM_HC_HOST_INPUT
from sevsim.attacks.catalog.a03_replay import GRANTED, LOCKED
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab


class BadRam(Attack):
    """Replay the victim's attempt counter through a DRAM alias the RMP does not cover."""

    id = "A16"
    name = "BadRAM (SPD alias)"
    actor = "physical attacker (SPD rewrite) + malicious hypervisor"
    source = ("De Meulemeester et al., 'BadRAM: Practical Memory Aliasing Attacks on Trusted "
              "Execution Environments', IEEE S&P 2025; CVE-2024-21944, AMD-SB-3015")
    fixes = (Setting("snp", features=frozenset({"alias-check"})),)

    def attempt(self, lab: Lab) -> Attempt:
        """Alias the modules, boot the victim, then replay the counter through the alias."""
        offset = lab.physical.spd_alias()
        lab.trace(f"rewrote the SPD to claim one more address bit: SPA s + 0x{offset:x} now "
                  "reaches the cells of SPA s")
        victim = lab.victim("pin_lockout", honest=LOCKED)
        gpa = victim.symbol("attempts_left")
        spa = lab.hypervisor.gpa_to_spa(victim.vm, gpa)
        alias = spa + offset
        entry = lab.hypervisor.rmp_entry(spa)
        lab.trace(f"`attempts_left` (GPA 0x{gpa:x}) is at SPA 0x{spa:x} (RMP: assigned="
                  f"{entry.assigned}, ASID {entry.asid}); its alias 0x{alias:x} has no RMP entry")
        snapshot: list[bytes] = []
        guesses = iter(range(100))

        def before_guess(nr: int) -> None:
            if nr != SEVSIM_HC_HOST_INPUT:
                return
            if not snapshot:
                snapshot.append(lab.hypervisor.read_spa(alias, 16))
                lab.trace(f"t0: read the counter's block through the alias: {snapshot[0].hex()}")
            else:
                lab.hypervisor.write_spa(alias, snapshot[0])
            victim.vm.host_input = str(next(guesses, 0)).encode()

        lab.hypervisor.on_hypercall(victim.vm, before_guess)
        victim.vm.run(timeout=60)
        console = victim.vm.console.encode()
        lab.trace("wrote the t0 block back through the alias before every later guess")
        if GRANTED in console:
            return Attempt(GRANTED, "")
        return Attempt(console.strip().splitlines()[-1] if console.strip() else b"",
                       "the counter counted down: the write through the alias did not take")
