"""Secret injection end to end: what a guest owner adds to an SEV launch.

One `Host()` (default chip, Milan) launches examples/secret_consumer.c again and again,
alternating a launch without an owner (LAUNCH_START with random keys, ACTIVATE, UPDATE_DATA,
MEASURE, FINISH) and a launch with one (PDH_CERT_EXPORT, the owner verifies the chain to
sevsim's simulated root and opens an ECDH session, LAUNCH_START opens it, ..., the owner checks
LAUNCH_MEASURE and seals the secret, LAUNCH_SECRET, FINISH). Each VM then runs, and the guest
must print the secret's SHA-256. The table also times the owner's steps alone. The issue sets
no target for this latency: the ratio (owner launch / plain launch) is reported as measured.

    python benchmarks/secret_injection.py [--quick] [--reps N]
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import REPO, BenchmarkError, median, parse_args, print_table, run, spread_row
from sevsim.attest.sev_chain import PlatformChain, verify
from sevsim.attest.sev_owner import GuestOwner, expected_launch_digest, make_session
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host

MEMORY = 16 << 20
SECRET = os.urandom(256)


def launch_once(host: Host, elf: bytes, owner: GuestOwner | None) -> float:
    """Seconds of vm.launch(); the guest then runs and must have found the secret (or not)."""
    vm = host.create_vm(mode="sev", memory=MEMORY)
    try:
        vm.load(elf)
        start = time.perf_counter()
        vm.launch(owner=owner)
        elapsed = time.perf_counter() - start
        console = vm.run(timeout=60).console
    finally:
        vm.destroy()
    expected = (f"secret sha256: {hashlib.sha256(SECRET).hexdigest()}" if owner
                else "no secret was injected")
    if expected not in console:
        raise BenchmarkError(f"the guest printed:\n{console}\nexpected {expected!r}")
    return elapsed


def timed(step: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=15)
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_guest([REPO / "examples" / "secret_consumer.c"],
                          Path(tmp) / "consumer.elf").read_bytes()
    host = Host()
    digest = expected_launch_digest(parse_elf(elf), MEMORY, 1, kernel_identity())

    def owner() -> GuestOwner:
        return GuestOwner(SECRET, digest, trust="sevsim")

    launch_once(host, elf, owner())  # warm-up: loads the simulated root, builds the CEK cert
    print(f"secret injection: examples/secret_consumer.c, {MEMORY >> 20} MiB SEV VMs on one "
          f"{host.chip.name} host, {args.reps} interleaved repetition(s) of each")
    plain: list[float] = []
    owned: list[float] = []
    for rep in range(args.reps):
        order = ((plain, None), (owned, owner())) if rep % 2 == 0 else (
            (owned, owner()), (plain, None))
        for times, who in order:
            times.append(launch_once(host, elf, who))

    pdh, certs = host.firmware.pdh_cert_export()
    chain = PlatformChain(pdh, certs.pek, certs.oca, certs.cek)
    steps = [
        ("owner: expected launch digest", lambda: expected_launch_digest(
            parse_elf(elf), MEMORY, 1, kernel_identity())),
        ("owner: verify the chain", lambda: verify(chain, "sevsim", "milan")),
        ("owner: open a session (ECDH)", lambda: make_session(pdh)),
    ]
    rows = [spread_row("launch without owner", [t * 1e3 for t in plain], 2),
            spread_row("launch with owner and secret", [t * 1e3 for t in owned], 2)]
    rows += [[name, f"{timed(step, args.reps) * 1e3:.2f}", "", ""] for name, step in steps]
    print_table("milliseconds (lower is better): median, min, max", ["", "median", "min", "max"],
                rows)
    print(f"RATIO owner launch / plain launch = {median(owned) / median(plain):.2f} "
          "(informational: no target)")
    return 0


if __name__ == "__main__":
    run(main)
