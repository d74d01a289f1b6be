"""The VMM launching an OVMF image on the simulated SNP platform, as QEMU, EC2 or GCE would,
alone or run by an SVSM (coconut-svsm) beneath it, as QEMU would.

The image is launched as measured content and never executed: its flash sits just below
4 GiB, its SEV metadata sections in RAM, each page goes through SNP_LAUNCH_UPDATE in the order
and with the type `abi.ovmf.snp_launch_pages` (`svsm_launch_pages`) gives (the order a real
VMM uses), and the
vCPUs' reset VMSAs are measured last. The firmware's launch digest is therefore the
MEASUREMENT a real VM of that configuration shows, and reports the guest asks for afterwards
(sevsim.guest.standin) carry it, signed by the simulated platform.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import cached_property

from sevsim.abi.ovmf import (
    FOUR_GIB,
    KernelHashes,
    LaunchPage,
    OvmfError,
    OvmfImage,
    SectionType,
    SvsmLaunch,
    VmmType,
    resolve_signature,
    snp_launch_pages,
    svsm_launch_pages,
)
from sevsim.abi.snp_launch import PageType
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    AttestationReport,
    build_cert_table,
)
from sevsim.abi.vmsa import SEV_FEATURES_SNP
from sevsim.errors import ConfigError, VmStateError
from sevsim.guest.standin import SCRATCH_PAGES, ReportingGuest
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine, has_author_key
from sevsim.hw.chips import GuestMode
from sevsim.hw.engine import PAGE

AMD_CERT_GUIDS = {GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK}


def launch_ovmf(vm: VirtualMachine, ovmf: bytes | OvmfImage, *, vcpu_type: str | None = None,
                vcpu_sig: int | None = None, vmm_type: VmmType | str = VmmType.QEMU,
                kernel_hashes: KernelHashes | None = None,
                guest_features: int = SEV_FEATURES_SNP, policy: int = DEFAULT_SNP_POLICY,
                host_data: bytes = bytes(32), id_block: bytes | None = None,
                id_auth: bytes | None = None,
                certificates: Sequence[tuple[uuid.UUID, bytes]] = ()) -> OvmfGuest:
    """Launch `ovmf` into a fresh SNP VM whose address space reaches 4 GiB (one VMSA per
    vCPU of the VM). `certificates` are the VMM's own certificate-table entries, served after
    the firmware's VCEK, ASK and ARK (a GCE host's launch endorsement). Every check on the
    image and the arguments comes first, so a refusal leaves the VM untouched."""
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    build_cert_table(list(certificates))  # ReportFormatError: a GUID twice or all zero
    if taken := {guid for guid, _ in certificates} & AMD_CERT_GUIDS:
        raise ConfigError(f"the firmware serves {', '.join(map(str, taken))} itself")
    _check_vm(vm)
    vmm = VmmType.parse(vmm_type)
    sig = resolve_signature(vcpu_type, vcpu_sig, vmm)
    pages = list(snp_launch_pages(image, len(vm.hv.vcpus), sig, vmm, kernel_hashes,
                                  guest_features))
    guest = _launch(vm, (image,), image, pages, policy, host_data, id_block, id_auth)
    vm.hv.vmm_certs = list(certificates)
    return guest


def launch_svsm(vm: VirtualMachine, launch: SvsmLaunch, *, vcpu_type: str | None = None,
                vcpu_sig: int | None = None, policy: int = DEFAULT_SNP_POLICY,
                host_data: bytes = bytes(32), id_block: bytes | None = None,
                id_auth: bytes | None = None) -> OvmfGuest:
    """Launch an SVSM with the OVMF it runs, as coconut-svsm's QEMU does (`launch` places
    them: OVMF's flash ends at 4 GiB, its variable store below it, never measured and left
    unmapped here, the SVSM below that), into a fresh SNP VM: one VMPL0 VMSA per vCPU at the
    SVSM's entry. Checks first, as launch_ovmf."""
    _check_vm(vm)
    sig = resolve_signature(vcpu_type, vcpu_sig, VmmType.QEMU)
    pages = list(svsm_launch_pages(launch, len(vm.hv.vcpus), sig))
    return _launch(vm, (launch.ovmf, launch.svsm), launch.svsm, pages, policy, host_data,
                   id_block, id_auth)


