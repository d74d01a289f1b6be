"""The SNP ATTESTATION_REPORT (0x4A0 bytes, versions 2, 3/4 and 5), MSG_REPORT_RSP and the
extended report's certificate table, byte for byte (spec-formats.md §1).

Parsing is strict as go-sev-guest's: every reserved byte must be zero, and so must the bytes
a version does not define (the CPUID bytes in v2, the mitigation vectors before v5) and the
upper 24 bytes of R and S. Every byte of a report is therefore either a field a verifier
reads or a checked zero, so none can change unnoticed.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field, fields, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sevsim.errors import FormatError, ReportFormatError, SnpFormatError

from .snp_tcb import Generation, PlatformInfo, SigningKey, SnpPolicy, TcbVersion

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000-0x29F
SIG_COMPONENT_SIZE = 72  # R and S: little-endian, P-384 values in the low 48 bytes
P384_SIZE = 48
VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1
NO_MIGRATION_AGENT = b"\xff" * 32  # REPORT_ID_MA when the guest has no migration agent

# (name, offset, size). Integers for sizes 1/4/8, bytes otherwise; reserved runs by offset.
_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("version", 0x000, 4), ("guest_svn", 0x004, 4), ("policy", 0x008, 8),
    ("family_id", 0x010, 16), ("image_id", 0x020, 16), ("vmpl", 0x030, 4),
    ("signature_algo", 0x034, 4), ("current_tcb", 0x038, 8), ("platform_info", 0x040, 8),
    ("signer_info", 0x048, 4), ("reserved_0x04c", 0x04C, 4), ("report_data", 0x050, 64),
    ("measurement", 0x090, 48), ("host_data", 0x0C0, 32), ("id_key_digest", 0x0E0, 48),
    ("author_key_digest", 0x110, 48), ("report_id", 0x140, 32), ("report_id_ma", 0x160, 32),
    ("reported_tcb", 0x180, 8), ("cpuid_fam_id", 0x188, 1), ("cpuid_mod_id", 0x189, 1),
    ("cpuid_step", 0x18A, 1), ("reserved_0x18b", 0x18B, 21), ("chip_id", 0x1A0, 64),
    ("committed_tcb", 0x1E0, 8), ("current_build", 0x1E8, 1), ("current_minor", 0x1E9, 1),
    ("current_major", 0x1EA, 1), ("reserved_0x1eb", 0x1EB, 1), ("committed_build", 0x1EC, 1),
    ("committed_minor", 0x1ED, 1), ("committed_major", 0x1EE, 1),
    ("reserved_0x1ef", 0x1EF, 1), ("launch_tcb", 0x1F0, 8), ("launch_mit_vector", 0x1F8, 8),
    ("current_mit_vector", 0x200, 8), ("reserved_0x208", 0x208, 152),
    ("signature_r", 0x2A0, 72), ("signature_s", 0x2E8, 72), ("reserved_0x330", 0x330, 368),
)
OFFSETS = {name: (offset, size) for name, offset, size in _LAYOUT}
_INT = {1: "<B", 4: "<I", 8: "<Q"}
_V3_ONLY = ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step")
_V5_ONLY = ("launch_mit_vector", "current_mit_vector")


def _check_layout() -> None:
    """Each field starts where the previous one ends, and the report is 0x4A0 bytes."""
    end = 0
    for name, offset, size in _LAYOUT:
        if offset != end:
            raise FormatError(f"report layout: {name} at 0x{offset:x}, expected 0x{end:x}")
        end = offset + size
    if end != REPORT_SIZE:
        raise FormatError(f"report layout is 0x{end:x} bytes")


_check_layout()


@dataclass(frozen=True)
class SignerInfo:
    """The u32 at 0x048: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (4:2)."""

    author_key_en: bool = False
    mask_chip_key: bool = False
    signing_key: SigningKey = SigningKey.VCEK

    def to_int(self) -> int:
        """The SIGNER_INFO field."""
        return int(self.author_key_en) | int(self.mask_chip_key) << 1 | self.signing_key << 2

    @classmethod
    def from_int(cls, value: int) -> SignerInfo:
        """Parse SIGNER_INFO; ReportFormatError for reserved bits."""
        if value >> 5:
            raise ReportFormatError("signer_info", f"0x{value:x}: bits 31:5 must be zero")
        key = (value >> 2) & 7
        if key not in tuple(SigningKey):
            raise ReportFormatError("signer_info", f"SIGNING_KEY {key} is reserved")
        return cls(bool(value & 1), bool(value & 2), SigningKey(key))


@dataclass(frozen=True)
class AttestationReport:
    """Every field of the report, by its name in AMD's table (lower case). Integers for
    the 1/4/8-byte fields; R and S as integers; byte strings of their exact size otherwise.
    Defaults describe a v3 report before signing."""

    version: int = 3
    guest_svn: int = 0
    policy: int = SnpPolicy().to_int()
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIG_ALGO_ECDSA_P384_SHA384
    current_tcb: int = 0
    platform_info: int = 0
    signer_info: SignerInfo = field(default_factory=SignerInfo)
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = NO_MIGRATION_AGENT
    reported_tcb: int = 0
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: int = 0
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    signature_r: int = 0
    signature_s: int = 0

    # -- encoding ---------------------------------------------------------------------------

    def _check(self) -> None:
        """What strict parsing refuses, refused on the way out too."""
        if self.version not in VERSIONS:
            raise ReportFormatError("version", f"{self.version} is not one of {VERSIONS}")
        try:
            SnpPolicy.from_int(self.policy)
            PlatformInfo.from_int(self.platform_info)
        except SnpFormatError as err:
            raise ReportFormatError(err.field.lower(), str(err)) from None
        undefined = (_V3_ONLY if self.version == 2 else ()) + (
            _V5_ONLY if self.version < 5 else ())
        for name in undefined:
            if getattr(self, name):
                raise ReportFormatError(name, f"is reserved in a version {self.version} "
                                        "report and must be zero")
        for name in ("signature_r", "signature_s"):
            if not 0 <= getattr(self, name) < 1 << 8 * P384_SIZE:
                raise ReportFormatError(name, "is not a 48-byte P-384 value")

    def signed_bytes(self) -> bytes:
        """Bytes 0x000-0x29F, what the VCEK/VLEK signs."""
        return self.to_bytes()[:SIGNED_SIZE]

    def to_bytes(self) -> bytes:
        """The 0x4A0-byte report."""
        self._check()
        out = bytearray(REPORT_SIZE)
        for item in fields(self):
            offset, size = OFFSETS[item.name]
            value = getattr(self, item.name)
            if isinstance(value, SignerInfo):
                value = value.to_int()
            if item.name.startswith("signature_"):
                value = value.to_bytes(size, "little")
            if isinstance(value, int):
                if not 0 <= value < 1 << 8 * size:
                    raise ReportFormatError(item.name, f"{value} does not fit in {size} bytes")
                struct.pack_into(_INT[size], out, offset, value)
            else:
                if len(value) != size:
                    raise ReportFormatError(item.name, f"is {len(value)} bytes, not {size}")
                out[offset:offset + size] = value
        return bytes(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> AttestationReport:
        """Strict parse of exactly 0x4A0 bytes."""
        if len(blob) != REPORT_SIZE:
            raise ReportFormatError("report", f"is 0x{len(blob):x} bytes, not 0x{REPORT_SIZE:x}")
        values: dict[str, object] = {}
        for name, offset, size in _LAYOUT:
            raw = bytes(blob[offset:offset + size])
            if name.startswith("reserved_"):
                if any(raw):
                    raise ReportFormatError(name, "reserved bytes must be zero")
            elif name.startswith("signature_"):
                if any(raw[P384_SIZE:]):
                    raise ReportFormatError(name, "bytes 48-71 must be zero")
                values[name] = int.from_bytes(raw, "little")
            elif size in _INT:
                values[name] = struct.unpack(_INT[size], raw)[0]
            else:
                values[name] = raw
        assert isinstance(values["signer_info"], int)
        values["signer_info"] = SignerInfo.from_int(values["signer_info"])
        report = cls(**values)  # type: ignore[arg-type]
        report._check()
        return report

    # -- decoded views ----------------------------------------------------------------------

    @property
    def generation(self) -> Generation:
        """From the CPUID bytes (v3+), or guessed from CHIP_ID's length in a v2 report."""
        if self.version >= 3:
            return Generation.from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)
        return Generation.guess_from_chip_id(self.chip_id)

    def tcb(self, name: str, generation: Generation | None = None) -> TcbVersion:
        """One of current_tcb, reported_tcb, committed_tcb, launch_tcb, decoded."""
        if name not in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
            raise ReportFormatError(name, "is not a TCB field")
        return TcbVersion.from_int(getattr(self, name), generation or self.generation)

    @property
    def policy_info(self) -> SnpPolicy:
        """The guest policy, decoded."""
        return SnpPolicy.from_int(self.policy)

    @property
    def platform(self) -> PlatformInfo:
        """PLATFORM_INFO, decoded."""
        return PlatformInfo.from_int(self.platform_info)

    # -- signature --------------------------------------------------------------------------

    def signature_der(self) -> bytes:
        """R and S as the DER ECDSA-Sig-Value `cryptography` verifies."""
        return encode_dss_signature(self.signature_r, self.signature_s)

    def with_signature_der(self, der: bytes) -> AttestationReport:
        """The report carrying a DER signature from `cryptography` (stored LE in 72 bytes)."""
        try:
            r, s = decode_dss_signature(der)
        except ValueError:
            raise ReportFormatError("signature", "is not a DER ECDSA signature") from None
        return replace(self, signature_r=r, signature_s=s)

    def sign(self, key: ec.EllipticCurvePrivateKey) -> AttestationReport:
        """ECDSA P-384 over SHA-384 of the signed bytes, as the firmware signs with the VCEK."""
        if key.curve.name != "secp384r1":
            raise ReportFormatError("signature", f"needs a P-384 key, not {key.curve.name}")
        signed = replace(self, signature_algo=SIG_ALGO_ECDSA_P384_SHA384)
        return signed.with_signature_der(
            key.sign(signed.signed_bytes(), ec.ECDSA(hashes.SHA384())))


