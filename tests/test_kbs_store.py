"""The key broker's storage on a real SQLite file and a real PostgreSQL server: every test runs
on both. PostgreSQL comes from SEVSIM_TEST_POSTGRES_URL, which .ci/run sets after starting a
server of Debian's package (tools/postgres_test_server.sh); each test gets a schema of its own.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import postgres_test_url
from sevsim.errors import (
    KbsNotFoundError,
    KbsSecretKeyError,
    KbsSessionError,
    KbsStoreError,
    KbsStoreInputError,
    SevsimError,
)
from sevsim.inputs import MAX_KBS_RESOURCE
from sevsim.kbs.store import (
    MAX_AUDIT_TEXT,
    Decision,
    PolicyKind,
    SessionState,
    Store,
    database_url,
    metadata,
    migration_config,
)
from sevsim.testing import postgres_schema

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class Clock:
    """A clock the test moves: sessions expire without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL no other test uses: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kbs.db'}"
        return
    with postgres_schema(postgres_test_url(), "t") as url:
        yield url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[Store]:
    with Store.open(url, KEY, clock) as opened:
        yield opened


def backend(url: str) -> str:
    return database_url(url).get_backend_name()


def stored_bytes(url: str) -> bytes:
    """Everything the database holds as its host sees it: the SQLite file with its WAL, or
    pg_dump of the test's schema (data and schema, as an operator would back it up)."""
    if backend(url) == "sqlite":
        path = Path(database_url(url).database or "")
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    parsed = database_url(url)
    schema = parsed.query["options"].removeprefix("-csearch_path=")
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump: Debian's postgresql-client (installed with postgresql)"
    plain = parsed.set(drivername="postgresql", query={})
    return subprocess.run(
        [pg_dump, "--schema", str(schema), plain.render_as_string(hide_password=False)],
        check=True, capture_output=True, timeout=60).stdout


def renderings(secret: bytes) -> list[bytes]:
    """The secret and every 16-byte piece of it, raw, in hex (bytea's text form) and base64."""
    pieces = [secret] + [secret[i:i + 16] for i in range(len(secret) - 15)]
    return [form for piece in pieces for form in (
        piece, piece.hex().encode(), base64.b64encode(piece))]


# -- opening, schema, URLs ----------------------------------------------------------------------

def test_open_creates_the_schema_and_is_idempotent(url: str, clock: Clock) -> None:
    if backend(url) == "sqlite":
        assert not Path(database_url(url).database or "").exists()
    with Store.open(url, KEY, clock) as store:
        assert store.schema_revision() == "0001"
        store.put_resource("default/key/a", b"kept")
    with Store.open(url, KEY, clock) as store:  # a second open migrates nothing, loses nothing
        assert store.schema_revision() == "0001"
        assert store.get_resource("default/key/a") == b"kept"
    if backend(url) == "sqlite":
        connection = sqlite3.connect(database_url(url).database or "")
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        connection.close()


def test_the_migrations_make_the_schema_the_queries_use(store: Store) -> None:
    """Alembic's autogenerate finds nothing to change between the migrated database and
    store.py's tables: the migration and the query side cannot drift apart."""
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []
    assert set(sa.inspect(store.engine).get_table_names()) == {
        "alembic_version", "sessions", "resources", "policies", "audit", "secret_key_check"}


def test_downgrade_drops_and_upgrade_restores(store: Store, url: str, clock: Clock) -> None:
    with store.engine.begin() as connection:
        command.downgrade(migration_config(connection), "base")
    assert set(sa.inspect(store.engine).get_table_names()) == {"alembic_version"}
    assert store.schema_revision() is None
    store.close()
    with Store.open(url, KEY, clock) as again:
        assert again.schema_revision() == "0001" and again.list_resources() == []


