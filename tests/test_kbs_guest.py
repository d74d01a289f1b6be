"""A sevsim SNP guest fetches a secret from the key broker over its virtual NIC, end to end:
real sockets on 127.0.0.1, sevsim's KBS (uvicorn, a SQLite file) trusting sevsim's simulated
AMD root, with an attestation policy naming the guest's measurement, the report signed by the
simulated Secure Processor. Then the scans: the planted secret is nowhere the host can read
(DRAM, shared pages, console, the wire, where the resource is a JWE), only in the program's
private buffer."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fnv1a64, symbol
from kbs_mitm import Mitm
from sevsim import Host
from sevsim.abi.kbs import EcPublicJwk
from sevsim.abi.snp_tcb import PolicyFlags
from sevsim.abi.svm import SEVSIM_HC_NIC_CONNECT, SEVSIM_HC_NIC_KICK, SEVSIM_HC_NIC_SETUP
from sevsim.abi.vnic import (
    NIC_PAGES,
    PAGE,
    URL_OFFSET,
    Control,
    counter_offset,
    pack_slot,
    pack_u32,
    pack_url,
    parse_slot,
    parse_url,
)
from sevsim.attest.measure import guest_digest
from sevsim.errors import ConfigError, FormatError, KbsAgentError
from sevsim.guest import kbs_agent
from sevsim.guest.kernel import KBS_KEY_GPA, NIC_GPA, kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine
from sevsim.host.vnic import NIC_ERROR, GuestPhysical, VirtualNic, parse_kbs_url
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import KbsClient
from sevsim.kbs.jose import decrypt_jwe, encrypt_to_tee
from sevsim.kbs.service import KbsConfig, create_app
from sevsim.kbs.verifier import EvidenceConfig
from sevsim.testing import guest_cpu

MEMORY = "16M"
SECRET = os.urandom(48)  # planted: random, so any copy of it is a leak
RESOURCE = "default/key/1"
EACCES, ENOENT, EPERM, EINVAL, ENOSPC, ENODEV, ECONNREFUSED = 13, 2, 1, 22, 28, 19, 111


RESOURCE_POLICY = """
[[rules]]
resources = ["default/key/*"]
[rules.claims]
policy_debug = false
vmpl = 0
"""


def expected_measurement(elf: Path) -> bytes:
    """The launch digest a guest owner computes from the ELF alone."""
    return guest_digest("snp", parse_elf(elf.read_bytes()), 16 << 20, 1, kernel_identity())


@dataclass
class Kbs:
    """sevsim's KBS on 127.0.0.1, and its admin's key."""

    url: str
    admin: Ed25519PrivateKey
    db: Path

    clients: list[KbsClient] = field(default_factory=list)

    def client(self) -> KbsClient:
        """A new client session, its connection closed with the fixture's server."""
        self.clients.append(KbsClient(self.url))
        return self.clients[-1]

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def token(self) -> str:
        return issue_admin_token(self.admin)

    def audit_since(self, mark: int) -> list[dict[str, Any]]:
        """The decisions recorded after audit id `mark`, oldest first."""
        return [r for r in self.client().audit(self.token(), after=mark, limit=10_000)]

    def mark(self) -> int:
        records = self.client().audit(self.token(), limit=10_000)
        return max((r["id"] for r in records), default=0)


@pytest.fixture(scope="module")
def server(build: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Kbs]:
    """One KBS for the module: the secret at RESOURCE, released to SNP VMs running
    kbs_client.elf or kbs_errors.elf (by measurement), not debuggable, at VMPL0."""
    admin = generate_admin_key()
    db = tmp_path_factory.mktemp("kbs") / "kbs.db"
    config = KbsConfig(db_url=f"sqlite:///{db}", secret_key=os.urandom(32),
                       admin_key=admin.public_key(), evidence=EvidenceConfig(trust="sevsim"))
    uv = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        assert thread.is_alive()
        time.sleep(0.01)
    kbs = Kbs(f"http://127.0.0.1:{sock.getsockname()[1]}", admin, db)
    client = kbs.client()
    client.set_resource(kbs.token(), RESOURCE, SECRET)
    client.set_resource_policy(kbs.token(), RESOURCE_POLICY)
    measurements = ", ".join(f'"{expected_measurement(build(name)).hex()}"'
                             for name in ("kbs_client", "kbs_errors"))
    client.set_attestation_policy(kbs.token(), f"[guest]\nmeasurements = [{measurements}]\n")
    yield kbs
    kbs.close_clients()
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not leaked(db.read_bytes())


