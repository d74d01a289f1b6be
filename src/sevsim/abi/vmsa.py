"""The SEV-ES / SEV-SNP VM save area (VMSA), byte for byte.

Layout: Linux `struct sev_es_save_area` (arch/x86/include/asm/svm.h), 0x670 bytes at the start
of a 4 KiB page; the rest of the page is reserved. `_LAYOUT` lists every member in order with
its size, reserved gaps named by their offset as Linux names them, and the offsets are checked
against those names when this module loads (Linux's BUILD_BUG_RESERVED_OFFSET checks).
"""


import struct
from typing import NamedTuple

from sevsim.errors import FormatError

PAGE_SIZE = 0x1000
SEV_FEATURES_SNP = 1  # SEV_FEATURES bit 0: SNP active
SEV_FEATURES_RESTRICTED_INJECTION = 1 << 3  # VMRUN injects no event but #HV from the VMCB
SEV_FEATURES_ALTERNATE_INJECTION = 1 << 4  # events come from the guest's VMSA, not the VMCB
# SEV_FEATURES bit 14, VmsaRegProt (SEV_STATUS bit 16, Linux MSR_AMD64_SNP_VMSA_REG_PROT_BIT):
# at each save the CPU XORs the protected fields with a fresh nonce, which it stores at
# register_protection_nonce, so saved registers no longer encrypt deterministically.
SEV_FEATURES_VMSA_REG_PROT = 1 << 14
SAVE_AREA_SIZE = 0x670

SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15")
_BLOBS = {"fpreg_x87": 80, "fpreg_xmm": 256, "fpreg_ymm": 256}

_LAYOUT: tuple[tuple[str, int], ...] = (
    *((name, 16) for name in SEGMENTS),
    ("pl0_ssp", 8), ("pl1_ssp", 8), ("pl2_ssp", 8), ("pl3_ssp", 8), ("u_cet", 8),
    ("reserved_0xc8", 2), ("vmpl", 1), ("cpl", 1), ("reserved_0xcc", 4),
    ("efer", 8), ("reserved_0xd8", 104),
    ("xss", 8), ("cr4", 8), ("cr3", 8), ("cr0", 8), ("dr7", 8), ("dr6", 8), ("rflags", 8),
    ("rip", 8), ("dr0", 8), ("dr1", 8), ("dr2", 8), ("dr3", 8), ("dr0_addr_mask", 8),
    ("dr1_addr_mask", 8), ("dr2_addr_mask", 8), ("dr3_addr_mask", 8), ("reserved_0x1c0", 24),
    ("rsp", 8), ("s_cet", 8), ("ssp", 8), ("isst_addr", 8), ("rax", 8), ("star", 8),
    ("lstar", 8), ("cstar", 8), ("sfmask", 8), ("kernel_gs_base", 8), ("sysenter_cs", 8),
    ("sysenter_esp", 8), ("sysenter_eip", 8), ("cr2", 8), ("reserved_0x248", 32),
    ("g_pat", 8), ("dbgctl", 8), ("br_from", 8), ("br_to", 8), ("last_excp_from", 8),
    ("last_excp_to", 8), ("reserved_0x298", 80), ("pkru", 4), ("tsc_aux", 4),
    ("tsc_scale", 8), ("tsc_offset", 8), ("register_protection_nonce", 8),
    ("rcx", 8), ("rdx", 8), ("rbx", 8), ("reserved_0x320", 8), ("rbp", 8), ("rsi", 8),
    ("rdi", 8), ("r8", 8), ("r9", 8), ("r10", 8), ("r11", 8), ("r12", 8), ("r13", 8),
    ("r14", 8), ("r15", 8), ("reserved_0x380", 16),
    ("guest_exit_info_1", 8), ("guest_exit_info_2", 8), ("guest_exit_int_info", 8),
    ("guest_nrip", 8), ("sev_features", 8), ("vintr_ctrl", 8), ("guest_exit_code", 8),
    ("virtual_tom", 8), ("tlb_id", 8), ("pcpu_id", 8), ("event_inj", 8), ("xcr0", 8),
    ("reserved_0x3f0", 16),
    ("x87_dp", 8), ("mxcsr", 4), ("x87_ftw", 2), ("x87_fsw", 2), ("x87_fcw", 2),
    ("x87_fop", 2), ("x87_ds", 2), ("x87_cs", 2), ("x87_rip", 8),
    *_BLOBS.items(),
)


def layout_offsets(layout: tuple[tuple[str, int], ...], size: int) -> dict[str, tuple[int, int]]:
    """Each name -> (offset, size), checking each `reserved_0xNN` sits at NN and the size."""
    table, offset = {}, 0
    for name, length in layout:
        if name.startswith("reserved_") and int(name.removeprefix("reserved_"), 16) != offset:
            raise FormatError(f"layout: {name} lands at 0x{offset:x}")
        table[name] = (offset, length)
        offset += length
    if offset != size:
        raise FormatError(f"layout is 0x{offset:x} bytes, not 0x{size:x}")
    return table


OFFSETS = layout_offsets(_LAYOUT, SAVE_AREA_SIZE)
SCALARS: tuple[str, ...] = tuple(
    name for name, length in _LAYOUT
    if length <= 8 and not name.startswith("reserved_"))
_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SEGMENT = struct.Struct("<HHIQ")  # struct vmcb_seg: selector, attrib, limit, base