def test_concurrent_first_opens_migrate_once(url: str) -> None:
    """Four servers starting at once on a new database: one migrates, the others wait and
    find the schema there (SQLite's write lock, PostgreSQL's advisory lock)."""
    barrier, errors, stores = threading.Barrier(4), [], []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(Store.open(url, KEY))
        except SevsimError as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(stores) == 4
    assert {store.schema_revision() for store in stores} == {"0001"}
    for store in stores:
        store.close()


def test_a_first_open_waits_while_another_connection_holds_a_new_sqlite_file(
        tmp_path: Path) -> None:
    """A new SQLite file is in rollback-journal mode until the first opener switches it to
    WAL, which needs the file alone: an opener that meets another connection's write waits
    for it (SQLite answers that pragma "locked" at once, not after its busy timeout)."""
    path = tmp_path / "kbs.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE early (x)")
    opened: list[object] = []
    opener = threading.Thread(target=lambda: opened.append(_open_or_error(f"sqlite:///{path}")))
    opener.start()
    opener.join(0.3)
    assert opener.is_alive() and opened == []  # waiting for the write, not refused
    holder.execute("COMMIT")
    holder.close()
    opener.join()
    assert len(opened) == 1 and isinstance(opened[0], Store), opened
    assert opened[0].schema_revision() == "0001"
    opened[0].close()


def _open_or_error(url: str) -> Store | SevsimError:
    try:
        return Store.open(url, KEY)
    except SevsimError as error:
        return error


def test_racing_first_key_checks_record_one_key(url: str) -> None:
    """Eight openers that find the schema but no key record yet, all at once: one records
    its key, the others find it (PostgreSQL takes no write lock at BEGIN, so a check-then-
    insert would fail them on the duplicate row); a different key is still refused."""
    with Store(url, KEY) as store:
        store.upgrade()
    barrier, errors = threading.Barrier(8), []

    def check(key: bytes) -> None:
        store = Store(url, key)
        barrier.wait()
        try:
            store.check_secret_key()
        except SevsimError as error:
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=check, args=(KEY,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with pytest.raises(KbsSecretKeyError):
        Store.open(url, bytes(32))


@pytest.mark.parametrize(("given", "backend_name"), [
    ("sqlite:////tmp/kbs.db", "sqlite"), ("sqlite+pysqlite:///kbs.db", "sqlite"),
    ("postgresql://u:p@127.0.0.1/kbs", "postgresql"),
    ("postgresql+psycopg://u:p@127.0.0.1/kbs", "postgresql")])
def test_database_url_forms(given: str, backend_name: str) -> None:
    parsed = database_url(given)
    assert parsed.get_backend_name() == backend_name
    assert parsed.drivername in ("sqlite+pysqlite", "postgresql+psycopg")


@pytest.mark.parametrize("bad", ["", "not a url", "sqlite://", "sqlite:///:memory:",
                                 "mysql://u:p@127.0.0.1/kbs", "postgresql+psycopg2://u@h/d"])
def test_unsupported_urls_are_refused(bad: str) -> None:
    with pytest.raises(KbsStoreInputError) as info:
        Store.open(bad, KEY)
    assert info.value.reason == "invalid"


def test_unreachable_databases_are_a_database_error(tmp_path: Path) -> None:
    with pytest.raises(KbsStoreError) as info:
        Store.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", KEY)
    assert info.value.reason == "database"
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(KbsStoreError) as info:
            Store.open(f"postgresql+psycopg://u:p@127.0.0.1:{port}/kbs", KEY)
    assert info.value.reason == "database"


# -- the at-rest key ----------------------------------------------------------------------------

def test_a_wrong_secret_key_is_refused_on_open(url: str) -> None:
    with Store.open(url, KEY) as store:
        store.put_resource("default/key/a", b"first key's secret")
    with pytest.raises(KbsSecretKeyError) as info:
        Store.open(url, OTHER_KEY)
    assert info.value.reason == "secret-key"
    with Store.open(url, KEY) as store:  # the refusal changed nothing
        assert store.get_resource("default/key/a") == b"first key's secret"


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33), "k" * 32])
def test_a_key_that_is_not_aes256_is_refused(key: Any, tmp_path: Path) -> None:
    with pytest.raises(KbsSecretKeyError):
        Store(f"sqlite:///{tmp_path / 'kbs.db'}", key)
    assert not (tmp_path / "kbs.db").exists()


