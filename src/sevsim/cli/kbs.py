"""`sevsim kbs serve | admin | attest`: the key broker service, its administrator and a client
that posts SNP evidence (sevsim.kbs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_CERT_FILE,
    MAX_KBS_RESOURCE,
    MAX_KEY_FILE,
    MAX_POLICY_FILE,
    MAX_REPORT_FILE,
    err,
    fail,
    print_json,
    read_input,
    until_stopped,
)
from sevsim.cli.options import JsonOption
from sevsim.errors import ConfigError, KbsRefusal, SevsimError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from sevsim.kbs.client import KbsClient

kbs_app = typer.Typer(help="A key broker service (Trustee's KBS protocol) for SNP guests.",
                      no_args_is_help=True)
admin_app = typer.Typer(help="Administer a KBS: keys, policies, secrets, the audit log.",
                        no_args_is_help=True)
kbs_app.add_typer(admin_app, name="admin")

SECRET_KEY_ENV = "SEVSIM_KBS_SECRET_KEY"  # 64 hex digits: the at-rest key, kept out of argv
EXIT_REFUSED = 1  # the KBS answered with a problem document

UrlOption = Annotated[str, typer.Option("--url", help="The KBS, http://host:port.")]
CertsOption = Annotated[Path | None, typer.Option(
    help="The report's certificates: a directory of vcek|vlek, ask|asvk and ark .pem or .der "
         "files (`sevsim run --certs-out`, snpguest), or an extended report's binary "
         "certificate table.")]
AdminKeyOption = Annotated[Path, typer.Option(
    "--key", help="The admin's Ed25519 private key (PEM, from `sevsim kbs admin keygen`).")]


@kbs_app.command("serve")
def serve(
    admin_key: Annotated[Path, typer.Option(
        help="The admin's Ed25519 public key (PEM): admin endpoints take JWTs it verifies.")],
    db: Annotated[str, typer.Option(
        help="Database URL: sqlite:///path (created on first start) or "
             "postgresql+psycopg://user@host/db.")] = "sqlite:///kbs.db",
    secret_key_file: Annotated[Path | None, typer.Option(
        help="File holding the 32-byte key secrets are encrypted under at rest (raw or 64 "
             f"hex digits); default: ${SECRET_KEY_ENV} (hex).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8080,
    trust: Annotated[str, typer.Option(
        help="amd: AMD's real roots | sevsim: sevsim's simulated roots.")] = "amd",
    vcek_dir: Annotated[Path | None, typer.Option(
        help="Offline VCEK store, for evidence that carries no certificates.")] = None,
    kds: Annotated[str | None, typer.Option(
        help="KDS base URL for VCEKs not in the evidence nor the offline store "
             "(e.g. https://kdsintf.amd.com or a `sevsim kds serve`).")] = None,
    kds_cache: Annotated[Path | None, typer.Option(
        help="Directory keeping KDS answers on disk (with --kds).")] = None,
    token_key: Annotated[Path | None, typer.Option(
        help="EC P-256 private key (PEM) signing attestation tokens; default: a fresh key "
             "per start (tokens then die with the process).")] = None,
    nonce_lifetime: Annotated[int, typer.Option(
        help="Seconds a challenge nonce may wait for its attestation.")] = 300,
    token_lifetime: Annotated[int, typer.Option(
        help="Seconds an attestation token (and an attested session) lasts.")] = 3600,
    workers: Annotated[int, typer.Option(
        help="Worker processes serving the one port, for attestation throughput on several "
             "cores; 0: one per core (os.cpu_count()). They share one token key (--token-key "
             "or one made at start). 1 serves in this process.")] = 1,
) -> None:
    """Serve the KBS protocol and its admin API until Ctrl-C.

    /kbs/v0/auth, attest and resource for VMs, the admin endpoints for the holder of the admin
    key; every decision goes into the audit log."""
    from sevsim.attest.kds_client import KdsClient
    from sevsim.kbs.admin import load_admin_public_key
    from sevsim.kbs.service import KbsConfig, create_app, listen
    from sevsim.kbs.service import serve as serve_app
    from sevsim.kbs.verifier import EvidenceConfig
    from sevsim.kbs.workers import serve_workers, worker_config, worker_count

    command = "sevsim kbs serve"
    if trust not in ("amd", "sevsim"):
        raise typer.BadParameter(f"--trust {trust!r}: amd or sevsim")
    try:
        processes = worker_count(workers)
        evidence = EvidenceConfig(
            trust="sevsim" if trust == "sevsim" else "amd", vcek_store=vcek_dir,
            kds=None if kds is None else KdsClient(base_url=kds, cache_dir=kds_cache))
        config = KbsConfig(
            db_url=db, secret_key=_secret_key(secret_key_file, command),
            admin_key=load_admin_public_key(admin_key), evidence=evidence,
            token_key=None if token_key is None else _ec_key(token_key, command),
            nonce_lifetime_s=nonce_lifetime, token_lifetime_s=token_lifetime)
        sock = listen(host, port)
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:  # in use, not an address of this machine, no such host
        raise fail(ConfigError(f"cannot listen on {host}:{port}: "
                               f"{error.strerror or error}"), command) from None
    try:  # either way the store is opened here, so a bad URL or key fails before serving
        if processes == 1:
            app = create_app(config)
        else:
            config = worker_config(config)
    except SevsimError as error:
        sock.close()
        raise fail(error, command) from None
    address, bound = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    err.print(f"sevsim kbs: http://{shown}:{bound}/kbs/v0/ database {db}", highlight=False)
    if processes == 1:
        with until_stopped():
            serve_app(app, sock)
        return
    try:
        died = serve_workers(config, sock, processes)
    except SevsimError as error:
        raise fail(error, command) from None
    if died is not None:
        err.print(f"{command}: {died}; the other workers were stopped", highlight=False)
        raise typer.Exit(EXIT_ERROR)


def _secret_key(path: Path | None, command: str) -> bytes:
    """The at-rest key: 32 raw bytes or 64 hex digits, from the file or the environment."""
    if path is not None:
        raw = read_input(path, command, 129, "a 32-byte key")
    elif SECRET_KEY_ENV in os.environ:
        raw = os.environ[SECRET_KEY_ENV].encode()
    else:
        raise ConfigError(f"the at-rest key: --secret-key-file or ${SECRET_KEY_ENV}")
    if len(raw) == 32:
        return raw
    try:
        key = bytes.fromhex(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError("the at-rest key must be 32 bytes (raw, or 64 hex digits)")
    return key


def _ec_key(path: Path, command: str) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(
            read_input(path, command, MAX_KEY_FILE, "a PEM key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an EC private key")
    return key


def _refused(refusal: KbsRefusal) -> typer.Exit:
    """A problem document from the KBS: printed as JSON on stdout, exit 1."""
    print(json.dumps({"status": refusal.status, "reason": refusal.reason,
                      "detail": refusal.detail}, indent=2))
    return typer.Exit(EXIT_REFUSED)


# -- admin -------------------------------------------------------------------------------------

@admin_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("-o", "--out", help="Directory for admin.pem (private, "
                                      "mode 0600) and admin.pub (give it to `serve`).")],
) -> None:
    """Make the admin's Ed25519 key pair."""
    from cryptography.hazmat.primitives import serialization

    from sevsim.kbs.admin import generate_admin_key

    key = generate_admin_key()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_private(out / "admin.pem", private)
        (out / "admin.pub").write_bytes(public)
    except OSError as error:
        raise fail(ConfigError(f"cannot write {error.filename}: {error.strerror}"),
                   "sevsim kbs admin") from None
    except ConfigError as error:
        raise fail(error, "sevsim kbs admin") from None
    err.print(f"wrote {out / 'admin.pem'} and {out / 'admin.pub'}", highlight=False)


