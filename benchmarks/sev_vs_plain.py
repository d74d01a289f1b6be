"""The cost of SEV: examples/bench.c in an SEV VM against a plain VM on the same host.

One `Host()` (default chip, Milan) runs every VM, one at a time: each repetition creates an SEV
VM and a plain VM (alternating which goes first), times load + launch + run and run alone, and
destroys it. Both must print the same checksum. The ratio is SEV time over plain time.

    python benchmarks/sev_vs_plain.py [--quick] [--reps N]
"""

from __future__ import annotations

import tempfile
import time
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

TARGET = 1.05  # SEV time / plain time, at most
TIMEOUT_S = 600.0


def run_once(host: Host, elf: bytes, mode: str) -> tuple[float, float, str]:
    """(load + launch seconds, run seconds, console) of one VM in `mode`."""
    vm = host.create_vm(mode=mode)
    try:
        start = time.perf_counter()
        vm.load(elf)
        vm.launch()
        launched = time.perf_counter()
        result = vm.run(timeout=TIMEOUT_S)
        done = time.perf_counter()
    finally:
        vm.destroy()
    if result.exit_code != 0:
        raise BenchmarkError(f"{mode} VM exited {result.exit_code}:\n{result.console}")
    return launched - start, done - launched, result.console


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=7)
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_bench(Path(tmp), args.quick)
    host = Host()
    print(f"SEV vs plain: examples/bench.c{' at BENCH_SCALE=1' if args.quick else ''} on one "
          f"{host.chip.name} host, {args.reps} interleaved repetition(s) of each")
    setup: dict[str, list[float]] = {"sev": [], "none": []}
    run: dict[str, list[float]] = {"sev": [], "none": []}
    expected = None
    for rep in range(args.reps):
        for mode in ("sev", "none") if rep % 2 == 0 else ("none", "sev"):
            load_launch, elapsed, console = run_once(host, elf, mode)
            line = checksum_line(console)
            if expected is None:
                expected = line
            elif line != expected:
                raise BenchmarkError(f"{mode} VM printed {line!r}, expected {expected!r}")
            setup[mode].append(load_launch)
            run[mode].append(elapsed)

    total = {mode: [a + b for a, b in zip(setup[mode], run[mode], strict=True)] for mode in run}
    rows = []
    for label, mode in (("SEV VM", "sev"), ("plain VM", "none")):
        rows.append([label, f"{median(setup[mode]):.4f}", f"{median(run[mode]):.3f}",
                     *spread_row("", total[mode])[1:]])
    print_table("seconds (lower is better): medians, then the spread of load+launch+run",
                ["", "load+launch", "run", "load+launch+run", "min", "max"], rows)
    for what, values in (("load+launch+run", total), ("run alone", run)):
        ratio = median(values["sev"]) / median(values["none"])
        print(f"RATIO sev / plain, {what:15s} = {ratio:.3f} (target <= {TARGET}): "
              f"{verdict(ratio, TARGET, at_least=False)}")
    print(f"checksum: {expected}")
    return 0


if __name__ == "__main__":
    run(main)
