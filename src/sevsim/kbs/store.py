"""The key broker's database: attestation sessions, resources (the secrets it releases,
encrypted at rest), policies and the audit log, in SQLite (the default: one file) or
PostgreSQL, on SQLAlchemy 2 with the schema migrated by Alembic.

Why it is built this way:
- One `Store` holds one SQLAlchemy engine (a connection pool) and nothing per request; every
  method takes its own connection and transaction for the length of the call, so one `Store`
  serves a multi-threaded server, and several server processes may share one database.
- Every write is one transaction committed before the method returns: a server killed at any
  instant keeps every record a call reported written. SQLite runs in WAL mode with
  `synchronous=NORMAL`: a commit is in the write-ahead log before the call returns, so it
  survives the server's process being killed at any instant (SIGKILL, OOM, a crash); only an
  operating-system crash or power cut can lose the last commits before the next checkpoint
  (never corrupting the file). `synchronous=FULL` would add an fsync to every commit and
  halve the attestation rate. Writes take the lock at BEGIN (`BEGIN IMMEDIATE`), so a
  read-then-write never fails half way on a lock.
- A nonce is used once: a session moves challenged -> consumed -> attested with conditional
  UPDATEs, atomic on both backends, so of two concurrent attempts on one nonce exactly one
  wins and the other gets `KbsSessionError("nonce-replayed")`.
- Resources are AES-256-GCM ciphertext under a key derived (HKDF-SHA256) from the operator's
  32-byte `secret_key`, a fresh 96-bit nonce per write and the resource path as associated
  data, so a row copied onto another path does not decrypt. A digest of the key (another HKDF
  output) is stored on first open; a later open with another key fails with
  `KbsSecretKeyError` before any secret is read, never returning garbage.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hmac
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine, RowMapping

from sevsim.errors import (
    KbsNotFoundError,
    KbsSecretKeyError,
    KbsSessionError,
    KbsStoreError,
    KbsStoreInputError,
)
from sevsim.inputs import MAX_KBS_RESOURCE, MAX_POLICY_FILE

MIGRATIONS = Path(__file__).parent / "migrations"
SECRET_KEY_SIZE = 32  # AES-256
MAX_JSON = 1 << 20  # claims or a TEE key, as JSON text
MAX_REASON = 4096
POSTGRES_MIGRATION_LOCK = 0x5E75_1B5  # pg_advisory_xact_lock key: one migrator at a time
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a connection waits for another writer

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"  # no "." or "..", nothing a URL must escape
_RESOURCE_PATH = re.compile(rf"{_SEGMENT}/{_SEGMENT}/{_SEGMENT}")
_POLICY_ID = re.compile(_SEGMENT)
_TEE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_ACTION = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


JsonObject = dict[str, Any]


class SessionState(StrEnum):
    """Where a session is: its nonce handed out (challenged), taken by an attestation attempt
    (consumed: never usable again, whatever the verdict), or attested (resources may go to
    its TEE key until it expires)."""

    CHALLENGED = "challenged"
    CONSUMED = "consumed"
    ATTESTED = "attested"


class PolicyKind(StrEnum):
    """What a policy decides: whether evidence is trusted, or whether a resource is released."""

    ATTESTATION = "attestation"
    RESOURCE = "resource"


class Decision(StrEnum):
    """An audit record's verdict."""

    ALLOWED = "allowed"
    REFUSED = "refused"


class UtcDateTime(sa.TypeDecorator[datetime.datetime]):
    """Timezone-aware UTC datetimes on both backends: PostgreSQL's timestamptz keeps the zone,
    SQLite's text column stores naive UTC and gets the zone back on the way out."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None,
                           dialect: Dialect) -> datetime.datetime | None:
        """To UTC; naive for SQLite."""
        if value is None:
            return None
        value = value.astimezone(datetime.UTC)  # Store._now refused naive ones
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime.datetime | None,
                             dialect: Dialect) -> datetime.datetime | None:
        """Aware, in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
