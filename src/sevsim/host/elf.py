"""Reading guest ELF images with pyelftools, refusing anything the VM could not run."""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import pairwise

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sevsim.abi.bootinfo import MAX_SEGMENTS
from sevsim.errors import ImageError

LOWEST_LOAD_ADDRESS = 0x10000


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD segment: the file's bytes for `gpa`, zero-filled up to `memsz`; `flags` are
    the ELF p_flags."""

    gpa: int
    data: bytes
    memsz: int
    flags: int


@dataclass(frozen=True)
class GuestImage:
    """A parsed guest program: where it starts and what to load where."""

    entry: int
    segments: tuple[LoadSegment, ...]

    @property
    def end(self) -> int:
        """The GPA just past the image in memory (bss included)."""
        return max(s.gpa + s.memsz for s in self.segments)


def parse_elf(blob: bytes) -> GuestImage:
    """A static x86-64 executable: ELF64, little-endian, ET_EXEC, EM_X86_64, PT_LOAD only."""
    try:
        elf = ELFFile(io.BytesIO(blob))
        header = elf.header
        if elf.elfclass != 64 or not elf.little_endian:
            raise ImageError("not a 64-bit little-endian ELF")
        if header["e_machine"] != "EM_X86_64":
            raise ImageError(f"ELF machine is {header['e_machine']}, not EM_X86_64")
        if header["e_type"] != "ET_EXEC":
            raise ImageError(f"ELF type is {header['e_type']}; a static ET_EXEC is needed")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                raise ImageError("dynamically linked ELF (PT_INTERP); link it statically")
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_filesz"] > seg["p_memsz"]:
                raise ImageError("a PT_LOAD segment has more file bytes than memory bytes")
            data = seg.data()
            if len(data) != seg["p_filesz"]:
                raise ImageError("a PT_LOAD segment runs past the end of the file")
            segments.append(LoadSegment(seg["p_paddr"] or seg["p_vaddr"], data, seg["p_memsz"],
                                        seg["p_flags"]))
    except (ELFError, ValueError, OSError, OverflowError) as err:  # offsets past any file
        raise ImageError(f"malformed ELF: {err}") from None
    if not segments:
        raise ImageError("ELF has no loadable segment")
    if len(segments) > MAX_SEGMENTS:
        raise ImageError(f"ELF has {len(segments)} loadable segments, at most {MAX_SEGMENTS}")
    segments.sort(key=lambda s: s.gpa)
    for low, high in pairwise(segments):
        if low.gpa + low.memsz > high.gpa:
            raise ImageError(f"segments at 0x{low.gpa:x} and 0x{high.gpa:x} overlap")
    if segments[0].gpa < LOWEST_LOAD_ADDRESS:
        raise ImageError(f"segment at 0x{segments[0].gpa:x} is below 0x{LOWEST_LOAD_ADDRESS:x}")
    entry = header["e_entry"]
    if not any(s.gpa <= entry < s.gpa + s.memsz and s.flags & 1 for s in segments):
        raise ImageError(f"entry point 0x{entry:x} is not in an executable segment")
    return GuestImage(entry, tuple(segments))
