"""Verify an SNP attestation report: its ECDSA P-384 signature, the chain VCEK (or VLEK) →
ASK (or ASVK) → ARK, the VCEK's AMD extensions against the report, and optionally the CRL.

The trust anchor is an ARK shipped with the package: AMD's real ones (`roots/amd/snp/`, from
AMD's KDS bundles) by default, or sevsim's simulated ones (`roots/sevsim/snp/`) only when the
caller asks for `trust="sevsim"`; a chain is never tried against the other set. The ARK is
pinned by name and public key, not by bytes, so any correctly signed copy of it is accepted.

Every certificate and the CRL must be valid at one time: the clock's, or the `now` the caller
gives to check old evidence as of when it was produced (go-sev-guest's Options.Now).

Every check is recorded by name whether it passes or fails, so a CLI can name each failing
one; nothing here raises on bad input except `VerificationResult.raise_for_failure` (and a
ConfigError for a bad argument: an unknown product, a `now` without a time zone).
A `ChainCache` remembers chains that verified, so a relying party checking many reports from
the same machines pays for the RSA-4096 chain once and then one ECDSA verification a report.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import string
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from sevsim.abi.snp_cert import SnpCertificate, common_name
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    REPORT_SIZE,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNED_SIZE,
    AttestationReport,
    parse_cert_table,
)
from sevsim.abi.snp_tcb import Generation, SigningKey
from sevsim.attest.kds_client import KdsClient
from sevsim.errors import ConfigError, KdsFetchError, SnpFormatError, SnpVerificationError
from sevsim.inputs import MAX_CERT_FILE, read_bounded

Trust = Literal["amd", "sevsim"]
TRUSTS: tuple[Trust, ...] = ("amd", "sevsim")
PRODUCTS = ("milan", "genoa", "turin")
# what `cryptography` raises on a certificate it cannot check (bad signature, unknown key)
_CERT_ERRORS = (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm)
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


# -- inputs ---------------------------------------------------------------------------------


def load_report(data: bytes) -> bytes:
    """A report file's bytes: binary as the guest got it, or hex text (snpguest/go-sev-guest
    dumps; whitespace and a 0x prefix allowed). Anything else is returned unchanged, for the
    strict parser to refuse with a clear error."""
    if len(data) == REPORT_SIZE:
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    compact = "".join(text.split()).removeprefix("0x")
    if compact and all(c in string.hexdigits for c in compact) and len(compact) % 2 == 0:
        return bytes.fromhex(compact)
    return data


def der_certificates(blob: bytes) -> list[bytes]:
    """The DER of each certificate in a PEM file (in order), or the blob itself if it is DER.
    Decoded here rather than by `cryptography`, which warns on the serial-0 VCEKs."""
    if b"-----BEGIN" not in blob:
        return [blob]
    out = []
    for body in _PEM.findall(blob):
        try:
            out.append(base64.b64decode(b"".join(body.split()), validate=True))
        except (binascii.Error, ValueError):
            raise SnpFormatError("PEM", "a CERTIFICATE block is not base64") from None
    if not out:
        raise SnpFormatError("PEM", "no CERTIFICATE block")
    return out


@dataclass(frozen=True)
class CertBundle:
    """The certificates offered with a report, DER: the leaf (VCEK or VLEK) and optionally
    its signer (ASK or ASVK) and the ARK. Missing ones come from the trust store or a KDS."""

    leaf: bytes | None = None
    ask: bytes | None = None
    ark: bytes | None = None
    source: str = "given"

    @classmethod
    def from_cert_table(cls, blob: bytes, source: str = "certificate table") -> CertBundle:
        """From an extended report's certificate table (GUIDs as the GHCB spec defines)."""
        entries = dict(parse_cert_table(blob))
        return cls(entries.get(GUID_VCEK) or entries.get(GUID_VLEK), entries.get(GUID_ASK),
                   entries.get(GUID_ARK), source)

    @classmethod
    def from_directory(cls, directory: Path) -> CertBundle:
        """The files snpguest writes: vcek.{pem,der} or vlek.{pem,der}, ask/asvk.{pem,der},
        ark.{pem,der}, and KDS's cert_chain.pem (ASK or ASVK, then ARK). A file that is there
        (a device or a symlink to one too: what is given is not skipped) but is too long or
        does not decode raises SnpFormatError naming it."""
        def first(*names: str) -> bytes | None:
            for name in names:
                path = directory / name
                if path.exists() and not path.is_dir():
                    blob = _read_cert_file(path)
                    try:
                        return der_certificates(blob)[0]
                    except SnpFormatError as error:
                        raise SnpFormatError(str(path), str(error)) from None
            return None

        ask = first("ask.pem", "ask.der", "asvk.pem", "asvk.der")
        ark = first("ark.pem", "ark.der")
        chain_file = directory / "cert_chain.pem"
        if chain_file.exists() and not chain_file.is_dir() and (ask is None or ark is None):
            chain = der_certificates(_read_cert_file(chain_file))
            if len(chain) != 2:
                raise SnpFormatError(str(chain_file), f"{len(chain)} certificates, not 2 "
                                     "(ASK or ASVK, then ARK)")
            ask, ark = ask or chain[0], ark or chain[1]
        leaf = first("vcek.pem", "vcek.der", "vcek.crt", "vlek.pem", "vlek.der", "vlek.crt")
        return cls(leaf, ask, ark, str(directory))

    @classmethod
    def load(cls, path: Path) -> CertBundle:
        """A directory (offline bundle) or a file (an extended report's certificate table)."""
        if path.is_dir():
            return cls.from_directory(path)
        return cls.from_cert_table(_read_cert_file(path), str(path))