def _admin(url: str, key: Path, call: str, *args: Any) -> Any:
    """`call` on a KbsClient with a fresh admin token; refusals and errors exit."""
    from sevsim.kbs.admin import issue_admin_token, load_admin_private_key
    from sevsim.kbs.client import KbsClient

    command = "sevsim kbs admin"
    try:
        token = issue_admin_token(load_admin_private_key(key))
        with KbsClient(url) as client:
            return getattr(client, call)(token, *args)
    except KbsRefusal as refusal:
        raise _refused(refusal) from None
    except SevsimError as error:
        raise fail(error, command) from None


@admin_app.command("set-resource")
def set_resource(
    path: Annotated[str, typer.Argument(help="repository/type/tag")],
    file: Annotated[Path, typer.Argument(help="The secret's bytes.")],
    url: UrlOption, key: AdminKeyOption,
) -> None:
    """Store (or replace) a secret; it is encrypted at rest under the server's key."""
    _admin(url, key, "set_resource", path,
           read_input(file, "sevsim kbs admin", MAX_KBS_RESOURCE, "a secret"))


@admin_app.command("delete-resource")
def delete_resource(path: Annotated[str, typer.Argument(help="repository/type/tag")],
                    url: UrlOption, key: AdminKeyOption) -> None:
    """Delete a secret."""
    _admin(url, key, "delete_resource", path)


