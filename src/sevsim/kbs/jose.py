"""JOSE for the key broker, on joserfc: resources leave the KBS as a flattened JWE encrypted to
the TEE's key from `runtime-data`, and attestation tokens are JWTs the KBS signs.

The JWE is what Trustee's KBS sends (`kbs/src/jwe`): every header member (`alg`, `enc`, and
for ECDH-ES the ephemeral `epk`) in the protected header, members in kbs-types' Response
order, no `aad` member; key management ECDH-ES+A256KW (EC keys) or RSA-OAEP-256 (RSA keys),
content A256GCM. RSA1_5 is parsed by `abi.kbs` (the protocol lists it) but refused here:
PKCS #1 v1.5 key transport invites padding oracles. Every failure is a `KbsCryptoError`.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe as joserfc_jwe
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jwt import JWTClaimsRegistry

from sevsim.abi.kbs import EcPublicJwk, PublicJwk
from sevsim.errors import KbsCryptoError, KbsProtocolError

CONTENT_ENCRYPTION = "A256GCM"
KEY_MANAGEMENT = {"EC": "ECDH-ES+A256KW", "RSA": "RSA-OAEP-256"}
JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")  # kbs-types order
TOKEN_ALGORITHM = "ES256"
TOKEN_CLAIMS = ("iat", "nbf", "exp")  # set by issue(), checked by verify()


def _alg(jwk: PublicJwk) -> str:
    kty = "EC" if isinstance(jwk, EcPublicJwk) else "RSA"
    if jwk.alg != KEY_MANAGEMENT[kty]:
        raise KbsCryptoError(f"key management {jwk.alg!r} is not supported for {kty} keys; "
                             f"use {KEY_MANAGEMENT[kty]}")
    return jwk.alg


def encrypt_to_tee(jwk: PublicJwk, plaintext: bytes) -> dict[str, str]:
    """`plaintext` as a flattened JWE to the TEE key `jwk` (the JWK's `alg` picks the key
    management; A256GCM content encryption under a fresh key)."""
    alg = _alg(jwk)
    try:
        key: ECKey | RSAKey
        if isinstance(jwk, EcPublicJwk):
            key = ECKey.import_key(jwk.public_key())
        else:
            n, e = jwk.numbers()
            key = RSAKey.import_key(rsa.RSAPublicNumbers(e, n).public_key())
        compact = joserfc_jwe.encrypt_compact({"alg": alg, "enc": CONTENT_ENCRYPTION},
                                              plaintext, key,
                                              algorithms=[alg, CONTENT_ENCRYPTION])
    except (JoseError, KbsProtocolError, ValueError) as err:
        raise KbsCryptoError(f"cannot encrypt to this key: {err}") from None
    return dict(zip(JWE_MEMBERS, compact.split("."), strict=True))


def decrypt_jwe(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                jwe: dict[str, Any]) -> bytes:
    """The plaintext of a flattened JWE made for `private_key` (the TEE's side), in the form
    Trustee sends: the five members of JWE_MEMBERS, every header member protected, no `aad`.
    Only the algorithm its key type takes and A256GCM are accepted; anything else, a wrong
    key or a changed byte is a KbsCryptoError."""
    if not isinstance(jwe, dict) or set(jwe) != set(JWE_MEMBERS) or \
            not all(isinstance(value, str) and "." not in value for value in jwe.values()):
        raise KbsCryptoError(f"a JWE from the KBS has exactly the string members {JWE_MEMBERS}")
    key: ECKey | RSAKey
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        alg, key = KEY_MANAGEMENT["EC"], ECKey.import_key(private_key)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        alg, key = KEY_MANAGEMENT["RSA"], RSAKey.import_key(private_key)
    else:
        raise KbsCryptoError(f"a {type(private_key).__name__} is not an EC or RSA private key")
    # The compact form authenticates the protected header exactly as sent (joserfc's JSON
    # path re-serialises it, which breaks the tag for any other spelling of the same header).
    compact = ".".join(jwe[name] for name in JWE_MEMBERS)
    try:
        result = joserfc_jwe.decrypt_compact(compact, key, algorithms=[alg, CONTENT_ENCRYPTION])
    except (JoseError, ValueError, TypeError, KeyError) as err:
        raise KbsCryptoError(f"the JWE does not decrypt under this key: {err!r}") from None
    assert result.plaintext is not None
    return result.plaintext


class TokenSigner:
    """Issues and checks the KBS's attestation tokens: JWTs signed ES256 with a P-256 key,
    with iat, nbf and exp set from the lifetime."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or \
                private_key.curve.name != "secp256r1":
            raise KbsCryptoError("the token key must be an EC P-256 private key (ES256)")
        self._key = ECKey.import_key(private_key)
        self._public = ECKey.import_key(private_key.public_key())
        self._kid = self._public.thumbprint()

    def public_jwk(self) -> dict[str, Any]:
        """The verification key as a JWK, with its RFC 7638 thumbprint as `kid`."""
        return {**self._public.as_dict(), "alg": TOKEN_ALGORITHM, "use": "sig",
                "kid": self._kid}

    def issue(self, claims: dict[str, Any], lifetime_s: int, now: int | None = None) -> str:
        """A signed token holding `claims` plus iat/nbf (`now`, the clock by default) and
        exp (`now + lifetime_s`)."""
        if lifetime_s <= 0:
            raise KbsCryptoError(f"a token lifetime of {lifetime_s} s is not positive")
        clash = set(TOKEN_CLAIMS) & set(claims)
        if clash:
            raise KbsCryptoError(f"the claims {sorted(clash)} are the signer's to set")
        issued = int(time.time()) if now is None else now
        body = {**claims, "iat": issued, "nbf": issued, "exp": issued + lifetime_s}
        try:
            return jwt.encode({"alg": TOKEN_ALGORITHM, "kid": self._kid}, body, self._key,
                              algorithms=[TOKEN_ALGORITHM])
        except (JoseError, TypeError, ValueError) as err:
            raise KbsCryptoError(f"cannot sign these claims: {err}") from None

    def verify(self, token: str, now: int | None = None) -> dict[str, Any]:
        """The claims of a token this signer issued, checked: ES256 only, the signature, and
        nbf <= now < exp (`now` the clock by default)."""
        if not isinstance(token, str) or not token.isascii():
            raise KbsCryptoError("a token is ASCII text")
        try:
            decoded = jwt.decode(token, self._public, algorithms=[TOKEN_ALGORITHM])
            options = {name: {"essential": True} for name in TOKEN_CLAIMS}
            JWTClaimsRegistry(now=now, **options).validate(  # type: ignore[arg-type]
                decoded.claims)
        except (JoseError, ValueError, TypeError) as err:
            raise KbsCryptoError(f"the token is not valid: {err!r}") from None
        return dict(decoded.claims)

