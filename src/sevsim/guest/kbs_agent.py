"""The guest kernel's attestation agent: fetches one resource from a Trustee-protocol key
broker (KBS) over any byte stream (the virtual NIC, in the kernel).

The exchange is Trustee's request-challenge-attestation-response: POST /auth (the TEE
type) gives a nonce and a session cookie; the agent makes an ephemeral EC P-256 key pair,
binds the nonce and the public key into REPORT_DATA (`RuntimeData.report_data()`), asks
the Secure Processor for a report and POSTs it to /attest as SNP evidence; GET /resource
then returns the secret as a JWE (ECDH-ES+A256KW, A256GCM) that only the private key opens.
The private key is kept where the kernel says (`KeyStore`: a private page) and read back only
to decrypt; the plaintext goes only where the kernel puts it. HTTP/1.1 is h11's (sans-IO),
so the same agent runs over a socket in tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Protocol
from urllib.parse import urlsplit

import h11
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from sevsim.abi.kbs import (
    KBS_PROTOCOL_VERSION,
    Attestation,
    Challenge,
    EcPublicJwk,
    Request,
    RuntimeData,
    TeeEvidence,
)
from sevsim.abi.kbs_snp import snp_evidence_to_json
from sevsim.abi.snp_report import parse_cert_table
from sevsim.errors import FormatError, KbsAgentError

KEY_ALG = "ECDH-ES+A256KW"
CONTENT_ENC = "A256GCM"
SESSION_COOKIE = "kbs-session-id"
MAX_BODY = 1 << 20  # no KBS answer the agent uses is larger
_CHUNK = 65536
_SCALAR = 32  # a P-256 private scalar, big-endian


class Stream(Protocol):
    """A byte stream the agent speaks HTTP over (the NIC driver, or a socket in tests)."""

    def connect(self) -> None:
        """Open a fresh connection."""
        ...

    def send(self, data: bytes) -> None:
        """Send all of `data`."""
        ...

    def recv(self) -> bytes:
        """Some bytes, or b"" when the far end closed."""
        ...

    def close(self) -> None:
        """End the connection."""
        ...


class KeyStore(Protocol):
    """Where the ephemeral private key lives between making it and using it."""

    def store(self, scalar: bytes) -> None:
        """Keep the 32-byte private scalar."""
        ...

    def load(self) -> bytes:
        """The scalar stored last."""
        ...

    def wipe(self) -> None:
        """Forget the scalar."""
        ...


#: REPORT_DATA in, (report, certificate table) out: the kernel's extended guest request.
Evidence = Callable[[bytes], tuple[bytes, bytes]]


@dataclass
class Response:
    """One HTTP response, body read whole (bounded by MAX_BODY)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        """Every value of a header (names compared case-insensitively)."""
        return [value for key, value in self.headers if key.lower() == name]


