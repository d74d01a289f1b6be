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


# `PlatformOptions` fields by the names the CLI and `PlatformOptions.parse` take, and what each
# one is on a real machine; every one has its PLATFORM_INFO bit in SNP reports.
PLATFORM_OPTIONS = {
    "smt": ("smt", "simultaneous multithreading on (BIOS); SNP_LAUNCH_START then refuses a "
                   "policy without SMT allowed"),
    "tsme": ("tsme", "transparent SME (BIOS): DRAM outside any guest's key is encrypted with a "
                     "boot-time key, so a cold boot reads ciphertext of it too"),
    "ecc": ("ecc", "ECC memory (the DIMMs)"),
    "rapl-disabled": ("rapl_disabled", "RAPL power reporting disabled (BIOS), which a policy "
                                       "with RAPL_DIS requires"),
    "ciphertext-hiding": ("ciphertext_hiding", "KVM asks SNP_INIT_EX to hide every SNP guest's "
                                               "ciphertext from host reads (Genoa and later)"),
    "alias-check": ("alias_check", "boot firmware with the BadRAM fix (AMD-SB-3015): SNP_INIT "
                                   "checks DRAM for aliases and refuses if it finds one"),
}


@dataclass(frozen=True)
class PlatformOptions:
    """How a host's platform is set up: the BIOS and boot-firmware settings an SNP report's
    PLATFORM_INFO states (and KVM's ciphertext hiding). `PlatformOptions()` has all of them
    off; each chip preset's `platform` is what real parts of its kind report (`Host` takes
    that unless told otherwise)."""

    smt: bool = False
    tsme: bool = False
    ecc: bool = False
    rapl_disabled: bool = False
    ciphertext_hiding: bool = False
    alias_check: bool = False

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, bool):
                raise ConfigError(f"platform option {name} is {value!r}, not True or False")

    @classmethod
    def parse(cls, text: str) -> PlatformOptions:
        """`"smt,tsme,ecc"`: exactly these on, the rest off (`"none"`: all off); ConfigError
        naming an unknown option."""
        names = [n.strip().lower() for n in text.split(",") if n.strip()]
        if names == ["none"]:
            return cls()
        unknown = [n for n in names if n not in PLATFORM_OPTIONS]
        if unknown or not names:
            raise ConfigError(f"unknown platform option {unknown[0] if unknown else text!r}; "
                              f"choose from {', '.join(PLATFORM_OPTIONS)} (or none)")
        return cls(**{PLATFORM_OPTIONS[n][0]: True for n in names})

    def __str__(self) -> str:
        """The options that are on, as `parse` takes them."""
        return ",".join(n for n, (field, _) in PLATFORM_OPTIONS.items()
                        if getattr(self, field)) or "none"


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
    platform: PlatformOptions = PlatformOptions(smt=True, ecc=True)  # a host's by default

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

    def platform_options(self, options: PlatformOptions | str | None = None
                         ) -> PlatformOptions:
        """`options` (or this preset's defaults for None; a string as `PlatformOptions.parse`
        takes it), checked against the chip: ConfigError for a feature it lacks."""
        if options is None:
            return self.platform
        if isinstance(options, str):
            options = PlatformOptions.parse(options)
        if not isinstance(options, PlatformOptions):
            raise ConfigError(f"platform {options!r} is not PlatformOptions or a string such "
                              "as 'smt,tsme,ecc'")
        if options.ciphertext_hiding and not self.ciphertext_hiding:
            raise ConfigError(f"{self.product} has no ciphertext hiding (Genoa and later)")
        if options.alias_check and SevFeatures.SEV_SNP not in self.features:
            raise ConfigError(f"{self.product} has no SEV-SNP, whose SNP_INIT runs the DRAM "
                              "alias check (Milan and later)")
        return options

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

# Platforms as real parts report them (PLATFORM_INFO of real reports): an AWS Milan on the
# preset's firmware 1.55.29 reports 0x27 (SMT, TSME, ECC, alias check); an Azure Genoa on
# 1.55.40 0x24 and a Turin ECC and no TSME, both with SMT turned off by the cloud, which
# sevsim leaves on as the BIOS ships it (0x25). Firmware of these versions has the BadRAM fix.
_SNP_PLATFORM = PlatformOptions(smt=True, ecc=True, alias_check=True)

# Facts from spec-formats.md; ASID splits are BIOS settings, chosen so every mode has ASIDs.
PRESETS: dict[str, ChipPreset] = {
    p.name: p
    for p in (
        ChipPreset("naples", "Naples", 1, 0x17, 0x01, 2, _ZEN1, 47, 5, 0, 15, 1,
                   TweakMode.XE_WEAK, False, 0, 17, 22),
        ChipPreset("rome", "Rome", 2, 0x17, 0x31, 0, _ZEN2, 47, 5, 0, 509, 100,
                   TweakMode.XEX_STRONG, False, 0, 24, 14),
        ChipPreset("milan", "Milan", 3, 0x19, 0x01, 1, _ZEN3, 51, 5, 4, 509, 100,
                   TweakMode.XEX_STRONG, False, 1, 55, 29,
                   platform=replace(_SNP_PLATFORM, tsme=True)),
        ChipPreset("genoa", "Genoa", 4, 0x19, 0x11, 1, _ZEN4, 51, 6, 4, 1006, 100,
                   TweakMode.XEX_STRONG, True, 1, 55, 40, ciphertext_hiding=True,
                   platform=_SNP_PLATFORM),
        ChipPreset("turin", "Turin", 5, 0x1A, 0x02, 1, _ZEN4, 51, 6, 4, 1006, 100,
                   TweakMode.XEX_STRONG, True, 1, 58, 10, ciphertext_hiding=True,
                   platform=_SNP_PLATFORM),
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
