"""The guest kernel: boots the program, owns the page tables' C-bits, serves system calls.

It plays the part of Linux (or an SVSM at VMPL0) inside the VM and reaches memory only
through its vCPU's guest-physical view. Anything the hypervisor must learn (console bytes,
which pages are shared, the exit code) it hands over through exits, as a real guest does;
under SEV-ES through the GHCB, from its #VC handler (ghcb.py).

Below the program it keeps a state page (application-processor start requests, the GHCB
protocol version), one GHCB page per vCPU, and the shared pages it talks to the Secure
Processor (SNP guest messages), the VMM's host channel and its vTPM through, made shared on
first use. With a vTPM, and under SEV-SNP into its SNP-bound vTPM too, it measures the boot
before the program runs (tpm.py).
Application processors start from their reset state in every mode: the boot vCPU writes
what an AP should run into the state page and asks the hypervisor only to kick it, so a
hypervisor that cannot set registers (SEV-ES) can still start one, and one that kicks an AP
nobody asked for finds it halting at once.

Under SEV-SNP the kernel is also the VMPL0 monitor (as an SVSM is): it can start code at a
lower VMPL on a vCPU of its own, from a VMSA it builds and tags with RMPADJUST, after giving
that VMPL the pages it may use and a copy of the secrets page without the VMPCKs of the more
privileged levels. System calls from a lower VMPL are served at that VMPL: with its VMPCK
for guest requests, through its own permissions, and never PVALIDATE or starting vCPUs.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sevsim.abi import tpm2
from sevsim.abi.bootinfo import (
    BOOTINFO_GPA,
    SNP_CPUID_GPA,
    SNP_SECRETS_GPA,
    BootInfo,
    KernelOption,
)
from sevsim.abi.cpuid import parse_cpuid_page
from sevsim.abi.ghcb import (
    AP_CREATE,
    PSC_PRIVATE,
    PSC_SHARED,
    TERM_SET_GENERAL,
    VMM_ERR_BUSY,
    VMM_ERR_INVALID_LEN,
    VmgexitEvent,
)
from sevsim.abi.rmp import PERM_READ, PERM_WRITE, VMPLS
from sevsim.abi.snp_guest_msg import (
    KEY_REQ_SIZE,
    VMPCK_SIZE,
    KeyRequest,
    KeyResponse,
    MsgType,
    ReportRequest,
    SecretsPage,
    open_message,
    seal_message,
)
from sevsim.abi.snp_report import REPORT_SIZE, ReportResponse, parse_cert_table
from sevsim.abi.svm import (
    DEBUG_EXIT_PORT,
    IOIO_REP,
    IOIO_STR,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    MSR_WRITE,
    SERIAL_PORT,
    SEVSIM_HC_HOST_INPUT,
    SEVSIM_HC_HOST_OUTPUT,
    SEVSIM_HC_START_VCPU,
    ExitCode,
    ioio_decode,
    ioio_info,
)
from sevsim.abi.svsm_vtpm import NONCE_MAX
from sevsim.abi.tcg_eventlog import EventLog
from sevsim.abi.tpm_channel import framing_error
from sevsim.abi.vmsa import SEV_FEATURES_SNP, Vmsa
from sevsim.abi.vnic import NIC_PAGES
from sevsim.errors import (
    GuestFault,
    KbsAgentError,
    LibtpmsError,
    PageNotValidated,
    RmpInstructionError,
    SecureBootViolation,
    SevsimError,
    SnpFormatError,
)
from sevsim.guest import svsm_vtpm, tsm
from sevsim.guest.ghcb import (
    TERM_GENERAL_REQUEST,
    TERM_PSC,
    GhcbClient,
    encrypted_state,
    snp_active,
)
from sevsim.guest.secure_boot import BootMedium, SecureBootOutcome, Verdict, boot_check
from sevsim.guest.tpm import (
    SECURE_BOOT_OFF,
    ChannelError,
    TpmChannel,
    extend_log,
    measured_boot,
)
from sevsim.guest.vnic import NicStream
from sevsim.hw.cpu import VC_VECTOR, GuestCpu

PAGE = 4096
MAX_VCPUS = 64
STATE_GPA = 0x10000  # the kernel's state page (private), clear of the VMM's launched pages
GHCB_GPA = 0x11000  # GHCB of vCPU i at GHCB_GPA + i * PAGE (shared under SEV-ES)
MSG_REQ_GPA = GHCB_GPA + MAX_VCPUS * PAGE  # SNP guest request page (shared)
MSG_RSP_GPA = MSG_REQ_GPA + PAGE  # SNP guest response page (shared)
CERTS_GPA = MSG_RSP_GPA + PAGE  # extended request: the hypervisor's certificate table (shared)
CERTS_PAGES = 4
HOST_IO_GPA = CERTS_GPA + CERTS_PAGES * PAGE  # the host channel's bounce page (shared)
VMSAS_GPA = HOST_IO_GPA + PAGE  # SNP: the VMSA of lower-VMPL vCPU i at VMSAS_GPA + i * PAGE
VMPL_SECRETS_GPA = VMSAS_GPA + MAX_VCPUS * PAGE  # ... and its copy of the secrets page
TSM_GPA = VMPL_SECRETS_GPA + MAX_VCPUS * PAGE  # configfs-tsm report entries of VMPL v at
TSM_AREA = tsm.SLOTS * tsm.SLOT_SIZE  # ... TSM_GPA + v * TSM_AREA (private)
NIC_GPA = TSM_GPA + VMPLS * TSM_AREA  # the virtual NIC's rings (shared on first use)
KBS_KEY_GPA = NIC_GPA + NIC_PAGES * PAGE  # the attestation agent's private key (private)
TPM_GPA = KBS_KEY_GPA + PAGE  # the vTPM command channel's page (shared on first use)
VTPM_GPA = TPM_GPA + PAGE  # the SNP-bound vTPM's NV state (private)
KERNEL_END = VTPM_GPA + svsm_vtpm.NV_PAGES * PAGE  # programs may share or unshare from here
_VERSION_GPA = STATE_GPA  # u64: negotiated GHCB protocol version
_SHARED_FLAGS_GPA = STATE_GPA + 8  # u64: which of the kernel's shared areas are shared yet
_MSG_SHARED, _HOST_IO_SHARED, _NIC_SHARED, _TPM_SHARED = 1, 2, 4, 8
_AP_START = struct.Struct("<QQQQ")  # entry, stack top, RDI, RSI; entry 0: no request
_AP_SLOTS_GPA = STATE_GPA + 0x100
_CONTEXTS_GPA = STATE_GPA + 16  # u64: vCPUs started at a lower VMPL so far
_OPTIONS_GPA = STATE_GPA + 24  # u64: the hardening options the program turned on
EPERM = 1
ENOENT = 2
EINTR = 4
EIO = 5
EACCES = 13
EFAULT = 14
ENODEV = 19
EINVAL = 22
ENOSPC = 28
ERANGE = 34
ENOSYS = 38
EPROTO = 71
ETIMEDOUT = 110
ECONNREFUSED = 111
_CERT_ENTRY = struct.Struct("<16sII")  # certificate table entry: GUID, offset, length

SYS_WRITE = 1
SYS_EXIT = 60
SYS_SET_SHARED = 100
SYS_SET_PRIVATE = 101
SYS_SEV_STATUS = 102
SYS_VCPU_INFO = 103
SYS_VCPU_START = 104
SYS_VCPU_HALT = 105
SYS_SNP_REPORT = 106
SYS_SNP_EXT_REPORT = 107
SYS_SNP_DERIVED_KEY = 108
SYS_HOST_INPUT = 109
SYS_HOST_OUTPUT = 110
SYS_VMPL_START = 111
SYS_RMPADJUST = 112
SYS_TSM_MKDIR = 113
SYS_TSM_RMDIR = 114
SYS_TSM_WRITE = 115
SYS_TSM_READ = 116
SYS_KERNEL_OPTIONS = 117
SYS_SET_PTE_ATTRS = 118
SYS_MAP_WINDOW = 119
SYS_KBS_RESOURCE = 120
SYS_TPM_TRANSMIT = 130
SYS_TPM_EVENT_LOG = 131
SYS_VTPM_EXTEND = 132  # the SNP-bound vTPM (svsm_vtpm.py)
SYS_VTPM_EVIDENCE = 133
SYS_BOOT_FILE = 134
SYS_VTPM_EVENT_LOG = 135
KERNEL_OPTIONS = int(KernelOption.VC_INSN_CHECK | KernelOption.NO_IA32_EMULATION)  # all there are
IA32_SYSCALL_VECTOR = 0x80
# What an injected #VC's handler emulates without decoding operands, and the instruction it
# steps over afterwards (Linux's vc_handle_vmmcall / vc_handle_cpuid).
_VC_INSNS = {ExitCode.VMMCALL: b"\x0f\x01\xd9", ExitCode.CPUID: b"\x0f\xa2"}
_VMPL0_ONLY = {SYS_SET_SHARED, SYS_SET_PRIVATE, SYS_VCPU_START, SYS_VMPL_START,
               SYS_KERNEL_OPTIONS, SYS_SET_PTE_ATTRS, SYS_KBS_RESOURCE, SYS_TPM_TRANSMIT,
               SYS_TPM_EVENT_LOG, SYS_VTPM_EXTEND, SYS_VTPM_EVIDENCE, SYS_VTPM_EVENT_LOG}
_BUSY_RETRY_S = 0.01  # Linux: SNP_REQ_RETRY_DELAY, while the hypervisor says BUSY ...
_BUSY_GIVE_UP_S = 60.0  # ... for at most SNP_REQ_MAX_RETRY_DURATION
_MAX_WRITE = 1 << 20
_KBS_DEADLINE_S = 30.0  # one whole attestation and fetch, network waits included
_KBS_ERRNO = {"no-device": ENODEV, "network": ECONNREFUSED, "timeout": ETIMEDOUT,
              "protocol": EPROTO, "refused": EACCES, "not-found": ENOENT, "report": EIO}
_RESOURCE_PART = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def kernel_identity() -> bytes:
    """SHA-384 of this kernel's sources: what the launch measurement binds the guest to."""
    here = Path(__file__).parent
    return hashlib.sha384(b"".join((here / name).read_bytes()
                                   for name in ("kernel.py", "ghcb.py", "tsm.py", "vnic.py",
                                                "kbs_agent.py", "secure_boot.py",
                                                "tpm.py", "svsm_vtpm.py",
                                                "libtpms.py"))).digest()


