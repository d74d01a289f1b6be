"""The legacy SEV / SEV-ES guest policy (u32), bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

from sevsim.errors import FormatError


class PolicyFlags(IntFlag):
    """Low policy bits; API_MAJOR sits in bits 23:16 and API_MINOR in bits 31:24."""

    NODBG = 1 << 0
    NOKS = 1 << 1
    ES = 1 << 2
    NOSEND = 1 << 3
    DOMAIN = 1 << 4
    SEV = 1 << 5


_RESERVED_BITS = 0x0000FFC0
NO_FLAGS = PolicyFlags(0)


@dataclass(frozen=True)
class SevPolicy:
    """A decoded guest policy; `from_int` refuses reserved bits."""

    flags: PolicyFlags = NO_FLAGS
    api_major: int = 0
    api_minor: int = 0

    @classmethod
    def from_int(cls, value: int) -> SevPolicy:
        """Parse a 32-bit guest policy; FormatError for reserved bits."""
        if not 0 <= value < 1 << 32:
            raise FormatError(f"policy 0x{value:X} does not fit in 32 bits")
        if value & _RESERVED_BITS:
            raise FormatError(f"policy 0x{value:08X} sets reserved bits 15:6")
        return cls(PolicyFlags(value & 0x3F), (value >> 16) & 0xFF, (value >> 24) & 0xFF)

    def to_int(self) -> int:
        """The 32-bit policy LAUNCH_START takes."""
        return int(self.flags) | self.api_major << 16 | self.api_minor << 24
