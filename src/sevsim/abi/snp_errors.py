"""Typed errors of the SNP formats. abi/ may not import sevsim.errors, so they live here, all
ValueErrors, and each names the field that was wrong so a caller can say what to fix."""

from __future__ import annotations


class SnpFormatError(ValueError):
    """Bytes or values that are not a well-formed SNP structure; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class TcbFormatError(SnpFormatError):
    """A TCB_VERSION, guest policy or PLATFORM_INFO with reserved bits set or values too big."""


class ReportFormatError(SnpFormatError):
    """An ATTESTATION_REPORT, MSG_REPORT_RSP or certificate table that does not parse."""


class LaunchFormatError(SnpFormatError):
    """A PAGE_INFO, ID block, ID auth structure, public key or signature that does not parse."""


class GuestMessageError(SnpFormatError):
    """A guest message that does not parse or does not authenticate under the VMPCK."""


class CertFormatError(SnpFormatError):
    """A VCEK/VLEK certificate (or its DER) that does not parse the way AMD issues them."""
