"""SNP guest messages (SNP_GUEST_REQUEST), the request/response payloads and the secrets
page, byte for byte (spec-formats.md §7; Linux snp_guest_msg_hdr, snp_secrets_page).

A message is a 0x60-byte header and a payload sealed with AES-256-GCM under the VMPCK the
header names: IV = the sequence number (LE) padded to 12 bytes, AAD = header bytes
0x30-0x5F, tag in the first 16 bytes. Sequence-number policy (replays, +1 on the response)
belongs to the two ends; `open_message` returns the header so they can check it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sevsim.errors import GuestMessageError

PAGE_SIZE = 0x1000
HEADER_SIZE = 0x60
AUTHTAG_SIZE = 16
AAD_START = 0x30  # AAD is header bytes 0x30-0x5F
MAX_PAYLOAD = PAGE_SIZE - HEADER_SIZE - AUTHTAG_SIZE  # Linux's limit
VMPCK_SIZE = 32
ALGO_AES_256_GCM = 1
HDR_VERSION = 1
MSG_VERSION = 1
# AUTHTAG[32], SEQNO u64, rsvd[8], ALGO, HDR_VERSION, HDR_SZ u16, TYPE, MSG_VERSION,
# MSG_SZ u16, rsvd u32, VMPCK u8, rsvd[35]
_HEADER = struct.Struct("<32sQ8sBBHBBHIB35s")
E = TypeVar("E", bound=IntEnum)


class MsgType(IntEnum):
    """Linux `enum msg_type`: each request's response is the next value."""

    CPUID_REQ = 1
    CPUID_RSP = 2
    KEY_REQ = 3
    KEY_RSP = 4
    REPORT_REQ = 5
    REPORT_RSP = 6
    EXPORT_REQ = 7
    EXPORT_RSP = 8
    IMPORT_REQ = 9
    IMPORT_RSP = 10
    ABSORB_REQ = 11
    ABSORB_RSP = 12
    VMRK_REQ = 13
    VMRK_RSP = 14
    TSC_INFO_REQ = 17
    TSC_INFO_RSP = 18

    @property
    def response(self) -> MsgType:
        """The response type that answers this request type."""
        if not self % 2:
            raise GuestMessageError("MSG_TYPE", f"{self.name} is already a response")
        return MsgType(self + 1)


def _enum(kind: type[E], value: int, what: str) -> E:
    try:
        return kind(value)
    except ValueError:
        raise GuestMessageError(what, f"{value} is not a value AMD defines") from None


@dataclass(frozen=True)
class MessageHeader:
    """The 0x60-byte header; `authtag` is the 16-byte GCM tag (bytes 16-31 are zero)."""

    msg_type: MsgType
    seqno: int
    msg_size: int
    vmpck: int = 0
    msg_version: int = MSG_VERSION
    authtag: bytes = bytes(AUTHTAG_SIZE)
    algo: int = ALGO_AES_256_GCM
    hdr_version: int = HDR_VERSION

    def to_bytes(self) -> bytes:
        """The 0x60-byte header."""
        if len(self.authtag) != AUTHTAG_SIZE:
            raise GuestMessageError("AUTHTAG", f"is {len(self.authtag)} bytes, not 16")
        if not 0 <= self.vmpck <= 3:
            raise GuestMessageError("MSG_VMPCK", f"{self.vmpck} is not 0-3")
        try:
            return _HEADER.pack(self.authtag, self.seqno, bytes(8), self.algo, self.hdr_version,
                                HEADER_SIZE, self.msg_type, self.msg_version, self.msg_size, 0,
                                self.vmpck, bytes(35))
        except struct.error as err:
            raise GuestMessageError("header", f"a field does not fit: {err}") from None

    def aad(self) -> bytes:
        """The header bytes the AES-GCM tag authenticates."""
        return self.to_bytes()[AAD_START:]

    @classmethod
    def from_bytes(cls, blob: bytes) -> MessageHeader:
        """Parse a message header strictly."""
        if len(blob) < HEADER_SIZE:
            raise GuestMessageError("header", f"{len(blob)} bytes is shorter than 0x60")
        (tag, seqno, rsvd1, algo, hdr_version, hdr_size, msg_type, msg_version, msg_size,
         rsvd2, vmpck, rsvd3) = _HEADER.unpack_from(blob)
        for name, value in (("AUTHTAG[16:32]", tag[16:]), ("reserved 0x28", rsvd1),
                            ("reserved 0x38", rsvd2.to_bytes(4, "little")),
                            ("reserved 0x3D", rsvd3)):
            if any(value):
                raise GuestMessageError(name, "reserved bytes must be zero")
        if algo != ALGO_AES_256_GCM:
            raise GuestMessageError("ALGO", f"{algo} is not AES-256-GCM (1)")
        if hdr_version != HDR_VERSION or hdr_size != HEADER_SIZE:
            raise GuestMessageError("HDR_VERSION", f"header version {hdr_version} size "
                                    f"0x{hdr_size:x}; only version 1, 0x60 bytes exists")
        if vmpck > 3:
            raise GuestMessageError("MSG_VMPCK", f"{vmpck} is not 0-3")
        return cls(_enum(MsgType, msg_type, "MSG_TYPE"), seqno, msg_size, vmpck, msg_version,
                   tag[:AUTHTAG_SIZE])