@dataclass
class Audited:
    """The KBS, and what it decided since the test began."""

    url: str
    server: Kbs
    since: int

    def decisions(self) -> list[tuple[str, str, str]]:
        """(action, decision, reason) of every protocol request (not the admin's reading the
        audit log) since the test began."""
        return [(r["action"], r["decision"], r["reason"] or "")
                for r in self.server.audit_since(self.since)
                if r["action"] in ("auth", "attest", "get-resource")]

    def released(self) -> int:
        return sum(1 for action, decision, _ in self.decisions()
                   if (action, decision) == ("get-resource", "allowed"))

    def refusals(self) -> list[str]:
        """The reasons of the refused requests (the problem type's name)."""
        return [reason.split(":")[0] for _, decision, reason in self.decisions()
                if decision == "refused"]

    def refusal_details(self) -> str:
        """Every refused request's reason in full."""
        return "\n".join(reason for _, decision, reason in self.decisions()
                         if decision == "refused")


@pytest.fixture
def kbs(server: Kbs) -> Audited:
    return Audited(server.url, server, server.mark())


def snp_vm(host: Host, elf: Path, url: str | None, policy: int | None = None
           ) -> VirtualMachine:
    vm = host.create_vm(mode="snp", memory=MEMORY)
    if url is not None:
        vm.attach_nic(url)
    vm.load(elf)
    vm.launch(policy=policy)
    return vm


def leaked(haystack: bytes, secret: bytes = SECRET) -> bool:
    """Whether any 16-byte piece of the secret occurs anywhere."""
    return any(secret[i:i + 16] in haystack for i in range(0, len(secret) - 15, 8))


def test_guest_gets_its_secret_and_the_host_sees_none_of_it(build: Callable[..., Path],
                                                           kbs: Audited) -> None:
    host = Host(chip="milan", memory="64M")
    elf = build("kbs_client")
    vm = snp_vm(host, elf, kbs.url)
    result = vm.run(timeout=120)
    assert result.exit_code == 0, result.console
    assert f"got {len(SECRET)}-byte secret {RESOURCE}, fnv1a64 {fnv1a64(SECRET):016x}" \
        in result.console
    # the secret is in the program's private buffer, in plaintext as the guest sees it
    cpu = guest_cpu(vm.hv.vcpus[0])
    assert cpu.read(symbol(elf, "secret"), len(SECRET)) == SECRET
    assert cpu.is_private(symbol(elf, "secret"), len(SECRET))
    assert cpu.read(KBS_KEY_GPA, PAGE) == bytes(PAGE)  # the ephemeral key was wiped
    # ... and nowhere the host reads: DRAM, the NIC's and every other shared page, console
    assert not leaked(host.dram_dump().tobytes())
    assert not leaked(vm.host_view())
    shared = vm.shared_pages()
    assert set(range(NIC_GPA, NIC_GPA + NIC_PAGES * PAGE, PAGE)) <= set(shared)
    assert not leaked(b"".join(vm.read_gpa(gpa, PAGE) for gpa in shared))
    assert not leaked(result.console.encode())
    # the wire: HTTP/1.1, the resource as the very JWE the KBS sent, never the secret
    assert vm.nic is not None
    wire = bytes(vm.nic.sent + vm.nic.received)
    assert not leaked(wire)
    assert vm.nic.sent.startswith(b"POST /kbs/v0/auth HTTP/1.1\r\n")
    jwe = json.loads(bytes(vm.nic.received).rsplit(b"\r\n\r\n", 1)[1])
    assert list(jwe) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    header = json.loads(base64.urlsafe_b64decode(jwe["protected"] + "==="))
    assert (header["alg"], header["enc"]) == ("ECDH-ES+A256KW", "A256GCM")
    assert kbs.released() == 1 and not kbs.refusals()


