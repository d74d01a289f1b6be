"""Guest-request round trip: guest → hypervisor → firmware → guest, for MSG_REPORT_REQ.

An SNP guest (benchmarks/guests/report_loop.c) asks for N reports back to back; the same
guest built with N = 0 gives the cost of everything else (boot, exit), subtracted. The
firmware's own share is timed alone in the same run (the firmware answering pre-sealed
requests, as benchmarks/report_signing.py does), so the table shows what the round trip adds
over the Secure Processor's work: the guest kernel's sealing and checks, the GHCB and VMGEXIT,
and the hypervisor's copies. The issue sets no target: the latency is reported as measured.

    python benchmarks/guest_request.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness import BenchmarkError, median, parse_args, print_table, run, spread_row
from report_signing import GCTX, firmware
from sevsim.abi.snp_guest_msg import MsgType, ReportRequest, seal_message
from sevsim.guest.build import build_guest
from sevsim.host.machine import Host

HERE = Path(__file__).resolve().parent


def guest_seconds(host: Host, elf: Path) -> float:
    vm = host.create_vm(mode="snp", memory="16M")
    try:
        vm.load(elf)
        vm.launch()
        start = time.perf_counter()
        result = vm.run(timeout=300)
        elapsed = time.perf_counter() - start
        if result.exit_code != 0:
            raise BenchmarkError(f"report_loop exited {result.exit_code}: {result.console}")
        return elapsed
    finally:
        vm.destroy()


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=3)
    reports = 20 if args.quick else 200
    workdir = Path(tempfile.mkdtemp())
    source = HERE / "guests" / "report_loop.c"
    loop = build_guest([source], workdir / "loop.elf", cflags=[f"-DREPORTS={reports}"])
    empty = build_guest([source], workdir / "empty.elf", cflags=["-DREPORTS=0"])
    host = Host(memory="128M")
    fw, ctx = firmware()
    times: dict[str, list[float]] = {"round": [], "firmware": []}
    seqno = 1
    for _ in range(args.reps):
        per = (guest_seconds(host, loop) - guest_seconds(host, empty)) / reports
        times["round"].append(per * 1e6)
        requests = [seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, seqno + 2 * i,
                                 ReportRequest(os.urandom(64)).to_bytes())
                    for i in range(reports)]
        seqno += 2 * reports
        start = time.perf_counter()
        for request in requests:
            fw.snp_guest_request(GCTX, request)
        times["firmware"].append((time.perf_counter() - start) / reports * 1e6)
    print(f"guest request round trip: {reports} reports per run, {args.reps} repetition(s)")
    print_table("microseconds per MSG_REPORT_REQ (lower is better)", ["", "median", "min", "max"],
                [spread_row("guest -> hypervisor -> firmware -> guest", times["round"], 0),
                 spread_row("the firmware's part alone", times["firmware"], 0)])
    ratio = median(times["round"]) / median(times["firmware"])
    print(f"\nRATIO round trip / firmware alone = {ratio:.2f} (informational: no target)")
    return 0


if __name__ == "__main__":
    run(main)
