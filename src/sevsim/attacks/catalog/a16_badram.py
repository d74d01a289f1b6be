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

from sevsim.attacks.catalog.a03_replay import LOCKED, replay_counter
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
        return replay_counter(lab, victim, alias, "through the alias")