def test_the_protocol_messages_have_trustees_shapes(build: Callable[..., Path],
                                                    kbs: Audited) -> None:
    bodies: list[tuple[str, Any]] = []

    def record(path: str, body: bytes) -> bytes:
        bodies.append((path, json.loads(body) if body else None))
        return body

    with Mitm(kbs.url, record) as mitm:
        vm = snp_vm(Host(chip="genoa", memory="64M"), build("kbs_client"), mitm.url)
        assert vm.run(timeout=120).exit_code == 0
    (auth_path, auth), (attest_path, attest), (resource_path, _) = bodies
    assert resource_path == f"/kbs/v0/resource/{RESOURCE}"
    assert auth_path == "/kbs/v0/auth" and list(auth) == ["version", "tee", "extra-params"]
    assert auth["tee"] == "snp"
    assert attest_path == "/kbs/v0/attest"
    assert list(attest) == ["init-data", "runtime-data", "tee-evidence"]
    assert list(attest["runtime-data"]) == ["nonce", "tee-pubkey"]
    pubkey = attest["runtime-data"]["tee-pubkey"]
    assert pubkey["kty"] == "EC" and pubkey["crv"] == "P-256"
    assert pubkey["alg"] == "ECDH-ES+A256KW"
    assert list(attest["tee-evidence"]) == ["primary_evidence", "additional_evidence"]
    assert set(attest["tee-evidence"]["primary_evidence"]) == {"attestation_report",
                                                               "cert_chain"}


def test_a_vm_whose_image_differs_by_one_byte_gets_nothing(build: Callable[..., Path],
                                                           kbs: Audited) -> None:
    image = build("kbs_client").read_bytes()
    other = image.replace(b"kbs: got", b"kbs: Got")
    assert sum(a != b for a, b in zip(image, other, strict=True)) == 1
    vm = Host(chip="milan", memory="64M").create_vm(mode="snp", memory=MEMORY)
    vm.attach_nic(kbs.url)
    vm.load(other)
    vm.launch()
    result = vm.run(timeout=120)
    assert result.exit_code == 1
    assert f"({-EACCES})" in result.console
    assert kbs.refusals() == ["attestation-policy"]
    assert "guest.measurements" in kbs.refusal_details()
    assert not kbs.released()


def test_a_debuggable_vm_gets_nothing(build: Callable[..., Path], kbs: Audited) -> None:
    vm = snp_vm(Host(chip="milan", memory="64M"), build("kbs_client"), kbs.url,
                policy=DEFAULT_SNP_POLICY | PolicyFlags.DEBUG)
    result = vm.run(timeout=120)
    assert result.exit_code == 1 and f"({-EACCES})" in result.console
    assert kbs.refusals() == ["attestation-policy"]
    assert "guest_policy.allow_debug" in kbs.refusal_details()
    assert not kbs.released()


def test_refusals_and_bad_calls_leave_the_program_running(build: Callable[..., Path],
                                                          kbs: Audited) -> None:
    host = Host(chip="milan", memory="64M")
    elf = build("kbs_errors")
    result = snp_vm(host, elf, kbs.url).run(timeout=120)
    lines = dict(line.split(" ", 1) for line in result.console.splitlines() if " " in line)
    assert lines["set_shared"] == "0"
    assert lines["shared"] == str(-EPERM)  # before any traffic
    assert lines["path-two-parts"] == lines["path-dotdot"] == lines["path-empty"] \
        == str(-EINVAL)
    assert lines["small"] == str(-ENOSPC)
    assert "small-touched" not in lines
    assert lines["unknown"] == str(-ENOENT)
    assert lines["good"] == str(len(SECRET))
    assert result.console.endswith("survived\n")
    assert not leaked(host.dram_dump().tobytes())
    assert kbs.refusals() == ["resource-not-found"]
    assert kbs.released() == 2  # "small" (too long for the buffer, so dropped) and "good"


def test_a_host_swapping_in_its_own_key_gets_nothing(build: Callable[..., Path],
                                                    kbs: Audited) -> None:
    """The host rewrites runtime-data's tee-pubkey to a key it holds, so that the KBS would
    encrypt to it: the report's REPORT_DATA binds the guest's key, and the KBS refuses."""
    host_key = EcPublicJwk.from_key(ec.generate_private_key(ec.SECP256R1()).public_key())

    def swap_key(path: str, body: bytes) -> bytes:
        if path != "/kbs/v0/attest":
            return body
        doc = json.loads(body)
        doc["runtime-data"]["tee-pubkey"] = host_key.to_json()
        return json.dumps(doc).encode()

    with Mitm(kbs.url, swap_key) as mitm:
        result = snp_vm(Host(chip="milan", memory="64M"), build("kbs_client"), mitm.url
                        ).run(timeout=120)
    assert result.exit_code == 1 and f"({-EACCES})" in result.console
    assert kbs.refusals() == ["evidence-report-data"]
    assert not kbs.released()


