"""`sevsim measure` on OVMF.fd vs sev-snp-measure computing the same digest, whole process.

Each repetition runs both commands as fresh processes (`python -m sevsim measure ...` and
`python -m sevsnpmeasure.cli ...`, interleaved) for an SNP launch of Debian's OVMF.fd with
4 vCPUs of type EPYC-Milan, checks that they print the same digest, and times them. Also
shown, not targeted: the same digests computed in-process through both Python APIs, and
the cost of `import sevsim` alone (the floor every `sevsim` command pays).
Target: median time ratio sevsim / reference at most 1.0.

    python benchmarks/measure.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BenchmarkError, median, parse_args, print_table, run, spread_row, verdict

TARGET = 1.0
OVMF_CANDIDATES = (Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/OVMF/OVMF.fd"))
ARGS = ["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan"]
# Both commands run from compiled bytecode, as after `pip install`: with PYTHONDONTWRITEBYTECODE
# an editable sevsim would be recompiled on every run while site-packages has its .pyc files.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="sevsim-bench-pyc-")


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise BenchmarkError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return elapsed, done.stdout.strip()


def in_process(ovmf: Path, count: int) -> tuple[float, float]:
    """Seconds per digest through sevsim.attest.measure and through sevsnpmeasure.guest."""
    from sevsnpmeasure import guest
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    from sevsim.attest.measure import snp_ovmf_digest

    start = time.perf_counter()
    for _ in range(count):
        ours = snp_ovmf_digest(ovmf.read_bytes(), 4, "EPYC-Milan")
    mine = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for _ in range(count):
        theirs = guest.calc_launch_digest(SevMode.SEV_SNP, 4, CPU_SIGS["EPYC-Milan"],
                                          str(ovmf), None, None, None, 1)
    reference = (time.perf_counter() - start) / count
    if ours != theirs:
        raise BenchmarkError("the in-process digests differ")
    return mine, reference


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=15)
    ovmf = next((p for p in OVMF_CANDIDATES if p.exists()), None)
    if ovmf is None:
        raise BenchmarkError("no OVMF.fd: apt-get install ovmf")
    try:
        import sevsnpmeasure  # noqa: F401
    except ImportError:
        raise BenchmarkError("sev-snp-measure is not installed: pip install -e '.[dev]'"
                             ) from None
    sevsim = [sys.executable, "-m", "sevsim", "measure", "--ovmf", str(ovmf), *ARGS]
    reference = [sys.executable, "-m", "sevsnpmeasure.cli", "--ovmf", str(ovmf), *ARGS]
    floor = [sys.executable, "-c", "import sevsim"]
    times: dict[str, list[float]] = {"sevsim": [], "reference": [], "floor": []}
    timed(sevsim)  # warm the page cache and bytecode caches for both
    timed(reference)
    for _ in range(args.reps):
        seconds, ours = timed(sevsim)
        times["sevsim"].append(seconds)
        seconds, theirs = timed(reference)
        times["reference"].append(seconds)
        if ours != theirs:
            raise BenchmarkError(f"digests differ: sevsim {ours}, sev-snp-measure {theirs}")
        times["floor"].append(timed(floor)[0])
    mine, ref = in_process(ovmf, 3 if args.quick else 20)
    print(f"measure: SNP digest of {ovmf} ({ovmf.stat().st_size >> 10} KiB), 4 vCPUs "
          f"EPYC-Milan, {args.reps} repetition(s); digest {ours[:16]}... (equal)")
    print_table("whole process, seconds (lower is better)", ["", "median", "min", "max"], [
        spread_row("sevsim measure", times["sevsim"]),
        spread_row("sev-snp-measure", times["reference"]),
        spread_row("python -c 'import sevsim' (floor)", times["floor"])])
    print(f"\nin process, per digest: sevsim.attest.measure {mine * 1e3:.1f} ms, "
          f"sevsnpmeasure.guest {ref * 1e3:.1f} ms (ratio {mine / ref:.2f})")
    ratio = median(times["sevsim"]) / median(times["reference"])
    print(f"RATIO sevsim / sev-snp-measure (whole process) = {ratio:.2f} (target <= "
          f"{TARGET}): {verdict(ratio, TARGET, at_least=False)}")
    return 0


if __name__ == "__main__":
    run(main)
