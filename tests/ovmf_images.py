"""Synthetic OVMF and SVSM images built from the format description (abi.ovmf), for what
Debian's OVMF.fd lacks (a kernel hashes section, an SVSM CAA), for SVSM images (coconut-svsm's
layout: OVMF's footer table with an SVSM_INFO entry and SEV metadata) and for bad images."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from sevsim.abi import ovmf

AMDSEV_SECTIONS = [(0x800000, 0x9000, 1), (0x80A000, 0x3000, 1), (0x80D000, 0x1000, 2),
                   (0x80E000, 0x1000, 3), (0x80F000, 0x1000, 0x10), (0x810000, 0x2000, 4),
                   (0x812000, 0x10000, 1)]
# An SVSM's: pre-validated memory, the secrets and CPUID pages, the calling area (CAA) last.
SVSM_SECTIONS = [(0x1000000, 0x8000, 1), (0x1008000, 0x1000, 2), (0x1009000, 0x1000, 3),
                 (0x100A000, 0x1000, 4)]


def _entry(guid: ovmf.Guid, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + guid.bytes_le


def make_ovmf(sections: Sequence[tuple[int, int, int]], *, hash_table_gpa: int = 0,
              reset_eip: int = 0x80B004, size: int = 0x40000, metadata: bool = True,
              metadata_at: int = 0x1000,
              entries: Sequence[tuple[ovmf.Guid, bytes]] = ()) -> bytes:
    """An image of `size` bytes whose footer table (ending 32 bytes before the end) names a
    reset block, a hash table, `entries` and SEV metadata (`metadata_at` bytes before the
    end) listing `sections` as (gpa, size, type)."""
    image = bytearray(size)
    meta = struct.pack("<4sIII", b"ASEV", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    image[size - metadata_at:size - metadata_at + len(meta)] = meta
    body = _entry(ovmf.SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", reset_eip))
    body += _entry(ovmf.SEV_HASH_TABLE_RV_GUID, struct.pack("<II", hash_table_gpa, 0x400))
    body += b"".join(_entry(guid, data) for guid, data in entries)
    if metadata:
        body += _entry(ovmf.SEV_METADATA_GUID, struct.pack("<I", metadata_at))
    table = body + struct.pack("<H", len(body) + 18) + ovmf.FOOTER_TABLE_GUID.bytes_le
    image[size - 32 - len(table):size - 32] = table
    image[size - 16:size - 13] = b"\x90\xe9\x00"  # something in the reset vector
    return bytes(image)


def make_svsm(sections: Sequence[tuple[int, int, int]] = SVSM_SECTIONS, *, entry: int = 0x1000,
              size: int = 0x40000, metadata: bool = True, info: bool = True) -> bytes:
    """An SVSM image: `size` bytes of code (a pattern, so every page hashes differently) with
    an SVSM_INFO entry naming `entry` (an offset into the image) and SEV metadata."""
    image = bytearray(make_ovmf(sections, size=size, metadata=metadata, entries=[
        (ovmf.SVSM_INFO_GUID, struct.pack("<I", entry))] if info else []))
    code = bytes(range(251)) * (size // 2 // 251)
    image[:len(code)] = code
    return bytes(image)
