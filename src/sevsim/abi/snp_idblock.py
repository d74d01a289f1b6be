"""SNP launch identity structures, byte for byte (spec-formats.md §6): ID_BLOCK,
ID_AUTH_INFO, and AMD's 0x404-byte ECDSA P-384 public key and 0x200-byte signature, with the
check SNP_LAUNCH_FINISH makes on an ID block, which a guest author also runs before deploying.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sevsim.errors import LaunchFormatError

from .snp_launch import DIGEST_SIZE

# -- ECDSA P-384 keys and signatures in AMD's format -----------------------------------------

PUBKEY_SIZE = 0x404
SIGNATURE_SIZE = 0x200
COMPONENT_SIZE = 72  # QX, QY, R, S: little-endian, 48 significant bytes
CURVE_P384 = 2
ALGO_ECDSA_P384_SHA384 = 1


def _component(blob: bytes, what: str) -> int:
    if any(blob[48:COMPONENT_SIZE]):
        raise LaunchFormatError(what, "bytes 48-71 must be zero")
    return int.from_bytes(blob[:COMPONENT_SIZE], "little")


def _le72(value: int, what: str) -> bytes:
    if not 0 <= value < 1 << 384:
        raise LaunchFormatError(what, "is not a 48-byte P-384 value")
    return value.to_bytes(COMPONENT_SIZE, "little")


@dataclass(frozen=True)
class SnpPublicKey:
    """CURVE u32 (2 = P-384), QX[72], QY[72] little-endian, 880 zero bytes."""

    qx: int
    qy: int

    def to_bytes(self) -> bytes:
        """The 0x404-byte public key structure of ID_AUTH_INFO."""
        return (struct.pack("<I", CURVE_P384) + _le72(self.qx, "QX")
                + _le72(self.qy, "QY")).ljust(PUBKEY_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, blob: bytes) -> SnpPublicKey:
        """Parse a public key structure."""
        if len(blob) != PUBKEY_SIZE:
            raise LaunchFormatError("public key", f"is {len(blob)} bytes, not 0x404")
        (curve,) = struct.unpack_from("<I", blob)
        if curve != CURVE_P384:
            raise LaunchFormatError("CURVE", f"{curve} is not P-384 (2)")
        if any(blob[0x94:]):
            raise LaunchFormatError("public key padding", "bytes 0x94-0x403 must be zero")
        return cls(_component(blob[4:0x4C], "QX"), _component(blob[0x4C:0x94], "QY"))

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePublicKey) -> SnpPublicKey:
        """The structure for a `cryptography` P-384 key."""
        if key.curve.name != "secp384r1":
            raise LaunchFormatError("CURVE", f"{key.curve.name} is not P-384")
        numbers = key.public_numbers()
        return cls(numbers.x, numbers.y)

    def to_key(self) -> ec.EllipticCurvePublicKey:
        """LaunchFormatError when the point is not on P-384."""
        try:
            return ec.EllipticCurvePublicNumbers(self.qx, self.qy, ec.SECP384R1()).public_key()
        except ValueError:
            raise LaunchFormatError("public key", "the point is not on P-384") from None

    def digest(self) -> bytes:
        """ID_KEY_DIGEST / AUTHOR_KEY_DIGEST: SHA-384 of the 0x404 bytes."""
        return hashlib.sha384(self.to_bytes()).digest()


@dataclass(frozen=True)
class SnpSignature:
    """R[72], S[72] little-endian, 368 zero bytes."""

    r: int
    s: int

    def to_bytes(self) -> bytes:
        """The 0x200-byte signature structure (R and S little-endian)."""
        return (_le72(self.r, "R") + _le72(self.s, "S")).ljust(SIGNATURE_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, blob: bytes) -> SnpSignature:
        """Parse a signature structure."""
        if len(blob) != SIGNATURE_SIZE:
            raise LaunchFormatError("signature", f"is {len(blob)} bytes, not 0x200")
        if any(blob[2 * COMPONENT_SIZE:]):
            raise LaunchFormatError("signature padding", "bytes 0x90-0x1FF must be zero")
        return cls(_component(blob[:72], "R"), _component(blob[72:144], "S"))

    @classmethod
    def from_der(cls, der: bytes) -> SnpSignature:
        """From the DER signature `cryptography` produces."""
        try:
            return cls(*decode_dss_signature(der))
        except ValueError:
            raise LaunchFormatError("signature", "is not a DER ECDSA signature") from None

    def to_der(self) -> bytes:
        """The DER signature `cryptography` checks."""
        return encode_dss_signature(self.r, self.s)


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> SnpSignature:
    """ECDSA P-384 with SHA-384, in AMD's format."""
    return SnpSignature.from_der(key.sign(data, ec.ECDSA(hashes.SHA384())))


# -- ID block and ID auth ------------------------------------------------------------------

ID_BLOCK_SIZE = 0x60
ID_BLOCK_VERSION = 1
ID_AUTH_SIZE = 0x1000
_ID_BLOCK = struct.Struct("<48s16s16sIIQ")


