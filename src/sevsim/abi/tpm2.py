"""TPM 2.0 commands and responses, byte for byte (TCG TPM 2.0 Library, Part 2 structures and
Part 3 commands): the few that a vTPM needs for measured boot and attestation.

Everything is big-endian. A command is a 10-byte header (tag, commandSize, commandCode), the
handle area, then, when the tag is TPM_ST_SESSIONS, an authorization area (its size, then
TPMS_AUTH_COMMAND entries), then the parameters. A response is tag, responseSize,
responseCode, the response handles, then, with sessions, parameterSize, the parameters and one
TPMS_AUTH_RESPONSE per session. Only password sessions (TPM_RS_PW) are built: the vTPM's
hierarchies and keys have empty auth values, as swtpm leaves them.

Builders return command bytes; parsers take response bytes, raise `TpmError` for a non-zero
response code and `TpmFormatError` for bytes that do not parse. No I/O happens here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from sevsim.errors import TpmError, TpmFormatError

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": TPMS_ATTEST made by the TPM itself
TPM_RS_PW = 0x40000009  # the password authorization session
TPM_RH_OWNER = 0x40000001
TPM_RH_ENDORSEMENT = 0x4000000B
HEADER_SIZE = 10
PCR_SELECT_MIN = 3  # PC Client TPMs have 24 PCRs: sizeofSelect is 3 bytes


class HashAlg(IntEnum):
    """TPM_ALG_ID of the hash algorithms a PCR bank can use (TPM 2.0 Library, Part 2, 6.3)."""

    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D

    @property
    def hashlib_name(self) -> str:
        """The name hashlib (and tpm2-tools' YAML) gives the algorithm."""
        return self.name.lower()

    @property
    def digest_size(self) -> int:
        """The digest size a TPMT_HA of this algorithm carries."""
        return hashlib.new(self.hashlib_name).digest_size

    def hash(self, data: bytes) -> bytes:
        """The digest of `data`, as the bank's PCR extend takes it."""
        return hashlib.new(self.hashlib_name, data).digest()

    @classmethod
    def lookup(cls, alg: int) -> HashAlg | None:
        """The hash algorithm a TPM_ALG_ID names, or None for any other value."""
        try:
            return cls(alg)
        except ValueError:
            return None


class Alg(IntEnum):
    """The other TPM_ALG_ID values this module speaks."""

    NULL = 0x0010
    ECDSA = 0x0018
    ECC = 0x0023


class Cc(IntEnum):
    """TPM_CC command codes."""

    CreatePrimary = 0x0131
    Startup = 0x0144
    Shutdown = 0x0145
    Quote = 0x0158
    FlushContext = 0x0165
    GetRandom = 0x017B
    PCR_Read = 0x017E
    PCR_Extend = 0x0182


class Su(IntEnum):
    """TPM_SU: how TPM2_Startup resumes."""

    CLEAR = 0x0000
    STATE = 0x0001


class ObjectAttr:
    """TPMA_OBJECT bits (Part 2 §8.3)."""

    FIXED_TPM = 1 << 1
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN = 1 << 18


# An attestation key: a restricted signing key that never leaves this TPM (0x00050072)
AK_ATTRIBUTES = (ObjectAttr.FIXED_TPM | ObjectAttr.FIXED_PARENT
                 | ObjectAttr.SENSITIVE_DATA_ORIGIN | ObjectAttr.USER_WITH_AUTH
                 | ObjectAttr.RESTRICTED | ObjectAttr.SIGN)
TPM_ECC_NIST_P256 = 0x0003

# Format-zero codes (Part 2 §6.6.3): RC_VER1 errors and RC_WARN warnings
_FMT0 = {
    0x000: "TPM_RC_SUCCESS", 0x01E: "TPM_RC_BAD_TAG",
    0x100: "TPM_RC_INITIALIZE", 0x101: "TPM_RC_FAILURE", 0x103: "TPM_RC_SEQUENCE",
    0x10B: "TPM_RC_PRIVATE", 0x119: "TPM_RC_HMAC", 0x120: "TPM_RC_DISABLED",
    0x121: "TPM_RC_EXCLUSIVE", 0x124: "TPM_RC_AUTH_TYPE", 0x125: "TPM_RC_AUTH_MISSING",
    0x126: "TPM_RC_POLICY", 0x127: "TPM_RC_PCR", 0x128: "TPM_RC_PCR_CHANGED",
    0x12D: "TPM_RC_UPGRADE", 0x12E: "TPM_RC_TOO_MANY_CONTEXTS",
    0x12F: "TPM_RC_AUTH_UNAVAILABLE", 0x130: "TPM_RC_REBOOT", 0x131: "TPM_RC_UNBALANCED",
    0x142: "TPM_RC_COMMAND_SIZE", 0x143: "TPM_RC_COMMAND_CODE", 0x144: "TPM_RC_AUTHSIZE",
    0x145: "TPM_RC_AUTH_CONTEXT", 0x146: "TPM_RC_NV_RANGE", 0x147: "TPM_RC_NV_SIZE",
    0x148: "TPM_RC_NV_LOCKED", 0x149: "TPM_RC_NV_AUTHORIZATION",
    0x14A: "TPM_RC_NV_UNINITIALIZED", 0x14B: "TPM_RC_NV_SPACE", 0x14C: "TPM_RC_NV_DEFINED",
    0x150: "TPM_RC_BAD_CONTEXT", 0x151: "TPM_RC_CPHASH", 0x152: "TPM_RC_PARENT",
    0x153: "TPM_RC_NEEDS_TEST", 0x154: "TPM_RC_NO_RESULT", 0x155: "TPM_RC_SENSITIVE",
    0x901: "TPM_RC_CONTEXT_GAP", 0x902: "TPM_RC_OBJECT_MEMORY",
    0x903: "TPM_RC_SESSION_MEMORY", 0x904: "TPM_RC_MEMORY", 0x905: "TPM_RC_SESSION_HANDLES",
    0x906: "TPM_RC_OBJECT_HANDLES", 0x907: "TPM_RC_LOCALITY", 0x908: "TPM_RC_YIELDED",
    0x909: "TPM_RC_CANCELED", 0x90A: "TPM_RC_TESTING", 0x920: "TPM_RC_NV_RATE",
    0x921: "TPM_RC_LOCKOUT", 0x922: "TPM_RC_RETRY", 0x923: "TPM_RC_NV_UNAVAILABLE",
}
# Format-one codes (RC_FMT1 + n): they name a handle, session or parameter
_FMT1 = {
    0x081: "TPM_RC_ASYMMETRIC", 0x082: "TPM_RC_ATTRIBUTES", 0x083: "TPM_RC_HASH",
    0x084: "TPM_RC_VALUE", 0x085: "TPM_RC_HIERARCHY", 0x087: "TPM_RC_KEY_SIZE",
    0x088: "TPM_RC_MGF", 0x089: "TPM_RC_MODE", 0x08A: "TPM_RC_TYPE", 0x08B: "TPM_RC_HANDLE",
    0x08C: "TPM_RC_KDF", 0x08D: "TPM_RC_RANGE", 0x08E: "TPM_RC_AUTH_FAIL",
    0x08F: "TPM_RC_NONCE", 0x090: "TPM_RC_PP", 0x092: "TPM_RC_SCHEME", 0x095: "TPM_RC_SIZE",
    0x096: "TPM_RC_SYMMETRIC", 0x097: "TPM_RC_TAG", 0x098: "TPM_RC_SELECTOR",
    0x09A: "TPM_RC_INSUFFICIENT", 0x09B: "TPM_RC_SIGNATURE", 0x09C: "TPM_RC_KEY",
    0x09D: "TPM_RC_POLICY_FAIL", 0x09F: "TPM_RC_INTEGRITY", 0x0A0: "TPM_RC_TICKET",
    0x0A1: "TPM_RC_RESERVED_BITS", 0x0A2: "TPM_RC_BAD_AUTH", 0x0A3: "TPM_RC_EXPIRED",
    0x0A4: "TPM_RC_POLICY_CC", 0x0A5: "TPM_RC_BINDING", 0x0A6: "TPM_RC_CURVE",
    0x0A7: "TPM_RC_ECC_POINT",
}


# Warnings after which the same command should simply be sent again (libtpms answers
# TPM_RC_RETRY the first time an algorithm is used, while it self-tests it)
RETRY_CODES = frozenset({0x908, 0x90A, 0x922})  # TPM_RC_YIELDED, _TESTING, _RETRY


def response_code(response: bytes) -> int:
    """The responseCode of a response (TpmFormatError if it has no header)."""
    r = _Reader(response, "response")
    r.take(6, "tag+responseSize")
    return r.u32("responseCode")


def rc_name(rc: int) -> str:
    """The TCG name of a response code; a format-one code also says which handle, session or
    parameter (numbered from 1) the TPM blames, as tpm2_rc_decode does."""
    if rc & 0x080:  # format one
        base = 0x080 | (rc & 0x03F)
        name = _FMT1.get(base, f"TPM_RC_FMT1_0x{base:03X}")
        if rc & 0x040:
            return f"{name} (parameter {(rc >> 8) & 0xF})"
        number = (rc >> 8) & 0x7
        if not number:
            return name
        return f"{name} ({'session' if rc & 0x800 else 'handle'} {number})"
    if rc & 0x400:  # T bit: a vendor-defined code
        return f"TPM_RC_VENDOR_0x{rc:03X}"
    return _FMT0.get(rc, f"TPM_RC_0x{rc:03X}")


class _Reader:
    """Bounds-checked big-endian reads: running off the end is a TpmFormatError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise TpmFormatError(f"{self.what}.{field}", f"needs {n} bytes at offset "
                                 f"{self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def tpm2b(self, field: str) -> bytes:
        return self.take(self.u16(f"{field}.size"), field)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos, "rest")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise TpmFormatError(self.what, f"{len(self.data) - self.pos} trailing bytes")


def _pack(field: str, fmt: str, *values: int) -> bytes:
    """struct.pack for caller-given numbers: one out of its field's range is a
    TpmFormatError naming the field, not a struct.error."""
    try:
        return struct.pack(fmt, *values)
    except struct.error as e:
        raise TpmFormatError(field, f"{values}: {e}") from None


def _tpm2b(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise TpmFormatError("TPM2B", f"{len(data)} bytes do not fit a 16-bit size")
    return struct.pack(">H", len(data)) + data


def _command(cc: Cc, handles: Sequence[int], params: bytes, password: bytes | None) -> bytes:
    """Header, handles, an optional TPM_RS_PW authorization area, parameters."""
    body = b"".join(_pack(f"{cc.name}.handle", ">I", h) for h in handles)
    if password is None:
        tag = TPM_ST_NO_SESSIONS
    else:
        # TPMS_AUTH_COMMAND: sessionHandle, nonce (empty), sessionAttributes (none), hmac
        auth = struct.pack(">IHB", TPM_RS_PW, 0, 0) + _tpm2b(password)
        body += struct.pack(">I", len(auth)) + auth
        tag = TPM_ST_SESSIONS
    body += params
    return struct.pack(">HII", tag, HEADER_SIZE + len(body), cc) + body


def _response(data: bytes, cc: Cc, handles: int = 0) -> tuple[list[int], _Reader]:
    """Check a response's header and code; return its handles and a reader over its
    parameters (the authorization area, when present, is checked for shape and dropped)."""
    r = _Reader(data, f"{cc.name} response")
    tag = r.u16("tag")
    size = r.u32("responseSize")
    rc = r.u32("responseCode")
    if size != len(data):
        raise TpmFormatError(f"{cc.name} response.responseSize",
                             f"says {size} bytes, got {len(data)}")
    if rc:
        raise TpmError(rc, rc_name(rc), f"TPM2_{cc.name}")
    if tag not in (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS):
        raise TpmFormatError(f"{cc.name} response.tag", f"0x{tag:04X} is no response tag")
    out = [r.u32(f"handle[{i}]") for i in range(handles)]
    if tag == TPM_ST_NO_SESSIONS:
        return out, _Reader(r.rest(), f"{cc.name} response")
    params = _Reader(r.take(r.u32("parameterSize"), "parameters"), f"{cc.name} response")
    while r.pos < len(r.data):  # TPMS_AUTH_RESPONSE: nonce, sessionAttributes, hmac
        r.tpm2b("auth.nonce")
        r.u8("auth.sessionAttributes")
        r.tpm2b("auth.hmac")
    return out, params


# --- TPML_PCR_SELECTION --------------------------------------------------------------------

PcrSelection = Mapping[int, Sequence[int]]  # hash algorithm -> PCR indices, in bank order


def marshal_pcr_selection(selection: PcrSelection) -> bytes:
    """TPML_PCR_SELECTION: count, then per bank hash, sizeofSelect and the PCR bitmap."""
    out = struct.pack(">I", len(selection))
    for alg, pcrs in selection.items():
        if any(not 0 <= p < 256 for p in pcrs):
            raise TpmFormatError("TPMS_PCR_SELECTION.pcrSelect", f"PCR out of range in {pcrs}")
        bitmap = bytearray(max(PCR_SELECT_MIN, (max(pcrs, default=0) >> 3) + 1))
        for p in pcrs:
            bitmap[p >> 3] |= 1 << (p & 7)
        out += _pack("TPMS_PCR_SELECTION.hash", ">HB", alg, len(bitmap)) + bytes(bitmap)
    return out


def _pcr_selection(r: _Reader, field: str) -> dict[int, tuple[int, ...]]:
    count = r.u32(f"{field}.count")
    if count > 16:  # HASH_COUNT: a TPM has a handful of banks
        raise TpmFormatError(f"{field}.count", f"{count} banks")
    out: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        alg = r.u16(f"{field}[{i}].hash")
        bitmap = r.take(r.u8(f"{field}[{i}].sizeofSelect"), f"{field}[{i}].pcrSelect")
        if alg in out:
            raise TpmFormatError(f"{field}[{i}].hash", f"bank 0x{alg:04X} selected twice")
        out[alg] = tuple(8 * n + b for n, byte in enumerate(bitmap) for b in range(8)
                         if byte >> b & 1)
    return out


# --- TPM2_Startup, TPM2_GetRandom, TPM2_FlushContext ---------------------------------------

def startup_command(su: Su = Su.CLEAR) -> bytes:
    """TPM2_Startup: swtpm --flags startup-clear has sent one already; TPM_SU_STATE resumes
    what a TPM2_Shutdown(TPM_SU_STATE) saved."""
    return _command(Cc.Startup, [], _pack("startupType", ">H", su), None)


def parse_startup_response(data: bytes) -> None:
    """Nothing comes back but the code."""
    _response(data, Cc.Startup)[1].end()


def shutdown_command(su: Su = Su.STATE) -> bytes:
    """TPM2_Shutdown: with TPM_SU_STATE the TPM saves its state (PCRs 0-15 among it) for a
    TPM2_Startup(TPM_SU_STATE) to resume."""
    return _command(Cc.Shutdown, [], _pack("shutdownType", ">H", su), None)


def parse_shutdown_response(data: bytes) -> None:
    """Nothing comes back but the code."""
    _response(data, Cc.Shutdown)[1].end()


def get_random_command(count: int) -> bytes:
    """TPM2_GetRandom of `count` bytes (the TPM may return fewer)."""
    return _command(Cc.GetRandom, [], _pack("bytesRequested", ">H", count), None)


def parse_get_random_response(data: bytes) -> bytes:
    """randomBytes: at most the size of the TPM's largest digest, whatever was asked for."""
    r = _response(data, Cc.GetRandom)[1]
    out = r.tpm2b("randomBytes")
    r.end()
    return out


def flush_context_command(handle: int) -> bytes:
    """TPM2_FlushContext: flushHandle is a parameter, not a handle-area entry (Part 3
    §28.4)."""
    return _command(Cc.FlushContext, [], _pack("flushHandle", ">I", handle), None)


def parse_flush_context_response(data: bytes) -> None:
    """Nothing comes back but the code."""
    _response(data, Cc.FlushContext)[1].end()


# --- TPM2_PCR_Extend, TPM2_PCR_Read --------------------------------------------------------

def pcr_extend_command(pcr: int, digests: Mapping[int, bytes], password: bytes = b"") -> bytes:
    """Extend one PCR in each bank given: TPML_DIGEST_VALUES of TPMT_HA (hashAlg, digest)."""
    params = struct.pack(">I", len(digests))
    for alg, digest in digests.items():
        if (hash_alg := HashAlg.lookup(alg)) is None or hash_alg.digest_size != len(digest):
            raise TpmFormatError("TPMT_HA.digest",
                                 f"{len(digest)} bytes for hash algorithm 0x{alg:04X}")
        params += struct.pack(">H", alg) + digest
    return _command(Cc.PCR_Extend, [pcr], params, password)


def parse_pcr_extend_response(data: bytes) -> None:
    """Nothing comes back but the code (and the session's response auth)."""
    _response(data, Cc.PCR_Extend)[1].end()


@dataclass(frozen=True)
class PcrRead:
    """What TPM2_PCR_Read returned: the TPM returns at most 8 digests per call, so `selection`
    (what it read) may be less than what was asked."""

    update_counter: int
    selection: dict[int, tuple[int, ...]]
    values: dict[int, dict[int, bytes]]  # hash algorithm -> PCR -> value


def pcr_read_command(selection: PcrSelection) -> bytes:
    """TPM2_PCR_Read; no authorization: PCR values are public."""
    return _command(Cc.PCR_Read, [], marshal_pcr_selection(selection), None)


def parse_pcr_read_response(data: bytes) -> PcrRead:
    """pcrUpdateCounter, pcrSelectionOut, then TPML_DIGEST in selection order."""
    r = _response(data, Cc.PCR_Read)[1]
    counter = r.u32("pcrUpdateCounter")
    selection = _pcr_selection(r, "pcrSelectionOut")
    count = r.u32("pcrValues.count")
    digests = [r.tpm2b(f"pcrValues[{i}]") for i in range(min(count, 8))]
    r.end()
    slots = [(alg, pcr) for alg, pcrs in selection.items() for pcr in pcrs]
    if count != len(slots):
        raise TpmFormatError("pcrValues.count", f"{count} digests for {len(slots)} PCRs")
    values: dict[int, dict[int, bytes]] = {alg: {} for alg in selection}
    for (alg, pcr), digest in zip(slots, digests, strict=True):
        values[alg][pcr] = digest
    return PcrRead(counter, selection, values)


# --- TPM2_CreatePrimary --------------------------------------------------------------------

def ecc_ak_template() -> bytes:
    """TPMT_PUBLIC of an ECC P-256 attestation key: restricted, sign, ECDSA-SHA256, no
    symmetric, no KDF, empty unique (the TPM derives the key from the hierarchy seed)."""
    return (struct.pack(">HHI", Alg.ECC, HashAlg.SHA256, AK_ATTRIBUTES) + _tpm2b(b"")
            + struct.pack(">HHHHH", Alg.NULL, Alg.ECDSA, HashAlg.SHA256, TPM_ECC_NIST_P256,
                          Alg.NULL)
            + _tpm2b(b"") + _tpm2b(b""))


def create_primary_command(template: bytes, hierarchy: int = TPM_RH_ENDORSEMENT,
                           password: bytes = b"") -> bytes:
    """TPM2_CreatePrimary: inSensitive (empty userAuth and data), inPublic, no outsideInfo,
    no creationPCR."""
    sensitive = _tpm2b(_tpm2b(b"") + _tpm2b(b""))
    params = sensitive + _tpm2b(template) + _tpm2b(b"") + struct.pack(">I", 0)
    return _command(Cc.CreatePrimary, [hierarchy], params, password)


@dataclass(frozen=True)
class Primary:
    """A loaded primary object: its transient handle, its TPMT_PUBLIC bytes and its Name."""

    handle: int
    public: bytes
    name: bytes


def parse_create_primary_response(data: bytes) -> Primary:
    """The handle, outPublic and name; creation data and ticket are checked for shape."""
    handles, r = _response(data, Cc.CreatePrimary, handles=1)
    public = r.tpm2b("outPublic")
    r.tpm2b("creationData")
    r.tpm2b("creationHash")
    r.u16("creationTicket.tag")
    r.u32("creationTicket.hierarchy")
    r.tpm2b("creationTicket.digest")
    name = r.tpm2b("name")
    r.end()
    return Primary(handles[0], public, name)


@dataclass(frozen=True)
class EccPublic:
    """The fields of an ECC TPMT_PUBLIC a verifier needs."""

    name_alg: int
    attributes: int
    scheme: int
    scheme_hash: int
    curve: int
    x: bytes
    y: bytes


def parse_ecc_public(data: bytes) -> EccPublic:
    """TPMT_PUBLIC of an ECC key; any other key type is a TpmFormatError."""
    r = _Reader(data, "TPMT_PUBLIC")
    if (kind := r.u16("type")) != Alg.ECC:
        raise TpmFormatError("TPMT_PUBLIC.type", f"0x{kind:04X} is not TPM_ALG_ECC")
    name_alg = r.u16("nameAlg")
    attributes = r.u32("objectAttributes")
    r.tpm2b("authPolicy")
    if r.u16("symmetric.algorithm") != Alg.NULL:
        r.take(4, "symmetric.keyBits+mode")  # a storage key's AES parameters
    scheme = r.u16("scheme.scheme")
    scheme_hash = r.u16("scheme.hashAlg") if scheme != Alg.NULL else Alg.NULL
    curve = r.u16("curveID")
    if (kdf := r.u16("kdf.scheme")) != Alg.NULL:
        r.u16(f"kdf(0x{kdf:04X}).hashAlg")
    x = r.tpm2b("unique.x")
    y = r.tpm2b("unique.y")
    r.end()
    return EccPublic(name_alg, attributes, scheme, scheme_hash, curve, x, y)


def object_name(public: bytes) -> bytes:
    """An object's Name: nameAlg followed by the nameAlg digest of its TPMT_PUBLIC."""
    name_alg = _Reader(public, "TPMT_PUBLIC").take(4, "type+nameAlg")[2:]
    alg = int.from_bytes(name_alg, "big")
    if (hash_alg := HashAlg.lookup(alg)) is None:
        raise TpmFormatError("TPMT_PUBLIC.nameAlg", f"0x{alg:04X} is no hash algorithm")
    return name_alg + hash_alg.hash(public)


# --- TPM2_Quote, TPMS_ATTEST, TPMT_SIGNATURE -----------------------------------------------

def quote_command(key: int, nonce: bytes, selection: PcrSelection,
                  password: bytes = b"") -> bytes:
    """TPM2_Quote: qualifyingData = nonce, inScheme TPM_ALG_NULL (the key's own scheme)."""
    params = _tpm2b(nonce) + struct.pack(">H", Alg.NULL) + marshal_pcr_selection(selection)
    return _command(Cc.Quote, [key], params, password)


def parse_quote_response(data: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST bytes, TPMT_SIGNATURE bytes): what the signature covers, and the
    signature as tpm2_checkquote -s reads it."""
    r = _response(data, Cc.Quote)[1]
    attest = r.tpm2b("quoted")
    signature = r.rest()
    parse_signature(signature)
    return attest, signature


@dataclass(frozen=True)
class QuoteAttest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""

    qualified_signer: bytes
    extra_data: bytes  # the nonce
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_select: dict[int, tuple[int, ...]]
    pcr_digest: bytes


def parse_attest(data: bytes) -> QuoteAttest:
    """TPMS_ATTEST of a quote: only TPM-generated quotes parse, nothing else does."""
    r = _Reader(data, "TPMS_ATTEST")
    if (magic := r.u32("magic")) != TPM_GENERATED_VALUE:
        raise TpmFormatError("TPMS_ATTEST.magic", f"0x{magic:08X} is not TPM_GENERATED_VALUE")
    if (kind := r.u16("type")) != TPM_ST_ATTEST_QUOTE:
        raise TpmFormatError("TPMS_ATTEST.type", f"0x{kind:04X} is not TPM_ST_ATTEST_QUOTE")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock, reset, restart, safe = r.u64("clock"), r.u32("resetCount"), r.u32("restartCount"), \
        r.u8("safe")
    if safe > 1:
        raise TpmFormatError("TPMS_ATTEST.clockInfo.safe", f"{safe} is not a TPMI_YES_NO")
    firmware = r.u64("firmwareVersion")
    select = _pcr_selection(r, "quote.pcrSelect")
    digest = r.tpm2b("quote.pcrDigest")
    r.end()
    return QuoteAttest(signer, extra, clock, reset, restart, bool(safe), firmware, select,
                       digest)


@dataclass(frozen=True)
class EcdsaSignature:
    """A TPMT_SIGNATURE with sigAlg TPM_ALG_ECDSA: r and s as big-endian integers' bytes."""

    hash_alg: int
    r: bytes
    s: bytes


def parse_signature(data: bytes) -> EcdsaSignature:
    """TPMT_SIGNATURE; only ECDSA, the AK's scheme, is accepted."""
    rd = _Reader(data, "TPMT_SIGNATURE")
    if (alg := rd.u16("sigAlg")) != Alg.ECDSA:
        raise TpmFormatError("TPMT_SIGNATURE.sigAlg", f"0x{alg:04X} is not TPM_ALG_ECDSA")
    sig = EcdsaSignature(rd.u16("hash"), rd.tpm2b("signatureR"), rd.tpm2b("signatureS"))
    rd.end()
    return sig


def marshal_signature(sig: EcdsaSignature) -> bytes:
    """TPMT_SIGNATURE bytes, as parse_signature reads them."""
    return struct.pack(">HH", Alg.ECDSA, sig.hash_alg) + _tpm2b(sig.r) + _tpm2b(sig.s)
