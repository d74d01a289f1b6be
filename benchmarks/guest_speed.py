"""Guest code speed: examples/bench.c in a sevsim VM against the same ELF on bare Unicorn.

sevsim side: `Host().create_vm(mode="none")`, load, launch, then only `vm.run()` is timed (it
includes the guest kernel's boot, which is part of running a VM). Bare side: a minimal harness
maps the ELF's PT_LOAD segments and a stack into one Unicorn x86-64 engine, serves SYS_WRITE
and SYS_EXIT as the guest kernel's ABI defines them, and times `emu_start`. Runs alternate
(sevsim, bare, sevsim, bare, ...) and both must print the same checksum.

    python benchmarks/guest_speed.py [--quick] [--reps N]
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as x86

from _common import (
    BenchmarkError,
    build_bench,
    checksum_line,
    median,
    parse_args,
    print_table,
    run,
    spread_row,
    verdict,
)
from sevsim.guest.kernel import ENOSYS, SYS_EXIT, SYS_WRITE
from sevsim.host.machine import Host

TARGET = 0.8  # bare time / sevsim time, at least
TIMEOUT_S = 600.0
PAGE = 4096
GUEST_MEMORY = 64 << 20  # where sevsim's default 64 MiB VM puts the top of the stack
STACK_SIZE = 256 << 10
_UNTIL = 0xFFFF_FFFF_FFFF_F000  # an address the program never reaches, as sevsim's vCPU uses


def run_bare(elf: bytes) -> tuple[float, str]:
    """The ELF alone on one Unicorn engine: (seconds in emu_start, console)."""
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
    uc.mem_map(GUEST_MEMORY - STACK_SIZE, STACK_SIZE, UC_PROT_ALL)

    console = bytearray()
    exit_code: list[int] = []

    def on_syscall(uc: Uc, _user: object) -> None:
        nr = uc.reg_read(x86.UC_X86_REG_RAX)
        if nr == SYS_WRITE:  # (buf, len) -> len
            buf, length = uc.reg_read(x86.UC_X86_REG_RDI), uc.reg_read(x86.UC_X86_REG_RSI)
            console.extend(uc.mem_read(buf, length))
            uc.reg_write(x86.UC_X86_REG_RAX, length)
        elif nr == SYS_EXIT:
            exit_code.append(uc.reg_read(x86.UC_X86_REG_RDI) & 0xFFFF_FFFF)
            uc.emu_stop()
        else:
            uc.reg_write(x86.UC_X86_REG_RAX, -ENOSYS & (1 << 64) - 1)

    uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
    uc.reg_write(x86.UC_X86_REG_RSP, GUEST_MEMORY)
    uc.reg_write(x86.UC_X86_REG_RDI, 0)  # vCPU index, as the guest kernel passes it
    entry = image.header["e_entry"]
    start = time.perf_counter()
    uc.emu_start(entry, _UNTIL, timeout=int(TIMEOUT_S * 1e6))
    elapsed = time.perf_counter() - start
    if exit_code != [0]:
        raise BenchmarkError(f"bare Unicorn run did not exit 0 (exit {exit_code}, "
                             f"RIP 0x{uc.reg_read(x86.UC_X86_REG_RIP):x})")
    return elapsed, console.decode()


def run_sevsim(host: Host, elf: bytes) -> tuple[float, str]:
    """The ELF in a plain VM: (seconds in vm.run(), console)."""
    vm = host.create_vm(mode="none")
    try:
        vm.load(elf)
        vm.launch()
        start = time.perf_counter()
        result = vm.run(timeout=TIMEOUT_S)
        elapsed = time.perf_counter() - start
    finally:
        vm.destroy()
    if result.exit_code != 0:
        raise BenchmarkError(f"sevsim run exited {result.exit_code}:\n{result.console}")
    return elapsed, result.console


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=7)
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_bench(Path(tmp), args.quick)
    print(f"guest speed: examples/bench.c{' at BENCH_SCALE=1' if args.quick else ''}, "
          f"{args.reps} interleaved repetition(s) of each")
    host = Host()
    times: dict[str, list[float]] = {"sevsim": [], "bare": []}
    expected = None
    for _ in range(args.reps):
        for name in ("sevsim", "bare"):
            elapsed, console = run_sevsim(host, elf) if name == "sevsim" else run_bare(elf)
            line = checksum_line(console)
            if expected is None:
                expected = line
            elif line != expected:
                raise BenchmarkError(f"{name} printed {line!r}, expected {expected!r}")
            times[name].append(elapsed)

    print_table("seconds (lower is better)", ["", "median", "min", "max"], [
        spread_row(label, times[key])
        for label, key in (("sevsim VM (mode none), vm.run()", "sevsim"),
                           ("bare Unicorn, emu_start()", "bare"))])
    ratio = median(times["bare"]) / median(times["sevsim"])
    print(f"\nRATIO bare / sevsim = {ratio:.2f} (target >= {TARGET}): "
          f"{verdict(ratio, TARGET, at_least=True)}")
    print(f"checksum: {expected}")
    return 0


if __name__ == "__main__":
    run(main)