@dataclass(frozen=True)
class IdBlock:
    """ID_BLOCK: the launch digest and policy the author expects, and the identity the
    firmware copies into every report (FAMILY_ID, IMAGE_ID, GUEST_SVN)."""

    ld: bytes
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    policy: int = 0x30000
    version: int = ID_BLOCK_VERSION

    def to_bytes(self) -> bytes:
        """The 0x60-byte ID block SNP_LAUNCH_FINISH takes."""
        for name, size in (("ld", 48), ("family_id", 16), ("image_id", 16)):
            if len(getattr(self, name)) != size:
                raise LaunchFormatError(name.upper(), f"must be {size} bytes")
        try:
            return _ID_BLOCK.pack(self.ld, self.family_id, self.image_id, self.version,
                                  self.guest_svn, self.policy)
        except struct.error as err:
            raise LaunchFormatError("ID_BLOCK", f"a field does not fit: {err}") from None

    @classmethod
    def from_bytes(cls, blob: bytes) -> IdBlock:
        """Parse an ID block strictly."""
        if len(blob) != ID_BLOCK_SIZE:
            raise LaunchFormatError("ID_BLOCK", f"is {len(blob)} bytes, not 0x60")
        ld, family, image, version, svn, policy = _ID_BLOCK.unpack(blob)
        if version != ID_BLOCK_VERSION:
            raise LaunchFormatError("ID_BLOCK.VERSION", f"{version}, only 1 exists")
        return cls(ld, family, image, svn, policy, version)


@dataclass(frozen=True)
class IdAuthInfo:
    """ID_AUTH_INFO (0x1000 bytes): the ID key's signature over the ID block and, when the
    author key is enabled, the author key's signature over the ID key."""

    id_block_sig: SnpSignature
    id_key: SnpPublicKey
    id_key_sig: SnpSignature | None = None
    author_key: SnpPublicKey | None = None
    id_key_algo: int = ALGO_ECDSA_P384_SHA384
    auth_key_algo: int = ALGO_ECDSA_P384_SHA384

    def to_bytes(self) -> bytes:
        """The 0x1000-byte ID authentication structure."""
        if (self.id_key_sig is None) != (self.author_key is None):
            raise LaunchFormatError("AUTHOR_KEY", "an author key comes with its signature")
        try:
            head = struct.pack("<II", self.id_key_algo, self.auth_key_algo)
        except struct.error as err:
            raise LaunchFormatError("ID_AUTH_INFO", f"a field does not fit: {err}") from None
        author = (self.id_key_sig.to_bytes() + self.author_key.to_bytes()
                  if self.id_key_sig is not None and self.author_key is not None
                  else bytes(SIGNATURE_SIZE + PUBKEY_SIZE))
        return (head + bytes(56) + self.id_block_sig.to_bytes() + self.id_key.to_bytes()
                + bytes(60) + author).ljust(ID_AUTH_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, blob: bytes) -> IdAuthInfo:
        """An all-zero author area means no author key."""
        if len(blob) != ID_AUTH_SIZE:
            raise LaunchFormatError("ID_AUTH_INFO", f"is {len(blob)} bytes, not 0x1000")
        id_algo, auth_algo = struct.unpack_from("<II", blob)
        for name, lo, hi in (("reserved 0x008", 0x8, 0x40), ("reserved 0x644", 0x644, 0x680),
                             ("reserved 0xC84", 0xC84, ID_AUTH_SIZE)):
            if any(blob[lo:hi]):
                raise LaunchFormatError(name, "reserved bytes must be zero")
        author_area = blob[0x680:0xC84]
        return cls(SnpSignature.from_bytes(blob[0x40:0x240]),
                   SnpPublicKey.from_bytes(blob[0x240:0x644]),
                   SnpSignature.from_bytes(author_area[:SIGNATURE_SIZE]) if any(author_area)
                   else None,
                   SnpPublicKey.from_bytes(author_area[SIGNATURE_SIZE:]) if any(author_area)
                   else None, id_algo, auth_algo)

    @classmethod
    def create(cls, id_block: IdBlock, id_key: ec.EllipticCurvePrivateKey,
               author_key: ec.EllipticCurvePrivateKey | None = None) -> IdAuthInfo:
        """What a guest author signs before deployment (snp-create-id-block does the same)."""
        pub = SnpPublicKey.from_key(id_key.public_key())
        if author_key is None:
            return cls(sign(id_key, id_block.to_bytes()), pub)
        return cls(sign(id_key, id_block.to_bytes()), pub, sign(author_key, pub.to_bytes()),
                   SnpPublicKey.from_key(author_key.public_key()))


@dataclass(frozen=True)
class IdDigests:
    """What a report shows after a launch with this ID block."""

    id_key_digest: bytes
    author_key_digest: bytes


def verify_id_block(id_block: IdBlock, auth: IdAuthInfo, author_key_en: bool) -> IdDigests:
    """SNP_LAUNCH_FINISH's signature checks: the ID key over the ID block and, with
    AUTHOR_KEY_EN, the author key over the ID key, both ECDSA P-384 with SHA-384.
    InvalidSignature when one fails; LaunchFormatError for a bad algorithm or key."""
    if auth.id_key_algo != ALGO_ECDSA_P384_SHA384:
        raise LaunchFormatError("ID_KEY_ALGO", f"{auth.id_key_algo} is not ECDSA P-384 (1)")
    auth.id_key.to_key().verify(auth.id_block_sig.to_der(), id_block.to_bytes(),
                                ec.ECDSA(hashes.SHA384()))
    if not author_key_en:
        return IdDigests(auth.id_key.digest(), bytes(DIGEST_SIZE))
    if auth.author_key is None or auth.id_key_sig is None:
        raise InvalidSignature("AUTHOR_KEY_EN is set but ID_AUTH_INFO has no author key")
    if auth.auth_key_algo != ALGO_ECDSA_P384_SHA384:
        raise LaunchFormatError("AUTH_KEY_ALGO", f"{auth.auth_key_algo} is not ECDSA P-384")
    auth.author_key.to_key().verify(auth.id_key_sig.to_der(), auth.id_key.to_bytes(),
                                    ec.ECDSA(hashes.SHA384()))
    return IdDigests(auth.id_key.digest(), auth.author_key.digest())
