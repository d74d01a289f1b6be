"""A VM's guest-physical address space as its vCPUs see it: NPT walk plus the guest's C-bits.

A guest page whose frame is stored in the domain the access needs (the VM's ASID for a
private page of an encrypted VM, raw otherwise) is mapped straight onto the frame's cells.
A page whose frame belongs to another key domain still in use elsewhere (the hypervisor
mapped another VM's page here, say) goes through the engine on every access, so the guest
reads the decryption of that DRAM under its own key, exactly the garbage hardware returns.

Under SEV-SNP a page is mapped only if the RMP allows it too: a private page's frame must be
assigned to this ASID at this very GPA and validated, a shared page's frame must be the
hypervisor's. Pages that fail stay unmapped, so the guest's first touch exits (#NPF with the
RMP bit, or #VC for a page not validated); pages that pass are mapped directly as in every
other mode. NPT changes, C-bit changes and RMP changes re-run the check for what they touch.

A vCPU running below VMPL0 sees the same mappings narrowed, page by page, to the permissions
VMPL0 gave its VMPL with RMPADJUST (Unicorn page protections on its engine only): reading,
writing or executing beyond them stops at the engine, and the vCPU exits with #NPF (RMP and
VMPL bits). Shared pages belong to no VMPL and stay open to all.

While the cores' cache is held (hw/cache.py), each engine carries a store hook that tells the
cache which lines the guest's stores dirty; at any other time no engine has one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TB_FLUSH,
    UC_HOOK_MEM_WRITE,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
)

from sevsim.abi.rmp import PERM_ALL, PERM_EXEC_SUPER, PERM_READ, PERM_WRITE, RmpResult
from sevsim.hw.engine import BLOCK, PAGE
from sevsim.hw.memory import RAW, MemoryController, lazy_zeros
from sevsim.hw.npt import NOT_PRESENT, NestedPageTable
from sevsim.hw.rmp import rmp_failure

_DIRECT, _TRANSLATED = 1, 2
RMP_OK, RMP_NPF, RMP_NOT_VALIDATED = 0, 1, 2


class GuestAddressSpace:
    """Keeps every vCPU engine of one VM mapped to what its NPT and C-bits say."""

    def __init__(self, memory: MemoryController, npt: NestedPageTable, asid: int,
                 encrypted: bool, snp: bool = False) -> None:
        self.memory = memory
        self.npt = npt
        self.asid = asid
        self.encrypted = encrypted
        self.snp = snp
        self.c_bit = lazy_zeros(npt.limit_pages).view(bool)
        self.engines: list[Uc] = []
        self._vmpl: dict[int, int] = {}  # id(engine) -> the VMPL its vCPU runs at
        self._store_hooks: dict[int, int] = {}  # id(engine) -> its store hook, cache held
        self._regions: dict[int, tuple[int, int]] = {}  # start gpn -> (stop gpn, kind)
        # frame + 1 of each directly mapped guest page, 0 if none (lazily backed, as the NPT)
        self._mapped_slot = lazy_zeros(npt.limit_pages * 8).view(np.int64)
        npt.subscribe(self.refresh)  # and the memory's reverse map finds us by frame

    # -- what the guest controls -------------------------------------------------------------
    def accessor_domain(self, gpn: int) -> int:
        """The storage domain of a guest page: the VM's ASID where the guest marked it private,
        RAW (DRAM bytes as they are) where shared or in a plain VM."""
        return self.asid if self.encrypted and self.c_bit[gpn] else RAW

    def set_c_bit(self, first: int, stop: int, private: bool, zero: bool = False) -> None:
        """The guest's page tables mark pages private or shared; `zero` also clears them
        (under SNP only the pages the RMP lets the guest write)."""
        self.c_bit[first:stop] = private
        lo, hi = self._unmap_span(first, stop)
        if zero:
            frames = self.npt.frames(first, stop)
            writable = frames != NOT_PRESENT
            if self.snp:
                writable &= self._rmp_check(first, stop) == RMP_OK
            frames = frames[writable]
            self.memory.fill(frames[self.memory.pins[frames] == 0],
                             self.asid if self.encrypted and private else RAW)
        self.refresh(lo, hi)

    # -- what the hypervisor controls --------------------------------------------------------
    def run_as(self, asid: int) -> None:
        """VMRUN with `asid` in the VMCB. The ASID is the hypervisor's to write, and it is what
        the hardware goes by: the key slot that decrypts private pages and, under SEV-SNP, the
        owner the RMP checks are made against. Another ASID than the VM's own re-derives
        every mapping under it: its own private pages read as their decryption under that
        key (garbage, hence "security by crash"), and another guest's pages mapped here read
        as that guest sees them (CrossLine)."""
        if asid == self.asid:
            return
        self.asid = asid
        self.refresh(0, self.npt.limit_pages)

    # -- engines -----------------------------------------------------------------------------
    def attach(self, uc: Uc, vmpl: int = 0) -> None:
        """Map a vCPU engine (running at `vmpl`) onto what the VM maps now; it then follows
        every change."""
        self.engines.append(uc)
        self._vmpl[id(uc)] = vmpl
        for start, (stop, kind) in sorted(self._regions.items()):
            self._map_into(uc, start, stop, kind)
        if self.memory.cache.held:
            self._hook_stores(uc, True)

    def watch_stores(self, on: bool) -> None:
        """The cache is held (`on`) or released: hook the engines' stores, or unhook them."""
        for uc in self.engines:
            self._hook_stores(uc, on)

    def _hook_stores(self, uc: Uc, on: bool) -> None:
        if on == (id(uc) in self._store_hooks):
            return
        if on:
            self._store_hooks[id(uc)] = uc.hook_add(UC_HOOK_MEM_WRITE, self._on_store)
        else:
            uc.hook_del(self._store_hooks.pop(id(uc)))
        uc.ctl(UC_CTL_TB_FLUSH, UC_CTL_IO_WRITE)  # code translated before is without (with) it

    def note_store(self, uc: Uc, address: int, size: int) -> None:
        """A store the engine's hook does not see is about to land (one resumed after its
        page fault, which Unicorn does not hook twice; the guest kernel's own writes): the
        held cache hears of it."""
        if id(uc) in self._store_hooks:
            self._on_store(uc, 0, address, size, 0, None)

    def _on_store(self, uc: Uc, access: int, address: int, size: int, value: int,
                  _ud: object) -> None:
        """A guest store is about to land: its lines become dirty in the held cache."""
        end = address + size
        while address < end:
            piece = min(end, (address // PAGE + 1) * PAGE) - address
            spa = self.npt.lookup(address)
            if spa is not None:
                self.memory.cache.store(spa, piece)
            address += piece

    def set_vmpl(self, uc: Uc, vmpl: int) -> None:
        """VMRUN loaded a VMSA of another VMPL into this engine: re-derive its protections."""
        if self._vmpl.get(id(uc)) == vmpl:
            return
        self._vmpl[id(uc)] = vmpl
        for start, (stop, kind) in sorted(self._regions.items()):
            if kind == _DIRECT:
                self._protect(uc, start, stop, everything=True)

    def vmpl_permissions(self, first: int, stop: int, vmpl: int) -> np.ndarray:
        """The RMP permission mask of `vmpl` on each guest page of [first, stop) (shared
        pages and VMPL0: all)."""
        if not self.snp or vmpl == 0:
            return np.full(stop - first, PERM_ALL, dtype=np.uint8)
        frames = np.maximum(self.npt.frames(first, stop), 0)
        private = self.c_bit[first:stop] & self.memory.rmp.assigned[frames]
        return np.where(private, self.memory.rmp.perms[frames, vmpl], PERM_ALL).astype(np.uint8)

    def detach_all(self) -> None:
        """Unmap everything and release the pins (the VM is going away)."""
        self._unmap_span(0, self.npt.limit_pages)
        self.watch_stores(False)
        self.engines.clear()
        self._vmpl.clear()
        self.npt.unsubscribe(self.refresh)
        self.memory.reverse_map.remove(self)

    def release(self, first: int, stop: int) -> Callable[[], None]:
        """Let go of directly mapped frames [first, stop) until the returned call."""
        # every GPA counts: a frame may be mapped at several (aliases), and a mapping left
        # behind would keep seeing cells whose domain is about to change.
        gpns = np.flatnonzero((self._mapped_slot > first) & (self._mapped_slot <= stop))
        if not gpns.size:
            return lambda: None
        lo, hi = self._unmap_span(int(gpns[0]), int(gpns[-1]) + 1)
        return lambda: self.refresh(lo, hi)

    def refresh(self, first: int, stop: int) -> None:
        """Re-derive the mappings of [first, stop) after an NPT or C-bit change."""
        first, stop = self._unmap_span(first, stop)
        frames = self.npt.frames(first, stop)
        present = frames != NOT_PRESENT
        self.memory.reverse_map.add(self, frames[present])
        if self.snp:
            present &= self._rmp_check(first, stop) == RMP_OK
        if not present.any():
            return
        safe = np.where(present, frames, 0)
        wanted = np.where(self.encrypted & self.c_bit[first:stop], self.asid, RAW)
        current = self.memory.domain[safe]
        free = self.memory.pins[safe] == 0
        keyed = (wanted == RAW) | self.memory.engine.has_key(self.asid)
        todo = np.flatnonzero(present & (current != wanted) & free & keyed)
        if todo.size:
            cut = np.flatnonzero((np.diff(todo) != 1) | (np.diff(frames[todo]) != 1)
                                 | (np.diff(wanted[todo]) != 0)) + 1
            for run in np.split(todo, cut):
                self.memory.convert_domain(int(frames[run[0]]), run.size, int(wanted[run[0]]))
        direct = present & (self.memory.domain[safe] == wanted)
        kind = np.where(direct, _DIRECT, np.where(present, _TRANSLATED, 0))
        breaks = np.flatnonzero(
            (kind[1:] != kind[:-1]) | (direct[1:] & (frames[1:] != frames[:-1] + 1))) + 1
        for lo, hi in zip(np.concatenate(([0], breaks)).tolist(),
                          np.concatenate((breaks, [kind.size])).tolist(), strict=True):
            if kind[lo]:
                self._add_region(first + lo, first + hi, int(kind[lo]))

    # -- SEV-SNP ------------------------------------------------------------------------------
    def _rmp_check(self, first: int, stop: int) -> np.ndarray:
        """RMP_OK, RMP_NPF or RMP_NOT_VALIDATED per guest page of [first, stop) (present
        pages only are meaningful)."""
        rmp = self.memory.rmp
        frames = np.maximum(self.npt.frames(first, stop), 0)
        assigned = rmp.assigned[frames]
        own = (assigned & (rmp.asid[frames] == self.asid) & ~rmp.vmsa[frames]
               & (rmp.gpn[frames] == np.arange(first, stop)))
        private = self.c_bit[first:stop]
        return np.where(private, np.where(own, np.where(rmp.validated[frames], RMP_OK,
                                                        RMP_NOT_VALIDATED), RMP_NPF),
                        np.where(assigned, RMP_NPF, RMP_OK))

    def rmp_fault(self, gpa: int) -> int:
        """Why an access to a present page was not mapped (RMP_OK: it was not the RMP)."""
        gpn = gpa // PAGE
        if not self.snp or self.npt.lookup(gpa) is None:
            return RMP_OK
        return int(self._rmp_check(gpn, gpn + 1)[0])

    def direct_frame(self, gpa: int) -> int | None:
        """The frame the vCPUs map the guest page of `gpa` straight onto, if they do."""
        gpn = gpa // PAGE
        if not 0 <= gpn < self.npt.limit_pages:
            return None
        slot = int(self._mapped_slot[gpn])
        return slot - 1 if slot else None

    def mapped(self, gpa: int) -> bool:
        """Whether the vCPUs map the guest page of `gpa` now (the NPT and, under SEV-SNP, the
        RMP allow it)."""
        gpn = gpa // PAGE
        return any(start <= gpn < stop for start, (stop, _) in self._regions.items())

    def rmp_mismatch(self, gpa: int) -> str:
        """What the RMP says about the frame behind `gpa` when the nested walk refused it: why
        the hardware set the RMP bit in the #NPF error code."""
        spa = self.npt.lookup(gpa)
        if spa is None:
            return "not mapped"
        rmp, frame = self.memory.rmp, spa // PAGE
        if not self.c_bit[gpa // PAGE]:
            return f"shared access to SPA 0x{spa & ~(PAGE - 1):x}, a guest-assigned frame"
        if not rmp.assigned[frame]:
            return f"SPA 0x{spa & ~(PAGE - 1):x} is not assigned to a guest"
        owner, at, page = int(rmp.asid[frame]), int(rmp.gpn[frame]) * PAGE, gpa & ~(PAGE - 1)
        entry = (f"the RMP entry of SPA 0x{spa & ~(PAGE - 1):x} gives it to ASID {owner} at "
                 f"GPA 0x{at:x}")
        if owner == self.asid and at == page:  # only the VMSA tag is wrong
            return f"{entry} as a VMSA, which guest accesses may not use"
        wanted = [f"ASID {self.asid}"] * (owner != self.asid) + [f"GPA 0x{page:x}"] * (at != page)
        return f"{entry}, not to {' at '.join(wanted)}"

    def own_frames(self, first: int, stop: int, vmsa_too: bool = False) -> np.ndarray:
        """The frames behind guest pages [first, stop) for PVALIDATE's and RMPADJUST's
        nested walk; raises (FAIL_INPUT) unless every page is present and assigned to this
        guest at that GPA (and not a VMSA, unless `vmsa_too`: RMPADJUST may untag one)."""
        frames = self.npt.frames(first, stop)
        rmp = self.memory.rmp
        safe = np.maximum(frames, 0)
        ok = ((frames != NOT_PRESENT) & rmp.assigned[safe] & (rmp.asid[safe] == self.asid)
              & (rmp.gpn[safe] == np.arange(first, stop)) & (vmsa_too | ~rmp.vmsa[safe]))
        if not ok.all():
            bad = first + int(np.flatnonzero(~ok)[0])
            raise rmp_failure(RmpResult.FAIL_INPUT,
                              f"GPA 0x{bad * PAGE:x} is not this guest's page there")
        return frames

    def rmp_changed(self, frames: np.ndarray) -> None:
        """RMP entries changed: re-check the guest pages mapped to those frames."""
        if not self.snp:
            return
        gpns = self.npt.gpns_of(int(frames.min()), int(frames.max()) + 1)
        if gpns.size:
            self.refresh(int(gpns[0]), int(gpns[-1]) + 1)

    # -- internals ---------------------------------------------------------------------------
    def _add_region(self, start: int, stop: int, kind: int) -> None:
        self._regions[start] = (stop, kind)
        if kind == _DIRECT:
            frames = self.npt.frames(start, stop)
            self.memory.pins[frames] += 1
            self._mapped_slot[start:stop] = frames + 1
        for uc in self.engines:
            self._map_into(uc, start, stop, kind)

    def _map_into(self, uc: Uc, start: int, stop: int, kind: int) -> None:
        if kind == _DIRECT:
            frame = self.npt.frame(start)
            uc.mem_map_ptr(start * PAGE, (stop - start) * PAGE, UC_PROT_ALL,
                           self.memory.frame_address(frame))
            if self._vmpl[id(uc)]:
                self._protect(uc, start, stop)
        else:
            base = start * PAGE
            uc.mmio_map(base, (stop - start) * PAGE, self._mmio_read, base,
                        self._mmio_write, base)

    def _protect(self, uc: Uc, start: int, stop: int, everything: bool = False) -> None:
        """Narrow a direct region of one engine to its VMPL's permissions, a run of equal
        masks at a time (`everything`: also re-open runs with every permission)."""
        perms = self.vmpl_permissions(start, stop, self._vmpl[id(uc)])
        cuts = np.flatnonzero(perms[1:] != perms[:-1]) + 1
        for lo, hi in zip(np.concatenate(([0], cuts)).tolist(),
                          np.concatenate((cuts, [perms.size])).tolist(), strict=True):
            mask = int(perms[lo])
            if mask != PERM_ALL or everything:
                uc.mem_protect((start + lo) * PAGE, (hi - lo) * PAGE, _unicorn_protection(mask))

    def _unmap_span(self, first: int, stop: int) -> tuple[int, int]:
        """Drop every region overlapping or adjoining [first, stop); return the widened span
        (so the refresh that follows can merge neighbours into one Unicorn region)."""
        lo, hi = first, stop
        for start in [s for s, (e, _) in self._regions.items() if s <= stop and e >= first]:
            end, kind = self._regions.pop(start)
            lo, hi = min(lo, start), max(hi, end)
            for uc in self.engines:
                uc.mem_unmap(start * PAGE, (end - start) * PAGE)
            if kind == _DIRECT:
                frames = self._mapped_slot[start:end] - 1
                self.memory.pins[frames] -= 1
                self._mapped_slot[start:end] = 0
        return lo, hi

    def host_wrote(self, spa: int, length: int) -> None:
        """Host writes change cells under the vCPUs: drop any code translated from them.

        A direct region maps consecutive frames, so finding the GPAs of the written frames
        takes one comparison per region, not a search of every guest page (hypervisors write
        shared pages such as the GHCB on every exit)."""
        first, stop = spa // PAGE, (spa + length - 1) // PAGE + 1
        if not self.engines or not self.memory.pins[first:stop].any():
            return
        for start, (end, kind) in self._regions.items():
            if kind != _DIRECT:
                continue
            frame = int(self._mapped_slot[start]) - 1
            lo, hi = max(first, frame), min(stop, frame + end - start)
            if lo < hi:
                for uc in self.engines:
                    uc.ctl_remove_cache((start + lo - frame) * PAGE, (start + hi - frame) * PAGE)

    # -- translated access: the engine between the guest and a foreign frame -----------------
    def _block_view(self, gpa: int, length: int) -> tuple[int, int, bytearray]:
        lo = gpa & ~(BLOCK - 1)
        hi = (gpa + length + BLOCK - 1) & ~(BLOCK - 1)
        spa = self.npt.lookup(lo)
        assert spa is not None and (hi - 1) // PAGE == lo // PAGE
        dram = np.frombuffer(self.memory.read(spa, hi - lo), dtype=np.uint8)
        dom = self.accessor_domain(lo // PAGE)
        plain = dram if dom == RAW else self.memory.engine.decrypt_blocks(dom, spa, dram)
        return lo, spa, bytearray(plain.tobytes())

    def _mmio_read(self, uc: Uc, offset: int, size: int, base: int) -> int:
        gpa = base + offset
        lo, _, plain = self._block_view(gpa, size)
        return int.from_bytes(plain[gpa - lo:gpa - lo + size], "little")

    def _mmio_write(self, uc: Uc, offset: int, size: int, value: int, base: int) -> None:
        gpa = base + offset
        lo, spa, plain = self._block_view(gpa, size)
        plain[gpa - lo:gpa - lo + size] = value.to_bytes(size, "little")
        dom = self.accessor_domain(lo // PAGE)
        data = np.frombuffer(bytes(plain), dtype=np.uint8)
        dram = data if dom == RAW else self.memory.engine.encrypt_blocks(dom, spa, data)
        self.memory.write_soc(spa, dram.tobytes())


def _unicorn_protection(mask: int) -> int:
    """An RMP permission mask as Unicorn page protection. sevsim's guests run at CPL 0, so
    supervisor execute is what lets them fetch."""
    return ((UC_PROT_READ if mask & PERM_READ else 0) | (UC_PROT_WRITE if mask & PERM_WRITE else 0)
            | (UC_PROT_EXEC if mask & PERM_EXEC_SUPER else 0))
