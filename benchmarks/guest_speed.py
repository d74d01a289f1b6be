"""Guest code speed: examples/bench.c in a sevsim VM against the same ELF on bare Unicorn.

sevsim side: `Host().create_vm(mode="none")`, load, launch, then only `vm.run()` is timed (it
includes the guest kernel's boot, which is part of running a VM). Bare side:
`sevsim.testing.bare_unicorn` maps the ELF's PT_LOAD segments and a stack into one Unicorn
x86-64 engine, serves SYS_WRITE and SYS_EXIT as the guest kernel's ABI defines them, and times
`emu_start`. Runs alternate
(sevsim, bare, sevsim, bare, ...) and both must print the same checksum.

    python benchmarks/guest_speed.py [--quick] [--reps N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

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
from sevsim.host.machine import Host
from sevsim.testing import bare_unicorn

TARGET = 0.8  # bare time / sevsim time, at least
TIMEOUT_S = 600.0


def run_bare(elf: bytes) -> tuple[float, str]:
    """The ELF alone on one Unicorn engine: (seconds in emu_start, console)."""
    bare = bare_unicorn.run_bare(elf)
    if bare.exit_code != 0:
        raise BenchmarkError(f"bare Unicorn run exited {bare.exit_code}")
    return bare.seconds, bare.console


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
