"""The KBS over real HTTP: uvicorn on a free 127.0.0.1 port, a SQLite file, sevsim-made SNP
reports. A genuine VM gets its secret, only as a JWE its own key opens; every bad request is
refused with a problem document naming the reason, releases nothing, and is in the audit log."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import postgres_test_url
from sevsim import Host
from sevsim.abi.kbs import InitData, RuntimeData, parse_jwk
from sevsim.abi.kbs_snp import snp_evidence_to_json
from sevsim.abi.snp_report import AttestationReport, build_cert_table, parse_cert_table
from sevsim.abi.snp_tcb import PolicyFlags
from sevsim.cli.common import write_cert_table
from sevsim.errors import ConfigError, KbsRefusal
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import ERRORS, KbsClient
from sevsim.kbs.jose import decrypt_jwe
from sevsim.kbs.service import MAX_BODY, REASONS, KbsConfig, create_app, listen
from sevsim.kbs.store import Store
from sevsim.kbs.verifier import EvidenceConfig
from sevsim.testing import postgres_schema, sign_report

SECRET = b"planted-kbs-secret:" + os.urandom(8).hex().encode()
PATH = "default/key/disk"
RESOURCE_POLICY = """
[[rules]]
resources = ["default/key/*"]
[rules.claims]
policy_debug = false
vmpl = 0
"""


class Clock:
    """The server's clock, which tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.offset)


@dataclass
class Evidence:
    """A sevsim SNP VM's report and certificate table, and its firmware to sign variants."""

    host: Host
    report: bytes
    certs: list[tuple[str, bytes]]

    def signed(self, report_data: bytes, **changes: Any) -> bytes:
        """The report with `report_data` (and other fields) changed, signed by the chip's
        VCEK as the firmware would: only the binding and the policy can tell."""
        fw = self.host.firmware
        report = replace(AttestationReport.from_bytes(self.report), report_data=report_data,
                         **changes)
        return sign_report(fw, report.to_bytes(), fw.tcb)

    @property
    def measurement(self) -> bytes:
        return AttestationReport.from_bytes(self.report).measurement


@pytest.fixture(scope="module")
def evidence(build: Callable[..., Path]) -> Evidence:
    host = Host(chip="milan", seed=b"kbs-service")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = bytes(64)
    vm.launch()
    assert vm.run(timeout=60).exit_code == 0
    certs = [(str(guid), der) for guid, der in parse_cert_table(vm.outputs[1])]
    return Evidence(host, vm.outputs[0], certs)


@dataclass
class Kbs:
    url: str
    admin: ec.EllipticCurvePrivateKey | Any
    clock: Clock

    def token(self) -> str:
        return issue_admin_token(self.admin, now=self.clock().timestamp())

    clients: list[KbsClient] = field(default_factory=list)

    def client(self) -> KbsClient:
        """A new client session, its connection closed with the fixture's server."""
        self.clients.append(KbsClient(self.url))
        return self.clients[-1]

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def audit(self) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        return self.client().audit(self.token(), limit=10_000)[::-1]


def free_port() -> int:
    """A port free a moment ago, for a server in another process."""
    with listen("127.0.0.1", 0) as sock:
        return int(sock.getsockname()[1])


@contextmanager
def running(config: KbsConfig) -> Iterator[str]:
    """The KBS on uvicorn in a thread, on a free 127.0.0.1 port: its URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A new SQLite file, or a new schema in the PostgreSQL server .ci/run starts."""
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("kbs") / "kbs.db"
        yield f"sqlite:///{db}"
        assert SECRET not in db.read_bytes()
        return
    with postgres_schema(postgres_test_url(), "kbs_service") as url:
        yield url


@pytest.fixture(scope="module")
def kbs(db_url: str, evidence: Evidence) -> Iterator[Kbs]:
    admin, clock = generate_admin_key(), Clock()
    config = KbsConfig(db_url=db_url, secret_key=os.urandom(32),
                       admin_key=admin.public_key(), evidence=EvidenceConfig(trust="sevsim"),
                       nonce_lifetime_s=60, token_lifetime_s=600, clock=clock)
    with running(config) as url:
        yield from serve_fixture(Kbs(url, admin, clock), evidence)


def serve_fixture(broker: Kbs, evidence: Evidence) -> Iterator[Kbs]:
    """The module's KBS, with the secret, a resource policy releasing it to non-debug VMPL0
    VMs, and an attestation policy naming the test VM's measurement."""
    client = broker.client()
    client.set_resource(broker.token(), PATH, SECRET)
    client.set_resource_policy(broker.token(), RESOURCE_POLICY)
    client.set_attestation_policy(
        broker.token(), f'[guest]\nmeasurements = ["{evidence.measurement.hex()}"]\n')
    yield broker
    broker.close_clients()


