"""The messages of Trustee's key broker protocol (confidential-containers kbs-types), and how
runtime data is bound into a TEE report's REPORT_DATA.

Shapes follow kbs-types (`src/lib.rs` of confidential-containers/kbs-types 0.16, read at
0130f5d: Request, Challenge, TeePubKey, RuntimeData, InitData, CompositeEvidence, Attestation;
Trustee pins 0.18, whose use in `kbs/src/attestation/backend.rs` matches) and Trustee's
`kbs/docs/kbs_attestation_protocol.md`; member names and order are theirs (`to_json` emits
them in that order). Parsing is stricter
than serde's: unknown or duplicate members, wrong JSON types, non-canonical base64url and
points off the curve are refused with `KbsProtocolError`, whose `field` is the JSON path of
the culprit.

Two bindings of the TEE key into REPORT_DATA exist:
- `RuntimeData.report_data()`: SHA-384 of the RFC 8785 canonical JSON of `runtime-data`
  (`{"nonce", "tee-pubkey"}`), zero-padded to 64 bytes: sevsim's rule (issue 13), also what
  Trustee checked before composite evidence.
- `Attestation.report_data(hash_name)`: what Trustee checks today (kbs `attestation/backend.rs`,
  guest-components `kbs_protocol/src/client/rcar_client.rs`): the canonical JSON of
  `{"tee-pubkey", "nonce", "additional-evidence"}` (the last one the string the client sent
  in `tee-evidence.additional_evidence`, often ""), hashed with the challenge's
  `extra-params.selected-hash-algorithm` (SHA-384 when absent), zero-padded to 64 bytes as the
  SNP attester pads it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.snp_report import OFFSETS
from sevsim.errors import KbsProtocolError

KBS_PROTOCOL_VERSION = "0.4.0"  # what Trustee's KBS accepts today (an exact semver match)
TEES = ("az-snp-vtpm", "az-tdx-vtpm", "nvidia", "sgx", "snp", "tdx", "cca", "csv", "se",
        "hygondcu", "tpm", "sample", "sampledevice")
HASH_ALGORITHMS = ("sha256", "sha384", "sha512")  # kbs-types HashAlgorithm, lower case
DEFAULT_HASH_ALGORITHM = "sha384"
SELECTED_HASH_ALGORITHM = "selected-hash-algorithm"  # member of Challenge.extra_params
REPORT_DATA_SIZE = 64
INIT_DATA_FORMATS = ("toml", "json")  # what kbs-types names; the initdata spec's is toml
HOST_DATA_SIZE = OFFSETS["host_data"][1]  # the SNP report's HOST_DATA, set at launch
# JWK curve -> (coordinate size, cryptography curve); the key-wrap algorithms per key type
EC_CURVES: dict[str, tuple[int, ec.EllipticCurve]] = {
    "P-256": (32, ec.SECP256R1()), "P-384": (48, ec.SECP384R1()), "P-521": (66, ec.SECP521R1())}
EC_ALGORITHMS = ("ECDH-ES+A256KW",)
RSA_ALGORITHMS = ("RSA-OAEP-256", "RSA1_5")
RSA_MIN_BITS = 2048
MAX_MESSAGE = 1 << 22  # bytes of JSON one message may take (a report and its certificates fit)

Json = Any  # any value json.loads returns
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# -- JSON reading ---------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Json]]) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for key, value in pairs:
        if key in out:
            raise KbsProtocolError("json", f"member {key!r} appears twice in one object")
        out[key] = value
    return out


def _refuse_constant(name: str) -> None:
    raise KbsProtocolError("json", f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if abs(value) == float("inf"):  # 1e400: Python reads inf, which has no JSON spelling
        raise KbsProtocolError("json", f"{text} does not fit a double")
    return value


def load_json(data: bytes | str | dict[str, Json], field: str) -> dict[str, Json]:
    """A JSON object from bytes, text or an already-parsed dict; strict JSON (no NaN or
    infinity, no duplicate members) whose top level must be an object."""
    if isinstance(data, dict):
        return data
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_MESSAGE:
            raise KbsProtocolError(field, f"is {len(data)} bytes, more than {MAX_MESSAGE}")
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise KbsProtocolError(field, "is not UTF-8") from None
    if not isinstance(data, str):
        raise KbsProtocolError(field, f"is a {type(data).__name__}, not JSON")
    if len(data) > MAX_MESSAGE:
        raise KbsProtocolError(field, f"is {len(data)} characters, more than {MAX_MESSAGE}")
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates,
                           parse_constant=_refuse_constant, parse_float=_finite)
    except KbsProtocolError as err:  # a duplicate member or a number, from the hooks above
        raise KbsProtocolError(field, str(err).partition(": ")[2]) from None
    except (ValueError, RecursionError) as err:
        raise KbsProtocolError(field, f"is not JSON ({err})") from None
    return _object(value, field)


def _object(value: Json, field: str) -> dict[str, Json]:
    if not isinstance(value, dict):
        raise KbsProtocolError(field, f"is {_kind(value)}, not an object")
    return value


def _kind(value: Json) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                     type(value).__name__)


def members(obj: dict[str, Json], field: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> None:
    """Refuse a missing required member or one not in either list."""
    prefix = f"{field}." if field else ""
    for name in required:
        if name not in obj:
            raise KbsProtocolError(prefix + name, "is missing")
    for name in obj:
        if name not in required and name not in optional:
            raise KbsProtocolError(prefix + str(name), "is not a member of this message")


def string(obj: dict[str, Json], name: str, field: str) -> str:
    """The string member `name` of `obj`."""
    value = obj[name]
    where = f"{field}.{name}" if field else name
    if not isinstance(value, str):
        raise KbsProtocolError(where, f"is {_kind(value)}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's \ud800 escapes decode to lone surrogates
        raise KbsProtocolError(where, "holds a lone UTF-16 surrogate") from None
    return value


def b64url_decode(text: str, field: str) -> bytes:
    """Unpadded base64url (RFC 7515 §2) in its one canonical spelling."""
    if not _B64URL.issuperset(text) or len(text) % 4 == 1:
        raise KbsProtocolError(field, "is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error
        raise KbsProtocolError(field, "is not unpadded base64url") from None
    if b64url_encode(raw) != text:
        raise KbsProtocolError(field, "is not canonical base64url (stray low bits)")
    return raw


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url of `raw`."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _pad(digest: bytes) -> bytes:
    return digest.ljust(REPORT_DATA_SIZE, b"\0")


def hash_report_data(hash_name: str, material: Json) -> bytes:
    """`hash_name` over the RFC 8785 canonical JSON of `material`, zero-padded to 64 bytes."""
    name = hash_name.lower()
    if name not in HASH_ALGORITHMS:
        raise KbsProtocolError(SELECTED_HASH_ALGORITHM,
                               f"{hash_name!r} is not one of {HASH_ALGORITHMS}")
    try:
        canonical = rfc8785.dumps(material)
    except rfc8785.CanonicalizationError as err:  # a lone surrogate, a number JCS refuses
        raise KbsProtocolError("runtime-data", f"has no RFC 8785 form: {err}") from None
    return _pad(hashlib.new(name, canonical).digest())


# -- messages -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """`POST /kbs/v0/auth`: the client's protocol version, its TEE and extra parameters
    (guest-components sends `{"supported-hash-algorithms": [...]}`)."""

    version: str
    tee: str
    extra_params: Json

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json]) -> Request:
        """Strict parse."""
        obj = load_json(data, "request")
        members(obj, "", ("version", "tee", "extra-params"))
        tee = string(obj, "tee", "")
        if tee not in TEES:
            raise KbsProtocolError("tee", f"{tee!r} is not one of {TEES}")
        return cls(string(obj, "version", ""), tee, obj["extra-params"])

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order."""
        return {"version": self.version, "tee": self.tee, "extra-params": self.extra_params}


