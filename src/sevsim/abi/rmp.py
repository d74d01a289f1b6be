"""The architectural interface of the SEV-SNP RMP instructions (AMD APM vol. 3: RMPUPDATE,
PSMASH, PVALIDATE, RMPADJUST): page sizes, VMPL permission bits, return codes."""

from __future__ import annotations

from enum import IntEnum

PAGE_4K, PAGE_2M = 0, 1
FRAMES_2M = 512
# VMPL permission mask bits (RMPADJUST): read, write, execute user, execute supervisor.
PERM_READ, PERM_WRITE, PERM_EXEC_USER, PERM_EXEC_SUPER = 1, 2, 4, 8
PERM_ALL = PERM_READ | PERM_WRITE | PERM_EXEC_USER | PERM_EXEC_SUPER
VMPLS = 4


class RmpResult(IntEnum):
    """What RMPUPDATE, PSMASH, PVALIDATE and RMPADJUST return in EAX."""

    SUCCESS = 0
    FAIL_INPUT = 1
    FAIL_PERMISSION = 2
    FAIL_INUSE = 3
    FAIL_OVERLAP = 4
    FAIL_SIZEMISMATCH = 6

# The RMP in memory (AMD's PPR for family 19h; Linux `struct rmpentry_raw`): the BIOS reserves
# a range of DRAM (MSRs RMP_BASE/RMP_END); it starts with a 16 KiB header the firmware keeps,
# then one 16-byte entry per 4 KiB frame of DRAM, in frame order. AMD documents the first
# quadword's fields; sevsim puts the VMPL permission masks in the second (one byte per VMPL),
# which AMD does not document.
RMP_HEADER_SIZE = 0x4000
RMP_ENTRY_SIZE = 16
# The entry's low quadword: bits and shifts of its fields.
RMP_ASSIGNED = 1 << 0
RMP_PAGE_SIZE_SHIFT = 1
RMP_IMMUTABLE = 1 << 2
RMP_GPA_MASK = ((1 << 51) - 1) & ~0xFFF  # the guest page's GPA, bits 50:12
RMP_ASID_SHIFT, RMP_ASID_BITS = 51, 10
RMP_VMSA = 1 << 61
RMP_VALIDATED = 1 << 62


def rmp_table_size(nframes: int) -> int:
    """Bytes of the RMP of a DRAM of `nframes` 4 KiB frames: header and entries."""
    return RMP_HEADER_SIZE + RMP_ENTRY_SIZE * nframes


def rmp_entry_offset(frame: int) -> int:
    """Where a frame's entry sits in the table, from RMP_BASE."""
    return RMP_HEADER_SIZE + RMP_ENTRY_SIZE * frame
