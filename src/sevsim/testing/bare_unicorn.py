"""A guest ELF alone on one bare Unicorn engine: the reference a sevsim VM's result and speed
are compared with.

It maps the ELF's PT_LOAD segments and a stack, serves SYS_WRITE and SYS_EXIT as the guest
kernel's ABI defines them (every other system call gets -ENOSYS) and runs the program in one
`emu_start`, with no time slices: nothing can interrupt it, so its console is the program's
true output.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as x86

from sevsim.errors import GuestFault
from sevsim.guest.kernel import ENOSYS, SYS_EXIT, SYS_WRITE

PAGE = 4096
STACK_TOP = 64 << 20  # where a default 64 MiB VM puts the top of the boot vCPU's stack
STACK_SIZE = 256 << 10
UNTIL = 0xFFFF_FFFF_FFFF_F000  # an address a program never reaches, as sevsim's vCPUs use


@dataclass(frozen=True)
class BareRun:
    """What the program printed, its exit code and the seconds spent in `emu_start`."""

    console: str
    exit_code: int
    seconds: float


def load_bare(elf: bytes) -> tuple[Uc, int, bytearray, list[int]]:
    """A fresh engine with the program loaded: (engine, entry, console, exit codes)."""
    image = ELFFile(io.BytesIO(elf))
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    spans: list[list[int]] = []
    for seg in image.iter_segments():
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        lo = seg["p_vaddr"] & ~(PAGE - 1)
        hi = -(-(seg["p_vaddr"] + seg["p_memsz"]) // PAGE) * PAGE
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    for lo, hi in spans:
        uc.mem_map(lo, hi - lo, UC_PROT_ALL)  # Unicorn hands out zeroed pages: .bss is clear
    for seg in image.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
            uc.mem_write(seg["p_vaddr"], seg.data())
    uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, UC_PROT_ALL)

    console, exit_codes = serve_syscalls(uc)
    uc.reg_write(x86.UC_X86_REG_RSP, STACK_TOP)
    uc.reg_write(x86.UC_X86_REG_RDI, 0)  # vCPU index, as the guest kernel passes it
    return uc, image.header["e_entry"], console, exit_codes


def serve_syscalls(uc: Uc) -> tuple[bytearray, list[int]]:
    """Answer the program's system calls as the guest kernel's ABI defines SYS_WRITE and
    SYS_EXIT (anything else: -ENOSYS): (the console it writes, its exit codes)."""
    console = bytearray()
    exit_codes: list[int] = []

    def on_syscall(uc: Uc, _user: object) -> None:
        nr = uc.reg_read(x86.UC_X86_REG_RAX)
        if nr == SYS_WRITE:  # (buf, len) -> len
            buf, length = uc.reg_read(x86.UC_X86_REG_RDI), uc.reg_read(x86.UC_X86_REG_RSI)
            console.extend(uc.mem_read(buf, length))
            uc.reg_write(x86.UC_X86_REG_RAX, length)
        elif nr == SYS_EXIT:
            exit_codes.append(uc.reg_read(x86.UC_X86_REG_RDI) & 0xFFFF_FFFF)
            uc.emu_stop()
        else:
            uc.reg_write(x86.UC_X86_REG_RAX, -ENOSYS & (1 << 64) - 1)

    uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
    return console, exit_codes


def run_bare(elf: bytes) -> BareRun:
    """Run a single-vCPU guest program to its exit on a bare engine."""
    uc, entry, console, exit_codes = load_bare(elf)
    start = time.perf_counter()
    uc.emu_start(entry, UNTIL)
    seconds = time.perf_counter() - start
    if len(exit_codes) != 1:
        raise GuestFault(f"bare Unicorn run stopped without SYS_EXIT at RIP "
                         f"0x{uc.reg_read(x86.UC_X86_REG_RIP):x}")
    return BareRun(console.decode(), exit_codes[0], seconds)
