"""A small Trustee-protocol key broker for the guest tests: http.server on 127.0.0.1 in a
thread, built on sevsim.abi.kbs, sevsim.abi.kbs_snp, sevsim.kbs.jose and sevsim.attest. It
releases a resource only to evidence that verifies to sevsim's simulated AMD root, binds the
session's nonce and key (RuntimeData.report_data), carries the expected measurement and a
policy without DEBUG; refusals are RFC 7807 problem documents. Every message it received
and every JWE it sent is kept for the tests to look at. (The lead switches these tests to
the real service, sevsim.kbs.service, once it lands.)"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from sevsim.abi.kbs import Attestation, Challenge, PublicJwk, Request, b64url_encode
from sevsim.abi.kbs_snp import snp_evidence_from_json
from sevsim.abi.snp_report import build_cert_table
from sevsim.abi.snp_tcb import PolicyFlags
from sevsim.attest.snp_verify import CertBundle, verify_report_chain
from sevsim.errors import SevsimError
from sevsim.host.vnic import parse_kbs_url
from sevsim.kbs.jose import encrypt_to_tee

PROBLEM = "https://github.com/confidential-containers/trustee/errors/"


@dataclass
class Session:
    """One client's state between auth, attest and resource."""

    nonce: str
    attested: bool = False
    tee_pubkey: PublicJwk | None = None


@dataclass
class KbsLog:
    """What the server saw and sent."""

    bodies: list[tuple[str, Any]] = field(default_factory=list)  # (path, parsed JSON)
    refusals: list[tuple[int, str, str]] = field(default_factory=list)  # status, type, detail
    released: list[dict[str, str]] = field(default_factory=list)  # JWEs sent


class LoopbackKbs:
    """`with LoopbackKbs(resources, measurement) as kbs:` serves at kbs.url."""

    def __init__(self, resources: dict[str, bytes], measurement: bytes) -> None:
        self.resources = resources
        self.measurement = measurement
        self.sessions: dict[str, Session] = {}
        self.log = KbsLog()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the server listens."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackKbs:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- the protocol ---------------------------------------------------------------------------
    def auth(self, body: bytes) -> tuple[int, dict[str, Any], str | None]:
        request = Request.from_json(body)
        if request.tee != "snp":
            return self.problem(401, "UnsupportedTee", request.tee)
        session_id = uuid.uuid4().hex
        nonce = b64url_encode(os.urandom(32))
        with self._lock:
            self.sessions[session_id] = Session(nonce)
        return 200, Challenge(nonce, {}).to_json(), session_id

    def attest(self, session: Session | None, body: bytes) -> tuple[int, dict[str, Any]]:
        if session is None:
            return self.problem(401, "UnauthenticatedSession", "no session cookie")[:2]
        attestation = Attestation.from_json(body)
        runtime = attestation.runtime_data
        if runtime.nonce != session.nonce or session.attested:
            return self.problem(401, "InvalidNonce", "not this session's nonce")[:2]
        evidence = snp_evidence_from_json(attestation.tee_evidence.primary)
        table = build_cert_table([(uuid.UUID(guid), der) for guid, der in evidence.certs])
        result = verify_report_chain(evidence.report, CertBundle.from_cert_table(table),
                                     trust="sevsim")
        if not result.ok or result.report is None:
            detail = "; ".join(f"{c.name}: {c.detail}" for c in result.failures)
            return self.problem(401, "AttestationFailed", detail)[:2]
        report = result.report
        if report.report_data != runtime.report_data():
            return self.problem(401, "AttestationFailed", "REPORT_DATA does not bind")[:2]
        if report.measurement != self.measurement:
            return self.problem(401, "AttestationFailed", "measurement")[:2]
        if report.policy & PolicyFlags.DEBUG:
            return self.problem(401, "AttestationFailed", "debug policy")[:2]
        session.attested, session.tee_pubkey = True, runtime.tee_pubkey
        return 200, {"token": uuid.uuid4().hex}

    def resource(self, session: Session | None, path: str) -> tuple[int, dict[str, Any]]:
        if session is None or not session.attested or session.tee_pubkey is None:
            return self.problem(401, "UnauthenticatedSession", "not attested")[:2]
        if path not in self.resources:
            return self.problem(404, "ResourceNotFound", path)[:2]
        sealed = encrypt_to_tee(session.tee_pubkey, self.resources[path])
        self.log.released.append(sealed)
        return 200, sealed

    def problem(self, status: int, name: str, detail: str
                ) -> tuple[int, dict[str, Any], str | None]:
        self.log.refusals.append((status, name, detail))
        return status, {"type": PROBLEM + name, "detail": detail}, None

    # -- HTTP -----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        kbs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _session(self) -> Session | None:
                jar: SimpleCookie = SimpleCookie(self.headers.get("Cookie", ""))
                morsel = jar.get("kbs-session-id")
                return kbs.sessions.get(morsel.value) if morsel else None

            def _answer(self, status: int, doc: dict[str, Any],
                        cookie: str | None = None) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200
                                 else "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                if cookie:
                    self.send_header("Set-Cookie", f"kbs-session-id={cookie}; Path=/kbs")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    kbs.log.bodies.append((self.path, json.loads(body)))
                    if self.path == "/kbs/v0/auth":
                        self._answer(*kbs.auth(body))
                    elif self.path == "/kbs/v0/attest":
                        self._answer(*kbs.attest(self._session(), body))
                    else:
                        self._answer(*kbs.problem(404, "NotFound", self.path)[:2])
                except (SevsimError, ValueError) as err:
                    self._answer(*kbs.problem(400, "MalformedRequest", str(err))[:2])

            def do_GET(self) -> None:
                prefix = "/kbs/v0/resource/"
                if self.path.startswith(prefix):
                    self._answer(*kbs.resource(self._session(), self.path[len(prefix):]))
                else:
                    self._answer(*kbs.problem(404, "NotFound", self.path)[:2])

        return Handler


class Mitm:
    """The host in the middle: a TCP proxy on 127.0.0.1 between the VM's NIC and the KBS that
    reads each whole HTTP/1.1 request from the guest and lets `rewrite(path, body)` replace
    the body before passing it on; responses go back untouched."""

    def __init__(self, upstream: str, rewrite: Callable[[str, bytes], bytes]) -> None:
        self.upstream = parse_kbs_url(upstream)
        self.rewrite = rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """Where the VM's NIC should connect."""
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Mitm:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                guest, _ = self._listener.accept()
            except TimeoutError:
                continue
            guest.settimeout(10)
            with guest, socket.create_connection(self.upstream, timeout=10) as kbs:
                guest_in, kbs_in = guest.makefile("rb"), kbs.makefile("rb")
                while True:
                    request = _message(guest_in)
                    if request is None:
                        break
                    head, body = request
                    path = head.split(b" ")[1].decode()
                    body = self.rewrite(path, body)
                    kbs.sendall(_with_length(head, body))
                    response = _message(kbs_in)
                    if response is None:
                        break
                    guest.sendall(_with_length(*response))


def _message(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message with a Content-Length body (or none), or None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, stream.read(length)


def _with_length(head: bytes, body: bytes) -> bytes:
    lines = [line for line in head.rstrip(b"\r\n").split(b"\r\n")
             if not line.lower().startswith(b"content-length:")]
    if body or head.split(b" ")[0] == b"POST" or head.startswith(b"HTTP/"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
