"""The Guest-Hypervisor Communication Block: the page an SEV-ES guest shares to ask the
hypervisor for what it would otherwise learn from the guest's registers, and the GHCB MSR
protocol used before that page exists.

Layouts: Linux `struct ghcb_save_area` and `struct ghcb` (arch/x86/include/asm/svm.h); the MSR
protocol: arch/x86/include/asm/sev-common.h; VMGEXIT exit codes: arch/x86/include/uapi/asm/svm.h
(spec-formats.md §8). A field counts only when its bit in the valid bitmap is set (bit =
offset / 8, Linux GHCB_BITMAP_IDX), so decoding keeps exactly the valid fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from sevsim.errors import FormatError

from .vmsa import layout_offsets  # abi modules share helpers only among themselves

PAGE_SIZE = 0x1000
SAVE_AREA_SIZE = 0x408
SHARED_BUFFER_OFFSET = 0x800
SHARED_BUFFER_SIZE = 2032
PROTOCOL_VERSION_OFFSET = 0xFFA
USAGE_OFFSET = 0xFFC
DEFAULT_USAGE = 0
PROTOCOL_MIN = 1
PROTOCOL_MAX = 2

_LAYOUT: tuple[tuple[str, int], ...] = (
    ("reserved_0x0", 203), ("cpl", 1), ("reserved_0xcc", 116), ("xss", 8),
    ("reserved_0x148", 24), ("dr7", 8), ("reserved_0x168", 16), ("rip", 8),
    ("reserved_0x180", 88), ("rsp", 8), ("reserved_0x1e0", 24), ("rax", 8),
    ("reserved_0x200", 264), ("rcx", 8), ("rdx", 8), ("rbx", 8), ("reserved_0x320", 8),
    ("rbp", 8), ("rsi", 8), ("rdi", 8), ("r8", 8), ("r9", 8), ("r10", 8), ("r11", 8),
    ("r12", 8), ("r13", 8), ("r14", 8), ("r15", 8), ("reserved_0x380", 16),
    ("sw_exit_code", 8), ("sw_exit_info_1", 8), ("sw_exit_info_2", 8), ("sw_scratch", 8),
    ("reserved_0x3b0", 56), ("xcr0", 8), ("valid_bitmap", 16), ("x87_state_gpa", 8),
)
OFFSETS = layout_offsets(_LAYOUT, SAVE_AREA_SIZE)
# Fields the valid bitmap covers (x87_state_gpa, past its 128 bits, has no valid bit).
FIELDS: tuple[str, ...] = tuple(
    name for name, _ in _LAYOUT
    if not name.startswith("reserved_") and OFFSETS[name][0] < OFFSETS["valid_bitmap"][0])
_VALID_BITMAP = OFFSETS["valid_bitmap"][0]


def valid_bit(name: str) -> int:
    """The field's index in the valid bitmap (Linux GHCB_BITMAP_IDX)."""
    return OFFSETS[name][0] // 8


@dataclass
class Ghcb:
    """A decoded GHCB page: the valid save-area fields, the shared buffer, the trailer."""

    save: dict[str, int] = field(default_factory=dict)
    shared_buffer: bytes = b""
    protocol_version: int = 0
    usage: int = DEFAULT_USAGE

    def to_bytes(self) -> bytes:
        """The 4 KiB page; every field in `save` is written and marked valid."""
        page = bytearray(PAGE_SIZE)
        bitmap = 0
        for name, value in self.save.items():
            if name not in FIELDS:
                raise FormatError(f"no field {name!r} in the GHCB save area")
            offset, length = OFFSETS[name]
            if not 0 <= value < 1 << 8 * length:
                raise FormatError(f"GHCB {name} 0x{value:x} does not fit in {length} bytes")
            page[offset:offset + length] = value.to_bytes(length, "little")
            bitmap |= 1 << valid_bit(name)
        page[_VALID_BITMAP:_VALID_BITMAP + 16] = bitmap.to_bytes(16, "little")
        if len(self.shared_buffer) > SHARED_BUFFER_SIZE:
            raise FormatError(f"{len(self.shared_buffer)} bytes do not fit the "
                             f"{SHARED_BUFFER_SIZE}-byte shared buffer")
        page[SHARED_BUFFER_OFFSET:SHARED_BUFFER_OFFSET + len(self.shared_buffer)] = (
            self.shared_buffer)
        struct.pack_into("<HI", page, PROTOCOL_VERSION_OFFSET, self.protocol_version,
                         self.usage)
        return bytes(page)

    @classmethod
    def from_bytes(cls, page: bytes) -> Ghcb:
        """Parse a GHCB page: the fields its valid bitmap marks, and the usage."""
        if len(page) != PAGE_SIZE:
            raise FormatError(f"a GHCB is one 4 KiB page, not {len(page)} bytes")
        bitmap = int.from_bytes(page[_VALID_BITMAP:_VALID_BITMAP + 16], "little")
        save = {}
        for name in FIELDS:
            if bitmap >> valid_bit(name) & 1:
                offset, length = OFFSETS[name]
                save[name] = int.from_bytes(page[offset:offset + length], "little")
        version, usage = struct.unpack_from("<HI", page, PROTOCOL_VERSION_OFFSET)
        return cls(save, bytes(page[SHARED_BUFFER_OFFSET:
                                    SHARED_BUFFER_OFFSET + SHARED_BUFFER_SIZE]),
                   version, usage)


