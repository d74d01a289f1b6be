"""Expected launch digests for SEV, SEV-ES and SEV-SNP guests, computed without a platform.

A relying party compares MEASUREMENT (SNP) or LAUNCH_MEASURE's digest (SEV, SEV-ES) with what
the guest *should* have launched. Two kinds of guests:

- OVMF firmware images carrying AMD's SEV metadata, as QEMU, EC2 and GCE launch them
  (abi.ovmf: the image's layout and the pages a VMM launches, in order), alone or run by an
  SVSM (coconut-svsm) launched beneath them;
- sevsim's own guests: the pages `abi.bootinfo.launch_image` lays out, plus (SNP) the secrets
  and CPUID pages and one VMSA per vCPU from `abi.vmsa.reset_state`, exactly as sevsim's VMM
  launches them.

SNP digests are the PAGE_INFO chain of `abi.snp_launch`; SEV and SEV-ES digests are SHA-256
over the bytes LAUNCH_UPDATE_DATA and LAUNCH_UPDATE_VMSA saw, in order. sev-snp-measure is
the independent check in the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING

from sevsim.abi.ovmf import (
    KernelHashes,
    LaunchPage,
    OvmfError,
    OvmfImage,
    SvsmLaunch,
    VmmType,
    image_pages,
    ovmf_vmsas,
    resolve_signature,
    snp_launch_pages,
    svsm_launch_pages,
)
from sevsim.abi.snp_launch import (
    DIGEST_SIZE,
    INITIAL_DIGEST,
    PAGE_SIZE,
    VMSA_GPA,
    PageType,
    update_digest,
)
from sevsim.abi.vmsa import SEV_FEATURES_SNP, reset_state
from sevsim.errors import ConfigError

if TYPE_CHECKING:
    from sevsim.attest.sev_owner import GuestImage

OVMF_MAX_VCPUS = 4096  # KVM_MAX_VCPUS: no VMM launches more, so no digest has more VMSAs
GUEST_MAX_VCPUS = 64  # sevsim's guest layout: one GHCB page each (guest.kernel.MAX_VCPUS)
MAX_MEMORY = 1 << 52  # x86-64's physical address space at its widest (MAXPHYADDR 52)


class Mode(Enum):
    """What `sevsim measure` computes: a launch digest of a mode, or the OVMF hash."""

    SEV = "sev"
    SEV_ES = "sev-es"
    SNP = "snp"
    SNP_OVMF_HASH = "snp:ovmf-hash"  # only the OVMF image's part of the SNP digest
    SNP_SVSM = "snp:svsm"  # OVMF run by an SVSM (snp_svsm_digest)

    @classmethod
    def parse(cls, name: str | Mode) -> Mode:
        """Accept the spellings of sevsim (sev-es) and sev-snp-measure (seves)."""
        if isinstance(name, Mode):
            return name
        key = name.lower().replace("_", "-")
        aliases = {"sev": cls.SEV, "sev-es": cls.SEV_ES, "seves": cls.SEV_ES, "es": cls.SEV_ES,
                   "snp": cls.SNP, "sev-snp": cls.SNP, "snp:ovmf-hash": cls.SNP_OVMF_HASH,
                   "snp:svsm": cls.SNP_SVSM, "sev-snp:svsm": cls.SNP_SVSM}
        if key not in aliases:
            raise ConfigError(f"unknown mode {name!r}; one of snp, sev-es (seves), sev, "
                              "snp:ovmf-hash, snp:svsm")
        return aliases[key]


# -- digests -------------------------------------------------------------------------------------


def _fold(pages: Iterable[LaunchPage], digest: bytes = INITIAL_DIGEST) -> bytes:
    for page in pages:
        digest = update_digest(digest, page.type, page.gpa, page.data)
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
                    append: str | None = None, guest_features: int = SEV_FEATURES_SNP,
                    ovmf_hash: bytes | None = None) -> bytes:
    """The 48-byte SNP launch digest (MEASUREMENT) of an OVMF guest: the PAGE_INFO chain
    over every page the VMM launches (abi.ovmf.snp_launch_pages). With `ovmf_hash` (what
    `snp_ovmf_hash` gives, as vendors publish it) the chain starts there instead of over
    the image's own pages, whose layout the image still gives."""
    _check_vcpus(vcpus, OVMF_MAX_VCPUS)
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    vmm = VmmType.parse(vmm_type)
    sig = resolve_signature(vcpu_type, vcpu_sig, vmm)
    hashes = _kernel_hashes(kernel, initrd, append)
    pages = snp_launch_pages(image, vcpus, sig, vmm, hashes, guest_features)
    if ovmf_hash is None:
        return _fold(pages)
    if len(ovmf_hash) != DIGEST_SIZE:
        raise ConfigError(f"an OVMF hash is {DIGEST_SIZE} bytes, not {len(ovmf_hash)}")
    image_page_count = len(image.data) // PAGE_SIZE  # the launch begins with them
    return _fold(islice(pages, image_page_count, None), ovmf_hash)


