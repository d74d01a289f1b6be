"""vCPUs: Unicorn x86-64 engines running guest machine code, with AMD SVM exits.

Intercepted instructions leave the guest through `exit_handler` (the hypervisor's #VMEXIT
path), which sees and changes guest registers only through the VMCB. Events that stay
inside the VM (system calls from guest programs) go to the guest's own software, the guest
kernel, through a `GuestCpu` view that only the guest holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

import numpy as np
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_QUERY_TIMEOUT,
    Uc,
    UcError,
)
from unicorn import x86_const as x86

from sevsim.abi.cpuid import MSR_SEV_STATUS, SevStatusMsr
from sevsim.abi.svm import (
    MSR_READ,
    MSR_WRITE,
    NPF_FETCH,
    NPF_WRITE,
    ExitCode,
    ioio_info,
)
from sevsim.errors import GuestFault, VmStateError
from sevsim.hw.chips import ChipPreset, GuestMode
from sevsim.hw.engine import PAGE
from sevsim.hw.mmu import GuestAddressSpace

REGISTERS: dict[str, int] = {
    name: getattr(x86, f"UC_X86_REG_{name.upper()}")
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                 "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cr0", "cr3", "cr4",
                 "fs_base", "gs_base")
}
_UNTIL = 0xFFFF_FFFF_FFFF_F000
_EXCEPTIONS = {0: "#DE divide error", 1: "#DB", 3: "#BP breakpoint", 4: "#OF overflow",
               5: "#BR", 6: "#UD invalid opcode", 7: "#NM", 8: "#DF double fault",
               13: "#GP general protection", 14: "#PF page fault", 16: "#MF", 17: "#AC",
               18: "#MC", 19: "#XM SIMD exception"}


class VcpuState(Enum):
    WAIT_FOR_SIPI = "wait-for-sipi"
    RUNNABLE = "runnable"
    HALTED = "halted"
    STOPPED = "stopped"


@dataclass
class VmExit:
    """What #VMEXIT reports in the VMCB control area."""

    code: ExitCode
    info1: int = 0
    info2: int = 0


ExitHandler = Callable[["Vcpu", VmExit], bool]
_T = TypeVar("_T")


class GuestSoftware(Protocol):
    """What runs inside the VM besides the program: the guest kernel."""

    def on_reset(self, cpu: GuestCpu) -> None: ...

    def on_syscall(self, cpu: GuestCpu) -> None: ...


class Vmcb:
    """The VMCB: control fields for the hypervisor, and the save area while it is readable."""

    def __init__(self, vcpu: Vcpu, asid: int) -> None:
        self._vcpu = vcpu
        self.asid = asid
        self.exit_code: int = 0
        self.exit_info1: int = 0
        self.exit_info2: int = 0

    @property
    def save_area_readable(self) -> bool:
        """Under SEV-ES and SNP the save area is the encrypted VMSA, not host memory."""
        return self._vcpu.mode in (GuestMode.NONE, GuestMode.SEV)

    def _check(self, name: str) -> int:
        if not self.save_area_readable:
            raise VmStateError(
                f"{self._vcpu.mode.value}: guest registers are in the encrypted VMSA")
        try:
            return REGISTERS[name]
        except KeyError:
            raise VmStateError(f"no register {name!r} in the VMCB save area") from None

    def read(self, name: str) -> int:
        return int(self._vcpu.uc.reg_read(self._check(name)))

    def write(self, name: str, value: int) -> None:
        self._vcpu.uc.reg_write(self._check(name), value & (1 << 64) - 1)


