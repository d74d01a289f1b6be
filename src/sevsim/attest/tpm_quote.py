"""Verify a TPM 2.0 quote as a relying party: the AK's ECDSA signature over the TPMS_ATTEST,
the nonce, and the PCR digest recomputed from claimed values. (qualifiedSigner is the AK's
qualified name, which depends on its parent chain: the signature is what binds the AK.)

It works on bytes alone (TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE), so the same check applies
to a host's swtpm, an SNP-bound vTPM, or a physical TPM's quote made with tpm2_quote.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sevsim.abi import tpm2
from sevsim.abi.tcg_eventlog import EventLog
from sevsim.errors import QuoteError, TpmFormatError

# What makes a quote's signature mean "this TPM said so": the TPM signs a TPMS_ATTEST that
# starts with TPM_GENERATED_VALUE only with a restricted key, and refuses to sign outside data
# that starts with it (Part 1, "Restricted signing keys"); fixedTPM keeps the key in the TPM.
AK_REQUIRED = tpm2.ObjectAttr.FIXED_TPM | tpm2.ObjectAttr.RESTRICTED | tpm2.ObjectAttr.SIGN
_CURVES: dict[int, ec.EllipticCurve] = {tpm2.TPM_ECC_NIST_P256: ec.SECP256R1()}
_HASHES: dict[int, hashes.HashAlgorithm] = {tpm2.HashAlg.SHA256: hashes.SHA256(),
                                            tpm2.HashAlg.SHA384: hashes.SHA384()}


def ak_public_key(public: bytes) -> ec.EllipticCurvePublicKey:
    """The `cryptography` key of an ECC TPMT_PUBLIC (to check signatures or write PEM)."""
    try:
        fields = tpm2.parse_ecc_public(public)
    except TpmFormatError as e:
        raise QuoteError("format", f"AK public: {e}") from e
    if fields.curve not in _CURVES:
        raise QuoteError("format", f"AK curve 0x{fields.curve:04X} is not supported")
    try:
        return ec.EllipticCurvePublicNumbers(int.from_bytes(fields.x, "big"),
                                             int.from_bytes(fields.y, "big"),
                                             _CURVES[fields.curve]).public_key()
    except ValueError as e:
        raise QuoteError("format", f"AK public point: {e}") from e


def replay_event_log(raw: bytes) -> dict[int, dict[int, bytes]]:
    """The PCR values (hash algorithm -> PCR -> value) a TCG crypto-agile event log extends to
    from reset, for the PCRs it touches: what a quote over those PCRs must match. The log is
    parsed strictly (EventLogError at the culprit's offset)."""
    return {int(alg): values for alg, values in EventLog.from_bytes(raw).pcrs.items()}


def pcr_digest(selection: Mapping[int, tuple[int, ...]],
               pcr_values: Mapping[int, Mapping[int, bytes]], hash_alg: int) -> bytes:
    """The quote's pcrDigest: the hash of the selected PCR values concatenated in selection
    order (banks as listed, PCRs ascending within a bank)."""
    if (algorithm := tpm2.HashAlg.lookup(hash_alg)) is None:
        raise QuoteError("format", f"hash algorithm 0x{hash_alg:04X}")
    h = hashlib.new(algorithm.hashlib_name)
    for alg, pcrs in selection.items():
        for pcr in pcrs:
            h.update(pcr_values[alg][pcr])
    return h.digest()


def verify_quote(ak_public: bytes, attest: bytes, signature: bytes, nonce: bytes,
                 pcr_values: Mapping[int, Mapping[int, bytes]]) -> tpm2.QuoteAttest:
    """Accept a quote or raise QuoteError naming the failed check.

    `ak_public` is the AK's TPMT_PUBLIC (a restricted, fixedTPM signing key: reason "ak"
    otherwise), `pcr_values` the values the quote must cover
    (hash algorithm -> PCR -> value): the quote's selection must be exactly these PCRs.
    Returns the parsed TPMS_ATTEST.
    """
    key = ak_public_key(ak_public)
    attributes = tpm2.parse_ecc_public(ak_public).attributes
    if attributes & AK_REQUIRED != AK_REQUIRED:
        raise QuoteError("ak", f"objectAttributes 0x{attributes:08X} lack fixedTPM, restricted "
                               "or sign: only a restricted signing key that never leaves the "
                               "TPM refuses to sign data that looks like a TPM's quote")
    try:
        sig = tpm2.parse_signature(signature)
        fields = tpm2.parse_attest(attest)
    except TpmFormatError as e:
        raise QuoteError("format", str(e)) from e
    if sig.hash_alg not in _HASHES:
        raise QuoteError("signature", f"hash algorithm 0x{sig.hash_alg:04X}")
    der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
    try:
        key.verify(der, attest, ec.ECDSA(_HASHES[sig.hash_alg]))
    except InvalidSignature:
        raise QuoteError("signature", "the AK's signature over TPMS_ATTEST does not "
                                      "verify") from None
    if not hmac.compare_digest(fields.extra_data, nonce):
        raise QuoteError("nonce", f"quote is over nonce {fields.extra_data.hex()}, "
                                  f"expected {nonce.hex()}")
    claimed = {alg: tuple(sorted(v)) for alg, v in pcr_values.items() if v}
    quoted = {alg: pcrs for alg, pcrs in fields.pcr_select.items() if pcrs}
    if quoted != claimed:
        raise QuoteError("pcrs", f"quote selects {_show(quoted)}, values given "
                                 f"for {_show(claimed)}")
    if fields.pcr_digest != pcr_digest(fields.pcr_select, pcr_values, sig.hash_alg):
        raise QuoteError("pcrs", "pcrDigest does not match the given PCR values")
    return fields


def _show(selection: Mapping[int, tuple[int, ...]]) -> str:
    return "+".join(f"{_bank_name(alg)}:{','.join(map(str, pcrs))}"
                    for alg, pcrs in selection.items()) or "nothing"


def _bank_name(alg: int) -> str:
    return hash_alg.hashlib_name if (hash_alg := tpm2.HashAlg.lookup(alg)) else hex(alg)
