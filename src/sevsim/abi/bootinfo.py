"""The boot-info page sevsim's VMM hands its guest kernel at GPA 0x1000 (measured at launch).

The first 48 bytes are the part guest programs read through the SDK (`struct sev_bootinfo`);
the rest describes the program image for the guest kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

BOOTINFO_GPA = 0x1000
MAGIC = b"SEVSIMBI"
MAX_SEGMENTS = 16
_HEAD = struct.Struct("<8sQQQQQ")  # magic, ram_size, nvcpus, heap_start, heap_end, mode
_IMAGE = struct.Struct("<QQQ")  # entry, stack_top, segment count
_SEGMENT = struct.Struct("<QQQQ")  # gpa, file size, memory size, flags (ELF p_flags)
_IMAGE_OFFSET = 0x100
_KERNEL_ID_OFFSET = 0x800
MODES = ("none", "sev", "sev-es", "snp")


@dataclass(frozen=True)
class Segment:
    gpa: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True)
class BootInfo:
    ram_size: int
    nvcpus: int
    heap_start: int
    heap_end: int
    mode: str
    entry: int
    stack_top: int
    segments: tuple[Segment, ...]
    kernel_id: bytes  # SHA-384 of the guest kernel the VMM booted; part of the measurement

    def to_bytes(self) -> bytes:
        if len(self.segments) > MAX_SEGMENTS:
            raise ValueError(f"{len(self.segments)} segments, a boot-info page holds "
                             f"{MAX_SEGMENTS}")
        if len(self.kernel_id) != 48:
            raise ValueError(f"kernel identity is {len(self.kernel_id)} bytes, not 48 (SHA-384)")
        page = bytearray(4096)
        page[:_HEAD.size] = _HEAD.pack(MAGIC, self.ram_size, self.nvcpus, self.heap_start,
                                       self.heap_end, MODES.index(self.mode))
        page[_IMAGE_OFFSET:_IMAGE_OFFSET + _IMAGE.size] = _IMAGE.pack(
            self.entry, self.stack_top, len(self.segments))
        pos = _IMAGE_OFFSET + _IMAGE.size
        for seg in self.segments:
            page[pos:pos + _SEGMENT.size] = _SEGMENT.pack(seg.gpa, seg.filesz, seg.memsz,
                                                          seg.flags)
            pos += _SEGMENT.size
        page[_KERNEL_ID_OFFSET:_KERNEL_ID_OFFSET + 48] = self.kernel_id
        return bytes(page)

    def launched_pages(self) -> list[int]:
        """Guest page numbers the VMM launch-updates: the boot info and every page holding
        file bytes. Pages that are only .bss are not measured; the kernel zeroes them."""
        pages = {BOOTINFO_GPA // 4096}
        for seg in self.segments:
            if seg.filesz:
                pages.update(range(seg.gpa // 4096, (seg.gpa + seg.filesz - 1) // 4096 + 1))
        return sorted(pages)

    @classmethod
    def from_bytes(cls, page: bytes) -> BootInfo:
        if len(page) < _KERNEL_ID_OFFSET + 48:
            raise ValueError(f"boot-info page of {len(page)} bytes is truncated")
        magic, ram, nvcpus, heap_start, heap_end, mode = _HEAD.unpack_from(page)
        if magic != MAGIC or mode >= len(MODES):
            raise ValueError("not a sevsim boot-info page")
        entry, stack_top, count = _IMAGE.unpack_from(page, _IMAGE_OFFSET)
        if count > MAX_SEGMENTS:
            raise ValueError(f"boot info lists {count} segments, at most {MAX_SEGMENTS}")
        segments = tuple(
            Segment(*_SEGMENT.unpack_from(page, _IMAGE_OFFSET + _IMAGE.size + i * _SEGMENT.size))
            for i in range(count))
        return cls(ram, nvcpus, heap_start, heap_end, MODES[mode], entry, stack_top, segments,
                   bytes(page[_KERNEL_ID_OFFSET:_KERNEL_ID_OFFSET + 48]))