def _read_cert_file(path: Path) -> bytes:
    """A certificate, PEM bundle or certificate table, read bounded: one too long (a symlink
    to /dev/zero) is a malformed input like any other, an SnpFormatError naming it."""
    try:
        return read_bounded(path, MAX_CERT_FILE, "a certificate file")
    except ConfigError as error:
        raise SnpFormatError("size", str(error)) from None


# -- trust anchors --------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpRoots:
    """One product's ARK and its two signing keys' certificates (ASK for VCEKs, ASVK for
    VLEKs), as shipped in the package for one trust setting."""

    trust: Trust
    generation: Generation
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate


@cache
def trusted_roots(trust: Trust, product: str | Generation) -> SnpRoots:
    """The shipped anchors: AMD's real ones (trust="amd") or sevsim's simulated ones."""
    if trust not in TRUSTS:
        raise ConfigError(f"trust must be one of {TRUSTS}, not {trust!r}")
    generation = product_generation(product)
    base = resources.files("sevsim.attest").joinpath(
        "roots", "amd" if trust == "amd" else "sevsim", "snp", generation.value.lower())
    certs = {role: x509.load_pem_x509_certificate(base.joinpath(f"{role}.pem").read_bytes())
             for role in ("ark", "ask", "asvk")}
    return SnpRoots(trust, generation, certs["ark"], certs["ask"], certs["asvk"])


def product_generation(product: str | Generation) -> Generation:
    """The SNP generation a product name ("milan", "Genoa", ...) names; a Generation as is."""
    if isinstance(product, Generation):
        return product
    for generation in Generation:
        if generation.value.lower() == product.lower():
            return generation
    raise ConfigError(f"unknown product {product!r}: one of {', '.join(PRODUCTS)}")


def _spki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    except _CERT_ERRORS:
        return None


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One named check and what it found."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class VerificationResult:
    """Every check that ran, in order. `ok` only when there was at least one and all held."""

    checks: tuple[Check, ...]
    trust: Trust
    report: AttestationReport | None = None
    generation: Generation | None = None
    leaf: SnpCertificate | None = None

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        """The check of that name (KeyError if it did not run)."""
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(name)

    def raise_for_failure(self) -> AttestationReport:
        """The verified report, or SnpVerificationError naming every failed check."""
        if not self.ok or self.report is None:
            raise SnpVerificationError([(c.name, c.detail) for c in self.failures]
                                       or [("report", "nothing was checked")])
        return self.report