@dataclass(frozen=True)
class Challenge:
    """The answer to a Request: the nonce the evidence must bind, and extra parameters
    (`selected-hash-algorithm` among them)."""

    nonce: str
    extra_params: Json

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json]) -> Challenge:
        """Strict parse; a `selected-hash-algorithm` must be one of HASH_ALGORITHMS."""
        obj = load_json(data, "challenge")
        members(obj, "", ("nonce", "extra-params"))
        challenge = cls(string(obj, "nonce", ""), obj["extra-params"])
        challenge.hash_algorithm()
        return challenge

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order."""
        return {"nonce": self.nonce, "extra-params": self.extra_params}

    def hash_algorithm(self) -> str:
        """The hash the client must bind runtime data with (guest-components'
        get_hash_algorithm): `extra-params.selected-hash-algorithm`, case-insensitive,
        SHA-384 when the member (or an object extra-params) is absent."""
        if not isinstance(self.extra_params, dict) or \
                SELECTED_HASH_ALGORITHM not in self.extra_params:
            return DEFAULT_HASH_ALGORITHM
        field = f"extra-params.{SELECTED_HASH_ALGORITHM}"
        value = string(self.extra_params, SELECTED_HASH_ALGORITHM, "extra-params").lower()
        if value not in HASH_ALGORITHMS:
            raise KbsProtocolError(field, f"{value!r} is not one of {HASH_ALGORITHMS}")
        return value


@dataclass(frozen=True)
class EcPublicJwk:
    """An EC public key as a JWK (RFC 7518 §6.2): coordinates as unpadded base64url of their
    fixed-size big-endian bytes, exactly as received (the canonical JSON hashes that text)."""

    crv: str
    x: str
    y: str
    alg: str = "ECDH-ES+A256KW"

    def __post_init__(self) -> None:
        self.public_key()

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePublicKey) -> EcPublicJwk:
        """The JWK of a `cryptography` EC public key on a supported curve."""
        for crv, (size, curve) in EC_CURVES.items():
            if curve.name == key.curve.name:
                numbers = key.public_numbers()
                return cls(crv, b64url_encode(numbers.x.to_bytes(size, "big")),
                           b64url_encode(numbers.y.to_bytes(size, "big")))
        raise KbsProtocolError("crv", f"{key.curve.name} is not one of {tuple(EC_CURVES)}")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key as `cryptography` holds it; KbsProtocolError for a bad curve, coordinate
        size, algorithm or a point off the curve."""
        if self.crv not in EC_CURVES:
            raise KbsProtocolError("crv", f"{self.crv!r} is not one of "
                                   f"{tuple(EC_CURVES)}")
        if self.alg not in EC_ALGORITHMS:
            raise KbsProtocolError("alg", f"{self.alg!r} is not one of {EC_ALGORITHMS}")
        size, curve = EC_CURVES[self.crv]
        x, y = (int.from_bytes(self._coordinate(name, size), "big") for name in ("x", "y"))
        try:
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except ValueError:
            raise KbsProtocolError("x", f"(x, y) is not a point on {self.crv}") from None

    def _coordinate(self, name: str, size: int) -> bytes:
        raw = b64url_decode(getattr(self, name), name)
        if len(raw) != size:
            raise KbsProtocolError(name, f"is {len(raw)} bytes, not {size} for {self.crv}")
        return raw

    def to_json(self) -> dict[str, Json]:
        """kbs-types' TeePubKey::EC member order (the `kty` tag first)."""
        return {"kty": "EC", "crv": self.crv, "alg": self.alg, "x": self.x, "y": self.y}


