"""A QEMU-like VMM: loads the guest image, drives the launch, emulates the devices."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sevsim.abi.bootinfo import (
    SECRET_GPA,
    SNP_CPUID_GPA,
    SNP_SECRETS_GPA,
    Segment,
    boot_info_for,
    launch_image,
)
from sevsim.abi.cpuid import CpuidEntry, pack_cpuid_page
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.snp_idblock import IdAuthInfo
from sevsim.abi.snp_launch import VMSA_GPA, PageType
from sevsim.abi.svm import (
    DEBUG_EXIT_PORT,
    SERIAL_PORT,
    SEVSIM_HC_HOST_INPUT,
    SEVSIM_HC_HOST_OUTPUT,
    SEVSIM_HC_TPM_BOOT_READ,
)
from sevsim.abi.tpm_channel import BootItem
from sevsim.abi.vmsa import SEV_FEATURES_SNP, reset_state
from sevsim.errors import (
    ConfigError,
    ImageError,
    MemoryAccessError,
    SevsimError,
    SnpFormatError,
    VmStateError,
)
from sevsim.firmware.sev import LaunchMeasurement
from sevsim.guest.kernel import GuestKernel, kernel_identity
from sevsim.guest.secure_boot import BootMedium, SecureBootOutcome
from sevsim.host.elf import GuestImage, parse_elf
from sevsim.host.hypervisor import HvVm, Hypervisor
from sevsim.host.secure_boot import SecureBootConfig
from sevsim.host.vnic import NIC_HYPERCALLS, VirtualNic
from sevsim.host.vtpm_device import TPM_HYPERCALLS, VtpmDevice, boot_read
from sevsim.hw.chips import GuestMode
from sevsim.hw.cpu import VcpuState
from sevsim.hw.engine import PAGE
from sevsim.inputs import MAX_GUEST_ELF, read_bounded

DEFAULT_POLICY = int(PolicyFlags.NODBG)  # QEMU's default sev-guest policy
SNP_CPUID_LEAVES = (0x0, 0x1, 0x4000_0000, 0x8000_0000, 0x8000_001F)
DEFAULT_SNP_POLICY = 0x30000  # QEMU's sev-snp-guest default: SMT allowed, reserved bit 17
_LINE_STATUS = SERIAL_PORT + 5
_LSR_IDLE = 0x60  # transmitter empty: the guest may always write
_HC_ERROR = (1 << 64) - 1  # a host-channel hypercall the VMM refused


class LaunchOwner(Protocol):
    """The guest owner as the VMM talks to it: bytes in, bytes out, over an untrusted channel
    (sevsim.attest.sev_owner.GuestOwner is one)."""

    @property
    def policy(self) -> int:
        """The guest policy the owner wants; the session MACs it, so the VMM cannot change it."""
        ...

    def start(self, pdh_cert: bytes, cert_chain: bytes) -> tuple[bytes, bytes]:
        """Verify the platform's chain; return the GODH certificate and session buffer."""
        ...

    def secret_packet(self, launch_measure: bytes, platform_status: bytes
                      ) -> tuple[bytes, bytes]:
        """Check LAUNCH_MEASURE; return the LAUNCH_SECRET header and encrypted payload."""
        ...


@dataclass(frozen=True)
class RunResult:
    """How a run ended: what the guest wrote to the debug-exit port (0 if it halted without),
    its console output, the fault or timeout that stopped it, if any, and with secure boot
    the firmware's verdict on the program and its PCR 7 measurements."""

    exit_code: int
    console: str
    error: SevsimError | None = None  # set by Host.run for a VM that faulted or timed out
    secure_boot: SecureBootOutcome | None = None
    event_log: bytes = b""  # with a vTPM: the measured boot's TCG event log, as the guest gave it


