"""Host physical memory behind the memory controller.

Each 4 KiB frame has a storage domain: 0 means the cells hold exactly what DRAM holds
(hypervisor pages, shared pages, plain VMs); an ASID means the cells hold the plaintext the
SoC sees through that ASID's key, and DRAM is its encryption. vCPUs map those cells
directly, so guest code runs at full speed on plaintext, while every observer outside the
key domain (hypervisor, DMA, a DRAM dump, another ASID) gets the ciphertext computed by the
engine. Changing a frame's domain never changes what DRAM holds.

Three things change what the host reads and where its accesses land, all off by default so the
hot paths pay one integer test for them:
- TSME (a BIOS setting, `enable_tsme`): the modules hold domain-0 frames encrypted under a key
  the Secure Processor draws at boot. Every access through the controller is decrypted
  transparently, so only the modules themselves (`dram_dump()`, a cold boot) show it.
- Ciphertext hiding (Genoa and later, enabled by SNP_INIT_EX): host reads of frames the RMP
  assigns to an SNP guest (ASIDs 1..hidden_asids) return 0xFF instead of the ciphertext.
- A BadRAM module (`alias_span`): the DIMM's SPD claims one more address bit than its cells
  have, so the controller maps SPAs [size, 2 size) onto the same cells as [0, size). The RMP
  is indexed by SPA and has no entry above installed memory, so host writes through the alias
  are never checked against it.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from sevsim.abi.rmp import RMP_ENTRY_SIZE, rmp_entry_offset, rmp_table_size
from sevsim.errors import MemoryAccessError, RmpViolation
from sevsim.hw.cache import WriteBackCache
from sevsim.hw.engine import BLOCK, PAGE, EncryptionEngine
from sevsim.hw.rmp import Rmp
from sevsim.hw.trng import Trng

RAW = 0  # storage domain of frames whose cells hold the DRAM bytes themselves
TSME_SLOT = -1  # the engine slot of the TSME key: no ASID's, so no guest's domain uses it

HIDDEN_BYTE = 0xFF  # what a host read of a hidden frame returns
_FILL_CHUNK = 1 << 20  # zero DRAM a MiB at a time, skipping what is already zero
GRANULE = 512  # frames per entry of the reverse map (2 MiB)


def frame_runs(values: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(start, stop, value) for each run of equal values in a 1-D array."""
    if values.size == 0:
        return
    edges = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [values.size]))
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        yield start, stop, int(values[start])


class FrameMapper(Protocol):
    """Something that maps frames' cells directly (a VM's vCPUs) and can let go of them."""

    def release(self, first: int, stop: int) -> Callable[[], None]:
        """Unmap frames [first, stop); the returned call maps them again."""
        ...


class FrameWatcher(FrameMapper, Protocol):
    """A VM's address space as the SoC reaches it: what changes to frames it maps mean."""

    def host_wrote(self, spa: int, length: int) -> None:
        """DRAM bytes at [spa, spa+length) were written from outside the vCPUs."""
        ...

    def rmp_changed(self, frames: np.ndarray) -> None:
        """RMP entries of these frames changed."""
        ...

    def watch_stores(self, on: bool) -> None:
        """While the cache is held, tell it of every store the vCPUs make (`on`), or stop."""
        ...


