"""The KBS administrator's credential: an Ed25519 key pair, as Trustee's KBS uses.

The operator keeps the private key and gives the server only the public key. Each admin
request carries a JWT (alg Ed25519) the administrator signed a moment before, with `iat` and `exp`
at most `MAX_LIFETIME_S` apart, so a token that leaks (a proxy log, a shell history) is worth
little: nothing long-lived ever crosses the wire, and the server holds no secret to steal.
Tokens labelled "EdDSA", as Trustee's kbs-client signs them (RFC 8037), are accepted too: with
the admin's key fixed to Ed25519, "EdDSA" names exactly the same signature.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSAlgModel, JWSRegistry

from sevsim.errors import KbsAdminAuthError
from sevsim.inputs import MAX_KEY_FILE, read_bounded

DEFAULT_LIFETIME_S = 60
MAX_LIFETIME_S = 300  # the longest an admin token may live: a leaked one soon expires
CLOCK_SKEW_S = 30  # how far the admin's clock may run ahead of the server's
ALGORITHM = "Ed25519"  # RFC 9864: fully specified (Trustee's "EdDSA" is deprecated)
TRUSTEE_ALGORITHM = "EdDSA"


class Ed25519AsEdDSA(JWSAlgModel):
    """RFC 8037's "EdDSA" restricted to Ed25519 keys, for verifying only. RFC 9864 deprecates
    the name because it leaves the curve open (joserfc warns on it); the admin's key here
    is always Ed25519, so nothing is left open."""

    name = TRUSTEE_ALGORITHM
    description = "EdDSA with an Ed25519 key (verification of Trustee's admin tokens)"
    key_type = "OKP"

    def sign(self, msg: bytes, key: OKPKey) -> bytes:
        """Never: sevsim's own tokens name Ed25519."""
        raise NotImplementedError("sevsim signs admin tokens with alg Ed25519")

    def verify(self, msg: bytes, sig: bytes, key: OKPKey) -> bool:
        """The Ed25519 signature check, for an Ed25519 key only."""
        return isinstance(key.get_op_key("verify"), Ed25519PublicKey) and (
            JWSRegistry.algorithms[ALGORITHM].verify(msg, sig, key))


class AdminTokenRegistry(JWSRegistry):
    """The algorithms an admin token may name: Ed25519, and Trustee's "EdDSA"."""

    algorithms = {  # noqa: RUF012 (joserfc's registries keep their algorithms here)
        ALGORITHM: JWSRegistry.algorithms[ALGORITHM], TRUSTEE_ALGORITHM: Ed25519AsEdDSA()}


def generate_admin_key() -> Ed25519PrivateKey:
    """A fresh administrator key pair (`sevsim kbs admin keygen`)."""
    return Ed25519PrivateKey.generate()


def load_admin_private_key(path: Path) -> Ed25519PrivateKey:
    """The administrator's Ed25519 private key from a PEM file (PKCS#8, unencrypted)."""
    try:
        key = serialization.load_pem_private_key(
            read_bounded(path, MAX_KEY_FILE, "a PEM key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KbsAdminAuthError("admin-key", f"{path}: not an unencrypted PEM private key "
                                f"({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KbsAdminAuthError("admin-key", f"{path} holds a {type(key).__name__}, not an "
                                "Ed25519 private key")
    return key


def load_admin_public_key(path: Path) -> Ed25519PublicKey:
    """The administrator's Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(read_bounded(path, MAX_KEY_FILE, "a PEM key"))
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KbsAdminAuthError("admin-key", f"{path}: not a PEM public key ({error})"
                                ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KbsAdminAuthError("admin-key", f"{path} holds a {type(key).__name__}, not an "
                                "Ed25519 public key")
    return key


def issue_admin_token(key: Ed25519PrivateKey, lifetime_s: int = DEFAULT_LIFETIME_S,
                      now: float | None = None) -> str:
    """A compact JWT (Ed25519) valid for `lifetime_s` seconds from `now` (default: the time)."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise KbsAdminAuthError("admin-token", f"lifetime {lifetime_s} s is outside "
                                f"1..{MAX_LIFETIME_S}")
    issued = int(time.time() if now is None else now)
    claims = {"iat": issued, "exp": issued + lifetime_s}
    return jwt.encode({"alg": ALGORITHM}, claims, OKPKey.import_key(key),
                      algorithms=[ALGORITHM])


def verify_admin_token(key: Ed25519PublicKey, token: str, now: float | None = None) -> None:
    """Accept `token` only if `key` signed it and it is valid at `now`: `iat` and `exp`
    present, `exp - iat` at most MAX_LIFETIME_S, `iat` not in the future (beyond
    CLOCK_SKEW_S), `exp` not past. KbsAdminAuthError naming what failed otherwise."""
    try:
        decoded = jwt.decode(token, OKPKey.import_key(key), registry=AdminTokenRegistry(
            algorithms=[ALGORITHM, TRUSTEE_ALGORITHM]))
    except (JoseError, ValueError) as error:
        raise KbsAdminAuthError("admin-token", f"not a JWT the admin key signed "
                                f"({type(error).__name__})") from None
    claims = decoded.claims
    issued, expires = claims.get("iat"), claims.get("exp")
    if not (type(issued) is int and type(expires) is int):
        raise KbsAdminAuthError("admin-token", "iat and exp must be integers")
    at = time.time() if now is None else now
    if expires - issued > MAX_LIFETIME_S:
        raise KbsAdminAuthError("admin-token", f"lives {expires - issued} s; at most "
                                f"{MAX_LIFETIME_S} s")
    if issued > at + CLOCK_SKEW_S:
        raise KbsAdminAuthError("admin-token", "issued in the future")
    if expires <= at:
        raise KbsAdminAuthError("admin-token", "expired")