class GhcbError(IntEnum):
    """SW_EXITINFO2 when the hypervisor answers SW_EXITINFO1 = 2 (sev-common.h GHCB_ERR_*)."""

    NOT_REGISTERED = 1
    INVALID_USAGE = 2
    INVALID_SCRATCH_AREA = 3
    MISSING_INPUT = 4
    INVALID_INPUT = 5
    INVALID_EVENT = 6


# SW_EXITINFO1[31:0] of the hypervisor's answer.
RESULT_OK = 0
RESULT_EXCEPTION = 1  # SW_EXITINFO2 holds an event to inject (EVENTINJ format)
RESULT_ERROR = 2  # SW_EXITINFO2 holds a GhcbError


# SW_EXITINFO2[63:32] of a guest request the hypervisor did not pass on (SNP_GUEST_VMM_ERR_*).
VMM_ERR_INVALID_LEN = 1 << 32  # too few certificate pages: RBX says how many are needed
VMM_ERR_BUSY = 2 << 32  # the hypervisor is throttling requests: send the same message again

# SW_EXITINFO1[31:0] of the AP creation event (SVM_VMGEXIT_AP_*); [63:32] is the APIC ID.
AP_CREATE_ON_INIT, AP_CREATE, AP_DESTROY = 0, 1, 2


class VmgexitEvent(IntEnum):
    """Software-defined VMGEXIT exit codes (SVM_VMGEXIT_*) beside the SVM exit codes."""

    MMIO_READ = 0x8000_0001
    MMIO_WRITE = 0x8000_0002
    NMI_COMPLETE = 0x8000_0003
    AP_HLT_LOOP = 0x8000_0004
    AP_JUMP_TABLE = 0x8000_0005
    PSC = 0x8000_0010
    GUEST_REQUEST = 0x8000_0011
    EXT_GUEST_REQUEST = 0x8000_0012
    AP_CREATION = 0x8000_0013
    HV_FEATURES = 0x8000_FFFD
    TERM_REQUEST = 0x8000_FFFE
    UNSUPPORTED_EVENT = 0x8000_FFFF


# -- the GHCB MSR protocol: GHCBData[11:0] is the request/response code ----------------------

INFO_MASK = 0xFFF


class MsrCode(IntEnum):
    """GHCBData[11:0] of the GHCB MSR protocol: which request or response it is."""

    SEV_INFO_RESP = 0x001
    SEV_INFO_REQ = 0x002
    CPUID_REQ = 0x004
    CPUID_RESP = 0x005
    AP_RESET_HOLD_REQ = 0x006
    AP_RESET_HOLD_RESP = 0x007
    REG_GPA_REQ = 0x012
    REG_GPA_RESP = 0x013
    PSC_REQ = 0x014
    PSC_RESP = 0x015
    HV_FT_REQ = 0x080
    HV_FT_RESP = 0x081
    TERM_REQ = 0x100


class CpuidReg(IntEnum):
    """GHCBData[31:30] of a CPUID request: which register the hypervisor returns."""

    EAX = 0
    EBX = 1
    ECX = 2
    EDX = 3


# Termination reasons (sev-common.h): reason set 0 is the general set.
TERM_SET_GENERAL = 0
TERM_GENERAL_REQUEST = 0
TERM_PROTOCOL_UNSUPPORTED = 1
TERM_SET_LINUX = 1
TERM_LINUX_REGISTER = 0  # GHCB GPA registration failed


def msr_code(value: int) -> int:
    """The request or response code of a GHCB MSR value."""
    return value & INFO_MASK


def sev_info(max_version: int, min_version: int, c_bit: int) -> int:
    """SEV_INFO response: protocol range in [63:48]/[47:32], C-bit position in [31:24]."""
    return ((max_version & 0xFFFF) << 48 | (min_version & 0xFFFF) << 32 | (c_bit & 0xFF) << 24
            | MsrCode.SEV_INFO_RESP)


def parse_sev_info(value: int) -> tuple[int, int, int]:
    """(max version, min version, C-bit position) of a SEV_INFO response."""
    return value >> 48 & 0xFFFF, value >> 32 & 0xFFFF, value >> 24 & 0xFF


def cpuid_request(function: int, reg: CpuidReg) -> int:
    """A CPUID request for one register of `function`."""
    return (function & 0xFFFF_FFFF) << 32 | (reg & 0x3) << 30 | MsrCode.CPUID_REQ


