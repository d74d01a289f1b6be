"""UEFI secure boot for guest programs: the check firmware makes before it runs an image.

The guest kernel plays the firmware: before it enters the program it verifies the program's
appended PKCS#7 signature (sevsim.abi.module_signature) against the db and dbx variables,
which it reads as firmware does, as EFI_SIGNATURE_LISTs (sevsim.abi.efi_siglist). A program
runs only if it is signed, its signature verifies under a certificate that db holds (or that a
db certificate issued), and neither its SHA-256 nor its signer nor that db certificate is in
dbx. It then makes the PCR 7 measurements EDK2 makes (PFP 3.3.4.8): the SecureBoot, PK, KEK,
db and dbx variables with their contents, the separator, and EV_EFI_VARIABLE_AUTHORITY with
the db entry that verified the image.

The VMM hands the kernel the variable store and the program file as QEMU hands OVMF its
variable pflash and the boot disk: untrusted input, which is why the kernel checks the
signature itself and that the program the VMM loaded is the one that was signed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sevsim.abi import der, efi_siglist, module_signature
from sevsim.abi.bootinfo import Segment
from sevsim.abi.efi_siglist import EFI_CERT_SHA256_GUID, EFI_CERT_X509_GUID, SignatureData
from sevsim.abi.tcg_eventlog import (
    SECURE_BOOT_VARIABLES,
    Measurement,
    efi_variable_authority,
    efi_variable_driver_config,
    separator,
)
from sevsim.errors import ImageSignatureError, SignatureListError

__all__ = ["BootMedium", "SecureBootOutcome", "Verdict", "VerdictStatus", "boot_check",
           "check", "load_certificate", "loaded_mismatch", "pcr7_measurements"]

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_DIGESTS: dict[str, hashes.HashAlgorithm] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256(), "2.16.840.1.101.3.4.2.2": hashes.SHA384(),
    "2.16.840.1.101.3.4.2.3": hashes.SHA512()}
_RSA_OIDS = "1.2.840.113549.1.1."  # rsaEncryption, sha256WithRSAEncryption... (PKCS #1 v1.5)
_ECDSA_OIDS = "1.2.840.10045.4.3."  # ecdsa-with-SHA256...


class VerdictStatus(StrEnum):
    """What secure boot decided about a program."""

    OK = "ok"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED_SIGNER = "untrusted-signer"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Verdict:
    """The decision and why; `authority` is the db entry that verified an OK program (what
    EV_EFI_VARIABLE_AUTHORITY logs), `signer` that entry's certificate subject."""

    status: VerdictStatus
    detail: str
    authority: SignatureData | None = None
    signer: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the program may run."""
        return self.status is VerdictStatus.OK

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"


@dataclass(frozen=True)
class SecureBootOutcome:
    """What the firmware's check left: the verdict and the PCR 7 measurements it made, in
    order, for measured boot to extend and log (`pcr7_measurements`)."""

    verdict: Verdict
    measurements: tuple[Measurement, ...]


# -- the check ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SignerInfo:
    """The one SignerInfo of a detached SignedData, with the certificates it carries."""

    issuer: bytes  # DER of the issuer Name of issuerAndSerialNumber
    serial: int
    digest: hashes.HashAlgorithm
    signature_oid: str
    signature: bytes
    signed_attrs: bytes | None  # the [0] IMPLICIT attributes' content, when present
    certificates: tuple[x509.Certificate, ...]


def _parse_signed_data(blob: bytes) -> _SignerInfo:
    """Parse a detached PKCS#7/CMS SignedData with one signer (RFC 5652, 5.1-5.3)."""
    def expect(elements: list[tuple[int, bytes]], index: int, tag: int, what: str) -> bytes:
        if index >= len(elements) or elements[index][0] != tag:
            raise ImageSignatureError("PKCS#7", f"{what} missing")
        return elements[index][1]

    info = der.children(der.read_one(blob, der.SEQUENCE, "ContentInfo"))
    if der.parse_oid(expect(info, 0, der.OID, "contentType"), "contentType") != _OID_SIGNED_DATA:
        raise ImageSignatureError("PKCS#7", "not a SignedData")
    signed = der.children(der.read_one(expect(info, 1, der.context(0), "content"),
                                       der.SEQUENCE, "SignedData"))
    encap = der.children(expect(signed, 2, der.SEQUENCE, "encapContentInfo"))
    if (der.parse_oid(expect(encap, 0, der.OID, "eContentType"), "eContentType") != _OID_DATA
            or len(encap) != 1):
        raise ImageSignatureError("PKCS#7", "not a detached signature over data")
    at, certificates = 3, []
    if at < len(signed) and signed[at][0] == der.context(0):
        for tag, content in der.children(signed[at][1]):
            try:
                certificates.append(load_certificate(der.encode(tag, content)))
            except ValueError as err:
                raise ImageSignatureError("PKCS#7", f"a certificate: {err}") from None
        at += 1
    if at < len(signed) and signed[at][0] == der.context(1):  # CRLs: none are used
        at += 1
    signers = der.children(expect(signed, at, der.SET, "signerInfos"))
    if len(signers) != 1 or at + 1 != len(signed):
        raise ImageSignatureError("PKCS#7", f"{len(signers)} signers; one is needed")
    si = der.children(expect(signers, 0, der.SEQUENCE, "SignerInfo"))
    sid = der.children(expect(si, 1, der.SEQUENCE, "issuerAndSerialNumber"))
    issuer = der.encode(der.SEQUENCE, expect(sid, 0, der.SEQUENCE, "issuer"))
    serial = der.parse_integer(expect(sid, 1, der.INTEGER, "serialNumber"), "serialNumber")
    digest_oid = der.parse_oid(der.children(expect(si, 2, der.SEQUENCE, "digestAlgorithm"))[0][1],
                               "digestAlgorithm")
    if digest_oid not in _DIGESTS:
        raise ImageSignatureError("PKCS#7", f"digest algorithm {digest_oid} is not SHA-2")
    at = 3
    attrs = None
    if at < len(si) and si[at][0] == der.context(0):
        attrs = si[at][1]
        at += 1
    sig_alg = der.parse_oid(der.children(expect(si, at, der.SEQUENCE, "signatureAlgorithm"))[0][1],
                            "signatureAlgorithm")
    signature = expect(si, at + 1, der.OCTET_STRING, "signature")
    return _SignerInfo(issuer, serial, _DIGESTS[digest_oid], sig_alg, signature, attrs,
                       tuple(certificates))


