"""`sevsim guest sign`: append a PKCS#7 signature to a guest program, as Linux's sign-file
signs a kernel module.

The signature is detached (the content is the unsigned file), binary (no MIME line-ending
conversion) and without signed attributes, as sign-file makes it, so `openssl cms -verify
-binary -content UNSIGNED` checks it; unlike sign-file it carries the signer's certificate,
so a db holding only the issuing CA still verifies it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from sevsim.abi import module_signature
from sevsim.errors import ImageSignatureError

__all__ = ["sign_program"]


def _certificate(cert: bytes) -> x509.Certificate:
    try:
        return (x509.load_pem_x509_certificate(cert) if b"-----BEGIN" in cert
                else x509.load_der_x509_certificate(cert))
    except ValueError as err:
        raise ImageSignatureError("certificate", f"not a PEM or DER certificate: {err}"
                                  ) from None


def sign_program(program: bytes, key_pem: bytes, cert: bytes) -> bytes:
    """`program` with a SHA-256 PKCS#7 signature by `key_pem` (an RSA or ECDSA private key in
    PEM) for `cert` (PEM or DER) appended; a signed program is signed again from its unsigned
    bytes, so re-signing replaces the old signature."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ImageSignatureError("key", f"not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ImageSignatureError("key", "secure boot signs with RSA or ECDSA keys")
    certificate = _certificate(cert)
    if certificate.public_key() != key.public_key():
        raise ImageSignatureError("certificate", "its public key is not the signing key's")
    signed = module_signature.split(program)
    content = program if signed is None else signed.content
    der = (pkcs7.PKCS7SignatureBuilder().set_data(content)
           .add_signer(certificate, key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                              pkcs7.PKCS7Options.Binary,
                                              pkcs7.PKCS7Options.NoAttributes]))
    return module_signature.append(content, der)
