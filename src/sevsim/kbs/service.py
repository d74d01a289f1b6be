"""The key broker's HTTP API: Trustee's request-challenge-attestation-response protocol
(confidential-containers/trustee, `kbs/docs/kbs_attestation_protocol.md`) on FastAPI.

A VM asks for a nonce (`POST /kbs/v0/auth`, which also sets the `kbs-session-id` cookie),
proves with SNP evidence whose REPORT_DATA binds that nonce and its ephemeral public key
(`POST /kbs/v0/attest`, answered with a token the KBS signs), then fetches secrets
(`GET /kbs/v0/resource/<repository>/<type>/<tag>`, by cookie or `Authorization: Bearer`),
each one a JWE only the key in its runtime data opens. The operator sets policies and
resources through admin endpoints that take a short-lived JWT signed by the admin's Ed25519
key (sevsim.kbs.admin). Every refusal is an RFC 7807 problem document whose `type` names the
reason (REASONS), and every decision, allowed or refused, goes into the audit log before the
answer leaves.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from sevsim.abi.kbs import Attestation, Challenge, parse_jwk
from sevsim.abi.kbs import Request as KbsRequest
from sevsim.abi.kbs_snp import snp_evidence_from_json
from sevsim.attest.snp_policy import Policy
from sevsim.errors import (
    ConfigError,
    KbsAdminAuthError,
    KbsCryptoError,
    KbsEvidenceError,
    KbsNotFoundError,
    KbsProtocolError,
    KbsRefusal,
    KbsSessionError,
    KbsStoreError,
    KbsStoreInputError,
    PolicyError,
    SevsimError,
)
from sevsim.kbs.admin import verify_admin_token
from sevsim.kbs.client import ERRORS, PREFIX, PROBLEM, SESSION_COOKIE
from sevsim.kbs.jose import TokenSigner, encrypt_to_tee
from sevsim.kbs.policy import parse_resource_policy
from sevsim.kbs.store import MAX_AUDIT_TEXT, PolicyKind, Store, StoreTransaction, utc_now
from sevsim.kbs.verifier import REASONS as EVIDENCE_REASONS
from sevsim.kbs.verifier import REPORT_DATA_SIZE, EvidenceConfig, check_snp_evidence

MAX_BODY = 1 << 20  # a request body: evidence with a certificate chain is a few KiB
SUPPORTED_TEE = "snp"

# Every reason a request is refused: HTTP status and the problem document's title. The one
# place a reason is named; `type` is ERRORS + the key, and GET on it answers the title.
REASONS: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "The request body is not the JSON the protocol defines"),
    "unsupported-tee": (400, "This KBS attests SEV-SNP evidence only"),
    "payload-too-large": (413, "The request body is larger than the KBS accepts"),
    "no-session": (401, "No kbs-session-id cookie: POST /kbs/v0/auth first"),
    "unknown-session": (401, "The kbs-session-id cookie names no session"),
    "nonce-expired": (401, "The session's nonce expired before the attestation arrived"),
    "nonce-replayed": (401, "The session's nonce was already used by an attestation"),
    "nonce-mismatch": (401, "runtime-data carries a nonce other than this session's"),
    **{f"evidence-{reason}": (401, f"The evidence fails the verifier's {reason} check")
       for reason in EVIDENCE_REASONS if reason != "policy"},
    "init-data": (401, "init-data is not a TOML initdata document whose digest is the "
                  "report's HOST_DATA"),
    "attestation-policy": (403, "The evidence does not satisfy the attestation policy"),
    "no-token": (401, "No attested session cookie and no bearer token"),
    "token-invalid": (401, "The bearer token is not one this KBS issued, or has expired"),
    "session-not-attested": (401, "The session has not attested"),
    "session-expired": (401, "The session's attestation has expired: attest again"),
    "resource-policy": (403, "The resource policy does not release this resource"),
    "resource-not-found": (404, "No resource at this path"),
    "admin-auth": (401, "Admin endpoints need a valid admin token"),
    "policy-invalid": (400, "The policy does not parse"),
    "not-found": (404, "No such endpoint"),
    "method-not-allowed": (405, "The endpoint does not take this method"),
    "store": (500, "The KBS's database failed; nothing was released"),
    "internal": (500, "The KBS failed; nothing was released"),
}


# the stored policies are read on every attestation and release but seldom change: each
# text is parsed once (both results are frozen; a text that fails is not kept)
attestation_policy_of = functools.lru_cache(maxsize=16)(Policy.from_toml)
resource_policy_of = functools.lru_cache(maxsize=16)(parse_resource_policy)


def refuse(reason: str, detail: str) -> KbsRefusal:
    """The refusal for `reason` (a REASONS key) with its status."""
    return KbsRefusal(REASONS[reason][0], reason, detail)


def problem(refusal: KbsRefusal) -> JSONResponse:
    """An RFC 7807 problem document for `refusal`."""
    title = REASONS.get(refusal.reason, REASONS["internal"])[1]
    return JSONResponse({"type": ERRORS + refusal.reason, "title": title,
                         "status": refusal.status, "detail": refusal.detail},
                        status_code=refusal.status, media_type=PROBLEM)


@dataclass(frozen=True)
class KbsConfig:
    """What a KBS is started with: where its database is and the key its secrets are
    encrypted under at rest, the admin's public key, how evidence is verified (its `policy`
    applies until the admin sets one), and lifetimes. `token_key` signs attestation tokens
    (ES256); None makes a fresh one at start, so tokens do not outlive the process. `clock`
    is what sessions and admin tokens are checked against."""

    db_url: str
    secret_key: bytes
    admin_key: Ed25519PublicKey
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    token_key: ec.EllipticCurvePrivateKey | None = None
    nonce_lifetime_s: int = 300
    token_lifetime_s: int = 3600
    clock: Callable[[], datetime.datetime] = utc_now


@dataclass
class AuditEntry:
    """What the audit record of one request says, filled in as the request is handled.
    `claimed_nonce` is set once an attestation is well-formed: from then on, a refusal spends
    that nonce of the session."""

    action: str
    client: str
    session: str | None = None
    resource: str | None = None
    claims: dict[str, Any] | None = None
    claimed_nonce: str | None = None


# What a request does to the database once it has been checked: run in one transaction with
# the audit record of its outcome.
Step = Callable[[StoreTransaction], Response]


class Broker:
    """The protocol's logic over one Store. Each endpoint's method checks its request without
    the database (parsing, signatures, the evidence) and returns the Step that uses it, or
    raises KbsRefusal; `decide` runs the step and audits either outcome."""

    def __init__(self, config: KbsConfig) -> None:
        self.config = config
        self.store = Store.open(config.db_url, config.secret_key, config.clock)
        self.signer = TokenSigner(config.token_key or ec.generate_private_key(ec.SECP256R1()))

    def decide(self, entry: AuditEntry, work: Callable[[], Step]) -> Response:
        """Run `work`, then its step and the audit record of the outcome in one transaction,
        committed before the answer: the costly checks hold no database lock and a request
        is one commit. A refusal at either stage leaves nothing of the step behind and is
        recorded in a transaction of its own (`refused`)."""
        try:
            try:
                step = work()
                with self.store.transaction() as tx:
                    response = step(tx)
                    self.audit(tx, entry, "allowed", "")
                return response
            except KbsRefusal:
                raise
            except KbsStoreInputError as error:
                raise refuse("malformed-request", str(error)) from None
            except KbsStoreError as error:
                raise refuse("store", str(error)) from None
            except SevsimError as error:  # a typed error no step turned into a refusal
                raise refuse("internal", f"{type(error).__name__}: {error}") from None
        except KbsRefusal as refusal:
            return self.refused(entry, refusal)

    def refused(self, entry: AuditEntry, refusal: KbsRefusal) -> Response:
        """The problem document for `refusal`, once it is in the audit log; an attestation
        that claimed a nonce spends it in the same transaction (whatever the verdict, a nonce
        serves one attempt), and a session that cannot be spent is the reason given."""
        with self.store.transaction() as tx:
            if entry.claimed_nonce is not None and entry.session is not None:
                try:
                    tx.consume_nonce(entry.session, entry.claimed_nonce)
                except (KbsNotFoundError, KbsSessionError) as error:
                    refusal = session_refusal(error)
            self.audit(tx, entry, "refused", f"{refusal.reason}: {refusal.detail}")
        return problem(refusal)

    @staticmethod
    def audit(tx: StoreTransaction, entry: AuditEntry, outcome: str, reason: str) -> None:
        """One audit record. What a client chose (its cookie, a path, a detail quoting its
        input) is cut to what the store takes: a refusal is recorded however long it is."""
        def cut(text: str | None, member: str) -> str | None:
            return text[:MAX_AUDIT_TEXT[member]] if text else None
        tx.append_audit(entry.action, outcome, session_id=cut(entry.session, "session_id"),
                        client=cut(entry.client, "client"),
                        resource=cut(entry.resource, "resource"),
                        reason=cut(reason, "reason"), claims=entry.claims)

    # -- the attestation protocol ----------------------------------------------------------

    def auth(self, body: bytes, entry: AuditEntry) -> Step:
        """Request -> Challenge: a fresh nonce in a new session, named by the cookie."""
        request = parse(KbsRequest.from_json, body)
        if request.tee != SUPPORTED_TEE:
            raise refuse("unsupported-tee", f"tee {request.tee!r}; this KBS takes "
                         f"{SUPPORTED_TEE!r}")

        def step(tx: StoreTransaction) -> Response:
            session = tx.new_session(request.tee, self.config.nonce_lifetime_s)
            entry.session = session.id
            response = JSONResponse(Challenge(nonce=session.nonce, extra_params={}).to_json())
            response.set_cookie(SESSION_COOKIE, session.id, path=PREFIX, httponly=True,
                                samesite="strict")
            return response
        return step

    def attest(self, session_id: str | None, body: bytes, entry: AuditEntry) -> Step:
        """Attestation -> token. A well-formed message takes its session's nonce (once,
        whatever the verdict) if it is that session's nonce; the evidence must verify, bind
        runtime-data, pass the attestation policy and, if the message carries init-data,
        hold its digest in HOST_DATA. A malformed message (init-data included) or another
        session's nonce changes nothing. The session's own problems (unknown, another nonce,
        used, expired) are the reason given before the evidence's."""
        if session_id is None:
            raise refuse("no-session", "the request carries no kbs-session-id cookie")
        entry.session = session_id
        attestation = parse(Attestation.from_json, body)
        evidence = parse(snp_evidence_from_json, attestation.tee_evidence.primary)
        init_data = self.init_data_claims(attestation)
        nonce = entry.claimed_nonce = attestation.runtime_data.nonce
        # either binding: the issue's (runtime-data's canonical JSON) or Trustee's current one
        # (our challenges select no hash, so SHA-384)
        bindings = (attestation.runtime_data.report_data(), attestation.report_data())
        try:
            verified = check_snp_evidence(evidence.report, evidence.certs, bindings,
                                          self.config.evidence)
        except KbsEvidenceError as error:
            raise evidence_refusal(error) from None
        tee_pubkey = attestation.runtime_data.tee_pubkey.to_json()

        def step(tx: StoreTransaction) -> Response:
            try:
                tx.consume_nonce(session_id, nonce)
                claims = verified.claims(self.attestation_policy(tx))
                entry.claims = claims
                if init_data is not None:
                    host_data, extra = init_data
                    if claims["host_data"] != host_data.hex():
                        raise refuse("init-data", f"the report's HOST_DATA "
                                     f"{claims['host_data']} is not the init-data's digest "
                                     f"{host_data.hex()}")
                    claims = entry.claims = {**claims, **extra}
                tx.attest_session(session_id, tee_pubkey, claims,
                                  lifetime_s=self.config.token_lifetime_s)
            except (KbsNotFoundError, KbsSessionError) as error:
                raise session_refusal(error) from None
            except KbsEvidenceError as error:
                raise evidence_refusal(error) from None
            token = self.signer.issue({"tee": SUPPORTED_TEE, "tee-pubkey": tee_pubkey,
                                       "claims": claims}, self.config.token_lifetime_s,
                                      now=self.now())
            return JSONResponse({"token": token})
        return step

    @staticmethod
    def init_data_claims(attestation: Attestation) -> tuple[bytes, dict[str, Any]] | None:
        """What HOST_DATA must be for the init-data the VM sent, and the claims it adds once
        it matches, as Trustee's tokens carry them: `init_data` (the digest, hex) and
        `init_data_claims` (its `[data]` table). None: it sent none, so nothing is checked.
        Checked before the nonce is taken: a bad document is malformed input and changes
        nothing."""
        if attestation.init_data is None:
            return None
        try:
            document = attestation.init_data.document()
            return attestation.init_data.host_data(), {
                "init_data": attestation.init_data.digest().hex(),
                "init_data_claims": document["data"]}
        except KbsProtocolError as error:
            raise refuse("init-data", str(error)) from None

    def now(self) -> int:
        """The configured clock in seconds since the epoch (what JWTs carry)."""
        return int(self.config.clock().timestamp())

    def attestation_policy(self, tx: StoreTransaction) -> Policy:
        """The admin's attestation policy, else the configured one."""
        try:
            text = tx.get_policy(PolicyKind.ATTESTATION).text
        except KbsNotFoundError:
            return self.config.evidence.policy
        try:
            return attestation_policy_of(text)
        except PolicyError as error:  # it parsed when it was set: the row was altered
            raise refuse("store", f"the stored attestation policy fails: {error}") from None

    def resource(self, path: str, session_id: str | None, authorization: str | None,
                 entry: AuditEntry) -> Step:
        """The secret at `path` as a JWE to the attested TEE key, if the resource policy
        releases it for the attested claims (a bearer token's, else the cookie session's)."""
        bearer = None if authorization is None else self.bearer(authorization)
        if bearer is None:
            if session_id is None:
                raise refuse("no-token", "send the kbs-session-id cookie or a bearer token")
            entry.session = session_id

        def step(tx: StoreTransaction) -> Response:
            tee_pubkey, claims = bearer or self.attested(tx, session_id)
            entry.claims = claims
            try:
                text = tx.get_policy(PolicyKind.RESOURCE).text
            except KbsNotFoundError:
                raise refuse("resource-policy", "no resource policy is set (default deny)"
                             ) from None
            try:
                verdict = resource_policy_of(text).decide(path, claims)
            except PolicyError as error:
                raise refuse("store", f"the stored resource policy fails: {error}") from None
            if not verdict.allowed:
                raise refuse("resource-policy", verdict.reason)
            try:
                secret = tx.get_resource(path)
            except KbsNotFoundError:
                raise refuse("resource-not-found", f"no resource {path}") from None
            try:
                jwe = encrypt_to_tee(parse_jwk(tee_pubkey), secret)
            except (KbsCryptoError, KbsProtocolError) as error:  # it parsed at attestation
                raise refuse("internal", f"cannot encrypt to the TEE key: {error}") from None
            return JSONResponse(jwe)
        return step

    def bearer(self, authorization: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The TEE public key (JWK) and claims of a bearer token this KBS signed."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise refuse("token-invalid", "Authorization is not 'Bearer <token>'")
        try:
            claims = self.signer.verify(token.strip(), now=self.now())
        except KbsCryptoError as error:
            raise refuse("token-invalid", str(error)) from None
        return claims["tee-pubkey"], claims["claims"]

    @staticmethod
    def attested(tx: StoreTransaction, session_id: str | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The TEE public key (JWK) and claims of the cookie's attested session."""
        assert session_id is not None  # `resource` refused a request with neither
        try:
            session = tx.attested_session(session_id)
        except KbsNotFoundError:
            raise refuse("unknown-session", "no session has this id") from None
        except KbsSessionError as error:
            raise refuse("session-expired" if error.reason == "session-expired"
                         else "session-not-attested", str(error)) from None
        assert session.tee_pubkey is not None and session.claims is not None  # attested
        return session.tee_pubkey, session.claims

    # -- admin -----------------------------------------------------------------------------

    def admin(self, authorization: str | None) -> None:
        """Refuse unless `authorization` is 'Bearer <admin token>' valid now."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise refuse("admin-auth", "no admin token (Authorization: Bearer <token>)")
        try:
            verify_admin_token(self.config.admin_key, token.strip(), now=self.now())
        except KbsAdminAuthError as error:
            raise refuse("admin-auth", str(error)) from None

    @staticmethod
    def set_attestation_policy(body: bytes) -> Step:
        """Trustee's `{"type", "policy_id", "policy": base64}`, type `toml` (validate's)."""
        doc = json_object(body)
        if doc.get("type", "toml") != "toml":
            raise refuse("policy-invalid", f"policy type {doc.get('type')!r}; this KBS "
                         "takes 'toml' (the `sevsim validate` format)")
        policy_id = doc.get("policy_id", "default")
        if policy_id != "default":
            raise refuse("policy-invalid", f"policy_id {policy_id!r}; every session is checked "
                         "against 'default'")
        text = policy_text(doc)
        try:
            Policy.from_toml(text)
        except PolicyError as error:
            raise refuse("policy-invalid", str(error)) from None
        return no_content(lambda tx: tx.set_policy(PolicyKind.ATTESTATION, text))

    @staticmethod
    def set_resource_policy(body: bytes) -> Step:
        """Trustee's `{"policy": base64}`: sevsim.kbs.policy's TOML format or a Rego module."""
        text = policy_text(json_object(body))
        try:
            parse_resource_policy(text)
        except PolicyError as error:
            raise refuse("policy-invalid", str(error)) from None
        return no_content(lambda tx: tx.set_policy(PolicyKind.RESOURCE, text))


    def check_evidence(self, body: bytes, entry: AuditEntry) -> Step:
        """The admin's "would this evidence pass?": `{"tee": "snp", "evidence": <SNP evidence
        as /attest takes it>, "report-data": <128 hex digits, optional>}` checked as an
        attestation is (the configured roots and VCEK sources, then the attestation policy)
        but bound to no session and releasing nothing: recorded evidence, a real machine's
        report for one, cannot bind a fresh nonce. Answers the claims, or the refusal an
        attestation would get."""
        doc = json_object(body)
        if doc.get("tee") != SUPPORTED_TEE:
            raise refuse("unsupported-tee", f"tee {doc.get('tee')!r}; this KBS takes "
                         f"{SUPPORTED_TEE!r}")
        evidence = parse(snp_evidence_from_json, doc.get("evidence"))
        report_data = doc.get("report-data")
        try:
            expected = None if report_data is None else bytes.fromhex(report_data)
        except (TypeError, ValueError):
            expected = b""
        if expected is not None and len(expected) != REPORT_DATA_SIZE:
            raise refuse("malformed-request", f"report-data: {REPORT_DATA_SIZE * 2} hex "
                         "digits, if given")
        try:
            verified = check_snp_evidence(evidence.report, evidence.certs, expected,
                                          self.config.evidence)
        except KbsEvidenceError as error:
            raise evidence_refusal(error) from None

        def step(tx: StoreTransaction) -> Response:
            try:
                claims = verified.claims(self.attestation_policy(tx))
            except KbsEvidenceError as error:
                raise evidence_refusal(error) from None
            entry.claims = claims
            return JSONResponse({"claims": claims})
        return step


def no_content(change: Callable[[StoreTransaction], object]) -> Step:
    """The step that makes an admin's `change` and answers 204 No Content."""
    def step(tx: StoreTransaction) -> Response:
        change(tx)
        return Response(status_code=204)
    return step


def session_refusal(error: KbsNotFoundError | KbsSessionError) -> KbsRefusal:
    """The refusal of an attestation whose session cannot take its nonce."""
    if isinstance(error, KbsNotFoundError):
        return refuse("unknown-session", "no session has this id")
    reason = {"nonce-mismatch": "nonce-mismatch", "session-expired": "nonce-expired"}.get(
        error.reason, "nonce-replayed")
    return refuse(reason, str(error))


def evidence_refusal(error: KbsEvidenceError) -> KbsRefusal:
    """The refusal of evidence the verifier or the attestation policy turned down."""
    reason = "attestation-policy" if error.reason == "policy" else f"evidence-{error.reason}"
    return refuse(reason, error.detail)


def jsonable(records: list[Any]) -> list[dict[str, Any]]:
    """Store records (dataclasses) as JSON objects, times in ISO 8601."""
    def value(item: Any) -> Any:
        return item.isoformat() if isinstance(item, datetime.datetime) else item
    return [{k: value(v) for k, v in dataclasses.asdict(record).items()} for record in records]


def parse(parser: Callable[[Any], Any], data: Any) -> Any:
    """`parser(data)`, a KbsProtocolError becoming a malformed-request refusal naming the
    field."""
    try:
        return parser(data)
    except KbsProtocolError as error:
        raise refuse("malformed-request", str(error)) from None


def json_object(body: bytes) -> dict[str, Any]:
    """An admin request's JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise refuse("malformed-request", f"not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise refuse("malformed-request", "not a JSON object")
    return doc


def policy_text(doc: dict[str, Any]) -> str:
    """The `policy` member: base64 of UTF-8 text, either exactly standard base64 or exactly
    URL-safe base64 without padding (what Trustee's client sends); each must re-encode to
    itself, so no stray byte or padding form slips through."""
    encoded = doc.get("policy")
    if not isinstance(encoded, str):
        raise refuse("malformed-request", "policy: a base64 string is required")
    try:  # binascii.Error is a ValueError, as is the error for a non-ASCII str
        raw = base64.b64decode(encoded, validate=True)
        standard = base64.b64encode(raw).decode() == encoded
    except ValueError:
        standard = False
    if not standard:
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            if base64.urlsafe_b64encode(raw).decode().rstrip("=") != encoded:
                raise ValueError("not canonical")
        except ValueError:
            raise refuse("malformed-request", "policy: neither standard base64 nor URL-safe "
                         "base64 without padding") from None
    try:
        return raw.decode()
    except UnicodeDecodeError as error:
        raise refuse("malformed-request", f"policy: not base64 of UTF-8 text ({error})"
                     ) from None


async def read_body(request: Request) -> bytes:
    """The body, refused past MAX_BODY without reading the rest."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise refuse("payload-too-large", f"more than {MAX_BODY} bytes")
    return bytes(body)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (port 0: a free one; IPv6 addresses too), for
    `serve`. ConfigError for a port outside 0..65535; OSError when the address cannot be
    listened on (in use, not this machine's, no such host)."""
    if not 0 <= port <= 0xFFFF:
        raise ConfigError(f"port {port} is outside 0..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except UnicodeError as error:  # a name IDNA cannot encode (an empty label: a..b)
        raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` with uvicorn on a listening socket until interrupted (uvicorn.Server.run
    in the calling thread; its `should_exit` stops it)."""
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def create_app(config: KbsConfig) -> FastAPI:
    """The KBS as an ASGI app (run it with uvicorn): opens, and on first use creates and
    migrates, the database at `config.db_url`.

    A request's work (JSON, signatures, the database) runs in the event loop's thread, one
    request at a time per process, as a sync worker of gunicorn's does: the work is CPU-bound
    and Python runs one thread at a time anyway, and handing each request to a thread pool
    cost a third of the server's CPU (benchmarks/kbs.py). Concurrency comes from processes
    (`sevsim kbs serve --workers`); a slow KDS fetch holds only its own worker."""
    broker = Broker(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        broker.store.close()

    app = FastAPI(title="sevsim KBS", description=__doc__, openapi_url=None, docs_url=None,
                  redoc_url=None, lifespan=lifespan)
    app.state.broker = broker

    async def handle(request: Request, action: str,
                     work: Callable[[bytes, AuditEntry], Step], *, body: bool = True,
                     admin: bool = False, resource: str | None = None) -> Response:
        client = request.client.host if request.client else ""
        entry = AuditEntry(action=action, client=client, resource=resource)

        def run(data: bytes) -> Response:
            def checked() -> Step:
                if admin:
                    broker.admin(request.headers.get("authorization"))
                return work(data, entry)
            return broker.decide(entry, checked)

        try:
            data = await read_body(request) if body else b""
        except KbsRefusal as refusal:
            return broker.refused(entry, refusal)
        return run(data)

    @app.post(PREFIX + "/auth")
    async def auth(request: Request) -> Response:
        return await handle(request, "auth", broker.auth)

    @app.post(PREFIX + "/attest")
    async def attest(request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        return await handle(request, "attest",
                            lambda body, entry: broker.attest(session, body, entry))

    @app.get(PREFIX + "/resource/{repository}/{kind}/{tag}")
    async def get_resource(request: Request, repository: str, kind: str, tag: str) -> Response:
        path = f"{repository}/{kind}/{tag}"
        session, authorization = (request.cookies.get(SESSION_COOKIE),
                                  request.headers.get("authorization"))
        return await handle(request, "get-resource",
                            lambda _, entry: broker.resource(path, session, authorization, entry),
                            body=False, resource=path)

    @app.post(PREFIX + "/resource/{repository}/{kind}/{tag}")
    async def set_resource(request: Request, repository: str, kind: str, tag: str) -> Response:
        path = f"{repository}/{kind}/{tag}"
        return await handle(request, "set-resource", lambda body, _: no_content(
            lambda tx: tx.put_resource(path, body)), admin=True, resource=path)

    @app.delete(PREFIX + "/resource/{repository}/{kind}/{tag}")
    async def delete_resource(request: Request, repository: str, kind: str,
                              tag: str) -> Response:
        path = f"{repository}/{kind}/{tag}"

        def step(tx: StoreTransaction) -> Response:
            try:
                tx.delete_resource(path)
            except KbsNotFoundError:
                raise refuse("resource-not-found", f"no resource {path}") from None
            return Response(status_code=204)
        return await handle(request, "delete-resource", lambda _, __: step, body=False,
                            admin=True, resource=path)

    @app.get(PREFIX + "/resources")
    async def list_resources(request: Request) -> Response:
        return await handle(request, "list-resources", lambda _, __: lambda tx: JSONResponse(
            jsonable(tx.list_resources())), body=False, admin=True)

    @app.post(PREFIX + "/attestation-policy")
    async def set_attestation_policy(request: Request) -> Response:
        return await handle(request, "set-attestation-policy",
                            lambda body, _: broker.set_attestation_policy(body), admin=True)

    @app.post(PREFIX + "/resource-policy")
    async def set_resource_policy(request: Request) -> Response:
        return await handle(request, "set-resource-policy",
                            lambda body, _: broker.set_resource_policy(body), admin=True)

    @app.post(PREFIX + "/evidence-check")
    async def check_evidence(request: Request) -> Response:
        return await handle(request, "check-evidence", broker.check_evidence, admin=True)

    @app.get(PREFIX + "/audit")
    async def list_audit(request: Request, after: int = 0, limit: int = 100) -> Response:
        return await handle(request, "list-audit", lambda _, __: lambda tx: JSONResponse(
            jsonable(tx.list_audit(after_id=after, limit=limit))), body=False, admin=True)

    @app.get(ERRORS + "{reason}")
    async def error_type(reason: str) -> Response:
        if reason not in REASONS:
            return problem(refuse("not-found", f"no problem type {reason!r}"))
        status, title = REASONS[reason]
        return JSONResponse({"type": ERRORS + reason, "title": title, "status": status})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        reason = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code,
                                                                   "malformed-request")
        return problem(KbsRefusal(error.status_code, reason, str(error.detail)))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> Response:
        return problem(refuse("internal", type(error).__name__))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return problem(refuse("malformed-request", str(error.errors())))

    return app