# -- chain cache ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _VerifiedChain:
    leaf: SnpCertificate
    key: ec.EllipticCurvePublicKey
    ark: x509.Certificate
    ask: x509.Certificate
    checks: tuple[Check, ...]
    not_before: datetime.datetime  # the window in which every certificate of the chain is valid
    not_after: datetime.datetime


@dataclass
class ChainCache:
    """Chains that verified, by (trust, product, ARK, ASK, leaf bytes). A hit skips the RSA
    work (the chain cannot have changed: the key is its bytes) but not the validity period:
    the time checked must lie in every certificate's. A CRL check is never cached."""

    entries: dict[tuple[str, str, bytes, bytes, bytes], _VerifiedChain] = field(
        default_factory=dict)
    parsed: dict[bytes, SnpCertificate] = field(default_factory=dict)  # leaves in a chain
    hits: int = 0


# -- the verifier ---------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return passed


def _utc(when: datetime.datetime) -> str:
    return f"{when.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%S}Z"


def _validity(cert: str, not_before: datetime.datetime, not_after: datetime.datetime,
              now: datetime.datetime) -> str | None:
    """Why `cert` is not valid at `now`, naming its window and the time used; None if it is."""
    if not_before <= now <= not_after:
        return None
    state = "is not yet valid" if now < not_before else "has expired"
    return (f"{cert} {state}: valid from {_utc(not_before)} to {_utc(not_after)}, checked at "
            f"{_utc(now)}")


def _checking_time(now: datetime.datetime | None) -> datetime.datetime:
    """The time every validity check uses: `now` (timezone-aware), or the clock's."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError(f"now={now.isoformat()} has no time zone; give an aware datetime "
                          "(e.g. tzinfo=datetime.UTC)")
    return now


def _snp_time(text: str) -> datetime.datetime:
    fmt = "%y%m%d%H%M%SZ" if len(text) == 13 else "%Y%m%d%H%M%SZ"
    return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC)


def _infer_generation(report: AttestationReport, product: str | Generation | None,
                      leaf: SnpCertificate | None, rec: _Recorder) -> Generation | None:
    """The product: from the CPUID bytes (v3+), checked against --product when both exist;
    for a v2 report, --product, else the certificate's productName, else Turin's 8-byte
    chip id. The chain must still verify to that product's ARK."""
    try:
        given = None if product is None else product_generation(product)
    except ValueError as error:
        rec.add("product", False, str(error))
        return None
    if report.version >= 3:
        try:
            cpuid = Generation.from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)
        except SnpFormatError as error:
            rec.add("product", False, str(error))
            return None
        if given is not None and given is not cpuid:
            rec.add("product", False, f"the report's CPUID (family 0x{report.cpuid_fam_id:02x}"
                    f" model 0x{report.cpuid_mod_id:02x}) is {cpuid.value}, not "
                    f"{given.value}")
            return None
        rec.add("product", True, f"{cpuid.value} (from the report's CPUID)")
        return cpuid
    if given is not None:
        rec.add("product", True, f"{given.value} (given)")
        return given
    if leaf is not None:
        for generation in Generation:
            if leaf.amd.product_name.split("-")[0] == generation.value:
                rec.add("product", True, f"{generation.value} (v2 report: from the "
                        "certificate's productName)")
                return generation
    guess = Generation.guess_from_chip_id(report.chip_id)
    if guess is Generation.TURIN:
        rec.add("product", True, "Turin (v2 report: 8-byte chip id)")
        return guess
    rec.add("product", False, "a v2 report does not name its product: give --product")
    return None