def verify_report(blob: bytes, key: ec.EllipticCurvePublicKey) -> AttestationReport:
    """Parse strictly and check the signature over bytes 0x000-0x29F with the VCEK/VLEK
    public key. InvalidSignature when it does not verify (also for a masked or unknown
    algorithm); ReportFormatError when the bytes do not parse."""
    report = AttestationReport.from_bytes(blob)
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise InvalidSignature(f"signature algorithm {report.signature_algo} is not ECDSA "
                               "P-384 with SHA-384")
    key.verify(report.signature_der(), bytes(blob[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    return report


# -- MSG_REPORT_RSP -------------------------------------------------------------------------

REPORT_RSP_HEADER = 0x20
STATUS_SUCCESS = 0
STATUS_INVALID_PARAM = 0x16
_RSP_HEAD = struct.Struct("<II24s")


@dataclass(frozen=True)
class ReportResponse:
    """MSG_REPORT_RSP: STATUS u32, REPORT_SIZE u32, 24 reserved bytes, then the report.

    A failed request carries a status and no report (REPORT_SIZE 0)."""

    status: int
    report: bytes = b""

    def to_bytes(self) -> bytes:
        """The MSG_REPORT_RSP payload."""
        if self.status == STATUS_SUCCESS and len(self.report) != REPORT_SIZE:
            raise ReportFormatError("report", f"a successful response carries 0x{REPORT_SIZE:x}"
                                    f" bytes, not 0x{len(self.report):x}")
        if not 0 <= self.status <= 0xFFFFFFFF:
            raise ReportFormatError("status", f"{self.status} does not fit in a u32")
        return _RSP_HEAD.pack(self.status, len(self.report), bytes(24)) + self.report

    @classmethod
    def from_bytes(cls, blob: bytes) -> ReportResponse:
        """From a response buffer; trailing bytes (Linux's 4000-byte buffer) must be zero."""
        if len(blob) < REPORT_RSP_HEADER:
            raise ReportFormatError("MSG_REPORT_RSP", f"{len(blob)} bytes is shorter than its "
                                    "0x20-byte header")
        status, size, reserved = _RSP_HEAD.unpack_from(blob)
        if any(reserved):
            raise ReportFormatError("MSG_REPORT_RSP.reserved", "bytes 0x08-0x1F must be zero")
        if status == STATUS_SUCCESS and size != REPORT_SIZE:
            raise ReportFormatError("REPORT_SIZE", f"0x{size:x}, a report is 0x{REPORT_SIZE:x}")
        end = REPORT_RSP_HEADER + size
        if len(blob) < end:
            raise ReportFormatError("REPORT_SIZE", f"0x{size:x} bytes run past the buffer")
        if any(blob[end:]):
            raise ReportFormatError("MSG_REPORT_RSP", "bytes after the report must be zero")
        return cls(status, bytes(blob[REPORT_RSP_HEADER:end]))


# -- extended report certificate table ------------------------------------------------------

GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # also the ASVK
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_EXTRA_PLATFORM_INFO = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")  # go-sev-guest
_ENTRY = struct.Struct("<16sII")  # GUID (RFC byte order), offset, length


def build_cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """The GUID table then the blobs in the same order; offsets count from the table start."""
    if len({guid for guid, _ in entries}) != len(entries):
        raise ReportFormatError("cert_table", "a GUID appears twice")
    offset = _ENTRY.size * (len(entries) + 1)
    header, body = bytearray(), bytearray()
    for guid, blob in entries:
        if guid.int == 0:
            raise ReportFormatError("cert_table", "the all-zero GUID ends the table")
        header += _ENTRY.pack(guid.bytes, offset + len(body), len(blob))
        body += blob
    return bytes(header + bytes(_ENTRY.size) + body)


def parse_cert_table(blob: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """The entries of a certificate table, in table order; every entry must point past the
    header and inside the buffer (go-sev-guest ParseSnpCertTableHeader)."""
    raw: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + _ENTRY.size > len(blob):
            raise ReportFormatError("cert_table", "no all-zero entry ends the table")
        guid, offset, length = _ENTRY.unpack_from(blob, pos)
        pos += _ENTRY.size
        if not any(guid) and not offset and not length:
            break
        raw.append((uuid.UUID(bytes=guid), offset, length))
    out = []
    for guid, offset, length in raw:
        if offset < pos or offset + length > len(blob):
            raise ReportFormatError("cert_table", f"entry {guid} [0x{offset:x}, +0x{length:x})"
                                    " is not between the header and the end of the buffer")
        out.append((guid, bytes(blob[offset:offset + length])))
    if len({guid for guid, _ in out}) != len(out):
        raise ReportFormatError("cert_table", "a GUID appears twice")
    return out
