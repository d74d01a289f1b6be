"""The SNP tenant's evidence as the demo shows it: its report verified by a relying party
(signature, VCEK chain, measurement, REPORT_DATA, policy) and its SNP-bound vTPM's measured
boot (events, PCRs, the checks `verify_vtpm_evidence` made)."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key

from sevsim.abi.snp_cert import SnpCertificate, common_name
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.svsm_vtpm import VtpmEvidence
from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, EventType
from sevsim.abi.tpm2 import HashAlg
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.attest.snp_verify import (
    CertBundle,
    VerificationResult,
    common_name_x509,
    verify_report_chain,
)
from sevsim.attest.svsm_vtpm import verify_vtpm_evidence
from sevsim.attest.tpm_boot import BootExpectation
from sevsim.errors import QuoteError, SnpVerificationError


def b64(data: bytes) -> str:
    """Standard base64, as the document carries pages and reports."""
    return base64.b64encode(data).decode()


def _key_name(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {'P-384' if key.curve.name == 'secp384r1' else key.curve.name}"
    return type(key).__name__


def _chain(certs: CertBundle, result: VerificationResult) -> list[dict[str, Any]]:
    """The ARK, ASK and VCEK the report was checked against, each with whether the checks
    about it passed."""
    def ok(*names: str) -> bool:
        mine = [c for c in result.checks if c.name in names]
        return len(mine) == len(names) and all(c.passed for c in mine)

    rows = []
    for role, der, signer in (("ARK", certs.ark, "ARK"), ("ASK", certs.ask, "ARK")):
        if der is None:
            continue
        cert = x509.load_der_x509_certificate(der)
        rows.append({"role": role, "subject": common_name_x509(cert),
                     "issuer": _issuer_cn(cert), "serial": str(cert.serial_number),
                     "not_before": cert.not_valid_before_utc.isoformat(),
                     "not_after": cert.not_valid_after_utc.isoformat(),
                     "key": _key_name(cert.public_key()), "signed_by": signer,
                     "ok": ok(role), "pem": cert.public_bytes(Encoding.PEM).decode()})
    if certs.leaf is not None:
        leaf = SnpCertificate.from_der(certs.leaf)
        tbs = leaf.tbs
        rows.append({"role": "VCEK", "subject": common_name(tbs.subject),
                     "issuer": common_name(tbs.issuer), "serial": str(tbs.serial),
                     "not_before": _cert_time(tbs.not_before.text),
                     "not_after": _cert_time(tbs.not_after.text),
                     "key": _key_name(load_der_public_key(tbs.spki)), "signed_by": "ASK",
                     "ok": ok("VCEK", "signature"), "pem": _pem(certs.leaf)})
    return rows


def _issuer_cn(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _cert_time(text: str) -> str:
    """DER UTCTime or GeneralizedTime as ISO 8601."""
    full = text if len(text) == 15 else ("19" if int(text[:2]) >= 50 else "20") + text
    return datetime.datetime.strptime(full, "%Y%m%d%H%M%SZ").replace(
        tzinfo=datetime.UTC).isoformat()


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def attestation_document(report: bytes, certs: CertBundle, expected: bytes,
                         report_data: bytes) -> dict[str, Any]:
    """Verify the SNP tenant's report (signature, VCEK chain to sevsim's simulated ARK) and
    check its claims as the relying party would: its measurement, REPORT_DATA and policy."""
    result = verify_report_chain(report, certs, trust="sevsim")
    parsed = AttestationReport.from_bytes(report)
    policy = Policy(measurements=(expected,), report_data=report_data)
    claims = validate_report(parsed, policy)
    fields = [{"name": c.name, "value": c.actual, "check": f"wants {c.expected}",
               "ok": c.passed} for c in claims.checks]
    fields += [{"name": c.name, "value": c.detail, "check": "verified", "ok": c.passed}
               for c in result.checks]
    failures = [c.name for c in result.failures] + [c.name for c in claims.checks
                                                    if not c.passed]
    return {"report": b64(report), "fields": fields, "chain": _chain(certs, result),
            "verdict": "ok" if not failures else "failed: " + ", ".join(failures)}


# verify_vtpm_evidence's checks in its order: name, what passing means, QuoteError reasons
VTPM_CHECKS = (
    ("report", "VCEK signature and chain to the ARK, measurement as expected", ()),
    ("quote", "signed by the AK, over the nonce, for the PCR values given",
     ("format", "ak", "signature", "nonce", "pcrs")),
    ("ak-bound", "REPORT_DATA = SHA-512(nonce || AK TPMT_PUBLIC), at VMPL0",
     ("vmpl", "ak-not-bound")),
    ("event-log", "the boot's event log replays to the quoted PCRs",
     ("event-log", "pcr-selection", "replay")),
    ("expected", "PCR 4: the program's SHA-256, PCR 0: AMD SEV-SNP, PCR 7: secure boot off",
     ("expected",)),
)


def vtpm_document(evidence: bytes, event_log: bytes, nonce: bytes, certs: CertBundle,
                  expected_measurement: bytes, program: bytes) -> dict[str, Any]:
    """The SNP-bound vTPM's boot, checked with `verify_vtpm_evidence`: the report binds the
    AK, the AK signed the quote over the nonce, the log replays to the quoted PCRs, and PCR 4
    holds the program. Only what the seed determines is kept (the events and PCR values,
    the checks), not the AK or the signature, which libtpms draws."""
    log = EventLog.from_bytes(event_log)
    events = [{"pcr": e.pcr, "type": _event_type(e.event_type),
               "digest": e.digests[HashAlg.SHA256].hex(),
               "description": _describe(e.data)} for e in log.events]
    try:
        verified = verify_vtpm_evidence(
            evidence, nonce, certs, trust="sevsim",
            policy=Policy(measurements=(expected_measurement,)), event_log=event_log,
            expected=BootExpectation(program_sha256=hashlib.sha256(program).digest(),
                                     technology=ConfidentialTechnology.AMD_SEV_SNP,
                                     secure_boot=False))
    except SnpVerificationError as error:
        failed: tuple[str, str] | None = ("report", str(error))
    except QuoteError as error:
        failed = (next((name for name, _, reasons in VTPM_CHECKS if error.reason in reasons),
                       "quote"), str(error))
    else:
        failed = None
    checks = []
    for name, detail, _ in VTPM_CHECKS:  # in the order the verifier makes them
        if failed is not None and failed[0] == name:
            checks.append({"name": name, "ok": False, "detail": failed[1]})
            break
        checks.append({"name": name, "ok": True, "detail": detail})
    pcrs = verified.pcrs if failed is None else VtpmEvidence.from_bytes(evidence).pcrs
    sha256 = pcrs[HashAlg.SHA256]
    return {"events": events,
            "pcrs": {"sha256": {str(pcr): value.hex() for pcr, value in sorted(sha256.items())}},
            "quote": {"ok": all(c["ok"] for c in checks), "checks": checks}}


def _event_type(value: int) -> str:
    try:
        return EventType(value).name
    except ValueError:
        return f"0x{value:08x}"


def _describe(data: bytes) -> str:
    """An event's data as text where it is text, else its size."""
    text = data.rstrip(b"\0").decode("ascii", "replace")
    if data and text.isprintable():
        return text
    return f"{len(data)} bytes"


