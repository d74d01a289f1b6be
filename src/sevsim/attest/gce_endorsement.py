"""Check a GCE launch endorsement against an SNP report, as gce-tcb-verifier's verify package
does: the signer's certificate chains to Google's TCB root, its RSASSA-PSS signature (SHA-256,
salt 32) covers the serialized golden measurement, and the golden measurement for the VM's
vCPU count is the report's MEASUREMENT.

The endorsement says which firmware Google built and what any launch of it must measure, so a
relying party that trusts Google's word for its UEFI needs no copy of the image. The root is
the caller's to choose: sevsim's simulated one (`simulated_google_root`, what sevsim's
platform signs with) or Google's real one from a file (`load_google_root`; Google publishes
it as GCE-cc-tcb-root_1.crt under pki.goog/cloud_integrity, and sevsim does not ship it).
Google's verifier also refuses an endorsement dated after 2024-08-02 that names no build
(cl_spec and commit both empty); so does this one.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from sevsim.abi.gce_endorsement import (
    GCE_VMSA_COUNTS,
    GUID_GCE_ENDORSEMENT,
    GoldenMeasurement,
    LaunchEndorsement,
)
from sevsim.abi.ovmf import OvmfImage, VmmType
from sevsim.abi.snp_report import parse_cert_table
from sevsim.attest.measure import snp_ovmf_digest, snp_ovmf_hash
from sevsim.errors import EndorsementError, EndorsementFormatError

PSS_SHA256 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
PROVENANCE_SINCE = datetime.datetime(2024, 8, 2, tzinfo=datetime.UTC)


@cache
def simulated_google_root() -> x509.Certificate:
    """The simulated GCE TCB root of sevsim (firmware.gce_endorser signs under it): trust it
    only for reports from sevsim's platform."""
    return load_google_root(resources.files("sevsim.attest").joinpath(
        "roots", "sevsim", "gce", "root.pem").read_bytes())


def load_google_root(blob: bytes) -> x509.Certificate:
    """A root certificate file, PEM or DER (e.g. Google's GCE-cc-tcb-root_1.crt)."""
    try:
        return _strict(blob)
    except (ValueError, CryptographyDeprecationWarning) as error:
        raise EndorsementFormatError("root", f"not a certificate: {error}") from None


def _strict(blob: bytes) -> x509.Certificate:
    """A PEM or DER certificate; what `cryptography` only deprecates today (a serial number
    that is not positive, which RFC 5280 forbids) is raised as its warning, and a bad version
    number (its InvalidVersion is no ValueError) as a ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            if b"-----BEGIN" in blob:
                return x509.load_pem_x509_certificate(blob)
            return x509.load_der_x509_certificate(blob)
        except x509.InvalidVersion as error:
            raise ValueError(f"X.509 version {error.parsed_version} is not 1 or 3") from None


def endorsement_in_cert_table(table: bytes) -> bytes | None:
    """The endorsement a GCE host put in an extended report's certificate table, if any."""
    return dict(parse_cert_table(table)).get(GUID_GCE_ENDORSEMENT)


def golden_measurements(ovmf: bytes | OvmfImage, vcpu_counts: Iterable[int] = GCE_VMSA_COUNTS
                        ) -> dict[int, bytes]:
    """What Google endorses for a UEFI: the SNP MEASUREMENT of a GCE launch of it for each
    number of vCPUs (the image's own pages are hashed once and shared)."""
    image = ovmf if isinstance(ovmf, OvmfImage) else OvmfImage.parse(ovmf)
    base = snp_ovmf_hash(image)
    return {n: snp_ovmf_digest(image, n, vmm_type=VmmType.GCE, ovmf_hash=base)
            for n in vcpu_counts}