AuditId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid

# The schema as the queries see it; migrations/versions/ create it (a test compares the two).
metadata = sa.MetaData()
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), nullable=False, unique=True),
    sa.Column("tee", sa.String(32), nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("expires", UtcDateTime, nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attested_at", UtcDateTime),
    sa.Column("tee_pubkey", Json),
    sa.Column("claims", Json),
)
resources = sa.Table(
    "resources", metadata,
    sa.Column("path", sa.String(255), primary_key=True),
    sa.Column("nonce", sa.LargeBinary(12), nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("updated", UtcDateTime, nullable=False),
)
policies = sa.Table(
    "policies", metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("updated", UtcDateTime, nullable=False),
)
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", AuditId, primary_key=True, autoincrement=True),
    sa.Column("time", UtcDateTime, nullable=False, index=True),
    sa.Column("session_id", sa.String(64), index=True),
    sa.Column("client", sa.String(255)),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("resource", sa.String(255)),
    sa.Column("decision", sa.String(8), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("claims", Json),
)


def _length(column: sa.Column[Any]) -> int:
    """The characters a String column holds, as declared (PostgreSQL enforces it)."""
    assert isinstance(column.type, sa.String) and column.type.length is not None
    return column.type.length


# The most characters each text member of an audit record may have: the columns' declared
# sizes, so the store refuses a longer value itself (KbsStoreInputError), the same on every
# backend, instead of PostgreSQL failing the insert; callers cut what a client chose to these.
MAX_AUDIT_TEXT: dict[str, int] = {
    **{name: _length(audit.c[name]) for name in ("session_id", "client", "resource")},
    "reason": MAX_REASON}

secret_key_check = sa.Table(
    "secret_key_check", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("digest", sa.LargeBinary(32), nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class SessionRecord:
    """One attestation session (its id is the `kbs-session-id` cookie)."""

    id: str
    nonce: str
    tee: str
    created: datetime.datetime
    expires: datetime.datetime
    state: SessionState
    attested_at: datetime.datetime | None
    tee_pubkey: JsonObject | None
    claims: JsonObject | None


@dataclass(frozen=True)
class ResourceInfo:
    """A stored resource without its secret (what listing shows)."""

    path: str
    created: datetime.datetime
    updated: datetime.datetime


@dataclass(frozen=True)
class PolicyRecord:
    """A stored policy's text (its format is the verifier's business, not the store's)."""

    kind: PolicyKind
    id: str
    text: str
    updated: datetime.datetime


@dataclass(frozen=True)
class AuditRecord:
    """One decision the broker took; ids grow with time."""

    id: int
    time: datetime.datetime
    session_id: str | None
    client: str | None
    action: str
    resource: str | None
    decision: Decision
    reason: str | None
    claims: JsonObject | None


def utc_now() -> datetime.datetime:
    """The store's default clock."""
    return datetime.datetime.now(datetime.UTC)


def database_url(url: str) -> sa.URL:
    """A URL the store accepts, parsed: `sqlite:///path` (a file; created on first open) or
    `postgresql+psycopg://user:password@host/db` (plain `postgresql://` means the same: the
    store speaks to PostgreSQL through psycopg 3 only)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as error:
        raise KbsStoreInputError("invalid", f"not a database URL: {error}") from None
    if parsed.drivername in ("postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
            raise KbsStoreInputError(
                "invalid", "SQLite needs a file (sqlite:///path): a memory database is lost "
                           "with its connection")
        return parsed.set(drivername="sqlite+pysqlite")
    raise KbsStoreInputError(
        "invalid", f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or "
                   "postgresql+psycopg://USER:PASSWORD@HOST/DB")


def make_engine(url: str) -> Engine:
    """The one engine of a store. SQLite: WAL, synchronous=NORMAL, a 30 s busy timeout, and
    SQLite's own transactions (pysqlite's are switched off) so that writes take the lock at
    BEGIN. PostgreSQL: a pool that checks a connection before use (a restarted server)."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT,
                                                    "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        _enter_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("kbs_write", True)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _enter_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, waiting as long as the busy timeout: a new database's switch
    to WAL needs it alone, and SQLite answers "locked" at once, without its busy handler,
    while another connection (a server starting beside this one) holds it."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _derive(secret_key: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, b"sevsim kbs store: " + label).derive(secret_key)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise KbsStoreInputError("invalid", f"bad {what} {value!r}: must match {pattern.pattern}")
    return value


def _json(value: Mapping[str, Any] | None, what: str) -> JsonObject | None:
    """A JSON object as the database will store it (a copy); bad or huge ones refused here, so
    both backends refuse the same things with the same typed error."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise KbsStoreInputError("invalid", f"{what} is not JSON: {error}") from None
    if not isinstance(value, Mapping) or len(text) > MAX_JSON:
        raise KbsStoreInputError("invalid", f"{what} must be a JSON object of at most "
                                            f"{MAX_JSON} bytes")
    copy: JsonObject = json.loads(text)
    return copy


def _session(row: RowMapping) -> SessionRecord:
    return SessionRecord(row["id"], row["nonce"], row["tee"], row["created"], row["expires"],
                         SessionState(row["state"]), row["attested_at"], row["tee_pubkey"],
                         row["claims"])


def _policy(row: RowMapping) -> PolicyRecord:
    return PolicyRecord(PolicyKind(row["kind"]), row["id"], row["text"], row["updated"])


def _audit(row: RowMapping) -> AuditRecord:
    return AuditRecord(row["id"], row["time"], row["session_id"], row["client"], row["action"],
                       row["resource"], Decision(row["decision"]), row["reason"], row["claims"])


# The statements a broker runs on every request, built once: SQLAlchemy then finds each one's
# compiled form by a cache key it keeps on the statement, instead of building a new
# statement and its key per call. Values are bound by name at execution.
_INSERT_SESSION = sessions.insert()
_GET_SESSION = sessions.select().where(sessions.c.id == sa.bindparam("b_id"))
_GET_POLICY = policies.select().where(policies.c.kind == sa.bindparam("b_kind"),
                                      policies.c.id == sa.bindparam("b_id"))
_GET_RESOURCE = sa.select(resources.c.nonce, resources.c.ciphertext).where(
    resources.c.path == sa.bindparam("b_path"))
_INSERT_AUDIT = audit.insert().returning(*audit.c)


@functools.cache
def _advance_statement(members: frozenset[str], with_nonce: bool) -> sa.Update:
    """UPDATE sessions SET `members` WHERE the id, state and nonce (`with_nonce`) are the
    bound ones and it has not expired, RETURNING the row."""
    conditions = [sessions.c.id == sa.bindparam("b_id"),
                  sessions.c.state == sa.bindparam("b_state"),
                  sessions.c.expires > sa.bindparam("b_now")]
    if with_nonce:
        conditions.append(sessions.c.nonce == sa.bindparam("b_nonce"))
    return sessions.update().where(*conditions).values(
        {name: sa.bindparam(f"v_{name}") for name in sorted(members)}).returning(*sessions.c)


class StoreOperations:
    """What the store does with sessions, resources, policies and the audit log, written once
    for `Store` (every call a transaction of its own) and `StoreTransaction` (every call in
    the one transaction it was opened with)."""

    _aead: AESGCM
    _clock: Callable[[], datetime.datetime]

    def _transaction(self, write: bool = True) -> AbstractContextManager[Connection]:
        """The connection, in a transaction, an operation runs on."""
        raise NotImplementedError

    def _now(self) -> datetime.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise KbsStoreInputError("invalid", f"the clock gave {now} without a time zone")
        return now

    # -- sessions ----------------------------------------------------------------------------

    def new_session(self, tee: str, lifetime_s: float) -> SessionRecord:
        """A new challenged session with a fresh random nonce (32 bytes, base64, as Trustee
        makes them) and id (a UUID, as Trustee's cookie), expiring after `lifetime_s`."""
        _check(_TEE, tee, "TEE")
        if not isinstance(lifetime_s, int | float) or not 0 < lifetime_s < math.inf:
            raise KbsStoreInputError("invalid", f"bad session lifetime {lifetime_s!r}")
        now = self._now()
        record = SessionRecord(str(uuid.uuid4()), base64.b64encode(os.urandom(32)).decode(),
                               tee, now, now + datetime.timedelta(seconds=lifetime_s),
                               SessionState.CHALLENGED, None, None, None)
        with self._transaction() as connection:
            connection.execute(_INSERT_SESSION, {
                "id": record.id, "nonce": record.nonce, "tee": tee, "created": record.created,
                "expires": record.expires, "state": record.state.value})
        return record

    def get_session(self, session_id: str) -> SessionRecord:
        """A session in whatever state (KbsNotFoundError if there is none)."""
        with self._transaction(write=False) as connection:
            row = connection.execute(_GET_SESSION, {"b_id": session_id}
                                     ).mappings().one_or_none()
        if row is None:
            raise KbsNotFoundError("session", f"no session {session_id!r}")
        return _session(row)

    def _advance(self, session_id: str, want: SessionState, values: dict[str, Any],
                 nonce: str | None = None) -> SessionRecord:
        """Moves a session out of state `want` if it is in it, unexpired and (given `nonce`)
        holds that nonce, atomically (one conditional UPDATE); otherwise says why not and
        changes nothing."""
        if not isinstance(session_id, str) or len(session_id) > _length(sessions.c.id):
            raise KbsNotFoundError("session", f"no session {session_id!r}")
        now = self._now()
        statement = _advance_statement(frozenset(values), nonce is not None)
        bound = {"b_id": session_id, "b_state": want.value, "b_now": now, "b_nonce": nonce,
                 **{f"v_{name}": value for name, value in values.items()}}
        with self._transaction() as connection:
            row = connection.execute(statement, bound).mappings().one_or_none()
        if row is not None:
            return _session(row)
        current = self.get_session(session_id)
        if nonce is not None and not hmac.compare_digest(current.nonce, nonce):
            raise KbsSessionError("nonce-mismatch", f"session {session_id} was given another "
                                                    "nonce")
        if current.expires <= now:
            raise KbsSessionError("session-expired", f"session {session_id} expired at "
                                                     f"{current.expires.isoformat()}")
        if want is SessionState.CHALLENGED:
            raise KbsSessionError("nonce-replayed", f"the nonce of session {session_id} "
                                                    "was already used")
        raise KbsSessionError("session-state", f"session {session_id} is {current.state}, "
                                               f"not {want}")

    def consume_nonce(self, session_id: str, nonce: str | None = None) -> SessionRecord:
        """Takes a challenged session's nonce for one attestation attempt (the nonce is never
        usable again, whatever the verdict): the session as it now is. Given `nonce` (what the
        attempt carries), only if it is the session's: another one changes nothing. Errors:
        KbsNotFoundError, KbsSessionError `nonce-mismatch`, `nonce-replayed` or
        `session-expired`."""
        return self._advance(session_id, SessionState.CHALLENGED,
                             {"state": SessionState.CONSUMED.value}, nonce)

    def attest_session(self, session_id: str, tee_pubkey: Mapping[str, Any],
                       claims: Mapping[str, Any],
                       lifetime_s: float | None = None) -> SessionRecord:
        """Records a consumed session's successful attestation: the TEE's public key (a JWK)
        resources will be encrypted to, the claims the verifier made, and, given
        `lifetime_s`, a new expiry that far from now (the token's lifetime)."""
        values: dict[str, Any] = {
            "state": SessionState.ATTESTED.value, "attested_at": self._now(),
            "tee_pubkey": _json(tee_pubkey, "TEE public key"),
            "claims": _json(claims, "claims")}
        if lifetime_s is not None:
            if not isinstance(lifetime_s, int | float) or not 0 < lifetime_s < math.inf:
                raise KbsStoreInputError("invalid", f"bad session lifetime {lifetime_s!r}")
            values["expires"] = values["attested_at"] + datetime.timedelta(seconds=lifetime_s)
        return self._advance(session_id, SessionState.CONSUMED, values)

    def attested_session(self, session_id: str) -> SessionRecord:
        """An attested, unexpired session (what a resource request with the cookie needs):
        KbsNotFoundError, or KbsSessionError `session-expired` or `session-state`."""
        record = self.get_session(session_id)
        if record.expires <= self._now():
            raise KbsSessionError("session-expired", f"session {session_id} expired at "
                                                     f"{record.expires.isoformat()}")
        if record.state is not SessionState.ATTESTED:
            raise KbsSessionError("session-state", f"session {session_id} is {record.state}, "
                                                   "not attested")
        return record

    def delete_expired_sessions(self) -> int:
        """Removes sessions past their expiry (housekeeping); how many went."""
        with self._transaction() as connection:
            return connection.execute(sessions.delete().where(
                sessions.c.expires <= self._now())).rowcount

    # -- resources ---------------------------------------------------------------------------

    def put_resource(self, path: str, secret: bytes) -> None:
        """Stores (or replaces) the secret at `repository/type/tag`, encrypted."""
        _check(_RESOURCE_PATH, path, "resource path")
        if not isinstance(secret, bytes) or len(secret) > MAX_KBS_RESOURCE:
            raise KbsStoreInputError("invalid", f"a resource is bytes, at most "
                                                f"{MAX_KBS_RESOURCE}")
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, secret, path.encode())
        now = self._now()
        with self._transaction() as connection:
            insert = upsert(connection, resources)
            connection.execute(insert.values(
                path=path, nonce=nonce, ciphertext=ciphertext, created=now, updated=now,
            ).on_conflict_do_update(index_elements=[resources.c.path], set_={
                "nonce": nonce, "ciphertext": ciphertext, "updated": now}))

    def get_resource(self, path: str) -> bytes:
        """The secret at `path`: KbsNotFoundError if none, KbsStoreError("integrity") if its
        row was altered or moved to another path."""
        _check(_RESOURCE_PATH, path, "resource path")
        with self._transaction(write=False) as connection:
            row = connection.execute(_GET_RESOURCE, {"b_path": path}).mappings().one_or_none()
        if row is None:
            raise KbsNotFoundError("resource", f"no resource {path}")
        try:
            return self._aead.decrypt(row["nonce"], row["ciphertext"], path.encode())
        except InvalidTag:
            raise KbsStoreError("integrity", f"resource {path} does not decrypt: its row was "
                                             "altered or moved") from None

    def delete_resource(self, path: str) -> None:
        """Removes the resource at `path` (KbsNotFoundError if there is none)."""
        _check(_RESOURCE_PATH, path, "resource path")
        with self._transaction() as connection:
            gone = connection.execute(resources.delete().where(resources.c.path == path))
            if gone.rowcount != 1:
                raise KbsNotFoundError("resource", f"no resource {path}")

    def list_resources(self) -> list[ResourceInfo]:
        """Every stored resource's path and times, by path; never a secret."""
        with self._transaction(write=False) as connection:
            rows = connection.execute(sa.select(
                resources.c.path, resources.c.created, resources.c.updated,
            ).order_by(resources.c.path)).mappings().all()
        return [ResourceInfo(row["path"], row["created"], row["updated"]) for row in rows]

    # -- policies ----------------------------------------------------------------------------

    def set_policy(self, kind: PolicyKind | str, text: str, policy_id: str = "default") -> None:
        """Stores (or replaces) a policy's text as given; checking it is the caller's job."""
        kind = _kind(kind)
        _check(_POLICY_ID, policy_id, "policy id")
        if not isinstance(text, str) or len(text.encode()) > MAX_POLICY_FILE:
            raise KbsStoreInputError("invalid", f"a policy is text of at most "
                                                f"{MAX_POLICY_FILE} bytes")
        now = self._now()
        with self._transaction() as connection:
            insert = upsert(connection, policies)
            connection.execute(insert.values(
                kind=kind.value, id=policy_id, text=text, updated=now,
            ).on_conflict_do_update(index_elements=[policies.c.kind, policies.c.id],
                                    set_={"text": text, "updated": now}))

    def get_policy(self, kind: PolicyKind | str, policy_id: str = "default") -> PolicyRecord:
        """A stored policy (KbsNotFoundError if there is none)."""
        kind = _kind(kind)
        _check(_POLICY_ID, policy_id, "policy id")
        with self._transaction(write=False) as connection:
            row = connection.execute(_GET_POLICY, {"b_kind": kind.value, "b_id": policy_id}
                                     ).mappings().one_or_none()
        if row is None:
            raise KbsNotFoundError("policy", f"no {kind} policy {policy_id!r}")
        return _policy(row)

    def list_policies(self, kind: PolicyKind | str | None = None) -> list[PolicyRecord]:
        """Every stored policy (of one kind if given), by kind and id."""
        query = policies.select().order_by(policies.c.kind, policies.c.id)
        if kind is not None:
            query = query.where(policies.c.kind == _kind(kind).value)
        with self._transaction(write=False) as connection:
            rows = connection.execute(query).mappings().all()
        return [_policy(row) for row in rows]

    # -- audit -------------------------------------------------------------------------------

    def append_audit(self, action: str, decision: Decision | str, *,
                     session_id: str | None = None, client: str | None = None,
                     resource: str | None = None, reason: str | None = None,
                     claims: Mapping[str, Any] | None = None) -> AuditRecord:
        """Records one decision (committed when this returns): `action` a short name such as
        `auth`, `attest`, `resource` or `admin.set-policy`; the record with its id."""
        _check(_ACTION, action, "audit action")
        try:
            verdict = Decision(decision)
        except ValueError:
            raise KbsStoreInputError("invalid", f"bad decision {decision!r}: allowed or "
                                                "refused") from None
        texts = {"session_id": session_id, "client": client, "resource": resource,
                 "reason": reason}
        for name, value in texts.items():
            limit = MAX_AUDIT_TEXT[name]
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise KbsStoreInputError("invalid", f"bad audit {name}: text of at most "
                                                    f"{limit} characters")
        values = {"time": self._now(), **texts, "action": action,
                  "decision": verdict.value, "claims": _json(claims, "claims")}
        with self._transaction() as connection:
            row = connection.execute(_INSERT_AUDIT, values).mappings().one()
        return _audit(row)

    def list_audit(self, *, after_id: int = 0, limit: int = 100,
                   session_id: str | None = None) -> list[AuditRecord]:
        """Audit records with ids above `after_id`, oldest first, at most `limit` (1 to
        10,000): page through the log by passing the last id seen."""
        if not isinstance(limit, int) or not 1 <= limit <= 10_000 or not isinstance(
                after_id, int):
            raise KbsStoreInputError("invalid", "limit is 1 to 10000, after_id an integer")
        query = audit.select().where(audit.c.id > after_id).order_by(audit.c.id).limit(limit)
        if session_id is not None:
            query = query.where(audit.c.session_id == session_id)
        with self._transaction(write=False) as connection:
            rows = connection.execute(query).mappings().all()
        return [_audit(row) for row in rows]



class Store(StoreOperations):
    """The key broker's storage over one database URL (see `database_url`), with the
    operator's 32-byte at-rest `secret_key`. Make one with `Store.open`, which migrates the
    schema and checks the key; share it between threads; `close` it at the end. Each
    operation called on it is a transaction of its own; `transaction()` runs several in one."""

    def __init__(self, url: str, secret_key: bytes,
                 clock: Callable[[], datetime.datetime] = utc_now) -> None:
        if not isinstance(secret_key, bytes) or len(secret_key) != SECRET_KEY_SIZE:
            raise KbsSecretKeyError("secret-key", f"the at-rest key must be {SECRET_KEY_SIZE} "
                                                  "bytes (AES-256)")
        self._aead = AESGCM(_derive(secret_key, b"resources v1"))
        self._key_digest = _derive(secret_key, b"key check v1")
        self._clock = clock
        self.engine = make_engine(url)
        # SQLite has one writer at a time: this process's writers queue here, handed the lock
        # at once, instead of in SQLite's busy handler, which polls with sleeps of up to
        # 100 ms (other processes still wait there, up to busy_timeout)
        self._writers: AbstractContextManager[object] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext())

    @classmethod
    def open(cls, url: str, secret_key: bytes,
             clock: Callable[[], datetime.datetime] = utc_now) -> Store:
        """A ready store: the database created if it is a new SQLite file, the schema brought
        to the newest revision (`alembic upgrade head`), the at-rest key recorded on first
        open and checked on every later one (`KbsSecretKeyError` if it differs)."""
        store = cls(url, secret_key, clock)
        try:
            store.upgrade()
            store.check_secret_key()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Closes every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """Several operations in one write transaction, committed together when the block
        ends, or not at all if it raises (a KbsSessionError included): what one request of
        the broker does is one commit, and all of it or none of it is in the database."""
        with self._transaction() as connection:
            yield StoreTransaction(self, connection)

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Connection]:
        """One connection and one transaction, committed on leaving (rolled back on an
        error); a database failure becomes KbsStoreError("database")."""
        try:
            with self._writers if write else nullcontext(), self.engine.connect() as connection:
                connection.execution_options(kbs_write=write)
                with connection.begin():
                    yield connection
        except sa.exc.DBAPIError as error:
            raise KbsStoreError("database", str(error.orig).strip() or str(error)) from None

    # -- schema and key --------------------------------------------------------------------

    def upgrade(self) -> None:
        """`alembic upgrade head` in one transaction; concurrent openers wait for each other
        (SQLite's write lock, a PostgreSQL advisory lock) and the later ones find it done."""
        with self._transaction() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(
                    POSTGRES_MIGRATION_LOCK)))
            command.upgrade(migration_config(connection), "head")

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        with self._transaction(write=False) as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def check_secret_key(self) -> None:
        """Records the key's digest on a database's first open; KbsSecretKeyError when a
        later open brings another key."""
        with self._transaction() as connection:
            # first opens racing on PostgreSQL (no write lock at BEGIN there): one inserts,
            # the others wait for its commit and then find its digest
            connection.execute(upsert(connection, secret_key_check).values(
                id=1, digest=self._key_digest, created=self._now(),
            ).on_conflict_do_nothing(index_elements=[secret_key_check.c.id]))
            stored = connection.execute(sa.select(secret_key_check.c.digest)).scalar_one()
        if not hmac.compare_digest(stored, self._key_digest):
            raise KbsSecretKeyError("secret-key", "this is not the at-rest key the database "
                                                  "was created with")

class StoreTransaction(StoreOperations):
    """The store's operations inside one open write transaction (`Store.transaction`)."""

    def __init__(self, store: Store, connection: Connection) -> None:
        self._aead, self._clock = store._aead, store._clock
        self._connection = connection

    def _transaction(self, write: bool = True) -> AbstractContextManager[Connection]:
        return nullcontext(self._connection)


def upsert(connection: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT into `table` in the connection's dialect, which has ON CONFLICT."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _kind(kind: PolicyKind | str) -> PolicyKind:
    try:
        return PolicyKind(kind)
    except ValueError:
        raise KbsStoreInputError("invalid", f"bad policy kind {kind!r}: attestation or "
                                            "resource") from None


def migration_config(connection: Connection) -> Config:
    """Alembic's configuration for the store's migrations (there is no alembic.ini), running
    on `connection` in its transaction: for `Store.upgrade`, and for an operator or a test
    that drives alembic's commands (downgrade, history) directly."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config
