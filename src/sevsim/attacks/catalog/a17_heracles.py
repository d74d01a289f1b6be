"""A17: Heracles: a chosen-plaintext dictionary through page moves that re-encrypt."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab, Victim
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.errors import FirmwareError

BLOCK = 16
SECRET_BYTES = 32
PAGE = 4096


def guess_page(guess: int) -> bytes:
    """A packet that puts `guess` where a key press record holds its key, in every record."""
    return (bytes([guess]) + bytes(BLOCK - 1)) * (PAGE // BLOCK)


def matches(target: bytes, seen: bytes, guess: int, found: dict[int, int]) -> None:
    """Record `guess` for every record whose ciphertext equals the target's."""
    for i in range(SECRET_BYTES):
        if seen[i * BLOCK:(i + 1) * BLOCK] == target[i * BLOCK:(i + 1) * BLOCK]:
            found.setdefault(i, guess)


class Heracles(Attack):
    """Record the ciphertext of the secret's records, then have the firmware re-encrypt each
    page of attacker-chosen guesses at the secret's address and compare block by block."""

    id = "A17"
    name = "Heracles (SNP page-move chosen plaintext)"
    actor = "malicious hypervisor"
    source = ("B. Schlüter, C. Wech, S. Shinde, 'Heracles: Chosen Plaintext Attack on AMD "
              "SEV-SNP', ACM CCS 2025; AMD-SB-3021")
    fixes = (Setting("snp", "genoa", frozenset({"ciphertext-hiding"})),
             Setting("snp", features=frozenset({"page-move-disabled"})))

    def not_applicable(self, setting: Setting) -> str | None:
        """Without encryption there is no ciphertext to compare."""
        return "a plain VM's memory is plaintext" if setting.mode == "none" else None

    def attempt(self, lab: Lab) -> Attempt:
        """Send 256 guess pages, let the victim store them, then compare."""
        victim = lab.victim("keypad_echo")
        victim.vm.host_input = b"".join(guess_page(g) for g in range(256))
        lab.trace("sent 256 packets: packet g holds byte g at the start of every 16-byte record")
        hv = lab.hypervisor
        hv.run(victim.vm)
        lab.trace(f"the victim says: {victim.vm.console.strip()!r}")
        secret_gpa = victim.symbol("presses")
        secret_spa = hv.gpa_to_spa(victim.vm, secret_gpa)
        target = hv.read_spa(secret_spa, SECRET_BYTES * BLOCK)
        lab.trace(f"ciphertext of the key press records at SPA 0x{secret_spa:x}: "
                  f"{target[:BLOCK].hex()}…")
        found = self._dictionary(lab, hv, victim, secret_spa, target)
        data = bytes(found.get(i, 0) for i in range(SECRET_BYTES))
        lab.trace(f"matched {len(found)} of {SECRET_BYTES} records")
        saw = ("0xFF: ciphertext hiding" if target == b"\xff" * len(target)
               else f"no guess matched {SECRET_BYTES - len(found)} records")
        return Attempt(data, saw)

    @staticmethod
    def _dictionary(lab: Lab, hv: HypervisorAttacker, victim: Victim, secret_spa: int,
                    target: bytes) -> dict[int, int]:
        """Move the secret's page away, then each guess page onto the secret's address and
        back, comparing what the firmware's re-encryption put there."""
        vm, ring = victim.vm, victim.symbol("ring")
        try:
            hv.page_move(vm, victim.symbol("presses"), hv.allocate_page())
        except FirmwareError as refusal:
            lab.trace(f"SNP_PAGE_MOVE refused: {refusal}")
            raise
        lab.trace(f"SNP_PAGE_MOVE: the records' page leaves SPA 0x{secret_spa:x}")
        found: dict[int, int] = {}
        for guess in range(256):
            gpa = ring + guess * PAGE
            home = hv.page_move(vm, gpa, secret_spa)
            matches(target, hv.read_spa(secret_spa, SECRET_BYTES * BLOCK), guess, found)
            hv.page_move(vm, gpa, home)
        lab.trace("moved each of the 256 packets onto that SPA and back, comparing records")
        return found
