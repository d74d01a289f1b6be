"""The guest author's ID block and ID_AUTH_INFO, from their ECDSA P-384 keys.

An ID block binds a launch digest and guest policy to an identity (family ID, image ID, SVN)
under the author's ID key; SNP_LAUNCH_FINISH refuses a launch whose digest or policy differs,
and every report of the guest then carries the identity and the key digests, which
`sevsim validate` can pin. QEMU's sev-snp-guest object takes both structures as base64
(`id-block=`, `id-auth=`), so the bundle offers that form too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.snp_idblock import IdAuthInfo, IdBlock, verify_id_block
from sevsim.abi.snp_launch import DIGEST_SIZE
from sevsim.abi.snp_tcb import SnpPolicy
from sevsim.errors import IdBlockError, SnpFormatError

DEFAULT_POLICY = 0x30000  # SMT allowed + reserved bit 17, as QEMU and sev-snp-measure


def load_signing_key(pem: bytes, what: str = "ID key") -> ec.EllipticCurvePrivateKey:
    """A plain (unencrypted) PEM ECDSA P-384 private key; anything else is refused by name,
    because the firmware only accepts P-384 ID and author keys."""
    if b"-----BEGIN" not in pem:
        raise IdBlockError(f"{what}: not a PEM file")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise IdBlockError(f"{what}: the PEM key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise IdBlockError(f"{what}: not a PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdBlockError(f"{what}: a {type(key).__name__.removeprefix('_')} is not an ECDSA "
                           "key; SNP ID keys are ECDSA P-384")
    if key.curve.name != "secp384r1":
        raise IdBlockError(f"{what}: curve {key.curve.name} is not P-384 (secp384r1)")
    return key


@dataclass(frozen=True)
class IdBundle:
    """The signed ID block, its ID_AUTH_INFO and the digests reports will carry."""

    id_block: IdBlock
    id_auth: IdAuthInfo

    @property
    def id_block_bytes(self) -> bytes:
        """The ID block as SNP_LAUNCH_FINISH takes it."""
        return self.id_block.to_bytes()

    @property
    def id_auth_bytes(self) -> bytes:
        """The ID authentication structure as SNP_LAUNCH_FINISH takes it."""
        return self.id_auth.to_bytes()

    @property
    def id_block_b64(self) -> str:
        """QEMU: -object sev-snp-guest,id-block=<this>."""
        return base64.b64encode(self.id_block_bytes).decode()

    @property
    def id_auth_b64(self) -> str:
        """QEMU: -object sev-snp-guest,id-auth=<this>,author-key-enabled=on|off."""
        return base64.b64encode(self.id_auth_bytes).decode()

    @property
    def author_key_enabled(self) -> bool:
        """Whether an author key signs the ID key (AUTHOR_KEY_EN)."""
        return self.id_auth.author_key is not None

    @property
    def id_key_digest(self) -> bytes:
        """The ID key's digest, as reports carry it."""
        return self.id_auth.id_key.digest()

    @property
    def author_key_digest(self) -> bytes:
        """All zero without an author key, as in the report."""
        key = self.id_auth.author_key
        return key.digest() if key is not None else bytes(DIGEST_SIZE)


def make_id_block(measurement: bytes, id_key: ec.EllipticCurvePrivateKey,
                  author_key: ec.EllipticCurvePrivateKey | None = None, *,
                  family_id: bytes = bytes(16), image_id: bytes = bytes(16), svn: int = 0,
                  policy: int = DEFAULT_POLICY) -> IdBundle:
    """Sign an ID block for the expected launch digest and guest policy; the result is
    checked the way SNP_LAUNCH_FINISH checks it before it is returned."""
    for name, value, size in (("measurement", measurement, DIGEST_SIZE),
                              ("family ID", family_id, 16), ("image ID", image_id, 16)):
        if len(value) != size:
            raise IdBlockError(f"{name} is {len(value)} bytes, not {size}")
    if not 0 <= svn <= 0xFFFFFFFF:
        raise IdBlockError(f"SVN {svn} does not fit in 32 bits")
    try:
        SnpPolicy.from_int(policy)
    except SnpFormatError as error:
        raise IdBlockError(f"guest policy: {error}") from None
    for what, key in (("ID key", id_key), ("author key", author_key)):
        if key is not None and key.curve.name != "secp384r1":
            raise IdBlockError(f"{what}: curve {key.curve.name} is not P-384 (secp384r1)")
    block = IdBlock(measurement, family_id, image_id, guest_svn=svn, policy=policy)
    auth = IdAuthInfo.create(block, id_key, author_key)
    try:
        verify_id_block(block, IdAuthInfo.from_bytes(auth.to_bytes()),
                        author_key_en=author_key is not None)
    except (InvalidSignature, SnpFormatError) as error:  # would be a bug in the encoding
        raise IdBlockError(f"the ID block does not verify after signing: {error}") from None
    return IdBundle(block, auth)
