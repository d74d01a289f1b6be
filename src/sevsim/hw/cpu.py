"""vCPUs: Unicorn x86-64 engines running guest machine code, with AMD SVM exits.

Intercepted instructions leave the guest through `exit_handler` (the hypervisor's #VMEXIT
path), which sees and changes guest registers only through the VMCB. Events that stay
inside the VM (system calls from guest programs) go to the guest's own software, the guest
kernel, through a `GuestCpu` view that only the guest holds.

Under SEV-ES the register state is not the hypervisor's to see. At every exit the vCPU writes
it into its VMSA page, encrypted under the VM key, and records an integrity value no software
can reach; VMRUN checks the page against that value before the guest runs again and refuses a
page the host changed. The instructions that would have exited (IOIO, CPUID, MSR, VMMCALL)
raise #VC in the guest instead: the guest kernel decides what to put in the GHCB, a page it
shares, and leaves with VMGEXIT. Only HLT, #NPF, VMGEXIT and the end of a time slice still
exit on their own.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar
from weakref import WeakKeyDictionary

import numpy as np
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_PROT,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as x86

from sevsim.abi.cpuid import MSR_GHCB, MSR_SEV_STATUS, SevStatusMsr
from sevsim.abi.rmp import PERM_READ, PERM_WRITE
from sevsim.abi.svm import (
    MSR_READ,
    MSR_WRITE,
    NPF_FETCH,
    NPF_PRESENT,
    NPF_RMP,
    NPF_VMPL,
    NPF_WRITE,
    ExitCode,
    ioio_info,
)
from sevsim.abi.vmsa import (
    GPRS,
    SEV_FEATURES_ALTERNATE_INJECTION,
    SEV_FEATURES_RESTRICTED_INJECTION,
    SEV_FEATURES_VMSA_REG_PROT,
    Segment,
    Vmsa,
    protect_registers,
    unprotect_registers,
)
from sevsim.errors import ConfigError, GuestFault, GuestTimeout, VmrunError, VmStateError
from sevsim.hw.chips import ChipPreset, GuestMode
from sevsim.hw.engine import PAGE
from sevsim.hw.memory import RAW, MemoryController
from sevsim.hw.mmu import RMP_NOT_VALIDATED, RMP_NPF, GuestAddressSpace
from sevsim.hw.quantum import Quantum, SliceTimer
from sevsim.hw.tlb import WINDOW_BASE, WINDOW_PAGES, tlb_of
from sevsim.hw.unicorn_c import RegisterReader

REGISTERS: dict[str, int] = {
    name: getattr(x86, f"UC_X86_REG_{name.upper()}")
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                 "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cr0", "cr3", "cr4",
                 "fs_base", "gs_base")
}
_UNTIL = 0xFFFF_FFFF_FFFF_F000
# Translated code per engine. Guests are small C programs (hello's code is a few KiB, bench's
# inner loops fit many times over); Unicorn's default buffer is big enough for the kernel to
# back it with a 2 MiB huge page on first use, two thirds of an idle engine's memory. A full
# buffer is flushed and refilled, which costs time only to guests with much more hot code.
TB_CACHE_BYTES = 1 << 20
_MSR_EFER = 0xC000_0080
# What a world switch moves between the engine and the VMSA (names as in abi.vmsa).
_SAVED = (*GPRS, "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "dr7", "mxcsr")
_SAVED_IDS = tuple(getattr(x86, f"UC_X86_REG_{n.upper()}") for n in _SAVED)
_X87 = {"x87_fcw": x86.UC_X86_REG_FPCW, "x87_fsw": x86.UC_X86_REG_FPSW}
_SELECTORS = {n: getattr(x86, f"UC_X86_REG_{n.upper()}") for n in ("es", "cs", "ss", "ds",
                                                                    "fs", "gs")}
_BASES = {"fs": x86.UC_X86_REG_FS_BASE, "gs": x86.UC_X86_REG_GS_BASE}
_XMM_IDS = tuple(getattr(x86, f"UC_X86_REG_XMM{i}") for i in range(16))
# Everything a world switch saves but EFER (an MSR), in one batch: a read each would cost more
# than the rest of the switch.
_SAVE_READER = RegisterReader((*_SAVED_IDS, *_X87.values(), *_SELECTORS.values(),
                               *_BASES.values(), *_XMM_IDS))
_NPF_RETRIES = 1000  # a guest the hypervisor keeps resuming into the same #NPF is livelocked
_CONTROL = ("cr0", "cr3", "cr4", "efer")  # the mode the engine runs in; VMRUN cannot change it
_EXCEPTIONS = {0: "#DE divide error", 1: "#DB", 3: "#BP breakpoint", 4: "#OF overflow",
               5: "#BR", 6: "#UD invalid opcode", 7: "#NM", 8: "#DF double fault",
               13: "#GP general protection", 14: "#PF page fault", 16: "#MF", 17: "#AC",
               18: "#MC", 19: "#XM SIMD exception"}
_PTE_ADDRESS = ((1 << 52) - 1) & ~0xFFF  # a page-table entry's frame address bits
HV_VECTOR = 28  # #HV: the only event Restricted Injection lets the hypervisor inject
VC_VECTOR = 29  # #VC: its error code is the exit code the guest's handler acts on


class VcpuState(Enum):
    """What the scheduler knows of a vCPU: an AP waiting for its start-up IPI, runnable,
    halted (HLT) or stopped for good."""

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


@dataclass(frozen=True)
class Event:
    """What EVENTINJ holds: a vector the CPU delivers to the guest at VMRUN, and its error
    code (for #VC, the exit code the guest's handler is to emulate)."""

    vector: int
    error_code: int = 0


ExitHandler = Callable[["Vcpu", VmExit], bool]
_T = TypeVar("_T")


class GuestSoftware(Protocol):
    """What runs inside the VM besides the program: the guest kernel."""

    def on_reset(self, cpu: GuestCpu) -> None:
        """A vCPU leaves reset (the boot vCPU at launch, an AP when started): set it up."""
        ...

    def on_syscall(self, cpu: GuestCpu) -> None:
        """Serve the SYSCALL the program just executed (number in RAX, result back in RAX)."""
        ...

    def on_vc(self, cpu: GuestCpu, code: ExitCode, info1: int) -> bool:
        """#VC (SEV-ES): emulate the instruction that would have exited. `info1` is what the
        handler's instruction decoder finds (EXITINFO1: the IOIO operand, MSR read/write);
        the vCPU then moves past the instruction. False stops the vCPU."""
        ...

    def on_event(self, cpu: GuestCpu, vector: int, error_code: int) -> None:
        """An event the hypervisor injected (EVENTINJ) arrives through the guest's IDT: the
        handler for `vector` runs before the next instruction, with `error_code`."""
        ...


G = TypeVar("G", bound=GuestSoftware)


class VmsaSeals:
    """Integrity values of VMSA pages, in storage only the SoC reaches (the Secure Processor
    writes one at LAUNCH_UPDATE_VMSA, the CPU at every #VMEXIT, VMRUN compares)."""

    def __init__(self) -> None:
        self._seals: dict[int, bytes] = {}

    def seal(self, asid: int, spa: int, page: bytes) -> None:
        """Record a VMSA page's integrity value as the page is now."""
        self._seals[spa] = self._value(asid, spa, page)

    def check(self, asid: int, spa: int, page: bytes) -> bool:
        """Whether a VMSA page still holds what was last sealed (VMRUN refuses it otherwise)."""
        return self._seals.get(spa) == self._value(asid, spa, page)

    @staticmethod
    def _value(asid: int, spa: int, page: bytes) -> bytes:
        return hashlib.sha256(asid.to_bytes(4, "little") + spa.to_bytes(8, "little")
                              + page).digest()


_SEALS: WeakKeyDictionary[MemoryController, VmsaSeals] = WeakKeyDictionary()


def vmsa_seals(memory: MemoryController) -> VmsaSeals:
    """The VMSA seal store of the SoC this memory controller belongs to."""
    return _SEALS.setdefault(memory, VmsaSeals())


class Vmcb:
    """The VMCB: control fields for the hypervisor, and the save area while it is readable."""

    def __init__(self, vcpu: Vcpu, asid: int) -> None:
        self._vcpu = vcpu
        self.asid = asid
        self.exit_code: int = 0
        self.exit_info1: int = 0
        self.exit_info2: int = 0
        self.ghcb_gpa: int = 0  # SEV-ES: the guest's GHCB MSR at VMGEXIT, loaded back at VMRUN
        self.tlb_control = False  # TLB_CONTROL: flush this ASID's TLB entries at the next VMRUN
        self.event_inj: Event | None = None  # EVENTINJ: delivered (and cleared) at VMRUN

    def inject(self, vector: int, error_code: int = 0) -> None:
        """Set EVENTINJ: the next VMRUN delivers `vector` to the guest before its next
        instruction (from an exit handler: as soon as the exit returns to guest code).
        Under SEV-SNP Restricted Injection that VMRUN refuses any vector but #HV."""
        if not 0 <= vector < 256 or not 0 <= error_code < 1 << 64:
            raise ConfigError(f"cannot inject vector {vector} with error code {error_code}")
        self.event_inj = Event(vector, error_code)
        self._vcpu.preempt()

    @property
    def save_area_readable(self) -> bool:
        """Under SEV-ES and SNP the save area is the encrypted VMSA, not host memory."""
        return self._vcpu.mode in (GuestMode.NONE, GuestMode.SEV)

    def check_readable(self) -> None:
        """VmStateError unless the save area is host memory (no SEV, plain SEV)."""
        if not self.save_area_readable:
            raise VmStateError(
                f"{self._vcpu.mode.value}: guest registers are in the encrypted VMSA")

    def _check(self, name: str) -> int:
        self.check_readable()
        try:
            return REGISTERS[name]
        except KeyError:
            raise VmStateError(f"no register {name!r} in the VMCB save area") from None

    def read(self, name: str) -> int:
        """A guest register from the save area; VmStateError under SEV-ES and SNP."""
        return int(self._vcpu._uc.reg_read(self._check(name)))

    def write(self, name: str, value: int) -> None:
        """Change a guest register in the save area (refused under SEV-ES and SNP, like `read`)."""
        self._vcpu._uc.reg_write(self._check(name), value & (1 << 64) - 1)


@dataclass(frozen=True)
class VcpuRunState:
    """A vCPU's scheduling state, its GHCB MSR and where its MSR intercepts are armed."""

    state: VcpuState
    needs_reset: bool
    ghcb_msr: int
    msr_sites: tuple[int, ...]


class Vcpu:
    """One virtual CPU: a Unicorn engine over the VM's address space."""

    def __init__(self, index: int, space: GuestAddressSpace, mode: GuestMode, chip: ChipPreset,
                 asid: int, exit_handler: ExitHandler) -> None:
        self.index = index
        self.mode = mode
        self.chip = chip
        self._space = space
        self._exit_handler = exit_handler
        self._uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._uc.ctl_set_tcg_buffer_size(TB_CACHE_BYTES)  # type: ignore[attr-defined]  # py2 shim
        self.vmcb = Vmcb(self, asid)
        self.state = VcpuState.RUNNABLE if index == 0 else VcpuState.WAIT_FOR_SIPI
        self._guest: GuestSoftware | None = None
        self._ran = False  # guest software is attached before the first VMRUN only
        self.es = mode in (GuestMode.SEV_ES, GuestMode.SNP)
        self.vmsa_spa: int | None = None  # SEV-ES: the VMCB's VMSA pointer, set by the host
        self.vmpl = 0  # SEV-SNP: the VMPL of the VMSA this vCPU runs (set by VMRUN)
        self._needs_reset = index == 0
        self._stop_requested = False
        self._pending: BaseException | None = None
        self._msr_sites: set[int] = set()
        self._ghcb_msr = 0
        # SEV-ES: (SPA, page) of the VMSA as this engine last loaded or saved it: VMRUN loads a
        # VMSA only when it is another page or was changed since (another vCPU ran it)
        self._vmsa_image: tuple[int, bytes] | None = None
        self._sev_features = 0
        self._seals = vmsa_seals(space.memory)
        self._tlb = tlb_of(space.memory)
        self._windows: dict[int, int] = {}  # the guest's page table for its windows: VA -> GPA
        self._window_map: dict[int, int] = {}  # what the engine maps there now: VA -> frame
        self._view = GuestCpu(self)
        self._slice = SliceTimer(self._uc)
        space.attach(self._uc)
        self._uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        self._uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        self._uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        self._uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
        self._uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self._uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self._uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED
                         | UC_HOOK_MEM_FETCH_UNMAPPED, self._on_unmapped)
        self._uc.hook_add(UC_HOOK_MEM_PROT, self._on_protection)

    # -- the hypervisor's controls ---------------------------------------------------------------
    def attach_guest(self, software: Callable[[GuestCpu], G]) -> G:
        """Install the guest software that handles this vCPU's resets, syscalls and #VC: what
        `software` makes of this vCPU as the guest sees it. Once only, before the vCPU first
        runs: the software stands for code in the launched image, so nobody swaps it later."""
        if self._guest is not None or self._ran:
            raise VmStateError(f"vCPU {self.index} already runs its guest software")
        guest = software(self._view)
        self._guest = guest
        return guest

    @property
    def has_run(self) -> bool:
        """Whether a VMRUN has entered this vCPU yet."""
        return self._ran

    def save_context(self) -> bytes:
        """The register state in the VMCB save area (plain SEV or no SEV; under SEV-ES and SNP
        the registers are in the encrypted VMSA): what migration carries."""
        self.vmcb.check_readable()
        return bytes(self._uc.context_save())

    def restore_context(self, context: bytes) -> None:
        """Load what `save_context` returned (a migration's destination); VmStateError for a
        context of another size."""
        self.vmcb.check_readable()
        saved = self._uc.context_save()
        if len(context) != saved.size:
            raise VmStateError(f"vCPU context of {len(context)} bytes, this engine's is "
                               f"{saved.size}")
        ctypes.memmove(saved.context, context, saved.size)
        self._uc.context_restore(saved)

    def share_guest(self, sibling: Vcpu) -> None:
        """An AP the guest itself created runs the same guest software as `sibling`."""
        if self._guest is None and sibling._guest is not None:
            self._guest = sibling._guest

    def run_state(self) -> VcpuRunState:
        """What the hypervisor keeps about a vCPU besides its registers (for migration)."""
        return VcpuRunState(self.state, self._needs_reset, self._ghcb_msr,
                            tuple(sorted(self._msr_sites)))

    def restore_run_state(self, saved: VcpuRunState) -> None:
        """Put back what `run_state` saved (on a migration's destination), re-arming the MSR
        intercepts."""
        self.state = saved.state
        self._needs_reset = saved.needs_reset
        self._ghcb_msr = self.vmcb.ghcb_gpa = saved.ghcb_msr
        for site in saved.msr_sites:  # re-arm the intercept on each RDMSR/WRMSR
            self.watch_msr_instructions(site, b"\x0f\x32")

    def start(self) -> None:
        """INIT-SIPI: bring an application processor up from its reset state. The hypervisor
        sets no registers (under SEV-ES it cannot): the AP's guest kernel takes over."""
        if self.state is not VcpuState.WAIT_FOR_SIPI:
            raise VmStateError(f"vCPU {self.index} is {self.state.value}, not waiting for SIPI")
        self._needs_reset = True
        self.state = VcpuState.RUNNABLE

    def stop(self) -> None:
        """Take the vCPU off the CPU for good (VM shutdown)."""
        self.state = VcpuState.STOPPED
        self._stop_requested = True
        self._uc.emu_stop()

    def run(self, quantum: Quantum | None, deadline_ns: int = 0, timeout: bool = False) -> None:
        """VMRUN: run until the quantum ends (None: no quantum), the deadline passes (`now_ns`
        clock, 0 for none), the vCPU halts, or an exit stops it. The slice always ends between
        two instructions, so where it ends never changes what the guest computes. With
        `timeout` the deadline is the VM's end: an exit after it raises GuestTimeout."""
        if self.state is not VcpuState.RUNNABLE:
            return
        self._ran = True
        self._slice.arm(quantum, deadline_ns, hard=timeout)
        self._enter_asid()
        if self.es:
            self._vmrun()
        self._tlb_enter()
        if self._needs_reset:
            self._needs_reset = False
            if self._guest is not None:
                self._guest.on_reset(self._view)
                if self.state is not VcpuState.RUNNABLE:
                    return
        if self.vmcb.event_inj is not None:
            self._inject(self.vmcb.event_inj)
            if self.state is not VcpuState.RUNNABLE:
                return
        self._stop_requested = False
        self._pending = None
        rip = self._uc.reg_read(x86.UC_X86_REG_RIP)
        try:
            self._uc.emu_start(rip, _UNTIL)
        except UcError as err:
            if self._pending is None:
                self._pending = self._fault(f"{err} at RIP 0x{self._rip():x}")
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
        if self._stop_requested or self._slice.expired:
            if self.es and self.state is VcpuState.RUNNABLE:
                self._save_vmsa()  # the timer's exit: the next quantum's VMRUN checks it
            return
        rip = self._uc.reg_read(x86.UC_X86_REG_RIP)
        if rip == _UNTIL:
            raise self._fault("guest jumped to the end of the address space")
        self.state = VcpuState.HALTED
        self._exit(VmExit(ExitCode.HLT, 0, rip))

    def run_instructions(self, count: int) -> int:
        """Run exactly `count` guest instructions, fewer if the vCPU halts or an exit stops
        it; returns how many ran. The single-stepping primitive of SEV-Step-style attacks: a
        hypervisor can always interrupt a guest this finely (APIC timer), whatever its mode."""
        if self.state is not VcpuState.RUNNABLE:
            return 0
        self.run(Quantum(instructions=count))
        return count - self._slice.instructions_left

    def step(self) -> int:
        """Run one guest instruction (0 if the vCPU cannot run)."""
        return self.run_instructions(1)

    def preempt(self) -> None:
        """End the current slice before the next guest instruction (from an exit handler,
        e.g. when the exit made another vCPU runnable)."""
        self._slice.end_soon()

    def watch_msr_instructions(self, gpa: int, code: bytes) -> None:
        """Trap RDMSR/WRMSR in an executable range (Unicorn has no MSR hook of its own).

        Every 0F 30 / 0F 32 byte pair gets a one-address code hook; a pair that is not an
        instruction start never executes there, so a false match costs nothing."""
        octets = np.frombuffer(code, dtype=np.uint8)
        pairs = (octets[:-1] == 0x0F) & ((octets[1:] == 0x30) | (octets[1:] == 0x32))
        for site in (gpa + np.flatnonzero(pairs)).tolist():
            if site not in self._msr_sites:
                self._msr_sites.add(site)
                self._uc.hook_add(UC_HOOK_CODE, self._on_msr_site, None, site, site)

    # -- exits -----------------------------------------------------------------------------
    def _exit(self, exit: VmExit) -> bool:
        """#VMEXIT to the hypervisor, and VMRUN when it resumes the vCPU (True)."""
        if self._slice.overdue():
            raise GuestTimeout(f"vCPU {self.index}: still running at its deadline")
        self.vmcb.exit_code, self.vmcb.exit_info1, self.vmcb.exit_info2 = (
            exit.code, exit.info1, exit.info2)
        if not self.es:
            keep = self._exit_handler(self, exit)
            if keep:
                self._enter_asid()
            return keep
        self._save_vmsa()
        self.vmcb.ghcb_gpa = self._ghcb_msr
        keep = self._exit_handler(self, exit)
        if keep:
            self._enter_asid()
            self._vmrun()
            self._ghcb_msr = self.vmcb.ghcb_gpa & (1 << 64) - 1
        return keep

    def _inject(self, event: Event) -> None:
        """VMRUN with EVENTINJ set: SEV_FEATURES decide whether the hypervisor may inject
        (Alternate Injection ignores the VMCB's field, Restricted Injection lets only #HV
        through); otherwise the guest's handler for the vector runs."""
        self.vmcb.event_inj = None
        if self._sev_features & SEV_FEATURES_ALTERNATE_INJECTION:
            return  # only the guest's own VMSA (written at a higher VMPL) injects events
        if self._sev_features & SEV_FEATURES_RESTRICTED_INJECTION and event.vector != HV_VECTOR:
            raise self._refuse(f"Restricted Injection: EVENTINJ holds vector {event.vector}, "
                               f"only #HV ({HV_VECTOR}) may be injected")
        if self._guest is None:
            raise self._fault(f"injected vector {event.vector} with no guest kernel")
        self._guest.on_event(self._view, event.vector, event.error_code)

    def _vc(self, code: ExitCode, info1: int) -> bool:
        """SEV-ES: an intercepted instruction raises #VC in the guest instead of exiting."""
        if self._guest is None:
            raise self._fault(f"#VC ({code.name}) with no guest kernel")
        return self._guest.on_vc(self._view, code, info1)

    def _fault(self, what: str) -> GuestFault:
        """An exception the guest cannot take: triple fault, SHUTDOWN intercept, VM stops."""
        self.state = VcpuState.STOPPED
        self.vmcb.exit_code = ExitCode.SHUTDOWN
        return GuestFault(f"vCPU {self.index}: {what}")

    def _guarded(self, action: Callable[[], _T]) -> _T | None:
        if self._pending is not None:  # the vCPU is already leaving: nothing more executes
            self._uc.emu_stop()
            return None
        try:
            return action()
        except BaseException as err:  # carried out of Unicorn and re-raised by run()
            if self._pending is None:
                self._pending = err
            self._uc.emu_stop()
            return None
        finally:
            self._slice.check_deadline()

    def _rip(self) -> int:
        return int(self._uc.reg_read(x86.UC_X86_REG_RIP))

    # -- SEV-ES world switch -----------------------------------------------------------------
    def _save_vmsa(self) -> None:
        """#VMEXIT under SEV-ES: registers into the VMSA under the VM key, and a new seal."""
        spa = self._vmsa_page()
        uc = self._uc
        saved = iter(_SAVE_READER.read(uc))
        values = {name: next(saved) for name in (*_SAVED, *_X87)}
        values["efer"] = uc.reg_read(x86.UC_X86_REG_MSR, _MSR_EFER)
        values["sev_features"] = self._sev_features
        values["vmpl"] = self.vmpl
        selectors = {name: next(saved) for name in _SELECTORS}
        bases = {name: next(saved) for name in _BASES}
        segments = {name: Segment(selector=selector, base=bases.get(name, 0))
                    for name, selector in selectors.items()}
        xmm = b"".join(next(saved).to_bytes(16, "little") for _ in _XMM_IDS)
        page = Vmsa({k: int(v) for k, v in values.items() if v}, segments,
                    fpreg_xmm=xmm).to_bytes()
        if self._sev_features & SEV_FEATURES_VMSA_REG_PROT:  # a fresh nonce every save
            nonce = int.from_bytes(self._space.memory.entropy.random(8), "little")
            page = protect_registers(page, nonce)
        self._write_vmsa(spa, page)
        self._seals.seal(self.vmcb.asid, spa, page)
        self._vmsa_image = (spa, page)

    def _vmrun(self) -> None:
        """VMRUN under SEV-ES: the VMSA must carry the seal the hardware last gave it. The
        first VMRUN loads the launch VMSA into the engine; later ones usually find in it
        exactly the state the engine kept, so there is nothing to load, unless the VMCB now
        points at another VMSA or another vCPU ran this one since. Under SEV-SNP the RMP is the
        integrity: the page must be tagged as a VMSA of this guest, which no host write can
        change (so a VMSA the guest built itself, tagged with RMPADJUST, runs too)."""
        spa = self._vmsa_page()
        rmp, frame = self._space.memory.rmp, spa // PAGE
        if self.mode is GuestMode.SNP and not (
                rmp.vmsa[frame] and rmp.asid[frame] == self.vmcb.asid):
            raise self._refuse(f"the RMP does not tag SPA 0x{spa:x} as a VMSA of "
                               f"ASID {self.vmcb.asid}")
        page = self._read_vmsa(spa)
        if self.mode is not GuestMode.SNP and not self._seals.check(self.vmcb.asid, spa, page):
            raise self._refuse(f"the VMSA at SPA 0x{spa:x} fails its integrity check")
        if self._vmsa_image != (spa, page):
            vmsa = Vmsa.from_bytes(page)
            if vmsa.regs.get("sev_features", 0) & SEV_FEATURES_VMSA_REG_PROT:
                vmsa = Vmsa.from_bytes(unprotect_registers(page))
            self._load_vmsa(vmsa)
            self._vmsa_image = (spa, page)

    def _load_vmsa(self, vmsa: Vmsa) -> None:
        regs = vmsa.regs
        current = {name: int(self._uc.reg_read(REGISTERS[name])) for name in _CONTROL[:3]}
        current["efer"] = int(self._uc.reg_read(x86.UC_X86_REG_MSR, _MSR_EFER))
        for name in _CONTROL:
            if regs.get(name, 0) != current[name]:
                raise self._refuse(f"VMSA {name}=0x{regs.get(name, 0):x}: this vCPU runs "
                                   f"only in flat 64-bit mode ({name}=0x{current[name]:x})")
        loaded = [(reg, regs.get(name, 0)) for name, reg in zip(_SAVED, _SAVED_IDS, strict=True)
                  if name not in _CONTROL]
        loaded += [(reg, regs.get(name, 0)) for name, reg in _X87.items()]
        loaded += [(reg, vmsa.segments.get(name, Segment()).base)
                   for name, reg in _BASES.items()]
        loaded += [(reg, int.from_bytes(vmsa.fpreg_xmm[16 * i:16 * i + 16], "little"))
                   for i, reg in enumerate(_XMM_IDS)]
        for reg, value in loaded:
            self._uc.reg_write(reg, value)
        self._sev_features = regs.get("sev_features", 0)
        self.vmpl = regs.get("vmpl", 0)
        self._space.set_vmpl(self._uc, self.vmpl)

    def _enter_asid(self) -> None:
        """VMRUN takes the ASID from the VMCB, whatever VM it belongs to: memory is decrypted
        and RMP-checked as that ASID's. An encrypted guest's ASID must have a key loaded."""
        asid, space = self.vmcb.asid, self._space
        if asid != space.asid and space.encrypted and not space.memory.engine.has_key(asid):
            raise self._refuse(f"ASID {asid} has no key loaded")
        space.run_as(asid)

    # -- the TLB (guest windows) -----------------------------------------------------------
    def _tlb_enter(self) -> None:
        """VMRUN and the TLB: flush the ASID's entries if TLB_CONTROL asks, or, under SEV-SNP,
        if another VMSA ran with this ASID last (the hardware does not leave that to the
        host); then the engine sees the ASID's entries, and walks its own page table for the
        windows that have none."""
        asid = self.vmcb.asid
        before = self._tlb.ran(asid, self.vmsa_spa)
        if self.vmcb.tlb_control or (self.mode is GuestMode.SNP and before != self.vmsa_spa):
            self._tlb.flush(asid)
        self.vmcb.tlb_control = False
        cached = self._tlb.entries(asid)
        for va, gpa in self._windows.items():
            frame = self._space.direct_frame(gpa)
            if va not in cached and frame is not None:
                self._tlb.fill(asid, va, frame)
        self._show_windows(self._tlb.entries(asid))

    def _map_window(self, va: int, gpa: int) -> None:
        """The guest points window `va` at its page `gpa` (its page table, then INVLPG: the
        walk fills the TLB with this vCPU's translation)."""
        frame = self._space.direct_frame(gpa)
        if va % PAGE or not WINDOW_BASE <= va < WINDOW_BASE + WINDOW_PAGES * PAGE or (
                frame is None):
            raise GuestFault(f"vCPU {self.index}: window 0x{va:x} -> GPA 0x{gpa:x} refused")
        self._windows[va] = gpa
        self._tlb.fill(self.vmcb.asid, va, frame)
        self._show_windows(self._tlb.entries(self.vmcb.asid))

    def _show_windows(self, entries: dict[int, int]) -> None:
        """Map the engine's windows as the TLB entries say (a frame the VM's ASID does not
        hold directly stays unmapped: the access faults)."""
        memory, space = self._space.memory, self._space
        own = space.asid if space.encrypted else RAW
        for va, frame in list(self._window_map.items()):
            if entries.get(va) != frame:
                self._uc.mem_unmap(va, PAGE)
                del self._window_map[va]
        for va, frame in entries.items():
            if va not in self._window_map and memory.domain[frame] == own:
                self._uc.mem_map_ptr(va, PAGE, UC_PROT_ALL, memory.frame_address(frame))
                self._window_map[va] = frame

    def _refuse(self, why: str) -> VmrunError:
        """VMRUN fails with SVM_EXIT_ERR: the vCPU never runs again."""
        self.state = VcpuState.STOPPED
        self.vmcb.exit_code = ExitCode.INVALID
        return VmrunError(f"vCPU {self.index}: VMRUN refused: {why}")

    def _vmsa_page(self) -> int:
        spa = self.vmsa_spa
        memory = self._space.memory
        if spa is None or spa % PAGE or not 0 <= spa < memory.size:
            raise self._refuse(f"no valid VMSA page (VMSA pointer {spa})")
        return spa

    def _read_vmsa(self, spa: int) -> bytes:
        """The VMSA page as the SoC sees it through the VM's key."""
        memory, asid = self._space.memory, self.vmcb.asid
        if memory.domain[spa // PAGE] == asid:
            return memory.cells[spa:spa + PAGE].tobytes()
        if not memory.engine.has_key(asid):
            raise self._refuse(f"ASID {asid} has no key loaded")
        dram = np.frombuffer(memory.read(spa, PAGE), dtype=np.uint8)
        return memory.engine.decrypt_blocks(asid, spa, dram).tobytes()

    def _write_vmsa(self, spa: int, page: bytes) -> None:
        memory, asid = self._space.memory, self.vmcb.asid
        if memory.domain[spa // PAGE] == asid:
            memory.cells[spa:spa + PAGE] = np.frombuffer(page, dtype=np.uint8)
            return
        plain = np.frombuffer(page, dtype=np.uint8)
        memory.write_soc(spa, memory.engine.encrypt_blocks(asid, spa, plain).tobytes())

    # -- intercepted instructions ------------------------------------------------------------
    def _on_in(self, uc: Uc, port: int, size: int, _ud: object) -> int:
        def handle() -> int:
            info = ioio_info(port, size, True)
            keep = (self._vc(ExitCode.IOIO, info) if self.es
                    else self._exit(VmExit(ExitCode.IOIO, info, self._rip() + 1)))
            if not keep:
                self.stop()
            return int(uc.reg_read(x86.UC_X86_REG_RAX)) & ((1 << (8 * size)) - 1)
        return int(self._guarded(handle) or 0)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _ud: object) -> None:
        def handle() -> None:
            info = ioio_info(port, size, False)
            keep = (self._vc(ExitCode.IOIO, info) if self.es
                    else self._exit(VmExit(ExitCode.IOIO, info, self._rip() + 1)))
            if not keep:
                self.stop()
        self._guarded(handle)

    def _on_cpuid(self, uc: Uc, _ud: object) -> int:
        def handle() -> None:
            keep = (self._vc(ExitCode.CPUID, 0) if self.es
                    else self._exit(VmExit(ExitCode.CPUID, 0, self._rip() + 2)))
            if not keep:
                self.stop()
        self._guarded(handle)
        return 1

    def _on_syscall(self, uc: Uc, _ud: object) -> None:
        guest = self._guest
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
            if self._msr(op[1] == 0x30):
                uc.reg_write(x86.UC_X86_REG_RIP, address + 2)
            else:
                self.stop()
        self._guarded(handle)

    def _msr(self, write: bool) -> bool:
        """RDMSR/WRMSR: the MSRs the hardware answers itself, else an intercept (#VC under
        SEV-ES). False stops the vCPU."""
        msr = int(self._uc.reg_read(x86.UC_X86_REG_RCX)) & 0xFFFF_FFFF
        if msr == MSR_SEV_STATUS and not write:
            self._set_edx_eax(self.sev_status())
            return True
        if not self.es:
            return self._exit(VmExit(ExitCode.MSR, MSR_WRITE if write else MSR_READ,
                                     self._rip() + 2))
        if msr == MSR_GHCB:
            if write:
                self._ghcb_msr = (int(self._uc.reg_read(x86.UC_X86_REG_RDX)) & 0xFFFF_FFFF) << 32 \
                    | int(self._uc.reg_read(x86.UC_X86_REG_RAX)) & 0xFFFF_FFFF
            else:
                self._set_edx_eax(self._ghcb_msr)
            return True
        return self._vc(ExitCode.MSR, MSR_WRITE if write else MSR_READ)

    def _set_edx_eax(self, value: int) -> None:
        self._uc.reg_write(x86.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
        self._uc.reg_write(x86.UC_X86_REG_RDX, value >> 32)

    def sev_status(self) -> int:
        """SEV_STATUS as the hardware reports it to this guest; no hypervisor can change it."""
        bits = {GuestMode.NONE: 0, GuestMode.SEV: SevStatusMsr.SEV,
                GuestMode.SEV_ES: SevStatusMsr.SEV | SevStatusMsr.SEV_ES,
                GuestMode.SNP: SevStatusMsr.SEV | SevStatusMsr.SEV_ES | SevStatusMsr.SNP}
        status = int(bits[self.mode])
        for feature, bit in ((SEV_FEATURES_VMSA_REG_PROT, SevStatusMsr.VMSA_REG_PROT),
                             (SEV_FEATURES_RESTRICTED_INJECTION,
                              SevStatusMsr.RESTRICTED_INJECTION),
                             (SEV_FEATURES_ALTERNATE_INJECTION, SevStatusMsr.ALTERNATE_INJECTION)):
            if self._sev_features & feature:
                status |= bit
        return status

    def _on_invalid(self, uc: Uc, _ud: object) -> bool:
        rip = self._rip()
        try:
            op = bytes(uc.mem_read(rip, 3))
        except UcError:
            op = b""
        if op == b"\x0f\x01\xd9":  # VMMCALL
            def handle() -> None:
                keep = (self._vc(ExitCode.VMMCALL, 0) if self.es
                        else self._exit(VmExit(ExitCode.VMMCALL, 0, rip + 3)))
                if keep:
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
        # The hypervisor's answer to a #NPF is to resume the guest, which executes the access
        # again: if the page is still not mapped (it remapped it somewhere the RMP refuses,
        # say), that is a new #NPF, not a success.
        for _ in range(_NPF_RETRIES):
            if not self._npf(access, address):
                return False
            if self._space.mapped(address):
                if access == UC_MEM_WRITE_UNMAPPED:
                    self._space.note_store(uc, address, size)
                return True
        self._pending = self._pending or self._fault(
            f"{_NPF_RETRIES} #NPFs at GPA 0x{address:x} the hypervisor answered without "
            f"mapping the page (RIP 0x{self._rip():x})")
        return False

    def fault_in(self, gpa: int, length: int) -> None:
        """The #NPF (or #VC) that the guest software's own read of [gpa, gpa + length) takes
        where this vCPU maps no guest page, as an instruction's would (the kernel reads the
        program's memory at boot): returns once the hypervisor mapped them, else raises."""
        stop = min((gpa + length - 1) // PAGE + 1, self._space.npt.limit_pages)
        for gpn in range(max(gpa, 0) // PAGE, stop):
            if not self._space.mapped(gpn * PAGE) and not self._on_unmapped(
                    self._uc, UC_MEM_READ_UNMAPPED, gpn * PAGE, 1, 0, None):
                pending, self._pending = self._pending, None
                if pending is not None:
                    raise pending

    def _npf(self, access: int, address: int) -> bool:
        """One #NPF for an access to a page the vCPU does not map; whether the hypervisor
        resolved it."""
        info1 = (NPF_WRITE if access == UC_MEM_WRITE_UNMAPPED else 0) | (
            NPF_FETCH if access == UC_MEM_FETCH_UNMAPPED else 0)
        rmp = self._space.rmp_fault(address)
        if rmp == RMP_NOT_VALIDATED:  # #VC in the guest, which cannot resume the access
            self._guarded(lambda: self._vc(ExitCode.PAGE_NOT_VALIDATED, address))
            self._pending = self._pending or self._fault(
                f"#VC page not validated at GPA 0x{address:x} (RIP 0x{self._rip():x})")
            return False
        if rmp == RMP_NPF:  # the walk found the page, the RMP check refused it
            why = self._space.rmp_mismatch(address)
            return self._nested_fault(info1 | NPF_RMP, address,
                                      f"nested page fault, RMP check failed ({why}),")
        return self._nested_fault(info1, address, "nested page fault")

    def _on_protection(self, uc: Uc, access: int, address: int, size: int, value: int,
                       _ud: object) -> bool:
        """The access needs a permission this VMPL was not given: #NPF (RMP, VMPL)."""
        info1 = NPF_PRESENT | NPF_RMP | NPF_VMPL | (
            NPF_WRITE if access == UC_MEM_WRITE_PROT else 0) | (
            NPF_FETCH if access == UC_MEM_FETCH_PROT else 0)
        return self._nested_fault(info1, address, f"VMPL{self.vmpl} permission fault")

    def _nested_fault(self, info1: int, address: int, what: str) -> bool:
        def handle() -> bool:
            if self._exit(VmExit(ExitCode.NPF, info1, address)):
                return True
            raise self._fault(f"{what} at GPA 0x{address:x} the hypervisor did not resolve "
                              f"(RIP 0x{self._rip():x})")
        return bool(self._guarded(handle))


class GuestCpu:
    """The vCPU as software inside the VM sees it: its own registers, memory and instructions."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu

    @property
    def index(self) -> int:
        """This vCPU's number in its VM (vCPU 0 boots it)."""
        return self._vcpu.index

    @property
    def vmpl(self) -> int:
        """The VMPL this vCPU runs at (SEV-SNP; 0 otherwise)."""
        return self._vcpu.vmpl

    def control_registers(self) -> dict[str, int]:
        """CR0, CR3, CR4 and EFER: what a VMSA for another VMPL or vCPU must repeat."""
        uc = self._vcpu._uc
        regs = {name: int(uc.reg_read(REGISTERS[name])) for name in ("cr0", "cr3", "cr4")}
        regs["efer"] = int(uc.reg_read(x86.UC_X86_REG_MSR, _MSR_EFER))
        return regs

    def reg(self, name: str) -> int:
        """One of this vCPU's registers by name (see `REGISTERS`), as the guest itself reads it."""
        return int(self._vcpu._uc.reg_read(REGISTERS[name]))

    def set_reg(self, name: str, value: int) -> None:
        """Set one of this vCPU's registers by name; the value is truncated to 64 bits."""
        self._vcpu._uc.reg_write(REGISTERS[name], value & (1 << 64) - 1)

    def read(self, gpa: int, length: int) -> bytes:
        """Guest-physical read through this VM's own mapping (private pages in plaintext),
        with this VMPL's permissions."""
        self._check_vmpl(gpa, length, PERM_READ)
        try:
            return bytes(self._vcpu._uc.mem_read(gpa, length))
        except UcError:
            self._vcpu.fault_in(gpa, length)
        try:
            return bytes(self._vcpu._uc.mem_read(gpa, length))
        except UcError as err:
            raise GuestFault(f"guest read of 0x{gpa:x}+{length}: {err}") from None

    def write(self, gpa: int, data: bytes) -> None:
        """Guest-physical write through this VM's own mapping (private pages in plaintext),
        with this VMPL's permissions."""
        self._check_vmpl(gpa, len(data), PERM_WRITE)
        self._vcpu._space.note_store(self._vcpu._uc, gpa, len(data))
        try:
            self._vcpu._uc.mem_write(gpa, data)
        except UcError as err:
            raise GuestFault(f"guest write of 0x{gpa:x}+{len(data)}: {err}") from None

    def _check_vmpl(self, gpa: int, length: int, needed: int) -> None:
        """Unicorn's own reads and writes ignore page protections: check the masks here."""
        vcpu = self._vcpu
        if not vcpu.vmpl or length <= 0:
            return
        first, stop = gpa // PAGE, (gpa + length - 1) // PAGE + 1
        if stop > vcpu._space.npt.limit_pages:
            return  # beyond guest memory: the access itself fails
        perms = vcpu._space.vmpl_permissions(first, stop, vcpu.vmpl)
        if (perms & needed != needed).any():
            bad = first + int(np.flatnonzero(perms & needed != needed)[0])
            raise GuestFault(f"vCPU {self.index}: #NPF: VMPL{vcpu.vmpl} may not "
                             f"{'write' if needed == PERM_WRITE else 'read'} GPA "
                             f"0x{bad * PAGE:x}")

    def is_private(self, gpa: int, length: int) -> bool:
        """Whether the guest page tables mark every page of [gpa, gpa + length) private
        (C=1) in an encrypted VM: where a kernel may put what the host must not read."""
        space = self._vcpu._space
        first, stop = gpa // PAGE, -(-(gpa + length) // PAGE)
        return bool(space.encrypted and 0 <= first <= stop <= space.c_bit.size
                    and space.c_bit[first:stop].all())

    def set_c_bit(self, gpa: int, npages: int, private: bool, zero: bool = False) -> None:
        """Mark pages private (C=1) or shared in the guest page tables."""
        first = gpa // PAGE
        self._vcpu._space.set_c_bit(first, first + npages, private, zero)

    def set_pte_attributes(self, gpa: int, npages: int, attrs: int) -> None:
        """OR attribute bits into the pages' table entries: the MMU reads bit C (this chip's
        C-bit position) as "encrypted"; the flags below bit 12 and the bits from 52 up
        (software's, protection keys, NX) keep their usual meaning, and any other bit is
        part of the frame address, which would leave guest memory."""
        c_bit = 1 << self._vcpu.chip.c_bit
        stray = attrs & _PTE_ADDRESS & ~c_bit
        if stray:
            raise GuestFault(f"vCPU {self.index}: #PF: attribute bits 0x{stray:x} of the "
                             f"entry for GPA 0x{gpa:x} point outside guest memory")
        self.set_c_bit(gpa, npages, private=bool(attrs & c_bit))

    def pvalidate(self, gpa: int, npages: int, validate: bool) -> np.ndarray:
        """PVALIDATE each 4 KiB page from `gpa` (SEV-SNP). Returns rFLAGS.CF per page: set
        where the page already was in that state (double validation); the kernel decides
        what that means. Raises RmpInstructionError (FAIL_INPUT) for a page that is not
        this guest's at that GPA."""
        vcpu = self._vcpu
        if vcpu.mode is not GuestMode.SNP:
            raise GuestFault(f"vCPU {self.index}: #UD: PVALIDATE outside SEV-SNP")
        if vcpu.vmpl:  # why an OS below an SVSM asks the SVSM to validate for it
            raise GuestFault(f"vCPU {self.index}: #GP: PVALIDATE at VMPL{vcpu.vmpl}")
        if gpa % PAGE or npages < 1 or gpa // PAGE + npages > vcpu._space.npt.limit_pages:
            raise GuestFault(f"vCPU {self.index}: PVALIDATE of 0x{gpa:x}+{npages} pages")
        frames = vcpu._space.own_frames(gpa // PAGE, gpa // PAGE + npages)
        return vcpu._space.memory.rmp.pvalidate(frames, validate)

    def rmpadjust(self, gpa: int, target_vmpl: int, perms: int, vmsa: bool = False) -> None:
        """RMPADJUST one 4 KiB page from this vCPU's VMPL: give `target_vmpl` `perms`, and
        (VMPL0 only) tag the page as a VMSA or untag it."""
        vcpu = self._vcpu
        if vcpu.mode is not GuestMode.SNP:
            raise GuestFault(f"vCPU {self.index}: #UD: RMPADJUST outside SEV-SNP")
        frame = int(vcpu._space.own_frames(gpa // PAGE, gpa // PAGE + 1, vmsa_too=vmsa)[0])
        vcpu._space.memory.rmp.rmpadjust(frame, vcpu.vmpl, target_vmpl, perms, vmsa)

    def map_window(self, va: int, gpa: int) -> None:
        """Point the window page `va` (from WINDOW_BASE) at the guest page `gpa`, for the
        process on this vCPU; GuestFault if either is not usable."""
        self._vcpu._map_window(va, gpa)

    def mark_executable(self, gpa: int, length: int) -> None:
        """Guest page tables say this range holds code (the CPU decodes it)."""
        self._vcpu.watch_msr_instructions(gpa, self.read(gpa, length))

    def sev_status(self) -> int:
        """RDMSR 0xC0010131, which the hardware answers without an intercept."""
        return self._vcpu.sev_status()

    def read_ghcb_msr(self) -> int:
        """RDMSR 0xC0010130 under SEV-ES: the hardware's GHCB MSR, no intercept."""
        return self._vcpu._ghcb_msr

    def write_ghcb_msr(self, value: int) -> None:
        """WRMSR 0xC0010130 under SEV-ES: where the next VMGEXIT finds the GHCB (or an MSR
        protocol request)."""
        self._vcpu._ghcb_msr = value & (1 << 64) - 1

    def out(self, port: int, value: int, size: int = 1) -> bool:
        """Execute OUT: the hypervisor sees the port and RAX (under SEV-ES: #VC, and the
        guest kernel decides). False if the vCPU was stopped."""
        info = ioio_info(port, size, False)
        return self._execute({"rax": value, "rdx": port}, ExitCode.IOIO, info)

    def vmmcall(self, nr: int, *args: int) -> int:
        """Execute VMMCALL with KVM's convention: RAX=nr, RBX, RCX, RDX, RSI; result RAX."""
        regs = dict(zip(("rax", "rbx", "rcx", "rdx", "rsi"), (nr, *args), strict=False))
        result: list[int] = []
        self._execute(regs, ExitCode.VMMCALL, 0, result)
        return result[0]

    def _execute(self, regs: dict[str, int], code: ExitCode, info1: int,
                 result: list[int] | None = None) -> bool:
        """Run an intercepted instruction on behalf of the kernel with `regs` loaded, then
        restore them; RAX after the instruction goes to `result`."""
        saved = {name: self.reg(name) for name in regs}
        for name, value in regs.items():
            self.set_reg(name, value)
        vcpu = self._vcpu
        keep = vcpu._vc(code, info1) if vcpu.es else vcpu._exit(VmExit(code, info1, 0))
        if result is not None:
            result.append(self.reg("rax"))
        for name, value in saved.items():
            self.set_reg(name, value)
        return keep

    def vmgexit(self) -> bool:
        """VMGEXIT (SEV-ES): exit to the hypervisor, which reads the GHCB MSR and the GHCB.
        False if the hypervisor stopped the vCPU."""
        if not self._vcpu.es:
            raise GuestFault(f"vCPU {self.index}: VMGEXIT outside SEV-ES")
        return self._vcpu._exit(VmExit(ExitCode.VMGEXIT, 0, 0))

    def halt(self) -> None:
        """HLT with interrupts off: this vCPU is done."""
        self._vcpu.state = VcpuState.HALTED
        self._vcpu._stop_requested = True
        self._vcpu._uc.emu_stop()
        self._vcpu._exit(VmExit(ExitCode.HLT, 0, 0))
