"""The boot-info page sevsim's VMM hands its guest kernel at GPA 0x1000 (measured at launch),
and the guest memory layout the VMM launches: what the launch digest covers, page by page.

The first 64 bytes are the part guest programs read through the SDK (`struct sev_bootinfo`);
the rest describes the program image for the guest kernel. The boot info also names the
secret page: a zero page the VMM launches (so it is measured and private) into which the
firmware writes the guest owner's LAUNCH_SECRET as `u32 length (little-endian) || data`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag

from sevsim.errors import FormatError

PAGE = 4096
BOOTINFO_GPA = 0x1000
SECRET_GPA = 0x2000
SECRET_SIZE = PAGE
SNP_SECRETS_GPA = 0x3000  # SEV-SNP: the firmware's secrets page (VMPCKs), launched by the VMM
SNP_CPUID_GPA = 0x4000  # SEV-SNP: the CPUID page the firmware checked, launched by the VMM
BSP_STACK_SIZE = 256 * 1024
MAGIC = b"SEVSIMBI"
MAX_SEGMENTS = 16
_HEAD = struct.Struct("<8sQQQQQQQ")  # magic, ram, nvcpus, heap start/end, mode, secret gpa/size
_SECRET_LENGTH = struct.Struct("<I")
_IMAGE = struct.Struct("<QQQ")  # entry, stack_top, segment count
_SEGMENT = struct.Struct("<QQQQ")  # gpa, file size, memory size, flags (ELF p_flags)
_IMAGE_OFFSET = 0x100
_KERNEL_ID_OFFSET = 0x800
MODES = ("none", "sev", "sev-es", "snp")


class KernelOption(IntFlag):
    """Hardening options a guest program turns on at start (the kernel's SYS_KERNEL_OPTIONS,
    sevsim.h's SEV_KOPT_*), once and for good: they live in the kernel's private state."""

    VC_INSN_CHECK = 1 << 0  # #VC: the instruction at RIP must be the one the exit code names
    NO_IA32_EMULATION = 1 << 1  # no int 0x80 (Linux's ia32_emulation=0)


@dataclass(frozen=True)
class Segment:
    """One loadable segment of the guest image as the boot-info page lists it."""

    gpa: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        """Whether the ELF flags mark it executable (the kernel maps it as code)."""
        return bool(self.flags & 1)


@dataclass(frozen=True)
class BootInfo:
    """The boot-info page the VMM writes at launch: what the guest kernel boots from."""

    ram_size: int
    nvcpus: int
    heap_start: int
    heap_end: int
    mode: str
    entry: int
    stack_top: int
    segments: tuple[Segment, ...]
    kernel_id: bytes  # SHA-384 of the guest kernel the VMM booted; part of the measurement
    secret_gpa: int = 0  # the launch-secret page, or 0 and 0 when the VMM reserved none
    secret_size: int = 0

    def _check_secret(self) -> None:
        if self.secret_gpa % PAGE or self.secret_size % PAGE:
            raise FormatError(f"secret area 0x{self.secret_gpa:x}+0x{self.secret_size:x} is not "
                             "page aligned")

    def to_bytes(self) -> bytes:
        """The 4 KiB page, as the VMM launches it."""
        self._check_secret()
        if len(self.segments) > MAX_SEGMENTS:
            raise FormatError(f"{len(self.segments)} segments, a boot-info page holds "
                             f"{MAX_SEGMENTS}")
        if len(self.kernel_id) != 48:
            raise FormatError(f"kernel identity is {len(self.kernel_id)} bytes, not 48 (SHA-384)")
        page = bytearray(4096)
        page[:_HEAD.size] = _HEAD.pack(MAGIC, self.ram_size, self.nvcpus, self.heap_start,
                                       self.heap_end, MODES.index(self.mode), self.secret_gpa,
                                       self.secret_size)
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
        """Guest page numbers the VMM launch-updates: the boot info, the secret page and
        every page holding file bytes. Pages that are only .bss are not measured; the kernel
        zeroes them (and keeps these)."""
        pages = {BOOTINFO_GPA // 4096}
        pages.update(range(self.secret_gpa // PAGE, (self.secret_gpa + self.secret_size) // PAGE))
        for seg in self.segments:
            if seg.filesz:
                pages.update(range(seg.gpa // 4096, (seg.gpa + seg.filesz - 1) // 4096 + 1))
        return sorted(pages)

    @classmethod
    def from_bytes(cls, page: bytes) -> BootInfo:
        """Parse a boot-info page strictly: FormatError if it is not one."""
        if len(page) < _KERNEL_ID_OFFSET + 48:
            raise FormatError(f"boot-info page of {len(page)} bytes is truncated")
        magic, ram, nvcpus, heap_start, heap_end, mode, secret_gpa, secret_size = (
            _HEAD.unpack_from(page))
        if magic != MAGIC or mode >= len(MODES):
            raise FormatError("not a sevsim boot-info page")
        entry, stack_top, count = _IMAGE.unpack_from(page, _IMAGE_OFFSET)
        if count > MAX_SEGMENTS:
            raise FormatError(f"boot info lists {count} segments, at most {MAX_SEGMENTS}")
        segments = tuple(
            Segment(*_SEGMENT.unpack_from(page, _IMAGE_OFFSET + _IMAGE.size + i * _SEGMENT.size))
            for i in range(count))
        info = cls(ram, nvcpus, heap_start, heap_end, MODES[mode], entry, stack_top, segments,
                   bytes(page[_KERNEL_ID_OFFSET:_KERNEL_ID_OFFSET + 48]), secret_gpa, secret_size)
        info._check_secret()
        return info


def boot_info_for(entry: int, segments: Sequence[Segment], ram_size: int, nvcpus: int,
                  mode: str, kernel_id: bytes) -> BootInfo:
    """The boot info sevsim's VMM gives an image: the heap from the page after the image to
    the boot vCPU's stack at the top of RAM, and the secret page. FormatError if it does not
    fit."""
    heap_start = -(-max(s.gpa + s.memsz for s in segments) // PAGE) * PAGE
    if heap_start > ram_size - BSP_STACK_SIZE:
        raise FormatError(f"image ends at 0x{heap_start:x}; it does not fit in "
                         f"{ram_size >> 20} MiB with a {BSP_STACK_SIZE >> 10} KiB stack")
    return BootInfo(ram_size, nvcpus, heap_start, ram_size - BSP_STACK_SIZE, mode, entry,
                    ram_size, tuple(segments), kernel_id, SECRET_GPA, SECRET_SIZE)


def launch_image(boot: BootInfo, contents: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """(page number, bytes) of every launched page, in guest-physical order, as the VMM hands
    them to LAUNCH_UPDATE_DATA: the boot-info page, the zero secret page, and each segment's
    file bytes (`contents`, in segment order) on zeroed pages. The launch digest is SHA-256
    over their concatenation, so a guest owner computes it from the image alone."""
    pages = {gpn: bytearray(PAGE) for gpn in boot.launched_pages()}
    pages[BOOTINFO_GPA // PAGE][:] = boot.to_bytes()
    for seg, data in zip(boot.segments, contents, strict=True):
        if len(data) != seg.filesz:
            raise FormatError(f"segment at 0x{seg.gpa:x} has {len(data)} file bytes, "
                             f"not {seg.filesz}")
        pos = 0
        while pos < len(data):
            gpa = seg.gpa + pos
            take = min(len(data) - pos, PAGE - gpa % PAGE)
            pages[gpa // PAGE][gpa % PAGE:gpa % PAGE + take] = data[pos:pos + take]
            pos += take
    return [(gpn, bytes(pages[gpn])) for gpn in sorted(pages)]


def pack_secret(data: bytes) -> bytes:
    """The secret page's payload: u32 length || data, zero-padded to 16 bytes (LAUNCH_SECRET
    writes whole blocks)."""
    if not 0 < len(data) <= SECRET_SIZE - _SECRET_LENGTH.size:
        raise FormatError(f"a secret is 1..{SECRET_SIZE - _SECRET_LENGTH.size} bytes, "
                         f"not {len(data)}")
    payload = _SECRET_LENGTH.pack(len(data)) + data
    return payload.ljust(-(-len(payload) // 16) * 16, b"\0")
