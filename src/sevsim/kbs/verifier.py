"""The KBS's evidence verifier: is this SNP report genuine, fresh for this session, and does it
describe a VM the owner's attestation policy accepts? If so, what does it claim?

Nothing here re-implements a check: the signature and the chain (VCEK or VLEK, ASK or ASVK,
ARK, CRL, TCB and chip id against the certificate) are `sevsim.attest.verify_report_chain`'s,
the policy is `sevsim validate`'s (`sevsim.attest.Policy`). This module adds what a key broker
needs around them: where the VCEK comes from (the evidence's certificate table, else an offline
directory of certificates, else a KDS with its on-disk cache and 429 backoff), the REPORT_DATA
binding to the session, one typed refusal with a stable reason for problem documents and the
audit log, and the claims a token carries.
"""

from __future__ import annotations

import datetime
import hmac
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_report import AttestationReport, build_cert_table
from sevsim.abi.snp_tcb import Generation, PlatformInfo, PolicyFlags, SigningKey, TcbVersion
from sevsim.attest.kds_client import KdsClient
from sevsim.attest.snp_policy import TCB_FIELDS, Policy
from sevsim.attest.snp_verify import (
    CertBundle,
    ChainCache,
    Trust,
    VerificationResult,
    der_certificates,
    product_generation,
    verify_report_chain,
)
from sevsim.errors import ConfigError, KbsEvidenceError, SnpFormatError
from sevsim.inputs import MAX_CERT_FILE, read_bounded
from sevsim.kbs.policy import evaluate_attestation_policy

Claims = dict[str, Any]  # JSON-able: str (hex for bytes), int and bool values

REPORT_DATA_SIZE = 64
# the reason a failed `verify_report_chain` check gives a refusal (CRL and the leaf refine it)
_REASONS = {"trust": "config", "report": "format", "signing key": "signature",
            "product": "product", "ARK": "chain", "ASK": "chain", "ASVK": "chain",
            "VCEK": "chain", "VLEK": "chain", "CRL": "crl", "signature": "signature",
            "reported TCB": "tcb", "chip id": "chip-id"}
REASONS = (*sorted(set(_REASONS.values())), "kds", "revoked", "report-data", "policy")
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


