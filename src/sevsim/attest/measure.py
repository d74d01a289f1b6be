"""Expected launch digests for SEV, SEV-ES and SEV-SNP guests, computed without a platform.

A relying party compares MEASUREMENT (SNP) or LAUNCH_MEASURE's digest (SEV, SEV-ES) with what
the guest *should* have launched. Two kinds of guests:

- OVMF firmware images carrying AMD's SEV metadata, as QEMU, EC2 and GCE launch them: the
  image sits just below 4 GiB; OVMF's footer GUID table (the 32 bytes before the end hold the
  reset vector, the table ends there) points at the SEV metadata (the sections the VMM must
  launch: SNP_SEC_MEM, SNP_SECRETS, CPUID, SVSM_CAA, SNP_KERNEL_HASHES), the SEV-ES reset
  block (where APs start) and the kernel-hashes table QEMU fills for direct boot. Each vCPU
  starts from a VMSA that depends on the VMM and the vCPU model's CPUID signature.
- sevsim's own guests: the pages `abi.bootinfo.launch_image` lays out, plus (SNP) the secrets
  and CPUID pages and one VMSA per vCPU from `abi.vmsa.reset_state`, exactly as sevsim's VMM
  launches them.

SNP digests are the PAGE_INFO chain of `abi.snp_launch`; SEV and SEV-ES digests are SHA-256
over the bytes LAUNCH_UPDATE_DATA and LAUNCH_UPDATE_VMSA saw, in order.
Facts (GUIDs, register values) follow OVMF (OvmfPkg/ResetVector, AmdSev), QEMU
(target/i386/sev.c) and KVM; sev-snp-measure is the independent check in the tests.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from sevsim.abi.bootinfo import (
    SNP_CPUID_GPA,
    SNP_SECRETS_GPA,
    Segment,
    boot_info_for,
    launch_image,
)
from sevsim.abi.snp_launch import INITIAL_DIGEST, PAGE_SIZE, VMSA_GPA, PageType, update_digest
from sevsim.abi.vmsa import SEV_FEATURES_SNP, Vmsa, reset_state
from sevsim.abi.vmsa import Segment as VmcbSegment
from sevsim.attest.sev_owner import GuestImage, expected_launch_digest
from sevsim.errors import ConfigError, OvmfError

FOUR_GIB = 1 << 32
RESET_VECTOR_SIZE = 32  # the footer table ends this far before the end of the image
BSP_EIP = 0xFFFFFFF0  # the architectural reset vector

# OVMF footer table and SEV metadata GUIDs (OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm).
FOOTER_TABLE_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_HASH_TABLE_RV_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
# QEMU's SEV hash table (target/i386/sev.c) read by OVMF's BlobVerifierLib/SevHashFinderLib.
HASH_TABLE_HEADER_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
HASH_CMDLINE_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
HASH_INITRD_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
HASH_KERNEL_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")

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
    def parse(cls, name: str | VmmType) -> VmmType:
        if isinstance(name, VmmType):
            return name
        try:
            return cls(name.lower())
        except ValueError:
            raise ConfigError(f"unknown VMM type {name!r}; one of "
                              f"{', '.join(v.value for v in cls)}") from None


class Mode(Enum):
    SEV = "sev"
    SEV_ES = "sev-es"
    SNP = "snp"

    @classmethod
    def parse(cls, name: str | Mode) -> Mode:
        """Accept the spellings of sevsim (sev-es) and sev-snp-measure (seves)."""
        if isinstance(name, Mode):
            return name
        key = name.lower().replace("_", "-")
        aliases = {"sev": cls.SEV, "sev-es": cls.SEV_ES, "seves": cls.SEV_ES, "es": cls.SEV_ES,
                   "snp": cls.SNP, "sev-snp": cls.SNP}
        if key not in aliases:
            raise ConfigError(f"unknown mode {name!r}; one of snp, sev-es (seves), sev")
        return aliases[key]


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX for a family/model/stepping (AMD CPUID spec #25481): what the
    VMM puts in RDX at reset, so it is part of every SEV-ES/SNP VMSA."""
    if not (0 <= family <= 0xFF + 0xF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise ConfigError(f"family {family}, model {model}, stepping {stepping} out of range")
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
        raise ConfigError(f"unknown vCPU type {vcpu_type!r}; one of "
                          f"{', '.join(VCPU_SIGNATURES)} (or give a signature)") from None


# -- OVMF ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataSection:
    gpa: int
    size: int
    type: SectionType


@dataclass(frozen=True)
class OvmfImage:
    """An OVMF image and what its footer table and SEV metadata say about launching it."""

    data: bytes
    table: dict[uuid.UUID, bytes]
    sections: tuple[MetadataSection, ...]
    has_sev_metadata: bool = True

    @property
    def gpa(self) -> int:
        """Where the VMM maps the image: it ends at 4 GiB."""
        return FOUR_GIB - len(self.data)

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
        return any(s.type is kind for s in self.sections)

    @classmethod
    def parse(cls, data: bytes) -> OvmfImage:
        """Parse the footer table and the SEV metadata (SEV and SEV-ES launches need only
        the footer table, SNP needs the metadata); OvmfError for anything malformed."""
        data = bytes(data)
        if not data or len(data) % PAGE_SIZE or len(data) > FOUR_GIB:
            raise OvmfError(f"an OVMF image is whole 4 KiB pages below 4 GiB; this one is "
                            f"{len(data)} bytes")
        table = _footer_table(data)
        if SEV_METADATA_GUID not in table:
            return cls(data, table, (), has_sev_metadata=False)
        return cls(data, table, _metadata(data, table))


def _footer_table(data: bytes) -> dict[uuid.UUID, bytes]:
    """The footer GUID table: entries read backwards from the footer entry, each `data ||
    u16 size || GUID`, where size counts the whole entry."""
    end = len(data) - RESET_VECTOR_SIZE
    if end < _ENTRY_TAIL.size:
        raise OvmfError("image too small for an OVMF footer table")
    size, guid = _ENTRY_TAIL.unpack_from(data, end - _ENTRY_TAIL.size)
    if uuid.UUID(bytes_le=guid) != FOOTER_TABLE_GUID:
        raise OvmfError("not an OVMF image with a footer GUID table (no footer GUID "
                        f"{FOOTER_TABLE_GUID} before the reset vector)")
    if size < _ENTRY_TAIL.size or size > end:
        raise OvmfError(f"OVMF footer table size {size} is impossible")
    start, pos = end - size, end - _ENTRY_TAIL.size
    table: dict[uuid.UUID, bytes] = {}
    while pos - start >= _ENTRY_TAIL.size:
        entry_size, guid = _ENTRY_TAIL.unpack_from(data, pos - _ENTRY_TAIL.size)
        if entry_size < _ENTRY_TAIL.size or entry_size > pos - start:
            raise OvmfError(f"OVMF footer table entry {uuid.UUID(bytes_le=guid)} has "
                            f"impossible size {entry_size}")
        table[uuid.UUID(bytes_le=guid)] = data[pos - entry_size:pos - _ENTRY_TAIL.size]
        pos -= entry_size
    return table


def _metadata(data: bytes, table: dict[uuid.UUID, bytes]) -> tuple[MetadataSection, ...]:
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


@dataclass(frozen=True)
class KernelHashes:
    """SHA-256 of the kernel, initrd and command line QEMU boots directly (`-kernel`,
    `-initrd`, `-append`), which OVMF checks against the measured table before using them."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def of(cls, kernel: bytes, initrd: bytes | None = None,
           append: str | None = None) -> KernelHashes:
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


def ovmf_vmsa(eip: int, vcpu_sig: int, sev_features: int, vmm_type: VmmType | str) -> bytes:
    """The 4 KiB VMSA a vCPU starting at `eip` in real mode gets from the VMM: x86 reset state
    as KVM sets it (EFER.SVME, CR4.MCE, CS base from EIP's upper half), RDX the CPUID
    signature (EC2 and GCE: 0x600), and each VMM's segment attributes, PAT and FPU state."""
    vmm = VmmType.parse(vmm_type)
    cs_attr, ss_attr, tr_attr = 0x9B, 0x93, 0x8B
    g_pat, rdx, mxcsr, fcw = 0x0007040600070406, vcpu_sig, 0x1F80, 0x37F
    if vmm is VmmType.EC2:
        cs_attr = 0x9A if eip == BSP_EIP else 0x9B
        ss_attr, tr_attr, rdx, mxcsr, fcw = 0x92, 0x83, 0x600, 0, 0
    elif vmm is VmmType.GCE:
        g_pat, rdx, mxcsr, fcw = 0x00070106, 0x600, 0, 0
    data = VmcbSegment(0, 0x93, 0xFFFF, 0)
    regs = {"efer": 0x1000, "cr4": 0x40, "cr0": 0x10, "dr7": 0x400, "dr6": 0xFFFF0FF0,
            "rflags": 0x2, "rip": eip & 0xFFFF, "g_pat": g_pat, "rdx": rdx,
            "sev_features": sev_features, "xcr0": 0x1, "mxcsr": mxcsr, "x87_fcw": fcw}
    segments = {"es": data, "cs": VmcbSegment(0xF000, cs_attr, 0xFFFF, eip & 0xFFFF0000),
                "ss": VmcbSegment(0, ss_attr, 0xFFFF, 0), "ds": data, "fs": data, "gs": data,
                "gdtr": VmcbSegment(0, 0, 0xFFFF, 0), "idtr": VmcbSegment(0, 0, 0xFFFF, 0),
                "ldtr": VmcbSegment(0, 0x82, 0xFFFF, 0),
                "tr": VmcbSegment(0, tr_attr, 0xFFFF, 0)}
    try:
        return Vmsa(regs={k: v for k, v in regs.items() if v}, segments=segments).to_bytes()
    except ValueError as error:
        raise ConfigError(str(error)) from None


def ovmf_vmsas(image: OvmfImage, vcpus: int, vcpu_sig: int, sev_features: int,
               vmm_type: VmmType | str) -> Iterator[bytes]:
    """One VMSA per vCPU: the BSP at the reset vector, APs at the SEV-ES reset block."""
    _check_vcpus(vcpus)
    bsp = ovmf_vmsa(BSP_EIP, vcpu_sig, sev_features, vmm_type)
    yield bsp
    if vcpus > 1:
        if not image.reset_eip:
            raise OvmfError("the OVMF image has no SEV-ES reset block: APs cannot start, "
                            "so it launches only one vCPU")
        ap = ovmf_vmsa(image.reset_eip, vcpu_sig, sev_features, vmm_type)
        for _ in range(vcpus - 1):
            yield ap


def _check_vcpus(vcpus: int) -> None:
    if vcpus < 1:
        raise ConfigError(f"a VM has at least one vCPU, not {vcpus}")


def _signature(vcpu_type: str | None, vcpu_sig: int | None, vmm: VmmType) -> int:
    if vcpu_sig is not None and vcpu_type is not None:
        raise ConfigError("give a vCPU type or a signature, not both")
    if vcpu_sig is not None:
        if not 0 <= vcpu_sig < 1 << 32:
            raise ConfigError(f"vCPU signature 0x{vcpu_sig:x} is not 32 bits")
        return vcpu_sig
    if vcpu_type is not None:
        return vcpu_signature(vcpu_type)
    if vmm is VmmType.QEMU:  # EC2 and GCE fix RDX themselves
        raise ConfigError("QEMU puts the vCPU's signature in RDX: give a vCPU type or "
                          "signature")
    return 0


# -- digests -------------------------------------------------------------------------------------


def _extend_pages(digest: bytes, page_type: PageType, gpa: int, length: int,
                  data: bytes | None = None) -> bytes:
    view = memoryview(data) if data is not None else None
    for offset in range(0, length, PAGE_SIZE):
        page = bytes(view[offset:offset + PAGE_SIZE]) if view is not None else None
        digest = update_digest(digest, page_type, gpa + offset, page)
    return digest


def _kernel_hashes(kernel: bytes | None, initrd: bytes | None,
                   append: str | None) -> KernelHashes | None:
    if kernel is None:
        if initrd is not None or append is not None:
            raise ConfigError("an initrd or a command line is measured only with a kernel")
        return None
    return KernelHashes.of(kernel, initrd, append)


def snp_ovmf_digest(ovmf: bytes | OvmfImage, vcpus: int, vcpu_type: str | None = None, *,
                    vcpu_sig: int | None = None, vmm_type: VmmType | str = VmmType.QEMU,
                    kernel: bytes | None = None, initrd: bytes | None = None,
                    append: str | None = None, guest_features: int = SEV_FEATURES_SNP
                    ) -> bytes:
    """The 48-byte SNP launch digest (MEASUREMENT) of an OVMF guest: the image as NORMAL
    pages, the metadata sections as the VMM launches them, then one VMSA per vCPU."""
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    vmm = VmmType.parse(vmm_type)
    _check_vcpus(vcpus)
    sig = _signature(vcpu_type, vcpu_sig, vmm)
    hashes = _kernel_hashes(kernel, initrd, append)
    if not image.has_sev_metadata:
        raise OvmfError("the OVMF image carries no SEV metadata (no SEV_METADATA GUID in its "
                        "footer table): it cannot launch as an SNP guest")
    if hashes is not None and not image.has_section(SectionType.SNP_KERNEL_HASHES):
        raise OvmfError("a kernel was given but the OVMF image has no SNP_KERNEL_HASHES "
                        "section to measure its hashes in")
    digest = _extend_pages(INITIAL_DIGEST, PageType.NORMAL, image.gpa, len(image.data),
                           image.data)
    for section in image.sections:
        digest = _snp_section(digest, image, section, hashes, vmm)
    if vmm is VmmType.EC2:  # EC2 launches the CPUID page after everything else
        for section in image.sections:
            if section.type is SectionType.CPUID:
                digest = _extend_pages(digest, PageType.CPUID, section.gpa, PAGE_SIZE)
    for vmsa in ovmf_vmsas(image, vcpus, sig, guest_features, vmm):
        digest = update_digest(digest, PageType.VMSA, VMSA_GPA, vmsa)
    return digest


def _snp_section(digest: bytes, image: OvmfImage, section: MetadataSection,
                 hashes: KernelHashes | None, vmm: VmmType) -> bytes:
    kind = section.type
    if kind is SectionType.SNP_SEC_MEM:
        page_type = PageType.UNMEASURED if vmm is VmmType.GCE else PageType.ZERO
        return _extend_pages(digest, page_type, section.gpa, section.size)
    if kind is SectionType.SNP_SECRETS:
        return _extend_pages(digest, PageType.SECRETS, section.gpa, PAGE_SIZE)
    if kind is SectionType.CPUID:
        if vmm is VmmType.EC2:
            return digest
        return _extend_pages(digest, PageType.CPUID, section.gpa, PAGE_SIZE)
    if kind is SectionType.SNP_KERNEL_HASHES and hashes is not None:
        offset = image.hash_table_gpa - section.gpa
        table = hashes.table()
        if not 0 <= offset <= section.size - len(table):
            raise OvmfError(f"the kernel hashes table at 0x{image.hash_table_gpa:x} is not "
                            f"inside the SNP_KERNEL_HASHES section at 0x{section.gpa:x}")
        region = bytes(offset) + table + bytes(section.size - offset - len(table))
        return _extend_pages(digest, PageType.NORMAL, section.gpa, section.size, region)
    # SVSM_CAA, and SNP_KERNEL_HASHES without a kernel: zero pages
    return _extend_pages(digest, PageType.ZERO, section.gpa, section.size)


def seves_ovmf_digest(ovmf: bytes | OvmfImage, vcpus: int, vcpu_type: str | None = None, *,
                      vcpu_sig: int | None = None, vmm_type: VmmType | str = VmmType.QEMU,
                      kernel: bytes | None = None, initrd: bytes | None = None,
                      append: str | None = None) -> bytes:
    """The 32-byte SEV-ES launch digest: SHA-256 over the image, the kernel hashes table
    and each vCPU's VMSA (SEV_FEATURES 0), in LAUNCH_UPDATE order."""
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    vmm = VmmType.parse(vmm_type)
    _check_vcpus(vcpus)
    sig = _signature(vcpu_type, vcpu_sig, vmm)
    digest = _legacy_hash(image, _kernel_hashes(kernel, initrd, append))
    for vmsa in ovmf_vmsas(image, vcpus, sig, 0, vmm):
        digest.update(vmsa)
    return digest.digest()


def sev_ovmf_digest(ovmf: bytes | OvmfImage, *, kernel: bytes | None = None,
                    initrd: bytes | None = None, append: str | None = None) -> bytes:
    """The 32-byte SEV launch digest: SHA-256 over the image and the kernel hashes table
    (plain SEV has no VMSA to measure)."""
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    return _legacy_hash(image, _kernel_hashes(kernel, initrd, append)).digest()


def _legacy_hash(image: OvmfImage, hashes: KernelHashes | None) -> hashlib._Hash:
    digest = hashlib.sha256(image.data)
    if hashes is not None:
        if not image.hash_table_gpa:
            raise OvmfError("a kernel was given but the OVMF image has no SEV hash table "
                            "(SEV_HASH_TABLE_RV_GUID) to measure its hashes in")
        digest.update(hashes.table())
    return digest


def ovmf_digest(mode: Mode | str, ovmf: bytes | OvmfImage, vcpus: int = 1,
                vcpu_type: str | None = None, *, vcpu_sig: int | None = None,
                vmm_type: VmmType | str = VmmType.QEMU, kernel: bytes | None = None,
                initrd: bytes | None = None, append: str | None = None,
                guest_features: int = SEV_FEATURES_SNP) -> bytes:
    """The expected launch digest of an OVMF guest in any mode (what `sevsim measure
    --ovmf` prints)."""
    chosen = Mode.parse(mode)
    if chosen is Mode.SNP:
        return snp_ovmf_digest(ovmf, vcpus, vcpu_type, vcpu_sig=vcpu_sig, vmm_type=vmm_type,
                               kernel=kernel, initrd=initrd, append=append,
                               guest_features=guest_features)
    if chosen is Mode.SEV_ES:
        return seves_ovmf_digest(ovmf, vcpus, vcpu_type, vcpu_sig=vcpu_sig, vmm_type=vmm_type,
                                 kernel=kernel, initrd=initrd, append=append)
    _check_vcpus(vcpus)
    return sev_ovmf_digest(ovmf, kernel=kernel, initrd=initrd, append=append)


# -- sevsim's own guests ---------------------------------------------------------------------


def snp_guest_digest(image: GuestImage, memory_size: int, vcpus: int,
                     kernel_id: bytes) -> bytes:
    """The SNP launch digest sevsim's VMM produces for a guest ELF: the launched image pages
    (NORMAL), the secrets and CPUID pages, then each vCPU's reset-state VMSA with SNP active.
    `image` is a parsed ELF (sevsim.host.elf.parse_elf), `kernel_id` the guest kernel's
    identity (sevsim.guest.kernel.kernel_identity())."""
    _check_vcpus(vcpus)
    try:
        boot = boot_info_for(image.entry, [Segment(s.gpa, len(s.data), s.memsz, s.flags)
                                           for s in image.segments],
                             memory_size, vcpus, Mode.SNP.value, kernel_id)
        pages = launch_image(boot, [s.data for s in image.segments])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    digest = INITIAL_DIGEST
    for gpn, page in pages:
        digest = update_digest(digest, PageType.NORMAL, gpn * PAGE_SIZE, page)
    digest = update_digest(digest, PageType.SECRETS, SNP_SECRETS_GPA)
    digest = update_digest(digest, PageType.CPUID, SNP_CPUID_GPA)
    page = reset_state(SEV_FEATURES_SNP).to_bytes()
    for _ in range(vcpus):
        digest = update_digest(digest, PageType.VMSA, VMSA_GPA, page)
    return digest


def guest_digest(mode: Mode | str, image: GuestImage, memory_size: int, vcpus: int,
                 kernel_id: bytes, vmsas: Sequence[bytes] = ()) -> bytes:
    """The launch digest of a sevsim guest in any mode: SNP's PAGE_INFO chain, or the legacy
    SHA-256 the guest owner checks (sev_owner.expected_launch_digest)."""
    chosen = Mode.parse(mode)
    if chosen is Mode.SNP:
        return snp_guest_digest(image, memory_size, vcpus, kernel_id)
    _check_vcpus(vcpus)
    try:
        return expected_launch_digest(image, memory_size, vcpus, kernel_id, chosen.value,
                                      vmsas)
    except ValueError as error:
        raise ConfigError(str(error)) from None
