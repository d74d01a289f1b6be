"""The key broker's wire formats (Trustee's kbs-types messages, the SNP evidence JSON of
guest-components' attester) and its JOSE (JWE to the TEE key, signed tokens), checked against
the JSON of Trustee's protocol document, Trustee's own hashing vector, and jwcrypto as an
independent JOSE implementation in both directions."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from jwcrypto import jwe as jc_jwe
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws
from jwcrypto import jwt as jc_jwt

from sevsim import Host
from sevsim.abi.kbs import (
    Attestation,
    Challenge,
    EcPublicJwk,
    InitData,
    Request,
    RsaPublicJwk,
    RuntimeData,
    TeeEvidence,
    b64url_encode,
    hash_report_data,
    parse_jwk,
)
from sevsim.abi.kbs_snp import SnpEvidence, snp_evidence_from_json, snp_evidence_to_json
from sevsim.abi.snp_report import (
    GUID_VCEK,
    AttestationReport,
    build_cert_table,
    parse_cert_table,
)
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.errors import FormatError, KbsAdminAuthError, KbsCryptoError, KbsProtocolError
from sevsim.kbs.admin import generate_admin_key, issue_admin_token, verify_admin_token
from sevsim.kbs.jose import TokenSigner, decrypt_jwe, encrypt_to_tee

SECRET = b"sevsim-kbs-planted-secret-\x00\x01\x02-4f1c9a"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x5EC5EC, ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def rsa_jwk(key: rsa.RSAPrivateKey) -> RsaPublicJwk:
    numbers = key.public_key().public_numbers()
    return RsaPublicJwk(b64url_encode(numbers.n.to_bytes(256, "big")),
                        b64url_encode(numbers.e.to_bytes(3, "big")))


# -- the protocol document's messages ---------------------------------------------------------

def test_request_and_challenge_are_the_protocol_documents_json() -> None:
    """The exact JSON of kbs_attestation_protocol.md parses and serialises back unchanged."""
    request = {"version": "0.1.1", "tee": "snp", "extra-params": {}}
    parsed = Request.from_json(json.dumps(request))
    assert parsed == Request("0.1.1", "snp", {})
    assert parsed.to_json() == request
    assert list(parsed.to_json()) == ["version", "tee", "extra-params"]
    challenge = {"nonce": "kt6Bq2DL8hqm+3bQkO0Tm8OY4A8=", "extra-params": {}}
    assert Challenge.from_json(json.dumps(challenge).encode()).to_json() == challenge
    assert Challenge.from_json(challenge).hash_algorithm() == "sha384"  # the default


def test_attestation_is_the_protocol_documents_json(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = EcPublicJwk.from_key(ec_key.public_key())
    doc = {"init-data": {"format": "toml", "body": "version = \"0.1.0\""},
           "runtime-data": {"nonce": "n0nce",
                            "tee-pubkey": {"kty": "EC", "crv": "P-256",
                                           "alg": "ECDH-ES+A256KW", "x": jwk.x, "y": jwk.y}},
           "tee-evidence": {"primary_evidence": {}, "additional_evidence": "{}"}}
    parsed = Attestation.from_json(json.dumps(doc))
    assert parsed.runtime_data == RuntimeData("n0nce", jwk)
    assert parsed.init_data == InitData("toml", 'version = "0.1.0"')
    assert parsed.tee_evidence == TeeEvidence({}, "{}")
    assert parsed.to_json() == doc
    assert list(parsed.to_json()) == ["init-data", "runtime-data", "tee-evidence"]
    assert list(parsed.to_json()["runtime-data"]["tee-pubkey"]) == ["kty", "crv", "alg", "x",
                                                                     "y"]
    del doc["init-data"]  # optional; serde writes it back as null
    assert Attestation.from_json(doc).to_json()["init-data"] is None


def test_rsa_jwk_round_trips(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = rsa_jwk(rsa_key)
    assert parse_jwk(jwk.to_json()) == jwk
    assert list(jwk.to_json()) == ["kty", "alg", "n", "e"]
    assert jwk.numbers() == (rsa_key.public_key().public_numbers().n, 65537)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.pop("tee-evidence"), "tee-evidence"),
    (lambda d: d.update({"runtime-data": []}), "runtime-data"),
    (lambda d: d["runtime-data"].update(nonce=7), "runtime-data.nonce"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(kty="OKP"), "runtime-data.tee-pubkey.kty"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(crv="P-192"),
     "runtime-data.tee-pubkey.crv"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(alg="RSA-OAEP-256"),
     "runtime-data.tee-pubkey.alg"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(x="AAAA"), "runtime-data.tee-pubkey.x"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(x=b64url_encode(bytes(31) + b"\1")),
     "runtime-data.tee-pubkey.x"),  # right size, but (x, y) is off the curve
    (lambda d: d["runtime-data"]["tee-pubkey"].update(y="a+b/"), "runtime-data.tee-pubkey.y"),
    (lambda d: d["runtime-data"]["tee-pubkey"].update(kid="k"), "runtime-data.tee-pubkey.kid"),
    (lambda d: d["runtime-data"]["tee-pubkey"].pop("alg"), "runtime-data.tee-pubkey.alg"),
    (lambda d: d.update({"init-data": {"format": "yaml", "body": ""}}), "init-data.format"),
    (lambda d: d["tee-evidence"].update(additional_evidence={}),
     "tee-evidence.additional_evidence"),
    (lambda d: d["tee-evidence"].update(additional_evidence="[1]"),
     "tee-evidence.additional_evidence"),
])
def test_attestation_refusals_name_the_member(ec_key: ec.EllipticCurvePrivateKey, mutate,
                                              field: str) -> None:
    doc = {"runtime-data": RuntimeData("n", EcPublicJwk.from_key(ec_key.public_key())).to_json(),
           "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}}
    Attestation.from_json(doc)  # the unmutated document parses
    mutate(doc)
    with pytest.raises(KbsProtocolError) as info:
        Attestation.from_json(json.dumps(doc))
    assert info.value.field == field
    assert isinstance(info.value, FormatError)


@pytest.mark.parametrize(("text", "field"), [
    (b"\xff{}", "request"), ("[]", "request"), ("{", "request"), ("NaN", "request"),
    ('{"version": "1", "version": "2", "tee": "snp", "extra-params": {}}', "request"),
    ('{"version": "0.4.0", "tee": "sev", "extra-params": {}}', "tee"),
    ('{"version": 4, "tee": "snp", "extra-params": {}}', "version"),
    ('{"version": "0.4.0", "tee": "snp"}', "extra-params"),
    ("[" * 100_000, "request"),
    ('{"version": "0.4.0", "tee": "snp", "extra-params": {"a": 1e400}}', "request"),
    ('{"version": "0.4.0", "tee": "snp", "extra-params": [Infinity]}', "request"),
    ('{"version": "0.4.0", "tee": "snp", "extra-params": ' + "9" * 5000 + "}", "request"),
])
def test_request_refusals(text: str | bytes, field: str) -> None:
    with pytest.raises(KbsProtocolError) as info:
        Request.from_json(text)
    assert info.value.field == field


def test_jwk_refusals(rsa_key: rsa.RSAPrivateKey) -> None:
    good = rsa_jwk(rsa_key).to_json()
    for change, field in (({"n": b64url_encode(b"\0" + base64.urlsafe_b64decode(
                              good["n"] + "=="))}, "n"),
                          ({"n": b64url_encode((3 << 1020).to_bytes(128, "big"))}, "n"),
                          ({"e": b64url_encode(b"\2")}, "e"),
                          ({"alg": "RSA-OAEP"}, "alg"),
                          ({"n": good["n"] + "="}, "n")):
        with pytest.raises(KbsProtocolError) as info:
            parse_jwk({**good, **change})
        assert info.value.field == f"tee-pubkey.{field}"
    with pytest.raises(KbsProtocolError) as info:
        EcPublicJwk("P-256", "AA", "AA")  # constructing checks too
    assert info.value.field == "x"


def test_base64url_must_be_canonical(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """A coordinate whose last character carries stray low bits decodes to the same bytes;
    it must be refused, or two texts (two REPORT_DATA values) would name one key."""
    jwk = EcPublicJwk.from_key(ec_key.public_key()).to_json()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(jwk["x"][-1])
    stray = jwk["x"][:-1] + alphabet[last ^ 1]  # 43 characters: the last has 2 unused bits
    assert base64.urlsafe_b64decode(stray + "=") == base64.urlsafe_b64decode(jwk["x"] + "=")
    with pytest.raises(KbsProtocolError, match="canonical"):
        parse_jwk({**jwk, "x": stray})


# -- REPORT_DATA bindings -------------------------------------------------------------------

def test_hash_matches_trustees_vector() -> None:
    """attestation-service's parse_runtimedata_json_binding case: SHA-384 of the JCS form."""
    expected = bytes.fromhex("e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
                             "4597480a186427c813ca941da78870c3")
    assert hash_report_data("SHA384", {"b": 1, "a": "test", "c": {"d": "e"}}) == \
        expected + bytes(16)


