"""The TLB of the physical CPU the vCPUs run on, tagged by ASID: its entries survive VMRUN.

sevsim's guests run identity mapped: a guest-physical address is its own virtual address, and
the vCPUs follow the NPT at once (the hypervisor's NPT changes come with their flush). The one
place a guest has translations of its own is its *windows*: virtual pages above its RAM that
the guest kernel points at guest pages, for the process on one vCPU (as a process's page
table does). Translations of windows are cached here, per ASID, as the hardware caches
GVA→SPA translations: filled by the vCPU whose page table the walk used, and used by every
vCPU that runs with that ASID until the ASID is flushed. The host decides when, through the
VMCB's TLB_CONTROL (KVM flushes when another vCPU of the VM ran here last), except that under
SEV-SNP the CPU flushes by itself when a VMSA other than the last one of that ASID runs.
All vCPUs share this one TLB: sevsim runs them on one physical CPU, round-robin.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from sevsim.hw.memory import MemoryController

WINDOW_BASE = 0x7F00_0000_0000  # guest-virtual window pages: above any guest RAM
WINDOW_PAGES = 16


class Tlb:
    """Cached window translations by ASID, and the VMSA each ASID last ran with."""

    def __init__(self) -> None:
        self._entries: dict[int, dict[int, int]] = {}  # asid -> window VA -> frame
        self._last_vmsa: dict[int, int | None] = {}

    def entries(self, asid: int) -> dict[int, int]:
        """The cached translations of `asid` (window VA → frame)."""
        return dict(self._entries.get(asid, {}))

    def fill(self, asid: int, va: int, frame: int) -> None:
        """A walk of window `va` under `asid` found `frame`."""
        self._entries.setdefault(asid, {})[va] = frame

    def drop(self, asid: int, va: int) -> None:
        """INVLPG of one window."""
        self._entries.get(asid, {}).pop(va, None)

    def flush(self, asid: int) -> None:
        """Flush every entry of `asid` (TLB_CONTROL = flush this ASID)."""
        self._entries.pop(asid, None)

    def ran(self, asid: int, vmsa: int | None) -> int | None:
        """Record that the VMSA at `vmsa` runs with `asid` now; returns the one before."""
        before = self._last_vmsa.get(asid)
        self._last_vmsa[asid] = vmsa
        return before


_TLBS: WeakKeyDictionary[MemoryController, Tlb] = WeakKeyDictionary()


def tlb_of(memory: MemoryController) -> Tlb:
    """The TLB of the CPU in the SoC this memory controller belongs to."""
    return _TLBS.setdefault(memory, Tlb())