class VirtualMachine:
    """One guest as its VMM sees it: the API users drive (load, launch, run, inspect)."""

    def __init__(self, hypervisor: Hypervisor, vm: HvVm,
                 secure_boot: SecureBootConfig | None = None) -> None:
        """`secure_boot`: the keys the guest's firmware checks the program against before it
        runs it (None: secure boot off)."""
        self.hypervisor = hypervisor
        self.secure_boot = secure_boot
        self.secure_boot_outcome: SecureBootOutcome | None = None  # reported at boot
        self.hv = vm
        self.console_bytes = bytearray()
        self.exit_code: int | None = None
        self.measurement: LaunchMeasurement | None = None
        self.image: GuestImage | None = None
        self.launched = False
        self._measured_pages: list[int] = []
        self.host_input = b""  # what the guest's sev_host_input() reads, consumed in order
        self.outputs: list[bytes] = []  # blobs the guest handed over with sev_host_output()
        self._output_part = bytearray()
        self.nic: VirtualNic | None = None  # attach_nic: the guest's network device
        self.vtpm: VtpmDevice | None = None  # attach_vtpm: the guest's TPM
        self._boot_files: dict[BootItem, bytes] = {}
        vm.io_handler = self._io
        vm.hypercall_handler = self._hypercall

    # -- facts ---------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The VM's protection level: "none", "sev", "sev-es" or "snp"."""
        return self.hv.mode.value

    @property
    def asid(self) -> int:
        """The VM's ASID: its TLB tag and, if the VM is encrypted, its key slot."""
        return self.hv.asid

    @property
    def memory_size(self) -> int:
        """Guest RAM in bytes."""
        return self.hv.memory_size

    @property
    def console(self) -> str:
        """What the guest wrote to its serial port, as text (undecodable bytes replaced)."""
        return self.console_bytes.decode("utf-8", "replace")

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self, image: str | Path | bytes, *, cmdline: str | None = None) -> None:
        """Copy a guest ELF and its boot info into guest memory (still unencrypted). A path is
        read bounded by the largest guest there can be; ImageError when it is longer.
        `cmdline` is the command line a vTPM's measured boot logs in PCR 8 (default: the
        file's name, empty for bytes); ConfigError unless it is printable ASCII."""
        if self.image is not None:
            raise VmStateError("an image is already loaded")
        if cmdline is None:
            cmdline = Path(image).name if isinstance(image, (str, Path)) else ""
        if not (cmdline.isascii() and cmdline.isprintable()) or len(cmdline) > PAGE:
            raise ConfigError(f"command line {cmdline[:40]!r}: printable ASCII, at most "
                              f"{PAGE} characters")
        if isinstance(image, (str, Path)):
            try:
                blob = read_bounded(image, MAX_GUEST_ELF, "a guest ELF")
            except ConfigError as err:  # too long to be a guest (a symlink to /dev/zero)
                raise ImageError(str(err)) from None
        else:
            blob = image
        parsed = parse_elf(blob)
        try:
            boot = boot_info_for(parsed.entry, [Segment(s.gpa, len(s.data), s.memsz, s.flags)
                                                for s in parsed.segments],
                                 self.memory_size, len(self.hv.vcpus), self.mode,
                                 kernel_identity())
        except ValueError as err:
            raise ImageError(str(err)) from None
        pages = launch_image(boot, [s.data for s in parsed.segments])
        run: list[tuple[int, bytes]] = []
        for gpn, page in [*pages, (-1, b"")]:  # write runs of consecutive pages at once
            if run and gpn != run[-1][0] + 1:
                self.hypervisor.write_gpa(self.hv, run[0][0] * PAGE, b"".join(p for _, p in run))
                run = []
            run.append((gpn, page))
        self._measured_pages = [gpn for gpn, _ in pages]
        self._boot_files = {BootItem.PROGRAM: blob, BootItem.CMDLINE: cmdline.encode()}
        if self.vtpm is not None:
            self.vtpm.boot_items.update(self._boot_files)
        kernel = GuestKernel(None if self.secure_boot is None else BootMedium(
            self.secure_boot.variables(), blob, self._secure_boot_report))
        for vcpu in self.hv.vcpus:
            vcpu.attach_guest(lambda _cpu: kernel)
        self.image = parsed

    def _secure_boot_report(self, outcome: SecureBootOutcome) -> None:
        self.secure_boot_outcome = outcome

    @property
    def kernel_id(self) -> bytes:
        """The identity of the guest kernel this VMM boots, which the launch digest includes
        (public: a guest owner computes the expected digest with it)."""
        return kernel_identity()

    @property
    def measured_pages(self) -> list[int]:
        """The GPAs of the image pages LAUNCH_UPDATE measures (boot info, segments), in
        guest-physical order: the image is public, so is this list."""
        return [gpn * PAGE for gpn in self._measured_pages]

    def launch(self, policy: int | None = None, owner: LaunchOwner | None = None, *,
               host_data: bytes = bytes(32), id_block: bytes | None = None,
               id_auth: bytes | None = None, guest_features: int = SEV_FEATURES_SNP,
               page_order: list[int] | None = None
               ) -> LaunchMeasurement | None:
        """SEV: LAUNCH_START, ACTIVATE, LAUNCH_UPDATE_DATA over the image, MEASURE, FINISH.

        With a guest owner: it verifies the platform's chain (PDH_CERT_EXPORT) and opens a
        session for LAUNCH_START, checks LAUNCH_MEASURE, and its secret goes in with
        LAUNCH_SECRET at the secret page before LAUNCH_FINISH. The policy is the owner's
        unless given (a different one fails the session's policy MAC). SEV-SNP passes
        `host_data` and the owner's ID block and ID_AUTH_INFO (bytes as the firmware takes
        them) to SNP_LAUNCH_FINISH, as QEMU's sev-snp-guest object does, and launches its
        vCPUs with `guest_features` as their VMSAs' SEV_FEATURES (measured). `page_order` is
        the order in which the VMM submits the measured pages to LAUNCH_UPDATE, by GPA (a
        permutation of `measured_pages`; default guest-physical order): the VMM is the host's,
        it may choose any order."""
        if self.image is None:
            raise VmStateError("load an image before launching")
        if self.launched:
            raise VmStateError("the VM is already launched")
        if owner is not None and not self.hv.mode.encrypted:
            raise VmStateError("a plain VM has no launch for a guest owner to attest")
        order = self._launch_order(page_order)
        if self.hv.mode is GuestMode.SNP:
            if owner is not None:
                raise VmStateError("SNP guests attest with reports, not the legacy owner flow")
            self._launch_snp(DEFAULT_SNP_POLICY if policy is None else policy, host_data,
                             id_block, id_auth, guest_features, order)
            self.launched = True
            return None
        if policy is None:
            policy = owner.policy if owner is not None else DEFAULT_POLICY
            if owner is None and self.hv.mode is GuestMode.SEV_ES:
                policy |= PolicyFlags.ES  # QEMU's sev-es default: the policy's ES bit
        if self.hv.mode.encrypted:
            fw = self.hypervisor.firmware
            if owner is None:
                handle = fw.launch_start(policy)
            else:
                pdh, chain = fw.pdh_cert_export()
                godh, session = owner.start(pdh.to_bytes(), chain.to_bytes())
                handle = fw.launch_start(policy, godh, session)
            self.hv.firmware_handle = handle
            fw.activate(handle, self.asid)
            for gpa, length in self._spa_runs(order):
                fw.launch_update_data(handle, gpa, length)
            self._launch_vmsas(handle)
            self.measurement = fw.launch_measure(handle)
            if owner is not None:
                header, packet = owner.secret_packet(self.measurement.to_bytes(),
                                                     fw.platform_status().to_bytes())
                fw.launch_secret(handle, header,
                                 self.hypervisor.gpa_to_spa(self.hv, SECRET_GPA), packet)
            fw.launch_finish(handle)
        self.launched = True
        return self.measurement

    def _launch_vmsas(self, handle: int) -> None:
        """SEV-ES: every vCPU's reset state goes into its VMSA page, which LAUNCH_UPDATE_VMSA
        encrypts, appends to the launch digest and seals (plain SEV has no VMSA to measure)."""
        if self.hv.mode is not GuestMode.SEV_ES:
            return
        page = reset_state().to_bytes()
        for vcpu in self.hv.vcpus:
            if vcpu.vmsa_spa is None:
                raise VmStateError(f"vCPU {vcpu.index} has no VMSA page")
            self.hypervisor.write_spa(vcpu.vmsa_spa, page)
            self.hypervisor.firmware.launch_update_vmsa(handle, vcpu.vmsa_spa)

    def _launch_order(self, page_order: list[int] | None) -> list[int]:
        """The measured pages' GPNs in submission order; ConfigError unless `page_order` is a
        permutation of the measured pages."""
        if page_order is None:
            return list(self._measured_pages)
        if sorted(gpa // PAGE for gpa in page_order) != sorted(self._measured_pages) or any(
                gpa % PAGE for gpa in page_order):
            raise ConfigError("page_order must list each measured page's GPA exactly once")
        return [gpa // PAGE for gpa in page_order]

    def _launch_snp(self, policy: int, host_data: bytes, id_block: bytes | None,
                    id_auth: bytes | None, guest_features: int = SEV_FEATURES_SNP,
                    order: list[int] | None = None) -> None:
        """SEV-SNP as QEMU and KVM do it: a GCTX page, SNP_LAUNCH_START and SNP_ACTIVATE; all
        RAM assigned to the guest (RMPUPDATE, unvalidated: the guest validates what it uses);
        SNP_LAUNCH_UPDATE for the image (NORMAL), the secrets page, the CPUID page (the
        hypervisor's CPUID table, which the firmware checks against the chip) and each vCPU's
        VMSA; SNP_LAUNCH_FINISH."""
        hv, vm = self.hypervisor, self.hv
        fw = hv.firmware
        hv.write_gpa(vm, SNP_CPUID_GPA, self.snp_cpuid_page())
        gctx = self.snp_launch_start(policy)
        hv.rmp_assign(vm, 0, self.memory_size // PAGE)
        for gpn in self._measured_pages if order is None else order:
            fw.snp_launch_update(gctx, hv.gpa_to_spa(vm, gpn * PAGE), PageType.NORMAL)
        fw.snp_launch_update(gctx, hv.gpa_to_spa(vm, SNP_SECRETS_GPA), PageType.SECRETS)
        fw.snp_launch_update(gctx, hv.gpa_to_spa(vm, SNP_CPUID_GPA), PageType.CPUID)
        self.snp_launch_vmsas(gctx, [reset_state(guest_features).to_bytes()] * len(vm.vcpus))
        fw.snp_launch_finish(gctx, host_data, id_block, id_auth,
                             author_key_en=has_author_key(id_auth))

    def snp_cpuid_page(self) -> bytes:
        """The CPUID page the VMM offers an SNP guest: its hypervisor's answers, which the
        firmware checks against the chip at SNP_LAUNCH_UPDATE."""
        hv = self.hypervisor
        return pack_cpuid_page([CpuidEntry(leaf, 0, *hv.cpuid(self.hv, leaf, 0))
                                for leaf in SNP_CPUID_LEAVES])

    def snp_launch_start(self, policy: int) -> int:
        """A GCTX page, SNP_LAUNCH_START and SNP_ACTIVATE; the guest context's address."""
        hv, vm = self.hypervisor, self.hv
        vm.gctx_frame = int(hv.allocate_host_pages(1)[0])
        gctx = vm.gctx_frame * PAGE
        hv.firmware.snp_gctx_create(gctx)
        vm.firmware_handle = gctx
        hv.firmware.snp_launch_start(gctx, policy)
        hv.firmware.snp_activate(gctx, self.asid)
        return gctx

    def snp_launch_vmsas(self, gctx: int, pages: list[bytes]) -> None:
        """Each vCPU's VMSA (one page per vCPU, in order) into its VMSA page, assigned to the
        guest at VMSA_GPA, and SNP_LAUNCH_UPDATE as a VMSA."""
        hv = self.hypervisor
        for vcpu, page in zip(self.hv.vcpus, pages, strict=True):
            if vcpu.vmsa_spa is None:
                raise VmStateError(f"vCPU {vcpu.index} has no VMSA page")
            hv.write_spa(vcpu.vmsa_spa, page)
            hv.rmpupdate(vcpu.vmsa_spa, self.asid, VMSA_GPA)
            hv.firmware.snp_launch_update(gctx, vcpu.vmsa_spa, PageType.VMSA)

    def _spa_runs(self, order: list[int] | None = None) -> list[tuple[int, int]]:
        """The measured pages as (SPA, length) runs, in submission order (default:
        guest-physical)."""
        runs: list[tuple[int, int]] = []
        for gpn in self._measured_pages if order is None else order:
            spa = self.hypervisor.gpa_to_spa(self.hv, gpn * PAGE)
            if runs and runs[-1][0] + runs[-1][1] == spa:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((spa, PAGE))
        return runs

    def run(self, timeout: float = 60.0) -> RunResult:
        """Run until the guest exits or halts; GuestFault / GuestTimeout stop it and raise,
        and so does VtpmError when its vTPM dies. The VM's vTPM stops with it, whatever
        ended the run."""
        self.check_runnable()
        try:
            self.hypervisor.run(self.hv, timeout)
        except (ConfigError, VmStateError):
            raise  # refused before anything ran: the VM is as it was
        except BaseException:
            self.hypervisor.stop(self.hv)
            self.stop_vtpm()
            raise
        failure = self.stop_vtpm()
        if failure is not None:
            raise failure
        return self.result()

    def run_for(self, seconds: float) -> bool:
        """Run for at most `seconds`, then pause; True once the guest has stopped by itself."""
        self.check_runnable()
        error = self.hypervisor.run_all([self.hv], seconds, pause_at_timeout=True)[self.hv.vm_id]
        if error is not None:
            raise error
        return self.finished

    @property
    def finished(self) -> bool:
        """The guest exited or all its vCPUs halted."""
        return self.hv.stopped or not any(v.state is VcpuState.RUNNABLE for v in self.hv.vcpus)

    def check_runnable(self) -> None:
        """VmStateError unless the VM has been launched."""
        if not self.launched:
            raise VmStateError("launch the VM before running it")

    def result(self, error: SevsimError | None = None) -> RunResult:
        """The VM's RunResult as it stands, carrying `error` if the run ended in one."""
        code = self.exit_code if self.exit_code is not None else 0
        log = self.vtpm.event_log if self.vtpm is not None else b""
        return RunResult(code, self.console, error, self.secure_boot_outcome, log)

    def attach_vtpm(self, state_dir: str | os.PathLike[str] | None = None) -> VtpmDevice:
        """Give the guest a TPM: a swtpm of its own, its NV state in `state_dir` (temporary
        when None), started now and stopped with the VM. VtpmError when swtpm is missing or
        does not start; VmStateError once the VM runs or when it has one already."""
        if self.vtpm is not None or self.launched:
            raise VmStateError("a vTPM is attached before launch, once")
        self.vtpm = VtpmDevice(state_dir)
        self.vtpm.boot_items.update(self._boot_files)
        return self.vtpm

    def stop_vtpm(self) -> SevsimError | None:
        """Stop the vTPM, if any (TPM2_Shutdown(STATE) first, so its state directory keeps
        the PCRs); the VtpmError when swtpm had died on its own."""
        return self.vtpm.stop() if self.vtpm is not None else None

    def attach_nic(self, url: str) -> VirtualNic:
        """Give the guest a virtual NIC bridged to `url`'s host and port (http://, as
        `sevsim run --kbs URL`); the guest learns the URL from the NIC. ConfigError for a
        URL it cannot bridge to."""
        if self.nic is not None:
            self.nic.close()
        self.nic = VirtualNic(url)
        return self.nic

    def destroy(self) -> None:
        """Tear the VM down: its vCPUs stop, its key is released and its memory freed."""
        if self.nic is not None:
            self.nic.close()
        self.stop_vtpm()
        self.hypervisor.destroy_vm(self.hv)

    # -- the hypervisor's view -------------------------------------------------------------------
    def read_gpa(self, gpa: int, length: int) -> bytes:
        """Guest memory as the hypervisor reads it: ciphertext where the guest keeps it private."""
        return self.hypervisor.read_gpa(self.hv, gpa, length)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """Write guest memory as the hypervisor can; private pages get the guest's decryption."""
        self.hypervisor.write_gpa(self.hv, gpa, data)

    def host_view(self) -> bytes:
        """All guest-physical memory as the hypervisor reads it."""
        return self.read_gpa(0, self.memory_size)

    def shared_pages(self) -> list[int]:
        """GPAs the guest told the hypervisor it shares."""
        return [gpn * PAGE for gpn in sorted(self.hv.shared_gpns)]

    # -- devices ---------------------------------------------------------------------------------
    def _io(self, vm: HvVm, port: int, size: int, is_in: bool, value: int) -> int | None:
        if port == SERIAL_PORT and not is_in:
            self.console_bytes.append(value & 0xFF)
        elif port == DEBUG_EXIT_PORT and not is_in:
            self.exit_code = value
            return None
        elif port == _LINE_STATUS and is_in:
            return _LSR_IDLE
        elif is_in:
            return (1 << 8 * size) - 1  # nothing answers: the bus floats high
        return 0

    def _hypercall(self, vm: HvVm, nr: int, args: tuple[int, ...]) -> int | None:
        """The host channel: input into, output out of, the guest's shared bounce page;
        and the NIC's exits."""
        if nr in NIC_HYPERCALLS:
            return _HC_ERROR if self.nic is None else self.nic.hypercall(self, nr, args)
        if nr in TPM_HYPERCALLS:
            if self.vtpm is not None:
                return self.vtpm.hypercall(self, nr, args)
            return (boot_read(self, self._boot_files, args) if nr == SEVSIM_HC_TPM_BOOT_READ
                    else _HC_ERROR)
        gpa, length = args[0], args[1]
        if nr not in (SEVSIM_HC_HOST_INPUT, SEVSIM_HC_HOST_OUTPUT):
            return None
        try:
            if nr == SEVSIM_HC_HOST_INPUT:
                data = self.host_input[:min(length, PAGE)]
                self.write_gpa(gpa, data)
                self.host_input = self.host_input[len(data):]
                return len(data)
            if length > PAGE:
                return _HC_ERROR
            self._output_part += self.read_gpa(gpa, length)
        except MemoryAccessError:  # a page the host may not touch (RmpViolation included)
            return _HC_ERROR
        if not args[2]:  # the blob's last piece
            self.outputs.append(bytes(self._output_part))
            self._output_part.clear()
        return 0


def has_author_key(id_auth: bytes | None) -> bool:
    """AUTHOR_KEY_EN as QEMU sets it: the ID_AUTH_INFO carries an author key (a malformed
    one says no here; the firmware refuses it anyway)."""
    try:
        return id_auth is not None and IdAuthInfo.from_bytes(id_auth).author_key is not None
    except SnpFormatError:
        return False