def test_runtime_data_binding(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """SHA-384 of the canonical JSON, written out by hand here (sorted keys, no spaces)."""
    jwk = EcPublicJwk.from_key(ec_key.public_key())
    canonical = ('{"nonce":"n\\u0001\u00e9","tee-pubkey":{"alg":"ECDH-ES+A256KW",'
                 f'"crv":"P-256","kty":"EC","x":"{jwk.x}","y":"{jwk.y}"}}}}').encode()
    expected = hashlib.sha384(canonical).digest() + bytes(16)
    assert RuntimeData("n\x01\u00e9", jwk).report_data() == expected
    assert RuntimeData("n\x01\u00e8", jwk).report_data() != expected


def test_trustee_binding_uses_the_selected_hash(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = EcPublicJwk.from_key(ec_key.public_key())
    attestation = Attestation(RuntimeData("abc", jwk), None, TeeEvidence({"x": 1}, ""))
    canonical = ('{"additional-evidence":"","nonce":"abc","tee-pubkey":{"alg":"ECDH-ES+A256KW",'
                 f'"crv":"P-256","kty":"EC","x":"{jwk.x}","y":"{jwk.y}"}}}}').encode()
    for name, size in (("sha256", 32), ("sha384", 48), ("sha512", 64)):
        challenge = Challenge("abc", {"selected-hash-algorithm": name.upper()})
        data = attestation.report_data(challenge.hash_algorithm())
        assert data == hashlib.new(name, canonical).digest() + bytes(64 - size)
    assert attestation.report_data() != RuntimeData("abc", jwk).report_data()
    with pytest.raises(KbsProtocolError) as info:
        Challenge.from_json({"nonce": "n", "extra-params": {"selected-hash-algorithm": "md5"}})
    assert info.value.field == "extra-params.selected-hash-algorithm"


# An initdata document as guest-components' spec shows one (its comment and spacing are part
# of the digested bytes).
INITDATA = """# sevsim test init-data
algorithm = "{algorithm}"
version = "0.1.0"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://127.0.0.1:8080"
'''
"policy.rego" = "package agent_policy\\ndefault AllowRequestsFailingPolicy := true"
"note" = "caf\u00e9"
"""


@pytest.mark.parametrize(("algorithm", "size"), [("sha256", 32), ("sha384", 48),
                                                 ("sha512", 64)])
def test_init_data_digest_and_host_data(algorithm: str, size: int) -> None:
    """The digest is the algorithm over the body's UTF-8 bytes as sent; HOST_DATA is that
    digest zero-padded or cut to 32 bytes."""
    body = INITDATA.format(algorithm=algorithm)
    init = InitData("toml", body)
    digest = hashlib.new(algorithm, body.encode("utf-8")).digest()
    assert init.digest() == digest and len(digest) == size
    assert init.host_data() == digest[:32] and len(init.host_data()) == 32
    # one byte changed, even in a comment: another digest
    changed = InitData("toml", body.replace("# sevsim", "# Sevsim"))
    assert changed.digest() != digest and changed.host_data() != init.host_data()
    # the body goes over the wire as it is: the parsed message digests the same
    parsed = InitData.from_json(json.dumps(init.to_json()))
    assert parsed.host_data() == init.host_data()


@pytest.mark.parametrize(("body", "field"), [
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data\n", "init-data.body"),
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n[data]\n", "init-data.body"),
    ("version = \"0.1.0\"\nalgorithm = \"sha1\"\n[data]\n", "init-data.body.algorithm"),
    ("version = \"0.1.0\"\nalgorithm = \"SHA384\"\n[data]\n", "init-data.body.algorithm"),
    ("version = \"0.1.0\"\n[data]\n", "init-data.body.algorithm"),
    ("version = 1\nalgorithm = \"sha256\"\n[data]\n", "init-data.body.version"),
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n", "init-data.body.data"),
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n", "init-data.body.data"),
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nn = 1\n", "init-data.body.data.n"),
    ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = \"\ud800\"\n",
     "init-data.body"),
])
def test_init_data_refusals_name_the_member(body: str, field: str) -> None:
    with pytest.raises(KbsProtocolError) as info:
        InitData("toml", body).host_data()
    assert info.value.field == field


def test_init_data_digest_is_for_toml_only() -> None:
    """kbs-types also names a json format; the initdata spec defines a digest for TOML only."""
    init = InitData.from_json({"format": "json", "body": json.dumps(
        {"version": "0.1.0", "algorithm": "sha256", "data": {}})})
    with pytest.raises(KbsProtocolError) as info:
        init.digest()
    assert info.value.field == "init-data.format"


# -- JWE to the TEE key ---------------------------------------------------------------------

def test_jwe_ec_round_trip_and_shape(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = EcPublicJwk.from_key(ec_key.public_key())
    message = encrypt_to_tee(jwk, SECRET)
    assert list(message) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    header = json.loads(base64.urlsafe_b64decode(message["protected"] + "=="))
    assert (header["alg"], header["enc"], header["epk"]["crv"]) == ("ECDH-ES+A256KW",
                                                                     "A256GCM", "P-256")
    wire = json.dumps(message).encode()
    assert SECRET not in wire and SECRET[:16] not in wire
    assert b64url_encode(SECRET)[:16].encode() not in wire
    assert decrypt_jwe(ec_key, message) == SECRET
    assert encrypt_to_tee(jwk, SECRET)["ciphertext"] != message["ciphertext"]  # fresh key, iv


def test_jwe_refusals(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    message = encrypt_to_tee(EcPublicJwk.from_key(ec_key.public_key()), SECRET)
    other = ec.derive_private_key(12345, ec.SECP256R1())
    tag = base64.urlsafe_b64decode(message["tag"] + "==")
    flipped = b64url_encode(bytes([tag[0] ^ 1]) + tag[1:])
    for bad_key, bad in ((other, message), (rsa_key, message), (ec_key, {**message, "tag":
                                                                          flipped}),
                         (ec_key, {**message, "header": {}}), (ec_key, {"protected": "e30"})):
        with pytest.raises(KbsCryptoError):
            decrypt_jwe(bad_key, bad)
    with pytest.raises(KbsCryptoError):
        encrypt_to_tee(RsaPublicJwk(rsa_jwk(rsa_key).n, "AQAB", alg="RSA1_5"), SECRET)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_jwe_other_curves(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    message = encrypt_to_tee(EcPublicJwk.from_key(key.public_key()), SECRET)
    assert decrypt_jwe(key, message) == SECRET
    with pytest.raises(KbsCryptoError):
        decrypt_jwe(ec.generate_private_key(curve), message)


def test_jwe_rsa_round_trip(rsa_key: rsa.RSAPrivateKey) -> None:
    message = encrypt_to_tee(rsa_jwk(rsa_key), SECRET)
    header = json.loads(base64.urlsafe_b64decode(message["protected"] + "=="))
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    assert decrypt_jwe(rsa_key, message) == SECRET


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_jwe_interoperates_with_jwcrypto(kind: str, ec_key: ec.EllipticCurvePrivateKey,
                                         rsa_key: rsa.RSAPrivateKey) -> None:
    """jwcrypto decrypts what we encrypt, and we decrypt what jwcrypto encrypts."""
    private = ec_key if kind == "ec" else rsa_key
    jwk = EcPublicJwk.from_key(ec_key.public_key()) if kind == "ec" else rsa_jwk(rsa_key)
    theirs = jc_jwk.JWK.from_pyca(private)
    ours = encrypt_to_tee(jwk, SECRET)
    token = jc_jwe.JWE()
    token.deserialize(json.dumps(ours), key=theirs)
    assert token.payload == SECRET

    made = jc_jwe.JWE(SECRET, json.dumps({"alg": jwk.alg, "enc": "A256GCM"}))
    made.add_recipient(jc_jwk.JWK.from_pyca(private.public_key()))
    # compact form: every header member protected, as Trustee's KBS sends them
    flattened = dict(zip(("protected", "encrypted_key", "iv", "ciphertext", "tag"),
                         made.serialize(compact=True).split("."), strict=True))
    assert decrypt_jwe(private, flattened) == SECRET
    with pytest.raises(KbsCryptoError):  # jwcrypto's JSON form leaves epk unprotected
        decrypt_jwe(private, {**json.loads(made.serialize()), "header": {}})


# -- attestation tokens ---------------------------------------------------------------------

def test_token_issue_verify(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = TokenSigner(ec_key)
    token = signer.issue({"tee": "snp", "measurement": "ab" * 48}, 300, now=1_000_000)
    claims = signer.verify(token, now=1_000_100)
    assert claims == {"tee": "snp", "measurement": "ab" * 48, "iat": 1_000_000,
                      "nbf": 1_000_000, "exp": 1_000_300}
    with pytest.raises(KbsCryptoError, match="expired"):
        signer.verify(token, now=1_000_301)
    with pytest.raises(KbsCryptoError):
        signer.verify(token, now=999_000)  # not yet valid
    with pytest.raises(KbsCryptoError):
        TokenSigner(ec.derive_private_key(99, ec.SECP256R1())).verify(token, now=1_000_100)
    head, body, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["measurement"] = "cd" * 48
    with pytest.raises(KbsCryptoError):
        signer.verify(f"{head}.{b64url_encode(json.dumps(forged).encode())}.{sig}",
                      now=1_000_100)
    none = b64url_encode(b'{"alg":"none","typ":"JWT"}')
    with pytest.raises(KbsCryptoError):
        signer.verify(f"{none}.{body}.", now=1_000_100)
    with pytest.raises(KbsCryptoError):
        signer.issue({"exp": 1}, 60)
    with pytest.raises(KbsCryptoError):
        TokenSigner(ec.derive_private_key(5, ec.SECP384R1()))


def test_token_interoperates_with_jwcrypto(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = TokenSigner(ec_key)
    public = jc_jwk.JWK(**signer.public_jwk())
    assert public.thumbprint() == signer.public_jwk()["kid"]
    token = signer.issue({"sub": "vm"}, 600)
    checked = jc_jwt.JWT(jwt=token, key=public, algs=["ES256"])
    assert json.loads(checked.claims)["sub"] == "vm"

    theirs = jc_jwt.JWT(header={"alg": "ES256"},
                        claims={"sub": "vm2", "iat": 10, "nbf": 10, "exp": 4_000_000_000})
    theirs.make_signed_token(jc_jwk.JWK.from_pyca(ec_key))
    assert signer.verify(theirs.serialize())["sub"] == "vm2"
    other = jc_jws.JWS(b'{"sub": "x", "iat": 1, "nbf": 1, "exp": 4000000000}')
    other.add_signature(jc_jwk.JWK.from_pyca(ec.derive_private_key(7, ec.SECP256R1())),
                        protected={"alg": "ES256"})
    with pytest.raises(KbsCryptoError):
        signer.verify(other.serialize(compact=True))


def test_admin_tokens_as_trustees_client_signs_them_are_accepted() -> None:
    """Trustee's kbs-client labels its Ed25519 admin JWTs "EdDSA" (RFC 8037): jwcrypto makes
    one here; it verifies under the admin's key, with no deprecation warning (warnings are
    errors in the suite), and not under another key; Ed448 is refused even if it claims the
    same label."""
    key, now = generate_admin_key(), int(time.time())

    def eddsa_token(signer: Any) -> str:
        token = jc_jwt.JWT(header={"alg": "EdDSA", "typ": "JWT"},
                           claims={"iat": now, "exp": now + 60})
        token.make_signed_token(jc_jwk.JWK.from_pyca(signer))
        return str(token.serialize())

    verify_admin_token(key.public_key(), eddsa_token(key))
    verify_admin_token(key.public_key(), issue_admin_token(key))
    for stranger in (generate_admin_key(), Ed448PrivateKey.generate()):
        with pytest.raises(KbsAdminAuthError):
            verify_admin_token(key.public_key(), eddsa_token(stranger))
    unsigned = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                        for part in ({"alg": "none"}, {"iat": now, "exp": now + 60})) + "."
    with pytest.raises(KbsAdminAuthError):
        verify_admin_token(key.public_key(), unsigned)


# -- SNP evidence in the virtee/sev serde shape ---------------------------------------------

SNP_DATA = Path(__file__).resolve().parent / "data" / "snp"
# every real report of shared/data/vectors (kept in tests/data/snp), and a VLEK-signed v3 one
REAL_REPORTS = {
    "milan-v2-a": (SNP_DATA / "milan-v2-a" / "report.bin").read_bytes(),
    "milan-v2-b": bytes.fromhex((SNP_DATA / "milan-v2-b" / "report.hex").read_text().strip()),
    "milan-v3-vlek": (SNP_DATA / "milan-v3-vlek" / "report.bin").read_bytes(),
}
VCEK_DER = (SNP_DATA / "milan-v2-b" / "vcek.der").read_bytes()
SEV_MEMBERS = ["version", "guest_svn", "policy", "family_id", "image_id", "vmpl", "sig_algo",
               "current_tcb", "plat_info", "key_info", "report_data", "measurement",
               "host_data", "id_key_digest", "author_key_digest", "report_id", "report_id_ma",
               "reported_tcb", "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "chip_id",
               "committed_tcb", "current", "committed", "launch_tcb", "launch_mit_vector",
               "current_mit_vector", "signature"]


def made_report(version: int, family: int, model: int = 1, **changes: object) -> bytes:
    """A sevsim report of a generation with every TCB and version field non-zero."""
    turin = family == 0x1A
    tcb = TcbVersion(2, 3, 4, 5, fmc=1 if turin else None).to_int()
    fields: dict[str, object] = dict(
        version=version, guest_svn=7, family_id=b"F" * 16, image_id=b"I" * 16, vmpl=1,
        current_tcb=tcb, reported_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb,
        report_data=bytes(range(64)), measurement=bytes(range(48)), chip_id=b"C" * 64,
        current_build=9, current_minor=58, current_major=1, committed_build=8,
        committed_minor=57, committed_major=1, signature_r=3 << 380, signature_s=5)
    if version >= 3:
        fields.update(cpuid_fam_id=family, cpuid_mod_id=model, cpuid_step=2)
    if version >= 5:
        fields.update(launch_mit_vector=0x11, current_mit_vector=0x13)
    fields.update(changes)
    return AttestationReport(**fields).to_bytes()  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(REAL_REPORTS))
def test_real_reports_round_trip_byte_for_byte(name: str) -> None:
    report = REAL_REPORTS[name]
    certs = [(str(GUID_VCEK), VCEK_DER), ("0123abcd-0000-4000-8000-00000000beef", b"extra")]
    evidence = snp_evidence_to_json(report, certs)
    text = json.dumps(evidence, separators=(",", ":"))  # serde_json's compact spelling
    parsed = snp_evidence_from_json(text.encode())
    assert parsed == SnpEvidence(report, certs)
    assert list(evidence) == ["attestation_report", "cert_chain"]
    assert list(evidence["attestation_report"]) == SEV_MEMBERS
    assert evidence["cert_chain"] == [{"cert_type": "VCEK", "data": list(VCEK_DER)},
                                      {"cert_type": {"OTHER": certs[1][0]}, "data": [
                                          101, 120, 116, 114, 97]}]


def test_the_serde_spelling_of_a_v2_report() -> None:
    """A Milan v2 report as the crate writes it: fmc null (legacy TCB layout), no CPUID bytes
    and no mitigation vectors (null), versions as {major, minor, build}, R and S as 72-entry
    little-endian arrays, the bitfields as plain numbers."""
    report = REAL_REPORTS["milan-v2-a"]
    parsed = AttestationReport.from_bytes(report)
    out = snp_evidence_to_json(report, None)
    text = json.dumps(out, separators=(",", ":"))
    assert text.startswith('{"attestation_report":{"version":2,"guest_svn":')
    assert text.endswith(',"cert_chain":null}')
    sev = out["attestation_report"]
    tcb = parsed.tcb("current_tcb")
    assert sev["current_tcb"] == {"fmc": None, "bootloader": tcb.bootloader, "tee": tcb.tee,
                                  "snp": tcb.snp, "microcode": tcb.microcode}
    assert list(sev["current_tcb"]) == ["fmc", "bootloader", "tee", "snp", "microcode"]
    assert (sev["cpuid_fam_id"], sev["cpuid_mod_id"], sev["cpuid_step"]) == (None,) * 3
    assert (sev["launch_mit_vector"], sev["current_mit_vector"]) == (None, None)
    assert sev["current"] == {"major": parsed.current_major, "minor": parsed.current_minor,
                              "build": parsed.current_build}
    assert bytes(sev["signature"]["r"]) == report[0x2A0:0x2E8]
    assert bytes(sev["signature"]["s"]) == report[0x2E8:0x330]
    assert sev["policy"] == int.from_bytes(report[8:16], "little")
    assert sev["plat_info"] == int.from_bytes(report[0x40:0x48], "little")
    assert sev["key_info"] == int.from_bytes(report[0x48:0x4C], "little")
    assert bytes(sev["chip_id"]) == report[0x1A0:0x1E0]
    assert bytes(sev["report_data"]) == report[0x50:0x90]


@pytest.mark.parametrize(("version", "family", "model", "turin"), [
    (3, 0x19, 0x01, False), (3, 0x19, 0x11, False), (5, 0x19, 0xA0, False),
    (3, 0x1A, 0x02, True), (5, 0x1A, 0x11, True)])
def test_generations_and_versions_round_trip(version: int, family: int, model: int,
                                             turin: bool) -> None:
    report = made_report(version, family, model)
    sev = snp_evidence_to_json(report, [])["attestation_report"]
    assert (sev["current_tcb"]["fmc"] is not None) == turin
    assert sev["current_tcb"]["snp"] == 4 and sev["cpuid_fam_id"] == family
    assert (sev["launch_mit_vector"] == 0x11) == (version >= 5)
    assert snp_evidence_from_json(json.dumps({"attestation_report": sev,
                                              "cert_chain": []})).report == report


def test_a_turin_v2_report_is_known_by_its_chip_id() -> None:
    report = made_report(2, 0x1A, chip_id=b"T" * 8 + bytes(56))
    sev = snp_evidence_to_json(report, None)["attestation_report"]
    assert sev["current_tcb"]["fmc"] == 1
    assert snp_evidence_from_json({"attestation_report": sev}).report == report


def test_an_older_crates_json_parses() -> None:
    """sev before 6.1 wrote no mitigation vectors and no fmc: serde reads absent Options as
    None, and so does this parser (only where null is what the version means)."""
    sev = snp_evidence_to_json(REAL_REPORTS["milan-v3-vlek"], None)["attestation_report"]
    older = {name: value for name, value in sev.items() if not name.endswith("_mit_vector")}
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        older[tcb] = {k: v for k, v in sev[tcb].items() if k != "fmc"}
    parsed = snp_evidence_from_json({"attestation_report": older, "cert_chain": None})
    assert parsed.report == REAL_REPORTS["milan-v3-vlek"]


def _mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    evidence = snp_evidence_to_json(made_report(5, 0x1A), [(str(GUID_VCEK), b"der")])
    change(evidence)
    return evidence


@pytest.mark.parametrize(("change", "field"), [
    (lambda e: e.update(extra=1), "extra"),
    (lambda e: e.pop("attestation_report"), "attestation_report"),
    (lambda e: e["attestation_report"].pop("vmpl"), "attestation_report.vmpl"),
    (lambda e: e["attestation_report"].update(bogus=0), "attestation_report.bogus"),
    (lambda e: e["attestation_report"].update(vmpl=True), "attestation_report.vmpl"),
    (lambda e: e["attestation_report"].update(vmpl=1.0), "attestation_report.vmpl"),
    (lambda e: e["attestation_report"].update(version=1 << 32), "attestation_report.version"),
    (lambda e: e["attestation_report"]["measurement"].append(0),
     "attestation_report.measurement"),
    (lambda e: e["attestation_report"]["host_data"].__setitem__(0, 256),
     "attestation_report.host_data"),
    (lambda e: e["attestation_report"]["current_tcb"].update(fmc=None),
     "attestation_report.current_tcb.fmc"),
    (lambda e: e["attestation_report"]["launch_tcb"].update(snp=300),
     "attestation_report.launch_tcb.snp"),
    (lambda e: e["attestation_report"].update(launch_mit_vector=None),
     "attestation_report.launch_mit_vector"),
    (lambda e: e["attestation_report"].update(cpuid_fam_id=0x17),
     "attestation_report.cpuid_fam_id"),
    (lambda e: e["attestation_report"]["current"].pop("build"),
     "attestation_report.current.build"),
    (lambda e: e["attestation_report"]["signature"]["r"].pop(),
     "attestation_report.signature.r"),
    (lambda e: e["attestation_report"].update(key_info=1 << 7), "attestation_report.key_info"),
    # bytes 48-71 of R are zero in every report: the crate would carry them, the bytes cannot
    (lambda e: e["attestation_report"]["signature"]["s"].__setitem__(60, 1),
     "attestation_report"),
    # v2 (no CPUID bytes): this CHIP_ID means the Milan layout, where fmc is null
    (lambda e: e["attestation_report"].update(version=2), "attestation_report.current_tcb.fmc"),
    (lambda e: e["attestation_report"].update(version=4), "attestation_report.launch_mit_vector"),
    (lambda e: e["attestation_report"].update(policy=0), "attestation_report"),
    (lambda e: e.update(cert_chain={}), "cert_chain"),
    (lambda e: e["cert_chain"].append(e["cert_chain"][0]), "cert_chain"),
    (lambda e: e["cert_chain"][0].update(cert_type="Empty"), "cert_chain[0].cert_type"),
    (lambda e: e["cert_chain"][0].update(cert_type="vcek"), "cert_chain[0].cert_type"),
    (lambda e: e["cert_chain"][0].update(cert_type={"OTHER": str(GUID_VCEK)}),
     "cert_chain[0].cert_type.OTHER"),
    (lambda e: e["cert_chain"][0].update(cert_type={"OTHER": "0123ABCD-0000-4000-8000-"
                                                             "00000000BEEF"}),
     "cert_chain[0].cert_type.OTHER"),
    (lambda e: e["cert_chain"][0].update(cert_type={"OTHER": str(uuid.UUID(int=0))}),
     "cert_chain[0].cert_type.OTHER"),
    (lambda e: e["cert_chain"][0].update(data="MIIB"), "cert_chain[0].data"),
])
def test_snp_evidence_refusals_name_the_member(change: Callable[[dict[str, Any]], object],
                                               field: str) -> None:
    with pytest.raises(KbsProtocolError) as info:
        snp_evidence_from_json(json.dumps(_mutated(change)))
    assert info.value.field == field


def test_snp_evidence_to_json_refusals() -> None:
    report = bytearray(REAL_REPORTS["milan-v2-a"])
    report[0x4C] = 1  # a reserved byte the JSON cannot carry
    for bad, certs in ((bytes(report), None), (bytes(report[:-1]), None),
                       (REAL_REPORTS["milan-v2-a"], [("VCEK", b"")]),
                       (REAL_REPORTS["milan-v2-a"], [(str(GUID_VCEK), b""),
                                                     (str(GUID_VCEK), b"")])):
        with pytest.raises(KbsProtocolError):
            snp_evidence_to_json(bad, certs)


def test_the_documented_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key-broker page's wire-format example, run as written (its asserts are part of it)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "kbs.md").read_text()
    section = page.split("## Wire formats and JOSE in Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/kbs.md", "exec"), namespace)
    assert namespace["snp"].report == namespace["report"]


@pytest.mark.parametrize("chip", ["milan", "genoa", "turin"])
def test_a_sevsim_vms_report_and_certificate_table_round_trip(build: Callable[..., Path],
                                                             chip: str) -> None:
    """What a genuine sevsim SNP guest gets from an extended report request (examples/report.c)
    becomes the attester's JSON and comes back as the same report and the same table."""
    vm = Host(chip=chip, seed=b"kbs-" + chip.encode()).create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = bytes(range(64))
    vm.launch()
    assert vm.run(timeout=60).exit_code == 0
    report, table = vm.outputs[0], vm.outputs[1]
    certs = [(str(guid), der) for guid, der in parse_cert_table(table)]
    evidence = snp_evidence_from_json(json.dumps(snp_evidence_to_json(report, certs)))
    assert evidence.report == report
    assert build_cert_table([(uuid.UUID(guid), der) for guid, der in evidence.certs]) == table
    sev = snp_evidence_to_json(report, certs)["attestation_report"]
    assert (sev["current_tcb"]["fmc"] is None) == (chip != "turin")
    assert {entry["cert_type"] for entry in snp_evidence_to_json(report, certs)["cert_chain"]
            if isinstance(entry["cert_type"], str)} >= {"VCEK", "ASK", "ARK"}