def test_a_replayed_report_gets_nothing(build: Callable[..., Path], kbs: Audited) -> None:
    """The host records a genuine VM's evidence and sends it again for the next VM's fresh
    nonce and key: the old report binds the old ones."""
    recorded: list[object] = []

    def record(path: str, body: bytes) -> bytes:
        if path == "/kbs/v0/attest":
            recorded.append(json.loads(body)["tee-evidence"])
        return body

    def replay(path: str, body: bytes) -> bytes:
        if path != "/kbs/v0/attest":
            return body
        doc = json.loads(body)
        doc["tee-evidence"] = recorded[0]
        return json.dumps(doc).encode()

    host = Host(chip="milan", memory="64M")
    with Mitm(kbs.url, record) as mitm:
        assert snp_vm(host, build("kbs_client"), mitm.url).run(timeout=120).exit_code == 0
    with Mitm(kbs.url, replay) as mitm:
        result = snp_vm(host, build("kbs_client"), mitm.url).run(timeout=120)
    assert result.exit_code == 1 and f"({-EACCES})" in result.console
    assert kbs.refusals() == ["evidence-report-data"]
    assert kbs.released() == 1  # the genuine VM's, and only that


@pytest.mark.parametrize(("mode", "nic"), [("snp", False), ("sev-es", True)])
def test_no_nic_or_no_snp_is_enodev(build: Callable[..., Path], kbs: Audited, mode: str,
                                    nic: bool) -> None:
    vm = Host(chip="milan", memory="64M").create_vm(mode=mode, memory=MEMORY)
    if nic:
        vm.attach_nic(kbs.url)
    vm.load(build("kbs_client"))
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 1 and f"({-ENODEV})" in result.console
    assert not kbs.decisions()


def test_nobody_listening_is_econnrefused(build: Callable[..., Path]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vm = snp_vm(Host(chip="milan", memory="64M"), build("kbs_client"),
                f"http://127.0.0.1:{port}")
    result = vm.run(timeout=60)
    assert result.exit_code == 1 and f"({-ECONNREFUSED})" in result.console


class LyingNic(VirtualNic):
    """A hostile device model: after the first kick, claims more RX slots than the ring has."""

    def hypercall(self, mem: GuestPhysical, nr: int, args: tuple[int, ...]) -> int:
        result = super().hypercall(mem, nr, args)
        if self.ring_gpa is not None and self.connections:
            mem.write_gpa(self.ring_gpa + counter_offset("rx_prod"), pack_u32(1000))
        return result


def test_a_lying_nic_breaks_the_link_not_the_guest(build: Callable[..., Path],
                                                   kbs: Audited) -> None:
    vm = snp_vm(Host(chip="milan", memory="64M"), build("kbs_client"), None)
    vm.nic = LyingNic(kbs.url)
    result = vm.run(timeout=60)
    assert result.exit_code == 1 and f"({-ECONNREFUSED})" in result.console
    assert not kbs.released()


def test_sevsim_run_kbs(build: Callable[..., Path], kbs: Audited) -> None:
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", str(build("kbs_client")),
                          "--mode", "snp", "--memory", MEMORY, "--kbs", kbs.url],
                         capture_output=True, text=True, timeout=180, check=False)
    assert ran.returncode == 0, ran.stderr
    assert f"virtual NIC bridged to {kbs.url}" in ran.stderr
    assert f"fnv1a64 {fnv1a64(SECRET):016x}" in ran.stdout
    assert not leaked(ran.stdout.encode() + ran.stderr.encode())


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "ftp://x", "http://", "http://h:99999",
                                 "http://u@h/", "http://h/?q=1", "http://h/" + "a" * 2000])
def test_bad_kbs_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_kbs_url(url)
    assert parse_kbs_url("http://127.0.0.1:8080/x") == ("127.0.0.1", 8080)
    assert parse_kbs_url("http://localhost") == ("localhost", 80)


