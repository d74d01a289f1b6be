"""Key broker: attestations per second over HTTP against the raw verify rate, SQLite and PostgreSQL.

The KBS is `sevsim kbs serve --workers 0` (uvicorn, one worker process per core) on 127.0.0.1
with sevsim's roots and an attestation policy naming the guests' measurement. N concurrent
clients (threads here) each run Trustee's flow in a loop: POST /kbs/v0/auth, a fresh EC P-256
TEE key, a report from the
Secure Processor binding the nonce and the key (a real SNP_GUEST_REQUEST sealed with the
client's own guest context's VMPCK), POST /kbs/v0/attest. One attestation is auth + attest,
timed from the first byte sent to the token; every 10th also fetches the secret and opens the
JWE, which must give the planted bytes. The reference, in the same run: `verify_report_chain`
(`sevsim.attest`, chain cached, as `verify_rate.py`) on the same kind of report, one core, no
HTTP and no database. Ratio: KBS attestations per second / raw verifications per second;
target at least 0.5, i.e. HTTP, JSON, policies and the database cost less than the
verification itself. p50/p99 latency of one attestation. CPU milliseconds per attestation, from
/proc: the server's processes (not PostgreSQL's), the clients (this process: reports, keys,
JSON, HTTP), and one raw verification; on a machine where the clients share the server's
cores, their CPU counts against the rate, so the informational "verification's share" (one
raw verification / the server's CPU per attestation) is the figure that does not depend on
the core count. PostgreSQL comes from
SEVSIM_TEST_POSTGRES_URL (as `.ci/run` sets it), else a throwaway server from
tools/postgres_test_server.sh when Debian's postgresql is installed, else that row is skipped.

    python benchmarks/kbs.py [--quick] [--reps N] [--clients N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import REPO, BenchmarkError, median, parse_args, print_table, run, verdict
from sevsim.abi.kbs import EcPublicJwk, RuntimeData
from sevsim.abi.kbs_snp import snp_evidence_to_json
from sevsim.abi.snp_guest_msg import MsgType, ReportRequest, open_message, seal_message
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    ReportResponse,
    build_cert_table,
)
from sevsim.attest.snp_verify import CertBundle, ChainCache, verify_report_chain
from sevsim.firmware.snp_guest import SnpGuestRequests
from sevsim.firmware.snp_pki import snp_ca_chain
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import KbsClient
from sevsim.kbs.jose import decrypt_jwe
from sevsim.testing import launched_snp_guest, postgres_schema, secure_processor

TARGET = 0.5
MEASUREMENT = bytes(range(48))
SECRET = b"kbs-benchmark-secret:" + os.urandom(8).hex().encode()
PATH = "default/key/bench"
RESOURCE_POLICY = '[[rules]]\nresources = ["default/key/*"]\n[rules.claims]\npolicy_debug = false\n'
DER = serialization.Encoding.DER


class Platform:
    """A Secure Processor with one launched SNP guest context per client: each client seals
    its own requests with its own VMPCK and sequence numbers; the firmware is shared."""

    def __init__(self, clients: int) -> None:
        fw = secure_processor("milan", seed=b"kbs-benchmark")
        if not isinstance(fw, SnpGuestRequests):
            raise BenchmarkError("the milan Secure Processor has no SNP guest requests")
        fw.snp_init()
        self.fw = fw
        self.lock = threading.Lock()
        self.contexts = [launched_snp_guest(fw, 0x5000 + 0x1000 * i, measurement=MEASUREMENT,
                                            asid=1 + i) for i in range(clients)]
        self.seqnos = [1] * clients
        ask, ark = snp_ca_chain(fw.generation.value)
        self.certs = [(str(GUID_VCEK), fw.vcek_certificate(fw.tcb)),
                      (str(GUID_ASK), ask.public_bytes(DER)),
                      (str(GUID_ARK), ark.public_bytes(DER))]

    def report(self, client: int, report_data: bytes) -> bytes:
        """A report from the firmware for `client`'s guest context, as its guest asks."""
        ctx = self.contexts[client]
        with self.lock:
            seqno = self.seqnos[client]
            self.seqnos[client] += 2
            sealed = seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, seqno,
                                  ReportRequest(report_data, vmpl=0).to_bytes())
            answer = self.fw.snp_guest_request(ctx.gctx, sealed)
        _, plain = open_message(ctx.vmpcks[0], answer)
        response = ReportResponse.from_bytes(plain)
        if response.status:
            raise BenchmarkError(f"MSG_REPORT_REQ failed with status {response.status:#x}")
        return response.report


