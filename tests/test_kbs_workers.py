"""`sevsim kbs serve --workers N`: forked workers that each really serve, share one token key,
stop on SIGTERM leaving no process behind, and take the server down when one of them dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import postgres_test_url
from sevsim import Host
from sevsim.abi.snp_report import parse_cert_table
from sevsim.errors import ConfigError
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import KbsClient
from sevsim.kbs.jose import decrypt_jwe
from sevsim.kbs.store import Store
from sevsim.kbs.workers import MAX_WORKERS, worker_count
from sevsim.testing import postgres_schema
from test_kbs_service import (
    PATH,
    RESOURCE_POLICY,
    SECRET,
    Evidence,
    attestation,
    sevsim,
    tee_key,
)

SECRET_KEY = os.urandom(32)


@pytest.fixture(scope="module")
def evidence(build: Callable[..., Path]) -> Evidence:
    """A sevsim SNP VM's report and certificates, as test_kbs_service's fixture makes them."""
    host = Host(chip="milan", seed=b"kbs-workers")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = bytes(64)
    vm.launch()
    assert vm.run(timeout=60).exit_code == 0
    certs = [(str(guid), der) for guid, der in parse_cert_table(vm.outputs[1])]
    return Evidence(host, vm.outputs[0], certs)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new SQLite file, or a new schema in the PostgreSQL server .ci/run starts."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/kbs.db"
        return
    with postgres_schema(postgres_test_url(), "kbs_workers") as url:
        yield url


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    workers: list[int]
    log: Path
    admin: Ed25519PrivateKey

    def token(self) -> str:
        return issue_admin_token(self.admin)

    def stderr(self) -> str:
        return self.log.read_text()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):  # gone meanwhile
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")"
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)


def state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped...), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


@contextmanager
def kbs_serve(tmp_path: Path, db: str, workers: int = 2) -> Iterator[Server]:
    """`sevsim kbs serve --workers N` on a free port, in a session of its own (so cleanup
    reaches every process it made, whatever a test left), once all its workers are up."""
    admin = generate_admin_key()
    (tmp_path / "admin.pub").write_bytes(admin.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "sevsim", "kbs", "serve", "--db", db, "--admin-key",
             tmp_path / "admin.pub", "--port", "0", "--trust", "sevsim",
             "--workers", str(workers)],
            env={**os.environ, "SEVSIM_KBS_SECRET_KEY": SECRET_KEY.hex()},
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (lines := [line for line in log.read_text().splitlines()
                             if line.startswith("sevsim kbs: http://")]):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url = lines[0].split()[2].removesuffix("/kbs/v0/")
        while len(pids := children(process.pid)) < workers:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        server = Server(process, url, pids, log, admin)
        with KbsClient(url) as client:
            client.set_resource(server.token(), PATH, SECRET)
            client.set_resource_policy(server.token(), RESOURCE_POLICY)
        yield server
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextmanager
def only(server: Server, worker: int) -> Iterator[None]:
    """Every worker but `worker` stopped (SIGSTOP): meanwhile it alone accepts connections on
    the shared socket, so it alone answers."""
    others = [pid for pid in server.workers if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in others:
            while state(pid) != "T":
                time.sleep(0.01)
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def released(server: Server, evidence: Evidence, issuer: int, verifier: int) -> bytes:
    """The secret, by a token that worker `issuer` signed, fetched from worker `verifier`."""
    key = tee_key()
    with only(server, issuer), KbsClient(server.url) as client:
        token = client.attest(attestation(evidence, client.auth()["nonce"], key))
    with only(server, verifier), KbsClient(server.url) as client:
        return decrypt_jwe(key, client.resource(PATH, token))


def test_two_workers_serve_share_the_token_key_and_stop_on_sigterm(
        tmp_path: Path, db: str, evidence: Evidence) -> None:
    with kbs_serve(tmp_path, db) as server:
        assert len(server.workers) == 2
        with KbsClient(server.url) as admin:
            admin.set_attestation_policy(
                server.token(), f'[guest]\nmeasurements = ["{evidence.measurement.hex()}"]\n')
        first, second = server.workers
        # each worker alone attests and releases: two processes really serve, and a token
        # one signed is good at the other, both ways
        assert released(server, evidence, first, second) == SECRET
        assert released(server, evidence, second, first) == SECRET
        with KbsClient(server.url) as admin:
            audit = admin.audit(server.token(), limit=10_000)
        decisions = [(r["action"], r["decision"]) for r in audit]
        assert decisions.count(("attest", "allowed")) == 2
        assert decisions.count(("get-resource", "allowed")) == 2
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.stderr()
        assert children(server.process.pid) == []
        assert not [pid for pid in server.workers if Path(f"/proc/{pid}").exists()]
        assert server.stderr().count("sevsim kbs: http://") == 1


def test_a_dead_worker_stops_the_server_with_a_message(tmp_path: Path) -> None:
    with kbs_serve(tmp_path, f"sqlite:///{tmp_path}/kbs.db") as server:
        killed, survivor = server.workers
        os.kill(killed, signal.SIGKILL)
        assert server.process.wait(timeout=60) == 125
        assert f"worker {killed} was killed by SIGKILL" in server.stderr()
        assert not Path(f"/proc/{survivor}").exists()


def test_bad_input_fails_before_any_worker_starts(tmp_path: Path) -> None:
    """A bad --workers is a ConfigError; a wrong at-rest key fails in the parent, before any
    fork, exactly as it does with one worker."""
    assert sevsim("kbs", "admin", "keygen", "-o", tmp_path).returncode == 0
    db = f"sqlite:///{tmp_path}/kbs.db"
    Store.open(db, SECRET_KEY).close()
    serve = ("kbs", "serve", "--admin-key", tmp_path / "admin.pub", "--db", db, "--port", "0")
    for workers in ("-1", str(MAX_WORKERS + 1)):
        done = sevsim(*serve, "--workers", workers, env={"SEVSIM_KBS_SECRET_KEY": SECRET_KEY.hex()})
        assert done.returncode == 125
        assert done.stderr.decode().startswith("sevsim kbs serve: ConfigError: --workers")
    wrong = {"SEVSIM_KBS_SECRET_KEY": os.urandom(32).hex()}
    one, two = (sevsim(*serve, "--workers", n, env=wrong) for n in ("1", "2"))
    assert one.returncode == two.returncode == 125
    assert one.stderr == two.stderr and b"KbsSecretKeyError" in two.stderr


def test_worker_count() -> None:
    assert worker_count(0) == os.cpu_count()
    assert worker_count(3) == 3
    with pytest.raises(ConfigError):
        worker_count(-1)


def test_uvicorn_runs_on_httptools_and_uvloop() -> None:
    """The default ("auto") HTTP protocol and event loop, which `serve` uses, are the C ones."""
    import uvloop
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert AutoHTTPProtocol is HttpToolsProtocol
    loop = auto_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
