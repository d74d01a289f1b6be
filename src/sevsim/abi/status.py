"""SEV API command identifiers, status codes and state machines (AMD 55766; sev-tool sevapi.h)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from sevsim.errors import FormatError


class SevStatus(IntEnum):
    """Status codes every SEV/SNP firmware command returns."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LENGTH = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DF_FLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18
    INVALID_PAGE_SIZE = 0x19
    INVALID_PAGE_STATE = 0x1A
    INVALID_MDATA_ENTRY = 0x1B
    INVALID_PAGE_OWNER = 0x1C
    AEAD_OFLOW = 0x1D
    RING_BUFFER_EXIT = 0x1F


class SevCommand(IntEnum):
    """Legacy SEV API command identifiers."""

    INIT = 0x01
    SHUTDOWN = 0x02
    PLATFORM_RESET = 0x03
    PLATFORM_STATUS = 0x04
    PEK_GEN = 0x05
    PEK_CSR = 0x06
    PEK_CERT_IMPORT = 0x07
    PDH_CERT_EXPORT = 0x08
    PDH_GEN = 0x09
    DF_FLUSH = 0x0A
    DOWNLOAD_FIRMWARE = 0x0B
    GET_ID = 0x0C
    INIT_EX = 0x0D
    DECOMMISSION = 0x20
    ACTIVATE = 0x21
    DEACTIVATE = 0x22
    GUEST_STATUS = 0x23
    LAUNCH_START = 0x30
    LAUNCH_UPDATE_DATA = 0x31
    LAUNCH_UPDATE_VMSA = 0x32
    LAUNCH_MEASURE = 0x33
    LAUNCH_SECRET = 0x34
    LAUNCH_FINISH = 0x35
    ATTESTATION = 0x36
    SEND_START = 0x40
    SEND_UPDATE_DATA = 0x41
    SEND_UPDATE_VMSA = 0x42
    SEND_FINISH = 0x43
    SEND_CANCEL = 0x44
    RECEIVE_START = 0x50
    RECEIVE_UPDATE_DATA = 0x51
    RECEIVE_UPDATE_VMSA = 0x52
    RECEIVE_FINISH = 0x53
    DBG_DECRYPT = 0x60
    DBG_ENCRYPT = 0x61


class PlatformState(IntEnum):
    """Legacy SEV platform states."""

    UNINIT = 0
    INIT = 1
    WORKING = 2


class GuestState(IntEnum):
    """Legacy SEV guest context states (GSTATE)."""

    UNINIT = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


_PLATFORM_STATUS = struct.Struct("<BBBBHBBI")


@dataclass(frozen=True)
class PlatformStatus:
    """PLATFORM_STATUS output, 12 bytes as sev-tool's sev_platform_status. A guest owner reads
    the API version and build from it: they enter the launch measurement."""

    api_major: int
    api_minor: int
    state: PlatformState
    owner: int  # bit 0: externally owned (an owner's OCA signed the PEK)
    config: int  # bit 0: SEV-ES initialised
    build: int
    guest_count: int

    def to_bytes(self) -> bytes:
        """PLATFORM_STATUS's output buffer."""
        return _PLATFORM_STATUS.pack(self.api_major, self.api_minor, self.state, self.owner,
                                     self.config, 0, self.build, self.guest_count)

    @classmethod
    def from_bytes(cls, blob: bytes) -> PlatformStatus:
        """Parse PLATFORM_STATUS's output strictly."""
        if len(blob) != _PLATFORM_STATUS.size:
            raise FormatError(f"PLATFORM_STATUS is {_PLATFORM_STATUS.size} bytes, not {len(blob)}")
        major, minor, state, owner, config, _, build, count = _PLATFORM_STATUS.unpack(blob)
        if state not in PlatformState.__members__.values():
            raise FormatError(f"platform state {state} is not one AMD defines")
        return cls(major, minor, PlatformState(state), owner, config, build, count)