def message_iv(seqno: int) -> bytes:
    """The GCM IV: the sequence number little-endian in bytes 0-7, zero in 8-11."""
    if not 0 <= seqno < 1 << 64:
        raise GuestMessageError("MSG_SEQNO", f"{seqno} does not fit in 64 bits")
    return seqno.to_bytes(8, "little") + bytes(4)


def seal_message(vmpck_key: bytes, msg_type: MsgType, seqno: int, payload: bytes,
                 vmpck: int = 0, msg_version: int = MSG_VERSION) -> bytes:
    """Header and ciphertext (payload length) as the sender writes them to the message page."""
    if len(vmpck_key) != VMPCK_SIZE:
        raise GuestMessageError("VMPCK", f"key is {len(vmpck_key)} bytes, not 32")
    if not 0 < seqno < 1 << 64:
        raise GuestMessageError("MSG_SEQNO", f"{seqno}: 0 is never valid, and it is a u64")
    if len(payload) > MAX_PAYLOAD:
        raise GuestMessageError("MSG_SZ", f"{len(payload)} bytes; at most {MAX_PAYLOAD}")
    header = MessageHeader(msg_type, seqno, len(payload), vmpck, msg_version)
    sealed = AESGCM(vmpck_key).encrypt(message_iv(seqno), payload, header.aad())
    tagged = MessageHeader(msg_type, seqno, len(payload), vmpck, msg_version,
                           sealed[-AUTHTAG_SIZE:])
    return tagged.to_bytes() + sealed[:-AUTHTAG_SIZE]


def open_message(vmpck_key: bytes, blob: bytes) -> tuple[MessageHeader, bytes]:
    """Parse, authenticate and decrypt a message (trailing page bytes are ignored).
    GuestMessageError when it does not parse or the tag fails; the caller then checks the
    header's sequence number, type and VMPCK number against what it expected."""
    if len(vmpck_key) != VMPCK_SIZE:
        raise GuestMessageError("VMPCK", f"key is {len(vmpck_key)} bytes, not 32")
    header = MessageHeader.from_bytes(blob)
    if header.msg_size > MAX_PAYLOAD or HEADER_SIZE + header.msg_size > len(blob):
        raise GuestMessageError("MSG_SZ", f"{header.msg_size} bytes run past the message")
    ciphertext = bytes(blob[HEADER_SIZE:HEADER_SIZE + header.msg_size])
    try:
        plain = AESGCM(vmpck_key).decrypt(message_iv(header.seqno),
                                          ciphertext + header.authtag, header.aad())
    except InvalidTag:
        raise GuestMessageError("AUTHTAG", "authentication failed: wrong key, or the message"
                                " was altered") from None
    return header, plain


# -- payloads -------------------------------------------------------------------------------

REPORT_REQ_SIZE = 0x60


@dataclass(frozen=True)
class ReportRequest:
    """MSG_REPORT_REQ: REPORT_DATA[64], VMPL u32, 28 reserved bytes."""

    report_data: bytes = bytes(64)
    vmpl: int = 0

    def to_bytes(self) -> bytes:
        """The MSG_REPORT_REQ payload."""
        if len(self.report_data) != 64:
            raise GuestMessageError("REPORT_DATA", f"is {len(self.report_data)} bytes, not 64")
        if not 0 <= self.vmpl <= 3:
            raise GuestMessageError("VMPL", f"{self.vmpl} is not 0-3")
        return self.report_data + struct.pack("<I", self.vmpl) + bytes(28)

    @classmethod
    def from_bytes(cls, blob: bytes) -> ReportRequest:
        """Parse a MSG_REPORT_REQ payload."""
        if len(blob) != REPORT_REQ_SIZE:
            raise GuestMessageError("MSG_REPORT_REQ", f"is {len(blob)} bytes, not 0x60")
        if any(blob[0x44:]):
            raise GuestMessageError("MSG_REPORT_REQ.reserved", "bytes 0x44-0x5F must be zero")
        (vmpl,) = struct.unpack_from("<I", blob, 0x40)
        if vmpl > 3:
            raise GuestMessageError("VMPL", f"{vmpl} is not 0-3")
        return cls(bytes(blob[:0x40]), vmpl)