def tee_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK, made here by hand from the key's numbers (RFC 7518 6.2.1)."""
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
    return {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": b64(numbers.x),
            "y": b64(numbers.y)}


def attestation(evidence: Evidence, nonce: str, key: ec.EllipticCurvePrivateKey,
                bind: RuntimeData | None = None, **changes: Any) -> dict[str, Any]:
    """The Attestation message as Trustee's attester sends it: runtime-data with the nonce
    and the key, SNP evidence whose REPORT_DATA binds `bind` (default: that runtime-data)."""
    runtime = {"nonce": nonce, "tee-pubkey": jwk(key)}
    bound = bind or RuntimeData(nonce=nonce, tee_pubkey=parse_jwk(jwk(key)))
    report = evidence.signed(bound.report_data(), **changes)
    return {"runtime-data": runtime,
            "tee-evidence": {"primary_evidence": snp_evidence_to_json(report, evidence.certs),
                             "additional_evidence": ""}}


def refused(call: Callable[[], object], reason: str) -> KbsRefusal:
    with pytest.raises(KbsRefusal) as caught:
        call()
    assert caught.value.reason == reason, caught.value
    assert caught.value.status == REASONS[reason][0]
    return caught.value


def paths(kbs: Kbs) -> list[str]:
    return [r["path"] for r in kbs.client().resources(kbs.token())]


def last_decision(kbs: Kbs, action: str) -> dict[str, Any]:
    return next(r for r in kbs.audit() if r["action"] == action)


# -- the protocol, end to end ------------------------------------------------------------

def test_a_genuine_vm_gets_its_secret_as_a_jwe_only_its_key_opens(kbs: Kbs,
                                                                   evidence: Evidence) -> None:
    client, key = kbs.client(), tee_key()
    challenge = client.auth()
    assert set(challenge) == {"nonce", "extra-params"} and client.session
    token = client.attest(attestation(evidence, challenge["nonce"], key))
    assert last_decision(kbs, "attest")["decision"] == "allowed"
    jwe = client.resource(PATH)  # by the session cookie
    assert SECRET not in json.dumps(jwe).encode()
    assert decrypt_jwe(key, jwe) == SECRET
    record = last_decision(kbs, "get-resource")
    assert (record["decision"], record["resource"]) == ("allowed", PATH)
    # by the token alone, from another connection with no cookie
    jwe = kbs.client().resource(PATH, token)
    assert decrypt_jwe(key, jwe) == SECRET
    with pytest.raises(Exception):  # noqa: B017 (any failure: another key cannot open it)
        decrypt_jwe(tee_key(), jwe)


def test_the_nonce_is_single_use(kbs: Kbs, evidence: Evidence) -> None:
    client, key = kbs.client(), tee_key()
    message = attestation(evidence, client.auth()["nonce"], key)
    client.attest(message)
    refused(lambda: client.attest(message), "nonce-replayed")
    assert last_decision(kbs, "attest")["decision"] == "refused"


def test_tokens_and_attested_sessions_expire(kbs: Kbs, evidence: Evidence) -> None:
    client, key = kbs.client(), tee_key()
    token = client.attest(attestation(evidence, client.auth()["nonce"], key))
    kbs.clock.offset += 601  # past the 600 s token lifetime
    try:
        refused(lambda: kbs.client().resource(PATH, token), "token-invalid")
        refused(lambda: client.resource(PATH), "session-expired")
    finally:
        kbs.clock.offset -= 601
    assert decrypt_jwe(key, kbs.client().resource(PATH, token)) == SECRET


def test_an_expired_nonce_is_refused(kbs: Kbs, evidence: Evidence) -> None:
    client, key = kbs.client(), tee_key()
    nonce = client.auth()["nonce"]
    kbs.clock.offset += 61
    try:
        refused(lambda: client.attest(attestation(evidence, nonce, key)), "nonce-expired")
    finally:
        kbs.clock.offset -= 61
    assert last_decision(kbs, "attest")["reason"].startswith("nonce-expired")


def test_a_nonce_from_another_session_is_refused(kbs: Kbs, evidence: Evidence) -> None:
    first, second, key = kbs.client(), kbs.client(), tee_key()
    nonce = first.auth()["nonce"]
    second.auth()
    refused(lambda: second.attest(attestation(evidence, nonce, key)), "nonce-mismatch")
    assert last_decision(kbs, "attest")["reason"].startswith("nonce-mismatch")
    refused(lambda: second.resource(PATH), "session-not-attested")
    # no session at all, or one the KBS never made
    refused(lambda: kbs.client().attest(attestation(evidence, nonce, key)), "no-session")
    stranger = kbs.client()
    stranger.session = "00000000-0000-0000-0000-000000000000"
    refused(lambda: stranger.attest(attestation(evidence, nonce, key)), "unknown-session")
    stranger.session = "x" * 5000  # longer than anything the store keeps
    refused(lambda: stranger.attest(attestation(evidence, nonce, key)), "unknown-session")
    record = last_decision(kbs, "attest")
    assert record["reason"].startswith("unknown-session") and len(record["session_id"]) == 64
    long_path = "a" * 300 + "/b/c"
    refused(lambda: kbs.client().resource(long_path), "no-token")
    assert last_decision(kbs, "get-resource")["resource"] == long_path[:255]
    # the first session is still good: neither attempt touched it
    first.attest(attestation(evidence, nonce, key))


