"""The attack matrix on every core: wall time, the slowest cell, and parallel efficiency.

Every cell of `sevsim attack matrix` (each attack at none, sev, sev-es, snp and at its fixes)
is run in a process pool of one worker per core, each cell timed on its own; the same cells'
verdicts must come out as a serial run of a sample gives them (the matrix is deterministic).
Reported: the matrix's wall time (target: a few minutes on 2 cores, 300 s), the slowest
cell (target: one attack in seconds, 10 s), and the parallel efficiency, the sum of cell
times over wall time times workers (target at least 0.7: the matrix uses every core).
--quick runs the first three attacks only.

    python benchmarks/attack_matrix.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor

from harness import BenchmarkError, median, parse_args, print_table, run, verdict
from sevsim.attacks import ATTACKS, Outcome, Setting, run_attack
from sevsim.attacks.runner import cells

WALL_TARGET_S = 300.0
CELL_TARGET_S = 10.0
EFFICIENCY_TARGET = 0.7


def timed_cell(cell: tuple[str, Setting]) -> tuple[Outcome, float]:
    start = time.perf_counter()
    outcome = run_attack(ATTACKS[cell[0]], cell[1])
    return outcome, time.perf_counter() - start


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=1)
    attacks = list(ATTACKS.values())[:3] if args.quick else list(ATTACKS.values())
    todo = cells(attacks)
    workers = os.cpu_count() or 1
    walls, results = [], []
    for _ in range(args.reps):
        start = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(timed_cell, todo))
        walls.append(time.perf_counter() - start)
    sample = todo[::max(1, len(todo) // 4)]  # a serial rerun of some cells: same verdicts
    for cell in sample:
        again = run_attack(ATTACKS[cell[0]], cell[1])
        first = next(o for o, _ in results if (o.attack, o.setting) == cell)
        if (again.verdict, again.evidence) != (first.verdict, first.evidence):
            raise BenchmarkError(f"{cell[0]} at {cell[1].label}: {first.verdict.value} in the "
                                 f"pool, {again.verdict.value} alone")
    wall = median(walls)
    slowest, slowest_s = max(results, key=lambda item: item[1])
    efficiency = sum(seconds for _, seconds in results) / (wall * workers)
    print_table(f"attack matrix: {len(todo)} cells, {len(attacks)} attacks, {workers} workers",
                ["measure", "value", "target", "verdict"], [
                    ["matrix wall time (s)", f"{wall:.1f}", f"<= {WALL_TARGET_S:.0f}",
                     verdict(WALL_TARGET_S / wall, 1.0, at_least=True)],
                    [f"slowest cell (s): {slowest.attack} {slowest.setting.label}",
                     f"{slowest_s:.1f}", f"<= {CELL_TARGET_S:.0f}",
                     verdict(CELL_TARGET_S / slowest_s, 1.0, at_least=True)],
                    ["parallel efficiency", f"{efficiency:.2f}", f">= {EFFICIENCY_TARGET}",
                     verdict(efficiency, EFFICIENCY_TARGET, at_least=True)],
                ])
    per_attack: dict[str, float] = {}
    for outcome, seconds in results:
        per_attack[outcome.attack] = per_attack.get(outcome.attack, 0.0) + seconds
    print_table("time per attack (all its cells)", ["attack", "seconds"],
                [[name, f"{seconds:.1f}"] for name, seconds in per_attack.items()])
    return 0


if __name__ == "__main__":
    run(main)
