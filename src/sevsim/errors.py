"""The exception hierarchy: every bad input gets a typed error that says what was wrong.

Every exception sevsim raises derives from `SevsimError`, so a caller catches one root. This
module imports nothing from the rest of sevsim: it is a leaf every layer (abi/ included) may
import, which keeps the one hierarchy without bending the import direction.
"""

from __future__ import annotations

from enum import IntEnum


class SevsimError(Exception):
    """Base of every sevsim error."""


class ConfigError(SevsimError, ValueError):
    """A bad argument: unknown chip, malformed size, impossible VM shape."""


class FormatError(SevsimError, ValueError):
    """Bytes or values that are not a well-formed AMD (or sevsim) structure."""


class SevCertFormatError(FormatError):
    """Bytes that are not a well-formed legacy AMD certificate (0x824-byte SEV certificate or
    AMD's RSA ARK/ASK format): the message says what is wrong."""


class OvmfError(FormatError):
    """An OVMF image that cannot be launched as asked: no footer GUID table, no SEV metadata,
    a malformed section, an unknown VMM or vCPU type, or a launch the image does not support
    (APs without an SEV-ES reset block, a kernel without a hashes table)."""


class SnpFormatError(FormatError):
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


class SnpCertFormatError(SnpFormatError):
    """A VCEK/VLEK certificate (or its DER) that does not parse the way AMD issues them."""


class EndorsementFormatError(FormatError):
    """Bytes that are not a well-formed GCE launch endorsement (VMLaunchEndorsement or its
    VMGoldenMeasurement protobuf), or a digest or measurement of the wrong size; `field` names
    the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class EventLogError(FormatError):
    """Bytes that are not a well-formed TCG PC Client crypto-agile event log, or an event that
    could not be one; `offset` is where in the log the culprit starts, as a reader of a hex dump
    needs it (None for an event refused before it had bytes)."""

    def __init__(self, offset: int | None, message: str) -> None:
        self.offset = offset
        where = "event log" if offset is None else f"event log offset {offset:#x}"
        super().__init__(f"{where}: {message}")


class KbsProtocolError(FormatError):
    """A key-broker protocol message (Trustee's kbs-types JSON, a JWK, SNP evidence in the
    virtee `sev` serde shape) that does not parse; `field` is the JSON path of the culprit
    (e.g. "runtime-data.tee-pubkey.crv"), so the service can name it in a problem document."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class DemoDocumentError(FormatError):
    """A demo run's JSON document (`sevsim demo --json`, or `sevsim attack matrix --json`)
    that `sevsim report-html` cannot render: not JSON, not an object, an unknown schema, a
    section of the wrong shape; `field` is the JSON path of the culprit (e.g.
    "tenants[1].pages[0].host")."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class KbsCryptoError(SevsimError):
    """A JOSE operation of the key broker failed: a JWE that does not decrypt under this key,
    a token whose signature, algorithm or lifetime is wrong, a key of an unsupported type."""


class FirmwareError(SevsimError):
    """The Secure Processor refused a command with one of AMD's status codes.

    `status` is a member of `sevsim.abi.status.SevStatus`; taking the enum member (not an int)
    is what lets this module stay free of imports from abi/.
    """

    def __init__(self, status: IntEnum, message: str) -> None:
        self.status = status
        super().__init__(f"{status.name} (0x{int(status):02X}): {message}")


class ResourceExhausted(SevsimError):
    """The host ran out of something finite: ASIDs or physical frames."""


class MemoryAccessError(SevsimError):
    """A host-physical or guest-physical access outside what exists or is mapped."""


class ImageError(SevsimError):
    """A guest image (ELF) that cannot be loaded: malformed, wrong machine, does not fit."""


class GuestFault(SevsimError):
    """The guest crashed: an exception it could not handle, or an access the hypervisor refused."""


class VmrunError(GuestFault):
    """VMRUN refused the guest state (SVM_EXIT_ERR): under SEV-ES, a VMSA that fails the
    hardware's integrity check. The VM cannot run again."""


