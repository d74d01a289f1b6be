"""The guest kernel: boots the program, owns the page tables' C-bits, serves system calls.

It plays the part of Linux (or an SVSM at VMPL0) inside the VM and reaches memory only
through its vCPU's guest-physical view. Anything the hypervisor must learn (console bytes,
which pages are shared, the exit code) it hands over through exits, as a real guest does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from sevsim.abi.bootinfo import BOOTINFO_GPA, BootInfo
from sevsim.abi.svm import (
    DEBUG_EXIT_PORT,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    SERIAL_PORT,
    SEVSIM_HC_START_VCPU,
)
from sevsim.errors import GuestFault
from sevsim.hw.cpu import GuestCpu

PAGE = 4096
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
    """SHA-384 of this kernel's source: what the launch measurement binds the guest to."""
    return hashlib.sha384(Path(__file__).read_bytes()).digest()


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
        cpu.set_c_bit(BOOTINFO_GPA, 1, private=True)
        boot = self.boot = self._read_boot_info(cpu)
        image = boot.launched_pages()
        # Launched pages keep their contents; everything else is accepted as zeroed memory.
        cursor = 0
        for first, stop in [*_runs(image), (boot.ram_size // PAGE, 0)]:
            if first > cursor:
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
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rbp", "r8", "r9", "r10", "r11",
                     "r12", "r13", "r14", "r15"):
            cpu.set_reg(name, 0)
        cpu.set_reg("rdi", cpu.index)
        cpu.set_reg("rsp", boot.stack_top)
        cpu.set_reg("rip", boot.entry)

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
        for byte in data:
            if not cpu.out(SERIAL_PORT, byte):
                break
        return length

    def _exit(self, cpu: GuestCpu, code: int, *_: int) -> None:
        cpu.out(DEBUG_EXIT_PORT, code & 0xFFFF_FFFF, 4)
        cpu.halt()

    def _pages(self, cpu: GuestCpu, addr: int, npages: int) -> bool:
        return (addr % PAGE == 0 and npages > 0 and addr >= 2 * PAGE
                and addr + npages * PAGE <= self.boot_info(cpu).ram_size)

    def _set_shared(self, cpu: GuestCpu, addr: int, npages: int, *_: int) -> int:
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        cpu.set_c_bit(addr, npages, private=False)
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, 0)
        return 0

    def _set_private(self, cpu: GuestCpu, addr: int, npages: int, *_: int) -> int:
        if not self._pages(cpu, addr, npages):
            return -EINVAL
        cpu.vmmcall(KVM_HC_MAP_GPA_RANGE, addr, npages, KVM_MAP_GPA_RANGE_ENCRYPTED)
        cpu.set_c_bit(addr, npages, private=True)
        return 0

    def _sev_status(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.sev_status()

    def _vcpu_info(self, cpu: GuestCpu, *_: int) -> int:
        return cpu.index | self.boot_info(cpu).nvcpus << 32

    def _vcpu_start(self, cpu: GuestCpu, index: int, entry: int, arg0: int, arg1: int,
                    stack_top: int) -> int:
        if not 0 < index < self.boot_info(cpu).nvcpus:
            return -EINVAL
        status = cpu.vmmcall(SEVSIM_HC_START_VCPU, index, entry, stack_top, arg0, arg1)
        return 0 if status == 0 else -EINVAL

    def _vcpu_halt(self, cpu: GuestCpu, *_: int) -> None:
        cpu.halt()
