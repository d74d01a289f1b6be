"""The guest kernel: boots the program, owns the page tables' C-bits, serves system calls.

It plays the part of Linux (or an SVSM at VMPL0) inside the VM and reaches memory only
through its vCPU's guest-physical view. Anything the hypervisor must learn (console bytes,
which pages are shared, the exit code) it hands over through exits, as a real guest does;
under SEV-ES through the GHCB, from its #VC handler (ghcb.py).

Below the program it keeps a state page (application-processor start requests, the GHCB
protocol version) and one GHCB page per vCPU. Application processors start from their reset
state in every mode: the boot vCPU writes what an AP should run into the state page and asks
the hypervisor only to kick it, so a hypervisor that cannot set registers (SEV-ES) can still
start one, and one that kicks an AP nobody asked for finds it halting at once.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

from sevsim.abi.bootinfo import BOOTINFO_GPA, SNP_CPUID_GPA, SNP_SECRETS_GPA, BootInfo
from sevsim.abi.cpuid import parse_cpuid_page
from sevsim.abi.ghcb import PSC_PRIVATE, PSC_SHARED, TERM_SET_GENERAL
from sevsim.abi.svm import (
    DEBUG_EXIT_PORT,
    IOIO_REP,
    IOIO_STR,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    MSR_WRITE,
    SERIAL_PORT,
    SEVSIM_HC_START_VCPU,
    ExitCode,
    ioio_decode,
    ioio_info,
)
from sevsim.errors import GuestFault, RmpInstructionError
from sevsim.guest.ghcb import TERM_PSC, GhcbClient, encrypted_state, snp_active
from sevsim.hw.cpu import GuestCpu

PAGE = 4096
MAX_VCPUS = 64
STATE_GPA = 0x10000  # the kernel's state page (private), clear of the VMM's launched pages
GHCB_GPA = 0x11000  # GHCB of vCPU i at GHCB_GPA + i * PAGE (shared under SEV-ES)
KERNEL_END = GHCB_GPA + MAX_VCPUS * PAGE  # programs may share or unshare pages from here
_VERSION_GPA = STATE_GPA  # u64: negotiated GHCB protocol version
_AP_START = struct.Struct("<QQQQ")  # entry, stack top, RDI, RSI; entry 0: no request
_AP_SLOTS_GPA = STATE_GPA + 0x100
EINVAL = 22
ENOSYS = 38

SYS_WRITE = 1
SYS_EXIT = 60
SYS_SET_SHARED = 100
SYS_SET_PRIVATE = 101
SYS_SEV_STATUS = 102
SYS_VCPU_INFO = 103
SYS_VCPU_START = 104
SYS_VCPU_HALT = 105
_MAX_WRITE = 1 << 20


def kernel_identity() -> bytes:
    """SHA-384 of this kernel's sources: what the launch measurement binds the guest to."""
    here = Path(__file__).parent
    return hashlib.sha384(b"".join((here / name).read_bytes()
                                   for name in ("kernel.py", "ghcb.py"))).digest()


def _runs(gpns: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, stop) runs."""
    runs: list[tuple[int, int]] = []
    for gpn in gpns:
        if runs and runs[-1][1] == gpn:
            runs[-1] = (runs[-1][0], gpn + 1)
        else:
            runs.append((gpn, gpn + 1))
    return runs


class GuestKernel:
    """One kernel instance per VM, shared by its vCPUs."""

    def __init__(self) -> None:
        self.boot: BootInfo | None = None
        self.ghcb = GhcbClient(GHCB_GPA, _VERSION_GPA)

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
        """A vCPU leaves reset: the boot vCPU sets the VM up, an AP runs what it was asked to."""
        if cpu.index == 0:
            self._boot(cpu)
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
        self._enter(cpu, boot.entry, boot.stack_top, cpu.index, 0)

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
        nr = cpu.reg("rax")
        args = [cpu.reg(r) for r in ("rdi", "rsi", "rdx", "r10", "r8")]
        handlers: dict[int, Callable[..., int | None]] = {
            SYS_WRITE: self._write, SYS_EXIT: self._exit, SYS_SET_SHARED: self._set_shared,
            SYS_SET_PRIVATE: self._set_private, SYS_SEV_STATUS: self._sev_status,
            SYS_VCPU_INFO: self._vcpu_info, SYS_VCPU_START: self._vcpu_start,
            SYS_VCPU_HALT: self._vcpu_halt,
        }
        handler = handlers.get(nr)
        result = handler(cpu, *args) if handler else -ENOSYS
        if result is not None:
            cpu.set_reg("rax", result)

    def _write(self, cpu: GuestCpu, buf: int, length: int, *_: int) -> int:
        if length > _MAX_WRITE:
            return -EINVAL
        data = cpu.read(buf, length)
        if encrypted_state(cpu):  # REP OUTSB through the GHCB's shared buffer
            size = self.ghcb.scratch(cpu)[1]
            for start in range(0, length, size):
                if not self._outs(cpu, SERIAL_PORT, data[start:start + size]):
                    break
            return length
        for byte in data:
            if not cpu.out(SERIAL_PORT, byte):
                break
        return length

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
        if snp_active(cpu):
            self._validate(cpu, addr, npages, False)
            self.ghcb.psc(cpu, addr // PAGE, npages, PSC_SHARED)
        cpu.set_c_bit(addr, npages, private=False)
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, 0)
        return 0

    def _set_private(self, cpu: GuestCpu, addr: int, npages: int, *_: int) -> int:
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, KVM_MAP_GPA_RANGE_ENCRYPTED)
        if snp_active(cpu):
            self.ghcb.psc(cpu, addr // PAGE, npages, PSC_PRIVATE)
            self._validate(cpu, addr, npages, True)
        cpu.set_c_bit(addr, npages, private=True)
        return 0

    def _sev_status(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.sev_status()

    def _vcpu_info(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.index | self.boot_info(cpu).nvcpus << 32

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
        else:
            raise GuestFault(f"vCPU {cpu.index}: #VC for exit code {code!r} the guest kernel "
                             "does not handle")
        return answer is not None
