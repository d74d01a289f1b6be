"""Verify the SNP-bound vTPM's evidence as a relying party: the SNP report and its chain, the
report's binding of the attestation key and the nonce (REPORT_DATA = SHA-512(nonce || AK
TPMT_PUBLIC), sevsim.abi.svsm_vtpm), the quote made with that key, and optionally the boot's
event log (the guest kernel measures GCE's boot events into this vTPM before the program runs;
the program hands the log over) and the PCR values the relying party expects.

The log is checked as a host vTPM's is, by tpm_boot.verify_boot with the evidence's AK and
quote: the quote must cover every PCR the log extends, the log must replay to its pcrDigest,
and a BootExpectation's program (PCR4), technology (PCR0) and Secure Boot state (PCR7) are
read from the log's events (reasons "pcr-selection", "replay", "event-log", "expected").

The order makes each failure name its cause: a quote not signed by the evidence's AK is
"signature", one over another nonce "nonce", claimed PCR values that are not what was quoted
"pcrs"; a quote that verifies with an AK the report does not bind is "ak-not-bound"; a report
requested below VMPL0 (where a guest OS, not the monitor, could bind a key of its choosing)
"vmpl"; then the log's checks; quoted values other than the expected ones "pcrs". The report's
own failures are SnpVerificationError with its checks.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sevsim.abi import tpm2
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.svsm_vtpm import VtpmEvidence, report_data
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.attest.snp_verify import CertBundle, Trust, verify_report_chain
from sevsim.attest.tpm_boot import BootExpectation, VerifiedBoot, verify_boot
from sevsim.attest.tpm_quote import verify_quote
from sevsim.errors import QuoteError, SnpVerificationError, TpmFormatError


@dataclass(frozen=True)
class VerifiedVtpm:
    """Evidence that passed: the report, the AK it binds, the quote and the quoted PCR values
    (hash algorithm -> PCR -> value); with an event log, the boot it attests."""

    report: AttestationReport
    ak_public: bytes
    quote: tpm2.QuoteAttest
    pcrs: Mapping[int, Mapping[int, bytes]]
    boot: VerifiedBoot | None = None


def verify_vtpm_evidence(evidence: bytes | VtpmEvidence, nonce: bytes,
                         certs: CertBundle | None = None, *, trust: Trust = "amd",
                         policy: Policy | None = None, event_log: bytes | None = None,
                         expected: BootExpectation | None = None,
                         expected_pcrs: Mapping[int, Mapping[int, bytes]] | None = None
                         ) -> VerifiedVtpm:
    """Accept the evidence for `nonce` or raise: SnpVerificationError for the report (chain,
    signature, and `policy` if given), QuoteError naming the vTPM check that failed.
    `expected` (what the boot must have been) is read from `event_log`, so it needs one."""
    if not isinstance(evidence, VtpmEvidence):
        try:
            evidence = VtpmEvidence.from_bytes(evidence)
        except TpmFormatError as e:
            raise QuoteError("format", str(e)) from e
    report = verify_report_chain(evidence.report, certs, trust=trust).raise_for_failure()
    if policy is not None:
        result = validate_report(report, policy)
        if not result.ok:
            raise SnpVerificationError([(c.name, f"wants {c.expected}, report has {c.actual}")
                                        for c in result.checks if not c.passed])
    quote = verify_quote(evidence.ak_public, evidence.attest, evidence.signature, nonce,
                         evidence.pcrs)
    if report.vmpl != 0:
        raise QuoteError("vmpl", f"the report was requested at VMPL{report.vmpl}; only the "
                                 "VMPL0 monitor's binds its vTPM")
    if not hmac.compare_digest(report.report_data, report_data(nonce, evidence.ak_public)):
        raise QuoteError("ak-not-bound", "REPORT_DATA is not SHA-512(nonce || AK "
                                         "TPMT_PUBLIC): this report does not vouch for the "
                                         "AK that signed the quote")
    boot = None
    if event_log is not None:
        boot = verify_boot(evidence.ak_public, evidence.attest, evidence.signature, nonce,
                           event_log, expected)
    elif expected is not None:
        raise QuoteError("event-log", "the expected boot is read from its event log, and "
                                      "none was given")
    for alg, bank in (expected_pcrs or {}).items():
        for pcr, value in bank.items():
            quoted = evidence.pcrs.get(alg, {}).get(pcr)
            if quoted is None:
                raise QuoteError("pcrs", f"PCR {pcr} of bank 0x{alg:04X} is not quoted")
            if not hmac.compare_digest(quoted, value):
                raise QuoteError("pcrs", f"PCR {pcr} of bank 0x{alg:04X} is {quoted.hex()}, "
                                         f"expected {value.hex()}")
    return VerifiedVtpm(report, evidence.ak_public, quote, evidence.pcrs, boot)