def common_name(cert: x509.Certificate, *, issuer: bool = False) -> str:
    """The subject's (or issuer's) CN. Google's names carry C=USA, which `cryptography` warns
    about (a country is two letters); that says nothing about the certificate's validity."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Attribute's length", UserWarning)
        try:
            names = (cert.issuer if issuer else cert.subject).get_attributes_for_oid(
                NameOID.COMMON_NAME)
        except ValueError:  # a name that does not decode
            return "(unreadable name)"
    return str(names[0].value) if names else "(no CN)"


@dataclass(frozen=True)
class EndorsedLaunch:
    """An endorsement that vouched for a report: what it says and who signed it."""

    endorsement: LaunchEndorsement
    golden: GoldenMeasurement
    signer: x509.Certificate
    vcpus: int  # the vCPU (VMSA) count whose golden measurement is the report's

    def summary(self) -> str:
        """One line for a person: signer, firmware digest, SVN, vCPU count."""
        snp = self.golden.sev_snp
        return (f"signed by {common_name(self.signer)} under "
                f"{common_name(self.signer, issuer=True)}; UEFI SHA-384 "
                f"{self.golden.digest.hex()[:16]}..., SVN {snp.svn if snp else '?'}, "
                f"MEASUREMENT endorsed for {self.vcpus} vCPUs")


def _window(cert: x509.Certificate, when: datetime.datetime) -> str | None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if start <= when <= end:
        return None
    return (f"{common_name(cert)} is valid from {start:%Y-%m-%dT%H:%M:%SZ} to "
            f"{end:%Y-%m-%dT%H:%M:%SZ}, not at {when:%Y-%m-%dT%H:%M:%SZ}")


def verify_endorsement(endorsement: bytes, measurement: bytes, *, root: x509.Certificate,
                       vcpus: int | None = None, at: datetime.datetime | None = None
                       ) -> EndorsedLaunch:
    """Check `endorsement` (a serialized VMLaunchEndorsement) for a report's `measurement`.

    `vcpus` is the VM's vCPU count: its golden measurement must be `measurement`; without it
    any endorsed count may match (gce-tcb-verifier's rule when no VMSA count is expected).
    `at` is when the certificates must be valid (now). EndorsementError, whose `reason` names
    the failed check, otherwise."""
    when = at or datetime.datetime.now(datetime.UTC)
    try:
        parsed = LaunchEndorsement.from_bytes(endorsement)
        golden = parsed.golden
    except EndorsementFormatError as error:
        raise EndorsementError("format", str(error)) from None
    if golden.timestamp > PROVENANCE_SINCE and not golden.cl_spec and not golden.commit:
        raise EndorsementError("provenance", f"signed {golden.timestamp:%Y-%m-%d} without "
                               "cl_spec or commit naming the build")
    if not golden.cert:
        raise EndorsementError("signer", "the golden measurement has no signer certificate")
    try:
        signer = _strict(golden.cert)
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm, CryptographyDeprecationWarning) as error:
        raise EndorsementError("signer", f"the signer certificate does not parse: {error}"
                               ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise EndorsementError("signer", "the signer key is not RSA (Google signs RSA-PSS)")
    try:
        signer.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as error:
        raise EndorsementError("chain", f"{common_name(signer)} is not issued by "
                               f"{common_name(root)}: {error or 'bad signature'}") from None
    for cert in (root, signer):
        if (outside := _window(cert, when)) is not None:
            raise EndorsementError("chain", outside)
    try:
        key.verify(parsed.signature, parsed.serialized_uefi_golden, PSS_SHA256, hashes.SHA256())
    except InvalidSignature:
        raise EndorsementError("signature", f"{common_name(signer)} did not sign this golden "
                               "measurement (RSASSA-PSS SHA-256)") from None
    if golden.sev_snp is None:
        raise EndorsementError("sev-snp", "the endorsement has no SEV-SNP measurements")
    endorsed = golden.sev_snp.measurements
    matches = sorted(n for n, value in endorsed.items() if value == measurement)
    counts = ", ".join(map(str, sorted(endorsed))) or "none"
    if vcpus is None:
        if not matches:
            raise EndorsementError("measurement", f"MEASUREMENT {measurement.hex()} is not "
                                   f"endorsed for any vCPU count ({counts})")
        vcpus = matches[0]
    elif vcpus not in endorsed:
        raise EndorsementError("measurement", f"no golden measurement for {vcpus} vCPUs "
                               f"(endorsed: {counts})")
    elif endorsed[vcpus] != measurement:
        also = f"; it is the one for {matches[0]} vCPUs" if matches else ""
        raise EndorsementError("measurement", f"the golden measurement for {vcpus} vCPUs is "
                               f"{endorsed[vcpus].hex()}, the report's MEASUREMENT "
                               f"{measurement.hex()}{also}")
    return EndorsedLaunch(parsed, golden, signer, vcpus)