class GuestTimeout(SevsimError):
    """The guest did not stop within its time limit."""


class KbsAgentError(SevsimError):
    """The guest's attestation agent got no resource from the key broker. `reason` says why,
    for the guest kernel's errno: "no-device" (no NIC, not SNP), "network" (connection or
    link failure), "timeout", "protocol" (malformed HTTP, JSON or JWE), "refused" (401/403),
    "not-found" (404), "report" (the Secure Processor gave no report)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class VmStateError(SevsimError):
    """A VM operation issued in the wrong lifecycle state (e.g. run before launch)."""


class AttestationError(SevsimError):
    """The guest owner's checks failed: it must not trust this platform or this guest."""


class CertificateError(AttestationError, ValueError):
    """A certificate chain does not verify; `link` names the one that failed (e.g. "ASK -> CEK")."""

    def __init__(self, link: str, message: str) -> None:
        self.link = link
        super().__init__(f"{link}: {message}")


class MeasurementError(AttestationError):
    """LAUNCH_MEASURE does not match the launch the owner expected: no secret for this guest."""


class RmpViolation(MemoryAccessError):
    """SEV-SNP: a host write to a frame the RMP assigns to a guest or to the firmware. Nothing
    was written."""


class RmpInstructionError(SevsimError):
    """RMPUPDATE, PSMASH, PVALIDATE or RMPADJUST failed; `code` is the value the instruction
    returns in EAX (FAIL_INPUT 1, FAIL_PERMISSION 2, FAIL_INUSE 3, FAIL_OVERLAP 4,
    FAIL_SIZEMISMATCH 6)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"RMP instruction failed with {code}: {message}")


class PageNotValidated(GuestFault):
    """SEV-SNP: the guest touched a private page it has not validated. Hardware raises #VC
    (page not validated); the guest kernel treats it as an attack and stops, as Linux does."""


class SnpVerificationError(AttestationError):
    """An SNP report did not verify; `failures` holds (check name, reason) for every check that
    failed, so a caller can say which one (signature, ASK, VCEK, TCB, chip id, CRL...)."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in failures))


class EndorsementError(AttestationError):
    """A GCE launch endorsement that does not vouch for this report; `reason` names the check
    that failed: format, signer, chain, signature, provenance, sev-snp or measurement."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class KbsEvidenceError(AttestationError):
    """Evidence a key broker refuses; `reason` is a short stable identifier (format, product,
    chain, signature, tcb, chip-id, revoked, crl, kds, report-data, policy) that problem
    documents and the audit log carry, `detail` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class KdsFetchError(AttestationError):
    """A certificate or CRL could not be fetched from a KDS (HTTP error, network failure, or
    still rate limited after every retry); `status` is the HTTP status when there was one."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{url}: {message}")


class PolicyError(SevsimError, ValueError):
    """A relying party's validation policy that does not parse or says something impossible;
    `key` is the TOML path of the culprit (e.g. "guest.measurements[0]"). Nothing in a policy
    is ignored, so a typo cannot silently switch a check off."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class IdBlockError(SevsimError, ValueError):
    """An ID block cannot be made from these inputs: a key that is not a plain PEM ECDSA
    P-384 private key, a measurement or ID of the wrong size."""


class KbsAdminAuthError(SevsimError):
    """An administrator credential the key broker does not accept: a key file that is not
    Ed25519, a token the admin key did not sign, expired, or living too long; `what` names it
    (`admin-key`, `admin-token`)."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(f"{what}: {message}")


class KbsRefusal(SevsimError):
    """The key broker refused a request: `status` is the HTTP status, `reason` the stable
    identifier its RFC 7807 problem document's `type` ends with (e.g. `nonce-used`),
    `detail` what exactly was wrong. The server raises it to answer; the client
    (`sevsim kbs attest|admin`) raises it from the problem document it received."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} (HTTP {status}): {detail}")