def test_report_data_that_does_not_bind_the_key_is_refused(kbs: Kbs,
                                                          evidence: Evidence) -> None:
    """A report made for another key (a replayed report, or a man in the middle swapping
    runtime-data's key): the secret would go to a key the VM does not hold."""
    client, key, other = kbs.client(), tee_key(), tee_key()
    nonce = client.auth()["nonce"]
    someone_else = RuntimeData(nonce=nonce, tee_pubkey=parse_jwk(jwk(other)))
    problem = refused(lambda: client.attest(attestation(evidence, nonce, key, someone_else)),
                      "evidence-report-data")
    assert "does not bind" in problem.detail
    refused(lambda: client.resource(PATH), "session-not-attested")
    refused(lambda: client.attest(attestation(evidence, nonce, key)), "nonce-replayed")


@pytest.mark.parametrize(("change", "failed"), [
    ({"measurement": bytes(48)}, "guest.measurements"),
    ({"policy": "debug"}, "guest_policy.allow_debug"),
])
def test_reports_the_policy_refuses(kbs: Kbs, evidence: Evidence, change: dict[str, Any],
                                    failed: str) -> None:
    if change.get("policy") == "debug":
        policy = AttestationReport.from_bytes(evidence.report).policy | PolicyFlags.DEBUG
        change = {"policy": int(policy)}
    client, key = kbs.client(), tee_key()
    message = attestation(evidence, client.auth()["nonce"], key, **change)
    problem = refused(lambda: client.attest(message), "attestation-policy")
    assert failed in problem.detail
    record = last_decision(kbs, "attest")
    assert record["decision"] == "refused" and failed in record["reason"]
    refused(lambda: client.resource(PATH), "session-not-attested")
    # the refused attempt spent the nonce: good evidence for it comes too late
    refused(lambda: client.attest(attestation(evidence, message["runtime-data"]["nonce"], key)),
            "nonce-replayed")


def test_malformed_json_is_refused_naming_the_field(kbs: Kbs, evidence: Evidence) -> None:
    client = kbs.client()
    status, headers, body = client.request("POST", "/kbs/v0/auth", b"{not json")
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == ERRORS + "malformed-request"
    nonce = client.auth()["nonce"]
    message = attestation(evidence, nonce, tee_key())
    del message["runtime-data"]["tee-pubkey"]
    problem = refused(lambda: client.attest(message), "malformed-request")
    assert "tee-pubkey" in problem.detail
    refused(lambda: client.call("POST", "/attest", b"[1, 2"), "malformed-request")
    refused(lambda: client.call("POST", "/attest", b" " * (MAX_BODY + 1)), "payload-too-large")
    wrong_tee = json.dumps({"version": "0.4.0", "tee": "tdx", "extra-params": {}}).encode()
    refused(lambda: kbs.client().call("POST", "/auth", wrong_tee), "unsupported-tee")
    # the session was not spent: the well-formed attestation still succeeds
    client.attest(attestation(evidence, nonce, tee_key()))


def test_unknown_resources_and_bad_tokens(kbs: Kbs, evidence: Evidence) -> None:
    client, key = kbs.client(), tee_key()
    token = client.attest(attestation(evidence, client.auth()["nonce"], key))
    refused(lambda: client.resource("default/key/nothing-here"), "resource-not-found")
    refused(lambda: client.resource("other/key/disk"), "resource-policy")
    # a token with a changed payload, or signed by another key
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tee-pubkey"] = jwk(tee_key())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(lambda: kbs.client().resource(PATH, f"{head}.{forged}.{signature}"),
            "token-invalid")
    refused(lambda: kbs.client().resource(PATH), "no-token")
    records = [r for r in kbs.audit() if r["action"] == "get-resource"][:4]
    assert [r["decision"] for r in records] == ["refused"] * 4


def test_admin_endpoints_refuse_without_a_valid_admin_token(kbs: Kbs) -> None:
    client, path = kbs.client(), "default/key/planted-by-nobody"
    other = generate_admin_key()
    for token in ("", "not-a-jwt", issue_admin_token(other),
                  issue_admin_token(kbs.admin, now=kbs.clock().timestamp() - 120)):
        refused(lambda t=token: client.set_resource(t, path, b"x"), "admin-auth")  # type: ignore[misc]
    status, _, body = client.request("POST", "/kbs/v0/resource/" + path, b"x")
    assert status == 401 and json.loads(body)["type"] == ERRORS + "admin-auth"
    assert path not in paths(kbs)  # nothing changed
    record = last_decision(kbs, "set-resource")
    assert record["decision"] == "refused" and record["reason"].startswith("admin-auth")
    assert record["resource"] == path


