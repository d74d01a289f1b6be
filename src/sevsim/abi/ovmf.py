"""OVMF firmware images carrying AMD's SEV metadata, and how a VMM launches them.

The image sits just below 4 GiB; OVMF's footer GUID table (the 32 bytes before the end hold
the reset vector, the table ends there) points at the SEV metadata (the sections the VMM must
launch: SNP_SEC_MEM, SNP_SECRETS, CPUID, SVSM_CAA, SNP_KERNEL_HASHES), the SEV-ES reset block
(where APs start) and the kernel-hashes table QEMU fills for direct boot. Each vCPU starts from
a VMSA that depends on the VMM and the vCPU model's CPUID signature.

An SVSM (coconut-svsm) image has the same format plus an SVSM_INFO entry (its entry point) and
launches below OVMF and OVMF's variable store, with its own metadata sections and VMPL0 VMSAs
(`SvsmLaunch`, `svsm_launch_pages`).

Both ends need this: sevsim's VMM launches an image's pages in `snp_launch_pages` order through
the simulated firmware, and a relying party (attest.measure) folds the same pages into the
digest it expects. Facts (GUIDs, register values) follow OVMF (OvmfPkg/ResetVector, AmdSev),
QEMU (target/i386/sev.c) and KVM; sev-snp-measure is the independent check in the tests.
"""


import hashlib
import struct
from collections.abc import Iterator
from enum import Enum, IntEnum
from typing import NamedTuple

from sevsim.errors import OvmfError

from .snp_launch import PAGE_SIZE, VMSA_GPA, PageType
from .vmsa import SEV_FEATURES_SNP, Vmsa
from .vmsa import Segment as VmcbSegment

FOUR_GIB = 1 << 32
RESET_VECTOR_SIZE = 32  # the footer table ends this far before the end of the image
BSP_EIP = 0xFFFFFFF0  # the architectural reset vector