class Vcpu:
    """One virtual CPU: a Unicorn engine over the VM's address space."""

    def __init__(self, index: int, space: GuestAddressSpace, mode: GuestMode, chip: ChipPreset,
                 asid: int, exit_handler: ExitHandler) -> None:
        self.index = index
        self.mode = mode
        self.chip = chip
        self.space = space
        self.exit_handler = exit_handler
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.vmcb = Vmcb(self, asid)
        self.state = VcpuState.RUNNABLE if index == 0 else VcpuState.WAIT_FOR_SIPI
        self.guest: GuestSoftware | None = None
        self._needs_reset = index == 0
        self._stop_requested = False
        self._pending: BaseException | None = None
        self._msr_sites: set[int] = set()
        self._view = GuestCpu(self)
        space.attach(self.uc)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED
                         | UC_HOOK_MEM_FETCH_UNMAPPED, self._on_unmapped)

    # -- the hypervisor's controls ---------------------------------------------------------------
    def attach_guest(self, guest: GuestSoftware) -> None:
        self.guest = guest

    def start(self, rip: int, rsp: int, rdi: int = 0, rsi: int = 0) -> None:
        """INIT-SIPI: bring an application processor up at `rip`."""
        if self.state is not VcpuState.WAIT_FOR_SIPI:
            raise VmStateError(f"vCPU {self.index} is {self.state.value}, not waiting for SIPI")
        for name, value in (("rip", rip), ("rsp", rsp), ("rdi", rdi), ("rsi", rsi)):
            self.uc.reg_write(REGISTERS[name], value)
        self.state = VcpuState.RUNNABLE

    def stop(self) -> None:
        """Take the vCPU off the CPU for good (VM shutdown)."""
        self.state = VcpuState.STOPPED
        self._stop_requested = True
        self.uc.emu_stop()

    def run(self, budget_s: float) -> None:
        """Run until the quantum ends, the vCPU halts, or an exit stops it."""
        if self.state is not VcpuState.RUNNABLE:
            return
        if self._needs_reset:
            self._needs_reset = False
            if self.guest is not None:
                self.guest.on_reset(self._view)
                if self.state is not VcpuState.RUNNABLE:
                    return
        self._stop_requested = False
        self._pending = None
        rip = self.uc.reg_read(x86.UC_X86_REG_RIP)
        try:
            self.uc.emu_start(rip, _UNTIL, timeout=max(1, int(budget_s * 1e6)))
        except UcError as err:
            if self._pending is None:
                self._pending = self._fault(f"{err} at RIP 0x{self._rip():x}")
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
        if self._stop_requested or self.uc.query(UC_QUERY_TIMEOUT):
            return
        rip = self.uc.reg_read(x86.UC_X86_REG_RIP)
        if rip == _UNTIL:
            raise self._fault("guest jumped to the end of the address space")
        self.state = VcpuState.HALTED
        self._exit(VmExit(ExitCode.HLT, 0, rip))

    def watch_msr_instructions(self, gpa: int, code: bytes) -> None:
        """Trap RDMSR/WRMSR in an executable range (Unicorn has no MSR hook of its own).

        Every 0F 30 / 0F 32 byte pair gets a one-address code hook; a pair that is not an
        instruction start never executes there, so a false match costs nothing."""
        octets = np.frombuffer(code, dtype=np.uint8)
        pairs = (octets[:-1] == 0x0F) & ((octets[1:] == 0x30) | (octets[1:] == 0x32))
        for site in (gpa + np.flatnonzero(pairs)).tolist():
            if site not in self._msr_sites:
                self._msr_sites.add(site)
                self.uc.hook_add(UC_HOOK_CODE, self._on_msr_site, None, site, site)

    # -- exits -----------------------------------------------------------------------------
    def _exit(self, exit: VmExit) -> bool:
        self.vmcb.exit_code, self.vmcb.exit_info1, self.vmcb.exit_info2 = (
            exit.code, exit.info1, exit.info2)
        return self.exit_handler(self, exit)

    def _fault(self, what: str) -> GuestFault:
        """An exception the guest cannot take: triple fault, SHUTDOWN intercept, VM stops."""
        self.state = VcpuState.STOPPED
        self.vmcb.exit_code = ExitCode.SHUTDOWN
        return GuestFault(f"vCPU {self.index}: {what}")

    def _guarded(self, action: Callable[[], _T]) -> _T | None:
        try:
            return action()
        except BaseException as err:  # carried out of Unicorn and re-raised by run()
            if self._pending is None:
                self._pending = err
            self.uc.emu_stop()
            return None

    def _rip(self) -> int:
        return int(self.uc.reg_read(x86.UC_X86_REG_RIP))

    def _on_in(self, uc: Uc, port: int, size: int, _ud: object) -> int:
        def handle() -> int:
            self._exit(VmExit(ExitCode.IOIO, ioio_info(port, size, True), self._rip() + 1))
            return int(uc.reg_read(x86.UC_X86_REG_RAX)) & ((1 << (8 * size)) - 1)
        return int(self._guarded(handle) or 0)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _ud: object) -> None:
        def handle() -> None:
            if not self._exit(VmExit(ExitCode.IOIO, ioio_info(port, size, False),
                                     self._rip() + 1)):
                self.stop()
        self._guarded(handle)

    def _on_cpuid(self, uc: Uc, _ud: object) -> int:
        self._guarded(lambda: self._exit(VmExit(ExitCode.CPUID, 0, self._rip() + 2)))
        return 1

    def _on_syscall(self, uc: Uc, _ud: object) -> None:
        guest = self.guest
        if guest is None:
            self._pending = self._pending or self._fault("SYSCALL with no guest kernel")
            uc.emu_stop()
            return
        self._guarded(lambda: guest.on_syscall(self._view))

    def _on_msr_site(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        op = bytes(uc.mem_read(address, 2))
        if op[0] != 0x0F or op[1] not in (0x30, 0x32):
            return

        def handle() -> None:
            self._msr(op[1] == 0x30)
            uc.reg_write(x86.UC_X86_REG_RIP, address + 2)
        self._guarded(handle)

    def _msr(self, write: bool) -> None:
        msr = int(self.uc.reg_read(x86.UC_X86_REG_RCX)) & 0xFFFF_FFFF
        if msr == MSR_SEV_STATUS and not write:
            value = self.sev_status()
            self.uc.reg_write(x86.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
            self.uc.reg_write(x86.UC_X86_REG_RDX, value >> 32)
            return
        if not self._exit(VmExit(ExitCode.MSR, MSR_WRITE if write else MSR_READ,
                                 self._rip() + 2)):
            self.stop()

    def sev_status(self) -> int:
        """SEV_STATUS as the hardware reports it to this guest; no hypervisor can change it."""
        bits = {GuestMode.NONE: 0, GuestMode.SEV: SevStatusMsr.SEV,
                GuestMode.SEV_ES: SevStatusMsr.SEV | SevStatusMsr.SEV_ES,
                GuestMode.SNP: SevStatusMsr.SEV | SevStatusMsr.SEV_ES | SevStatusMsr.SNP}
        return int(bits[self.mode])

    def _on_invalid(self, uc: Uc, _ud: object) -> bool:
        rip = self._rip()
        try:
            op = bytes(uc.mem_read(rip, 3))
        except UcError:
            op = b""
        if op == b"\x0f\x01\xd9":  # VMMCALL
            def handle() -> None:
                if self._exit(VmExit(ExitCode.VMMCALL, 0, rip + 3)):
                    uc.reg_write(x86.UC_X86_REG_RIP, rip + 3)
                else:
                    self.stop()
            self._guarded(handle)
            return True
        self._pending = self._pending or self._fault(
            f"#UD invalid opcode {op.hex()} at RIP 0x{rip:x}")
        return False

    def _on_interrupt(self, uc: Uc, intno: int, _ud: object) -> None:
        what = _EXCEPTIONS.get(intno, f"vector {intno}")
        self._pending = self._pending or self._fault(
            f"unhandled exception {what} at RIP 0x{self._rip():x}")
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _ud: object) -> bool:
        info1 = (NPF_WRITE if access == UC_MEM_WRITE_UNMAPPED else 0) | (
            NPF_FETCH if access == UC_MEM_FETCH_UNMAPPED else 0)

        def handle() -> bool:
            if self._exit(VmExit(ExitCode.NPF, info1, address)):
                return True
            raise self._fault(f"nested page fault at GPA 0x{address:x} the hypervisor "
                              f"did not resolve (RIP 0x{self._rip():x})")
        return bool(self._guarded(handle))


class GuestCpu:
    """The vCPU as software inside the VM sees it: its own registers, memory and instructions."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu

    @property
    def index(self) -> int:
        return self._vcpu.index

    def reg(self, name: str) -> int:
        return int(self._vcpu.uc.reg_read(REGISTERS[name]))

    def set_reg(self, name: str, value: int) -> None:
        self._vcpu.uc.reg_write(REGISTERS[name], value & (1 << 64) - 1)

    def read(self, gpa: int, length: int) -> bytes:
        """Guest-physical read through this VM's own mapping (private pages in plaintext)."""
        try:
            return bytes(self._vcpu.uc.mem_read(gpa, length))
        except UcError as err:
            raise GuestFault(f"guest read of 0x{gpa:x}+{length}: {err}") from None

    def write(self, gpa: int, data: bytes) -> None:
        try:
            self._vcpu.uc.mem_write(gpa, data)
        except UcError as err:
            raise GuestFault(f"guest write of 0x{gpa:x}+{len(data)}: {err}") from None

    def set_c_bit(self, gpa: int, npages: int, private: bool, zero: bool = False) -> None:
        """Mark pages private (C=1) or shared in the guest page tables."""
        first = gpa // PAGE
        self._vcpu.space.set_c_bit(first, first + npages, private, zero)

    def mark_executable(self, gpa: int, length: int) -> None:
        """Guest page tables say this range holds code (the CPU decodes it)."""
        self._vcpu.watch_msr_instructions(gpa, self.read(gpa, length))

    def sev_status(self) -> int:
        """RDMSR 0xC0010131, which the hardware answers without an intercept."""
        return self._vcpu.sev_status()

    def out(self, port: int, value: int, size: int = 1) -> bool:
        """Execute OUT: the hypervisor sees the port and RAX. False if it stopped the vCPU."""
        saved = self.reg("rax"), self.reg("rdx")
        self.set_reg("rax", value)
        self.set_reg("rdx", port)
        keep = self._vcpu._exit(VmExit(ExitCode.IOIO, ioio_info(port, size, False), 0))
        self.set_reg("rax", saved[0])
        self.set_reg("rdx", saved[1])
        return keep

    def vmmcall(self, nr: int, *args: int) -> int:
        """Execute VMMCALL with KVM's convention: RAX=nr, RBX, RCX, RDX, RSI, R8; result RAX."""
        names = ("rbx", "rcx", "rdx", "rsi", "r8")
        saved = {n: self.reg(n) for n in ("rax", *names)}
        self.set_reg("rax", nr)
        for name, value in zip(names, args, strict=False):
            self.set_reg(name, value)
        self._vcpu._exit(VmExit(ExitCode.VMMCALL, 0, 0))
        result = self.reg("rax")
        for name, value in saved.items():
            self.set_reg(name, value)
        return result

    def halt(self) -> None:
        """HLT with interrupts off: this vCPU is done."""
        self._vcpu.state = VcpuState.HALTED
        self._vcpu._stop_requested = True
        self._vcpu.uc.emu_stop()
        self._vcpu._exit(VmExit(ExitCode.HLT, 0, 0))