def raw_verify_rate(platform: Platform, count: int) -> float:
    """Reports verified per second by `verify_report_chain`, chain cached, one core."""
    report = platform.report(0, os.urandom(64))
    bundle = CertBundle.from_cert_table(_table(platform.certs))
    cache = ChainCache()
    if not verify_report_chain(report, bundle, trust="sevsim", cache=cache).ok:
        raise BenchmarkError("the firmware's report does not verify to sevsim's roots")
    start = time.perf_counter()
    for _ in range(count):
        verify_report_chain(report, bundle, trust="sevsim", cache=cache)
    return count / (time.perf_counter() - start)


def _table(certs: list[tuple[str, bytes]]) -> bytes:
    return build_cert_table([(uuid.UUID(guid), der) for guid, der in certs])


@dataclass
class Server:
    url: str
    admin: Ed25519PrivateKey
    pid: int

    def token(self) -> str:
        return issue_admin_token(self.admin)


@contextmanager
def kbs_server(db: str, workdir: Path) -> Iterator[Server]:
    """`sevsim kbs serve` on a free port of 127.0.0.1, with the secret and both policies set."""
    admin = generate_admin_key()
    public = workdir / "admin.pub.pem"
    public.write_bytes(admin.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    key = workdir / "secret.key"
    key.write_bytes(os.urandom(32))
    log = open(workdir / "serve.log", "w+b")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "sevsim", "kbs", "serve", "--admin-key", str(public), "--db", db,
         "--secret-key-file", str(key), "--port", "0", "--trust", "sevsim", "--workers", "0"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=workdir)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise BenchmarkError(f"sevsim kbs serve did not start: {log.read().decode()}")
            log.seek(0)
            for line in log.read().decode().splitlines():
                if line.startswith("sevsim kbs: http://"):
                    url = line.split()[2].removesuffix("/kbs/v0/")
            time.sleep(0.05)
        server = Server(url, admin, process.pid)
        with KbsClient(url) as client:
            client.set_resource(server.token(), PATH, SECRET)
            client.set_resource_policy(server.token(), RESOURCE_POLICY)
            client.set_attestation_policy(
                server.token(), f'[guest]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def attest_loop(server: Server, platform: Platform, client: int, count: int,
                latencies: list[float], errors: list[str]) -> None:
    """`count` attestations by one client; every 10th also fetches and opens the secret."""
    try:
        with KbsClient(server.url) as kbs:  # one kept-alive connection, as Trustee's client
            for i in range(count):
                attest_once(kbs, platform, client, latencies, fetch=i % 10 == 0)
    except Exception as error:  # reported by the main thread
        errors.append(repr(error))


