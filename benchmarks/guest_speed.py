"""Guest code speed: examples/bench.c in a sevsim VM against the same ELF on bare Unicorn.

sevsim side: `Host().create_vm(mode="none")`, load, launch, then only `vm.run()` is timed (it
includes the guest kernel's boot, which is part of running a VM). Bare side:
`sevsim.testing.bare_unicorn` maps the ELF's PT_LOAD segments and a stack into one Unicorn
x86-64 engine, serves SYS_WRITE and SYS_EXIT as the guest kernel's ABI defines them, and times
`emu_start`. Two more rows slice the same run into quanta: a 2-vCPU VM (the program on vCPU 0)
and two 1-vCPU VMs sharing the host (both timed together, against two lone runs). Runs
alternate (sevsim, bare, 2-vCPU, two VMs, sevsim, ...) and all must print the same checksum.
The slicing ratios are paired: each repetition's sliced run against the lone run just before
it, median over repetitions, so that the slow drift of a shared cloud core (±10 % over a
minute here) cancels instead of landing on one side of the comparison.

    python benchmarks/guest_speed.py [--quick] [--reps N]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import (
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
SHARED_TARGET = 0.95  # the cost of time slicing: lone time / sliced time, at least
TIMEOUT_S = 600.0


def run_bare(elf: bytes) -> tuple[float, str]:
    """The ELF alone on one Unicorn engine: (seconds in emu_start, console)."""
    bare = bare_unicorn.run_bare(elf)
    if bare.exit_code != 0:
        raise BenchmarkError(f"bare Unicorn run exited {bare.exit_code}")
    return bare.seconds, bare.console


def run_sevsim(host: Host, elf: bytes, vms: int = 1, vcpus: int = 1) -> tuple[float, str]:
    """The ELF in `vms` plain VMs of `vcpus` vCPUs each (the program runs on vCPU 0; more
    vCPUs or VMs make the scheduler slice the run into quanta), all run at once: (seconds in
    the run, console of each VM, which must agree)."""
    machines = [host.create_vm(mode="none", vcpus=vcpus) for _ in range(vms)]
    try:
        for vm in machines:
            vm.load(elf)
            vm.launch()
        start = time.perf_counter()
        results = list(host.run(machines, timeout=TIMEOUT_S).values())
        elapsed = time.perf_counter() - start
    finally:
        for vm in machines:
            vm.destroy()
    for result in results:
        if result.exit_code != 0 or result.error is not None:
            raise BenchmarkError(f"sevsim run exited {result.exit_code} ({result.error}):\n"
                                 f"{result.console}")
    consoles = {result.console for result in results}
    if len(consoles) != 1:
        raise BenchmarkError(f"VMs running the same program printed {consoles}")
    return elapsed, consoles.pop()


RUNS: dict[str, Callable[[Host, bytes], tuple[float, str]]] = {
    "sevsim": run_sevsim,
    "bare": lambda host, elf: run_bare(elf),
    "2-vcpu": lambda host, elf: run_sevsim(host, elf, vcpus=2),
    "2-vms": lambda host, elf: run_sevsim(host, elf, vms=2),
}


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=7)
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_bench(Path(tmp), args.quick)
    print(f"guest speed: examples/bench.c{' at BENCH_SCALE=1' if args.quick else ''}, "
          f"{args.reps} interleaved repetition(s) of each")
    host = Host()
    times: dict[str, list[float]] = {name: [] for name in RUNS}
    expected = None
    for _ in range(args.reps):
        for name, runner in RUNS.items():
            elapsed, console = runner(host, elf)
            line = checksum_line(console)
            if expected is None:
                expected = line
            elif line != expected:
                raise BenchmarkError(f"{name} printed {line!r}, expected {expected!r}")
            times[name].append(elapsed)

    print_table("seconds (lower is better)", ["", "median", "min", "max"], [
        spread_row(label, times[key])
        for label, key in (("sevsim VM (mode none), vm.run()", "sevsim"),
                           ("bare Unicorn, emu_start()", "bare"),
                           ("sevsim 2-vCPU VM, in quanta", "2-vcpu"),
                           ("sevsim two 1-vCPU VMs at once, both", "2-vms"))])
    ratio = median(times["bare"]) / median(times["sevsim"])
    print(f"\nRATIO bare / sevsim = {ratio:.2f} (target >= {TARGET}): "
          f"{verdict(ratio, TARGET, at_least=True)}")
    sliced = median([lone / run
                     for lone, run in zip(times["sevsim"], times["2-vcpu"], strict=True)])
    print(f"RATIO lone VM / 2-vCPU VM (paired) = {sliced:.2f} (target >= {SHARED_TARGET}): "
          f"{verdict(sliced, SHARED_TARGET, at_least=True)}")
    shared = median([2 * lone / run
                     for lone, run in zip(times["sevsim"], times["2-vms"], strict=True)])
    print(f"RATIO two lone runs / two VMs sharing the host (paired) = {shared:.2f} "
          f"(target >= {SHARED_TARGET}): {verdict(shared, SHARED_TARGET, at_least=True)}")
    print(f"checksum: {expected}")
    return 0


if __name__ == "__main__":
    run(main)
