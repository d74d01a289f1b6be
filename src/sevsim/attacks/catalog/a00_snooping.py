"""A0: the hypervisor (or a DMA-capable device) reads guest memory."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab


class MemorySnooping(Attack):
    """Read the page that holds the victim's secret through the NPT, as the host reads it."""

    id = "A0"
    name = "memory snooping / DMA read"
    actor = "malicious hypervisor, DMA device"
    source = "baseline: AMD SEV-SNP white paper (2020), Table 1, 'VM memory' and 'DMA'"
    fixes = (Setting("snp", "genoa", frozenset({"ciphertext-hiding"})),)

    def attempt(self, lab: Lab) -> Attempt:
        """Run the victim, find its secret's SPA through the NPT, read it."""
        victim = lab.victim("secret_in_memory")
        victim.vm.run(timeout=30)
        gpa = victim.symbol("secret")
        spa = lab.hypervisor.gpa_to_spa(victim.vm, gpa)
        lab.trace(f"victim's `secret` is at GPA 0x{gpa:x}, which the NPT maps to SPA 0x{spa:x}")
        data = lab.hypervisor.read_spa(spa, 32)
        lab.trace(f"read 32 bytes at SPA 0x{spa:x}: {data.hex()}")
        saw = ("0xFF: ciphertext hiding" if data == b"\xff" * 32
               else f"ciphertext: the page is private to ASID {victim.vm.asid}")
        return Attempt(data, saw)
