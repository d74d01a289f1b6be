"""Chip presets: what each EPYC generation reports and supports (spec-formats.md §8, §10)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from sevsim.abi.cpuid import Leaf8000001F, SevFeatures, cpuid_signature
from sevsim.errors import ConfigError


class TweakMode(Enum):
    """How the memory controller tweaks AES by the host physical address."""

    XE_WEAK = "xe-weak"  # Zen 1: c = E(m ^ T(spa)), T from few bits of entropy (SEVurity)
    XEX_STRONG = "xex-strong"  # Zen 2+: c = E(m ^ T(spa)) ^ T(spa), 128-bit tweak constants


class GuestMode(Enum):
    """Protection level of a VM."""

    NONE = "none"
    SEV = "sev"
    SEV_ES = "sev-es"
    SNP = "snp"

    @property
    def encrypted(self) -> bool:
        """Whether the VM's memory has a key of its own (every mode but NONE)."""
        return self is not GuestMode.NONE


@dataclass(frozen=True)
class ChipPreset:
    """One EPYC generation as the hypervisor and guests observe it."""

    name: str
    product: str
    zen: int
    family: int
    model: int
    stepping: int
    features: SevFeatures
    c_bit: int
    phys_reduction: int
    vmpls: int
    max_asid: int  # CPUID 8000_001F ECX: encrypted guests at once
    min_sev_asid: int  # EDX: first ASID usable without SEV-ES; 1..EDX-1 are ES/SNP only
    tweak: TweakMode
    xts256: bool  # AES-256-XTS may be requested by an SNP policy
    api_major: int
    api_minor: int
    build: int
    ciphertext_hiding: bool = False  # SNP_INIT_EX may hide SNP guests' ciphertext from the host

    @property
    def signature(self) -> int:
        """CPUID Fn0000_0001 EAX: the family, model and stepping a guest reads."""
        return cpuid_signature(self.family, self.model, self.stepping)

    @property
    def modes(self) -> tuple[GuestMode, ...]:
        """Guest modes this chip can launch: plain and SEV always, SEV-ES and SNP where
        its features include them."""
        modes = [GuestMode.NONE, GuestMode.SEV]
        if SevFeatures.SEV_ES in self.features:
            modes.append(GuestMode.SEV_ES)
        if SevFeatures.SEV_SNP in self.features:
            modes.append(GuestMode.SNP)
        return tuple(modes)

    def leaf_8000001f(self) -> Leaf8000001F:
        """CPUID 8000_001F as this chip answers it: features, C-bit position, ASID split."""
        return Leaf8000001F.compose(
            int(self.features), self.c_bit, self.phys_reduction, self.vmpls, self.max_asid,
            self.min_sev_asid,
        )

    def asid_range(self, mode: GuestMode) -> range:
        """ASIDs a VM of this mode may use: ES/SNP below EDX, plain SEV from EDX to ECX."""
        if mode is GuestMode.NONE:
            return range(0)
        if mode is GuestMode.SEV:
            return range(self.min_sev_asid, self.max_asid + 1)
        return range(1, self.min_sev_asid)

    def with_asids(self, max_asid: int, min_sev_asid: int) -> ChipPreset:
        """The BIOS splits the ASID space between SEV-ES/SNP and plain SEV."""
        if not 1 <= min_sev_asid <= max_asid + 1:
            raise ConfigError(f"min SEV ASID {min_sev_asid} outside 1..{max_asid + 1}")
        return replace(self, max_asid=max_asid, min_sev_asid=min_sev_asid)


_F = SevFeatures
_ZEN1 = _F.SME | _F.SEV | _F.VM_PAGE_FLUSH
_ZEN2 = _ZEN1 | _F.SEV_ES
_ZEN3 = _ZEN2 | _F.SEV_SNP | _F.VMPL | _F.RMPQUERY | _F.VMPL_SSS | _F.V_TSC_AUX | _F.SME_COHERENT
_ZEN4 = _ZEN3 | _F.SECURE_TSC | _F.DEBUG_SWAP

# Facts from spec-formats.md; ASID splits are BIOS settings, chosen so every mode has ASIDs.
PRESETS: dict[str, ChipPreset] = {
    p.name: p
    for p in (
        ChipPreset("naples", "Naples", 1, 0x17, 0x01, 2, _ZEN1, 47, 5, 0, 15, 1,
                   TweakMode.XE_WEAK, False, 0, 17, 22),
        ChipPreset("rome", "Rome", 2, 0x17, 0x31, 0, _ZEN2, 47, 5, 0, 509, 100,
                   TweakMode.XEX_STRONG, False, 0, 24, 14),
        ChipPreset("milan", "Milan", 3, 0x19, 0x01, 1, _ZEN3, 51, 5, 4, 509, 100,
                   TweakMode.XEX_STRONG, False, 1, 55, 29),
        ChipPreset("genoa", "Genoa", 4, 0x19, 0x11, 1, _ZEN4, 51, 6, 4, 1006, 100,
                   TweakMode.XEX_STRONG, True, 1, 55, 40, ciphertext_hiding=True),
        ChipPreset("turin", "Turin", 5, 0x1A, 0x02, 1, _ZEN4, 51, 6, 4, 1006, 100,
                   TweakMode.XEX_STRONG, True, 1, 58, 10, ciphertext_hiding=True),
    )
}

DEFAULT_CHIP = "milan"


def chip_preset(name: str | ChipPreset) -> ChipPreset:
    """Look a preset up by name, with a clear error naming the valid ones."""
    if isinstance(name, ChipPreset):
        return name
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown chip {name!r}; choose one of {', '.join(PRESETS)}") from None