def test_secrets_are_never_stored_in_plaintext(store: Store, url: str) -> None:
    secret = os.urandom(64)
    store.put_resource("default/key/planted", secret)
    store.put_resource("default/key/planted", secret[::-1])  # the replaced value too
    store.put_resource("default/key/other", secret)
    assert store.get_resource("default/key/other") == secret
    store.close()
    dump = stored_bytes(url)
    assert b"default/key/planted" in dump  # the scan sees the stored rows
    for form in renderings(secret) + renderings(secret[::-1]) + renderings(KEY):
        assert form not in dump


def test_a_row_moved_or_altered_does_not_decrypt(store: Store) -> None:
    store.put_resource("default/key/a", b"secret a")
    store.put_resource("default/key/b", b"secret b")
    resources = metadata.tables["resources"]
    with store.engine.begin() as connection:
        row = connection.execute(sa.select(resources.c.nonce, resources.c.ciphertext).where(
            resources.c.path == "default/key/a")).one()
        connection.execute(resources.update().where(resources.c.path == "default/key/b")
                           .values(nonce=row.nonce, ciphertext=row.ciphertext))
    with pytest.raises(KbsStoreError) as info:
        store.get_resource("default/key/b")
    assert info.value.reason == "integrity"
    with store.engine.begin() as connection:
        connection.execute(resources.update().where(resources.c.path == "default/key/a")
                           .values(ciphertext=bytes([row.ciphertext[0] ^ 1])
                                   + row.ciphertext[1:]))
    with pytest.raises(KbsStoreError) as info:
        store.get_resource("default/key/a")
    assert info.value.reason == "integrity"


# -- resources, policies, audit -----------------------------------------------------------------

def test_resources(store: Store, clock: Clock) -> None:
    assert store.list_resources() == []
    store.put_resource("default/key/a", b"one")
    created = clock()
    clock.advance(5)
    store.put_resource("default/key/a", b"two")
    store.put_resource("repo/cert/b-1.pem", b"")
    assert store.get_resource("default/key/a") == b"two"
    assert store.get_resource("repo/cert/b-1.pem") == b""
    listed = store.list_resources()
    assert [(r.path, r.created, r.updated) for r in listed] == [
        ("default/key/a", created, clock()), ("repo/cert/b-1.pem", clock(), clock())]
    store.delete_resource("default/key/a")
    with pytest.raises(KbsNotFoundError) as info:
        store.get_resource("default/key/a")
    assert info.value.what == "resource" and info.value.reason == "not-found"
    with pytest.raises(KbsNotFoundError):
        store.delete_resource("default/key/a")
    assert [r.path for r in store.list_resources()] == ["repo/cert/b-1.pem"]
    store.put_resource("default/key/big", bytes(MAX_KBS_RESOURCE))
    assert len(store.get_resource("default/key/big")) == MAX_KBS_RESOURCE


def test_policies(store: Store, clock: Clock) -> None:
    with pytest.raises(KbsNotFoundError) as info:
        store.get_policy(PolicyKind.ATTESTATION)
    assert info.value.what == "policy"
    store.set_policy("attestation", "[guest]\ndebug = false\n")
    store.set_policy(PolicyKind.RESOURCE, "allow = []", "strict")
    clock.advance(1)
    store.set_policy("attestation", "[guest]\ndebug = true\n")
    got = store.get_policy("attestation")
    assert (got.kind, got.id, got.text, got.updated) == (
        PolicyKind.ATTESTATION, "default", "[guest]\ndebug = true\n", clock())
    assert [(p.kind, p.id) for p in store.list_policies()] == [
        (PolicyKind.ATTESTATION, "default"), (PolicyKind.RESOURCE, "strict")]
    assert [p.id for p in store.list_policies("resource")] == ["strict"]
    with pytest.raises(KbsNotFoundError):
        store.get_policy("resource")  # "default" of the other kind