def _verify_ca(rec: _Recorder, roots: SnpRoots, vlek: bool, bundle: CertBundle,
               now: datetime.datetime) -> tuple[x509.Certificate, x509.Certificate] | None:
    """ARK pinned to the trust store; ASK/ASVK signed by it (RSA-PSS), a CA, in date."""
    product = roots.generation.value
    ark = roots.ark
    if bundle.ark is not None:
        try:
            given = _load_ca(bundle.ark)
        except ValueError as error:
            rec.add("ARK", False, f"does not parse: {error}")
            return None
        spki = _spki(given)
        if given.subject != roots.ark.subject or spki is None or spki != _spki(roots.ark):
            rec.add("ARK", False, f"{given.subject.rfc4514_string()} is not "
                    f"{trust_name(roots.trust)} ARK of {product}")
            return None
        ark = given
    try:
        ark.verify_directly_issued_by(ark)  # pins the key; this pins the rest of the bytes
    except _CERT_ERRORS as error:
        rec.add("ARK", False, f"self-signature does not verify {str(error) or ''}".strip())
        return None
    problem = _validity(common_name_x509(ark), ark.not_valid_before_utc,
                        ark.not_valid_after_utc, now)
    if problem:
        rec.add("ARK", False, problem)
        return None
    rec.add("ARK", True, f"{common_name_x509(ark)}, pinned ({trust_name(roots.trust)})")
    role = "ASVK" if vlek else "ASK"
    pinned = roots.asvk if vlek else roots.ask
    if bundle.ask is not None:
        try:
            ask = _load_ca(bundle.ask)
        except ValueError as error:
            rec.add(role, False, f"does not parse: {error}")
            return None
    else:
        ask = pinned
    expected_cn = f"SEV-VLEK-{product}" if vlek else f"SEV-{product}"
    try:
        if ask.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
            raise InvalidSignature("is not signed with RSASSA-PSS")
        ask.verify_directly_issued_by(ark)
        constraints = ask.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (*_CERT_ERRORS, x509.ExtensionNotFound) as error:
        rec.add(role, False, f"not signed by the {product} ARK: {str(error) or 'bad signature'}")
        return None
    if not constraints.ca:
        rec.add(role, False, "is not a CA certificate")
        return None
    if common_name_x509(ask) != expected_cn:
        rec.add(role, False, f"CN {common_name_x509(ask)!r}, expected {expected_cn!r}")
        return None
    problem = _validity(expected_cn, ask.not_valid_before_utc, ask.not_valid_after_utc, now)
    if problem:
        rec.add(role, False, problem)
        return None
    rec.add(role, True, f"{expected_cn}, serial 0x{ask.serial_number:x}, signed by the ARK")
    return ark, ask


def _load_ca(der: bytes) -> x509.Certificate:
    """A CA certificate whose version and names parse, or ValueError: cryptography raises
    InvalidVersion for the one, and reads names only when first asked (KeyError, TypeError,
    ValueError or a warning wherever that happens)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an attribute of a length X.509 forbids: a warning
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        except (KeyError, TypeError, Warning, x509.InvalidVersion) as error:
            raise ValueError(f"malformed certificate ({type(error).__name__}: {error})"
                             ) from None
    return cert


def trust_name(trust: Trust) -> str:
    """Whose roots a trust setting means, for messages."""
    return "AMD's" if trust == "amd" else "sevsim's simulated"


def common_name_x509(cert: x509.Certificate) -> str:
    """The subject CN of a certificate, or "" without one."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _verify_leaf(rec: _Recorder, leaf: SnpCertificate, ask: x509.Certificate,
                 generation: Generation, vlek: bool, now: datetime.datetime) -> bool:
    role = "VLEK" if vlek else "VCEK"
    if leaf.is_vlek != vlek:
        return rec.add(role, False, f"the report is signed with the {role} but the "
                       f"certificate is a {'VLEK' if leaf.is_vlek else 'VCEK'}")
    try:
        issuer_key = ask.public_key()
        if not isinstance(issuer_key, rsa.RSAPublicKey):
            raise InvalidSignature
        leaf.verify(issuer_key)
    except _CERT_ERRORS:
        return rec.add(role, False, f"not signed by {common_name_x509(ask)}")
    if common_name(leaf.tbs.issuer) != common_name_x509(ask):
        return rec.add(role, False, f"issuer {common_name(leaf.tbs.issuer)!r} is not "
                       f"{common_name_x509(ask)!r}")
    if leaf.amd.product_name.split("-")[0] != generation.value:
        return rec.add(role, False, f"productName {leaf.amd.product_name!r} is not "
                       f"{generation.value}")
    name = f"{role} of {leaf.amd.csp_id}" if leaf.is_vlek else f"{role} ({leaf.amd.product_name})"
    problem = _validity(name, _snp_time(leaf.tbs.not_before.text),
                        _snp_time(leaf.tbs.not_after.text), now)
    if problem:
        return rec.add(role, False, problem)
    return rec.add(role, True, f"{leaf.amd.product_name}, signed by {common_name_x509(ask)}")