@admin_app.command("set-attestation-policy")
def set_attestation_policy(
    file: Annotated[Path, typer.Argument(help="A `sevsim validate` policy (TOML).")],
    url: UrlOption, key: AdminKeyOption,
) -> None:
    """Set the policy every attestation's report must pass."""
    text = read_input(file, "sevsim kbs admin", MAX_POLICY_FILE, "a policy").decode()
    _admin(url, key, "set_attestation_policy", text)


@admin_app.command("set-resource-policy")
def set_resource_policy(
    file: Annotated[Path, typer.Argument(help="A resource policy (TOML or Rego: docs/kbs.md).")],
    url: UrlOption, key: AdminKeyOption,
) -> None:
    """Set the policy that decides, per resource path, which attested claims get it."""
    text = read_input(file, "sevsim kbs admin", MAX_POLICY_FILE, "a policy").decode()
    _admin(url, key, "set_resource_policy", text)


@admin_app.command("resources")
def resources(url: UrlOption, key: AdminKeyOption, json_out: JsonOption = False) -> None:
    """The stored secrets' paths, one a line (with --json, every stored field of each)."""
    stored = _admin(url, key, "resources")
    if json_out:
        print_json(stored)
        return
    for resource in stored:
        print(resource["path"])


@admin_app.command("audit")
def audit(url: UrlOption, key: AdminKeyOption,
          after: Annotated[int, typer.Option(help="Records with ids above this.")] = 0,
          limit: Annotated[int, typer.Option(help="At most this many (1 to 10000).")] = 100,
          ) -> None:
    """The audit log as JSON, oldest first: every decision, allowed or refused and why."""
    print(json.dumps(_admin(url, key, "audit", after, limit), indent=2))


@admin_app.command("check-evidence")
def check_evidence(
    url: UrlOption, key: AdminKeyOption,
    report: Annotated[Path, typer.Option(help="The SNP report (0x4A0 bytes).")],
    certs: CertsOption = None,
    report_data: Annotated[str | None, typer.Option(
        help="128 hex digits REPORT_DATA must equal; default: not checked.")] = None,
) -> None:
    """Would this evidence pass? The KBS checks it as an attestation (its roots, VCEK
    sources and attestation policy) but for no session, and releases nothing: for recorded
    evidence, such as a real machine's report, which cannot bind a fresh nonce. Prints the
    claims; a refusal prints the problem document and exits 1."""
    command = "sevsim kbs admin"
    try:
        evidence = _evidence(report, certs, command)
        expected = None if report_data is None else _report_data(report_data)
    except SevsimError as error:
        raise fail(error, command) from None
    print(json.dumps(_admin(url, key, "check_evidence", evidence, expected), indent=2))