def test_audit_log(store: Store, clock: Clock) -> None:
    claims = {"measurement": "ab" * 48, "policy": {"debug": False}, "vmpl": 0}
    first = store.append_audit("auth", "allowed", session_id="s1", client="127.0.0.1:5000")
    clock.advance(1)
    second = store.append_audit("attest", Decision.REFUSED, session_id="s1",
                                reason="report-data", claims=claims)
    third = store.append_audit("resource", "allowed", session_id="s2",
                               resource="default/key/a")
    assert first.id < second.id < third.id
    assert store.list_audit() == [first, second, third]
    assert second.claims == claims and second.decision is Decision.REFUSED
    assert second.time == clock() and first.client == "127.0.0.1:5000"
    assert store.list_audit(after_id=first.id, limit=1) == [second]
    assert store.list_audit(session_id="s1") == [first, second]
    assert store.list_audit(after_id=third.id) == []


def test_audit_text_limits_are_the_columns(store: Store) -> None:
    """Values exactly as long as MAX_AUDIT_TEXT allows are stored whole on both backends (the
    limits are not above the columns: PostgreSQL enforces VARCHAR sizes, SQLite does not)."""
    longest = {name: name[0] * limit for name, limit in MAX_AUDIT_TEXT.items()}
    record = store.append_audit("auth", "refused", **longest)
    assert (record.session_id, record.client, record.resource, record.reason) == (
        longest["session_id"], longest["client"], longest["resource"], longest["reason"])
    assert store.list_audit() == [record]


BAD_CALLS: list[tuple[str, Callable[[Store], object]]] = [
    ("path with two parts", lambda s: s.put_resource("default/key", b"x")),
    ("path with ..", lambda s: s.put_resource("default/../a", b"x")),
    ("path with a slash too many", lambda s: s.put_resource("a/b/c/d", b"x")),
    ("path with a space", lambda s: s.put_resource("a/b/c d", b"x")),
    ("path too long", lambda s: s.put_resource("a/b/" + "c" * 65, b"x")),
    ("secret not bytes", lambda s: s.put_resource("a/b/c", "text")),
    ("secret too big", lambda s: s.put_resource("a/b/c", bytes(MAX_KBS_RESOURCE + 1))),
    ("bad get path", lambda s: s.get_resource("a/b")),
    ("bad delete path", lambda s: s.delete_resource("/b/c")),
    ("policy kind", lambda s: s.set_policy("admin", "x")),
    ("policy id", lambda s: s.set_policy("resource", "x", "a/b")),
    ("policy text", lambda s: s.set_policy("resource", b"x")),
    ("policy too big", lambda s: s.set_policy("resource", "x" * (1 << 20 | 1))),
    ("audit action", lambda s: s.append_audit("Bad Action", "allowed")),
    ("audit decision", lambda s: s.append_audit("auth", "maybe")),
    ("audit reason", lambda s: s.append_audit("auth", "refused", reason="r" * 5000)),
    ("audit client", lambda s: s.append_audit("auth", "refused", client=1234)),
    # one character over the column's declared size (PostgreSQL would fail the insert)
    ("audit session id", lambda s: s.append_audit(
        "auth", "refused", session_id="s" * (MAX_AUDIT_TEXT["session_id"] + 1))),
    ("audit client too long", lambda s: s.append_audit(
        "auth", "refused", client="c" * (MAX_AUDIT_TEXT["client"] + 1))),
    ("audit resource too long", lambda s: s.append_audit(
        "auth", "refused", resource="r" * (MAX_AUDIT_TEXT["resource"] + 1))),
    ("audit claims not JSON", lambda s: s.append_audit("auth", "refused", claims={"a": {1j}})),
    ("audit claims NaN", lambda s: s.append_audit("auth", "refused", claims={"a": float("nan")})),
    ("audit claims a list", lambda s: s.append_audit("auth", "refused", claims=[1, 2])),
    ("audit page", lambda s: s.list_audit(limit=0)),
    ("session tee", lambda s: s.new_session("SNP!", 60)),
    ("session lifetime", lambda s: s.new_session("snp", 0)),
    ("session lifetime inf", lambda s: s.new_session("snp", float("inf"))),
]


