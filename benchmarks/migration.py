"""Migration throughput: a 256 MiB SEV VM moved between two hosts, against the engine's dram_dump.

Two Milan `Host`s in one process. An SEV VM of 256 MiB (32 MiB with --quick) runs
examples/bench.c, is paused after a few milliseconds and migrated back and forth between the
hosts (`sevsim.host.migration.migrate`), one migration per repetition: SEND_START, every page
through SEND_UPDATE_DATA / RECEIVE_UPDATE_DATA (decrypted with the VM key, AES-128-CTR under
the TEK and HMAC-SHA256 under the TIK on the source; MAC check, decryption and encryption
under the new VM key on the target), the vCPU and devices, SEND_FINISH / RECEIVE_FINISH. The
timed call covers both hosts' whole work, target VM creation included (its memory warmed up
first, as a running host's is). At the end the VM runs to completion on whichever host holds
it and must print the checksum it prints without migration.

The reference is the engine's raw throughput measured in the same run: `dram_dump(out=...)`
of 256 MiB (32 MiB) of SEV pages, as benchmarks/engine_throughput.py measures it. For
context: the same migration of a plain VM (no firmware, no encryption), and the transport
formulas alone over the same bytes (`seal_packet` + `open_packet` in 2 MiB packets: two
AES-CTR and two HMAC-SHA256 passes, which every SEV migration pays whatever the simulator).

    python benchmarks/migration.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from engine_throughput import make_memory, timed
from harness import BenchmarkError, build_bench, checksum_line, median, parse_args, print_table, run
from sevsim.abi.sev_session import TransportKeys, open_packet, seal_packet
from sevsim.host.machine import Host
from sevsim.host.migration import CHUNK_PAGES, migrate
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.engine import PAGE

CHIP = "milan"
TIMEOUT_S = 600.0


def warm(host: Host, size: int) -> None:
    """Touch the memory a VM of `size` will get and build the certificate chain once: what a
    host that has been running for a while has done already."""
    host.create_vm(mode="sev", memory=size).destroy()
    host.firmware.pdh_cert_export()


def dump_throughput(size: int, reps: int) -> list[float]:
    """GB/s of `dram_dump(out=...)` over `size` bytes of SEV pages, as engine_throughput.py."""
    plain = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    out = np.empty(size, dtype=np.uint8)
    out[:] = 0  # touch every page now, not during the first timed dump
    memory = make_memory(CHIP, size, plain)
    return [size / timed(lambda: memory.dram_dump(out=out)) / 1e9 for _ in range(reps)]


def transport_crypto(size: int) -> float:
    """Seconds for the packet formulas alone over `size` bytes: seal, then open, per packet."""
    keys = TransportKeys(os.urandom(16), os.urandom(16))
    chunk = os.urandom(CHUNK_PAGES * PAGE)

    def run() -> None:
        for _ in range(size // len(chunk)):
            header, data = seal_packet(keys, os.urandom(16), chunk, b"")
            open_packet(keys, header, data, b"")

    return timed(run)


def migrations(elf: bytes, mode: str, size: int, reps: int) -> tuple[list[float], str]:
    """Seconds of each of `reps` migrations of one VM between two hosts, and its console."""
    hosts = [Host(CHIP, memory=size + (64 << 20)) for _ in range(2)]
    for host in hosts:
        warm(host, size)
    vm: VirtualMachine = hosts[0].create_vm(mode=mode, memory=size)
    vm.load(elf)
    vm.launch(policy=0)
    if vm.run_for(0.005):
        raise BenchmarkError("the bench guest finished before it could be paused")
    seconds = []
    for rep in range(reps):
        start = time.perf_counter()
        vm = migrate(vm, hosts[(rep + 1) % 2])
        seconds.append(time.perf_counter() - start)
    result = vm.run(timeout=TIMEOUT_S)
    if result.exit_code != 0:
        raise BenchmarkError(f"migrated {mode} VM exited {result.exit_code}:\n{result.console}")
    return seconds, result.console


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=5)
    size = (32 if args.quick else 256) << 20
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_bench(Path(tmp), args.quick)
    print(f"migration: a {size >> 20} MiB VM running examples/bench.c"
          f"{' at BENCH_SCALE=1' if args.quick else ''} between two {CHIP} hosts, "
          f"{args.reps} migration(s) per mode")

    reference = Host(CHIP, memory=size + (64 << 20))
    ref_vm = reference.create_vm(mode="sev", memory=size)
    ref_vm.load(elf)
    ref_vm.launch()
    expected = checksum_line(ref_vm.run(timeout=TIMEOUT_S).console)
    ref_vm.destroy()
    del reference

    dumps = dump_throughput(size, args.reps)
    results: dict[str, list[float]] = {}
    for mode in ("sev", "none"):
        seconds, console = migrations(elf, mode, size, args.reps)
        if checksum_line(console) != expected:
            raise BenchmarkError(f"the migrated {mode} VM printed {checksum_line(console)!r}, "
                                 f"expected {expected!r}")
        results[mode] = [size / s / 1e9 for s in seconds]
    crypto = [size / transport_crypto(size) / 1e9 for _ in range(args.reps)]

    def row(label: str, values: list[float]) -> list[str]:
        return [label, f"{max(values):.3f}", f"{median(values):.3f}"]

    print_table("GB/s of guest memory (higher is better)", ["", "best", "median"], [
        row(f"engine dram_dump, {size >> 20} MiB of SEV pages (XEX, {CHIP})", dumps),
        row(f"migrate() SEV VM, {size >> 20} MiB, host to host", results["sev"]),
        row(f"migrate() plain VM, {size >> 20} MiB, host to host", results["none"]),
        row("transport formulas alone: seal_packet + open_packet", crypto),
    ])
    ratio = median(results["sev"]) / median(dumps)
    print(f"\nRATIO SEV migration / engine dram_dump = {ratio:.3f} median "
          f"(no target; the transport formulas alone reach "
          f"{median(crypto) / median(dumps):.3f} of dram_dump)")
    print(f"      both migrated VMs finished with {expected!r}")
    return 0


if __name__ == "__main__":
    run(main)
