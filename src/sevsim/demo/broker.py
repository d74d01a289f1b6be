"""The demo's key broker: sevsim's KBS served by uvicorn on 127.0.0.1 from a temporary
SQLite file, and SNP tenants that fetch its secret through their virtual NIC."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sevsim.attest.measure import guest_digest
from sevsim.errors import ConfigError
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import KbsClient
from sevsim.kbs.service import KbsConfig, create_app
from sevsim.kbs.verifier import EvidenceConfig
from sevsim.testing import guest_cpu

MEMORY = 16 << 20  # each SNP tenant's memory
RESOURCE = "default/demo/key"
RESOURCE_POLICY = f"""
[[rules]]
resources = ["{RESOURCE}"]
[rules.claims]
policy_debug = false
vmpl = 0
"""


@dataclass
class Broker:
    """sevsim's KBS serving on 127.0.0.1 from a temporary SQLite file, and its admin."""

    url: str
    client: KbsClient
    token: str

    def last_audit_id(self) -> int:
        """The newest decision's id, to read only what comes after it."""
        return max((r["id"] for r in self.client.audit(self.token, limit=10_000)), default=0)

    def decisions_after(self, mark: int) -> list[dict[str, Any]]:
        """The protocol's decisions (auth, attest, get-resource) after audit id `mark`."""
        return [r for r in self.client.audit(self.token, after=mark, limit=10_000)
                if r["action"] in ("auth", "attest", "get-resource")]


@contextmanager
def key_broker(secret: bytes, measurement: bytes, workdir: Path) -> Iterator[Broker]:
    """A real uvicorn server on a free port of 127.0.0.1: `secret` at RESOURCE, released
    only to SNP guests with `measurement`, not debuggable, at VMPL0."""
    import uvicorn

    admin = generate_admin_key()
    config = KbsConfig(db_url=f"sqlite:///{workdir / 'kbs.db'}", secret_key=os.urandom(32),
                       admin_key=admin.public_key(), evidence=EvidenceConfig(trust="sevsim"))
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise ConfigError("the key broker did not start")
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with KbsClient(url) as client:
            token = issue_admin_token(admin)
            client.set_resource(token, RESOURCE, secret)
            client.set_resource_policy(token, RESOURCE_POLICY)
            client.set_attestation_policy(
                token, f'[guest]\nmeasurements = ["{measurement.hex()}"]\n')
            yield Broker(url, client, token)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass(frozen=True)
class Attested:
    """What the SNP tenant handed over (sev_host_output) and its console."""

    vm: VirtualMachine
    console: str
    exit_code: int
    outputs: list[bytes]


def run_attested(host: Host, image: bytes, url: str, report_data: bytes,
                 policy: int = DEFAULT_SNP_POLICY) -> Attested:
    """Launch `image` (attested.elf or a twin) under SNP with a NIC to the broker and run it."""
    vm = host.create_vm(mode="snp", memory=MEMORY)
    vm.attach_nic(url)
    vm.load(image)
    vm.launch(policy=policy)
    vm.host_input = report_data
    result = vm.run(timeout=120)
    return Attested(vm, result.console, result.exit_code, list(vm.outputs))


def kbs_attempt(name: str, run: Attested, image: bytes, policy: int, secret: bytes,
                secret_gpa: int, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """One tenant's try: its measurement (what a relying party computes from the image), its
    policy, whether the broker released the resource and why not, and whether the secret in
    the guest's private buffer (simulator inspection) is the broker's."""
    released = any(d["action"] == "get-resource" and d["decision"] == "allowed"
                   for d in decisions)
    reasons = [d["reason"] or "" for d in decisions if d["decision"] == "refused"]
    held = guest_cpu(run.vm.hv.vcpus[0]).read(secret_gpa, len(secret))
    measurement = guest_digest("snp", parse_elf(image), run.vm.memory_size, 1,
                               run.vm.kernel_id)
    return {"tenant": name, "measurement": measurement.hex(), "policy": f"0x{policy:x}",
            "released": released, "reason": "; ".join(reasons),
            "secret_matches": held == secret}


