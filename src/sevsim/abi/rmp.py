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