def parse_cpuid_request(value: int) -> tuple[int, CpuidReg]:
    """(function, register) of a CPUID request."""
    return value >> 32, CpuidReg(value >> 30 & 0x3)


def cpuid_response(register_value: int) -> int:
    """The hypervisor's answer to a CPUID request: the register in [63:32]."""
    return (register_value & 0xFFFF_FFFF) << 32 | MsrCode.CPUID_RESP


def reg_gpa_request(gfn: int) -> int:
    """A request to register the GHCB at guest frame `gfn`."""
    return (gfn & (1 << 52) - 1) << 12 | MsrCode.REG_GPA_REQ


def reg_gpa_response(gfn: int) -> int:
    """The hypervisor's acknowledgement of a GHCB registration."""
    return (gfn & (1 << 52) - 1) << 12 | MsrCode.REG_GPA_RESP


def msr_gfn(value: int) -> int:
    """GHCBData[63:12] of a GPA registration request or response."""
    return value >> 12


def term_request(reason_set: int, reason: int) -> int:
    """A termination request with its reason set and reason code."""
    return (reason_set & 0xF) << 12 | (reason & 0xFF) << 16 | MsrCode.TERM_REQ


def parse_term_request(value: int) -> tuple[int, int]:
    """(reason set, reason code) of a termination request."""
    return value >> 12 & 0xF, value >> 16 & 0xFF


# -- page state change (SEV-SNP): MSR request and the NAE buffer (sev-common.h) ----------------

PSC_PRIVATE = 1
PSC_SHARED = 2
PSC_PSMASH = 3  # NAE buffer only
PSC_UNSMASH = 4  # NAE buffer only
PSC_MAX_ENTRIES = 253
_PSC_HEAD = struct.Struct("<HHI")  # cur_entry, end_entry, reserved
_GFN_MASK = (1 << 40) - 1


def psc_request(gfn: int, operation: int) -> int:
    """PSC MSR request: GFN in [51:12], operation in [55:52]."""
    return (operation & 0xF) << 52 | (gfn & _GFN_MASK) << 12 | MsrCode.PSC_REQ


def parse_psc_request(value: int) -> tuple[int, int]:
    """(GFN, operation) of a PSC MSR request."""
    return value >> 12 & _GFN_MASK, value >> 52 & 0xF


def psc_response(error: int) -> int:
    """PSC MSR response: error code in [63:32], 0 on success."""
    return (error & 0xFFFF_FFFF) << 32 | MsrCode.PSC_RESP


@dataclass(frozen=True)
class PscEntry:
    """One entry of the PSC NAE buffer: cur_page[11:0], GFN[51:12], op[55:52], size[56]."""

    gfn: int
    operation: int
    huge: bool = False
    cur_page: int = 0

    def to_int(self) -> int:
        """The 64-bit page state change entry."""
        return (self.cur_page & 0xFFF | (self.gfn & _GFN_MASK) << 12
                | (self.operation & 0xF) << 52 | int(self.huge) << 56)

    @classmethod
    def from_int(cls, value: int) -> PscEntry:
        """Parse a 64-bit page state change entry."""
        return cls(value >> 12 & _GFN_MASK, value >> 52 & 0xF, bool(value >> 56 & 1),
                   value & 0xFFF)


def pack_psc(cur_entry: int, end_entry: int, entries: list[PscEntry]) -> bytes:
    """The PSC descriptor the guest puts in the GHCB shared buffer."""
    if not entries or len(entries) > PSC_MAX_ENTRIES:
        raise FormatError(f"a PSC request holds 1..{PSC_MAX_ENTRIES} entries, not {len(entries)}")
    return _PSC_HEAD.pack(cur_entry, end_entry, 0) + b"".join(
        e.to_int().to_bytes(8, "little") for e in entries)


def unpack_psc(buffer: bytes) -> tuple[int, int, list[PscEntry]]:
    """(cur_entry, end_entry, entries up to end_entry) of a PSC descriptor."""
    if len(buffer) < _PSC_HEAD.size:
        raise FormatError("PSC descriptor shorter than its header")
    cur, end, _ = _PSC_HEAD.unpack_from(buffer)
    if end >= PSC_MAX_ENTRIES or len(buffer) < _PSC_HEAD.size + 8 * (end + 1):
        raise FormatError(f"PSC end_entry {end} beyond the buffer")
    entries = [PscEntry.from_int(int.from_bytes(
        buffer[_PSC_HEAD.size + 8 * i:_PSC_HEAD.size + 8 * i + 8], "little"))
        for i in range(end + 1)]
    return cur, end, entries


def psc_set_cur_entry(buffer: bytes, cur_entry: int) -> bytes:
    """The descriptor with cur_entry advanced (the hypervisor's progress report)."""
    return struct.pack("<H", cur_entry) + buffer[2:]