@pytest.mark.parametrize("name", [name for name, _ in BAD_CALLS])
def test_bad_input_is_a_typed_error_and_changes_nothing(store: Store, name: str) -> None:
    store.put_resource("default/key/a", b"before")
    before = (store.list_resources(), store.list_policies(), store.list_audit())
    call = dict(BAD_CALLS)[name]
    with pytest.raises(KbsStoreInputError) as info:
        call(store)
    assert info.value.reason == "invalid" and isinstance(info.value, ValueError)
    assert (store.list_resources(), store.list_policies(), store.list_audit()) == before
    assert store.get_resource("default/key/a") == b"before"


def test_a_clock_without_a_time_zone_is_refused(url: str) -> None:
    naive = datetime.datetime(2026, 1, 1)  # no time zone: the point
    with Store.open(url, KEY) as store:
        store.put_resource("default/key/a", b"x")
    with Store(url, KEY, lambda: naive) as store, pytest.raises(KbsStoreInputError):
        store.put_resource("default/key/a", b"y")
    with Store.open(url, KEY) as store:
        assert store.get_resource("default/key/a") == b"x"


# -- sessions -----------------------------------------------------------------------------------

def test_a_session_goes_challenged_consumed_attested(store: Store, clock: Clock) -> None:
    session = store.new_session("snp", 300)
    assert session.state is SessionState.CHALLENGED and session.tee == "snp"
    assert len(base64.b64decode(session.nonce, validate=True)) == 32
    assert session.expires - session.created == datetime.timedelta(seconds=300)
    assert store.get_session(session.id) == session
    with pytest.raises(KbsSessionError) as info:
        store.attested_session(session.id)
    assert info.value.reason == "session-state"
    with pytest.raises(KbsSessionError) as info:  # attestation needs the nonce taken first
        store.attest_session(session.id, {"kty": "EC"}, {})
    assert info.value.reason == "session-state"

    consumed = store.consume_nonce(session.id)
    assert consumed.state is SessionState.CONSUMED and consumed.nonce == session.nonce
    with pytest.raises(KbsSessionError) as info:
        store.consume_nonce(session.id)
    assert info.value.reason == "nonce-replayed"

    jwk = {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB"}
    claims = {"measurement": "00" * 48, "tcb": {"snp": 22}}
    clock.advance(10)
    attested = store.attest_session(session.id, jwk, claims, lifetime_s=60)
    assert (attested.state, attested.tee_pubkey, attested.claims) == (
        SessionState.ATTESTED, jwk, claims)
    assert attested.attested_at == clock()
    assert attested.expires == clock() + datetime.timedelta(seconds=60)
    assert store.attested_session(session.id) == attested == store.get_session(session.id)
    with pytest.raises(KbsSessionError) as info:
        store.attest_session(session.id, jwk, claims)
    assert info.value.reason == "session-state"
    with pytest.raises(KbsSessionError) as info:
        store.consume_nonce(session.id)
    assert info.value.reason == "nonce-replayed"


def test_sessions_expire(store: Store, clock: Clock) -> None:
    late = store.new_session("snp", 30)
    attested = store.new_session("snp", 30)
    store.consume_nonce(attested.id)
    store.attest_session(attested.id, {"kty": "EC"}, {})
    keeps = store.new_session("snp", 3600)
    clock.advance(30)
    with pytest.raises(KbsSessionError) as info:
        store.consume_nonce(late.id)
    assert info.value.reason == "session-expired"
    assert store.get_session(late.id).state is SessionState.CHALLENGED  # unchanged
    with pytest.raises(KbsSessionError) as info:
        store.attested_session(attested.id)
    assert info.value.reason == "session-expired"
    assert store.delete_expired_sessions() == 2
    with pytest.raises(KbsNotFoundError) as info:
        store.get_session(late.id)
    assert info.value.what == "session"
    assert store.consume_nonce(keeps.id).state is SessionState.CONSUMED


@pytest.mark.parametrize("unknown", ["no-such-session", "x" * 1000, ""])
def test_unknown_sessions(store: Store, unknown: str) -> None:
    for call in (store.get_session, store.consume_nonce, store.attested_session):
        with pytest.raises(KbsNotFoundError):
            call(unknown)


def test_a_nonce_is_used_once_by_racing_threads(store: Store) -> None:
    """Eight threads present the same nonce at once: exactly one attempt gets it."""
    session = store.new_session("snp", 300)
    barrier = threading.Barrier(8)
    won, replayed = [], []

    def attempt() -> None:
        barrier.wait()
        try:
            won.append(store.consume_nonce(session.id))
        except KbsSessionError as error:
            replayed.append(error.reason)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and replayed == ["nonce-replayed"] * 7


def test_many_threads_share_one_store(store: Store, url: str) -> None:
    """A multi-threaded server: threads writing resources and audit records, creating and
    consuming sessions, and a second Store (another server process's engine) doing the same;
    nothing lost, no error, every id distinct."""
    errors: list[BaseException] = []
    with Store.open(url, KEY) as second:

        def work(worker: int, target: Store) -> None:
            try:
                for i in range(15):
                    target.put_resource(f"w{worker}/key/{i}", f"{worker}:{i}".encode())
                    target.append_audit("resource", "allowed", session_id=f"w{worker}")
                    target.consume_nonce(target.new_session("snp", 60).id)
                    assert target.get_resource(f"w{worker}/key/{i}") == f"{worker}:{i}".encode()
            except BaseException as error:  # reported below: a thread's failure is the test's
                errors.append(error)

        threads = [threading.Thread(target=work, args=(w, store if w % 2 else second))
                   for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    records = store.list_audit(limit=10_000)
    assert len(records) == 90 and len({r.id for r in records}) == 90
    assert len(store.list_resources()) == 90


# -- durability ---------------------------------------------------------------------------------

WRITER = """
import sys
from sevsim.kbs.store import Store
store = Store.open(sys.argv[1], bytes.fromhex(sys.argv[2]))
i = 0
while True:
    store.put_resource(f"default/key/{i}", b"secret %d" % i)
    record = store.append_audit("resource", "allowed", resource=f"default/key/{i}")
    print(i, record.id, flush=True)
    i += 1
"""


def test_sigkill_loses_nothing_committed(url: str) -> None:
    """A writer killed with SIGKILL in the middle of its loop: everything it reported written
    (after the call returned) is there when the database is opened again, and it stays
    usable."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, KEY.hex()], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert child.stdout is not None
    reported = []
    try:
        for line in child.stdout:
            reported.append(tuple(int(field) for field in line.split()))
            if len(reported) == 40:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert len(reported) == 40, "the writer stopped early"
    with Store.open(url, KEY) as store:
        audit_ids = {record.id for record in store.list_audit(limit=10_000)}
        for i, audit_id in reported:
            assert store.get_resource(f"default/key/{i}") == b"secret %d" % i
            assert audit_id in audit_ids
        store.put_resource("default/key/after", b"still writable")
        assert store.get_resource("default/key/after") == b"still writable"
