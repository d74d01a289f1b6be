"""Shared by the benchmark scripts: arguments, statistics, the bench guest, the result table.

Benchmarks are plain scripts, not timed tests: each measures sevsim and its reference side by
side in one run, prints a table and the ratio against the project's target, and exits non-zero
only when something fails (a build, a wrong result), never because a target was missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_C = REPO / "examples" / "bench.c"


class BenchmarkError(Exception):
    """The benchmark could not measure what it claims to (wrong output, missing tool)."""


def parse_args(description: str, default_reps: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: smaller sizes and a single repetition")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions of each measurement (default {default_reps}, "
                             "1 with --quick)")
    args = parser.parse_args()
    if args.reps is None:
        args.reps = 1 if args.quick else default_reps
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def build_bench(workdir: Path, quick: bool) -> bytes:
    """examples/bench.c as a guest ELF; --quick builds it at BENCH_SCALE=1 (1/8 of the work)."""
    from sevsim.guest.build import build_guest

    cflags = ["-DBENCH_SCALE=1"] if quick else []
    return build_guest([BENCH_C], workdir / "bench.elf", cflags=cflags).read_bytes()


def checksum_line(console: str) -> str:
    """The line bench.c ends with, which both sides of a comparison must agree on."""
    lines = [line for line in console.splitlines() if line.startswith("bench checksum:")]
    if len(lines) != 1:
        raise BenchmarkError(f"bench guest printed no checksum line; console was:\n{console}")
    return lines[0]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ratio: float, target: float, *, at_least: bool) -> str:
    ok = ratio >= target if at_least else ratio <= target
    return "PASS" if ok else "MISS"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table: first column left, the others right."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    print(f"\n{title}")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def spread_row(label: str, values: Sequence[float], digits: int = 3) -> list[str]:
    """A table row: label, then the median, minimum and maximum of the repetitions."""
    return [label, *(f"{v:.{digits}f}" for v in (median(values), min(values), max(values)))]


def run(main: Callable[[], int]) -> None:
    """Exit with main's status; a BenchmarkError is printed and exits 2."""
    try:
        sys.exit(main())
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
