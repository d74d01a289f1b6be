"""sevsim's simulated Google endorsement signer: the GCE TCB root, the UEFI signing key under
it, and the signed launch endorsements (abi.gce_endorsement) a GCE host hands its guests.

It lives in firmware/ beside the simulated AMD PKI (amd_root.py, snp_pki.py, kds.py) because
it is the same kind of thing: a vendor's signing infrastructure, trusted by the relying party
and outside the VM. Not host/: the hypervisor is untrusted and must hold nothing whose
signature a verifier believes (it only carries the endorsement into the certificate table, as
a GCE host does). Not attest/: the relying party verifies and never signs. The golden
measurements come from the caller (sevsim.attest.gce_endorsement.golden_measurements computes
them as Google's pipeline does), since firmware/ may not import the relying party's code.

These are NOT Google's keys. Like the simulated AMD roots they are derived from a published
seed (RSA-4096, as Google's KMS keys: RSA_SIGN_PSS_4096_SHA256), ship as package data
(`simulated_google/`), and the root certificate is fixed bytes shipped in the verifier's trust
store (`attest/roots/sevsim/gce/root.pem`); a test checks both against the derivation. The
certificates have the shape of Google's (gce-tcb-verifier's sign/ops: C=USA ST=WA L=Kirkland
O=Google OU=Engineering CN serialNumber, all PrintableString; RSASSA-PSS SHA-256 salt 32; the
root keyCertSign+cRLSign, CA with path length 0, SKI; the signer digitalSignature, not a CA,
AKI), with one difference: the signer is valid 7 years (sevsim's VCEK lifetime) instead of
Google's 5, so that the fixed-date certificate outlives the test suite. Signatures use
amd_root.pss_sign (a salt derived from key and message), so the same input gives the same
bytes on every run.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sevsim.abi import der
from sevsim.abi.gce_endorsement import (
    GCE_SNP_POLICY,
    GoldenMeasurement,
    LaunchEndorsement,
    SevSnpGolden,
)
from sevsim.abi.snp_cert import Attribute, CertTime, Extension, Name, encode_name
from sevsim.errors import ConfigError
from sevsim.firmware.amd_root import CA_YEARS, ISSUED, derive_rsa_key, pss_sign
from sevsim.firmware.snp_pki import LEAF_YEARS

SEED = b"sevsim simulated Google TCB root key: not Google's, public, for simulation only"
KEY_BITS = 4096
ROLES = ("root", "signer")
ROOT_CN, SIGNER_CN = "GCE-cc-tcb-root", "GCE-uefi-signer"
_SERIALS = {"root": 1, "signer": 2}  # Google's serial is the subject's serialNumber too
_NOT_BEFORE = CertTime.utc(ISSUED.year, ISSUED.month, ISSUED.day)
_SHA256 = der.sequence(der.oid("2.16.840.1.101.3.4.2.1"), der.encode(der.NULL, b""))
PSS_SHA256 = der.sequence(  # RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32: Go's encoding
    der.oid("1.2.840.113549.1.1.10"), der.sequence(
        der.encode(der.context(0), _SHA256),
        der.encode(der.context(1), der.sequence(der.oid("1.2.840.113549.1.1.8"), _SHA256)),
        der.encode(der.context(2), der.integer(32))))
OID_SERIAL_NUMBER = "2.5.4.5"
_KEY_USAGE, _BASIC_CONSTRAINTS, _SKI, _AKI = "2.5.29.15", "2.5.29.19", "2.5.29.14", "2.5.29.35"


def google_name(common_name: str, serial: int) -> Name:
    """Google's TCB signing DN (gce-tcb-verifier's googleName), in Go's RDN order."""
    printable = der.PRINTABLE_STRING
    return tuple(Attribute(oid, printable, value) for oid, value in (
        ("2.5.4.6", "USA"), ("2.5.4.8", "WA"), ("2.5.4.7", "Kirkland"), ("2.5.4.10", "Google"),
        ("2.5.4.11", "Engineering"), ("2.5.4.3", common_name),
        (OID_SERIAL_NUMBER, str(serial))))


def _key_id(key: rsa.RSAPublicKey) -> bytes:
    """SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1, as Go computes it)."""
    return hashlib.sha1(key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.PKCS1)).digest()