def _runs(gpns: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, stop) runs."""
    runs: list[tuple[int, int]] = []
    for gpn in gpns:
        if runs and runs[-1][1] == gpn:
            runs[-1] = (runs[-1][0], gpn + 1)
        else:
            runs.append((gpn, gpn + 1))
    return runs


class _BadAddress(SevsimError):
    """A system call's buffer the program cannot reach: the call returns -EFAULT, as Linux's
    copy_from_user/copy_to_user make it, and the program goes on."""


class GuestKernel:
    """One kernel instance per VM, shared by its vCPUs."""

    def __init__(self, secure_boot: BootMedium | None = None) -> None:
        """`secure_boot`: the variables and program file the firmware checks before it runs
        the program (None: secure boot is off)."""
        self.boot: BootInfo | None = None
        self.secure_boot = secure_boot
        self.secure_boot_outcome: SecureBootOutcome | None = None  # measured boot: PCR 7
        self.ghcb = GhcbClient(GHCB_GPA, _VERSION_GPA)
        self.event_log: bytes | None = None  # the measured boot's, when the VM has a vTPM
        self.boot_files: list[tuple[str, bytes]] = []  # read once at boot, PCR 9's bytes
        self._handlers: dict[int, Callable[..., int | None]] = {
            SYS_WRITE: self._write, SYS_EXIT: self._exit, SYS_SET_SHARED: self._set_shared,
            SYS_SET_PRIVATE: self._set_private, SYS_SEV_STATUS: self._sev_status,
            SYS_VCPU_INFO: self._vcpu_info, SYS_VCPU_START: self._vcpu_start,
            SYS_VCPU_HALT: self._vcpu_halt, SYS_SNP_REPORT: self._snp_report,
            SYS_SNP_EXT_REPORT: self._snp_ext_report, SYS_SNP_DERIVED_KEY: self._snp_derived_key,
            SYS_HOST_INPUT: self._host_input, SYS_HOST_OUTPUT: self._host_output,
            SYS_VMPL_START: self._vmpl_start, SYS_RMPADJUST: self._rmpadjust,
            SYS_TSM_MKDIR: self._tsm_mkdir, SYS_TSM_RMDIR: self._tsm_rmdir,
            SYS_TSM_WRITE: self._tsm_write, SYS_TSM_READ: self._tsm_read,
            SYS_KERNEL_OPTIONS: self._kernel_options, SYS_SET_PTE_ATTRS: self._set_pte_attrs,
            SYS_MAP_WINDOW: self._map_window, SYS_KBS_RESOURCE: self._kbs_resource,
            SYS_TPM_TRANSMIT: self._tpm_transmit, SYS_TPM_EVENT_LOG: self._tpm_event_log,
            SYS_VTPM_EXTEND: self._vtpm_extend, SYS_VTPM_EVIDENCE: self._vtpm_evidence,
            SYS_BOOT_FILE: self._boot_file,
            SYS_VTPM_EVENT_LOG: self._vtpm_event_log,
        }
        # under SNP: made at boot (or, in a kernel that resumes a migrated VM, on first use),
        # state in VTPM_GPA; the boot's event log it measured
        self.vtpm: svsm_vtpm.SvsmVtpm | None = None
        self.vtpm_event_log: bytes | None = None

    # -- boot ---------------------------------------------------------------------------------
    def _read_boot_info(self, cpu: GuestCpu) -> BootInfo:
        try:
            boot = BootInfo.from_bytes(cpu.read(BOOTINFO_GPA, PAGE))
        except ValueError as err:
            raise GuestFault(f"guest kernel: {err}") from None
        if boot.kernel_id != kernel_identity():
            raise GuestFault("guest kernel: boot info names another kernel")
        return boot

    def boot_info(self, cpu: GuestCpu) -> BootInfo:
        """The boot info; read from guest memory on first use when this kernel resumes a VM it
        did not boot (after a migration, everything it knows is in the guest's memory)."""
        if self.boot is None:
            self.boot = self._read_boot_info(cpu)
        return self.boot

    def on_reset(self, cpu: GuestCpu) -> None:
        """A vCPU leaves reset: the boot vCPU sets the VM up, an AP runs what it was asked to,
        a vCPU started from a VMSA of the kernel's making registers its GHCB and runs on."""
        if cpu.index == 0:
            self._boot(cpu)
        elif cpu.index >= self.boot_info(cpu).nvcpus:
            self.ghcb.register(cpu)
        else:
            self._start_ap(cpu)

    def _boot(self, cpu: GuestCpu) -> None:
        cpu.set_c_bit(BOOTINFO_GPA, 1, private=True)
        boot = self.boot = self._read_boot_info(cpu)
        if boot.nvcpus > MAX_VCPUS:
            raise GuestFault(f"guest kernel: {boot.nvcpus} vCPUs, it supports {MAX_VCPUS}")
        snp = snp_active(cpu)
        image = boot.launched_pages()
        if snp:  # the firmware launched (and validated) the secrets and CPUID pages too
            image = sorted({*image, SNP_SECRETS_GPA // PAGE, SNP_CPUID_GPA // PAGE})
        # Launched pages keep their contents; everything else is accepted as zeroed memory
        # (under SNP validated first: the hypervisor assigned it, nobody validated it).
        cursor = 0
        for first, stop in [*_runs(image), (boot.ram_size // PAGE, 0)]:
            if first > cursor:
                if snp:
                    self._validate(cpu, cursor * PAGE, first - cursor, True)
                cpu.set_c_bit(cursor * PAGE, first - cursor, private=True, zero=True)
            cursor = stop
        for first, stop in _runs(image):
            cpu.set_c_bit(first * PAGE, stop - first, private=True)
        for seg in boot.segments:
            tail = seg.gpa + seg.filesz
            tail_end = min(seg.gpa + seg.memsz, -(-tail // PAGE) * PAGE)
            if seg.filesz and tail_end > tail:  # .bss sharing a page with file bytes
                cpu.write(tail, bytes(tail_end - tail))
            if seg.executable:
                cpu.mark_executable(seg.gpa, seg.filesz)
        if encrypted_state(cpu):
            self.ghcb.negotiate(cpu)
            if snp:  # before there is a GHCB: rescind, then the MSR protocol, page by page
                self._validate(cpu, GHCB_GPA, boot.nvcpus, False)
                for gfn in range(GHCB_GPA // PAGE, GHCB_GPA // PAGE + boot.nvcpus):
                    self.ghcb.psc_msr(cpu, gfn, PSC_SHARED)
            cpu.set_c_bit(GHCB_GPA, boot.nvcpus, private=False, zero=True)
            self.ghcb.register(cpu)
            cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, GHCB_GPA, boot.nvcpus, 0)
        verdict = None
        if self.secure_boot is not None:
            self.secure_boot_outcome = boot_check(self.secure_boot, boot.entry, boot.segments,
                                                  cpu.read)
            verdict = self.secure_boot_outcome.verdict
            self._console(cpu, f"secure boot: {verdict}\n".encode())
        channel, host_vtpm = TpmChannel(cpu, TPM_GPA), TpmChannel.present(cpu)
        try:
            count = channel.file_count()
            if host_vtpm or snp or count:
                self._kernel_shared(cpu, _TPM_SHARED, TPM_GPA, 1)
            self.boot_files = channel.boot_files(count)  # with or without a vTPM
        except ChannelError as err:
            raise GuestFault(f"guest kernel: boot files: {err}") from None
        if host_vtpm or snp:  # measured before a refusal too: PCR 7 records it
            # The SNP-bound vTPM gets the same boot (one log for both), extended into it when
            # a program first uses it: nothing but this kernel can extend it before then, and
            # an SNP VM that never asks pays for no TPM (libtpms draws its own random seeds).
            log = measured_boot(
                channel, boot,
                SECURE_BOOT_OFF if self.secure_boot is None else self.secure_boot.variables,
                verdict, self.boot_files, [channel] if host_vtpm else [])
            self.event_log = log if host_vtpm else None
            self.vtpm_event_log = log if snp else None
        if verdict is not None and not verdict.ok:
            self._refuse(cpu, verdict)
        self._enter(cpu, boot.entry, boot.stack_top, cpu.index, 0)

    def _refuse(self, cpu: GuestCpu, verdict: Verdict) -> None:
        """A program secure boot refused never runs: the kernel ends the VM
        (SecureBootViolation), asking the hypervisor to terminate it under SEV-ES/SNP."""
        why = f"secure boot refused the program: {verdict}"
        if encrypted_state(cpu):
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST, why,
                                SecureBootViolation)
        raise SecureBootViolation(why)

    def _start_ap(self, cpu: GuestCpu) -> None:
        """Run the start request the boot vCPU left for this AP, once; halt if there is none."""
        slot = _AP_SLOTS_GPA + cpu.index * _AP_START.size
        entry, stack_top, rdi, rsi = _AP_START.unpack(cpu.read(slot, _AP_START.size))
        cpu.write(slot, bytes(_AP_START.size))
        if encrypted_state(cpu):
            self.ghcb.register(cpu)
        if not entry:
            cpu.halt()
            return
        self._enter(cpu, entry, stack_top, rdi, rsi)

    @staticmethod
    def _enter(cpu: GuestCpu, entry: int, stack_top: int, rdi: int, rsi: int) -> None:
        for name in ("rax", "rbx", "rcx", "rdx", "rbp", "r8", "r9", "r10", "r11", "r12",
                     "r13", "r14", "r15"):
            cpu.set_reg(name, 0)
        cpu.set_reg("rdi", rdi)
        cpu.set_reg("rsi", rsi)
        cpu.set_reg("rsp", stack_top)
        cpu.set_reg("rip", entry)

    # -- system calls --------------------------------------------------------------------------
    def on_syscall(self, cpu: GuestCpu) -> None:
        """Dispatch the program's SYSCALL (number in RAX, Linux's argument registers); the result
        goes to RAX: -ENOSYS for an unknown call, -EPERM for one only VMPL0 may make."""
        nr = cpu.reg("rax")
        args = [cpu.reg(r) for r in ("rdi", "rsi", "rdx", "r10", "r8")]
        handler = self._handlers.get(nr)
        if handler and cpu.vmpl and nr in _VMPL0_ONLY:
            result: int | None = -EPERM
        elif handler is None:
            result = -ENOSYS
        else:
            try:
                result = handler(cpu, *args)
            except _BadAddress:
                result = -EFAULT
        if result is not None:
            cpu.set_reg("rax", result)

    # -- the program's buffers -------------------------------------------------------------------
    def _user_range(self, cpu: GuestCpu, ptr: int, length: int) -> None:
        """access_ok(): [ptr, ptr + length) inside the VM's RAM, checked before any work."""
        if not 0 <= ptr <= ptr + length <= self.boot_info(cpu).ram_size:
            raise _BadAddress

    def _from_user(self, cpu: GuestCpu, ptr: int, length: int) -> bytes:
        """copy_from_user(): the program's bytes, or -EFAULT where it cannot read them."""
        self._user_range(cpu, ptr, length)
        try:
            return cpu.read(ptr, length)
        except PageNotValidated:
            raise  # an attack on the guest, not a bad pointer: the kernel stops
        except GuestFault:
            raise _BadAddress from None

    def _to_user(self, cpu: GuestCpu, ptr: int, data: bytes) -> None:
        """copy_to_user(): into the program's buffer, or -EFAULT where it cannot write."""
        self._user_range(cpu, ptr, len(data))
        try:
            cpu.write(ptr, data)
        except PageNotValidated:
            raise
        except GuestFault:
            raise _BadAddress from None

    def _write(self, cpu: GuestCpu, buf: int, length: int, *_: int) -> int:
        if length > _MAX_WRITE:
            return -EINVAL
        self._console(cpu, self._from_user(cpu, buf, length))
        return length

    def _console(self, cpu: GuestCpu, data: bytes) -> None:
        """Bytes to the serial console, until the hypervisor stops taking them."""
        if encrypted_state(cpu):  # REP OUTSB through the GHCB's shared buffer
            size = self.ghcb.scratch(cpu)[1]
            for start in range(0, len(data), size):
                if not self._outs(cpu, SERIAL_PORT, data[start:start + size]):
                    break
            return
        for byte in data:
            if not cpu.out(SERIAL_PORT, byte):
                break

    def _outs(self, cpu: GuestCpu, port: int, data: bytes) -> bool:
        scratch, _ = self.ghcb.scratch(cpu)
        info = ioio_info(port, 1, False) | IOIO_STR | IOIO_REP
        return self.ghcb.call(cpu, ExitCode.IOIO, info, len(data), {"sw_scratch": scratch}, (),
                              f"OUTSB of {len(data)} bytes to port 0x{port:x}",
                              shared=data) is not None

    def _exit(self, cpu: GuestCpu, code: int, *_: int) -> None:
        cpu.out(DEBUG_EXIT_PORT, code & 0xFFFF_FFFF, 4)
        cpu.halt()

    def _pages(self, cpu: GuestCpu, addr: int, npages: int) -> bool:
        return (addr % PAGE == 0 and npages > 0 and addr >= KERNEL_END
                and addr + npages * PAGE <= self.boot_info(cpu).ram_size)

    def _validate(self, cpu: GuestCpu, gpa: int, npages: int, validate: bool) -> None:
        """PVALIDATE a range; a page already in that state means someone (the hypervisor)
        played with the RMP behind the kernel's back: terminate, as Linux does."""
        try:
            unchanged = cpu.pvalidate(gpa, npages, validate)
        except RmpInstructionError as err:
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_PSC,
                                f"PVALIDATE of 0x{gpa:x}+{npages} pages: {err}")
        if unchanged.any():
            bad = gpa + int(unchanged.argmax()) * PAGE
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_PSC,
                                f"PVALIDATE: page 0x{bad:x} was already "
                                f"{'validated' if validate else 'invalid'}")

    def _set_shared(self, cpu: GuestCpu, addr: int, npages: int, *_: int) -> int:
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        self._share(cpu, addr, npages)
        return 0

    def _share(self, cpu: GuestCpu, addr: int, npages: int) -> None:
        if snp_active(cpu):
            self._validate(cpu, addr, npages, False)
            self.ghcb.psc(cpu, addr // PAGE, npages, PSC_SHARED)
        cpu.set_c_bit(addr, npages, private=False)
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, 0)

    def _set_private(self, cpu: GuestCpu, addr: int, npages: int, *_: int) -> int:
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, KVM_MAP_GPA_RANGE_ENCRYPTED)
        if snp_active(cpu):
            self.ghcb.psc(cpu, addr // PAGE, npages, PSC_PRIVATE)
            self._validate(cpu, addr, npages, True)
        cpu.set_c_bit(addr, npages, private=True)
        return 0

    def _map_window(self, cpu: GuestCpu, va: int, gpa: int, *_: int) -> int:
        """Point a window page of the calling vCPU's process at one of the program's private
        pages (its page table entry, then INVLPG)."""
        if not self._pages(cpu, gpa, 1):
            return -EINVAL
        try:
            cpu.map_window(va, gpa)
        except GuestFault:
            return -EINVAL
        return 0

    def _set_pte_attrs(self, cpu: GuestCpu, addr: int, npages: int, attrs: int,
                       *_: int) -> int:
        """Write the program's own attribute bits into its pages' entries, as early firmware
        builds page tables with the encryption mask it computed from CPUID Fn8000_001F; the
        MMU decides what the bits mean (the kernel tells the hypervisor nothing)."""
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        cpu.set_pte_attributes(addr, npages, attrs)
        return 0

    def _kernel_options(self, cpu: GuestCpu, options: int, *_: int) -> int:
        """Turn hardening options on (never off); returns those now in effect."""
        if options & ~KERNEL_OPTIONS:
            return -EINVAL
        now = self.options(cpu) | options
        cpu.write(_OPTIONS_GPA, struct.pack("<Q", now))
        return now

    @staticmethod
    def options(cpu: GuestCpu) -> int:
        """The hardening options (KernelOption) the program turned on."""
        return int(struct.unpack("<Q", cpu.read(_OPTIONS_GPA, 8))[0])

    def _sev_status(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.sev_status()

    def _vcpu_info(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.index | cpu.vmpl << 16 | self.boot_info(cpu).nvcpus << 32

    def _vcpu_start(self, cpu: GuestCpu, index: int, entry: int, arg0: int, arg1: int,
                    stack_top: int) -> int:
        if not 0 < index < self.boot_info(cpu).nvcpus or not entry:
            return -EINVAL
        slot = _AP_SLOTS_GPA + index * _AP_START.size
        if any(cpu.read(slot, _AP_START.size)):  # a request the AP has not taken yet
            return -EINVAL
        cpu.write(slot, _AP_START.pack(entry, stack_top, arg0, arg1))
        if cpu.vmmcall(SEVSIM_HC_START_VCPU, index) != 0:  # it is running already
            cpu.write(slot, bytes(_AP_START.size))
            return -EINVAL
        return 0

    def _vcpu_halt(self, cpu: GuestCpu, *_: int) -> None:
        cpu.halt()

    # -- SEV-SNP: lower VMPLs ------------------------------------------------------------------
    def _rmpadjust(self, cpu: GuestCpu, addr: int, npages: int, vmpl: int, perms: int,
                   *_: int) -> int:
        """Give a lower VMPL `perms` (RMP mask bits) on the program's pages [addr, +npages)."""
        if not snp_active(cpu):
            return -ENODEV
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        try:
            for gpa in range(addr, addr + npages * PAGE, PAGE):
                cpu.rmpadjust(gpa, vmpl, perms)
        except RmpInstructionError:
            return -EPERM
        return 0

    def _vmpl_start(self, cpu: GuestCpu, vmpl: int, entry: int, arg0: int, arg1: int,
                    stack_top: int) -> int:
        """Start entry(RDI=arg0, RSI=arg1) at `vmpl` on a new vCPU, as an SVSM starts the
        OS below it: a shared GHCB, a secrets page without the higher VMPLs' keys, read
        access to the boot info and kernel state, then a VMSA tagged with RMPADJUST and the
        AP creation event. Returns the new vCPU's index."""
        if not snp_active(cpu):
            return -ENODEV
        if not 0 < vmpl < VMPLS or not entry:
            return -EINVAL
        index = self.boot_info(cpu).nvcpus + struct.unpack("<Q", cpu.read(_CONTEXTS_GPA, 8))[0]
        if index >= MAX_VCPUS:
            return -ENOSPC
        self._share(cpu, GHCB_GPA + index * PAGE, 1)
        self._kernel_shared(cpu, _MSG_SHARED, MSG_REQ_GPA, 2 + CERTS_PAGES)
        self._kernel_shared(cpu, _HOST_IO_SHARED, HOST_IO_GPA, 1)
        secrets = SecretsPage.from_bytes(cpu.read(SNP_SECRETS_GPA, PAGE))
        wiped = bytes(VMPCK_SIZE)
        k0, k1, k2, k3 = (k if level >= vmpl else wiped for level, k in enumerate(secrets.vmpck))
        n0, n1, n2, n3 = (n if level >= vmpl else 0 for level, n in enumerate(secrets.msg_seqno))
        copy = replace(secrets, vmpck=(k0, k1, k2, k3), msg_seqno=(n0, n1, n2, n3))
        secrets_gpa, vmsa_gpa = VMPL_SECRETS_GPA + index * PAGE, VMSAS_GPA + index * PAGE
        cpu.write(secrets_gpa, copy.to_bytes())
        cpu.rmpadjust(secrets_gpa, vmpl, PERM_READ | PERM_WRITE)
        for gpa in (BOOTINFO_GPA, STATE_GPA):
            cpu.rmpadjust(gpa, vmpl, PERM_READ)
        for gpa in range(TSM_GPA + vmpl * TSM_AREA, TSM_GPA + (vmpl + 1) * TSM_AREA, PAGE):
            cpu.rmpadjust(gpa, vmpl, PERM_READ | PERM_WRITE)  # its own report entries only
        regs = {**cpu.control_registers(), "rip": entry, "rsp": stack_top, "rdi": arg0,
                "rsi": arg1, "rflags": 2, "vmpl": vmpl, "sev_features": SEV_FEATURES_SNP}
        cpu.write(vmsa_gpa, Vmsa(regs).to_bytes())
        cpu.rmpadjust(vmsa_gpa, 1, 0, vmsa=True)
        answer = self.ghcb.call(cpu, VmgexitEvent.AP_CREATION, index << 32 | AP_CREATE,
                                vmsa_gpa, {"rax": SEV_FEATURES_SNP}, (),
                                f"AP creation at VMPL{vmpl}")
        if answer is None or answer.get("sw_exit_info_2", 0):
            cpu.rmpadjust(vmsa_gpa, 1, 0, vmsa=False)  # never leave a VMSA nobody runs
            return -EIO
        cpu.write(_CONTEXTS_GPA, struct.pack("<Q", index - self.boot_info(cpu).nvcpus + 1))
        return index

    def _kernel_shared(self, cpu: GuestCpu, flag: int, gpa: int, npages: int) -> None:
        """Share one of the kernel's own areas the first time it is needed; the flag lives
        in the state page, so a kernel resuming a migrated VM knows too."""
        flags = struct.unpack("<Q", cpu.read(_SHARED_FLAGS_GPA, 8))[0]
        if not flags & flag:
            self._share(cpu, gpa, npages)
            cpu.write(_SHARED_FLAGS_GPA, struct.pack("<Q", flags | flag))

    # -- the host channel ----------------------------------------------------------------------
    def _host_input(self, cpu: GuestCpu, buf: int, length: int, *_: int) -> int:
        """Up to one page of what the VMM offers; untrusted, as anything from the host."""
        if length > _MAX_WRITE:
            return -EINVAL
        self._user_range(cpu, buf, min(length, PAGE))
        self._kernel_shared(cpu, _HOST_IO_SHARED, HOST_IO_GPA, 1)
        got = cpu.vmmcall(SEVSIM_HC_HOST_INPUT, HOST_IO_GPA, min(length, PAGE))
        if not 0 <= got <= min(length, PAGE):
            return -EIO
        self._to_user(cpu, buf, cpu.read(HOST_IO_GPA, got))
        return got

    def _host_output(self, cpu: GuestCpu, buf: int, length: int, *_: int) -> int:
        """Hand the VMM one blob, a page at a time through the bounce page."""
        if length > _MAX_WRITE:
            return -EINVAL
        data = self._from_user(cpu, buf, length)
        self._kernel_shared(cpu, _HOST_IO_SHARED, HOST_IO_GPA, 1)
        for start in range(0, max(length, 1), PAGE):
            chunk = data[start:start + PAGE]
            cpu.write(HOST_IO_GPA, chunk)
            if cpu.vmmcall(SEVSIM_HC_HOST_OUTPUT, HOST_IO_GPA, len(chunk),
                           int(start + PAGE < length)) != 0:
                return -EIO
        return length

    # -- the key broker -------------------------------------------------------------------------
    def _kbs_resource(self, cpu: GuestCpu, path_ptr: int, buf: int, length: int,
                      *_: int) -> int:
        """Fetch a key broker resource (`repository/type/tag`) into the program's buffer,
        which must be private: attest over the virtual NIC (kbs_agent), the ephemeral key in
        the kernel's private key page, the JWE opened straight into `buf`. Returns the
        secret's length, or -errno: ENOSPC when it does not fit (nothing is copied), EPERM
        for a buffer the host could read, and the agent's failures (_KBS_ERRNO)."""
        if not snp_active(cpu):
            return -ENODEV
        path = self._path(cpu, path_ptr)
        if isinstance(path, int):
            return path
        parts = path.split(b"/")
        if len(parts) != 3 or not all(_RESOURCE_PART.fullmatch(p) and p.strip(b".")
                                      for p in parts):
            return -EINVAL
        self._user_range(cpu, buf, length)
        if not cpu.is_private(buf, length):
            return -EPERM
        from sevsim.guest import kbs_agent  # on first use: HTTP and JOSE cost every boot 60 ms

        self._kernel_shared(cpu, _NIC_SHARED, NIC_GPA, NIC_PAGES)
        stream = NicStream(cpu, NIC_GPA, time.monotonic() + _KBS_DEADLINE_S)
        try:
            url = stream.setup()
            authority, prefix = kbs_agent.base_path(url)
            client = kbs_agent.HttpClient(stream, authority)
            secret = kbs_agent.fetch_resource(client, prefix, path.decode(),
                                              lambda data: self._kbs_evidence(cpu, data),
                                              _PageKeyStore(cpu, KBS_KEY_GPA))
        except KbsAgentError as err:
            return -_KBS_ERRNO[err.reason]
        finally:
            stream.close()
        if len(secret) > length:
            return -ENOSPC
        self._to_user(cpu, buf, secret)
        return len(secret)

    def _kbs_evidence(self, cpu: GuestCpu, data: bytes) -> tuple[bytes, bytes]:
        """An extended report for the agent: the report and the host's certificate table."""
        result = self._report(cpu, data, cpu.vmpl, CERTS_PAGES)
        table = self._cert_table(cpu, CERTS_PAGES) if isinstance(result, bytes) else None
        if not isinstance(result, bytes) or table is None:
            raise KbsAgentError("report", "the Secure Processor gave no report")
        return result, table

    # -- the vTPM ------------------------------------------------------------------------------
    def _tpm_transmit(self, cpu: GuestCpu, cmd: int, length: int, rsp: int, capacity: int,
                      *_: int) -> int:
        """One TPM 2.0 command from the program, its response into `rsp`; returns the
        response's length. -EINVAL for a command the channel cannot frame (its length and
        its header's commandSize must agree), -ENOSPC when the response does not fit in
        `capacity` (the TPM has run the command), -ENODEV without a vTPM, -EIO when the VMM
        refuses or answers with something that is no response."""
        if self.event_log is None:
            return -ENODEV
        if length > PAGE:
            return -EINVAL
        command = self._from_user(cpu, cmd, length)
        if framing_error(command) is not None:
            return -EINVAL
        self._user_range(cpu, rsp, min(capacity, PAGE))
        try:
            response = TpmChannel(cpu, TPM_GPA).transmit(command)
        except ChannelError:
            return -EIO
        if len(response) > capacity:
            return -ENOSPC
        self._to_user(cpu, rsp, response)
        return len(response)

    def _tpm_event_log(self, cpu: GuestCpu, buf: int, capacity: int, *_: int) -> int:
        """The measured boot's event log into `buf`; returns its length, -ENOSPC (nothing
        copied) when it is longer than `capacity`, -ENODEV without a vTPM."""
        return self._log_to_user(cpu, self.event_log, buf, capacity)

    def _log_to_user(self, cpu: GuestCpu, log: bytes | None, buf: int, capacity: int) -> int:
        if log is None:
            return -ENODEV
        if len(log) > capacity:
            return -ENOSPC
        self._to_user(cpu, buf, log)
        return len(log)

    def _boot_file(self, cpu: GuestCpu, index: int, name_buf: int, name_cap: int,
                   data_buf: int, data_cap: int) -> int:
        """Boot data file `index`: its name (NUL-terminated) into `name_buf`, its bytes (those
        PCR 9 measured) into `data_buf`; returns their length. -ENOENT past the last file,
        -ENOSPC (nothing copied) when either does not fit."""
        if index >= len(self.boot_files):
            return -ENOENT
        name, data = self.boot_files[index]
        if len(name) + 1 > name_cap or len(data) > data_cap:
            return -ENOSPC
        self._user_range(cpu, data_buf, len(data))
        self._to_user(cpu, name_buf, name.encode() + b"\0")
        self._to_user(cpu, data_buf, data)
        return len(data)

    # -- SEV-SNP guest requests ----------------------------------------------------------------
    @staticmethod
    def _secrets_gpa(cpu: GuestCpu) -> int:
        """The secrets page this VMPL reads its VMPCK from (below VMPL0: the kernel's copy)."""
        return VMPL_SECRETS_GPA + cpu.index * PAGE if cpu.vmpl else SNP_SECRETS_GPA

    def _guest_request(self, cpu: GuestCpu, msg_type: MsgType, payload: bytes,
                       cert_pages: int | None = None) -> tuple[bytes, int] | int:
        """One message to the Secure Processor with the VMPCK of this vCPU's VMPL, as Linux's
        sev-guest driver: seal with the next sequence number, carry it through the hypervisor
        (the same message again while it answers BUSY), open the answer and insist on the
        response type and sequence number + 1. Any failure (the firmware refused, the
        hypervisor replayed or altered something) leaves the counters out of step for good,
        so the key is wiped from the secrets page and never used again. Returns the response
        payload and, for an extended request with too few certificate pages, the pages
        needed (the request is then finished without certificates, as Linux does, so the
        sequence number moves on); or -EIO."""
        vmpl, secrets_gpa = cpu.vmpl, self._secrets_gpa(cpu)
        secrets = SecretsPage.from_bytes(cpu.read(secrets_gpa, PAGE))
        key, offset = secrets.vmpck[vmpl], SecretsPage.seqno_offset(vmpl)
        if not any(key) or secrets.msg_seqno[vmpl] + 2 > 0xFFFF_FFFF:  # wiped, or worn out
            return -EIO
        self._kernel_shared(cpu, _MSG_SHARED, MSG_REQ_GPA, 2 + CERTS_PAGES)
        seqno = secrets.msg_seqno[vmpl] + 1
        request = seal_message(key, msg_type, seqno, payload, vmpck=vmpl)
        cpu.write(MSG_REQ_GPA, request.ljust(PAGE, b"\0"))
        cpu.write(MSG_RSP_GPA, bytes(PAGE))
        answer = self._issue(cpu, cert_pages)
        needed = 0
        if cert_pages is not None and answer.get("sw_exit_info_2") == VMM_ERR_INVALID_LEN:
            needed = max(answer.get("rbx", 0), cert_pages + 1)
            answer = self._issue(cpu, None)  # the same sealed message, without certificates
        try:
            if answer.get("sw_exit_info_2", 0):
                raise SnpFormatError("SW_EXITINFO2",
                                     f"request refused: 0x{answer['sw_exit_info_2']:x}")
            header, plain = open_message(key, cpu.read(MSG_RSP_GPA, PAGE))
            if header.seqno != seqno + 1 or header.msg_type is not msg_type.response \
                    or header.vmpck != vmpl:
                raise SnpFormatError("MSG_SEQNO", f"{header.msg_type.name} #{header.seqno} "
                                     f"answers {msg_type.name} #{seqno}")
        except SnpFormatError:
            cpu.write(secrets_gpa + SecretsPage.vmpck_offset(vmpl), bytes(VMPCK_SIZE))
            return -EIO
        cpu.write(secrets_gpa + offset, struct.pack("<I", seqno + 1))
        return plain, needed

    def _issue(self, cpu: GuestCpu, cert_pages: int | None) -> dict[str, int]:
        """The (extended) guest request event, again while the hypervisor answers BUSY: the
        firmware never saw the message, so the very same one goes again."""
        event, inputs = ((VmgexitEvent.GUEST_REQUEST, {}) if cert_pages is None else
                         (VmgexitEvent.EXT_GUEST_REQUEST, {"rax": CERTS_GPA, "rbx": cert_pages}))
        give_up = time.monotonic() + _BUSY_GIVE_UP_S
        while True:
            answer = self.ghcb.call(cpu, event, MSG_REQ_GPA, MSG_RSP_GPA, inputs, (),
                                    "an SNP guest request")
            if answer is None:
                raise GuestFault(f"vCPU {cpu.index}: the hypervisor stopped the VM at an SNP "
                                 "guest request")
            if answer.get("sw_exit_info_2") != VMM_ERR_BUSY or time.monotonic() > give_up:
                return answer
            time.sleep(_BUSY_RETRY_S)

    def _report(self, cpu: GuestCpu, data: bytes, vmpl: int,
                cert_pages: int | None) -> bytes | int:
        """MSG_REPORT_REQ carrying `data` as REPORT_DATA for `vmpl` (the firmware refuses
        one more privileged than the caller's); the report reaches the user only if its
        status is 0. Returns the report, -EIO, or the certificate pages needed as a
        positive count."""
        payload = ReportRequest(data, vmpl).to_bytes()
        answer = self._guest_request(cpu, MsgType.REPORT_REQ, payload, cert_pages)
        if isinstance(answer, int):
            return answer
        plain, needed = answer
        if needed:
            return needed
        try:
            response = ReportResponse.from_bytes(plain)
        except SnpFormatError:
            return -EIO
        if response.status or len(response.report) != REPORT_SIZE:
            return -EIO
        return response.report

    def _snp_report(self, cpu: GuestCpu, data_ptr: int, out_ptr: int, *_: int) -> int:
        if not snp_active(cpu):
            return -ENODEV
        data = self._from_user(cpu, data_ptr, 64)
        self._user_range(cpu, out_ptr, REPORT_SIZE)
        result = self._report(cpu, data, cpu.vmpl, None)
        if isinstance(result, int):
            return result
        self._to_user(cpu, out_ptr, result)
        return 0

    def _snp_ext_report(self, cpu: GuestCpu, data_ptr: int, out_ptr: int, certs_ptr: int,
                        len_ptr: int, *_: int) -> int:
        """The report and the hypervisor's certificate table (untrusted: a verifier checks
        the chain). `*len_ptr` is the buffer size in, the table size out; -ENOSPC and the
        size needed when the buffer is too small."""
        if not snp_active(cpu):
            return -ENODEV
        capacity = struct.unpack("<Q", self._from_user(cpu, len_ptr, 8))[0]
        data = self._from_user(cpu, data_ptr, 64)
        self._user_range(cpu, out_ptr, REPORT_SIZE)
        self._user_range(cpu, certs_ptr, min(capacity, CERTS_PAGES * PAGE))
        result = self._report(cpu, data, cpu.vmpl, min(capacity // PAGE, CERTS_PAGES))
        if isinstance(result, int) and result > 0:
            self._to_user(cpu, len_ptr, struct.pack("<Q", result * PAGE))
            return -ENOSPC
        if isinstance(result, int):
            return result
        self._to_user(cpu, out_ptr, result)
        table = self._cert_table(cpu, min(capacity, CERTS_PAGES * PAGE) // PAGE)
        if table is None:
            return -EIO
        self._to_user(cpu, certs_ptr, table)
        self._to_user(cpu, len_ptr, struct.pack("<Q", len(table)))
        return len(table)

    @staticmethod
    def _cert_table(cpu: GuestCpu, pages: int) -> bytes | None:
        """The certificate table the hypervisor left in the first `pages` certificate pages,
        cut after the furthest certificate; None if it does not parse."""
        table = cpu.read(CERTS_GPA, pages * PAGE)
        try:
            count = len(parse_cert_table(table))
        except SnpFormatError:
            return None
        size = max([_CERT_ENTRY.size * (count + 1)]  # the header, then the furthest blob
                   + [offset + length for _, offset, length in
                      (_CERT_ENTRY.unpack_from(table, i * _CERT_ENTRY.size)
                       for i in range(count))])
        return table[:size]

    def _snp_derived_key(self, cpu: GuestCpu, req_ptr: int, out_ptr: int, *_: int) -> int:
        """MSG_KEY_REQ: a key only this launch (or this chip) can derive again."""
        if not snp_active(cpu):
            return -ENODEV
        try:
            payload = KeyRequest.from_bytes(self._from_user(cpu, req_ptr, KEY_REQ_SIZE)).to_bytes()
        except SnpFormatError:
            return -EINVAL
        self._user_range(cpu, out_ptr, 32)
        answer = self._guest_request(cpu, MsgType.KEY_REQ, payload)
        if isinstance(answer, int):
            return answer
        try:
            response = KeyResponse.from_bytes(answer[0])
        except SnpFormatError:
            return -EIO
        if response.status:
            return -EIO
        self._to_user(cpu, out_ptr, response.derived_key)
        return 0

    # -- the SNP-bound vTPM ----------------------------------------------------------------------
    def _vtpm(self, cpu: GuestCpu) -> svsm_vtpm.SvsmVtpm:
        """The SNP-bound vTPM, made on first use with the boot's measurements extended into it
        (a kernel that resumed a migrated VM resumes the TPM from guest memory instead)."""
        if self.vtpm is None:
            vtpm = svsm_vtpm.SvsmVtpm(cpu, VTPM_GPA)
            if self.vtpm_event_log is not None:
                extend_log([svsm_vtpm.OnCpu(vtpm, cpu)], EventLog.from_bytes(self.vtpm_event_log))
            self.vtpm = vtpm
        return self.vtpm

    def _vtpm_extend(self, cpu: GuestCpu, pcr: int, data_ptr: int, length: int, *_: int) -> int:
        """Measure `length` bytes into SHA-256 PCR `pcr` of the in-VM TPM (SNP only)."""
        if not snp_active(cpu):
            return -ENODEV
        if length > _MAX_WRITE:
            return -EINVAL
        data = self._from_user(cpu, data_ptr, length)
        try:
            self._vtpm(cpu).extend(cpu, pcr, {tpm2.HashAlg.SHA256: hashlib.sha256(data).digest()})
        except LibtpmsError:
            return -EIO
        except svsm_vtpm.FAILURES:
            return -EINVAL
        return 0

    def _vtpm_evidence(self, cpu: GuestCpu, nonce_ptr: int, nonce_len: int, mask: int,
                       out_ptr: int, out_len: int) -> int:
        """The in-VM TPM's evidence for a nonce (report binding its AK, the AK, a quote of the
        SHA-256 PCRs in `mask`) into the program's buffer; its size, or -ERANGE with none."""
        if not snp_active(cpu):
            return -ENODEV
        if not 0 < nonce_len <= NONCE_MAX or not 0 < mask < 1 << svsm_vtpm.SHA256_PCRS:
            return -EINVAL
        nonce = self._from_user(cpu, nonce_ptr, nonce_len)
        self._user_range(cpu, out_ptr, out_len)
        try:
            made = self._vtpm(cpu).evidence(cpu, nonce, svsm_vtpm.pcr_mask(mask),
                                            lambda data: self._report(cpu, data, 0, None))
        except svsm_vtpm.FAILURES:
            return -EIO
        if isinstance(made, int):
            return made
        blob = made.to_bytes()
        if len(blob) > out_len:
            return -ERANGE
        self._to_user(cpu, out_ptr, blob)
        return len(blob)

    def _vtpm_event_log(self, cpu: GuestCpu, buf: int, capacity: int, *_: int) -> int:
        """The event log of the boot the SNP-bound vTPM measured, as `_tpm_event_log` gives
        the host vTPM's (the same log when both exist); -ENODEV outside SNP, and in a kernel
        that resumed a migrated VM (the log is not kept in guest memory)."""
        return self._log_to_user(cpu, self.vtpm_event_log, buf, capacity)

    # -- configfs-tsm reports ------------------------------------------------------------------
    @staticmethod
    def _tsm_reports(cpu: GuestCpu) -> tsm.TsmReports:
        """The report entries of this vCPU's VMPL, kept in its private TSM area; the floor
        is that VMPL, and only SNP has a provider."""
        base = TSM_GPA + cpu.vmpl * TSM_AREA

        def load(slot: int) -> bytes:
            return cpu.read(base + slot * tsm.SLOT_SIZE, tsm.SLOT_SIZE)

        def store(slot: int, data: bytes) -> None:
            cpu.write(base + slot * tsm.SLOT_SIZE, data.ljust(tsm.SLOT_SIZE, b"\0"))

        return tsm.TsmReports(load, store, cpu.vmpl, snp_active(cpu))

    def _path(self, cpu: GuestCpu, ptr: int) -> bytes | int:
        """A NUL-terminated path from the program, read a page at a time (never past the
        NUL); -ENAMETOOLONG without one in PATH_MAX bytes."""
        path = b""
        while len(path) < tsm.PATH_MAX:
            chunk = self._from_user(cpu, ptr + len(path), min(PAGE - (ptr + len(path)) % PAGE,
                                                              tsm.PATH_MAX - len(path)))
            end = chunk.find(b"\0")
            if end >= 0:
                return path + chunk[:end]
            path += chunk
        return -tsm.ENAMETOOLONG

    def _tsm_call(self, cpu: GuestCpu, path_ptr: int,
                  action: Callable[[tsm.TsmReports, bytes], int]) -> int:
        path = self._path(cpu, path_ptr)
        if isinstance(path, int):
            return path
        try:
            return action(self._tsm_reports(cpu), path)
        except tsm.TsmError as err:
            return -err.errno

    def _tsm_mkdir(self, cpu: GuestCpu, path_ptr: int, *_: int) -> int:
        """mkdir(2) of a report entry: /sys/kernel/config/tsm/report/NAME."""
        def mkdir(reports: tsm.TsmReports, path: bytes) -> int:
            reports.mkdir(path)
            return 0

        return self._tsm_call(cpu, path_ptr, mkdir)

    def _tsm_rmdir(self, cpu: GuestCpu, path_ptr: int, *_: int) -> int:
        def rmdir(reports: tsm.TsmReports, path: bytes) -> int:
            reports.rmdir(path)
            return 0

        return self._tsm_call(cpu, path_ptr, rmdir)

    def _tsm_write(self, cpu: GuestCpu, path_ptr: int, buf: int, length: int, *_: int) -> int:
        """write(2) of a whole attribute (inblob, privlevel); returns length."""
        if length > PAGE:  # neither attribute takes more; configfs buffers one page
            return -tsm.EFBIG
        data = self._from_user(cpu, buf, length)

        def write(reports: tsm.TsmReports, path: bytes) -> int:
            reports.write(path, data)
            return length

        return self._tsm_call(cpu, path_ptr, write)

    def _tsm_read(self, cpu: GuestCpu, path_ptr: int, buf: int, length: int, *_: int) -> int:
        """read(2) of an attribute from its start: the first `length` bytes into buf, the
        count returned. outblob/auxblob ask the Secure Processor only if an input changed."""
        def read(reports: tsm.TsmReports, path: bytes) -> int:
            data = reports.read(path, lambda inblob, vmpl: self._tsm_report(cpu, inblob, vmpl))
            self._to_user(cpu, buf, data[:length])
            return min(length, len(data))

        return self._tsm_call(cpu, path_ptr, read)

    def _tsm_report(self, cpu: GuestCpu, data: bytes, vmpl: int) -> tuple[bytes, bytes] | int:
        """The outblob and auxblob for a report entry: an extended request for `vmpl`, as
        Linux's sev-guest provider makes, with all the certificate pages there are."""
        result = self._report(cpu, data, vmpl, CERTS_PAGES)
        if isinstance(result, int):
            return -ENOSPC if result > 0 else result
        table = self._cert_table(cpu, CERTS_PAGES)
        return -EIO if table is None else (result, table)

    @staticmethod
    def _cpuid_page_entry(cpu: GuestCpu, leaf: int) -> tuple[int, int, int, int] | None:
        """Under SNP, a leaf's registers from the launched CPUID page (the firmware refused
        a page claiming what the chip lacks), or None to ask the hypervisor. sevsim's page
        holds only leaves without subleaves."""
        if not snp_active(cpu):
            return None
        for entry in parse_cpuid_page(cpu.read(SNP_CPUID_GPA, PAGE)):
            if entry.leaf == leaf:
                return entry.registers
        return None

    # -- injected events ----------------------------------------------------------------------
    def on_event(self, cpu: GuestCpu, vector: int, error_code: int) -> None:
        """An event from the hypervisor (EVENTINJ) through the IDT: #VC under SEV-ES, the
        int 0x80 gate of the 32-bit system calls. #HV (vector 28) finds its doorbell page
        empty, and any other vector is an interrupt no device of this guest raises: both
        are acknowledged with nothing to do."""
        if vector == VC_VECTOR and encrypted_state(cpu):
            self._injected_vc(cpu, error_code)
        elif vector == IA32_SYSCALL_VECTOR:
            self._int80(cpu)

    def _injected_vc(self, cpu: GuestCpu, error_code: int) -> None:
        """#VC as the handler sees it: the exit code is all it is told. With
        KernelOption.VC_INSN_CHECK it first checks that the instruction at RIP is that exit's (the
        WeSee fix); without, it emulates what the exit code names and steps over it."""
        rip = cpu.reg("rip")
        try:
            code: ExitCode | None = ExitCode(error_code)
        except ValueError:
            code = None
        insn = _VC_INSNS.get(code) if code is not None else None
        if self.options(cpu) & KernelOption.VC_INSN_CHECK and (
                insn is None or cpu.read(rip, len(insn)) != insn):
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                                f"#VC with exit code 0x{error_code:x} at RIP 0x{rip:x}, "
                                "whose instruction does not cause that exit")
        if code is None or insn is None:
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                                f"#VC with exit code 0x{error_code:x} the handler cannot "
                                "emulate")
        if self.on_vc(cpu, code, 0):
            cpu.set_reg("rip", rip + len(insn))

    def _int80(self, cpu: GuestCpu) -> None:
        """The int 0x80 gate: the 32-bit system calls (number in EAX, result in RAX), unless
        the program turned IA32 emulation off: then there is no gate and the program dies."""
        if self.options(cpu) & KernelOption.NO_IA32_EMULATION:
            raise GuestFault(f"vCPU {cpu.index}: int 0x80 with IA32 emulation disabled: "
                             "no gate, SIGSEGV kills the program")
        nr = cpu.reg("rax") & 0xFFFF_FFFF
        if nr == 1:  # exit(EBX)
            self._exit(cpu, cpu.reg("rbx") & 0xFFFF_FFFF)
            return
        # restart_syscall with nothing to restart; getpid of the only process there is
        cpu.set_reg("rax", {0: -EINTR, 20: 1}.get(nr, -ENOSYS))

    # -- #VC (SEV-ES) --------------------------------------------------------------------------
    def on_vc(self, cpu: GuestCpu, code: ExitCode, info1: int) -> bool:
        """Emulate an intercepted instruction through the GHCB, copying in only what the
        hypervisor needs for it and back only what the instruction produces."""
        if code is ExitCode.IOIO:
            port, size, is_in = ioio_decode(info1)
            mask = (1 << 8 * size) - 1
            rax = cpu.reg("rax")
            answer = self.ghcb.call(cpu, code, info1, 0, {} if is_in else {"rax": rax & mask},
                                    ("rax",) if is_in else (),
                                    f"{'IN from' if is_in else 'OUT to'} port 0x{port:x}")
            if answer is not None and is_in:
                cpu.set_reg("rax", rax & ~mask | answer["rax"] & mask)
        elif code is ExitCode.CPUID:
            leaf, subleaf = cpu.reg("rax") & 0xFFFF_FFFF, cpu.reg("rcx") & 0xFFFF_FFFF
            checked = self._cpuid_page_entry(cpu, leaf)
            if checked is not None:  # SNP: the firmware-checked answer, no hypervisor asked
                for name, value in zip(("rax", "rbx", "rcx", "rdx"), checked, strict=True):
                    cpu.set_reg(name, value)
                return True
            answer = self.ghcb.call(cpu, code, 0, 0, {"rax": leaf, "rcx": subleaf},
                                    ("rax", "rbx", "rcx", "rdx"), f"CPUID 0x{leaf:x}")
            if answer is not None:
                for name in ("rax", "rbx", "rcx", "rdx"):
                    cpu.set_reg(name, answer[name] & 0xFFFF_FFFF)
        elif code is ExitCode.MSR:
            msr, write = cpu.reg("rcx") & 0xFFFF_FFFF, info1 == MSR_WRITE
            inputs = {"rcx": msr}
            if write:
                inputs.update(rax=cpu.reg("rax") & 0xFFFF_FFFF, rdx=cpu.reg("rdx") & 0xFFFF_FFFF)
            answer = self.ghcb.call(cpu, code, info1, 0, inputs, () if write else ("rax", "rdx"),
                                    f"{'WRMSR' if write else 'RDMSR'} of MSR 0x{msr:x}")
            if answer is not None and not write:
                cpu.set_reg("rax", answer["rax"] & 0xFFFF_FFFF)
                cpu.set_reg("rdx", answer["rdx"] & 0xFFFF_FFFF)
        elif code is ExitCode.VMMCALL:
            inputs = {name: cpu.reg(name) for name in ("rax", "rbx", "rcx", "rdx", "rsi")}
            answer = self.ghcb.call(cpu, code, 0, 0, {**inputs, "cpl": 0}, ("rax",),
                                    f"hypercall 0x{inputs['rax']:x}")
            if answer is not None:
                cpu.set_reg("rax", answer["rax"])
        elif code is ExitCode.PAGE_NOT_VALIDATED:  # Linux has no way back either
            self.ghcb.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                                f"#VC page not validated at GPA 0x{info1:x}", PageNotValidated)
        else:
            raise GuestFault(f"vCPU {cpu.index}: #VC for exit code {code!r} the guest kernel "
                             "does not handle")
        return answer is not None


class _PageKeyStore:
    """The agent's private scalar in one of the kernel's private pages (ciphertext in DRAM),
    wiped when the exchange ends."""

    def __init__(self, cpu: GuestCpu, gpa: int) -> None:
        self.cpu, self.gpa = cpu, gpa

    def store(self, scalar: bytes) -> None:
        """Write the scalar, length first."""
        self.cpu.write(self.gpa, struct.pack("<H", len(scalar)) + scalar)

    def load(self) -> bytes:
        """The scalar written last."""
        (size,) = struct.unpack("<H", self.cpu.read(self.gpa, 2))
        return self.cpu.read(self.gpa + 2, min(size, PAGE - 2))

    def wipe(self) -> None:
        """Zero the page."""
        self.cpu.write(self.gpa, bytes(PAGE))