def test_admin_sets_and_deletes_resources_and_rejects_bad_policies(kbs: Kbs) -> None:
    client, path = kbs.client(), "default/key/temporary"
    client.set_resource(kbs.token(), path, b"short-lived")
    assert path in paths(kbs)
    client.delete_resource(kbs.token(), path)
    assert path not in paths(kbs)
    refused(lambda: client.delete_resource(kbs.token(), path), "resource-not-found")
    refused(lambda: client.set_attestation_policy(kbs.token(), "[guest]\nmeasurment = 1\n"),
            "policy-invalid")
    refused(lambda: client.set_resource_policy(kbs.token(), "[[rules]]\nresource = []\n"),
            "policy-invalid")
    rego = json.dumps({"type": "rego", "policy_id": "default", "policy": ""}).encode()
    refused(lambda: client.admin("POST", "/attestation-policy", kbs.token(), rego),
            "policy-invalid")
    other_id = json.dumps({"type": "toml", "policy_id": "other", "policy": ""}).encode()
    refused(lambda: client.admin("POST", "/attestation-policy", kbs.token(), other_id),
            "policy-invalid")
    refused(lambda: client.set_resource(kbs.token(), "a/../b", b"x"), "malformed-request")
    refused(lambda: client.set_resource(kbs.token(), "a/b/c d", b"x"), "malformed-request")


def test_a_rego_resource_policy_posted_as_trustee_does_decides_releases(
        kbs: Kbs, evidence: Evidence) -> None:
    """Trustee's client sends URL-safe base64 without padding; the module releases the
    secret to this measurement under the `default` repository only."""
    text = ("package policy\ndefault allow := false\nallow if {\n"
            f'    input.measurement == "{evidence.measurement.hex()}"\n'
            '    split(data["resource-path"], "/")[1] == "default"\n}\n')
    text += "#" * ((1 - len(text.encode())) % 3)  # a length that needs "==" when padded
    encoded = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    admin, token = kbs.client(), kbs.token()
    for bad in (encoded + "=", " " + encoded):  # neither exact form is
        body = json.dumps({"policy": bad}).encode()
        refused(lambda body=body: admin.admin("POST", "/resource-policy", token, body),
                "malformed-request")
    try:
        admin.admin("POST", "/resource-policy", token,
                    json.dumps({"policy": encoded}).encode())
        client, key = kbs.client(), tee_key()
        client.attest(attestation(evidence, client.auth()["nonce"], key))
        assert decrypt_jwe(key, client.resource(PATH)) == SECRET
        assert last_decision(kbs, "get-resource")["decision"] == "allowed"
        refusal = refused(lambda: client.resource("other/key/disk"), "resource-policy")
        assert "data.policy.allow is false" in str(refusal), refusal
        bad_module = base64.b64encode(b"package policy\nallow if {\n").decode()
        refused(lambda: admin.admin("POST", "/resource-policy", token,
                                    json.dumps({"policy": bad_module}).encode()),
                "policy-invalid")
    finally:
        admin.set_resource_policy(kbs.token(), RESOURCE_POLICY)


def test_every_problem_type_is_served(kbs: Kbs) -> None:
    client = kbs.client()
    for reason, (status, title) in REASONS.items():
        code, _, body = client.request("GET", ERRORS + reason)
        assert code == 200 and json.loads(body) == {"type": ERRORS + reason, "title": title,
                                                    "status": status}
    code, _, body = client.request("GET", "/kbs/v0/nowhere")
    assert code == 404 and json.loads(body)["type"] == ERRORS + "not-found"


# -- init-data and HOST_DATA -------------------------------------------------------------------

def initdata(algorithm: str, policy: str = "allow-all") -> InitData:
    """An initdata document as guest-components writes one (spec version 0.1.0)."""
    return InitData("toml", f'version = "0.1.0"\nalgorithm = "{algorithm}"\n\n[data]\n'
                            f'"policy.rego" = \'\'\'\npackage agent_policy\n{policy}\n\'\'\'\n')


def with_init_data(message: dict[str, Any], init: InitData) -> dict[str, Any]:
    return {"init-data": init.to_json(), **message}


@pytest.fixture(scope="module")
def launched_with_init_data(build: Callable[..., Path]) -> tuple[Evidence, InitData]:
    """A VM whose launch put an init-data digest (SHA-384, cut to 32 bytes) in HOST_DATA, as
    the VMM does with SNP_LAUNCH_FINISH."""
    init = initdata("sha384")
    host = Host(chip="milan", seed=b"kbs-service-initdata")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = bytes(64)
    vm.launch(host_data=init.host_data())
    assert vm.run(timeout=60).exit_code == 0
    certs = [(str(guid), der) for guid, der in parse_cert_table(vm.outputs[1])]
    launched = Evidence(host, vm.outputs[0], certs)
    assert AttestationReport.from_bytes(launched.report).host_data == init.host_data()
    return launched, init


