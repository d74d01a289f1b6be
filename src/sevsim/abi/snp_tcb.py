"""SNP TCB_VERSION, guest policy and PLATFORM_INFO, bit for bit (spec-formats.md §2-4).

The TCB layout depends on the generation: Milan and Genoa put BL/TEE in bytes 0-1, SNP in
byte 6 and microcode in byte 7; Turin adds an FMC SPL in byte 0 and packs the others after
it. The same u64 therefore means different things per chip, so decoding needs the
generation, which v3+ reports carry as CPUID family/model bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag

from sevsim.errors import TcbFormatError

U64 = (1 << 64) - 1


class Generation(Enum):
    """The EPYC generation, which fixes the TCB layout and the VCEK's hwID length."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def turin_layout(self) -> bool:
        """Whether TCB_VERSION has Turin's layout (with an FMC field)."""
        return self is Generation.TURIN

    @property
    def hwid_size(self) -> int:
        """Bytes of CHIP_ID that identify the chip (and name its VCEK at KDS)."""
        return 8 if self is Generation.TURIN else 64

    @classmethod
    def from_cpuid(cls, family: int, model: int) -> Generation:
        """From the report's CPUID_FAM_ID/CPUID_MOD_ID (virtee/sev identify_cpu)."""
        if family == 0x19 and model <= 0x0F:
            return cls.MILAN
        if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
            return cls.GENOA
        if family == 0x1A and model <= 0x11:
            return cls.TURIN
        raise TcbFormatError("CPUID", f"family 0x{family:02x} model 0x{model:02x} is not an "
                             "SNP generation sevsim knows")

    @classmethod
    def guess_from_chip_id(cls, chip_id: bytes) -> Generation:
        """v2 reports carry no CPUID bytes: Turin's CHIP_ID is 8 bytes (the rest zero)."""
        return cls.TURIN if any(chip_id[:8]) and not any(chip_id[8:]) else cls.MILAN


def _byte(value: int, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise TcbFormatError(what, f"{value} does not fit in one byte")
    return value


@dataclass(frozen=True)
class TcbVersion:
    """The security patch levels of one TCB. `fmc` is None in the Milan/Genoa layout.

    Milan/Genoa bytes 2-5 are the reserved spl4..spl7 (KDS still names them); Turin bytes 4-6
    are reserved. Both must be zero, so `from_int` refuses them."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode"):
            _byte(getattr(self, name), f"TCB {name}")
        if self.fmc is not None:
            _byte(self.fmc, "TCB fmc")

    def to_bytes(self) -> bytes:
        """The 8-byte TCB_VERSION, little-endian."""
        if self.fmc is None:
            return bytes((self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode))
        return bytes((self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode))

    def to_int(self) -> int:
        """The 64-bit TCB_VERSION."""
        return int.from_bytes(self.to_bytes(), "little")

    @classmethod
    def from_int(cls, value: int, generation: Generation) -> TcbVersion:
        """Parse a TCB_VERSION in `generation`'s layout; TcbFormatError for reserved bits."""
        if not 0 <= value <= U64:
            raise TcbFormatError("TCB_VERSION", f"0x{value:x} does not fit in 64 bits")
        b = value.to_bytes(8, "little")
        if generation.turin_layout:
            if any(b[4:7]):
                raise TcbFormatError("TCB_VERSION", f"0x{value:016x}: reserved bytes 4-6 "
                                     "must be zero in the Turin layout")
            return cls(b[1], b[2], b[3], b[7], fmc=b[0])
        if any(b[2:6]):
            raise TcbFormatError("TCB_VERSION", f"0x{value:016x}: reserved bytes 2-5 "
                                 "(spl4-spl7) must be zero in the Milan/Genoa layout")
        return cls(b[0], b[1], b[6], b[7])


class PolicyFlags(IntFlag):
    """SNP guest policy bits above the ABI version (§3.1)."""

    SMT = 1 << 16
    RESERVED_MBO = 1 << 17  # must be one
    MIGRATE_MA = 1 << 18
    DEBUG = 1 << 19
    SINGLE_SOCKET = 1 << 20
    CXL_ALLOW = 1 << 21
    MEM_AES_256_XTS = 1 << 22
    RAPL_DIS = 1 << 23
    CIPHERTEXT_HIDING = 1 << 24
    PAGE_SWAP_DISABLE = 1 << 25


_POLICY_MBZ = U64 & ~((1 << 26) - 1)


@dataclass(frozen=True)
class SnpPolicy:
    """A decoded SNP guest policy; bit 17 is always set on the wire, so it is not a flag here
    a caller can forget."""

    flags: PolicyFlags = PolicyFlags.SMT
    abi_major: int = 0
    abi_minor: int = 0

    def __post_init__(self) -> None:
        _byte(self.abi_major, "POLICY.ABI_MAJOR")
        _byte(self.abi_minor, "POLICY.ABI_MINOR")

    @classmethod
    def from_int(cls, value: int) -> SnpPolicy:
        """Strict, as go-sev-guest's ParseSnpPolicy: bit 17 set, bits 63:26 clear."""
        if not 0 <= value <= U64:
            raise TcbFormatError("POLICY", f"0x{value:x} does not fit in 64 bits")
        if not value & PolicyFlags.RESERVED_MBO:
            raise TcbFormatError("POLICY", f"0x{value:x}: reserved bit 17 must be one")
        if value & _POLICY_MBZ:
            raise TcbFormatError("POLICY", f"0x{value:x}: reserved bits 63:26 must be zero")
        return cls(PolicyFlags(value & ~PolicyFlags.RESERVED_MBO & 0x3FF0000),
                   (value >> 8) & 0xFF, value & 0xFF)

    def to_int(self) -> int:
        """The 64-bit guest policy."""
        return int(self.flags | PolicyFlags.RESERVED_MBO) | self.abi_major << 8 | self.abi_minor


class PlatformInfo(IntFlag):
    """PLATFORM_INFO bits (§4); bit 6 and bits 63:8 are reserved."""

    SMT_EN = 1 << 0
    TSME_EN = 1 << 1
    ECC_EN = 1 << 2
    RAPL_DIS = 1 << 3
    CIPHERTEXT_HIDING_EN = 1 << 4
    ALIAS_CHECK_COMPLETE = 1 << 5
    TIO_EN = 1 << 7

    @classmethod
    def from_int(cls, value: int) -> PlatformInfo:
        """Parse PLATFORM_INFO; TcbFormatError for reserved bits."""
        if not 0 <= value <= U64 or value & ~0xBF:
            raise TcbFormatError("PLATFORM_INFO", f"0x{value:x} sets reserved bits "
                                 "(6 or 63:8)")
        return cls(value)


class SigningKey(IntEnum):
    """SIGNING_KEY in the report's signer info (bits 4:2)."""

    VCEK = 0
    VLEK = 1
    NONE = 7