def _signature_verifies(signer: _SignerInfo, cert: x509.Certificate, content: bytes) -> str:
    """'' if the signature verifies under `cert`'s key, else why not."""
    data = content
    if signer.signed_attrs is not None:  # RFC 5652 5.4: the attributes are signed, as a SET
        digests: list[bytes] = []
        for _, attr in der.children(signer.signed_attrs):  # Attribute: type, SET OF values
            attr_type, values = der.children(attr)[:2]
            if der.parse_oid(attr_type[1], "attrType") == _OID_MESSAGE_DIGEST:
                digests.extend(value for _, value in der.children(values[1]))
        h = hashes.Hash(signer.digest)
        h.update(content)
        if digests != [h.finalize()]:
            return "the messageDigest attribute is not the program's digest"
        data = der.encode(der.SET, signer.signed_attrs)
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and signer.signature_oid.startswith(_RSA_OIDS):
            key.verify(signer.signature, data, padding.PKCS1v15(), signer.digest)
        elif (isinstance(key, ec.EllipticCurvePublicKey)
              and signer.signature_oid.startswith(_ECDSA_OIDS)):
            key.verify(signer.signature, data, ec.ECDSA(signer.digest))
        else:
            return f"signature algorithm {signer.signature_oid} does not fit the signer's key"
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return "the signature does not verify under the signer's certificate"
    return ""


def _identifies(signer: _SignerInfo, cert: x509.Certificate) -> bool:
    """Whether `cert` is the one the SignerInfo's issuerAndSerialNumber names."""
    return cert.issuer.public_bytes() == signer.issuer and cert.serial_number == signer.serial


