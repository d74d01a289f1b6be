"""The long-running commands (`sevsim kbs serve` in one process, `sevsim kds serve`) stop
cleanly, with exit 0, on SIGTERM (a service manager's stop) as on Ctrl-C (SIGINT), after
having served: no traceback, no kill by the signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sevsim.kbs.admin import generate_admin_key

SERVERS = {
    "kbs": (["kbs", "serve", "--admin-key", "{dir}/admin.pub", "--db", "sqlite:///{dir}/kbs.db"],
            "/kbs/v0/resource/default/none/here"),
    "kds": (["kds", "serve", "--seed", "a"], "/vcek/v1/Milan/cert_chain"),
}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_server_stops_with_exit_0(tmp_path: Path, server: str, stop: signal.Signals) -> None:
    (tmp_path / "admin.pub").write_bytes(generate_admin_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    args, path = SERVERS[server]
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "sevsim", *(a.format(dir=tmp_path) for a in args),
             "--port", "0"],
            env={**os.environ, "SEVSIM_KBS_SECRET_KEY": "11" * 32},
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"http://[0-9.]+:\d+", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        try:  # it serves: an answer, whatever its status
            with urllib.request.urlopen(found.group(0) + path, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status in (200, 401)
        process.send_signal(stop)
        assert process.wait(timeout=60) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