class GuestFieldSelect(IntFlag):
    """MSG_KEY_REQ GUEST_FIELD_SELECT: the guest fields mixed into a derived key."""

    GUEST_POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5
    LAUNCH_MIT_VECTOR = 1 << 6


NO_FIELDS = GuestFieldSelect(0)


class RootKey(IntEnum):
    """ROOT_KEY_SELECT bit 0."""

    VCEK = 0
    VMRK = 1


KEY_REQ_SIZE = 0x28
KEY_RSP_SIZE = 0x40
_KEY_REQ = struct.Struct("<IIQIIQQ")


@dataclass(frozen=True)
class KeyRequest:
    """MSG_KEY_REQ: ROOT_KEY_SELECT, GUEST_FIELD_SELECT, VMPL, GUEST_SVN, TCB_VERSION and
    LAUNCH_MIT_VECTOR (FW 1.58+), 0x28 bytes."""

    root_key: RootKey = RootKey.VCEK
    guest_field_select: GuestFieldSelect = NO_FIELDS
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0
    launch_mit_vector: int = 0

    def to_bytes(self) -> bytes:
        """The MSG_KEY_REQ payload."""
        if not 0 <= self.vmpl <= 3:
            raise GuestMessageError("VMPL", f"{self.vmpl} is not 0-3")
        try:
            return _KEY_REQ.pack(self.root_key, 0, self.guest_field_select, self.vmpl,
                                 self.guest_svn, self.tcb_version, self.launch_mit_vector)
        except struct.error as err:
            raise GuestMessageError("MSG_KEY_REQ", f"a field does not fit: {err}") from None

    @classmethod
    def from_bytes(cls, blob: bytes) -> KeyRequest:
        """Parse a MSG_KEY_REQ payload."""
        if len(blob) != KEY_REQ_SIZE:
            raise GuestMessageError("MSG_KEY_REQ", f"is {len(blob)} bytes, not 0x28")
        root, rsvd, select, vmpl, svn, tcb, mit = _KEY_REQ.unpack(blob)
        if root >> 1:
            raise GuestMessageError("ROOT_KEY_SELECT", f"0x{root:x}: bits 31:1 must be zero")
        if rsvd:
            raise GuestMessageError("MSG_KEY_REQ.reserved", "bytes 0x04-0x07 must be zero")
        if select >> 7:
            raise GuestMessageError("GUEST_FIELD_SELECT", f"0x{select:x}: bits 63:7 must be "
                                    "zero")
        if vmpl > 3:
            raise GuestMessageError("VMPL", f"{vmpl} is not 0-3")
        return cls(RootKey(root), GuestFieldSelect(select), vmpl, svn, tcb, mit)


@dataclass(frozen=True)
class KeyResponse:
    """MSG_KEY_RSP: STATUS u32, 28 reserved bytes, DERIVED_KEY[32]."""

    status: int
    derived_key: bytes = bytes(32)

    def to_bytes(self) -> bytes:
        """The MSG_KEY_RSP payload."""
        if len(self.derived_key) != 32:
            raise GuestMessageError("DERIVED_KEY", f"is {len(self.derived_key)} bytes, not 32")
        if not 0 <= self.status <= 0xFFFFFFFF:
            raise GuestMessageError("STATUS", f"{self.status} does not fit in a u32")
        return struct.pack("<I", self.status) + bytes(28) + self.derived_key

    @classmethod
    def from_bytes(cls, blob: bytes) -> KeyResponse:
        """Parse a MSG_KEY_RSP payload."""
        if len(blob) != KEY_RSP_SIZE:
            raise GuestMessageError("MSG_KEY_RSP", f"is {len(blob)} bytes, not 0x40")
        if any(blob[4:0x20]):
            raise GuestMessageError("MSG_KEY_RSP.reserved", "bytes 0x04-0x1F must be zero")
        return cls(struct.unpack_from("<I", blob)[0], bytes(blob[0x20:]))