class KbsStoreError(SevsimError):
    """The key broker's database refused or failed an operation; `reason` is a short stable
    identifier a service can put in a problem document and the audit log: `database` (cannot
    open, connect or migrate), `integrity` (a stored row that does not decrypt or parse),
    and the subclasses' own."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class KbsStoreInputError(KbsStoreError, ValueError):
    """A bad argument to the key broker's store (`invalid`): a malformed resource path or
    policy id, an unknown policy kind or decision, a value too large. Nothing was written."""


class KbsSecretKeyError(KbsStoreError):
    """The operator's at-rest key is not the one this database was created with, or is not a
    32-byte AES-256 key (`secret-key`). Raised on open, before any secret is read."""


class KbsNotFoundError(KbsStoreError):
    """No such session, resource or policy (`not-found`); `what` names which."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__("not-found", message)


class KbsSessionError(KbsStoreError):
    """A session cannot do what was asked: its nonce was already used (`nonce-replayed`), an
    attempt carries another nonce (`nonce-mismatch`), it expired (`session-expired`) or it is
    in the wrong state (`session-state`, e.g. a resource asked for before attestation).
    Nothing changed."""


class TpmFormatError(FormatError):
    """Bytes that are not a well-formed TPM 2.0 command, response or structure (TPMS_ATTEST,
    TPMT_SIGNATURE, TPMT_PUBLIC...); `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class TpmError(SevsimError):
    """The TPM refused a command: `rc` is the TPM_RC value of its response and `name` the
    TCG name of the code (with the handle, session or parameter it blames, for format-one
    codes), so a caller can tell TPM_RC_INITIALIZE from TPM_RC_AUTH_FAIL."""

    def __init__(self, rc: int, name: str, command: str) -> None:
        self.rc = rc
        self.name = name
        self.command = command
        super().__init__(f"{command}: {name} (0x{rc:03X})")


class VtpmError(SevsimError):
    """The host's vTPM process (swtpm) is missing from PATH, failed to start, died or stopped
    answering; the message names the program and what happened to it."""


class QuoteError(AttestationError):
    """A TPM quote does not verify: wrong signature, nonce, PCR selection or PCR digest;
    `reason` is a short word for which check failed ("signature", "nonce", "pcrs", "format",
    "ak" for a key that is no restricted signing key; with an event log, verify_boot's
    "event-log", "pcr-selection", "replay" and "expected")."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class SignatureListError(FormatError):
    """Bytes that are not a well-formed UEFI signature database (a run of EFI_SIGNATURE_LIST,
    UEFI 2.10 32.4.1), or values that cannot make one; `offset` is where the culprit starts
    (None before there are bytes) and `field` names it (e.g. "SignatureSize")."""

    def __init__(self, offset: int | None, field: str, message: str) -> None:
        self.offset = offset
        self.field = field
        where = "" if offset is None else f" at offset {offset:#x}"
        super().__init__(f"signature list{where}: {field}: {message}")


class ImageSignatureError(FormatError):
    """A signed guest program whose appended signature (Linux's module_signature trailer and
    its PKCS#7 SignedData) does not parse, or a key and certificate that cannot sign one;
    `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SecureBootConfigError(ConfigError):
    """A secure-boot directory that cannot be loaded: a missing db/, a file that is neither a
    certificate (PEM or DER) nor, in dbx/, a SHA-256 hash list; `path` names the file."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class SecureBootViolation(GuestFault):
    """Secure boot refused the guest program before it ran (unsigned, bad signature, untrusted
    signer, revoked); the run result's `secure_boot` carries the verdict."""


class LibtpmsError(SevsimError):
    """The in-VM TPM engine cannot run: libtpms is not installed, or one of its library calls
    failed; `call` names the TPMLIB_* function and `result` its TPM_RESULT (0 if none)."""

    def __init__(self, call: str, result: int, message: str) -> None:
        self.call = call
        self.result = result
        super().__init__(f"{call}: {message}" + (f" (TPM_RESULT 0x{result:X})" if result
                                                  else ""))
