"""AMD's legacy SEV certificate formats, byte for byte (spec-formats.md §9.4).

Two formats: the 0x824-byte SEV certificate of the platform keys (PEK, PDH, OCA, CEK; also a
guest owner's GODH), and AMD's variable-length RSA signing-key certificate (ARK, ASK). Every
integer is little-endian, the big ones included. Parsing is strict: reserved bytes and the
padding after a key or a signature must be zero, so that no byte of a certificate can change
without either the parse or a signature check failing. Nothing here checks a signature or
that a point lies on its curve (the firmware of CVE-2019-9836 did not either); the helpers
convert to and from `cryptography` keys and signatures for code that does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sevsim.errors import SevCertFormatError

SEV_CERT_SIZE = 0x824
CERT_CHAIN_SIZE = 3 * SEV_CERT_SIZE  # PDH_CERT_EXPORT's chain buffer: PEK, OCA, CEK
SIGNED_SIZE = 0x414  # version through public key: what both signatures cover
PUBKEY_SIZE = 0x404
SIG_SIZE = 512
EC_COORD_SIZE = 72  # QX, QY, R and S are 72-byte little-endian fields
RSA_MAX_BITS = 4096
_HEAD = struct.Struct("<IBBHII")  # version, api major, api minor, reserved, usage, algo
_SLOT = struct.Struct("<II")  # signature usage, algo
_SIG1, _SIG2 = 0x414, 0x61C
_AMD_HEAD = struct.Struct("<I16s16sI16sII")  # version, key id, certifying id, usage, rsvd, sizes
AMD_KEY_BITS = (2048, 4096)  # Naples; Rome and later


class Usage(IntEnum):
    """PUB_KEY_USAGE and SIGx_USAGE values."""

    ARK = 0x0
    ASK = 0x13
    INVALID = 0x1000  # an empty signature slot
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class Algo(IntEnum):
    """PUB_KEY_ALGO and SIGx_ALGO values; the hash comes from here, never from the curve."""

    INVALID = 0x0
    RSA_SHA256 = 0x1
    ECDSA_SHA256 = 0x2
    ECDH_SHA256 = 0x3
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103

    @property
    def is_rsa(self) -> bool:
        """Whether the algorithm is an RSA one."""
        return self in (Algo.RSA_SHA256, Algo.RSA_SHA384)

    @property
    def is_ec(self) -> bool:
        """Whether the algorithm is an elliptic-curve one (ECDSA or ECDH)."""
        return self in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384, Algo.ECDH_SHA256, Algo.ECDH_SHA384)

    @property
    def is_ecdsa(self) -> bool:
        """Whether the algorithm is ECDSA."""
        return self in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384)

    def hash(self) -> hashes.HashAlgorithm:
        """The hash the algorithm signs with."""
        if self in (Algo.RSA_SHA256, Algo.ECDSA_SHA256, Algo.ECDH_SHA256):
            return hashes.SHA256()
        if self in (Algo.RSA_SHA384, Algo.ECDSA_SHA384, Algo.ECDH_SHA384):
            return hashes.SHA384()
        raise SevCertFormatError("the INVALID algorithm has no hash")


class Curve(IntEnum):
    """The CURVE field of an EC public key."""

    P256 = 1
    P384 = 2

    def curve(self) -> ec.EllipticCurve:
        """The `cryptography` curve for this field value."""
        return ec.SECP256R1() if self is Curve.P256 else ec.SECP384R1()

    @property
    def size(self) -> int:
        """Bytes of a coordinate or scalar."""
        return 32 if self is Curve.P256 else 48


def _enum(kind: type[IntEnum], value: int, what: str) -> int:
    try:
        return kind(value)
    except ValueError:
        raise SevCertFormatError(f"{what} 0x{value:x} is not one AMD defines") from None


def _le(blob: bytes) -> int:
    return int.from_bytes(blob, "little")


def _to_le(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 1 << 8 * size:
        raise SevCertFormatError(f"{what} does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def _zero(blob: bytes, what: str) -> None:
    if any(blob):
        raise SevCertFormatError(f"{what} must be zero")


# -- public keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EcPublicKey:
    """CURVE u32, QX[72], QY[72] (little-endian), zero padding to 0x404 bytes.

    The point is kept as the raw integers: a point off the curve is representable, as it
    was to the firmware of CVE-2019-9836."""

    curve: Curve
    qx: int
    qy: int

    def to_bytes(self) -> bytes:
        """The public key field of a certificate."""
        return (struct.pack("<I", self.curve) + _to_le(self.qx, EC_COORD_SIZE, "QX")
                + _to_le(self.qy, EC_COORD_SIZE, "QY")).ljust(PUBKEY_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, blob: bytes) -> EcPublicKey:
        """Parse an EC public key field."""
        (curve,) = struct.unpack_from("<I", blob)
        _zero(blob[4 + 2 * EC_COORD_SIZE:], "padding after the EC point")
        return cls(Curve(_enum(Curve, curve, "curve")), _le(blob[4:4 + EC_COORD_SIZE]),
                   _le(blob[4 + EC_COORD_SIZE:4 + 2 * EC_COORD_SIZE]))

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePublicKey) -> EcPublicKey:
        """The field for a `cryptography` key."""
        curves = {"secp256r1": Curve.P256, "secp384r1": Curve.P384}
        if key.curve.name not in curves:
            raise SevCertFormatError(f"curve {key.curve.name} has no SEV certificate id")
        numbers = key.public_numbers()
        return cls(curves[key.curve.name], numbers.x, numbers.y)

    def to_key(self) -> ec.EllipticCurvePublicKey:
        """The key as `cryptography` checks it; ValueError when the point is off the curve."""
        return ec.EllipticCurvePublicNumbers(self.qx, self.qy, self.curve.curve()).public_key()


@dataclass(frozen=True)
class RsaPublicKey:
    """MODULUS_SIZE u32 (bits), PUB_EXP[512], MODULUS[512], little-endian."""

    modulus_bits: int
    exponent: int
    modulus: int

    def to_bytes(self) -> bytes:
        """The public key field of a certificate."""
        return (struct.pack("<I", self.modulus_bits) + _to_le(self.exponent, 512, "exponent")
                + _to_le(self.modulus, 512, "modulus"))

    @classmethod
    def from_bytes(cls, blob: bytes) -> RsaPublicKey:
        """Parse an RSA public key field."""
        (bits,) = struct.unpack_from("<I", blob)
        if bits not in range(8, RSA_MAX_BITS + 1, 8):
            raise SevCertFormatError(f"RSA modulus size {bits} bits is not 8..4096")
        modulus = _le(blob[516:1028])
        if modulus.bit_length() > bits:
            raise SevCertFormatError(f"modulus is longer than its stated {bits} bits")
        return cls(bits, _le(blob[4:516]), modulus)

    def to_key(self) -> rsa.RSAPublicKey:
        """The key for `cryptography`."""
        return rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()


PublicKey = EcPublicKey | RsaPublicKey


# -- signature slots ------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One signature slot: USAGE u32, ALGO u32, SIG[512].

    ECDSA puts R[72] and S[72] little-endian at the start; RSA the little-endian signature
    (modulus_bits/8 bytes). The rest is zero, and an INVALID slot is all zero."""

    usage: Usage
    algo: Algo
    sig: bytes = bytes(SIG_SIZE)

    @classmethod
    def empty(cls) -> Signature:
        """An unused signature slot."""
        return cls(Usage.INVALID, Algo.INVALID)

    @property
    def is_empty(self) -> bool:
        """Whether the slot holds no signature."""
        return self.usage is Usage.INVALID

    @classmethod
    def ecdsa(cls, usage: Usage, algo: Algo, der: bytes) -> Signature:
        """From the DER signature `cryptography` produces."""
        r, s = decode_dss_signature(der)
        return cls(usage, algo, (_to_le(r, EC_COORD_SIZE, "R")
                                 + _to_le(s, EC_COORD_SIZE, "S")).ljust(SIG_SIZE, b"\0"))

    def ecdsa_der(self) -> bytes:
        """R and S as the DER signature `cryptography` verifies."""
        return encode_dss_signature(_le(self.sig[:EC_COORD_SIZE]),
                                    _le(self.sig[EC_COORD_SIZE:2 * EC_COORD_SIZE]))

    @classmethod
    def rsa(cls, usage: Usage, algo: Algo, big_endian: bytes) -> Signature:
        """From the big-endian signature `cryptography` produces (one modulus long)."""
        return cls(usage, algo, big_endian[::-1].ljust(SIG_SIZE, b"\0"))

    def rsa_big_endian(self, modulus_bits: int) -> bytes:
        """The signature as `cryptography` checks it (big-endian, one modulus long)."""
        return self.sig[:modulus_bits // 8][::-1]

    def to_bytes(self) -> bytes:
        """The signature slot's bytes."""
        return _SLOT.pack(self.usage, self.algo) + self.sig

    @classmethod
    def from_bytes(cls, blob: bytes) -> Signature:
        """Parse a signature slot."""
        usage, algo = _SLOT.unpack_from(blob)
        slot = cls(Usage(_enum(Usage, usage, "signature usage")),
                   Algo(_enum(Algo, algo, "signature algorithm")), bytes(blob[8:8 + SIG_SIZE]))
        if slot.usage is Usage.INVALID or slot.algo is Algo.INVALID:
            if slot != cls.empty():
                raise SevCertFormatError("an empty signature slot must be all zero")
        elif slot.algo.is_ecdsa:
            _zero(slot.sig[2 * EC_COORD_SIZE:], "padding after an ECDSA signature")
        elif not slot.algo.is_rsa:
            raise SevCertFormatError(f"{slot.algo.name} is not a signature algorithm")
        return slot


# -- the SEV certificate --------------------------------------------------------------------


@dataclass(frozen=True)
class SevCert:
    """PEK, PDH, OCA or CEK certificate (0x824 bytes), or a guest owner's GODH."""

    api_major: int
    api_minor: int
    usage: Usage
    algo: Algo
    key: PublicKey
    sig1: Signature
    sig2: Signature
    version: int = 1

    def signed_bytes(self) -> bytes:
        """Bytes 0x000-0x413 (version through public key), what both signatures cover."""
        return (_HEAD.pack(self.version, self.api_major, self.api_minor, 0, self.usage,
                           self.algo) + self.key.to_bytes())

    def to_bytes(self) -> bytes:
        """The 0x824-byte certificate."""
        return self.signed_bytes() + self.sig1.to_bytes() + self.sig2.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SevCert:
        """Parse a 0x824-byte certificate strictly."""
        if len(blob) != SEV_CERT_SIZE:
            raise SevCertFormatError(
                f"a SEV certificate is 0x{SEV_CERT_SIZE:x} bytes, this is 0x{len(blob):x}")
        version, major, minor, reserved, usage, algo = _HEAD.unpack_from(blob)
        if version != 1:
            raise SevCertFormatError(f"certificate version {version}, only 1 exists")
        if reserved:
            raise SevCertFormatError("reserved bytes 0x6-0x7 must be zero")
        usage_e = Usage(_enum(Usage, usage, "public key usage"))
        algo_e = Algo(_enum(Algo, algo, "public key algorithm"))
        pub = blob[0x10:SIGNED_SIZE]
        key: PublicKey
        if algo_e.is_ec:
            key = EcPublicKey.from_bytes(pub)
        elif algo_e.is_rsa:
            key = RsaPublicKey.from_bytes(pub)
        else:
            raise SevCertFormatError("the public key algorithm is INVALID")
        return cls(major, minor, usage_e, algo_e, key, Signature.from_bytes(blob[_SIG1:_SIG2]),
                   Signature.from_bytes(blob[_SIG2:]))

    @property
    def signatures(self) -> tuple[Signature, ...]:
        """Both signature slots, empty ones included."""
        return tuple(s for s in (self.sig1, self.sig2) if not s.is_empty)

    def to_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """The public key for `cryptography`; ValueError when it is unusable (off-curve)."""
        return self.key.to_key()


@dataclass(frozen=True)
class CertChain:
    """PDH_CERT_EXPORT's certificate chain buffer: PEK, OCA and CEK, 0x824 bytes each."""

    pek: SevCert
    oca: SevCert
    cek: SevCert

    def to_bytes(self) -> bytes:
        """PEK, OCA and CEK, as PDH_CERT_EXPORT writes them."""
        return self.pek.to_bytes() + self.oca.to_bytes() + self.cek.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CertChain:
        """Parse PDH_CERT_EXPORT's chain buffer."""
        if len(blob) != CERT_CHAIN_SIZE:
            raise SevCertFormatError(
                f"a certificate chain is 0x{CERT_CHAIN_SIZE:x} bytes, this is 0x{len(blob):x}")
        certs = [SevCert.from_bytes(blob[i:i + SEV_CERT_SIZE])
                 for i in range(0, CERT_CHAIN_SIZE, SEV_CERT_SIZE)]
        return cls(*certs)


def check_signature(cert: SevCert, slot: Signature,
                    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
    """One slot's signature over the certificate's signed bytes: ECDSA, or RSA-PSS with a salt
    as long as the hash (AMD's choice). cryptography's InvalidSignature when it fails, also
    when bytes after an RSA signature shorter than the slot are not zero."""
    digest = slot.algo.hash()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(slot.ecdsa_der(), cert.signed_bytes(), ec.ECDSA(digest))
    else:
        if any(slot.sig[key.key_size // 8:]):
            raise InvalidSignature("bytes after the RSA signature are not zero")
        key.verify(slot.rsa_big_endian(key.key_size), cert.signed_bytes(),
                   padding.PSS(padding.MGF1(digest), digest.digest_size), digest)


# -- AMD's signing keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class AmdCert:
    """ARK or ASK in AMD's legacy format: a header, exponent, modulus and an RSA-PSS signature
    over everything before it (SHA-256/salt 32 for 2048-bit keys, SHA-384/salt 48 for 4096)."""

    key_id: bytes
    certifying_id: bytes
    usage: Usage
    pub_exp_bits: int
    modulus_bits: int
    exponent: int
    modulus: int
    signature: bytes  # little-endian, modulus_bits / 8 bytes
    version: int = 1

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: header, exponent and modulus."""
        return (_AMD_HEAD.pack(self.version, self.key_id, self.certifying_id, self.usage,
                               bytes(16), self.pub_exp_bits, self.modulus_bits)
                + _to_le(self.exponent, self.pub_exp_bits // 8, "exponent")
                + _to_le(self.modulus, self.modulus_bits // 8, "modulus"))

    def to_bytes(self) -> bytes:
        """The certificate in AMD's format."""
        if len(self.signature) != self.modulus_bits // 8:
            raise SevCertFormatError("the signature must be one modulus long")
        return self.signed_bytes() + self.signature

    @classmethod
    def from_bytes(cls, blob: bytes) -> AmdCert:
        """Parse an ARK or ASK certificate strictly."""
        if len(blob) < _AMD_HEAD.size:
            raise SevCertFormatError(f"an AMD key certificate of {len(blob)} bytes is "
                                         "truncated inside its header")
        version, key_id, cert_id, usage, reserved, exp_bits, mod_bits = _AMD_HEAD.unpack_from(
            blob)
        if version != 1:
            raise SevCertFormatError(f"certificate version {version}, only 1 exists")
        _zero(reserved, "reserved bytes 0x28-0x37")
        usage_e = Usage(_enum(Usage, usage, "key usage"))
        if usage_e not in (Usage.ARK, Usage.ASK):
            raise SevCertFormatError(f"key usage {usage_e.name} is not ARK or ASK")
        if mod_bits not in AMD_KEY_BITS or exp_bits not in AMD_KEY_BITS:
            raise SevCertFormatError(f"key sizes {exp_bits}/{mod_bits} bits; AMD uses "
                                         "2048 (Naples) or 4096 (Rome and later)")
        size = _AMD_HEAD.size + exp_bits // 8 + 2 * (mod_bits // 8)
        if len(blob) != size:
            raise SevCertFormatError(f"an AMD {mod_bits}-bit key certificate is {size} "
                                         f"bytes, this is {len(blob)}")
        exp_end = _AMD_HEAD.size + exp_bits // 8
        mod_end = exp_end + mod_bits // 8
        modulus = _le(blob[exp_end:mod_end])
        if modulus.bit_length() != mod_bits:
            raise SevCertFormatError(f"the modulus is not a {mod_bits}-bit number")
        return cls(key_id, cert_id, usage_e, exp_bits, mod_bits,
                   _le(blob[_AMD_HEAD.size:exp_end]), modulus, bytes(blob[mod_end:]), version)

    @property
    def self_signed(self) -> bool:
        """Whether the key certifies itself (an ARK)."""
        return self.key_id == self.certifying_id

    @property
    def pss_hash(self) -> hashes.HashAlgorithm:
        """SHA-256 (salt 32) for 2048-bit keys, SHA-384 (salt 48) for 4096-bit keys."""
        return hashes.SHA256() if self.modulus_bits == 2048 else hashes.SHA384()

    @property
    def sev_algo(self) -> Algo:
        """The algorithm id a CEK names for a signature by this key."""
        return Algo.RSA_SHA256 if self.modulus_bits == 2048 else Algo.RSA_SHA384

    def to_key(self) -> rsa.RSAPublicKey:
        """The public key for `cryptography`."""
        return rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