def test_init_data_must_be_what_the_launch_put_in_host_data(
        kbs: Kbs, evidence: Evidence,
        launched_with_init_data: tuple[Evidence, InitData]) -> None:
    launched, init = launched_with_init_data
    assert launched.measurement == evidence.measurement  # HOST_DATA is not measured
    client, key = kbs.client(), tee_key()
    token = client.attest(with_init_data(attestation(launched, client.auth()["nonce"], key),
                                         init))
    assert decrypt_jwe(key, client.resource(PATH)) == SECRET
    # the token and the audit record carry the init-data, as Trustee's tokens do
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["claims"]
    assert claims["init_data"] == init.digest().hex()
    assert claims["init_data_claims"] == init.document()["data"] != {}
    assert last_decision(kbs, "attest")["claims"]["init_data"] == init.digest().hex()
    # one byte of the body changed (a different agent policy): another digest, refused
    changed = InitData("toml", init.body.replace("allow-all", "allow-any"))
    assert len(changed.body) == len(init.body) and changed.host_data() != init.host_data()
    client, key = kbs.client(), tee_key()
    message = with_init_data(attestation(launched, client.auth()["nonce"], key), changed)
    problem = refused(lambda: client.attest(message), "init-data")
    assert init.host_data().hex() in problem.detail
    record = last_decision(kbs, "attest")
    assert record["decision"] == "refused" and record["reason"].startswith("init-data")
    refused(lambda: client.resource(PATH), "session-not-attested")
    # without init-data nothing is checked: HOST_DATA may hold anything
    client, key = kbs.client(), tee_key()
    client.attest(attestation(launched, client.auth()["nonce"], key))


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_init_data_digests_of_each_algorithm(kbs: Kbs, evidence: Evidence,
                                             algorithm: str) -> None:
    """HOST_DATA as the firmware signs it for a launch with this init-data's digest: SHA-256
    fills it exactly, SHA-384 and SHA-512 are cut to their first 32 bytes."""
    init = initdata(algorithm)
    client, key = kbs.client(), tee_key()
    message = attestation(evidence, client.auth()["nonce"], key, host_data=init.host_data())
    client.attest(with_init_data(message, init))
    assert decrypt_jwe(key, client.resource(PATH)) == SECRET
    other = initdata("sha256" if algorithm != "sha256" else "sha384")
    client, key = kbs.client(), tee_key()
    message = attestation(evidence, client.auth()["nonce"], key, host_data=init.host_data())
    refused(lambda: client.attest(with_init_data(message, other)), "init-data")


@pytest.mark.parametrize(("init", "field"), [
    (InitData("json", '{"version": "0.1.0", "algorithm": "sha256", "data": {}}'),
     "init-data.format"),
    (InitData("toml", 'version = "0.1.0"\nalgorithm = "sha256"\n[data\n'), "init-data.body"),
    (InitData("toml", 'version = "0.1.0"\nalgorithm = "md5"\n[data]\n'),
     "init-data.body.algorithm"),
    (InitData("toml", 'version = "0.1.0"\nalgorithm = "SHA256"\n[data]\n'),
     "init-data.body.algorithm"),
    (InitData("toml", 'algorithm = "sha256"\n[data]\n'), "init-data.body.version"),
])
def test_bad_init_data_is_refused_and_spends_nothing(kbs: Kbs, evidence: Evidence,
                                                     init: InitData, field: str) -> None:
    client, key = kbs.client(), tee_key()
    nonce = client.auth()["nonce"]
    message = attestation(evidence, nonce, key)
    problem = refused(lambda: client.attest(with_init_data(message, init)), "init-data")
    assert problem.detail.startswith(field + ":")
    assert last_decision(kbs, "attest")["reason"].startswith("init-data")
    refused(lambda: client.resource(PATH), "session-not-attested")
    client.attest(message)  # a malformed document did not take the nonce


# -- the commands ------------------------------------------------------------------------------

