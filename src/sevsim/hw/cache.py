"""The cores' write-back caches, as far as attacks can see them (CacheWarp, RMPocalypse).

A core's store lands in a 64-byte cache line, tagged with its SPA and key domain, and stays
there, dirty, until the line is evicted or software flushes the caches: WBINVD writes every
dirty line back to DRAM, INVD drops them. A write-back is not an access, so nothing checks it:
the RMP checked the store when the core made it, and a line dirtied before a check existed
lands unchecked (RMPocalypse). INVD dropping dirty lines is what CacheWarp abuses: on Zen 3
before the microcode fix the host may make INVD do that (HWCR bit 4 clear); Zen 4 and the
fixed microcode make INVD write back, as WBINVD does.

The model costs nothing unless held. The simulator's cores store straight into the memory
cells (vCPUs map them), so every store reaches DRAM at once: one of the schedules a real cache
may follow, since it may evict any line at any time. While an attacker *holds* the cache,
which stands for the short window of a few instructions in which real attacks rely on no line
being evicted, the model keeps lines dirty: the first store of a core to a line records what
DRAM held beneath it, and the cells go on holding what the cores see (the cache's content).
The Secure Processor, which writes DRAM beneath the caches, changes the record and not what the
cores see. WBINVD forgets the records (DRAM now holds what the cores saw); INVD puts them back
(the stores are lost). Releasing the hold evicts what is left: a write-back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sevsim.hw.memory import MemoryController

LINE = 64


class WriteBackCache:
    """The dirty lines of every core (one coherent cache: sevsim runs its vCPUs on one core)."""

    def __init__(self, memory: MemoryController) -> None:
        self._memory = memory
        self.invd_writes_back = True  # Zen 4+, or Zen 3 with the CacheWarp microcode fix
        self.held = False
        self._beneath: dict[int, bytes] = {}  # a dirty line's SPA -> the DRAM bytes beneath it

    @property
    def dirty_lines(self) -> list[int]:
        """The SPAs of the lines held dirty, in order."""
        return sorted(self._beneath)

    def store(self, spa: int, length: int) -> None:
        """A core is about to store to [spa, spa+length): while the cache is held, the lines
        it touches become dirty (what DRAM holds beneath them is kept)."""
        if not self.held or length <= 0:
            return
        for line in range(spa & ~(LINE - 1), spa + length, LINE):
            if line not in self._beneath:
                self._beneath[line] = self._memory.read(line, LINE)

    def write_back(self) -> int:
        """WBINVD: every dirty line reaches DRAM, unchecked; returns how many did."""
        lines, self._beneath = sorted(self._beneath), {}
        for line in lines:
            self._memory.dram_written(line, LINE)
        return len(lines)

    def invalidate(self) -> int:
        """INVD: the dirty lines are dropped and the cores see DRAM again, their stores lost
        (unless INVD writes back, see `invd_writes_back`); returns how many lines went."""
        if self.invd_writes_back:
            return self.write_back()
        dropped, self._beneath = self._beneath, {}
        for line, dram in sorted(dropped.items()):
            self._memory.write_soc(line, dram)
        return len(dropped)

    @contextmanager
    def beneath(self, spa: int, length: int) -> Iterator[None]:
        """A write to DRAM from outside the cores (the Secure Processor) inside the block: in
        the lines held dirty it changes what lies beneath them, not what the cores see."""
        lines = [line for line in self._beneath if spa - LINE < line < spa + length]
        seen = {line: self._memory.read(line, LINE) for line in lines}
        yield
        for line in lines:
            lo, hi = max(spa, line) - line, min(spa + length, line + LINE) - line
            now = self._memory.read(line, LINE)
            old = self._beneath[line]
            self._beneath[line] = old[:lo] + now[lo:hi] + old[hi:]
            self._memory.write_soc(line, seen[line])