# Control bits of the state sevsim's vCPUs run in (flat 64-bit mode, no guest paging).
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR4_OSFXSR = 1 << 9
CR4_FSGSBASE = 1 << 16
CR4_OSXSAVE = 1 << 18
RFLAGS_FIXED = 1 << 1
DR7_RESET = 0x400
MXCSR_RESET = 0x1F80  # all SIMD exceptions masked
FCW_RESET = 0x37F  # all x87 exceptions masked, 64-bit precision


class Segment(NamedTuple):
    """struct vmcb_seg: a segment register as the save area holds it (16 bytes)."""

    selector: int = 0
    attrib: int = 0
    limit: int = 0
    base: int = 0


class Vmsa(NamedTuple):
    """A decoded save area: every scalar member by its Linux name, segments, x87/SSE blobs.

    `fpreg_xmm` is XMM0..XMM15, 16 little-endian bytes each, as FXSAVE stores them."""

    regs: dict[str, int] = {}  # noqa: RUF012  (never mutated: a save area is rebuilt, not edited)
    segments: dict[str, Segment] = {}  # noqa: RUF012
    fpreg_x87: bytes = bytes(80)
    fpreg_xmm: bytes = bytes(256)
    fpreg_ymm: bytes = bytes(256)

    def to_bytes(self) -> bytes:
        """The 4 KiB VMSA page: the save area, then reserved zeros."""
        page = bytearray(PAGE_SIZE)
        for name, value in self.regs.items():
            if name not in SCALARS:
                raise FormatError(f"no scalar {name!r} in the VMSA")
            offset, length = OFFSETS[name]
            if not 0 <= value < 1 << 8 * length:
                raise FormatError(f"VMSA {name} 0x{value:x} does not fit in {length} bytes")
            struct.pack_into("<" + _FORMATS[length], page, offset, value)
        for name, seg in self.segments.items():
            if name not in SEGMENTS:
                raise FormatError(f"no segment {name!r} in the VMSA")
            _SEGMENT.pack_into(page, OFFSETS[name][0], seg.selector, seg.attrib, seg.limit,
                               seg.base)
        for name, length in _BLOBS.items():
            blob: bytes = getattr(self, name)
            if len(blob) != length:
                raise FormatError(f"VMSA {name} is {len(blob)} bytes, not {length}")
            page[OFFSETS[name][0]:OFFSETS[name][0] + length] = blob
        return bytes(page)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Vmsa":
        """Decode a save area (the first 0x670 bytes; reserved bytes are ignored)."""
        if len(data) < SAVE_AREA_SIZE:
            raise FormatError(f"VMSA of {len(data)} bytes is shorter than the 0x670-byte "
                             "save area")
        regs = {}
        for name in SCALARS:
            offset, length = OFFSETS[name]
            value = struct.unpack_from("<" + _FORMATS[length], data, offset)[0]
            if value:
                regs[name] = value
        segments = {name: Segment(*_SEGMENT.unpack_from(data, OFFSETS[name][0]))
                    for name in SEGMENTS}
        x87, xmm, ymm = (bytes(data[OFFSETS[name][0]:OFFSETS[name][0] + length])
                         for name, length in _BLOBS.items())
        return cls(regs, {k: v for k, v in segments.items() if v != Segment()}, x87, xmm, ymm)


# Fields VmsaRegProt masks, as 8-byte words: AMD lets a bitmap choose them; sevsim's covers
# the registers a program computes with (GPRs, RIP, RFLAGS, CR2, XMM) and never the fields
# the hypervisor must read or set in the clear (VMPL, exit information, SEV_FEATURES).
_PROTECTED_WORDS = tuple(sorted(
    [OFFSETS[name][0] for name in (*GPRS, "rip", "rflags", "cr2")]
    + list(range(OFFSETS["fpreg_xmm"][0], OFFSETS["fpreg_xmm"][0] + 256, 8))))
_NONCE_OFFSET = OFFSETS["register_protection_nonce"][0]


def protect_registers(page: bytes, nonce: int) -> bytes:
    """The page as VmsaRegProt stores it: `nonce` in register_protection_nonce and each
    protected word XORed with it. Applying it again with nonce 0 after `unprotect_registers`
    is the identity."""
    out = bytearray(page)
    struct.pack_into("<Q", out, _NONCE_OFFSET, nonce)
    for offset in _PROTECTED_WORDS:
        word = struct.unpack_from("<Q", out, offset)[0]
        struct.pack_into("<Q", out, offset, word ^ nonce)
    return bytes(out)


def unprotect_registers(page: bytes) -> bytes:
    """The registers in the clear from a VmsaRegProt page (its nonce cleared)."""
    nonce = struct.unpack_from("<Q", page, _NONCE_OFFSET)[0]
    return protect_registers(protect_registers(page, nonce), 0) if nonce else bytes(page)


def reset_state(sev_features: int = 0) -> Vmsa:
    """The save area every sevsim vCPU starts from: flat 64-bit mode, registers clear, at the
    guest kernel's entry (SEV-SNP: with SEV_FEATURES_SNP). The VMM hands it to
    LAUNCH_UPDATE_VMSA (SNP_LAUNCH_UPDATE) for each vCPU, so it is part of the launch
    measurement, and a guest owner recomputes it to predict that digest."""
    return Vmsa(regs={
        "sev_features": sev_features,
        "efer": EFER_LME | EFER_LMA,
        "cr0": CR0_PE | CR0_ET,
        "cr4": CR4_OSFXSR | CR4_FSGSBASE | CR4_OSXSAVE,
        "rflags": RFLAGS_FIXED,
        "dr7": DR7_RESET,
        "mxcsr": MXCSR_RESET,
        "x87_fcw": FCW_RESET,
    })
