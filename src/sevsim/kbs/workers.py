"""`sevsim kbs serve --workers N`: the key broker in N forked processes on one listening
socket. One uvicorn process uses one core, and attestation is CPU-bound (signature checks,
JSON, JOSE), so this is what lets the broker use every core.

What must happen once happens in the parent, before any fork: `worker_config` opens the store
(migrating the schema and checking the at-rest key, so a bad URL or key fails with its own
typed error before a worker exists) and fixes the token-signing key, so that a token one
worker issues verifies at every other. Each worker then builds its own app, Store and database
engine (pooled connections must not cross a fork) and runs uvicorn on the inherited socket.
The parent only supervises: SIGTERM or SIGINT stops the workers; a worker that dies on its own
is reported and the rest are stopped, never silently restarted, so the cause is not hidden.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.errors import ConfigError, SevsimError
from sevsim.kbs.service import KbsConfig, create_app, serve
from sevsim.kbs.store import Store

MAX_WORKERS = 64  # more than any machine this runs on has cores: a larger number is a typo
GRACE_S = 30.0  # how long stopped workers may take to answer what is in flight, then SIGKILL
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WAKE_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD}  # what the supervising parent waits for


def worker_count(workers: int) -> int:
    """The `--workers` value as a process count: 0 is one per core (os.cpu_count()).
    ConfigError outside 0..MAX_WORKERS."""
    if not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {workers}: 0 (one per core) to {MAX_WORKERS} expected")
    return workers or os.cpu_count() or 1


def worker_config(config: KbsConfig) -> KbsConfig:
    """`config` made ready for workers, in the parent: the store opened once (its schema
    migrated, the at-rest key checked; its errors are Store.open's) and closed before any fork,
    and a token-signing key chosen if none was given, which every worker then shares."""
    Store.open(config.db_url, config.secret_key, config.clock).close()
    if config.token_key is not None:
        return config
    return replace(config, token_key=ec.generate_private_key(ec.SECP256R1()))


def serve_workers(config: KbsConfig, sock: socket.socket, workers: int) -> str | None:
    """Serve `config` (from worker_config) on the listening `sock` from `workers` forked
    processes, until SIGTERM or SIGINT (None: every worker stopped) or until a worker dies by
    itself: then the others are stopped and what happened to it is returned ("worker 1234 was
    killed by SIGKILL"). The parent's copy of `sock` is closed either way."""
    # blocked until the supervisor waits for them; a worker unblocks them for uvicorn
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
    pids: list[int] = []
    try:
        sys.stdout.flush()  # a buffered line would otherwise be printed again by every child
        sys.stderr.flush()
        for _ in range(workers):
            try:
                pids.append(fork_worker(config, sock, mask))
            except OSError as error:  # EAGAIN: the process limit
                stop(pids)
                raise ConfigError(f"cannot start worker {len(pids) + 1} of {workers}: "
                                  f"{error.strerror}") from None
        return supervise(pids)
    finally:
        sock.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def fork_worker(config: KbsConfig, sock: socket.socket, mask: Iterable[int]) -> int:
    """Fork a worker: its pid in the parent. The child builds the app (its own store and
    engine) and serves `sock` until uvicorn stops on SIGTERM or SIGINT, then exits without
    returning into the parent's stack; a failure is printed on stderr and exits 1."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for stop_signal in STOP_SIGNALS:  # the parent's handlers are not the worker's
            signal.signal(stop_signal, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        serve(create_app(config), sock)
        code = 0
    except SevsimError as error:
        print(f"sevsim kbs serve: worker {os.getpid()}: {type(error).__name__}: {error}",
              file=sys.stderr)
    except BaseException:  # the parent reports the exit; the traceback says why
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def supervise(pids: list[int]) -> str | None:
    """Wait for a stop signal (then stop the workers: None) or for a worker's death (then stop
    the rest and say what happened to it). WAKE_SIGNALS must be blocked: they are taken here
    with sigwait, so none is lost between two checks."""
    while True:
        if signal.sigwait(WAKE_SIGNALS) in STOP_SIGNALS:
            stop(pids)
            return None
        for pid in pids:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pids.remove(pid)
                stop(pids)
                return f"worker {pid} {exit_description(status)}"


def stop(pids: list[int]) -> None:
    """SIGTERM each worker (uvicorn finishes the requests in flight), SIGKILL any still running
    after GRACE_S, and reap them all, so none is left behind."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # not yet reaped, so the pid is still this worker's
    deadline = time.monotonic() + GRACE_S
    for pid in pids:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)  # a sleep that a child's exit ends


def exit_description(status: int) -> str:
    """A wait status in words: "exited with status 1", "was killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
