"""Evidence of the SNP-bound vTPM, byte for byte: how its attestation key is bound to an SNP
report, and the blob the guest hands a relying party.

The binding follows Coconut SVSM's attestation protocol (AMD's "Secure VM Service Module for
SEV-SNP Guests", 58019 rev. 1.00, SVSM_ATTEST_SERVICES; coconut-svsm/svsm
kernel/src/protocols/attest.rs): the monitor at VMPL0 asks the Secure Processor for a report
whose REPORT_DATA is SHA-512(nonce || manifest), the manifest being the service's public
description. SVSM's vTPM service (GUID c476f1eb-0123-45a5-9641-b4e7dde5bfe3) has its
endorsement key's TPMT_PUBLIC as manifest; sevsim's is the attestation key's TPMT_PUBLIC,
the key that signs quotes, so one report binds the quotes directly (no credential activation
round trip). The nonce is the relying party's, the same
one the quote carries as qualifyingData.

Evidence layout (big-endian, as TPM structures are): the 0x4A0-byte report, then the AK's
TPMT_PUBLIC, the quote's TPMS_ATTEST and TPMT_SIGNATURE as TPM2B-style sized fields, then the
quoted PCR values: a u8 count of (hash algorithm u16, PCR u8, sized digest) entries.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from sevsim.abi.snp_report import REPORT_SIZE
from sevsim.abi.tpm2 import HashAlg
from sevsim.errors import TpmFormatError

NONCE_MAX = 64  # TPM2B_DATA: qualifyingData holds at most a SHA-512 digest


def report_data(nonce: bytes, manifest: bytes) -> bytes:
    """REPORT_DATA that binds `manifest` (the AK's TPMT_PUBLIC) to `nonce`."""
    return hashlib.sha512(nonce + manifest).digest()


@dataclass(frozen=True)
class VtpmEvidence:
    """What the SNP-bound vTPM gives for one nonce: the SNP report binding its AK, the AK's
    TPMT_PUBLIC, a quote (TPMS_ATTEST, TPMT_SIGNATURE) and the PCR values it covers
    (hash algorithm -> PCR -> value)."""

    report: bytes
    ak_public: bytes
    attest: bytes
    signature: bytes
    pcrs: Mapping[int, Mapping[int, bytes]]

    def to_bytes(self) -> bytes:
        """The evidence blob, as `from_bytes` reads it."""
        if len(self.report) != REPORT_SIZE:
            raise TpmFormatError("evidence.report", f"{len(self.report)} bytes, not "
                                                    f"{REPORT_SIZE}")
        entries = [(alg, pcr, value) for alg, bank in self.pcrs.items()
                   for pcr, value in sorted(bank.items())]
        if len(entries) > 0xFF:
            raise TpmFormatError("evidence.pcrs", f"{len(entries)} PCR values")
        out = self.report + b"".join(_sized(f"evidence.{name}", part) for name, part in (
            ("ak_public", self.ak_public), ("attest", self.attest),
            ("signature", self.signature)))
        out += bytes([len(entries)])
        for alg, pcr, value in entries:
            if not 0 <= pcr <= 0xFF or not 0 <= alg <= 0xFFFF:
                raise TpmFormatError("evidence.pcrs", f"PCR {pcr} of bank 0x{alg:X}")
            out += struct.pack(">HB", alg, pcr) + _sized("evidence.pcr", value)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> VtpmEvidence:
        """Parse an evidence blob; TpmFormatError names the field that is wrong."""
        data = bytes(data)
        if len(data) < REPORT_SIZE:
            raise TpmFormatError("evidence.report", f"{len(data)} bytes, a report alone is "
                                                    f"{REPORT_SIZE}")
        pos = REPORT_SIZE
        parts = []
        for name in ("ak_public", "attest", "signature"):
            part, pos = _take(data, pos, f"evidence.{name}")
            parts.append(part)
        if pos >= len(data):
            raise TpmFormatError("evidence.pcrs.count", "missing")
        count, pos = data[pos], pos + 1
        pcrs: dict[int, dict[int, bytes]] = {}
        for i in range(count):
            if pos + 3 > len(data):
                raise TpmFormatError(f"evidence.pcrs[{i}]", "truncated")
            alg, pcr = struct.unpack_from(">HB", data, pos)
            value, pos = _take(data, pos + 3, f"evidence.pcrs[{i}].value")
            if (bank := HashAlg.lookup(alg)) is None or len(value) != bank.digest_size:
                raise TpmFormatError(f"evidence.pcrs[{i}]", f"{len(value)}-byte value in "
                                                            f"bank 0x{alg:04X}")
            if pcr in pcrs.setdefault(alg, {}):
                raise TpmFormatError(f"evidence.pcrs[{i}]", f"PCR {pcr} given twice")
            pcrs[alg][pcr] = value
        if pos != len(data):
            raise TpmFormatError("evidence", f"{len(data) - pos} trailing bytes")
        return cls(data[:REPORT_SIZE], parts[0], parts[1], parts[2], pcrs)


def _sized(field: str, data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise TpmFormatError(field, f"{len(data)} bytes do not fit a 16-bit size")
    return struct.pack(">H", len(data)) + data


def _take(data: bytes, pos: int, field: str) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise TpmFormatError(f"{field}.size", "truncated")
    size = int.from_bytes(data[pos:pos + 2], "big")
    if pos + 2 + size > len(data):
        raise TpmFormatError(field, f"needs {size} bytes, {len(data) - pos - 2} left")
    return data[pos + 2:pos + 2 + size], pos + 2 + size
