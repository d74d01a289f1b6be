"""A3: ciphertext replay. The hypervisor snapshots a private block and writes it back later.

Encryption is deterministic per (key, SPA, plaintext) and has no freshness: a block written
back to the SPA it came from decrypts to the plaintext it held then. Here the block is a PIN
pad's "attempts left" counter: the hypervisor copies it while it still reads 3 and puts that
copy back before each guess, so the guest never locks and the host's guesses run through every
PIN. SEV-SNP's RMP refuses host writes to guest-assigned frames, so the write-back fails.
"""

from __future__ import annotations

from sevsim.abi.svm import SEVSIM_HC_HOST_INPUT
from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab, Victim

GRANTED = b"PIN OK: ACCESS GRANTED"
LOCKED = b"LOCKED OUT"


class CiphertextReplay(Attack):
    """Roll the victim's attempt counter back with its own old ciphertext."""

    id = "A3"
    name = "ciphertext replay (host write)"
    actor = "malicious hypervisor"
    source = ("Hetzelt & Buhren, 'Security Analysis of Encrypted Virtual Machines', VEE 2017; "
              "AMDESE/AMDSEV#28")

    def attempt(self, lab: Lab) -> Attempt:
        """Guess PINs 0, 1, 2, ... while writing the counter's first ciphertext back before
        each guess."""
        victim = lab.victim("pin_lockout", honest=LOCKED)
        gpa = victim.symbol("attempts_left")
        spa = lab.hypervisor.gpa_to_spa(victim.vm, gpa)
        lab.trace(f"the counter `attempts_left` (GPA 0x{gpa:x}) is at SPA 0x{spa:x}")
        return replay_counter(lab, victim, spa, "at its SPA")


def replay_counter(lab: Lab, victim: Victim, spa: int, where: str) -> Attempt:
    """Guess PINs 0, 1, 2, ... on the PIN pad, writing the counter's block as it was at the
    first guess back to `spa` (`where` says which address that is) before every later one."""
    snapshot: list[bytes] = []
    guesses = iter(range(100))

    def before_guess(nr: int) -> None:
        if nr != SEVSIM_HC_HOST_INPUT:
            return
        if not snapshot:
            snapshot.append(lab.hypervisor.read_spa(spa, 16))
            lab.trace(f"t0: the guest asks for its first guess; read the counter's block {where}: "
                      f"{snapshot[0].hex()}")
        else:
            lab.hypervisor.write_spa(spa, snapshot[0])
        victim.vm.host_input = str(next(guesses, 0)).encode()

    lab.hypervisor.on_hypercall(victim.vm, before_guess)
    victim.vm.run(timeout=60)
    console = victim.vm.console.encode()
    lab.trace(f"wrote the t0 block back {where} before each of {next(guesses, 100) - 1} later "
              "guesses")
    if GRANTED in console:
        return Attempt(GRANTED, "")
    return Attempt(console.strip().splitlines()[-1] if console.strip() else b"",
                   f"the counter counted down: the block written back {where} did not take")