def test_nic_refuses_rings_of_the_wrong_size() -> None:
    nic = VirtualNic("http://127.0.0.1:1")

    class Memory:
        def read_gpa(self, gpa: int, length: int) -> bytes:
            return bytes(length)

        def write_gpa(self, gpa: int, data: bytes) -> None:
            raise AssertionError("nothing may be written")

    assert nic.hypercall(Memory(), SEVSIM_HC_NIC_SETUP, (NIC_GPA, NIC_PAGES - 1)) == NIC_ERROR
    assert nic.hypercall(Memory(), SEVSIM_HC_NIC_SETUP, (NIC_GPA + 1, NIC_PAGES)) == NIC_ERROR
    assert nic.hypercall(Memory(), SEVSIM_HC_NIC_KICK, (0,)) == NIC_ERROR  # no rings yet


# -- the guest's JWE decryption against the KBS's (sevsim.kbs.jose) ----------------------------

def test_guest_decrypt_agrees_with_kbs_jose() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    sealed = encrypt_to_tee(EcPublicJwk.from_key(private.public_key()), SECRET)
    assert kbs_agent.decrypt_resource(sealed, scalar) == SECRET == decrypt_jwe(private, sealed)
    for member in ("ciphertext", "tag", "iv", "encrypted_key", "protected"):
        forged = dict(sealed)
        value = forged[member]
        forged[member] = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
        with pytest.raises(KbsAgentError) as refused:
            kbs_agent.decrypt_resource(forged, scalar)
        assert refused.value.reason == "protocol"
    other = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    with pytest.raises(KbsAgentError):
        kbs_agent.decrypt_resource(sealed, other.to_bytes(32, "big"))


# -- what a hostile host can feed the guest: only typed refusals come out --------------------

REAL_REPORT = (Path(__file__).parent / "data" / "snp" / "milan-v2-a" / "report.bin").read_bytes()