def attest_once(kbs: KbsClient, platform: Platform, client: int, latencies: list[float],
                fetch: bool) -> None:
    """One attestation in a new session; with `fetch`, also the secret, which must open."""
    kbs.session = None
    start = time.perf_counter()
    nonce = kbs.auth()["nonce"]
    key = ec.generate_private_key(ec.SECP256R1())
    runtime = RuntimeData(nonce=nonce, tee_pubkey=EcPublicJwk.from_key(key.public_key()))
    report = platform.report(client, runtime.report_data())
    token = kbs.attest({
        "runtime-data": runtime.to_json(),
        "tee-evidence": {"primary_evidence": snp_evidence_to_json(report, platform.certs),
                         "additional_evidence": ""}})
    latencies.append(time.perf_counter() - start)
    if fetch and decrypt_jwe(key, kbs.resource(PATH, token)) != SECRET:
        raise BenchmarkError("the released JWE does not open to the planted secret")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and of every descendant alive now (a server's
    workers), from /proc."""
    total, todo, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # it ended meanwhile
            continue
    return total


@dataclass
class Run:
    """One timed run: attestations per second, each one's latency, and the CPU seconds per
    attestation of the server (all its processes) and of the clients (this process)."""

    rate: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float


def measure(server: Server, platform: Platform, clients: int, per_client: int) -> Run:
    """`clients` threads each attesting `per_client` times."""
    latencies: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=attest_loop,
                                args=(server, platform, i, per_client, latencies, errors))
               for i in range(clients)]
    cpu = tree_cpu_seconds(server.pid), time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    count = clients * per_client
    server_cpu = (tree_cpu_seconds(server.pid) - cpu[0]) / count
    client_cpu = (time.process_time() - cpu[1]) / count
    if errors:
        raise BenchmarkError(f"{len(errors)} client(s) failed, first: {errors[0]}")
    return Run(count / elapsed, latencies, server_cpu, client_cpu)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def postgres() -> Iterator[str | None]:
    """A PostgreSQL URL with a fresh schema for this run, or None when there is no server."""
    url = os.environ.get("SEVSIM_TEST_POSTGRES_URL")
    started = None
    if not url and Path("/usr/lib/postgresql").is_dir():
        # its own directory under /tmp: the server may run as another user (postgres)
        started = Path(tempfile.mkdtemp(prefix="sevsim-kbs-bench-pg-"))
        url = subprocess.run(["bash", str(REPO / "tools" / "postgres_test_server.sh"), "start",
                              str(started)], check=True, capture_output=True,
                             text=True).stdout.strip()
    if not url:
        yield None
        return
    try:
        with postgres_schema(url, "kbs_bench") as schema_url:
            yield schema_url
    finally:
        if started is not None:
            subprocess.run(["bash", str(REPO / "tools" / "postgres_test_server.sh"), "stop",
                            str(started)], check=True)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=3)
    clients = 2 if args.quick else 8
    per_client = 10 if args.quick else 50
    platform = Platform(clients)
    rows = []
    ratios: dict[str, float] = {}
    shares: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg_url:
        backends = {"SQLite": f"sqlite:///{tmp}/kbs.db", "PostgreSQL": pg_url}
        for name, db in backends.items():
            if db is None:
                rows.append([f"KBS on {name}", "skipped: no server", *[""] * 6])
                continue
            workdir = Path(tmp) / name
            workdir.mkdir()
            with kbs_server(db, workdir) as server:
                runs, raws = [], []
                measure(server, platform, clients, 2)  # warm: connections, caches, imports
                for _ in range(args.reps):
                    raws.append(raw_verify_rate(platform, 200 if args.quick else 1000))
                    runs.append(measure(server, platform, clients, per_client))
            ratios[name] = median([run.rate / raw for run, raw in zip(runs, raws, strict=True)])
            shares[name] = median([1 / raw / run.server_cpu
                                   for run, raw in zip(runs, raws, strict=True)])
            latencies = [latency for run in runs for latency in run.latencies]
            rows.append([f"KBS on {name}, {clients} clients",
                         f"{median([run.rate for run in runs]):.0f}",
                         f"{median(raws):.0f}", f"{percentile(latencies, 0.5) * 1e3:.1f}",
                         f"{percentile(latencies, 0.99) * 1e3:.1f}",
                         f"{median([r.server_cpu for r in runs]) * 1e3:.2f}",
                         f"{median([r.client_cpu for r in runs]) * 1e3:.2f}",
                         f"{1e3 / median(raws):.2f}"])
    print(f"key broker: {clients} concurrent clients x {per_client} attestations (auth + "
          f"attest), {args.reps} repetition(s), sevsim kbs serve --workers 0 ({os.cpu_count()} "
          "worker processes) on 127.0.0.1")
    print_table("attestations per second (higher is better), latency of one (ms), CPU ms per "
                "attestation: the server's processes, the clients, one raw verification",
                ["", "KBS/s", "raw verify/s", "p50 ms", "p99 ms", "server CPU", "client CPU",
                 "verify"], rows)
    for name, ratio in ratios.items():
        print(f"RATIO KBS on {name} / raw verify_report_chain = {ratio:.2f} "
              f"(target >= {TARGET}): {verdict(ratio, TARGET, at_least=True)}")
    for name, share in shares.items():
        print(f"verification's share of the server's CPU on {name}: one raw verification / "
              f"server CPU per attestation = {share:.2f} (informational)")
    print("every 10th attestation fetched the secret; each JWE opened to the planted bytes")
    return 0


if __name__ == "__main__":
    run(main)