@dataclass
class HttpClient:
    """HTTP/1.1 with keep-alive over a Stream: reconnects when the server closes."""

    stream: Stream
    authority: str
    cookies: dict[str, str] = field(default_factory=dict)
    _conn: h11.Connection | None = field(default=None, init=False, repr=False)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> Response:
        """Send one request, return the response; KbsAgentError("protocol") for anything
        h11 refuses or a body past MAX_BODY."""
        if self._conn is None:
            self.stream.connect()
            self._conn = h11.Connection(h11.CLIENT)
        conn = self._conn
        head = [("Host", self.authority), ("Accept", "application/json"), *headers]
        if self.cookies:
            head.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        if body is not None:
            head += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        try:
            events: list[h11.Request | h11.Data | h11.EndOfMessage] = [
                h11.Request(method=method, target=target, headers=head)]
            if body:
                events.append(h11.Data(data=body))
            events.append(h11.EndOfMessage())
            self.stream.send(b"".join(conn.send(event) or b"" for event in events))
            response = self._read(conn)
        except h11.ProtocolError as err:
            self._drop()
            raise KbsAgentError("protocol", f"HTTP: {err}") from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self._drop()
        self._remember_cookies(response)
        return response

    def _read(self, conn: h11.Connection) -> Response:
        response: Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.stream.recv())
            elif isinstance(event, h11.Response):
                response = Response(event.status_code, list(event.headers))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise KbsAgentError("protocol", f"a response body past {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                response.body = bytes(body)
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise KbsAgentError("network", "the key broker closed the connection")

    def _drop(self) -> None:
        self.stream.close()
        self._conn = None

    def _remember_cookies(self, response: Response) -> None:
        for raw in response.header(b"set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(raw.decode("latin-1"))
            except CookieError:
                continue
            self.cookies.update({name: morsel.value for name, morsel in jar.items()})


def _json(response: Response, what: str) -> dict[str, object]:
    """The response's JSON object, or the KbsAgentError its status means."""
    if response.status in (401, 403):
        raise KbsAgentError("refused", f"{what}: {response.status} {_problem(response)}")
    if response.status == 404:
        raise KbsAgentError("not-found", f"{what}: 404 {_problem(response)}")
    if response.status != 200:
        raise KbsAgentError("protocol", f"{what}: HTTP {response.status} {_problem(response)}")
    try:
        value = json.loads(response.body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise KbsAgentError("protocol", f"{what}: the body is not JSON") from None
    if not isinstance(value, dict):
        raise KbsAgentError("protocol", f"{what}: the body is not a JSON object")
    return value


def _problem(response: Response) -> str:
    """An RFC 7807 problem document's type, if the body is one."""
    try:
        doc = json.loads(response.body)
    except (ValueError, RecursionError):
        return ""
    return str(doc.get("type", "")) if isinstance(doc, dict) else ""


def base_path(url: str) -> tuple[str, str]:
    """The Host header value and the path prefix of the KBS at `url` (/kbs/v0 appended)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise KbsAgentError("network", f"not an http:// URL: {url!r}")
    return parts.netloc, parts.path.rstrip("/") + "/kbs/v0"


def decrypt_resource(jwe_json: dict[str, object], scalar: bytes) -> bytes:
    """The plaintext of a flattened JWE to the agent's key (ECDH-ES+A256KW with A256GCM, and
    nothing else); KbsAgentError("protocol") for any other or a forged one."""
    try:
        key = ECKey.import_key(ec.derive_private_key(int.from_bytes(scalar, "big"),
                                                     ec.SECP256R1()))
        opened = jwe.decrypt_json(jwe_json, key,  # type: ignore[arg-type]
                                  algorithms=[KEY_ALG, CONTENT_ENC])
    except (JoseError, ValueError, TypeError, KeyError) as err:
        raise KbsAgentError("protocol", f"the resource's JWE does not open: {err}") from None
    header = opened.protected
    if header.get("alg") != KEY_ALG or header.get("enc") != CONTENT_ENC:
        raise KbsAgentError("protocol", f"the JWE uses {header.get('alg')}/{header.get('enc')}")
    return bytes(opened.plaintext or b"")


def fetch_resource(client: HttpClient, prefix: str, path: str, evidence: Evidence,
                   keys: KeyStore) -> bytes:
    """The resource at `path` (repository/type/tag), attesting first."""
    try:
        request = Request(version=KBS_PROTOCOL_VERSION, tee="snp", extra_params={})
        answer = client.request("POST", f"{prefix}/auth",
                                json.dumps(request.to_json()).encode())
        challenge = Challenge.from_json(_json(answer, "auth"))
        private = ec.generate_private_key(ec.SECP256R1())
        keys.store(private.private_numbers().private_value.to_bytes(_SCALAR, "big"))
        jwk = EcPublicJwk.from_key(private.public_key())
        del private  # from here on the key exists only in the key store
        runtime = RuntimeData(nonce=challenge.nonce, tee_pubkey=jwk)
        report, table = evidence(runtime.report_data())
        certs = [(str(guid), der) for guid, der in parse_cert_table(table)] if table else None
        attestation = Attestation(runtime_data=runtime, init_data=None,
                                  tee_evidence=TeeEvidence(
                                      primary=snp_evidence_to_json(report, certs)))
        token = _json(client.request("POST", f"{prefix}/attest",
                                     json.dumps(attestation.to_json()).encode()), "attest")
        bearer = token.get("token")
        if not isinstance(bearer, str) or not bearer.isascii() or not bearer.isprintable():
            raise KbsAgentError("protocol", "attest: no token in the answer")
        sealed = _json(client.request("GET", f"{prefix}/resource/{path}",
                                      headers=(("Authorization", f"Bearer {bearer}"),)),
                       "resource")
        return decrypt_resource(sealed, keys.load())
    except FormatError as err:
        raise KbsAgentError("protocol", str(err)) from None
    finally:
        keys.wipe()
