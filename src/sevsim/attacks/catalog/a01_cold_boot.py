"""A1: cold boot. A physical attacker freezes the DIMMs, moves them to a reader and dumps them.

What the modules hold is what the memory controller wrote: plaintext for a VM without memory
encryption, ciphertext under the VM's key for SEV, SEV-ES and SNP. The key never leaves the
controller's key slot (and the Secure Processor), so nothing in the dump decrypts it.
"""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab


class ColdBoot(Attack):
    """Dump DRAM offline and take the victim's secret out of the image."""

    id = "A1"
    name = "cold boot / DRAM dump"
    actor = "physical attacker (with the hypervisor's NPT to find the page)"
    source = ("Halderman et al., 'Lest We Remember: Cold Boot Attacks on Encryption Keys', "
              "USENIX Security 2008")

    def attempt(self, lab: Lab) -> Attempt:
        """Run the victim, dump every cell, cut the secret's bytes out of the image."""
        victim = lab.victim("secret_in_memory")
        victim.vm.run(timeout=30)
        gpa = victim.symbol("secret")
        spa = lab.hypervisor.gpa_to_spa(victim.vm, gpa)
        lab.trace(f"a colluding hypervisor's NPT says the victim's `secret` (GPA 0x{gpa:x}) "
                  f"sits at SPA 0x{spa:x}")
        image = lab.physical.dram_dump()
        lab.trace(f"dumped {image.size >> 20} MiB from the modules")
        data = image[spa:spa + 32].tobytes()
        lab.trace(f"image bytes at 0x{spa:x}: {data.hex()}")
        return Attempt(data, f"ciphertext under ASID {victim.vm.asid}'s key, which stays in the "
                             "memory controller's key slot")
