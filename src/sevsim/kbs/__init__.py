"""A key broker service speaking Trustee's KBS protocol: it releases a secret to a VM only
after the VM's attestation evidence verifies and passes the owner's policy.

The wire formats live in `sevsim.abi.kbs` and `sevsim.abi.kbs_snp` (abi/, because the guest's
attestation agent speaks them too); `sevsim.kbs.jose` encrypts resources to the TEE's key and
signs attestation tokens; `sevsim.kbs.service` is the HTTP API (`create_app(KbsConfig)`) and
`sevsim.kbs.client` its client. The names in `__all__` are the README's API; they load with their
module on first use, so importing one part of the broker does not import the others.
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
    from sevsim.kbs.service import KbsConfig, create_app

# public name -> module that defines it
_LAZY = {
    **dict.fromkeys(("Attestation", "Challenge", "EcPublicJwk", "InitData", "Request",
                     "RsaPublicJwk", "RuntimeData", "TeeEvidence", "parse_jwk"), "sevsim.abi.kbs"),
    **dict.fromkeys(("SnpEvidence", "snp_evidence_from_json", "snp_evidence_to_json"),
                    "sevsim.abi.kbs_snp"),
    **dict.fromkeys(("TokenSigner", "decrypt_jwe", "encrypt_to_tee"), "sevsim.kbs.jose"),
    **dict.fromkeys(("KbsConfig", "create_app"), "sevsim.kbs.service"),
    "KbsClient": "sevsim.kbs.client",
}

__all__ = ["Attestation", "Challenge", "EcPublicJwk", "InitData", "KbsClient", "KbsConfig",
           "Request", "RsaPublicJwk", "RuntimeData", "SnpEvidence", "TeeEvidence", "TokenSigner",
           "create_app", "decrypt_jwe", "encrypt_to_tee", "parse_jwk", "snp_evidence_from_json",
           "snp_evidence_to_json"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sevsim.kbs' has no attribute {name!r}")
