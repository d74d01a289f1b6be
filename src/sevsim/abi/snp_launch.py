"""The SNP launch measurement, byte for byte (spec-formats.md §6): PAGE_INFO and the
launch-digest update rule.

The firmware and a guest owner predicting MEASUREMENT must compute the digest identically,
so the rule lives here (sev-snp-measure gctx.py; SNP ABI 8.17.2 Table 67). The identity
structures SNP_LAUNCH_FINISH checks are in abi.snp_idblock; this module stays free of
cryptography so `sevsim measure` starts fast.
"""


import hashlib
import struct
from enum import IntEnum
from typing import NamedTuple

from sevsim.errors import LaunchFormatError

PAGE_SIZE = 0x1000
DIGEST_SIZE = 48
PAGE_INFO_SIZE = 0x70
VMSA_GPA = 0xFFFFFFFFF000  # -1, page-aligned, bits above 51 cleared
GPA_LIMIT = 1 << 52
INITIAL_DIGEST = bytes(DIGEST_SIZE)
_PAGE_INFO = struct.Struct("<48s48sHBBBBBBQ")


class PageType(IntEnum):
    """SNP_LAUNCH_UPDATE page types; only NORMAL and VMSA contribute their contents."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6

    @property
    def measures_contents(self) -> bool:
        """Whether the page's contents enter the digest (not only its metadata)."""
        return self in (PageType.NORMAL, PageType.VMSA)


class PageInfo(NamedTuple):
    """The 0x70-byte PAGE_INFO whose SHA-384 becomes the next launch digest."""

    digest_cur: bytes
    contents: bytes
    page_type: PageType
    gpa: int
    imi_page: bool = False
    vmpl3_perms: int = 0
    vmpl2_perms: int = 0
    vmpl1_perms: int = 0

    def to_bytes(self) -> bytes:
        """The 0x70-byte PAGE_INFO the launch digest hashes."""
        return _pack_page_info(self.digest_cur, self.contents, self.page_type, self.gpa,
                               self.imi_page, self.vmpl3_perms, self.vmpl2_perms,
                               self.vmpl1_perms)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "PageInfo":
        """Parse a PAGE_INFO strictly."""
        if len(blob) != PAGE_INFO_SIZE:
            raise LaunchFormatError("PAGE_INFO", f"is {len(blob)} bytes, not 0x70")
        cur, contents, length, ptype, imi, p3, p2, p1, rsvd, gpa = _PAGE_INFO.unpack(blob)
        if length != PAGE_INFO_SIZE:
            raise LaunchFormatError("LENGTH", f"0x{length:x}, must be 0x70")
        if imi >> 1:
            raise LaunchFormatError("IMI_PAGE", f"0x{imi:x}: bits 7:1 are reserved")
        if rsvd:
            raise LaunchFormatError("reserved 0x67", "must be zero")
        try:
            page_type = PageType(ptype)
        except ValueError:
            raise LaunchFormatError("PAGE_TYPE", f"{ptype} is not a page type") from None
        info = cls(cur, contents, page_type, gpa, bool(imi), p3, p2, p1)
        info.to_bytes()  # GPA alignment and range
        return info

    def next_digest(self) -> bytes:
        """The launch digest after this page: SHA-384 of PAGE_INFO."""
        return hashlib.sha384(self.to_bytes()).digest()


def _pack_page_info(digest_cur: bytes, contents: bytes, page_type: PageType, gpa: int,
                    imi_page: bool, vmpl3: int, vmpl2: int, vmpl1: int) -> bytes:
    if len(digest_cur) != DIGEST_SIZE or len(contents) != DIGEST_SIZE:
        name = "DIGEST_CUR" if len(digest_cur) != DIGEST_SIZE else "CONTENTS"
        raise LaunchFormatError(name, "must be 48 bytes")
    if not 0 <= gpa < GPA_LIMIT or gpa % PAGE_SIZE:
        raise LaunchFormatError("GPA", f"0x{gpa:x} is not a page-aligned 52-bit GPA")
    try:
        return _PAGE_INFO.pack(digest_cur, contents, PAGE_INFO_SIZE, page_type, int(imi_page),
                               vmpl3, vmpl2, vmpl1, 0, gpa)
    except struct.error as err:
        raise LaunchFormatError("PAGE_INFO", f"a field does not fit: {err}") from None


def page_contents(page_type: PageType, page: bytes | None) -> bytes:
    """CONTENTS for a page: SHA-384 of the 4 KiB page for NORMAL and VMSA, zero otherwise."""
    if not page_type.measures_contents:
        return bytes(DIGEST_SIZE)
    if page is None or len(page) != PAGE_SIZE:
        raise LaunchFormatError("CONTENTS", f"a {page_type.name} page needs its 4096 bytes")
    return hashlib.sha384(page).digest()


def update_digest(digest: bytes, page_type: PageType, gpa: int, page: bytes | None = None,
                  imi_page: bool = False, vmpl_perms: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """One SNP_LAUNCH_UPDATE page: LD' = SHA-384(PAGE_INFO(LD, contents, type, gpa)).
    `vmpl_perms` is (VMPL3, VMPL2, VMPL1), as PAGE_INFO orders them."""
    blob = _pack_page_info(digest, page_contents(page_type, page), page_type, gpa, imi_page,
                           *vmpl_perms)  # PageInfo(...).next_digest(), without the object
    return hashlib.sha384(blob).digest()
