"""CPUID Fn8000_001F, the CPUID signature, the SEV_STATUS MSR and the SNP CPUID page.

Sources: Linux cpufeatures.h and msr-index.h (spec-formats.md §8); the CPUID page is Linux's
struct snp_cpuid_table (arch/x86/include/asm/sev.h).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from sevsim.errors import FormatError

MSR_SEV_STATUS = 0xC0010131
MSR_GHCB = 0xC0010130


class SevFeatures(IntFlag):
    """CPUID Fn8000_001F EAX feature bits."""

    SME = 1 << 0
    SEV = 1 << 1
    VM_PAGE_FLUSH = 1 << 2
    SEV_ES = 1 << 3
    SEV_SNP = 1 << 4
    VMPL = 1 << 5
    RMPQUERY = 1 << 6
    VMPL_SSS = 1 << 7
    SECURE_TSC = 1 << 8
    V_TSC_AUX = 1 << 9
    SME_COHERENT = 1 << 10
    DEBUG_SWAP = 1 << 14


class SevStatusMsr(IntFlag):
    """SEV_STATUS (MSR 0xC0010131) bits as the guest reads them."""

    SEV = 1 << 0
    SEV_ES = 1 << 1
    SNP = 1 << 2
    RESTRICTED_INJECTION = 1 << 5  # SEV_FEATURES bit 3 (Linux MSR_AMD64_SNP_RESTRICTED_INJ)
    ALTERNATE_INJECTION = 1 << 6  # SEV_FEATURES bit 4 (MSR_AMD64_SNP_ALT_INJ)
    VMSA_REG_PROT = 1 << 16  # SEV_FEATURES bit 14, as SEV_STATUS reports it


@dataclass(frozen=True)
class Leaf8000001F:
    """The four registers of CPUID Fn8000_001F."""

    eax: int
    ebx: int
    ecx: int
    edx: int

    @classmethod
    def compose(
        cls, features: int, c_bit: int, phys_reduction: int, vmpls: int, max_asid: int,
        min_sev_asid: int,
    ) -> Leaf8000001F:
        """The leaf from a chip's values (EBX packs C-bit, reduction, VMPLs)."""
        ebx = (c_bit & 0x3F) | (phys_reduction & 0x3F) << 6 | (vmpls & 0xF) << 12
        return cls(features, ebx, max_asid, min_sev_asid)

    @property
    def c_bit(self) -> int:
        """EBX[5:0]: the C-bit position in a page table entry."""
        return self.ebx & 0x3F

    @property
    def phys_reduction(self) -> int:
        """EBX[11:6]: physical address bits lost to encryption."""
        return (self.ebx >> 6) & 0x3F

    @property
    def vmpls(self) -> int:
        """EBX[15:12]: the number of VMPLs."""
        return (self.ebx >> 12) & 0xF

    def registers(self) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX), as CPUID returns them."""
        return self.eax, self.ebx, self.ecx, self.edx


def cpuid_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001 EAX for a family/model/stepping (families above 0xF use the extension)."""
    base_family = min(family, 0xF)
    ext_family = family - base_family
    return (
        (stepping & 0xF)
        | (model & 0xF) << 4
        | base_family << 8
        | (model >> 4) << 16
        | ext_family << 20
    )


# -- the SEV-SNP CPUID page: count u32, reserved, then 0x30-byte entries ------------------------

CPUID_PAGE_MAX_ENTRIES = 64
_CPUID_HEAD = struct.Struct("<II8x")
_CPUID_ENTRY = struct.Struct("<IIQQIIII8x")  # eax_in, ecx_in, xcr0_in, xss_in, eax..edx


@dataclass(frozen=True)
class CpuidEntry:
    """One leaf of the CPUID page (XCR0/XSS inputs are zero: no XSAVE leaves here)."""

    leaf: int
    subleaf: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    @property
    def registers(self) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) of the entry."""
        return self.eax, self.ebx, self.ecx, self.edx


def pack_cpuid_page(entries: list[CpuidEntry]) -> bytes:
    """The 4 KiB CPUID page a VMM launches with SNP_LAUNCH_UPDATE (type CPUID)."""
    if len(entries) > CPUID_PAGE_MAX_ENTRIES:
        raise FormatError(f"a CPUID page holds at most {CPUID_PAGE_MAX_ENTRIES} entries")
    body = b"".join(_CPUID_ENTRY.pack(e.leaf, e.subleaf, 0, 0, *e.registers) for e in entries)
    return (_CPUID_HEAD.pack(len(entries), 0) + body).ljust(4096, b"\0")


def parse_cpuid_page(page: bytes) -> list[CpuidEntry]:
    """The entries of a CPUID page; FormatError for a count beyond 64."""
    count, _ = _CPUID_HEAD.unpack_from(page)
    if count > CPUID_PAGE_MAX_ENTRIES:
        raise FormatError(f"CPUID page with {count} entries, at most {CPUID_PAGE_MAX_ENTRIES}")
    entries = []
    for index in range(count):
        leaf, subleaf, _, _, eax, ebx, ecx, edx = _CPUID_ENTRY.unpack_from(
            page, _CPUID_HEAD.size + index * _CPUID_ENTRY.size)
        entries.append(CpuidEntry(leaf, subleaf, eax, ebx, ecx, edx))
    return entries
