"""The nested page table: GPA → SPA, written by the hypervisor, walked by the vCPUs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sevsim.errors import MemoryAccessError
from sevsim.hw.engine import PAGE

NOT_PRESENT = -1


class NestedPageTable:
    """One entry per 4 KiB guest page; every change reaches the vCPUs at once."""

    def __init__(self, gpa_limit: int) -> None:
        self.limit_pages = gpa_limit // PAGE
        self.entries = np.full(self.limit_pages, NOT_PRESENT, dtype=np.int64)
        self.listeners: list[Callable[[int, int], None]] = []

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
        self.entries[lo:hi] = np.arange(frame, frame + npages, dtype=np.int64)
        self._changed(lo, hi)

    def unmap(self, gpa: int, npages: int = 1) -> None:
        lo, hi = self._range(gpa, npages)
        self.entries[lo:hi] = NOT_PRESENT
        self._changed(lo, hi)

    def lookup(self, gpa: int) -> int | None:
        """The SPA a guest-physical address translates to, or None if not present."""
        gpn = gpa // PAGE
        if not 0 <= gpn < self.limit_pages or self.entries[gpn] == NOT_PRESENT:
            return None
        return int(self.entries[gpn]) * PAGE + gpa % PAGE

    def _changed(self, lo: int, hi: int) -> None:
        for listener in self.listeners:
            listener(lo, hi)
