"""`sevsim demo` as a user runs it: the whole process's wall time against the 60 s target
(issue 15: on 2 cores), with the per-step breakdown from the document's "timings".

Each repetition runs `python -m sevsim demo --seed S --json FILE` in a process of its own
(start-up, guest builds, the four tenants, the attack matrix on every core, the key broker and
the SNP tenant with its twins, the tables) and must exit 0 with the same document but for the
timings (the seed fixes everything else). The reference, in the same run and interleaved, is
`python -m sevsim attack matrix --json`, the demo's largest step on its own: demo / matrix says
what the rest of the tour costs on top of it. --quick runs the demo once, without the
reference: a smoke check of the command and the target.

    python benchmarks/demo.py [--quick] [--reps N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BenchmarkError, median, parse_args, print_table, run, spread_row, verdict

TARGET_S = 60.0
SEED = "be7c40"


def sevsim(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time and result of `python -m sevsim ARGS` in a process of its own."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sevsim", *args], capture_output=True,
                          text=True, check=False, timeout=600)
    return time.perf_counter() - start, done


def demo(out: Path) -> tuple[float, dict[str, Any]]:
    """One `sevsim demo` run: its wall time and its document."""
    seconds, done = sevsim("demo", "--seed", SEED, "--json", str(out))
    if done.returncode != 0:
        raise BenchmarkError(f"sevsim demo exited {done.returncode}:\n{done.stderr}")
    return seconds, json.loads(out.read_text(encoding="utf-8"))


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=3)
    walls: list[float] = []
    matrix_walls: list[float] = []
    steps: dict[str, list[float]] = {}
    first: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            seconds, document = demo(Path(tmp) / f"demo{rep}.json")
            walls.append(seconds)
            for step, value in document.pop("timings").items():
                steps.setdefault(step, []).append(value)
            if first is None:
                first = document
            elif document != first:
                raise BenchmarkError("two runs with one seed gave different documents")
            if not args.quick:
                matrix_s, done = sevsim("attack", "matrix", "--json")
                if done.returncode != 0:
                    raise BenchmarkError(f"sevsim attack matrix failed:\n{done.stderr}")
                matrix_walls.append(matrix_s)
    wall = median(walls)
    rows = [["sevsim demo wall time (s)", f"{wall:.1f}", f"<= {TARGET_S:.0f}",
             verdict(TARGET_S / wall, 1.0, at_least=True)]]
    if matrix_walls:
        matrix = median(matrix_walls)
        rows.append(["sevsim attack matrix alone (s)", f"{matrix:.1f}", "", ""])
        rows.append(["demo / matrix", f"{wall / matrix:.2f}", "reported", ""])
    print_table(f"sevsim demo: {args.reps} run(s), {os.cpu_count()} cores, medians",
                ["measure", "value", "target", "verdict"], rows)
    print_table("per step, from the document's timings (s)", ["step", "median", "min", "max"],
                [spread_row(step, values, 2) for step, values in steps.items()])
    return 0


if __name__ == "__main__":
    run(main)
