"""The host-provided vTPM's costs: quote latency through sevsim vs the bare swtpm socket.

sevsim's side is `Vtpm.quote` (TPM2_Quote marshalled, sent on a fresh unix-socket connection,
the response parsed into TPMS_ATTEST and TPMT_SIGNATURE), then `verify_quote`. The reference
is the same command bytes written to the same swtpm on one already-open connection and the
response read back: the TPM's own work with no sevsim code around it. Also reported: the
swtpm start and stop a VM with a vTPM adds (Vtpm() and close(), CMD_SHUTDOWN included), and
the boot-time overhead of the vTPM: examples/hello.c in an SEV-SNP VM created with
`vtpm=True` (swtpm started, the guest kernel's TPM2_Startup, measured boot of 14 events into
two banks through the GHCB, the event log handed over, TPM2_Shutdown(STATE) and swtpm stopped
at the end) against the same VM without one, create + load + launch + run + destroy,
interleaved on one Host. Both measure the boot into the SNP-bound vTPM as well, so the
difference is the host vTPM's alone.

Side by side, the SNP-bound vTPM: the same TPM2_Quote run by the guest kernel's libtpms at
VMPL0 of a booted SNP VM, its state in private guest memory (`SvsmVtpm.execute`); the same
with a second VM's TPM in between every quote (each quote then terminates the one libtpms
and resumes the TPM from its VM's memory). Every in-VM command also writes the TPM's volatile
state back to guest memory. No target: issue 14 asks for the figures.

    python benchmarks/vtpm.py [--quick] [--reps N]
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

from harness import REPO, BenchmarkError, median, parse_args, print_table, run, spread_row
from sevsim import Host, Vtpm
from sevsim.abi import tpm2
from sevsim.attacks.lab import VICTIMS
from sevsim.attest import verify_quote
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import GuestKernel
from sevsim.guest.svsm_vtpm import SvsmVtpm
from sevsim.hw.cpu import GuestCpu
from sevsim.testing import guest_cpu, guest_software

SELECTION = {tpm2.HashAlg.SHA256: [0, 4, 7, 8, 9], tpm2.HashAlg.SHA384: [0, 4, 7]}
NONCE = bytes(range(32))


def bare_round_trip(conn: socket.socket, command: bytes) -> bytes:
    conn.sendall(command)
    response = b""
    while len(response) < 10 or len(response) < int.from_bytes(response[2:6], "big"):
        chunk = conn.recv(4096)
        if not chunk:
            raise BenchmarkError("swtpm closed the connection")
        response += chunk
    return response


def boot_once(host: Host, elf: bytes, vtpm: bool) -> float:
    """Seconds from create_vm to destroy of one SNP VM running hello.c."""
    start = time.perf_counter()
    vm = host.create_vm(mode="snp", memory="16M", vtpm=vtpm)
    try:
        vm.load(elf, cmdline="hello.elf")
        vm.launch()
        result = vm.run(timeout=120)
    finally:
        vm.destroy()
    elapsed = time.perf_counter() - start
    if result.exit_code != 0 or "snp=1" not in result.console:
        raise BenchmarkError(f"hello.c (vtpm={vtpm}) exited {result.exit_code}:\n"
                             f"{result.console}")
    if vtpm != bool(result.event_log):
        raise BenchmarkError(f"vtpm={vtpm} but the run gave {len(result.event_log)} bytes "
                             "of event log")
    return elapsed


def boot_overhead(reps: int) -> None:
    """The same guest with and without a vTPM, interleaved; prints the table and ratio."""
    from sevsim.guest.build import build_guest

    with tempfile.TemporaryDirectory() as tmp:
        elf = build_guest([REPO / "examples" / "hello.c"], Path(tmp) / "hello.elf").read_bytes()
    host = Host()
    boot_once(host, elf, True)  # warm-up: imports, libtpms self-tests in a first swtpm
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(max(reps, 3)):
        for vtpm in (True, False) if rep % 2 == 0 else (False, True):
            times[vtpm].append(boot_once(host, elf, vtpm))
    print_table("\nboot of examples/hello.c in an SNP VM, create to destroy: milliseconds",
                ["", "median", "min", "max"], [
                    spread_row("with a vTPM (swtpm, measured boot)",
                               [1e3 * t for t in times[True]]),
                    spread_row("without", [1e3 * t for t in times[False]])])
    print(f"\nRATIO boot with vTPM / without = "
          f"{median(times[True]) / median(times[False]):.2f} (reported, no target)")


def svsm_vtpms(count: int) -> list[tuple[SvsmVtpm, GuestCpu]]:
    """The in-VM vTPMs of `count` booted SNP VMs (each measured its command line)."""
    elf = build_guest([VICTIMS / "measured_boot.c"],
                      Path(tempfile.mkdtemp(prefix="sevsim-bench-")) / "measured_boot.elf")
    host = Host(chip="milan", memory="128M")
    out = []
    for _ in range(count):
        vm = host.create_vm(mode="snp", memory="16M")
        vm.load(elf)
        vm.launch()
        vm.host_input = NONCE + b"console=ttyS0"
        if vm.run(timeout=120).exit_code != 0:
            raise BenchmarkError(f"the SNP guest failed: {vm.console}")
        kernel = guest_software(vm.hv.vcpus[0])
        if not isinstance(kernel, GuestKernel) or kernel.vtpm is None:
            raise BenchmarkError("the SNP guest made no vTPM")
        out.append((kernel.vtpm, guest_cpu(vm.hv.vcpus[0])))
    return out


def svsm_quotes(pair: list[tuple[SvsmVtpm, GuestCpu]], count: int,
                swap: bool) -> float:
    """Milliseconds per TPM2_Quote of the first VM's in-VM TPM (with the second's PCR read
    in between when `swap`, not timed)."""
    (tpm, cpu), (other, other_cpu) = pair
    ak = tpm2.parse_create_primary_response(tpm.execute(cpu, tpm2.create_primary_command(
        tpm2.ecc_ak_template())))
    command = tpm2.quote_command(ak.handle, NONCE, SELECTION)
    tpm2.parse_quote_response(tpm.execute(cpu, command))
    spent = 0.0
    for _ in range(count):
        if swap:
            other.pcr_read(other_cpu, {tpm2.HashAlg.SHA256: [8]})
        start = time.perf_counter()
        tpm2.parse_quote_response(tpm.execute(cpu, command))
        spent += time.perf_counter() - start
    tpm2.parse_flush_context_response(tpm.execute(cpu, tpm2.flush_context_command(
        ak.handle)))
    return 1e3 * spent / count


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=5)
    if shutil.which("swtpm") is None:
        raise BenchmarkError("swtpm is not installed (apt-get install swtpm)")
    count = 20 if args.quick else 200
    ms: dict[str, list[float]] = {"start": [], "stop": [], "sevsim": [], "bare": [],
                                  "verify": [], "svsm": [], "svsm-swap": []}
    pair = svsm_vtpms(2)
    for _ in range(args.reps):
        ms["svsm"].append(svsm_quotes(pair, count, swap=False))
        ms["svsm-swap"].append(svsm_quotes(pair, count, swap=True))
        start = time.perf_counter()
        tpm = Vtpm()
        ms["start"].append(1e3 * (time.perf_counter() - start))
        try:
            ak = tpm.create_ak()
            tpm.quote(ak.handle, NONCE, SELECTION)  # libtpms self-tests ECDSA on first use
            command = tpm2.quote_command(ak.handle, NONCE, SELECTION)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(tpm.socket_path)
                start = time.perf_counter()
                for _ in range(count):
                    response = bare_round_trip(conn, command)
                ms["bare"].append(1e3 * (time.perf_counter() - start) / count)
            if rc := tpm2.response_code(response):
                raise BenchmarkError(f"bare TPM2_Quote: {tpm2.rc_name(rc)}")
            start = time.perf_counter()
            for _ in range(count):
                attest, signature = tpm.quote(ak.handle, NONCE, SELECTION)
            ms["sevsim"].append(1e3 * (time.perf_counter() - start) / count)
            values = tpm.pcr_read(SELECTION)
            start = time.perf_counter()
            for _ in range(count):
                verify_quote(ak.public, attest, signature, NONCE, values)
            ms["verify"].append(1e3 * (time.perf_counter() - start) / count)
        finally:
            start = time.perf_counter()
            tpm.close()
            ms["stop"].append(1e3 * (time.perf_counter() - start))
    print(f"vTPM: {count} quotes over {sum(map(len, SELECTION.values()))} PCRs per repetition, "
          f"{args.reps} repetition(s)")
    print_table("milliseconds (lower is better)", ["", "median", "min", "max"], [
        spread_row("Vtpm.quote (sevsim: marshal, connect, swtpm, parse)", ms["sevsim"]),
        spread_row("TPM2_Quote on an open swtpm socket (bare)", ms["bare"]),
        spread_row("SNP-bound vTPM: TPM2_Quote by libtpms at VMPL0", ms["svsm"]),
        spread_row("SNP-bound vTPM: the same, another VM's TPM in between", ms["svsm-swap"]),
        spread_row("verify_quote (ECDSA P-256 + PCR digest)", ms["verify"]),
        spread_row("swtpm start (Vtpm())", ms["start"]),
        spread_row("swtpm stop (close: CMD_SHUTDOWN)", ms["stop"])])
    print(f"\nRATIO sevsim quote / bare quote = {median(ms['sevsim']) / median(ms['bare']):.2f} "
          "(reported, no target)")
    print(f"RATIO SNP-bound quote / host swtpm quote = "
          f"{median(ms['svsm']) / median(ms['sevsim']):.2f}; with a state swap = "
          f"{median(ms['svsm-swap']) / median(ms['sevsim']):.2f} (reported, no target)")
    boot_overhead(args.reps)
    return 0


if __name__ == "__main__":
    run(main)