class Guid(str):
    """A GUID in its canonical text form; EFI stores it mixed-endian, as
    uuid.UUID(bytes_le=...) reads it. Not uuid.UUID: importing uuid would cost `sevsim
    measure` a twentieth of its run."""

    __slots__ = ()

    @property
    def bytes_le(self) -> bytes:
        """The GUID in EFI's mixed-endian byte order, as the image stores it."""
        raw = bytes.fromhex(self.replace("-", ""))
        return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]

    @classmethod
    def from_bytes_le(cls, blob: bytes) -> "Guid":
        """A GUID from EFI's mixed-endian bytes."""
        text = (blob[3::-1] + blob[5:3:-1] + blob[7:5:-1] + blob[8:16]).hex()
        return cls(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")


# OVMF footer table and SEV metadata GUIDs (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm).
FOOTER_TABLE_GUID = Guid("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_METADATA_GUID = Guid("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_ES_RESET_BLOCK_GUID = Guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_HASH_TABLE_RV_GUID = Guid("7255371f-3a3b-4b04-927b-1da6efa8d454")
# An SVSM image's entry point, as an offset from its start (coconut-svsm's reset vector).
SVSM_INFO_GUID = Guid("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd")
# QEMU's SEV hash table (target/i386/sev.c) read by OVMF's BlobVerifierLib/SevHashFinderLib.
HASH_TABLE_HEADER_GUID = Guid("9438d606-4f22-4cc9-b479-a793d411fd21")
HASH_CMDLINE_GUID = Guid("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
HASH_INITRD_GUID = Guid("44baf731-3a2f-4bd7-9af1-41e29169781d")
HASH_KERNEL_GUID = Guid("4de79437-abd2-427f-b835-d5b172d2045b")

_ENTRY_TAIL = struct.Struct("<H16s")  # each footer entry ends with u16 size, GUID
_METADATA_HEADER = struct.Struct("<4sIII")  # "ASEV", size, version, number of sections
_METADATA_SECTION = struct.Struct("<III")  # gpa, size, type
_HASH_ENTRY = struct.Struct("<16sH32s")  # GUID, length, SHA-256
_HASH_HEADER = struct.Struct("<16sH")


class SectionType(IntEnum):
    """SEV metadata section types (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm)."""

    SNP_SEC_MEM = 1
    SNP_SECRETS = 2
    CPUID = 3
    SVSM_CAA = 4
    SNP_KERNEL_HASHES = 0x10


class VmmType(Enum):
    """Whose VMM launches the guest: they differ in a few reset registers and in how they
    launch SNP_SEC_MEM (GCE: unmeasured) and the CPUID page (EC2: last)."""

    QEMU = "qemu"
    EC2 = "ec2"
    GCE = "gce"

    @classmethod
    def parse(cls, name: "str | VmmType") -> "VmmType":
        """A VMM type from its name (case-insensitive); OvmfError for an unknown one."""
        if isinstance(name, VmmType):
            return name
        try:
            return cls(name.lower())
        except ValueError:
            raise OvmfError(f"unknown VMM type {name!r}; one of "
                            f"{', '.join(v.value for v in cls)}") from None


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX for a family/model/stepping (AMD CPUID spec #25481): what the
    VMM puts in RDX at reset, so it is part of every SEV-ES/SNP VMSA."""
    if not (0 <= family <= 0xFF + 0xF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise OvmfError(f"family {family}, model {model}, stepping {stepping} out of range")
    base_family, ext_family = (family, 0) if family <= 0xF else (0xF, family - 0xF)
    return (ext_family << 20 | (model >> 4) << 16 | base_family << 8 | (model & 0xF) << 4
            | stepping)


_EPYC = cpu_signature(23, 1, 2)
_ROME = cpu_signature(23, 49, 0)
_MILAN = cpu_signature(25, 1, 1)
_GENOA = cpu_signature(25, 17, 0)
_TURIN = cpu_signature(26, 0, 0)
# QEMU's builtin_x86_defs: versions change features, never family/model/stepping.
VCPU_SIGNATURES: dict[str, int] = {
    "EPYC": _EPYC, "EPYC-v1": _EPYC, "EPYC-v2": _EPYC, "EPYC-IBPB": _EPYC, "EPYC-v3": _EPYC,
    "EPYC-v4": _EPYC,
    "EPYC-Rome": _ROME, "EPYC-Rome-v1": _ROME, "EPYC-Rome-v2": _ROME, "EPYC-Rome-v3": _ROME,
    "EPYC-Milan": _MILAN, "EPYC-Milan-v1": _MILAN, "EPYC-Milan-v2": _MILAN,
    "EPYC-Genoa": _GENOA, "EPYC-Genoa-v1": _GENOA,
    "EPYC-Turin": _TURIN, "EPYC-Turin-v1": _TURIN,
}
_VCPU_BY_LOWER = {name.lower(): sig for name, sig in VCPU_SIGNATURES.items()}


def vcpu_signature(vcpu_type: str) -> int:
    """The CPUID signature of a QEMU vCPU model name (case-insensitive)."""
    try:
        return _VCPU_BY_LOWER[vcpu_type.lower()]
    except KeyError:
        raise OvmfError(f"unknown vCPU type {vcpu_type!r}; one of "
                        f"{', '.join(VCPU_SIGNATURES)} (or give a signature)") from None


# -- OVMF ------------------------------------------------------------------------------------


class MetadataSection(NamedTuple):  # tuples: cheap, as `sevsim measure` starts in a hurry
    """One section of OVMF's SEV metadata: where it goes and what it holds."""

    gpa: int
    size: int
    type: SectionType


class OvmfImage(NamedTuple):
    """An OVMF image (or an SVSM image, in OVMF's format) and what its footer table and SEV
    metadata say about launching it."""

    data: bytes
    table: dict[Guid, bytes]
    sections: tuple[MetadataSection, ...]
    has_sev_metadata: bool = True
    end: int = FOUR_GIB  # where its flash ends: 4 GiB for OVMF, lower for an SVSM

    @property
    def gpa(self) -> int:
        """Where the VMM maps the image: it ends at `end`."""
        return self.end - len(self.data)

    @property
    def reset_eip(self) -> int:
        """Where APs start (SEV-ES reset block); 0 when the image has none."""
        entry = self.table.get(SEV_ES_RESET_BLOCK_GUID)
        return struct.unpack_from("<I", entry)[0] if entry and len(entry) >= 4 else 0

    @property
    def hash_table_gpa(self) -> int:
        """Where QEMU puts the kernel hashes table; 0 when the image takes none."""
        entry = self.table.get(SEV_HASH_TABLE_RV_GUID)
        return struct.unpack_from("<I", entry)[0] if entry and len(entry) >= 4 else 0

    def has_section(self, kind: SectionType) -> bool:
        """Whether the SEV metadata lists a section of `kind`."""
        return any(s.type is kind for s in self.sections)

    @classmethod
    def parse(cls, data: bytes, end: int = FOUR_GIB) -> "OvmfImage":
        """Parse the footer table and the SEV metadata (SEV and SEV-ES launches need only
        the footer table, SNP needs the metadata) of an image whose flash ends at `end`;
        OvmfError for anything malformed."""
        data = bytes(data)
        if not data or len(data) % PAGE_SIZE or len(data) > end:
            raise OvmfError(f"an OVMF image is whole 4 KiB pages below GPA 0x{end:x}; this "
                            f"one is {len(data)} bytes")
        table = _footer_table(data)
        if SEV_METADATA_GUID not in table:
            return cls(data, table, (), has_sev_metadata=False, end=end)
        return cls(data, table, _metadata(data, table), end=end)


def _footer_table(data: bytes) -> dict[Guid, bytes]:
    """The footer GUID table: entries read backwards from the footer entry, each `data ||
    u16 size || GUID`, where size counts the whole entry."""
    end = len(data) - RESET_VECTOR_SIZE
    if end < _ENTRY_TAIL.size:
        raise OvmfError("image too small for an OVMF footer table")
    size, guid = _ENTRY_TAIL.unpack_from(data, end - _ENTRY_TAIL.size)
    if Guid.from_bytes_le(guid) != FOOTER_TABLE_GUID:
        raise OvmfError("not an OVMF image with a footer GUID table (no footer GUID "
                        f"{FOOTER_TABLE_GUID} before the reset vector)")
    if size < _ENTRY_TAIL.size or size > end:
        raise OvmfError(f"OVMF footer table size {size} is impossible")
    start, pos = end - size, end - _ENTRY_TAIL.size
    table: dict[Guid, bytes] = {}
    while pos - start >= _ENTRY_TAIL.size:
        entry_size, guid = _ENTRY_TAIL.unpack_from(data, pos - _ENTRY_TAIL.size)
        if entry_size < _ENTRY_TAIL.size or entry_size > pos - start:
            raise OvmfError(f"OVMF footer table entry {Guid.from_bytes_le(guid)} has "
                            f"impossible size {entry_size}")
        table[Guid.from_bytes_le(guid)] = data[pos - entry_size:pos - _ENTRY_TAIL.size]
        pos -= entry_size
    return table


def _metadata(data: bytes, table: dict[Guid, bytes]) -> tuple[MetadataSection, ...]:
    entry = table[SEV_METADATA_GUID]
    if len(entry) < 4:
        raise OvmfError("the SEV metadata footer entry is truncated")
    start = len(data) - struct.unpack_from("<I", entry)[0]
    if not 0 <= start <= len(data) - _METADATA_HEADER.size:
        raise OvmfError("the SEV metadata offset points outside the image")
    signature, size, version, count = _METADATA_HEADER.unpack_from(data, start)
    if signature != b"ASEV" or version != 1:
        raise OvmfError(f"SEV metadata has signature {signature!r} version {version}, not "
                        "'ASEV' version 1")
    if size != _METADATA_HEADER.size + count * _METADATA_SECTION.size or start + size > len(
            data):
        raise OvmfError(f"SEV metadata size {size} does not fit {count} sections")
    sections = []
    for i in range(count):
        gpa, length, kind = _METADATA_SECTION.unpack_from(
            data, start + _METADATA_HEADER.size + i * _METADATA_SECTION.size)
        try:
            section_type = SectionType(kind)
        except ValueError:
            raise OvmfError(f"SEV metadata section {i} has unknown type {kind}") from None
        if gpa % PAGE_SIZE or length % PAGE_SIZE or not length:
            raise OvmfError(f"SEV metadata section {section_type.name} at 0x{gpa:x}+0x"
                            f"{length:x} is not whole pages")
        sections.append(MetadataSection(gpa, length, section_type))
    return tuple(sections)


# -- kernel hashes -----------------------------------------------------------------------------


class KernelHashes(NamedTuple):
    """SHA-256 of the kernel, initrd and command line QEMU boots directly (`-kernel`,
    `-initrd`, `-append`), which OVMF checks against the measured table before using them."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def of(cls, kernel: bytes, initrd: bytes | None = None,
           append: str | None = None) -> "KernelHashes":
        """The command line is hashed with its terminating NUL; a missing initrd as empty."""
        return cls(hashlib.sha256(kernel).digest(), hashlib.sha256(initrd or b"").digest(),
                   hashlib.sha256((append or "").encode() + b"\0").digest())

    def table(self) -> bytes:
        """QEMU's SevHashTable (header GUID and length, cmdline, initrd, kernel entries)
        zero-padded to 16 bytes, as LAUNCH_UPDATE_DATA measures it."""
        entries = b"".join(_HASH_ENTRY.pack(guid.bytes_le, _HASH_ENTRY.size, digest)
                           for guid, digest in ((HASH_CMDLINE_GUID, self.cmdline),
                                                (HASH_INITRD_GUID, self.initrd),
                                                (HASH_KERNEL_GUID, self.kernel)))
        body = _HASH_HEADER.pack(HASH_TABLE_HEADER_GUID.bytes_le,
                                 _HASH_HEADER.size + len(entries)) + entries
        return body.ljust(-(-len(body) // 16) * 16, b"\0")


# -- VMSAs ---------------------------------------------------------------------------------------


# What KVM puts in every SEV-ES/SNP VMSA at reset: EFER.SVME, CR4.MCE, DR6/DR7, RFLAGS' fixed
# bit, XCR0 x87, the PAT MSR's power-on value and MXCSR with all SIMD exceptions masked.
_KVM_RESET = {"efer": 0x1000, "cr4": 0x40, "dr7": 0x400, "dr6": 0xFFFF0FF0, "rflags": 0x2,
              "xcr0": 0x1, "g_pat": 0x0007040600070406, "mxcsr": 0x1F80}


def _vmsa_page(regs: dict[str, int], segments: dict[str, VmcbSegment]) -> bytes:
    try:
        return Vmsa(regs={k: v for k, v in regs.items() if v}, segments=segments).to_bytes()
    except ValueError as error:
        raise OvmfError(str(error)) from None


def ovmf_vmsa(eip: int, vcpu_sig: int, sev_features: int, vmm_type: VmmType | str) -> bytes:
    """The 4 KiB VMSA a vCPU starting at `eip` in real mode gets from the VMM: x86 reset state
    as KVM sets it (EFER.SVME, CR4.MCE, CS base from EIP's upper half), RDX the CPUID
    signature (EC2 and GCE: 0x600), and each VMM's segment attributes, PAT and FPU state."""
    vmm = VmmType.parse(vmm_type)
    cs_attr, ss_attr, tr_attr = 0x9B, 0x93, 0x8B
    g_pat, rdx, mxcsr, fcw = _KVM_RESET["g_pat"], vcpu_sig, _KVM_RESET["mxcsr"], 0x37F
    if vmm is VmmType.EC2:
        cs_attr = 0x9A if eip == BSP_EIP else 0x9B
        ss_attr, tr_attr, rdx, mxcsr, fcw = 0x92, 0x83, 0x600, 0, 0
    elif vmm is VmmType.GCE:
        g_pat, rdx, mxcsr, fcw = 0x00070106, 0x600, 0, 0
    data = VmcbSegment(0, 0x93, 0xFFFF, 0)
    regs = {**_KVM_RESET, "cr0": 0x10, "rip": eip & 0xFFFF, "g_pat": g_pat, "rdx": rdx,
            "sev_features": sev_features, "mxcsr": mxcsr, "x87_fcw": fcw}
    segments = {"es": data, "cs": VmcbSegment(0xF000, cs_attr, 0xFFFF, eip & 0xFFFF0000),
                "ss": VmcbSegment(0, ss_attr, 0xFFFF, 0), "ds": data, "fs": data, "gs": data,
                "gdtr": VmcbSegment(0, 0, 0xFFFF, 0), "idtr": VmcbSegment(0, 0, 0xFFFF, 0),
                "ldtr": VmcbSegment(0, 0x82, 0xFFFF, 0),
                "tr": VmcbSegment(0, tr_attr, 0xFFFF, 0)}
    return _vmsa_page(regs, segments)


def svsm_vmsa(eip: int, vcpu_sig: int) -> bytes:
    """The VMPL0 VMSA every vCPU of an SVSM launch starts from (coconut-svsm's QEMU): 32-bit
    protected mode (CR0.PE) at the SVSM's entry, flat 4 GiB code (selector 8) and data (16)
    segments, SEV_FEATURES SNP only, RDX the CPUID signature, KVM's reset state otherwise.
    The x87 FCW stays 0, as in sev-snp-measure 0.0.13, the reference the tests compare with
    (its SVSM save area names no FCW field)."""
    code = VmcbSegment(8, 0xC9B, 0xFFFFFFFF, 0)
    data = VmcbSegment(16, 0xC93, 0xFFFFFFFF, 0)
    regs = {**_KVM_RESET, "cr0": 0x11, "rip": eip, "rdx": vcpu_sig,
            "sev_features": SEV_FEATURES_SNP}
    segments = {"es": data, "cs": code, "ss": data, "ds": data, "fs": data,
                "gs": VmcbSegment(0, 0x93, 0xFFFF, 0), "gdtr": VmcbSegment(0, 0, 0xFFFF, 0),
                "idtr": VmcbSegment(0, 0, 0xFFFF, 0), "ldtr": VmcbSegment(0, 0x82, 0xFFFF, 0),
                "tr": VmcbSegment(0, 0x8B, 0xFFFF, 0)}
    return _vmsa_page(regs, segments)


def ovmf_vmsas(image: OvmfImage, vcpus: int, vcpu_sig: int, sev_features: int,
               vmm_type: VmmType | str) -> Iterator[bytes]:
    """One VMSA per vCPU: the BSP at the reset vector, APs at the SEV-ES reset block."""
    check_vcpus(vcpus)
    bsp = ovmf_vmsa(BSP_EIP, vcpu_sig, sev_features, vmm_type)
    yield bsp
    if vcpus > 1:
        if not image.reset_eip:
            raise OvmfError("the OVMF image has no SEV-ES reset block: APs cannot start, "
                            "so it launches only one vCPU")
        ap = ovmf_vmsa(image.reset_eip, vcpu_sig, sev_features, vmm_type)
        for _ in range(vcpus - 1):
            yield ap


def check_vcpus(vcpus: int) -> None:
    """Refuse a VM without vCPUs before anything is measured."""
    if vcpus < 1:
        raise OvmfError(f"a VM has at least one vCPU, not {vcpus}")


def resolve_signature(vcpu_type: str | None, vcpu_sig: int | None,
                      vmm: VmmType) -> int:
    """The RDX value of every VMSA: an explicit signature, a vCPU model's, or (EC2, GCE)
    none, since those VMMs fix RDX themselves."""
    if vcpu_sig is not None and vcpu_type is not None:
        raise OvmfError("give a vCPU type or a signature, not both")
    if vcpu_sig is not None:
        if not 0 <= vcpu_sig < 1 << 32:
            raise OvmfError(f"vCPU signature 0x{vcpu_sig:x} is not 32 bits")
        return vcpu_sig
    if vcpu_type is not None:
        return vcpu_signature(vcpu_type)
    if vmm is VmmType.QEMU:  # EC2 and GCE fix RDX themselves
        raise OvmfError("QEMU puts the vCPU's signature in RDX: give a vCPU type or "
                        "signature")
    return 0


# -- the SNP launch --------------------------------------------------------------------------


class LaunchPage(NamedTuple):
    """One SNP_LAUNCH_UPDATE: the page type, the GPA PAGE_INFO names (VMSA_GPA for a VMSA)
    and the contents for the types whose contents count (NORMAL, VMSA)."""

    type: PageType
    gpa: int
    data: bytes | None = None


def snp_launch_pages(image: OvmfImage, vcpus: int, vcpu_sig: int, vmm_type: VmmType | str,
                     hashes: KernelHashes | None = None,
                     guest_features: int = SEV_FEATURES_SNP) -> Iterator[LaunchPage]:
    """Every page the VMM launches, in order: the image as NORMAL pages, the metadata
    sections (SNP_SEC_MEM zero, or unmeasured on GCE; the secrets and CPUID pages; the kernel
    hashes table as NORMAL pages when a kernel is booted), the CPUID page last on EC2, then
    one VMSA per vCPU."""
    vmm = VmmType.parse(vmm_type)
    check_vcpus(vcpus)
    if not image.has_sev_metadata:
        raise OvmfError("the OVMF image carries no SEV metadata (no SEV_METADATA GUID in its "
                        "footer table): it cannot launch as an SNP guest")
    if hashes is not None and not image.has_section(SectionType.SNP_KERNEL_HASHES):
        raise OvmfError("a kernel was given but the OVMF image has no SNP_KERNEL_HASHES "
                        "section to measure its hashes in")
    vmsas = list(ovmf_vmsas(image, vcpus, vcpu_sig, guest_features, vmm))  # checks first
    yield from image_pages(image)
    for section in image.sections:
        yield from _section_pages(image, section, hashes, vmm)
    if vmm is VmmType.EC2:  # EC2 launches the CPUID page after everything else
        for section in image.sections:
            if section.type is SectionType.CPUID:
                yield LaunchPage(PageType.CPUID, section.gpa)
    for vmsa in vmsas:
        yield LaunchPage(PageType.VMSA, VMSA_GPA, vmsa)


def image_pages(image: OvmfImage) -> Iterator[LaunchPage]:
    """The image itself as NORMAL pages: how every SNP launch of it begins (the digest after
    them is the "OVMF hash" vendors publish)."""
    return _pages(PageType.NORMAL, image.gpa, len(image.data), image.data)


def _pages(page_type: PageType, gpa: int, length: int,
           data: bytes | None = None) -> Iterator[LaunchPage]:
    view = memoryview(data) if data is not None else None
    for offset in range(0, length, PAGE_SIZE):
        page = bytes(view[offset:offset + PAGE_SIZE]) if view is not None else None
        yield LaunchPage(page_type, gpa + offset, page)


def _section_pages(image: OvmfImage, section: MetadataSection, hashes: KernelHashes | None,
                   vmm: VmmType) -> Iterator[LaunchPage]:
    kind = section.type
    if kind is SectionType.SNP_SEC_MEM:
        page_type = PageType.UNMEASURED if vmm is VmmType.GCE else PageType.ZERO
        yield from _pages(page_type, section.gpa, section.size)
    elif kind is SectionType.SNP_SECRETS:
        yield LaunchPage(PageType.SECRETS, section.gpa)
    elif kind is SectionType.CPUID:
        if vmm is not VmmType.EC2:
            yield LaunchPage(PageType.CPUID, section.gpa)
    elif kind is SectionType.SNP_KERNEL_HASHES and hashes is not None:
        offset = image.hash_table_gpa - section.gpa
        table = hashes.table()
        if not 0 <= offset <= section.size - len(table):
            raise OvmfError(f"the kernel hashes table at 0x{image.hash_table_gpa:x} is not "
                            f"inside the SNP_KERNEL_HASHES section at 0x{section.gpa:x}")
        region = bytes(offset) + table + bytes(section.size - offset - len(table))
        yield from _pages(PageType.NORMAL, section.gpa, section.size, region)
    else:  # SVSM_CAA, and SNP_KERNEL_HASHES without a kernel: zero pages
        yield from _pages(PageType.ZERO, section.gpa, section.size)


# -- the SVSM launch -------------------------------------------------------------------------


class SvsmLaunch(NamedTuple):
    """An SVSM launch as coconut-svsm's QEMU lays it out below 4 GiB: the guest firmware
    (`ovmf`, which the SVSM runs at a lower VMPL) ends at 4 GiB, its variable store
    (`vars_size` bytes, never measured) lies below it, and the SVSM image below that."""

    svsm: OvmfImage
    ovmf: OvmfImage
    vars_size: int

    @classmethod
    def parse(cls, svsm: bytes, ovmf: bytes | OvmfImage, vars_size: int) -> "SvsmLaunch":
        """Place both images; OvmfError unless the SVSM image has a footer table with an
        SVSM_INFO entry and SEV metadata, and the variable store is whole pages."""
        if vars_size < 0 or vars_size % PAGE_SIZE:
            raise OvmfError(f"an OVMF variable store is whole 4 KiB pages of flash; "
                            f"{vars_size} bytes is not")
        fw = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
        if vars_size > fw.gpa:
            raise OvmfError(f"a {vars_size}-byte variable store does not fit below the "
                            f"firmware at GPA 0x{fw.gpa:x}")
        try:
            image = OvmfImage.parse(svsm, end=fw.gpa - vars_size)
        except OvmfError as error:
            raise OvmfError(f"the SVSM image: {error}") from None
        entry = image.table.get(SVSM_INFO_GUID)
        if entry is None or len(entry) < 4:
            raise OvmfError(f"not an SVSM image: its footer table has no SVSM_INFO entry "
                            f"({SVSM_INFO_GUID}) giving its entry point")
        if struct.unpack_from("<I", entry)[0] >= len(image.data):
            raise OvmfError(f"the SVSM entry point 0x{struct.unpack_from('<I', entry)[0]:x} "
                            f"is outside the {len(image.data)}-byte image")
        if not image.has_sev_metadata:
            raise OvmfError("the SVSM image carries no SEV metadata (no SEV_METADATA GUID in "
                            "its footer table): it cannot launch as an SNP guest")
        return cls(image, fw, vars_size)

    @property
    def entry(self) -> int:
        """Where every vCPU starts: the SVSM_INFO offset into the image, as a GPA."""
        return self.svsm.gpa + struct.unpack_from("<I", self.svsm.table[SVSM_INFO_GUID])[0]


def svsm_launch_pages(launch: SvsmLaunch, vcpus: int, vcpu_sig: int) -> Iterator[LaunchPage]:
    """Every page QEMU launches for an SVSM guest, in order: the firmware's image and the
    SVSM's as NORMAL pages, the SVSM's metadata sections as QEMU launches them (the
    firmware's own sections are the SVSM's business, not the VMM's), then one VMSA per vCPU,
    all alike at the SVSM's entry."""
    check_vcpus(vcpus)
    vmsa = svsm_vmsa(launch.entry, vcpu_sig)
    yield from image_pages(launch.ovmf)
    yield from image_pages(launch.svsm)
    for section in launch.svsm.sections:
        yield from _section_pages(launch.svsm, section, None, VmmType.QEMU)
    for _ in range(vcpus):
        yield LaunchPage(PageType.VMSA, VMSA_GPA, vmsa)