def load_certificate(blob: bytes) -> x509.Certificate:
    """An X.509 certificate from DER whose version and names parse, or ValueError:
    cryptography raises InvalidVersion (no ValueError) for the one and reads names only when
    first asked (KeyError, TypeError, ValueError or a warning, wherever that happens)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an attribute of a length X.509 forbids: a warning
        try:
            cert = x509.load_der_x509_certificate(blob)
            cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        except (KeyError, TypeError, Warning, x509.InvalidVersion) as err:
            raise ValueError(f"malformed certificate ({type(err).__name__}: {err})") from None
    return cert


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _x509_entries(entries: list[SignatureData]) -> list[tuple[SignatureData, x509.Certificate]]:
    """The certificates among `entries`; one that does not parse matches nothing, as in
    EDK2."""
    out = []
    for entry in entries:
        if entry.signature_type == EFI_CERT_X509_GUID:
            try:
                out.append((entry, load_certificate(entry.data)))
            except ValueError:
                continue
    return out


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check(program: bytes, variables: Mapping[str, bytes]) -> Verdict:
    """Secure boot's verdict on a program file, given the db and dbx variables' values."""
    try:
        db = _x509_entries(efi_siglist.parse(variables.get("db", b"")))
        dbx = efi_siglist.parse(variables.get("dbx", b""))
    except SignatureListError as err:  # a corrupt database trusts nothing
        return Verdict(VerdictStatus.UNTRUSTED_SIGNER, f"the signature database: {err}")
    try:
        signed = module_signature.split(program)
    except ImageSignatureError as err:
        return Verdict(VerdictStatus.BAD_SIGNATURE, str(err))
    content = program if signed is None else signed.content
    digest = hashlib.sha256(content).digest()
    if any(e.signature_type == EFI_CERT_SHA256_GUID and e.data == digest for e in dbx):
        return Verdict(VerdictStatus.REVOKED, f"its SHA-256 {digest.hex()} is in dbx")
    if signed is None:
        return Verdict(VerdictStatus.UNSIGNED, "no appended signature")
    try:
        signer = _parse_signed_data(signed.pkcs7)
        anchor = next(((e, c) for e, c in db if _identifies(signer, c)), None)
        signer_cert = anchor[1] if anchor else next(
            (c for c in signer.certificates if _identifies(signer, c)), None)
        if signer_cert is None:
            return Verdict(VerdictStatus.UNTRUSTED_SIGNER, f"the signer (serial "
                           f"{signer.serial:#x}) is neither in db nor in the signature's "
                           "certificates")
        why = _signature_verifies(signer, signer_cert, content)
    except (ValueError, IndexError) as err:  # FormatError (the trailer, DER), too few elements
        return Verdict(VerdictStatus.BAD_SIGNATURE, f"PKCS#7: {err}")
    if why:
        return Verdict(VerdictStatus.BAD_SIGNATURE, why)
    subject = signer_cert.subject.rfc4514_string()
    revoked = {e.data for e in dbx if e.signature_type == EFI_CERT_X509_GUID}
    if _der(signer_cert) in revoked:
        return Verdict(VerdictStatus.REVOKED, f"its signer {subject} is in dbx")
    if anchor is None:
        anchor = next(((e, c) for e, c in db if _issued_by(signer_cert, c)), None)
    if anchor is None:
        return Verdict(VerdictStatus.UNTRUSTED_SIGNER, f"signed by {subject}, which no db "
                       "certificate is or issued")
    name = anchor[1].subject.rfc4514_string()
    if _der(anchor[1]) in revoked:
        return Verdict(VerdictStatus.REVOKED, f"the db certificate {name} is in dbx")
    return Verdict(VerdictStatus.OK, f"verified by db certificate {name}", anchor[0], name)


def pcr7_measurements(variables: Mapping[str, bytes], verdict: Verdict) -> list[Measurement]:
    """PCR 7 as EDK2 measures it around this check (PFP 3.3.4.8): EV_EFI_VARIABLE_DRIVER_CONFIG
    of SecureBoot, PK, KEK, db and dbx with their values, the separator, then, for a program
    it let run, EV_EFI_VARIABLE_AUTHORITY with the db entry that verified it. Measured boot
    extends PCR 7 with these, in this order."""
    events = [efi_variable_driver_config(name, variables.get(name, b""))
              for name in SECURE_BOOT_VARIABLES]
    events.append(separator(7))
    if verdict.ok and verdict.authority is not None:
        events.append(efi_variable_authority(verdict.authority.to_bytes(), "db"))
    return events


def loaded_mismatch(program: bytes, entry: int, segments: Sequence[Segment],
                    read: Callable[[int, int], bytes]) -> str:
    """'' if the loaded image (entry point, segments, their bytes in memory through `read`)
    is `program`'s, else the first difference: the VMM loads what runs, so the firmware
    checks it is what was signed."""
    try:
        elf = ELFFile(io.BytesIO(program))
        wanted = sorted((s["p_paddr"] or s["p_vaddr"], s.data(), s["p_memsz"], s["p_flags"])
                        for s in elf.iter_segments()
                        if s["p_type"] == "PT_LOAD" and s["p_memsz"])
        signed_entry = elf.header["e_entry"]
    except (ELFError, ValueError, OSError, OverflowError) as err:
        return f"the signed file is not an ELF program: {err}"
    if signed_entry != entry:
        return f"entry point 0x{entry:x}, the signed file's is 0x{signed_entry:x}"
    if len(wanted) != len(segments):
        return f"{len(segments)} segments loaded, the signed file has {len(wanted)}"
    for (gpa, data, memsz, flags), seg in zip(wanted, segments, strict=True):
        if (gpa, len(data), memsz, flags) != (seg.gpa, seg.filesz, seg.memsz, seg.flags):
            return f"segment at 0x{seg.gpa:x} is not the signed file's at 0x{gpa:x}"
        if read(gpa, len(data)) != data:
            return f"segment at 0x{gpa:x} holds other bytes than the signed file's"
    return ""


@dataclass(frozen=True)
class BootMedium:
    """What the VMM gives the firmware for secure boot: the UEFI variables (name to value),
    the program file as it was on disk, and where the outcome goes (the host learns it as it
    learns the console and the vTPM's PCR extensions)."""

    variables: Mapping[str, bytes]
    program: bytes
    report: Callable[[SecureBootOutcome], None]


def boot_check(medium: BootMedium, entry: int, segments: Sequence[Segment],
               read: Callable[[int, int], bytes]) -> SecureBootOutcome:
    """The firmware's whole check of the program about to run: the verdict (a program loaded
    otherwise than it was signed is a bad signature), and the PCR 7 measurements, reported."""
    verdict = check(medium.program, medium.variables)
    if verdict.ok:
        signed = module_signature.split(medium.program)
        assert signed is not None  # only a signed program is OK
        mismatch = loaded_mismatch(signed.content, entry, segments, read)
        if mismatch:
            verdict = Verdict(VerdictStatus.BAD_SIGNATURE,
                              f"the loaded program is not the signed file: {mismatch}")
    outcome = SecureBootOutcome(verdict, tuple(pcr7_measurements(medium.variables, verdict)))
    medium.report(outcome)
    return outcome