def _check_report_against_leaf(rec: _Recorder, report: AttestationReport,
                               leaf: SnpCertificate, generation: Generation) -> None:
    """REPORTED_TCB equal to the certified TCB; the chip id (VCEK) or its absence (VLEK)."""
    try:
        reported = report.tcb("reported_tcb", generation)
    except SnpFormatError as error:
        rec.add("reported TCB", False, str(error))
    else:
        certified = leaf.amd.tcb
        names: tuple[tuple[str, str], ...] = (
            (("fmcSPL", "fmc"),) if generation.turin_layout else ())
        names += (("blSPL", "bootloader"), ("teeSPL", "tee"), ("snpSPL", "snp"),
                  ("ucodeSPL", "microcode"))
        diffs = [f"{ext} {getattr(certified, attr)} in the certificate, {getattr(reported, attr)}"
                 " in the report" for ext, attr in names
                 if getattr(certified, attr) != getattr(reported, attr)]
        if generation.turin_layout != (certified.fmc is not None):
            diffs.append("the certificate's TCB layout is not the " + generation.value + " one")
        rec.add("reported TCB", not diffs, "; ".join(diffs) or ", ".join(
            f"{ext}={getattr(reported, attr)}" for ext, attr in names))
    size = generation.hwid_size
    if leaf.is_vlek:
        if any(report.chip_id):
            rec.add("chip id", False, "a VLEK-signed report must carry a zero CHIP_ID")
        else:
            rec.add("chip id", True, f"zero (VLEK of {leaf.amd.csp_id})")
    elif leaf.amd.hw_id is None or len(leaf.amd.hw_id) != size:
        rec.add("chip id", False, f"the VCEK's hwID is not {size} bytes")
    elif leaf.amd.hw_id != report.chip_id[:size] or any(report.chip_id[size:]):
        rec.add("chip id", False, f"the report's CHIP_ID {report.chip_id[:size].hex()}... is not"
                f" the VCEK's hwID {leaf.amd.hw_id.hex()}")
    else:
        rec.add("chip id", True, f"{leaf.amd.hw_id.hex()[:32]}... ({size} bytes)")


def check_crl(crl_der: bytes, ark: x509.Certificate, serials: dict[str, int],
              now: datetime.datetime) -> tuple[bool, str]:
    """A CRL signed by the ARK with RSASSA-PSS, in date at `now` (thisUpdate to nextUpdate),
    revoking none of `serials`."""
    try:
        crl = (x509.load_pem_x509_crl(crl_der) if crl_der.lstrip().startswith(b"-----")
               else x509.load_der_x509_crl(crl_der))
    except ValueError as error:
        return False, f"does not parse: {error}"
    if crl.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return False, "is not signed with RSASSA-PSS"
    try:
        key = ark.public_key()
    except _CERT_ERRORS:
        return False, "the ARK's key is not RSA"
    if crl.issuer != ark.subject or not isinstance(key, rsa.RSAPublicKey) \
            or not crl.is_signature_valid(key):
        return False, "is not signed by the ARK"
    window = (f"thisUpdate {_utc(crl.last_update_utc)}, nextUpdate "
              f"{_utc(crl.next_update_utc) if crl.next_update_utc else 'none'}, checked at "
              f"{_utc(now)}")
    if now < crl.last_update_utc:
        return False, f"is not yet valid ({window})"
    if crl.next_update_utc is not None and crl.next_update_utc < now:
        return False, f"is stale ({window})"
    for name, serial in serials.items():
        if crl.get_revoked_certificate_by_serial_number(serial) is not None:
            return False, f"revokes the {name} (serial 0x{serial:x})"
    return True, f"{len(crl)} revoked, none of {', '.join(serials)}"


