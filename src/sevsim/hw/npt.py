"""The nested page table: GPA → SPA, written by the hypervisor, walked by the vCPUs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sevsim.errors import MemoryAccessError
from sevsim.hw.engine import PAGE
from sevsim.hw.memory import lazy_zeros

NOT_PRESENT = -1


class NestedPageTable:
    """One entry per 4 KiB guest page; every change reaches the vCPUs at once.

    Entries are stored as frame + 1, so an absent page is a zero the kernel never backs: a
    VM's address space reaches far beyond its RAM, and only the mapped part costs memory."""

    def __init__(self, gpa_limit: int) -> None:
        self.limit_pages = gpa_limit // PAGE
        self._slots = lazy_zeros(self.limit_pages * 8).view(np.int64)
        self._listeners: list[Callable[[int, int], None]] = []

    def _range(self, gpa: int, npages: int) -> tuple[int, int]:
        if gpa % PAGE or npages < 1:
            raise MemoryAccessError(f"GPA 0x{gpa:x} is not page aligned or the count is empty")
        first = gpa // PAGE
        if first + npages > self.limit_pages:
            raise MemoryAccessError(f"GPA 0x{gpa:x}+{npages} pages beyond the guest address space")
        return first, first + npages

    def map(self, gpa: int, frame: int, npages: int = 1) -> None:
        """Point `npages` guest pages at consecutive frames from `frame` (remap included)."""
        lo, hi = self._range(gpa, npages)
        self._slots[lo:hi] = np.arange(frame + 1, frame + 1 + npages, dtype=np.int64)
        self._changed(lo, hi)

    def unmap(self, gpa: int, npages: int = 1) -> None:
        """Make `npages` guest pages from `gpa` not present; vCPUs fault on their next access."""
        lo, hi = self._range(gpa, npages)
        self._slots[lo:hi] = 0
        self._changed(lo, hi)

    def frames(self, first: int, stop: int) -> np.ndarray:
        """The frame behind each guest page of [first, stop), NOT_PRESENT where unmapped."""
        return self._slots[first:stop] - 1

    def frame(self, gpn: int) -> int:
        """The frame behind one guest page, NOT_PRESENT if unmapped or outside the table."""
        return int(self._slots[gpn]) - 1 if 0 <= gpn < self.limit_pages else NOT_PRESENT

    def gpns_of(self, first: int, stop: int) -> np.ndarray:
        """The guest pages mapped to frames [first, stop) (aliases included), in order."""
        return np.flatnonzero((self._slots > first) & (self._slots <= stop))

    def lookup(self, gpa: int) -> int | None:
        """The SPA a guest-physical address translates to, or None if not present."""
        frame = self.frame(gpa // PAGE)
        return None if frame == NOT_PRESENT else frame * PAGE + gpa % PAGE

    def subscribe(self, listener: Callable[[int, int], None]) -> None:
        """Call `listener(first, stop)` whenever entries [first, stop) change (the vCPUs'
        mappings follow the table)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[int, int], None]) -> None:
        """Stop calling a listener `subscribe` added."""
        self._listeners.remove(listener)

    def _changed(self, lo: int, hi: int) -> None:
        for listener in self._listeners:
            listener(lo, hi)