# -- secrets page -----------------------------------------------------------------------------

SECRETS_VERSION = 2  # as firmware/snp.py writes it; AMD's values per ABI revision are unsourced
_SECRETS = struct.Struct("<III4s16s32s32s32s32sIIIIQ40s32s64sQQQIB3sI")
_SECRETS_RESERVED_START = _SECRETS.size  # 0x164: reserved to the end of the page


@dataclass(frozen=True)
class SecretsPage:
    """Linux `struct snp_secrets_page`: the firmware's VMPCKs and the guest OS area, where
    the guest keeps one u32 message sequence counter per VMPCK."""

    vmpck: tuple[bytes, bytes, bytes, bytes]
    version: int = SECRETS_VERSION
    imien: bool = False
    fms: int = 0
    gosvw: bytes = bytes(16)
    msg_seqno: tuple[int, int, int, int] = (0, 0, 0, 0)
    ap_jump_table_pa: int = 0
    guest_usage: bytes = bytes(32)
    vmsa_tweak_bitmap: bytes = bytes(64)
    svsm_base: int = 0
    svsm_size: int = 0
    svsm_caa: int = 0
    svsm_max_version: int = 0
    svsm_guest_vmpl: int = 0
    tsc_factor: int = 0

    def to_bytes(self) -> bytes:
        """The 4 KiB secrets page SNP_LAUNCH_UPDATE fills."""
        if len(self.vmpck) != 4 or any(len(k) != VMPCK_SIZE for k in self.vmpck):
            raise GuestMessageError("VMPCK", "four 32-byte keys are needed")
        if len(self.msg_seqno) != 4:
            raise GuestMessageError("msg_seqno", "four counters are needed")
        try:
            head = _SECRETS.pack(self.version, int(self.imien), self.fms, bytes(4), self.gosvw,
                                 *self.vmpck, *self.msg_seqno, self.ap_jump_table_pa,
                                 bytes(40), self.guest_usage, self.vmsa_tweak_bitmap,
                                 self.svsm_base, self.svsm_size, self.svsm_caa,
                                 self.svsm_max_version, self.svsm_guest_vmpl, bytes(3),
                                 self.tsc_factor)
        except struct.error as err:
            raise GuestMessageError("secrets page", f"a field does not fit: {err}") from None
        for name, value, size in (("GOSVW", self.gosvw, 16), ("guest_usage", self.guest_usage,
                                  32), ("VMSA_TWEAK_BITMAP", self.vmsa_tweak_bitmap, 64)):
            if len(value) != size:
                raise GuestMessageError(name, f"is {len(value)} bytes, not {size}")
        return head.ljust(PAGE_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, blob: bytes) -> SecretsPage:
        """Parse a secrets page."""
        if len(blob) != PAGE_SIZE:
            raise GuestMessageError("secrets page", f"is {len(blob)} bytes, not 4096")
        (version, flags, fms, rsvd1, gosvw, k0, k1, k2, k3, s0, s1, s2, s3, ajt, rsvd2, usage,
         tweak, base, size, caa, max_version, vmpl, rsvd3, tsc) = _SECRETS.unpack_from(blob)
        if flags >> 1:
            raise GuestMessageError("IMIEN", f"0x{flags:x}: bits 31:1 are reserved")
        for name, value in (("reserved 0x00C", rsvd1), ("reserved 0x0B8", rsvd2),
                            ("reserved 0x15D", rsvd3),
                            ("reserved 0x164", blob[_SECRETS_RESERVED_START:])):
            if any(value):
                raise GuestMessageError(name, "reserved bytes must be zero")
        return cls((k0, k1, k2, k3), version, bool(flags), fms, gosvw, (s0, s1, s2, s3), ajt,
                   usage, tweak, base, size, caa, max_version, vmpl, tsc)

    @staticmethod
    def vmpck_offset(vmpck: int) -> int:
        """Where VMPCK `vmpck` lives in the page (0x20 + 32n): a guest wipes it there."""
        if not 0 <= vmpck <= 3:
            raise GuestMessageError("MSG_VMPCK", f"{vmpck} is not 0-3")
        return 0x20 + VMPCK_SIZE * vmpck

    @staticmethod
    def seqno_offset(vmpck: int) -> int:
        """Where the guest's counter for VMPCK `vmpck` lives in the page (0xA0 + 4n)."""
        if not 0 <= vmpck <= 3:
            raise GuestMessageError("MSG_VMPCK", f"{vmpck} is not 0-3")
        return 0xA0 + 4 * vmpck