def snp_svsm_digest(svsm: bytes, ovmf: bytes | OvmfImage, vcpus: int,
                    vcpu_type: str | None = None, *, vars_size: int,
                    vcpu_sig: int | None = None) -> bytes:
    """The 48-byte SNP launch digest of an SVSM guest as QEMU launches it (sev-snp-measure
    --mode snp:svsm): the OVMF image, the SVSM image below OVMF's `vars_size`-byte variable
    store, the SVSM's metadata sections and one VMPL0 VMSA per vCPU at the SVSM's entry
    (abi.ovmf.svsm_launch_pages)."""
    _check_vcpus(vcpus, OVMF_MAX_VCPUS)
    launch = SvsmLaunch.parse(svsm, ovmf, vars_size)
    sig = resolve_signature(vcpu_type, vcpu_sig, VmmType.QEMU)
    return _fold(svsm_launch_pages(launch, vcpus, sig))


def snp_ovmf_hash(ovmf: bytes | OvmfImage) -> bytes:
    """The SNP launch digest after the image's own pages only: what sev-snp-measure calls
    the OVMF hash (`--mode snp:ovmf-hash`), to be finished with `ovmf_hash=`."""
    return _fold(image_pages(ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)))


def seves_ovmf_digest(ovmf: bytes | OvmfImage, vcpus: int, vcpu_type: str | None = None, *,
                      vcpu_sig: int | None = None, vmm_type: VmmType | str = VmmType.QEMU,
                      kernel: bytes | None = None, initrd: bytes | None = None,
                      append: str | None = None) -> bytes:
    """The 32-byte SEV-ES launch digest: SHA-256 over the image, the kernel hashes table
    and each vCPU's VMSA (SEV_FEATURES 0), in LAUNCH_UPDATE order."""
    _check_vcpus(vcpus, OVMF_MAX_VCPUS)
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    vmm = VmmType.parse(vmm_type)
    sig = resolve_signature(vcpu_type, vcpu_sig, vmm)
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
                guest_features: int = SEV_FEATURES_SNP, ovmf_hash: bytes | None = None) -> bytes:
    """The expected launch digest of an OVMF guest in any mode (what `sevsim measure
    --ovmf` prints); `ovmf_hash` is for SNP only."""
    chosen = Mode.parse(mode)
    if ovmf_hash is not None and chosen is not Mode.SNP:
        raise ConfigError("a precomputed OVMF hash finishes an SNP digest (--mode snp)")
    if chosen is Mode.SNP_SVSM:
        raise ConfigError("snp:svsm measures an SVSM image with the OVMF it runs: "
                          "snp_svsm_digest")
    if chosen is Mode.SNP:
        return snp_ovmf_digest(ovmf, vcpus, vcpu_type, vcpu_sig=vcpu_sig, vmm_type=vmm_type,
                               kernel=kernel, initrd=initrd, append=append,
                               guest_features=guest_features, ovmf_hash=ovmf_hash)
    if chosen is Mode.SNP_OVMF_HASH:
        return snp_ovmf_hash(ovmf)
    if chosen is Mode.SEV_ES:
        return seves_ovmf_digest(ovmf, vcpus, vcpu_type, vcpu_sig=vcpu_sig, vmm_type=vmm_type,
                                 kernel=kernel, initrd=initrd, append=append)
    _check_vcpus(vcpus, OVMF_MAX_VCPUS)
    return sev_ovmf_digest(ovmf, kernel=kernel, initrd=initrd, append=append)


def _check_vcpus(vcpus: int, most: int) -> None:
    """Refused before any work: a negative count cannot be packed, a billion VMSAs take
    hours to hash, and no launch has either."""
    if not 1 <= vcpus <= most:
        raise ConfigError(f"a VM has at least one vCPU and at most {most}, not {vcpus}")


def _check_guest(memory_size: int, vcpus: int) -> None:
    """A shape sevsim's VMM can launch: 1..64 vCPUs, RAM a multiple of 4 KiB from 1 MiB
    to what an x86-64 physical address reaches."""
    _check_vcpus(vcpus, GUEST_MAX_VCPUS)
    if not (1 << 20 <= memory_size <= MAX_MEMORY and memory_size % PAGE_SIZE == 0):
        raise ConfigError(f"VM memory {memory_size} must be a multiple of 4 KiB from 1 MiB "
                          f"to 2^52 bytes")


# -- sevsim's own guests ---------------------------------------------------------------------


def snp_guest_digest(image: GuestImage, memory_size: int, vcpus: int,
                     kernel_id: bytes) -> bytes:
    """The SNP launch digest sevsim's VMM produces for a guest ELF: the launched image pages
    (NORMAL), the secrets and CPUID pages, then each vCPU's reset-state VMSA with SNP active.
    `image` is a parsed ELF (sevsim.host.elf.parse_elf), `kernel_id` the guest kernel's
    identity (sevsim.guest.kernel.kernel_identity())."""
    from sevsim.abi.bootinfo import (  # here, not at the top: OVMF measuring skips it
        SNP_CPUID_GPA,
        SNP_SECRETS_GPA,
        Segment,
        boot_info_for,
        launch_image,
    )

    _check_guest(memory_size, vcpus)
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
    from sevsim.attest.sev_owner import expected_launch_digest  # cryptography: not for OVMF

    chosen = Mode.parse(mode)
    if chosen in (Mode.SNP_OVMF_HASH, Mode.SNP_SVSM):
        raise ConfigError(f"{chosen.value} measures OVMF images (--ovmf), not sevsim guests")
    if chosen is Mode.SNP:
        return snp_guest_digest(image, memory_size, vcpus, kernel_id)
    _check_guest(memory_size, vcpus)
    try:
        return expected_launch_digest(image, memory_size, vcpus, kernel_id, chosen.value,
                                      vmsas)
    except ValueError as error:
        raise ConfigError(str(error)) from None