@dataclass(frozen=True)
class EvidenceConfig:
    """How a KBS checks SNP evidence. `trust` picks the shipped roots (AMD's unless
    "sevsim" is asked for); `vcek_store` is an offline directory of VCEK/VLEK certificates
    (DER or PEM, any names, subdirectories too), tried when the evidence carries none;
    `kds` fetches the rest (its cache_dir keeps KDS answers on disk). `check_revocation`
    (or a `crl`) adds the CRL check; `now` checks old evidence as of when it was produced.
    `policy` is the owner's attestation policy: the default one still refuses debuggable,
    migratable and non-VMPL0 guests. `cache` remembers verified chains across calls,
    `store_index` the store's certificates by file (path, mtime, size), so each file is
    parsed once and one added later is still found."""

    trust: Trust = "amd"
    policy: Policy = field(default_factory=Policy)
    vcek_store: Path | None = None
    kds: KdsClient | None = None
    check_revocation: bool = False
    crl: bytes | None = None
    product: str | None = None
    now: datetime.datetime | None = None
    cache: ChainCache = field(default_factory=ChainCache, compare=False)
    store_index: dict[tuple[Path, int, int], tuple[bytes, SnpCertificate] | None] = field(
        default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class VerifiedEvidence:
    """A genuine report bound to its session, not yet held against a policy: the policy is
    applied apart (`claims`) so that a broker can read it in the transaction that records
    the verdict, after the costly checks, which then hold no database lock."""

    report: AttestationReport
    generation: Generation
    signer: str  # "VCEK" or "VLEK"

    def claims(self, policy: Policy) -> Claims:
        """The report's claims if it passes `policy`; KbsEvidenceError("policy") if not."""
        decision = evaluate_attestation_policy(policy, self.report)
        if not decision.allowed:
            raise KbsEvidenceError("policy", decision.reason)
        return claims_of(self.report, self.generation, self.signer)


def verify_snp_evidence(report: bytes, certs: list[tuple[str, bytes]],
                        expected_report_data: bytes | tuple[bytes, ...],
                        config: EvidenceConfig) -> Claims:
    """The claims of a genuine report whose REPORT_DATA is one of `expected_report_data` and
    which passes `config.policy`; KbsEvidenceError (reason in `REASONS`) otherwise.

    `certs` are the evidence's certificate-table entries as (GUID text, DER); entries of
    GUIDs other than the VCEK, VLEK, ASK/ASVK and ARK ones are ignored."""
    return check_snp_evidence(report, certs, expected_report_data, config).claims(
        config.policy)


def check_snp_evidence(report: bytes, certs: list[tuple[str, bytes]],
                       expected_report_data: bytes | tuple[bytes, ...] | None,
                       config: EvidenceConfig) -> VerifiedEvidence:
    """`verify_snp_evidence` up to the policy, which it leaves out (`config.policy` unused):
    the report is genuine and its REPORT_DATA one of `expected_report_data`. None checks no
    binding: for an operator looking at recorded evidence, never for a release."""
    expected = ((bytes(expected_report_data),)
                if isinstance(expected_report_data, bytes | bytearray)
                else None if expected_report_data is None else tuple(expected_report_data))
    if expected is not None and (not expected or any(len(value) != REPORT_DATA_SIZE
                                                     for value in expected)):
        raise ConfigError(f"expected REPORT_DATA must be one or more {REPORT_DATA_SIZE}-byte "
                          "values")
    bundle = _evidence_bundle(certs)
    if bundle.leaf is None and config.vcek_store is not None:
        bundle = replace(bundle, leaf=_stored_leaf(config, report))
    result = verify_report_chain(report, bundle, trust=config.trust, product=config.product,
                                 kds=config.kds, crl=config.crl,
                                 check_revocation=config.check_revocation, now=config.now,
                                 cache=config.cache)
    verified = _verified_report(result)
    # constant time, and every candidate compared: the time taken says nothing about which
    matches = [hmac.compare_digest(verified.report_data, value) for value in expected or ()]
    if expected is not None and not any(matches):
        raise KbsEvidenceError("report-data", "REPORT_DATA "
                               f"{verified.report_data.hex()[:32]}... does not bind this "
                               "session's nonce and key")
    assert result.generation is not None and result.leaf is not None  # set when ok
    return VerifiedEvidence(verified, result.generation,
                            "VLEK" if result.leaf.is_vlek else "VCEK")


def _verified_report(result: VerificationResult) -> AttestationReport:
    """The report if every check passed, else the refusal its first failed check names."""
    if result.ok and result.report is not None:
        return result.report
    if not result.failures:
        raise KbsEvidenceError("format", "nothing was checked")
    first = result.failures[0]
    reason = _REASONS.get(first.name, "chain")
    if first.name == "CRL" and first.detail.startswith("revokes"):
        reason = "revoked"
    elif "KdsFetchError" in first.detail:
        reason = "kds"
    detail = "; ".join(f"{check.name}: {check.detail}" for check in result.failures)
    raise KbsEvidenceError(reason, detail)


def _evidence_bundle(certs: list[tuple[str, bytes]]) -> CertBundle:
    """The evidence's certificate-table entries as a CertBundle: through the GHCB table's
    own encoding, so the table's rules (no GUID twice, none all-zero) hold here too."""
    entries = []
    for index, (guid, der) in enumerate(certs):
        try:
            entries.append((uuid.UUID(guid), bytes(der)))
        except (ValueError, TypeError, AttributeError):
            raise KbsEvidenceError("format", f"cert_chain[{index}]: {guid!r} is not a "
                                   "GUID") from None
    try:
        return CertBundle.from_cert_table(build_cert_table(entries), "evidence")
    except SnpFormatError as error:
        raise KbsEvidenceError("format", str(error)) from None


def _stored_leaf(config: EvidenceConfig, report_bytes: bytes) -> bytes | None:
    """The stored VCEK certified for this report's chip and reported TCB, or a stored VLEK
    of its product at that TCB; None when there is none (or the report does not parse: the
    chain check names that). A file that holds no VCEK or VLEK is skipped, not fatal: the
    store is the operator's, the evidence the attacker's."""
    directory = config.vcek_store
    if directory is None or not directory.is_dir():
        raise ConfigError(f"VCEK store {directory} is not a directory")
    try:
        report = AttestationReport.from_bytes(report_bytes)
        generation = (report.generation if config.product is None
                      else product_generation(config.product))
        tcb = report.tcb("reported_tcb", generation)
    except (SnpFormatError, ConfigError):
        return None
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() not in _CERT_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in config.store_index:
            config.store_index[key] = _load_leaf(path)
        entry = config.store_index[key]
        if entry is not None and _certifies(entry[1], report, generation, tcb):
            return entry[0]
    return None


def _load_leaf(path: Path) -> tuple[bytes, SnpCertificate] | None:
    try:
        der = der_certificates(read_bounded(path, MAX_CERT_FILE, "a certificate file"))[0]
        return der, SnpCertificate.from_der(der)
    except (SnpFormatError, ConfigError):
        return None


def _certifies(cert: SnpCertificate, report: AttestationReport, generation: Generation,
               tcb: TcbVersion) -> bool:
    if cert.amd.tcb != tcb or cert.amd.product_name.split("-")[0] != generation.value:
        return False
    if cert.is_vlek:
        return report.signer_info.signing_key is SigningKey.VLEK
    hw_id = cert.amd.hw_id or b""
    return report.chip_id[:len(hw_id)] == hw_id


def claims_of(report: AttestationReport, generation: Generation, signer: str) -> Claims:
    """What a verified report says, flat, for tokens and resource policies: bytes as
    lowercase hex, one boolean per guest-policy and PLATFORM_INFO bit, every TCB component
    (`reported_tcb_snp`, ...), firmware versions as "MAJOR.MINOR.BUILD"."""
    policy = report.policy_info
    claims: Claims = {
        "tee": "snp",
        "product": generation.value,
        "signer": signer,
        "report_version": report.version,
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "report_data": report.report_data.hex(),
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "chip_id": report.chip_id.hex(),
        "policy": report.policy,
        "policy_abi_major": policy.abi_major,
        "policy_abi_minor": policy.abi_minor,
    }
    for flag in PolicyFlags:
        if flag is not PolicyFlags.RESERVED_MBO:
            claims[f"policy_{(flag.name or '').lower()}"] = flag in policy.flags
    claims["platform_info"] = report.platform_info
    info = PlatformInfo(report.platform_info)
    for bit in PlatformInfo:
        claims[f"platform_{(bit.name or '').lower()}"] = bit in info
    for name in TCB_FIELDS:
        tcb = report.tcb(f"{name}_tcb", generation)
        for component in ("bootloader", "tee", "snp", "microcode", "fmc"):
            value = getattr(tcb, component)
            if value is not None:
                claims[f"{name}_tcb_{component}"] = value
    claims["current_firmware"] = (f"{report.current_major}.{report.current_minor}."
                                  f"{report.current_build}")
    claims["committed_firmware"] = (f"{report.committed_major}.{report.committed_minor}."
                                    f"{report.committed_build}")
    return claims