def _report_data(text: str) -> bytes:
    """REPORT_DATA from its 128 hex digits."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 64:
        raise ConfigError(f"--report-data {text[:40]!r}: 128 hex digits (64 bytes)")
    return value


# -- a client ------------------------------------------------------------------------------

@kbs_app.command("attest")
def attest(
    url: UrlOption,
    tee_key: Annotated[Path, typer.Option(
        help="The TEE's EC P-256 private key (PEM); created (mode 0600) if missing. Its "
             "public half goes into runtime-data, and resources are encrypted to it.")],
    report: Annotated[Path | None, typer.Option(
        help="The SNP report (0x4A0 bytes) to post. Without it: ask for a challenge and print "
             "the session, the nonce and the REPORT_DATA a report must carry.")] = None,
    certs: CertsOption = None,
    session: Annotated[str | None, typer.Option(
        help="The session of an earlier challenge (with --nonce).")] = None,
    nonce: Annotated[str | None, typer.Option(help="That challenge's nonce.")] = None,
    resource: Annotated[str | None, typer.Option(
        help="Then fetch repository/type/tag with the token (needs --out).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Where the decrypted resource goes (created with mode 0600).")] = None,
) -> None:
    """Post SNP evidence to a KBS and print the token.

    With --resource, also fetch a secret and decrypt it into --out. A refusal prints the
    problem document and exits 1."""
    from sevsim.kbs.client import KbsClient

    command = "sevsim kbs attest"
    try:
        key = _tee_key(tee_key, command)
        client = KbsClient(url)
        if (resource is None) != (out is None):
            raise ConfigError("--resource and --out go together")
        if session is None or nonce is None:
            if session is not None or nonce is not None:
                raise ConfigError("--session and --nonce go together")
            nonce = str(client.auth()["nonce"])
        else:
            client.session = session
        runtime = _runtime_data(nonce, key)
        if report is None:
            print(json.dumps({"session": client.session, "nonce": nonce,
                              "report-data": runtime.report_data().hex()}, indent=2))
            return
        token = client.attest(_attestation(runtime, report, certs, command))
        print(token)
        if resource is not None and out is not None:
            _write_secret(client, key, resource, token, out)
    except KbsRefusal as refusal:
        raise _refused(refusal) from None
    except SevsimError as error:
        raise fail(error, command) from None


def _tee_key(path: Path, command: str) -> ec.EllipticCurvePrivateKey:
    """The TEE key at `path`, made if the file does not exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if path.exists():
        return _ec_key(path, command)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key


def _runtime_data(nonce: str, key: ec.EllipticCurvePrivateKey) -> Any:
    """runtime-data: the nonce and the TEE key's public JWK."""
    from sevsim.abi.kbs import EcPublicJwk, RuntimeData

    return RuntimeData(nonce=nonce, tee_pubkey=EcPublicJwk.from_key(key.public_key()))


def _attestation(runtime: Any, report: Path, certs: Path | None, command: str) -> Any:
    """The Attestation message: runtime-data and the SNP evidence as Trustee's attester
    sends it."""
    from sevsim.abi.kbs import Attestation, TeeEvidence

    return Attestation(runtime_data=runtime, init_data=None, tee_evidence=TeeEvidence(
        primary=_evidence(report, certs, command))).to_json()


def _evidence(report: Path, certs: Path | None, command: str) -> dict[str, Any]:
    """The SNP evidence JSON of a report file and its certificates, as Trustee's attester
    sends it."""
    from sevsim.abi.kbs_snp import snp_evidence_to_json

    blob = read_input(report, command, MAX_REPORT_FILE, "an SNP report")
    table = None if certs is None else _cert_entries(certs, command)
    return snp_evidence_to_json(blob, table)


def _cert_entries(certs: Path, command: str) -> list[tuple[str, bytes]]:
    """Certificate-table entries (GUID text, DER) from a directory of certificate files or
    from a binary certificate table."""
    from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, parse_cert_table
    from sevsim.attest.snp_verify import der_certificates

    if not certs.is_dir():
        table = read_input(certs, command, MAX_CERT_FILE, "a certificate table")
        return [(str(guid), der) for guid, der in parse_cert_table(table)]
    entries = []
    for name, guid in (("vcek", GUID_VCEK), ("vlek", GUID_VLEK), ("ask", GUID_ASK),
                       ("asvk", GUID_ASK), ("ark", GUID_ARK)):
        for suffix in (".pem", ".der"):
            path = certs / (name + suffix)
            if path.is_file():
                blob = read_input(path, command, MAX_CERT_FILE, "a certificate")
                entries.append((str(guid), der_certificates(blob)[0]))
                break
    if not entries:
        raise ConfigError(f"{certs} holds no vcek, vlek, ask, asvk or ark certificate")
    return entries


def _write_secret(client: KbsClient, key: ec.EllipticCurvePrivateKey, path: str,
                  token: str, out: Path) -> None:
    """Fetch `path` by token and write its plaintext to a new file only its owner reads."""
    from sevsim.kbs.jose import decrypt_jwe

    secret = decrypt_jwe(key, client.resource(path, token))
    _write_private(out, secret)


def _write_private(path: Path, data: bytes) -> None:
    """A new file of mode 0600 (an existing one is not overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from None