def certificate(role: str, key: rsa.RSAPublicKey, issuer_key: rsa.RSAPrivateKey) -> bytes:
    """The root's (self-signed) or the signer's certificate, DER, signed by `issuer_key`."""
    root = role == "root"
    years = CA_YEARS if root else LEAF_YEARS
    issuer_id = _key_id(issuer_key.public_key())
    extensions = (
        Extension(_KEY_USAGE, der.encode(der.BIT_STRING, b"\x01\x06" if root else b"\x07\x80"),
                  critical=True),
        Extension(_BASIC_CONSTRAINTS, der.sequence(der.encode(der.BOOLEAN, b"\xff"),
                                                   der.integer(0)) if root else der.sequence(),
                  critical=True),
        Extension(_SKI, der.encode(der.OCTET_STRING, issuer_id)) if root else
        Extension(_AKI, der.sequence(der.encode(der.context(0, constructed=False), issuer_id))))
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    tbs = der.sequence(
        der.encode(der.context(0), der.integer(2)), der.integer(_SERIALS[role]), PSS_SHA256,
        encode_name(google_name(ROOT_CN, _SERIALS["root"])),
        der.sequence(_NOT_BEFORE.to_der(), _NOT_BEFORE.plus_years(years).to_der()),
        encode_name(google_name(ROOT_CN if root else SIGNER_CN, _SERIALS[role])), spki,
        der.encode(der.context(3), der.sequence(*(e.to_der() for e in extensions))))
    signature = pss_sign(issuer_key, tbs, "sha256")
    return der.sequence(tbs, PSS_SHA256, der.encode(der.BIT_STRING, b"\0" + signature))


@dataclass(frozen=True)
class Endorser:
    """A UEFI signing key, its certificate (DER) and the CA bundle (PEM, root first) that
    every endorsement it signs carries."""

    key: rsa.RSAPrivateKey
    cert: bytes
    ca_bundle: bytes

    def endorse(self, uefi: bytes, measurements: Mapping[int, bytes], *, svn: int = 1,
                policy: int = GCE_SNP_POLICY, image_id: uuid.UUID | None = None,
                timestamp: datetime.datetime = ISSUED, cl_spec: int = 0, commit: bytes = b""
                ) -> bytes:
        """A serialized VMLaunchEndorsement of `uefi` whose SEV-SNP golden measurements are
        `measurements` (VMSA count -> MEASUREMENT), signed RSASSA-PSS SHA-256 (salt 32) over
        the serialized VMGoldenMeasurement, as gce-tcb-verifier's endorse.SignDoc does. The
        image id defaults to one derived from the image (Google draws a random one), so the
        same image gives the same endorsement."""
        if not measurements or any(not 0 < n < 1 << 32 or len(m) != 48
                                   for n, m in measurements.items()):
            raise ConfigError("an endorsement needs one 48-byte measurement per VMSA count "
                              "(1 to 2^32-1)")
        digest = hashlib.sha384(uefi).digest()
        if image_id is None:
            image_id = uuid.UUID(bytes=digest[:16], version=4)
        golden = GoldenMeasurement(
            timestamp, self.cert, digest, self.ca_bundle, cl_spec, commit,
            SevSnpGolden(dict(measurements), svn, image_id=image_id.bytes, policy=policy))
        signed = golden.to_bytes()
        return LaunchEndorsement(signed, pss_sign(self.key, signed, "sha256")).to_bytes()


def _shipped_key(role: str) -> rsa.RSAPrivateKey:
    pem = resources.files("sevsim.firmware").joinpath(
        "simulated_google", f"{role}.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def derive_key(role: str) -> rsa.RSAPrivateKey:
    """The simulated root or signer key, from SEED alone (seconds each)."""
    return derive_rsa_key(SEED, f"gce/{role}".encode(), KEY_BITS)


def endorser(root_key: rsa.RSAPrivateKey, signer_key: rsa.RSAPrivateKey) -> Endorser:
    """The endorser that `signer_key`, certified by `root_key`, makes."""
    root = certificate("root", root_key.public_key(), root_key)
    return Endorser(signer_key, certificate("signer", signer_key.public_key(), root_key),
                    ssl.DER_cert_to_PEM_cert(root).encode())


@cache
def simulated_endorser() -> Endorser:
    """The simulated Google UEFI signer of sevsim, from the shipped keys."""
    return endorser(_shipped_key("root"), _shipped_key("signer"))


def root_certificate() -> bytes:
    """The simulated GCE TCB root certificate, DER (what attest's sevsim trust store ships)."""
    return ssl.PEM_cert_to_DER_cert(simulated_endorser().ca_bundle.decode())


def regenerate(key_dir: Path, root_file: Path) -> None:
    """Derive both keys from SEED; write them (firmware package data) and the root
    certificate (the verifier's sevsim trust store)."""
    keys = {role: derive_key(role) for role in ROLES}
    key_dir.mkdir(parents=True, exist_ok=True)
    for role, key in keys.items():
        (key_dir / f"{role}.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    root_file.parent.mkdir(parents=True, exist_ok=True)
    root_file.write_bytes(endorser(keys["root"], keys["signer"]).ca_bundle)