def verify_report_chain(
    report_bytes: bytes,
    certs: CertBundle | None = None,
    *,
    trust: Trust = "amd",
    product: str | Generation | None = None,
    kds: KdsClient | None = None,
    crl: bytes | None = None,
    check_revocation: bool = False,
    now: datetime.datetime | None = None,
    cache: ChainCache | None = None,
) -> VerificationResult:
    """Check everything an SNP report's signature rests on; see the module docstring.

    `certs` missing a leaf fetches the VCEK from `kds` (by CHIP_ID and REPORTED_TCB); missing
    an ASK takes the shipped one. `check_revocation` (or a `crl`) adds the CRL check, the CRL
    fetched from `kds` when not given. `now` (timezone-aware; default the clock) is the time
    every certificate and the CRL must be valid at, as go-sev-guest's Options.Now: evidence
    checked as of when it was produced (ConfigError for a naive datetime)."""
    rec = _Recorder()
    when = _checking_time(now)
    certs = certs or CertBundle()

    def done(report: AttestationReport | None = None, generation: Generation | None = None,
             leaf: SnpCertificate | None = None) -> VerificationResult:
        return VerificationResult(tuple(rec.checks), trust, report, generation, leaf)

    if trust not in TRUSTS:
        rec.add("trust", False, f"{trust!r} is not one of {TRUSTS}")
        return done()
    try:
        report = AttestationReport.from_bytes(report_bytes)
    except SnpFormatError as error:
        rec.add("report", False, f"{type(error).__name__}: {error}")
        return done()
    rec.add("report", True, f"version {report.version}, 0x{REPORT_SIZE:x} bytes, reserved "
            "bytes zero")
    signing_key = report.signer_info.signing_key
    if signing_key is SigningKey.NONE or report.signer_info.mask_chip_key:
        rec.add("signing key", False, "the report is not signed (SIGNING_KEY none or "
                "MASK_CHIP_KEY set)")
        return done(report)
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        rec.add("signing key", False, f"signature algorithm {report.signature_algo} is not "
                "ECDSA P-384/SHA-384")
        return done(report)
    vlek = signing_key is SigningKey.VLEK
    role = "VLEK" if vlek else "VCEK"
    rec.add("signing key", True, role)

    leaf_der = certs.leaf
    leaf: SnpCertificate | None = None
    leaf_error: str | None = None
    if leaf_der is not None and cache is not None and leaf_der in cache.parsed:
        leaf = cache.parsed[leaf_der]
    elif leaf_der is not None:
        try:
            leaf = SnpCertificate.from_der(leaf_der)
        except SnpFormatError as error:
            leaf_error = f"{type(error).__name__}: {error}"
    if leaf_error is not None and report.version < 3 and product is None:
        rec.add(role, False, leaf_error)  # the v2 report's product was to come from it
        return done(report)
    generation = _infer_generation(report, product, leaf, rec)
    if generation is None:
        return done(report)
    roots = trusted_roots(trust, generation)
    if leaf_der is None:
        if kds is None or vlek:
            rec.add(role, False, "no certificate given" + (
                "" if vlek else " and no KDS to fetch the VCEK from"))
            return done(report, generation)
        try:
            leaf_der = kds.vcek(generation, report.chip_id, report.tcb("reported_tcb",
                                                                      generation))
            leaf = SnpCertificate.from_der(leaf_der)
        except (KdsFetchError, SnpFormatError) as error:
            rec.add(role, False, f"{type(error).__name__}: {error}")
            return done(report, generation)
    if certs.ask is None and kds is not None:
        try:
            ask_cert, ark_cert = kds.cert_chain(generation, vlek)
        except KdsFetchError as error:
            rec.add("ASVK" if vlek else "ASK", False, f"{type(error).__name__}: {error}")
            return done(report, generation)
        der = serialization.Encoding.DER
        certs = CertBundle(leaf_der, ask_cert.public_bytes(der),
                           certs.ark or ark_cert.public_bytes(der), certs.source)

    key_id = (trust, generation.value, certs.ark or b"", certs.ask or b"", leaf_der)
    cached = cache.entries.get(key_id) if cache is not None else None
    if cached is not None and cache is not None and (
            cached.not_before <= when <= cached.not_after):
        cache.hits += 1
        rec.checks.extend(cached.checks)
        leaf, public_key, ark, ask = cached.leaf, cached.key, cached.ark, cached.ask
    else:
        chain = _verify_ca(rec, roots, vlek, certs, when)
        if chain is None:
            return done(report, generation)
        ark, ask = chain
        if leaf is None:
            rec.add(role, False, leaf_error or "does not parse")
            return done(report, generation)
        if not _verify_leaf(rec, leaf, ask, generation, vlek, when):
            return done(report, generation, leaf)
        public_key = leaf.tbs.public_key()
        if cache is not None:
            cache.parsed[leaf_der] = leaf
            checks = tuple(c for c in rec.checks
                           if c.name not in ("report", "signing key", "product"))
            cache.entries[key_id] = _VerifiedChain(
                leaf, public_key, ark, ask, checks,
                max(ark.not_valid_before_utc, ask.not_valid_before_utc,
                    _snp_time(leaf.tbs.not_before.text)),
                min(ark.not_valid_after_utc, ask.not_valid_after_utc,
                    _snp_time(leaf.tbs.not_after.text)))
    if check_revocation or crl is not None:  # each time: the CRL and `now` may differ
        _crl_check(rec, crl, kds, generation, vlek, ark,
                   {"ASVK" if vlek else "ASK": ask.serial_number, role: leaf.tbs.serial}, when)
        if not rec.checks[-1].passed:
            return done(report, generation, leaf)
    try:
        public_key.verify(report.signature_der(), bytes(report_bytes[:SIGNED_SIZE]),
                          ec.ECDSA(hashes.SHA384()))
        rec.add("signature", True, f"ECDSA P-384/SHA-384 by the {role}")
    except InvalidSignature:
        rec.add("signature", False, f"the {role} did not sign this report")
    _check_report_against_leaf(rec, report, leaf, generation)
    return done(report, generation, leaf)