@dataclass(frozen=True)
class RsaPublicJwk:
    """An RSA public key as a JWK (RFC 7518 §6.3): modulus and exponent as unpadded
    base64url of their minimal big-endian bytes."""

    n: str
    e: str
    alg: str = "RSA-OAEP-256"

    def __post_init__(self) -> None:
        self.numbers()

    def numbers(self) -> tuple[int, int]:
        """(modulus, exponent); KbsProtocolError for a short or even modulus, a bad exponent,
        leading zero bytes or an unknown algorithm."""
        if self.alg not in RSA_ALGORITHMS:
            raise KbsProtocolError("alg", f"{self.alg!r} is not one of "
                                   f"{RSA_ALGORITHMS}")
        values = []
        for name in ("n", "e"):
            raw = b64url_decode(getattr(self, name), name)
            if not raw or raw[0] == 0:
                raise KbsProtocolError(name, "must be minimal big-endian bytes")
            values.append(int.from_bytes(raw, "big"))
        n, e = values
        if n.bit_length() < RSA_MIN_BITS or n % 2 == 0:
            raise KbsProtocolError("n", f"is not an odd modulus of at least "
                                   f"{RSA_MIN_BITS} bits")
        if e < 3 or e % 2 == 0 or e >= n:
            raise KbsProtocolError("e", "is not an odd exponent between 3 and n")
        return n, e

    def to_json(self) -> dict[str, Json]:
        """kbs-types' TeePubKey::RSA member order (the `kty` tag first)."""
        return {"kty": "RSA", "alg": self.alg, "n": self.n, "e": self.e}


