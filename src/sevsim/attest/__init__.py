"""The relying party: what a guest owner runs to decide whether to trust a platform and a VM.

Depends only on sevsim.abi, sevsim.errors and crypto libraries, so the same code checks
chains and measurements from real AMD hardware. The names in `__all__` load with their module
on first use, so `sevsim measure` does not pay for the verifier's imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sevsim.attest.gce_endorsement import (
        GUID_GCE_ENDORSEMENT,
        LaunchEndorsement,
        endorsement_in_cert_table,
        golden_measurements,
        load_google_root,
        simulated_google_root,
        verify_endorsement,
    )
    from sevsim.attest.idblock import load_signing_key, make_id_block
    from sevsim.attest.integrity import IntegrityBaseline, IntegrityReport
    from sevsim.attest.kds_client import KdsClient
    from sevsim.attest.measure import snp_ovmf_digest, snp_svsm_digest
    from sevsim.attest.sev_chain import PlatformChain
    from sevsim.attest.sev_chain import verify as verify_sev_chain
    from sevsim.attest.sev_owner import GuestOwner, expected_launch_digest
    from sevsim.attest.snp_policy import Policy, policy_for, validate_report
    from sevsim.attest.snp_verify import CertBundle, ChainCache, load_report, verify_report_chain
    from sevsim.attest.svsm_vtpm import VerifiedVtpm, verify_vtpm_evidence
    from sevsim.attest.tpm_boot import BootExpectation, VerifiedBoot, verify_boot
    from sevsim.attest.tpm_quote import ak_public_key, replay_event_log, verify_quote

# public name -> (module, name there)
_LAZY = {
    "GUID_GCE_ENDORSEMENT": ("gce_endorsement", "GUID_GCE_ENDORSEMENT"),
    "LaunchEndorsement": ("gce_endorsement", "LaunchEndorsement"),
    "endorsement_in_cert_table": ("gce_endorsement", "endorsement_in_cert_table"),
    "golden_measurements": ("gce_endorsement", "golden_measurements"),
    "load_google_root": ("gce_endorsement", "load_google_root"),
    "simulated_google_root": ("gce_endorsement", "simulated_google_root"),
    "verify_endorsement": ("gce_endorsement", "verify_endorsement"),
    "CertBundle": ("snp_verify", "CertBundle"),
    "ChainCache": ("snp_verify", "ChainCache"),
    "GuestOwner": ("sev_owner", "GuestOwner"),
    "KdsClient": ("kds_client", "KdsClient"),
    "PlatformChain": ("sev_chain", "PlatformChain"),
    "Policy": ("snp_policy", "Policy"),
    "expected_launch_digest": ("sev_owner", "expected_launch_digest"),
    "load_report": ("snp_verify", "load_report"),
    "load_signing_key": ("idblock", "load_signing_key"),
    "make_id_block": ("idblock", "make_id_block"),
    "policy_for": ("snp_policy", "policy_for"),
    "snp_ovmf_digest": ("measure", "snp_ovmf_digest"),
    "snp_svsm_digest": ("measure", "snp_svsm_digest"),
    "validate_report": ("snp_policy", "validate_report"),
    "verify_report_chain": ("snp_verify", "verify_report_chain"),
    "verify_sev_chain": ("sev_chain", "verify"),  # the legacy SEV platform chain
    "ak_public_key": ("tpm_quote", "ak_public_key"),
    "verify_quote": ("tpm_quote", "verify_quote"),  # a TPM 2.0 quote (vTPM attestation)
    "replay_event_log": ("tpm_quote", "replay_event_log"),  # a measured boot's PCRs
    "BootExpectation": ("tpm_boot", "BootExpectation"),
    "VerifiedBoot": ("tpm_boot", "VerifiedBoot"),
    "verify_boot": ("tpm_boot", "verify_boot"),  # AK + quote + event log together
    "IntegrityBaseline": ("integrity", "IntegrityBaseline"),  # GCE-style integrity monitoring
    "IntegrityReport": ("integrity", "IntegrityReport"),
    "VerifiedVtpm": ("svsm_vtpm", "VerifiedVtpm"),
    "verify_vtpm_evidence": ("svsm_vtpm", "verify_vtpm_evidence"),  # the SNP-bound vTPM
}

__all__ = ["GUID_GCE_ENDORSEMENT", "BootExpectation", "CertBundle", "ChainCache", "GuestOwner",
           "IntegrityBaseline", "IntegrityReport", "KdsClient", "LaunchEndorsement",
           "PlatformChain", "Policy", "VerifiedBoot", "VerifiedVtpm", "ak_public_key",
           "endorsement_in_cert_table", "expected_launch_digest", "golden_measurements",
           "load_google_root", "load_report", "load_signing_key", "make_id_block", "policy_for",
           "replay_event_log", "simulated_google_root", "snp_ovmf_digest", "snp_svsm_digest",
           "validate_report", "verify_boot", "verify_endorsement", "verify_quote",
           "verify_report_chain", "verify_sev_chain", "verify_vtpm_evidence"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(f"sevsim.attest.{module}"), attr)
    raise AttributeError(f"module 'sevsim.attest' has no attribute {name!r}")
