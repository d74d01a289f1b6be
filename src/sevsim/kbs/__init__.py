"""A key broker service speaking Trustee's KBS protocol: it releases a secret to a VM only
after the VM's attestation evidence verifies and passes the owner's policy.

The wire formats live in `sevsim.abi.kbs` and `sevsim.abi.kbs_snp` (abi/, because the guest's
attestation agent speaks them too); `sevsim.kbs.jose` encrypts resources to the TEE's key and
signs attestation tokens; `sevsim.kbs.verifier` checks SNP evidence and `sevsim.kbs.policy`
decides on attestation and resource policies; `sevsim.kbs.store` keeps sessions, secrets
(encrypted at rest), policies and the audit log; `sevsim.kbs.service` is the HTTP API
(`create_app(KbsConfig)`), `sevsim.kbs.workers` runs it in several processes (`sevsim kbs
serve --workers`) and `sevsim.kbs.client` is its client. The names in `__all__` are the
documented API; they load with their module on first use, so importing one part of the broker
does not import the others.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sevsim.abi.kbs import (
        Attestation,
        Challenge,
        EcPublicJwk,
        InitData,
        Request,
        RsaPublicJwk,
        RuntimeData,
        TeeEvidence,
        parse_jwk,
    )
    from sevsim.abi.kbs_snp import SnpEvidence, snp_evidence_from_json, snp_evidence_to_json
    from sevsim.kbs.client import KbsClient
    from sevsim.kbs.jose import TokenSigner, decrypt_jwe, encrypt_to_tee
    from sevsim.kbs.policy import (
        Decision,
        RegoResourcePolicy,
        ResourcePolicy,
        evaluate_attestation_policy,
        evaluate_resource_policy,
        parse_resource_policy,
    )
    from sevsim.kbs.service import KbsConfig, create_app
    from sevsim.kbs.store import Store
    from sevsim.kbs.verifier import EvidenceConfig, verify_snp_evidence

# public name -> module that defines it
_LAZY = {
    **dict.fromkeys(("Attestation", "Challenge", "EcPublicJwk", "InitData", "Request",
                     "RsaPublicJwk", "RuntimeData", "TeeEvidence", "parse_jwk"), "sevsim.abi.kbs"),
    **dict.fromkeys(("SnpEvidence", "snp_evidence_from_json", "snp_evidence_to_json"),
                    "sevsim.abi.kbs_snp"),
    **dict.fromkeys(("TokenSigner", "decrypt_jwe", "encrypt_to_tee"), "sevsim.kbs.jose"),
    **dict.fromkeys(("Decision", "RegoResourcePolicy", "ResourcePolicy",
                     "evaluate_attestation_policy", "evaluate_resource_policy",
                     "parse_resource_policy"), "sevsim.kbs.policy"),
    **dict.fromkeys(("EvidenceConfig", "verify_snp_evidence"), "sevsim.kbs.verifier"),
    **dict.fromkeys(("KbsConfig", "create_app"), "sevsim.kbs.service"),
    "KbsClient": "sevsim.kbs.client",
    "Store": "sevsim.kbs.store",
}

__all__ = ["Attestation", "Challenge", "Decision", "EcPublicJwk", "EvidenceConfig", "InitData",
           "KbsClient", "KbsConfig", "RegoResourcePolicy", "Request", "ResourcePolicy",
           "RsaPublicJwk", "RuntimeData", "SnpEvidence", "Store", "TeeEvidence", "TokenSigner",
           "create_app", "decrypt_jwe", "encrypt_to_tee", "evaluate_attestation_policy",
           "evaluate_resource_policy", "parse_jwk", "parse_resource_policy",
           "snp_evidence_from_json", "snp_evidence_to_json", "verify_snp_evidence"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sevsim.kbs' has no attribute {name!r}")