class ScriptedStream:
    """A Stream whose far end answers with the given bytes, in pieces, then closes."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent = bytearray()

    def connect(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        self.sent += data

    def recv(self) -> bytes:
        return self.answers.pop(0) if self.answers else b""

    def close(self) -> None:
        pass


class MemoryKeys:
    def __init__(self) -> None:
        self.scalar = b""

    def store(self, scalar: bytes) -> None:
        self.scalar = scalar

    def load(self) -> bytes:
        return self.scalar

    def wipe(self) -> None:
        self.scalar = b""


def http_answer(status: int, doc: object, extra: bytes = b"") -> bytes:
    body = json.dumps(doc).encode()
    return (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra)
            + body)


GOOD_ANSWERS = [
    http_answer(200, {"nonce": "bm9uY2U", "extra-params": {}},
                b"Set-Cookie: kbs-session-id=abc; Path=/kbs\r\n"),
    http_answer(200, {"token": "t"}),
    http_answer(200, {"protected": "e30", "encrypted_key": "", "iv": "", "ciphertext": "",
                      "tag": ""}),
]


@st.composite
def hostile_answers(draw: st.DrawFn) -> list[bytes]:
    answers = list(GOOD_ANSWERS)
    which = draw(st.integers(0, len(answers) - 1))
    blob = bytearray(answers[which])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["poke", "cut", "insert"]))
        at = draw(st.integers(0, len(blob)))
        if kind == "poke" and at < len(blob):
            blob[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[at:]
        else:
            blob[at:at] = draw(st.binary(max_size=40))
    answers[which] = bytes(blob)
    pieces: list[bytes] = []
    for answer in answers:
        cut = draw(st.integers(0, len(answer)))
        pieces += [answer[:cut], answer[cut:]]
    return [p for p in pieces if p] if draw(st.booleans()) else draw(
        st.lists(st.binary(max_size=300), max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_answers())
def test_hostile_answers_give_only_typed_refusals(answers: list[bytes]) -> None:
    stream = ScriptedStream(answers)
    keys = MemoryKeys()
    client = kbs_agent.HttpClient(stream, "kbs")
    with pytest.raises(KbsAgentError) as refused:
        kbs_agent.fetch_resource(client, "/kbs/v0", RESOURCE,
                                 lambda data: (REAL_REPORT, b""), keys)
    assert refused.value.reason in {"network", "protocol", "refused", "not-found"}
    assert keys.scalar == b""  # wiped on every way out


def test_the_scripted_exchange_reaches_the_jwe() -> None:
    """The unmutated script gets as far as opening the (empty) JWE: the fuzzing above starts
    from answers the agent accepts up to the last step."""
    stream = ScriptedStream(list(GOOD_ANSWERS))
    with pytest.raises(KbsAgentError, match="JWE does not open"):
        kbs_agent.fetch_resource(kbs_agent.HttpClient(stream, "kbs"), "/kbs/v0", RESOURCE,
                                 lambda data: (REAL_REPORT, b""), MemoryKeys())
    assert b"Cookie: kbs-session-id=abc" in stream.sent
    assert stream.sent.count(b"Host: kbs") == 3


class RingMemory:
    """Guest memory as the NIC reaches it: just the ring pages, at GPA 0."""

    def __init__(self) -> None:
        self.data = bytearray(NIC_PAGES * PAGE)

    def read_gpa(self, gpa: int, length: int) -> bytes:
        return bytes(self.data[gpa:gpa + length])

    def write_gpa(self, gpa: int, data: bytes) -> None:
        self.data[gpa:gpa + len(data)] = data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 0x30),  # the counters
                                    st.sampled_from(range(PAGE, NIC_PAGES * PAGE, 2048)),
                                    st.integers(0, NIC_PAGES * PAGE - 8)),
                          st.binary(min_size=1, max_size=8)),
                max_size=12))
def test_a_hostile_guest_gets_only_answers_from_the_nic(pokes: list[tuple[int, bytes]]) -> None:
    """Whatever a guest writes into its rings, the VMM's NIC answers each exit with a number
    (NIC_ERROR, or the link flags) and sends no more than whole, valid slots."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        nic = VirtualNic(f"http://127.0.0.1:{listener.getsockname()[1]}", max_wait_ms=0)
        memory = RingMemory()
        assert nic.hypercall(memory, SEVSIM_HC_NIC_SETUP, (0, NIC_PAGES)) == 0
        assert nic.hypercall(memory, SEVSIM_HC_NIC_CONNECT, ()) == 0
        peer, _ = listener.accept()
        with peer:
            for offset, data in pokes:
                memory.write_gpa(offset, data)
            answer = nic.hypercall(memory, SEVSIM_HC_NIC_KICK, (0,))
            assert answer == NIC_ERROR or 0 <= answer < 8
            assert len(nic.sent) <= 16 * 2040
        nic.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=PAGE + 16))
def test_ring_parsers_return_or_raise_format_errors(blob: bytes) -> None:
    """What the guest reads from its shared pages: parsed, or a FormatError, nothing else."""
    with contextlib.suppress(FormatError):
        Control.from_bytes(blob)
    with contextlib.suppress(FormatError):
        data, flags = parse_slot(blob)
        assert parse_slot(pack_slot(data, flags)) == (data, flags)
    with contextlib.suppress(FormatError):
        url = parse_url(blob)
        assert parse_url(bytes(URL_OFFSET - 2) + pack_url(url)) == url


@pytest.mark.parametrize("status", [200, 401])
def test_deeply_nested_json_is_a_protocol_error(status: int) -> None:
    body = b"[" * 200_000
    answer = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body
    with pytest.raises(KbsAgentError) as refused:
        kbs_agent.fetch_resource(kbs_agent.HttpClient(ScriptedStream([answer]), "kbs"),
                                 "/kbs/v0", RESOURCE, lambda data: (REAL_REPORT, b""),
                                 MemoryKeys())
    assert refused.value.reason == ("protocol" if status == 200 else "refused")


JWE_VALUES = st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans(),
                       st.lists(st.text(max_size=5), max_size=2),
                       st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["protected", "encrypted_key", "iv", "ciphertext", "tag",
                                        "aad", "header", "x"]), JWE_VALUES, max_size=7),
       st.booleans())
def test_forged_jwes_are_protocol_errors(forged: dict[str, object], start_real: bool) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    jwe: dict[str, object] = dict(encrypt_to_tee(EcPublicJwk.from_key(private.public_key()),
                                                 SECRET)) if start_real else {}
    jwe.update(forged)
    try:
        assert kbs_agent.decrypt_resource(jwe, scalar) == SECRET
    except KbsAgentError as err:
        assert err.reason == "protocol"
