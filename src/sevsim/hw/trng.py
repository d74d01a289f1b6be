"""The SoC's random number source: the Secure Processor draws VM keys, VMPCKs and nonces from
it, the memory controller its tweak constants.

Unseeded it is the operating system's entropy, as a real TRNG is unpredictable. A seeded host
(a reproducible platform for tests and demos) gets a SHAKE-256 stream of the seed instead:
with deterministic scheduling, the same VMs on the same seeded host then draw the same keys in
the same order, so their DRAM dumps and reports come out byte for byte the same.
"""

from __future__ import annotations

import hashlib
import os


class Trng:
    """`Trng()` draws from the OS; `Trng(seed, label)` from a stream only `seed` and `label`
    (which keeps the SoC's consumers apart) determine."""

    def __init__(self, seed: bytes | None = None, label: bytes = b"") -> None:
        self._seed = None if seed is None else hashlib.sha256(
            b"sevsim trng\0" + label + b"\0" + seed).digest()
        self._drawn = 0

    def random(self, count: int) -> bytes:
        """`count` fresh bytes."""
        if self._seed is None:
            return os.urandom(count)
        self._drawn += 1
        return hashlib.shake_256(self._seed + self._drawn.to_bytes(8, "little")).digest(count)
