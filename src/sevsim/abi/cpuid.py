"""CPUID Fn8000_001F, the CPUID signature and the SEV_STATUS MSR.

Sources: Linux cpufeatures.h and msr-index.h (spec-formats.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

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
        ebx = (c_bit & 0x3F) | (phys_reduction & 0x3F) << 6 | (vmpls & 0xF) << 12
        return cls(features, ebx, max_asid, min_sev_asid)

    @property
    def c_bit(self) -> int:
        return self.ebx & 0x3F

    @property
    def phys_reduction(self) -> int:
        return (self.ebx >> 6) & 0x3F

    @property
    def vmpls(self) -> int:
        return (self.ebx >> 12) & 0xF

    def registers(self) -> tuple[int, int, int, int]:
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