def _crl_check(rec: _Recorder, crl: bytes | None, kds: KdsClient | None,
               generation: Generation, vlek: bool, ark: x509.Certificate,
               serials: dict[str, int], now: datetime.datetime) -> None:
    if crl is None:
        if kds is None:
            rec.add("CRL", False, "revocation check asked for, but no CRL and no KDS given")
            return
        try:
            crl = kds.crl(generation, vlek)
        except KdsFetchError as error:
            rec.add("CRL", False, f"{type(error).__name__}: {error}")
            return
    passed, detail = check_crl(crl, ark, serials, now)
    rec.add("CRL", passed, detail)


def verify_certificate_chain(certs: CertBundle, product: str | Generation, *,
                             trust: Trust = "amd", vlek: bool = False,
                             now: datetime.datetime | None = None) -> VerificationResult:
    """The chain alone (ARK, ASK or ASVK, and the leaf if given), without a report: for a
    certificate fetched or cached before any report arrives; `now` as for
    `verify_report_chain`."""
    rec = _Recorder()
    generation = product_generation(product)
    when = _checking_time(now)
    leaf = None
    chain = _verify_ca(rec, trusted_roots(trust, generation), vlek, certs, when)
    if chain is not None and certs.leaf is not None:
        try:
            leaf = SnpCertificate.from_der(certs.leaf)
        except SnpFormatError as error:
            rec.add("VLEK" if vlek else "VCEK", False, f"{type(error).__name__}: {error}")
        else:
            _verify_leaf(rec, leaf, chain[1], generation, vlek, when)
    return VerificationResult(tuple(rec.checks), trust, None, generation, leaf)


def verifier(certs: CertBundle, *, trust: Trust = "amd", product: str | None = None,
             now: datetime.datetime | None = None) -> Callable[[bytes], VerificationResult]:
    """A function verifying many reports against one bundle with a shared chain cache, at
    `now` if given (else at each call's clock time)."""
    chain_cache = ChainCache()

    def verify(report_bytes: bytes) -> VerificationResult:
        return verify_report_chain(report_bytes, certs, trust=trust, product=product,
                                   cache=chain_cache, now=now)

    return verify