def sevsim(*args: str | Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_the_commands_end_to_end(tmp_path: Path, evidence: Evidence) -> None:
    assert sevsim("kbs", "admin", "keygen", "-o", tmp_path / "admin").returncode == 0
    again = sevsim("kbs", "admin", "keygen", "-o", tmp_path / "admin")  # never overwrites
    assert again.returncode == 125 and b"admin.pem" in again.stderr
    with listen("127.0.0.1", 0) as busy:
        taken = sevsim("kbs", "serve", "--admin-key", tmp_path / "admin" / "admin.pub",
                       "--db", f"sqlite:///{tmp_path}/unused.db", "--port",
                       str(busy.getsockname()[1]),
                       env={"SEVSIM_KBS_SECRET_KEY": os.urandom(32).hex()})
    assert taken.returncode == 125 and b"cannot listen" in taken.stderr
    keyless = sevsim("kbs", "serve", "--admin-key", tmp_path / "admin" / "admin.pem",
                     "--db", f"sqlite:///{tmp_path}/unused.db")
    assert keyless.returncode == 125 and b"at-rest key" in keyless.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "sevsim", "kbs", "serve", "--db", f"sqlite:///{tmp_path}/k.db",
         "--admin-key", tmp_path / "admin" / "admin.pub", "--port", str(port),
         "--trust", "sevsim"],
        env={**os.environ, "SEVSIM_KBS_SECRET_KEY": os.urandom(32).hex()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = ("--url", url, "--key", tmp_path / "admin" / "admin.pem")
        (tmp_path / "secret").write_bytes(SECRET)
        (tmp_path / "resource.toml").write_text(RESOURCE_POLICY)
        deadline = time.monotonic() + 60
        while sevsim("kbs", "admin", "set-resource", PATH, tmp_path / "secret",
                     *admin).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert sevsim("kbs", "admin", "set-resource-policy", tmp_path / "resource.toml",
                      *admin).returncode == 0
        # the challenge: the session, the nonce, and the REPORT_DATA to put in a report
        ran = sevsim("kbs", "attest", "--url", url, "--tee-key", tmp_path / "tee.pem")
        assert ran.returncode == 0, ran.stderr
        challenge = json.loads(ran.stdout)
        (tmp_path / "report.bin").write_bytes(
            evidence.signed(bytes.fromhex(challenge["report-data"])))
        table = tmp_path / "certs.bin"
        table.write_bytes(build_cert_table([(uuid.UUID(g), d) for g, d in evidence.certs]))
        write_cert_table(table.read_bytes(), tmp_path / "certs")  # as `sevsim run` writes
        ran = sevsim("kbs", "attest", "--url", url, "--tee-key", tmp_path / "tee.pem",
                     "--report", tmp_path / "report.bin", "--certs", tmp_path / "certs",
                     "--session", challenge["session"], "--nonce", challenge["nonce"],
                     "--resource", PATH, "--out", tmp_path / "got")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.count(b".") == 2  # the token, a JWT
        assert (tmp_path / "got").read_bytes() == SECRET
        assert (tmp_path / "got").stat().st_mode & 0o777 == 0o600
        # the same evidence again: refused, the problem printed, exit 1
        ran = sevsim("kbs", "attest", "--url", url, "--tee-key", tmp_path / "tee.pem",
                     "--report", tmp_path / "report.bin", "--certs", table,
                     "--session", challenge["session"], "--nonce", challenge["nonce"])
        assert ran.returncode == 1 and json.loads(ran.stdout)["reason"] == "nonce-replayed"
        ran = sevsim("kbs", "admin", "audit", *admin)
        assert ran.returncode == 0, ran.stderr
        decisions = {(r["action"], r["decision"]) for r in json.loads(ran.stdout)}
        assert {("attest", "allowed"), ("attest", "refused"),
                ("get-resource", "allowed")} <= decisions
        ran = sevsim("kbs", "admin", "audit", "--url", url, "--key", tmp_path / "tee.pem")
        assert ran.returncode == 125 and b"Ed25519" in ran.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert SECRET not in (tmp_path / "k.db").read_bytes()


# -- load and crashes ------------------------------------------------------------------------

def test_a_bounded_load_releases_only_to_passing_vms(kbs: Kbs, evidence: Evidence) -> None:
    """8 clients, 4 VMs each, every other one debuggable: every passing VM gets the secret,
    no failing one gets anything, and no request errs."""
    debug = int(AttestationReport.from_bytes(evidence.report).policy | PolicyFlags.DEBUG)
    outcomes: list[tuple[bool, bytes | str]] = []
    lock = threading.Lock()

    def vm(index: int) -> None:
        client, key, good = kbs.client(), tee_key(), index % 2 == 0
        message = attestation(evidence, client.auth()["nonce"], key,
                              **({} if good else {"policy": debug}))
        try:
            client.attest(message)
            got: bytes | str = decrypt_jwe(key, client.resource(PATH))
        except KbsRefusal as refusal:
            got = refusal.reason
        with lock:
            outcomes.append((good, got))

    def client_loop(first: int) -> None:
        for index in range(first, first + 4):
            vm(index)

    threads = [threading.Thread(target=client_loop, args=(4 * n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(outcomes) == 32
    assert {got for good, got in outcomes if good} == {SECRET}
    assert {got for good, got in outcomes if not good} == {"attestation-policy"}


def serve(db: Path, admin_pub: Path, secret_key: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sevsim", "kbs", "serve", "--db", f"sqlite:///{db}",
         "--admin-key", admin_pub, "--port", str(port), "--trust", "sevsim"],
        env={**os.environ, "SEVSIM_KBS_SECRET_KEY": secret_key},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with KbsClient(url) as probe:
                probe.request("GET", ERRORS + "store")
            return
        except ConfigError:  # not listening yet
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)


class CountingHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 that answers every request with {} and records (connection, path); a path of
    /close also ends the connection after answering, as a server's idle timeout would."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[int, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.client_address[1], self.path))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
        self.wfile.flush()
        if self.path.endswith("/close"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_keeps_its_connection_and_never_sends_a_request_twice() -> None:
    """Requests share one connection; once the server closes it while idle, the next request
    goes out once, on a new connection, and succeeds."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    CountingHandler.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with KbsClient(f"http://127.0.0.1:{server.server_address[1]}") as client:
            for path in ("/a", "/b", "/close", "/c", "/d"):
                client.call("POST", path, b"{}")
                time.sleep(0.05)  # the server's end of /close arrives before /c is sent
    finally:
        server.shutdown()
        server.server_close()
    paths = [path for _, path in CountingHandler.seen]
    assert paths == [f"/kbs/v0/{name}" for name in ("a", "b", "close", "c", "d")]
    ports = [port for port, _ in CountingHandler.seen]
    assert ports[0] == ports[1] == ports[2] != ports[3] == ports[4]


def test_sigkill_mid_requests_loses_no_acknowledged_secret_or_audit_record(
        tmp_path: Path) -> None:
    admin, key = generate_admin_key(), os.urandom(32).hex()
    (tmp_path / "admin.pub").write_bytes(admin.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    port = free_port()
    url, db = f"http://127.0.0.1:{port}", tmp_path / "kbs.db"
    server = serve(db, tmp_path / "admin.pub", key, port)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        with KbsClient(url, timeout=10) as client:
            for i in range(1000):
                path = f"crash/w{n}/r{i}"
                try:
                    client.set_resource(issue_admin_token(admin), path,
                                        b"secret of %b" % path.encode())
                except ConfigError:  # the server died under it
                    return
                with lock:
                    acknowledged.append(path)

    try:
        wait_until_up(url, server)
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        while len(acknowledged) < 40:
            assert server.poll() is None
            time.sleep(0.01)
        server.kill()  # SIGKILL, requests in flight
        server.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
        server = serve(db, tmp_path / "admin.pub", key, port)
        wait_until_up(url, server)
        with KbsClient(url) as client:
            stored = {r["path"] for r in client.resources(issue_admin_token(admin))}
            records = client.audit(issue_admin_token(admin), limit=10_000)
        assert set(acknowledged) <= stored
        allowed = {r["resource"] for r in records
                   if r["action"] == "set-resource" and r["decision"] == "allowed"}
        assert set(acknowledged) <= allowed
    finally:
        server.kill()
        server.wait(timeout=30)
    with Store.open(f"sqlite:///{db}", bytes.fromhex(key)) as store:
        for path in acknowledged:
            assert store.get_resource(path) == b"secret of %b" % path.encode()




# -- real evidence -----------------------------------------------------------------------------

REAL = Path(__file__).resolve().parent / "data" / "snp" / "milan-v2-a"


def test_a_real_milan_report_is_verified_to_amds_roots_over_http(tmp_path: Path) -> None:
    """A real report and VCEK, posted by `sevsim kbs attest` to a KBS trusting AMD's roots:
    genuine, so the only refusal is that its REPORT_DATA cannot bind this session (it was made
    for another nonce long ago); one flipped bit makes it a signature failure instead."""
    config = KbsConfig(db_url=f"sqlite:///{tmp_path}/kbs.db", secret_key=os.urandom(32),
                       admin_key=generate_admin_key().public_key())
    tampered = bytearray((REAL / "report.bin").read_bytes())
    tampered[0x90] ^= 1  # a measurement bit
    (tmp_path / "tampered.bin").write_bytes(tampered)
    with running(config) as url:
        for report, reason in ((REAL / "report.bin", "evidence-report-data"),
                               (tmp_path / "tampered.bin", "evidence-signature")):
            ran = sevsim("kbs", "attest", "--url", url, "--tee-key", tmp_path / "tee.pem",
                         "--report", report, "--certs", REAL)
            assert ran.returncode == 1, ran.stderr
            assert json.loads(ran.stdout)["reason"] == reason


def test_a_real_milan_report_passes_a_matching_policy_in_the_evidence_check(
        tmp_path: Path) -> None:
    """`sevsim kbs admin check-evidence`: the real report and VCEK verify to AMD's roots and
    pass an attestation policy naming their measurement, but not one naming another, nor
    the default policy (the report is of a debuggable VM, which a matching policy allows); a
    REPORT_DATA it does not carry, or one flipped bit, is refused. Only the admin may ask;
    nothing is released and every answer is in the audit log."""
    admin = generate_admin_key()
    key_file = tmp_path / "admin.pem"
    key_file.write_bytes(admin.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    real = AttestationReport.from_bytes((REAL / "report.bin").read_bytes())
    tampered = bytearray((REAL / "report.bin").read_bytes())
    tampered[0x90] ^= 1  # a measurement bit
    (tmp_path / "tampered.bin").write_bytes(tampered)
    config = KbsConfig(db_url=f"sqlite:///{tmp_path}/kbs.db", secret_key=os.urandom(32),
                       admin_key=admin.public_key())
    with running(config) as url:
        def check(*extra: str | Path, report: Path = REAL / "report.bin"
                  ) -> subprocess.CompletedProcess[bytes]:
            return sevsim("kbs", "admin", "check-evidence", "--url", url, "--key", key_file,
                          "--report", report, "--certs", REAL, *extra)

        def set_policy(measurement: bytes) -> None:
            (tmp_path / "policy.toml").write_text(
                f'[guest]\nmeasurements = ["{measurement.hex()}"]\n'
                "[guest_policy]\nallow_debug = true\n")
            ran = sevsim("kbs", "admin", "set-attestation-policy", "--url", url, "--key",
                         key_file, tmp_path / "policy.toml")
            assert ran.returncode == 0, ran.stderr

        default = check()
        assert default.returncode == 1
        assert "allow_debug" in json.loads(default.stdout)["detail"]
        set_policy(real.measurement)
        passed = check()
        assert passed.returncode == 0, passed.stderr
        claims = json.loads(passed.stdout)
        assert claims["measurement"] == real.measurement.hex()
        assert (claims["chip_id"], claims["signer"]) == (real.chip_id.hex(), "VCEK")
        bound = check("--report-data", real.report_data.hex())
        assert bound.returncode == 0, bound.stderr
        for args, report, reason in (
                (("--report-data", "00" * 64), REAL / "report.bin", "evidence-report-data"),
                ((), tmp_path / "tampered.bin", "evidence-signature")):
            ran = check(*args, report=report)
            assert ran.returncode == 1 and json.loads(ran.stdout)["reason"] == reason
        set_policy(bytes(48))
        ran = check()
        assert ran.returncode == 1
        assert json.loads(ran.stdout)["reason"] == "attestation-policy"
        with KbsClient(url) as client:
            stranger = issue_admin_token(generate_admin_key())
            refused(lambda: client.check_evidence(stranger, {}), "admin-auth")
            records = client.audit(issue_admin_token(admin), limit=10_000)
    checks = [r["decision"] for r in records if r["action"] == "check-evidence"]
    assert checks == ["refused", "allowed", "allowed", "refused", "refused", "refused",
                      "refused"]
    assert not [r for r in records if r["action"] in ("attest", "get-resource")]


@pytest.mark.parametrize(("args", "words"), [
    (["serve", "--port", "70000"], ["ConfigError", "port"]),
    (["serve", "--host", "not..a..host"], ["ConfigError", "not..a..host"]),
    (["serve", "--db", "mysql://nowhere/kbs"], ["KbsStoreInputError", "mysql"]),
    (["serve", "--admin-key", "{admin}/admin.pem"], ["KbsAdminAuthError", "not a PEM public key"]),
    (["serve", "--admin-key", "/dev/null"], ["KbsAdminAuthError", "/dev/null"]),
    (["admin", "audit", "--url", "http://127.0.0.1:9", "--key", "{admin}/admin.pem"],
     ["ConfigError", "127.0.0.1:9"]),
    (["admin", "audit", "--url", "ftp://x", "--key", "{admin}/admin.pem"],
     ["ConfigError", "ftp://x"]),
    (["attest", "--url", "http://127.0.0.1:9", "--tee-key", "{admin}/tee.pem"],
     ["ConfigError", "127.0.0.1:9"]),
    (["attest", "--url", "http://127.0.0.1:9", "--tee-key", "{admin}/admin.pem"],
     ["ConfigError", "not an EC private key"]),
])
def test_bad_input_to_the_commands_is_one_typed_line(tmp_path: Path, args: list[str],
                                                      words: list[str]) -> None:
    """No traceback, exit 125, one line on stderr naming the problem."""
    assert sevsim("kbs", "admin", "keygen", "-o", tmp_path).returncode == 0
    args = [a.format(admin=tmp_path) for a in args]
    if args[0] == "serve":
        args = ["serve", "--admin-key", str(tmp_path / "admin.pub"),
                "--db", f"sqlite:///{tmp_path}/kbs.db", *args[1:]]
    done = sevsim("kbs", *args, env={"SEVSIM_KBS_SECRET_KEY": "00" * 32})
    stderr = done.stderr.decode()
    assert b"Traceback" not in done.stdout + done.stderr and done.returncode == 125, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert all(word in stderr for word in words), stderr