PublicJwk = EcPublicJwk | RsaPublicJwk


def parse_jwk(obj: Json, field: str = "tee-pubkey") -> PublicJwk:
    """A TEE public key JWK (`kty` EC or RSA) with exactly kbs-types' members."""
    obj = _object(obj, field)
    members(obj, field, ("kty",), ("crv", "alg", "x", "y", "n", "e"))
    kty = string(obj, "kty", field)
    names = {"EC": ("kty", "crv", "alg", "x", "y"), "RSA": ("kty", "alg", "n", "e")}.get(kty)
    if names is None:
        raise KbsProtocolError(f"{field}.kty", f"{kty!r} is not EC or RSA")
    members(obj, field, names)
    values = {name: string(obj, name, field) for name in names[1:]}
    try:
        return EcPublicJwk(**values) if kty == "EC" else RsaPublicJwk(**values)
    except KbsProtocolError as err:  # the key's own checks name a member: give its path
        raise KbsProtocolError(f"{field}.{err.field}", str(err).partition(": ")[2]) from None


@dataclass(frozen=True)
class RuntimeData:
    """`runtime-data`: the challenge's nonce and the TEE's ephemeral public key."""

    nonce: str
    tee_pubkey: PublicJwk

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json],
                  field: str = "runtime-data") -> RuntimeData:
        """Strict parse."""
        obj = load_json(data, field)
        members(obj, field, ("nonce", "tee-pubkey"))
        return cls(string(obj, "nonce", field), parse_jwk(obj["tee-pubkey"],
                                                          f"{field}.tee-pubkey"))

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order."""
        return {"nonce": self.nonce, "tee-pubkey": self.tee_pubkey.to_json()}

    def report_data(self) -> bytes:
        """SHA-384 of the RFC 8785 canonical JSON of this runtime-data, zero-padded to 64
        bytes: what REPORT_DATA must hold (issue 13's binding)."""
        return hash_report_data("sha384", self.to_json())


@dataclass(frozen=True)
class InitData:
    """`init-data`: a measured configuration document (its digest goes to HOST_DATA)."""

    format: str
    body: str

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json],
                  field: str = "init-data") -> InitData:
        """Strict parse; `format` is toml or json."""
        obj = load_json(data, field)
        members(obj, field, ("format", "body"))
        fmt = string(obj, "format", field)
        if fmt not in INIT_DATA_FORMATS:
            raise KbsProtocolError(f"{field}.format", f"{fmt!r} is not one of "
                                   f"{INIT_DATA_FORMATS}")
        return cls(fmt, string(obj, "body", field))

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order."""
        return {"format": self.format, "body": self.body}

    def digest(self) -> bytes:
        """The init-data digest (guest-components' initdata spec, as Trustee checks it): the
        body is TOML with a string `version`, an `algorithm` (sha256, sha384 or sha512) and a
        `[data]` table of strings; the digest is that algorithm over the body's UTF-8 bytes
        exactly as sent, so whitespace and comments count. KbsProtocolError (`field` under
        `init-data`) for another format, TOML that does not parse or lacks those members, or
        another algorithm."""
        return hashlib.new(self.document()["algorithm"], self.body.encode("utf-8")).digest()

    def document(self) -> dict[str, Json]:
        """The body parsed and checked as `digest` describes (its `data` table is what a
        token's `init_data_claims` carry)."""
        if self.format != "toml":
            raise KbsProtocolError("init-data.format", f"{self.format!r}: the initdata "
                                   "digest is defined for 'toml' bodies only")
        try:
            self.body.encode("utf-8")
            doc = tomllib.loads(self.body)
        except UnicodeEncodeError:
            raise KbsProtocolError("init-data.body", "holds a lone UTF-16 surrogate") from None
        except tomllib.TOMLDecodeError as err:
            raise KbsProtocolError("init-data.body", f"is not TOML ({err})") from None
        for name, kind in (("version", str), ("algorithm", str), ("data", dict)):
            if not isinstance(doc.get(name), kind):
                raise KbsProtocolError(f"init-data.body.{name}", "is missing or not a "
                                       f"{'table' if kind is dict else 'string'}")
        for key, value in doc["data"].items():
            if not isinstance(value, str):
                raise KbsProtocolError(f"init-data.body.data.{key}", "is not a string")
        if doc["algorithm"] not in HASH_ALGORITHMS:
            raise KbsProtocolError("init-data.body.algorithm", f"{doc['algorithm']!r} is not "
                                   f"one of {HASH_ALGORITHMS}")
        return doc

    def host_data(self) -> bytes:
        """What an SNP report's HOST_DATA holds for this init-data: the digest regularized
        to 32 bytes as Trustee's verifier does (zero-padded if shorter, SHA-384 and SHA-512
        cut to their first 32 bytes)."""
        return self.digest()[:HOST_DATA_SIZE].ljust(HOST_DATA_SIZE, b"\0")


@dataclass(frozen=True)
class TeeEvidence:
    """`tee-evidence` (kbs-types CompositeEvidence): the primary TEE's evidence (any JSON;
    for SNP see `sevsim.abi.kbs_snp`) and the additional devices' evidence as a JSON string,
    "" when there is none."""

    primary: Json
    additional: str = ""

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json],
                  field: str = "tee-evidence") -> TeeEvidence:
        """Strict parse; a non-empty `additional_evidence` must be the JSON text of an
        object (Trustee decodes it as a map from TEE to evidence)."""
        obj = load_json(data, field)
        members(obj, field, ("primary_evidence", "additional_evidence"))
        additional = string(obj, "additional_evidence", field)
        if additional:
            load_json(additional, f"{field}.additional_evidence")
        return cls(obj["primary_evidence"], additional)

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order."""
        return {"primary_evidence": self.primary, "additional_evidence": self.additional}


@dataclass(frozen=True)
class Attestation:
    """`POST /kbs/v0/attest`: runtime data, optional init data, and the evidence."""

    runtime_data: RuntimeData
    init_data: InitData | None
    tee_evidence: TeeEvidence

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Json]) -> Attestation:
        """Strict parse; `init-data` may be absent or null."""
        obj = load_json(data, "attestation")
        members(obj, "", ("runtime-data", "tee-evidence"), ("init-data",))
        raw_init = obj.get("init-data")
        init = None if raw_init is None else InitData.from_json(_object(raw_init, "init-data"))
        return cls(RuntimeData.from_json(_object(obj["runtime-data"], "runtime-data")), init,
                   TeeEvidence.from_json(_object(obj["tee-evidence"], "tee-evidence")))

    def to_json(self) -> dict[str, Json]:
        """kbs-types' member order (serde writes a missing init-data as null)."""
        return {"init-data": None if self.init_data is None else self.init_data.to_json(),
                "runtime-data": self.runtime_data.to_json(),
                "tee-evidence": self.tee_evidence.to_json()}

    def report_data(self, hash_name: str = DEFAULT_HASH_ALGORITHM) -> bytes:
        """Trustee's current binding: `hash_name` (the challenge's selected algorithm) over
        the canonical JSON of {tee-pubkey, nonce, additional-evidence}, zero-padded to 64."""
        return hash_report_data(hash_name, {
            "tee-pubkey": self.runtime_data.tee_pubkey.to_json(),
            "nonce": self.runtime_data.nonce,
            "additional-evidence": self.tee_evidence.additional})