def _check_vm(vm: VirtualMachine) -> None:
    vm_record = vm.hv
    if vm_record.mode is not GuestMode.SNP:
        raise VmStateError(f"an OVMF image launches here as an SNP guest, not {vm.mode}")
    if vm.launched or vm.image is not None:
        raise VmStateError("the VM already holds an image")
    if vm_record.npt.limit_pages * PAGE < FOUR_GIB:
        raise VmStateError("the VM's address space ends below 4 GiB, where the flash goes")


def _launch(vm: VirtualMachine, flash: tuple[OvmfImage, ...], booted: OvmfImage,
            pages: list[LaunchPage], policy: int, host_data: bytes, id_block: bytes | None,
            id_auth: bytes | None) -> OvmfGuest:
    """Map each `flash` image below 4 GiB, lay out the RAM pages, then SNP_LAUNCH_UPDATE
    `pages` in their order and finish; `booted` is the image whose secrets page the guest
    reads its VMPCK from."""
    hv, vm_record = vm.hypervisor, vm.hv
    low = [page for page in pages if page.type is not PageType.VMSA
           and not any(image.gpa <= page.gpa < image.end for image in flash)]
    top = max((page.gpa + PAGE for page in low), default=0)
    if top > vm.memory_size - SCRATCH_PAGES * PAGE:
        raise OvmfError(f"the image's SEV metadata sections reach GPA 0x{top:x}: the VM's "
                        f"{vm.memory_size >> 20} MiB of RAM leave no room for the guest's "
                        "message pages")
    secrets = [s.gpa for s in booted.sections if s.type is SectionType.SNP_SECRETS]
    if not secrets:
        raise OvmfError("the image has no SNP_SECRETS section: its guest would have no "
                        "VMPCK to ask for reports with")

    fw = hv.firmware
    for image in flash:
        hv.map_rom(vm_record, image.gpa, len(image.data) // PAGE)
        hv.write_gpa(vm_record, image.gpa, image.data)
    for page in low:  # what the VMM writes before the pages become the guest's
        if page.type is PageType.CPUID:
            hv.write_gpa(vm_record, page.gpa, vm.snp_cpuid_page())
        elif page.data is not None:  # the kernel hashes table
            hv.write_gpa(vm_record, page.gpa, page.data)
    gctx = vm.snp_launch_start(policy)
    hv.rmp_assign(vm_record, 0, vm.memory_size // PAGE)
    for image in flash:
        hv.rmp_assign(vm_record, image.gpa // PAGE, len(image.data) // PAGE)
    for page in pages:
        if page.type is not PageType.VMSA:
            fw.snp_launch_update(gctx, hv.gpa_to_spa(vm_record, page.gpa), page.type)
    vm.snp_launch_vmsas(gctx, [page.data or b"" for page in pages
                               if page.type is PageType.VMSA])
    fw.snp_launch_finish(gctx, host_data, id_block, id_auth,
                         author_key_en=has_author_key(id_auth))
    vm.launched = True
    return OvmfGuest(vm, booted, secrets[0])


class OvmfGuest:
    """An OVMF image (or an SVSM, then `image`) launched on the simulated SNP platform, and
    a guest standing in for the firmware that never runs, to ask for reports
    (sevsim.guest.standin)."""

    def __init__(self, vm: VirtualMachine, image: OvmfImage, secrets_gpa: int) -> None:
        self.vm = vm
        self.image = image
        scratch = vm.memory_size - SCRATCH_PAGES * PAGE
        self._guest = vm.hv.vcpus[0].attach_guest(
            lambda cpu: ReportingGuest(cpu, secrets_gpa, scratch))

    @cached_property
    def measurement(self) -> bytes:
        """The launch digest the firmware computed, as the guest learns it: from a report's
        MEASUREMENT (the host has no command that returns an SNP guest's digest)."""
        return AttestationReport.from_bytes(self.report()[0]).measurement

    def report(self, report_data: bytes = bytes(64), vmpl: int = 0) -> tuple[bytes, bytes]:
        """A signed ATTESTATION_REPORT and the hypervisor's certificate table beside it."""
        return self._guest.report(report_data, vmpl)

    def destroy(self) -> None:
        """Tear the VM down: its vCPUs stop, its key is released and its memory freed."""
        self.vm.destroy()
