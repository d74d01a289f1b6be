"""A12: the hypervisor lies about the C-bit position in CPUID (Radev & Morbitzer 2020)."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab

LEAF = 0x8000_001F
# a page-table bit the MMU ignores (52-58 are software's): "encrypted" entries are not
LIE = 58


class CbitCpuid(Attack):
    """Answer CPUID Fn8000_001F with a C-bit position the MMU ignores before the victim
    launches; the victim builds its secret page's entry with it, so the page it believes
    private is shared, and the host reads the secret in plaintext."""

    id = "A12"
    name = "interface abuse (C-bit position via CPUID)"
    actor = "malicious hypervisor"
    source = ("M. Radev, M. Morbitzer, 'Exploiting Interfaces of Secure Encrypted Virtual "
              "Machines', ROOTS 2020")

    def not_applicable(self, setting: Setting) -> str | None:
        """Without memory encryption there is no C-bit to lie about."""
        if setting.mode == "none":
            return "no memory encryption: there is no C-bit to lie about"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Set the lie in the hypervisor's CPUID table, launch and run the victim, read its
        secret page through the NPT."""
        hv = lab.hypervisor
        eax, ebx, ecx, edx = hv.host_cpuid(LEAF)
        lab.trace(f"the CPU's CPUID 0x{LEAF:x} says C-bit {ebx & 0x3F}; the VMM's table "
                  f"will say {LIE}")
        hv.set_cpuid(LEAF, (eax, ebx & ~0x3F | LIE, ecx, edx))
        victim = lab.victim("secret_page_cbit")
        vm = victim.vm
        hv.run(vm)
        lab.trace(f"the victim printed {vm.console.strip()!r}")
        gpa = victim.symbol("secret")
        spa = hv.gpa_to_spa(vm, gpa)
        data = hv.read_spa(spa, 32)
        lab.trace(f"read 32 bytes of its secret page (GPA 0x{gpa:x}, SPA 0x{spa:x}): "
                  f"{data.hex()}")
        return Attempt(data, f"ciphertext: the page is private to ASID {vm.asid}")