class ReverseMap:
    """Which address spaces map frames in each 2 MiB granule of DRAM, so that a change to a
    frame reaches the few VMs that map it, not every VM on the host: a host running hundreds
    of VMs creates, launches and serves each one at the cost of one. Entries are added as NPTs
    map frames and dropped when the address space goes; a granule a VM unmapped may keep it
    as a watcher, which then finds nothing of its own there (a false hit, never a miss)."""

    def __init__(self) -> None:
        self._granules: dict[int, dict[FrameWatcher, None]] = {}  # ordered sets
        self._held: dict[FrameWatcher, set[int]] = {}

    def add(self, watcher: FrameWatcher, frames: np.ndarray) -> None:
        """Record that `watcher` maps `frames`; granules it already watches cost nothing."""
        held = self._held.setdefault(watcher, set())
        for granule in np.unique(frames // GRANULE).tolist():
            if granule not in held:
                held.add(granule)
                self._granules.setdefault(granule, {})[watcher] = None

    def remove(self, watcher: FrameWatcher) -> None:
        """Forget an address space that goes away, in every granule it watched."""
        for granule in self._held.pop(watcher, ()):
            watchers = self._granules[granule]
            del watchers[watcher]
            if not watchers:
                del self._granules[granule]

    def watchers(self, first: int, stop: int) -> list[FrameWatcher]:
        """Every address space that may map a frame of [first, stop)."""
        return self._in(range(first // GRANULE, (stop - 1) // GRANULE + 1))

    def watchers_of(self, frames: np.ndarray) -> list[FrameWatcher]:
        """Every address space that may map one of `frames`."""
        return self._in(np.unique(frames // GRANULE).tolist())

    def _in(self, granules: Iterable[int]) -> list[FrameWatcher]:
        found: dict[FrameWatcher, None] = {}
        for granule in granules:
            found.update(self._granules.get(granule, {}))
        return list(found)

    def all(self) -> list[FrameWatcher]:
        """Every address space with entries."""
        return list(self._held)

    def __len__(self) -> int:
        """Address spaces with entries."""
        return len(self._held)


class MemoryController:
    """DRAM, the per-frame storage domains and the encryption engine in front of them."""

    def __init__(self, size: int, engine: EncryptionEngine, entropy: Trng | None = None) -> None:
        """`entropy` is the SoC's source for nonces drawn at world switches (VMSA register
        protection)."""
        if size <= 0 or size % PAGE:
            raise MemoryAccessError(f"host memory size {size} is not a positive multiple of 4 KiB")
        self.size = size
        self.nframes = size // PAGE
        self.engine = engine
        self.cells = lazy_zeros(size, dumped=False)
        self.domain = np.zeros(self.nframes, dtype=np.int32)
        self.pins = np.zeros(self.nframes, dtype=np.int32)
        self.write_listeners: list[Callable[[int, int], None]] = []
        self.mappers: list[FrameMapper] = []
        self.reverse_map = ReverseMap()  # the VMs' address spaces, found by frame
        self.rmp = Rmp(self.nframes)
        self.rmp.listeners.append(self._rmp_changed)
        self.entropy = entropy or Trng()
        self.hidden_asids = 0  # ciphertext hiding: SNP ASIDs 1..hidden_asids (0: off)
        self.tsme = False  # TSME: the modules hold domain-0 frames encrypted (enable_tsme)
        self.alias_span = 0  # BadRAM: bytes of SPA space above `size` that alias [0, size)
        self.cache = WriteBackCache(self)

    # -- addresses -------------------------------------------------------------------------
    def check_range(self, spa: int, length: int) -> None:
        """MemoryAccessError unless [spa, spa+length) lies inside DRAM."""
        if spa < 0 or length < 0 or spa + length > self.size:
            raise MemoryAccessError(
                f"host physical range 0x{spa:x}+0x{length:x} outside DRAM (0x{self.size:x} bytes)")

    @property
    def mapped_size(self) -> int:
        """The SPA space the controller maps: installed memory, plus the alias a BadRAM
        module's SPD claims."""
        return self.size + self.alias_span

    def claim_extra_address_bit(self) -> int:
        """BadRAM: the modules report twice their capacity, so from the next boot SPA
        s + size reaches the cells of s; returns that offset."""
        self.alias_span = self.size
        return self.size

    def _unalias(self, spa: int, length: int) -> int:
        """The SPA in installed memory an access in the alias range lands on."""
        if spa + length > self.mapped_size:
            raise MemoryAccessError(f"host physical range 0x{spa:x}+0x{length:x} outside the "
                                    f"aliased DRAM (0x{self.mapped_size:x} bytes)")
        return spa - self.size

    def frame_address(self, frame: int) -> int:
        """Where a frame's cells live in this process, for mapping into a vCPU."""
        return self.cells.ctypes.data + frame * PAGE

    # -- the view from outside the key domain -------------------------------------------------
    def read(self, spa: int, length: int) -> bytes:
        """What the bus returns to the Secure Processor, DMA or a physical probe: DRAM bytes."""
        if self.alias_span and spa >= self.size:
            return self.read(self._unalias(spa, length), length)
        self.check_range(spa, length)
        if length == 0:
            return b""
        lo, hi = spa & ~(BLOCK - 1), (spa + length + BLOCK - 1) & ~(BLOCK - 1)
        return self._dram_bytes(lo, hi)[spa - lo:spa - lo + length].tobytes()

    def read_host(self, spa: int, length: int) -> bytes:
        """What the host's CPU cores read: DRAM bytes, or 0xFF in frames of SNP guests while
        ciphertext hiding is on."""
        data = self.read(spa, length)
        if not self.hidden_asids or not data:
            return data
        if self.alias_span and spa >= self.size:
            spa = self._unalias(spa, length)
        out = np.frombuffer(data, dtype=np.uint8).copy()
        self._hide(spa, out)
        return out.tobytes()

    def _hide(self, lo: int, dram: np.ndarray) -> None:
        """Ciphertext hiding: DRAM bytes from SPA `lo` become 0xFF in frames of hidden ASIDs."""
        frames = np.arange(lo // PAGE, (lo + dram.size - 1) // PAGE + 1)
        asid = self.rmp.asid[frames]
        hidden = self.rmp.assigned[frames] & (asid >= 1) & (asid <= self.hidden_asids)
        for frame in frames[hidden].tolist():
            a, b = max(frame * PAGE, lo), min((frame + 1) * PAGE, lo + dram.size)
            dram[a - lo:b - lo] = HIDDEN_BYTE

    def write(self, spa: int, data: bytes) -> None:
        """A write of DRAM bytes from outside: the owner later decrypts whatever lands here.
        Under SNP the RMP refuses it on guest or firmware frames, and nothing changes. Through
        a BadRAM alias the RMP sees an SPA it has no entry for, and the write lands."""
        length = len(data)
        if self.alias_span and spa >= self.size:  # no RMP entry to check: it lands
            real = self._unalias(spa, length)
            self.write_soc(real, data)
            self.dram_written(real, length)
            return
        self.check_range(spa, length)
        if length and self.rmp.enabled:
            frames = np.arange(spa // PAGE, (spa + length - 1) // PAGE + 1)
            owned = self.rmp.guest_owned(frames)
            if owned.any():
                frame = int(frames[owned][0])
                raise RmpViolation(f"RMP violation: host write to SPA 0x{spa:x}+0x{length:x}: "
                                   f"frame 0x{frame:x} belongs to {self._rmp_owner(frame)}")
        self.cache.store(spa, length)
        self.write_soc(spa, data)
        if not self.cache.held:  # an unheld cache is as good as written back at once
            self.dram_written(spa, length)

    def write_soc(self, spa: int, data: bytes) -> None:
        """A write of DRAM bytes from inside the SoC (the CPU storing a VMSA, a guest's access
        through the engine): the RMP was checked where the access was allowed."""
        length = len(data)
        self.check_range(spa, length)
        if length == 0:
            return
        lo, hi = spa & ~(BLOCK - 1), (spa + length + BLOCK - 1) & ~(BLOCK - 1)
        dram = self._dram_bytes(lo, hi)
        dram[spa - lo:spa - lo + length] = np.frombuffer(data, dtype=np.uint8)
        self._store_dram(lo, dram)
        self._wrote(spa, length)

    def enable_tsme(self, key: bytes) -> None:
        """TSME, as the BIOS turns it on at boot with the Secure Processor's `key`: from now
        on the modules hold every domain-0 frame under it."""
        self.engine.load_key(TSME_SLOT, key)
        self.tsme = True

    def dram_dump(self, out: np.ndarray | None = None, *, host_read: bool = False) -> np.ndarray:
        """Every byte of DRAM as a physical attacker reading the modules would see it (TSME
        applies); with `host_read`, as host software reading all of memory through the CPU
        sees it (ciphertext hiding applies, TSME is transparent)."""
        if out is None:
            out = np.empty(self.size, dtype=np.uint8)
        for start, stop, dom in frame_runs(self.domain):
            lo, hi = start * PAGE, stop * PAGE
            if dom == RAW and self.tsme and not host_read:
                self.engine.encrypt_pages(TSME_SLOT, start, self.cells[lo:hi], out[lo:hi])
            elif dom == RAW:
                out[lo:hi] = self.cells[lo:hi]
            else:
                self.engine.encrypt_pages(dom, start, self.cells[lo:hi], out[lo:hi])
        if host_read and self.hidden_asids:
            self._hide(0, out)
        return out

    # -- the caches and the RMP's home in DRAM ------------------------------------------------
    def hold_cache(self, on: bool) -> None:
        """Hold the cores' cache (no line leaves it on its own) or release it, which evicts
        what is left dirty; the vCPUs report their stores to it while it is held."""
        if on == self.cache.held:
            return
        if not on:
            self.cache.write_back()
        self.cache.held = on
        for watcher in self.reverse_map.all():
            watcher.watch_stores(on)

    def dram_written(self, spa: int, length: int) -> None:
        """A core's line reached DRAM at [spa, spa+length) (a write-back, unchecked): where
        it covers RMP entries, the entries are what DRAM now holds."""
        table = self.rmp.table_spa
        if table is None or not self.rmp.enabled:
            return
        base = table + rmp_entry_offset(0)
        first = max(0, (spa - base) // RMP_ENTRY_SIZE)
        stop = min(self.nframes, -(-(spa + length - base) // RMP_ENTRY_SIZE))
        if first < stop:
            raw = self.read(base + first * RMP_ENTRY_SIZE, (stop - first) * RMP_ENTRY_SIZE)
            self.rmp.load(np.arange(first, stop),
                          np.frombuffer(raw, dtype=np.uint8).reshape(-1, RMP_ENTRY_SIZE))

    def reserve_rmp_table(self) -> None:
        """The BIOS reserves the top of DRAM for the RMP (RMP_BASE..RMP_END, `rmp.table_spa`
        to the end), which the host must never hand out."""
        first = self.nframes - -(-rmp_table_size(self.nframes) // PAGE)
        if first <= 0:
            raise MemoryAccessError(f"{self.size} bytes of DRAM leave no room for an RMP")
        self.rmp.table_spa = first * PAGE

    def init_rmp_table(self) -> None:
        """SNP_INIT: the Secure Processor writes the table into its DRAM, beneath the cores'
        caches (x86 accesses are blocked meanwhile): the table's own frames become firmware
        pages, every other frame stays as it is (the hypervisor's). A dirty line a core still
        holds over the table keeps its stale bytes, to be written back later."""
        table = self.rmp.table_spa
        if table is None:
            return
        own = np.arange(table // PAGE, self.nframes)
        self.rmp.set_firmware_pages(own)
        with self.cache.beneath(table, self.size - table):
            self.fill(own, RAW)
            self._store_entries(self.rmp.in_use())

    def _store_entries(self, frames: np.ndarray) -> None:
        """Write entries through to the table's bytes (the table's frames are in no key
        domain: their cells are DRAM)."""
        table = self.rmp.table_spa
        if table is None or not frames.size:
            return
        offsets = table + rmp_entry_offset(0) + RMP_ENTRY_SIZE * frames.astype(np.int64)
        self.cells[offsets[:, None] + np.arange(RMP_ENTRY_SIZE)] = self.rmp.encode(frames)

    # -- inside the SoC ----------------------------------------------------------------------
    @contextmanager
    def exclusive(self, first: int, stop: int) -> Iterator[None]:
        """Frames [first, stop) with no vCPU mapping them directly, for the duration."""
        if not self.pins[first:stop].any():
            yield
            return
        remaps = [mapper.release(first, stop)
                  for mapper in [*self.mappers, *self.reverse_map.watchers(first, stop)]]
        try:
            yield
        finally:
            for remap in remaps:
                remap()

    def convert_domain(self, first: int, count: int, domain: int) -> None:
        """Re-express frames for another key domain; what DRAM holds stays the same."""
        with self.exclusive(first, first + count):
            self._convert(first, count, domain)

    def _convert(self, first: int, count: int, domain: int) -> None:
        for start, stop, dom in frame_runs(self.domain[first:first + count]):
            if dom == domain:
                continue
            f0, f1 = first + start, first + stop
            cells = self.cells[f0 * PAGE:f1 * PAGE]
            if dom != RAW:
                self.engine.encrypt_pages(dom, f0, cells, cells)
            if domain != RAW:
                self.engine.decrypt_pages(domain, f0, cells, cells)
            self.domain[f0:f1] = domain

    def encrypt_in_place(self, spa: int, length: int, domain: int) -> None:
        """Firmware LAUNCH_UPDATE: the DRAM bytes in [spa, spa+length) become the domain's
        plaintext (whatever domain the frames were in: the firmware encrypts what DRAM holds,
        so a second update of the same page, or of its other half, works as on hardware)."""
        self.check_range(spa, length)
        if length == 0:
            return
        first, stop = spa // PAGE, (spa + length - 1) // PAGE + 1
        self._check_keyed_write(first, stop, domain)
        lo, hi = spa & ~(BLOCK - 1), (spa + length + BLOCK - 1) & ~(BLOCK - 1)
        data = self._dram_bytes(lo, hi)[spa - lo:spa - lo + length]
        with self.exclusive(first, stop):
            self._convert(first, stop - first, domain)
            self.cells[spa:spa + length] = data

    def write_domain(self, spa: int, data: bytes, domain: int) -> None:
        """The Secure Processor writing with a guest's key (LAUNCH_SECRET): the frames join
        the domain (the rest of their DRAM bytes unchanged) and `data` becomes the domain's
        plaintext at [spa, spa+len), so DRAM only ever holds its encryption."""
        length = len(data)
        self.check_range(spa, length)
        if length == 0:
            return
        first, stop = spa // PAGE, (spa + length - 1) // PAGE + 1
        self._check_keyed_write(first, stop, domain)
        with self.exclusive(first, stop):
            self._convert(first, stop - first, domain)
            self.cells[spa:spa + length] = np.frombuffer(data, dtype=np.uint8)
        self._wrote(spa, length)

    def fill(self, frames: np.ndarray, domain: int) -> None:
        """Frames overwritten with zeros through `domain`'s view (no need to decrypt first)."""
        for start, stop in _consecutive(np.sort(frames)):
            self.domain[start:stop] = domain
            for lo in range(start * PAGE, stop * PAGE, _FILL_CHUNK):
                cells = self.cells[lo:min(lo + _FILL_CHUNK, stop * PAGE)]
                if cells.any():  # reading untouched memory is cheap; writing it allocates it
                    cells[:] = 0

    def unload_domain(self, domain: int) -> None:
        """Before a key leaves its slot, its frames fall back to the DRAM bytes they hold."""
        for run_start, run_stop in _consecutive(np.flatnonzero(self.domain == domain)):
            self.convert_domain(run_start, run_stop - run_start, RAW)

    # -- helpers ----------------------------------------------------------------------------
    def _wrote(self, spa: int, length: int) -> None:
        for listener in self.write_listeners:
            listener(spa, length)
        for watcher in self.reverse_map.watchers(spa // PAGE, (spa + length - 1) // PAGE + 1):
            watcher.host_wrote(spa, length)

    def _rmp_changed(self, frames: np.ndarray) -> None:
        if self.rmp.enabled:
            self._store_entries(frames)
        for watcher in self.reverse_map.watchers_of(frames):
            watcher.rmp_changed(frames)

    def _check_keyed_write(self, first: int, stop: int, domain: int) -> None:
        """Under SNP the Secure Processor obeys the RMP too: it writes with an ASID's key only
        frames that are the hypervisor's or assigned to that ASID (so a legacy SEV command
        cannot be aimed at an SNP guest's pages or at a firmware page)."""
        if not self.rmp.enabled:
            return
        frames = np.arange(first, stop)
        foreign = self.rmp.assigned[frames] & (self.rmp.asid[frames] != domain)
        if foreign.any():
            frame = int(frames[foreign][0])
            raise RmpViolation(f"RMP violation: a write with ASID {domain}'s key to frame "
                               f"0x{frame:x}, which belongs to {self._rmp_owner(frame)}")

    def _rmp_owner(self, frame: int) -> str:
        asid = int(self.rmp.asid[frame])
        return f"ASID {asid}" if asid else "the firmware"

    def _dram_bytes(self, lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, dtype=np.uint8)
        f_lo, f_hi = lo // PAGE, (hi - 1) // PAGE + 1
        for start, stop, dom in frame_runs(self.domain[f_lo:f_hi]):
            a = max(lo, (f_lo + start) * PAGE)
            b = min(hi, (f_lo + stop) * PAGE)
            if dom == RAW:
                out[a - lo:b - lo] = self.cells[a:b]
            else:
                out[a - lo:b - lo] = self.engine.encrypt_blocks(dom, a, self.cells[a:b])
        return out

    def _store_dram(self, lo: int, dram: np.ndarray) -> None:
        hi = lo + dram.size
        f_lo, f_hi = lo // PAGE, (hi - 1) // PAGE + 1
        for start, stop, dom in frame_runs(self.domain[f_lo:f_hi]):
            a = max(lo, (f_lo + start) * PAGE)
            b = min(hi, (f_lo + stop) * PAGE)
            part = dram[a - lo:b - lo]
            self.cells[a:b] = part if dom == RAW else self.engine.decrypt_blocks(dom, a, part)


def lazy_zeros(size: int, *, dumped: bool = True) -> np.ndarray:
    """`size` zeroed bytes the kernel backs only where written, 4 KiB at a time: numpy asks
    for transparent huge pages on large arrays, which would make every page written cost
    2 MiB of RAM (a host of many small VMs touches a few pages of each). Not `dumped`: left
    out of core dumps (DRAM: gigabytes of guest plaintext), which also keeps it a mapping of
    its own that /proc/self/smaps shows apart."""
    try:
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as error:  # ENOMEM: more than the process may map
        raise MemoryError(f"cannot map {size} bytes: {error.strerror}") from None
    region.madvise(mmap.MADV_NOHUGEPAGE)
    if not dumped:
        region.madvise(mmap.MADV_DONTDUMP)
    return np.frombuffer(region, dtype=np.uint8)


def _consecutive(frames: np.ndarray) -> Iterator[tuple[int, int]]:
    """Runs of consecutive frame numbers as (start, stop)."""
    if frames.size == 0:
        return
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    for part in np.split(frames, breaks):
        yield int(part[0]), int(part[-1]) + 1
