"""SNP evidence as Trustee's SNP attester sends it in `tee-evidence.primary_evidence`.

The shape comes from two public sources (read at guest-components 8246e5e and virtee/sev
v6.3.0; guest-components' Cargo.lock pins `sev` 6.3.1, whose serde is the same):

- guest-components `attestation-agent/attester/src/snp/mod.rs`: `SnpEvidence {
  attestation_report: sev::firmware::guest::AttestationReport, cert_chain:
  Option<Vec<sev::firmware::host::CertTableEntry>> }`, serialised with serde_json.
- virtee/sev `src/firmware/guest/types/snp.rs` (AttestationReport, Version, GuestPolicy,
  PlatformInfo, KeyInfo), `src/firmware/host/types/snp.rs` (TcbVersion, CertType,
  CertTableEntry), `src/certs/snp/ecdsa/mod.rs` (Signature), `src/util/array.rs` (Array). serde
  derives give: members in struct order; byte arrays as JSON arrays of numbers (`Array` is a
  newtype, so transparent); the bitfield newtypes policy/plat_info/key_info as numbers;
  `Option` as null; TcbVersion `{fmc, bootloader, tee, snp, microcode}` with fmc null in the
  Milan/Genoa layout; Version `{major, minor, build}`; Signature `{r, s}` (72 bytes each,
  little-endian, the other 368 signature bytes dropped); CertType a unit variant name
  ("ARK", "ASK", "VCEK", "VLEK", "CRL") or `{"OTHER": "<guid>"}`.

The crate drops the report's reserved bytes; sevsim's strict parse (`abi.snp_report`) requires
them to be zero, so nothing is lost and the JSON turns back into the same 0x4A0 bytes. Like
the crate, the TCB layout follows the generation (CPUID bytes in v3+, CHIP_ID's length in v2);
unlike it, a v2 report with a masked CHIP_ID (which the crate cannot parse) is taken in the
Milan/Genoa layout, as sevsim's verifier takes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sevsim.errors import FormatError, KbsProtocolError

from .kbs import Json, load_json, members
from .snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    OFFSETS,
    AttestationReport,
    SignerInfo,
)
from .snp_tcb import Generation, TcbVersion

GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
CERT_TYPES = {GUID_ARK: "ARK", GUID_ASK: "ASK", GUID_VCEK: "VCEK", GUID_VLEK: "VLEK",
              GUID_CRL: "CRL"}  # virtee/sev CertType's named variants
REPORT = "attestation_report"
TCBS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")
TCB_MEMBERS = ("fmc", "bootloader", "tee", "snp", "microcode")
VERSION_MEMBERS = ("major", "minor", "build")
# sev's member name -> sevsim's field, for the plain integers and byte arrays
RENAMED = {"sig_algo": "signature_algo", "plat_info": "platform_info"}
MEMBERS = ("version", "guest_svn", "policy", "family_id", "image_id", "vmpl", "sig_algo",
           "current_tcb", "plat_info", "key_info", "report_data", "measurement", "host_data",
           "id_key_digest", "author_key_digest", "report_id", "report_id_ma", "reported_tcb",
           "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "chip_id", "committed_tcb", "current",
           "committed", "launch_tcb", "launch_mit_vector", "current_mit_vector", "signature")
OPTIONAL_BYTE = ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step")  # null in a v2 report
OPTIONAL_U64 = ("launch_mit_vector", "current_mit_vector")  # null before v5
SIGNATURE_SIZE = 72


@dataclass(frozen=True)
class SnpEvidence:
    """The report's 0x4A0 bytes and the certificate table entries as (GUID text, DER)."""

    report: bytes
    certs: list[tuple[str, bytes]]


def _tcb_json(report: AttestationReport, name: str) -> dict[str, Json]:
    tcb = report.tcb(name)
    return {"fmc": tcb.fmc, "bootloader": tcb.bootloader, "tee": tcb.tee, "snp": tcb.snp,
            "microcode": tcb.microcode}


def _version_json(report: AttestationReport, prefix: str) -> dict[str, Json]:
    return {part: getattr(report, f"{prefix}_{part}") for part in VERSION_MEMBERS}


def report_to_json(blob: bytes) -> dict[str, Json]:
    """The virtee/sev serde JSON of a report; KbsProtocolError if sevsim's strict parse
    refuses it (the JSON could not carry its non-zero reserved bytes)."""
    try:
        report = AttestationReport.from_bytes(blob)
        tcbs = {name: _tcb_json(report, name) for name in TCBS}
    except FormatError as err:
        raise KbsProtocolError(REPORT, str(err)) from None
    out: dict[str, Json] = {}
    for member in MEMBERS:
        if member in tcbs:
            out[member] = tcbs[member]
        elif member in ("current", "committed"):
            out[member] = _version_json(report, member)
        elif member == "key_info":
            out[member] = report.signer_info.to_int()
        elif member == "signature":
            out[member] = {part: list(getattr(report, f"signature_{part}").to_bytes(
                SIGNATURE_SIZE, "little")) for part in ("r", "s")}
        elif (member in OPTIONAL_BYTE and report.version < 3) or \
                (member in OPTIONAL_U64 and report.version < 5):
            out[member] = None
        else:
            value = getattr(report, RENAMED.get(member, member))
            out[member] = list(value) if isinstance(value, bytes) else value
    return out


def _cert_type(guid_text: str, where: str) -> Json:
    try:
        guid = uuid.UUID(guid_text)
    except (ValueError, TypeError, AttributeError):
        raise KbsProtocolError(where, f"{guid_text!r} is not a GUID") from None
    if str(guid) != guid_text:
        raise KbsProtocolError(where, f"{guid_text!r} is not a lower-case hyphenated GUID")
    if guid.int == 0:
        raise KbsProtocolError(where, "the all-zero GUID (Empty) ends a table; it is no entry")
    return CERT_TYPES.get(guid, {"OTHER": guid_text})


def snp_evidence_to_json(report: bytes, certs: list[tuple[str, bytes]] | None) -> dict[str, Json]:
    """`{"attestation_report": ..., "cert_chain": [...] | null}` as the SNP attester sends it;
    `certs` are (certificate-table GUID text, DER) in table order, None for a plain report."""
    chain: list[dict[str, Json]] | None = None
    if certs is not None:
        chain = []
        for i, (guid_text, der) in enumerate(certs):
            chain.append({"cert_type": _cert_type(guid_text, f"cert_chain[{i}].cert_type"),
                          "data": list(der)})
        _no_duplicate_guids([guid for guid, _ in certs])
    return {REPORT: report_to_json(report), "cert_chain": chain}


def _no_duplicate_guids(guids: list[str]) -> None:
    if len(set(guids)) != len(guids):
        raise KbsProtocolError("cert_chain", "a GUID appears twice")


# -- parsing --------------------------------------------------------------------------------

def _int(value: Json, where: str, size: int) -> int:
    """A JSON number that fits in `size` unsigned bytes (booleans are not numbers here)."""
    if type(value) is not int or not 0 <= value < 1 << 8 * size:
        raise KbsProtocolError(where, f"{value!r} is not an integer of {size} byte(s)")
    return value


def _bytes(value: Json, where: str, size: int | None) -> bytes:
    """A JSON array of byte values, of exactly `size` entries when given."""
    if not isinstance(value, list):
        raise KbsProtocolError(where, "is not an array of bytes")
    if size is not None and len(value) != size:
        raise KbsProtocolError(where, f"has {len(value)} entries, not {size}")
    # the type test and bytes()'s range check run in C: a certificate is thousands of entries
    if not set(map(type, value)) <= {int}:
        raise KbsProtocolError(where, "holds something other than byte values 0-255")
    try:
        return bytes(value)
    except ValueError:  # an entry outside 0-255
        raise KbsProtocolError(where, "holds something other than byte values 0-255") from None


def _object(value: Json, where: str, names: tuple[str, ...],
            options: tuple[str, ...] = ()) -> dict[str, Json]:
    """The object's members, with `options` (serde's `Option`s, which it reads as None when
    absent: older crate versions did not write them) filled in as null."""
    if not isinstance(value, dict):
        raise KbsProtocolError(where, "is not an object")
    members(value, where, tuple(name for name in names if name not in options), options)
    return {name: value.get(name) for name in names}


def _generation(obj: dict[str, Json], version: int, chip_id: bytes) -> Generation:
    """The TCB layout, found as the crate finds it: CPUID bytes in v3+, CHIP_ID in v2."""
    if version < 3:
        return Generation.guess_from_chip_id(chip_id)
    family = _int(obj["cpuid_fam_id"], f"{REPORT}.cpuid_fam_id", 1)
    model = _int(obj["cpuid_mod_id"], f"{REPORT}.cpuid_mod_id", 1)
    try:
        return Generation.from_cpuid(family, model)
    except FormatError as err:
        raise KbsProtocolError(f"{REPORT}.cpuid_fam_id", str(err)) from None


def _tcb(value: Json, where: str, generation: Generation) -> int:
    obj = _object(value, where, TCB_MEMBERS, ("fmc",))
    fmc = obj["fmc"]
    if generation.turin_layout == (fmc is None):
        raise KbsProtocolError(f"{where}.fmc", f"must be {'a number' if fmc is None else 'null'}"
                               f" in a {generation.value} report")
    parts = {name: _int(obj[name], f"{where}.{name}", 1) for name in TCB_MEMBERS[1:]}
    return TcbVersion(fmc=None if fmc is None else _int(fmc, f"{where}.fmc", 1),
                      **parts).to_int()


def report_from_json(value: Json) -> bytes:
    """The 0x4A0-byte report from its virtee/sev serde JSON; every member must be present,
    typed and sized as the crate writes it, and the bytes must parse strictly."""
    obj = _object(value, REPORT, MEMBERS, OPTIONAL_BYTE + OPTIONAL_U64)
    at = f"{REPORT}."
    version = _int(obj["version"], at + "version", 4)
    chip_id = _bytes(obj["chip_id"], at + "chip_id", 64)
    generation = _generation(obj, version, chip_id)
    fields: dict[str, object] = {"chip_id": chip_id}
    for member in MEMBERS:
        where = at + member
        if member in TCBS:
            fields[member] = _tcb(obj[member], where, generation)
        elif member in ("current", "committed"):
            triple = _object(obj[member], where, VERSION_MEMBERS)
            for name in VERSION_MEMBERS:
                fields[f"{member}_{name}"] = _int(triple[name], f"{where}.{name}", 1)
        elif member == "key_info":
            try:
                fields["signer_info"] = SignerInfo.from_int(_int(obj[member], where, 4))
            except FormatError as err:
                raise KbsProtocolError(where, str(err)) from None
        elif member == "signature":
            sig = _object(obj[member], where, ("r", "s"))
            for half in ("r", "s"):
                fields[f"signature_{half}"] = int.from_bytes(
                    _bytes(sig[half], f"{where}.{half}", SIGNATURE_SIZE), "little")
        elif member in OPTIONAL_BYTE + OPTIONAL_U64:
            defined = version >= (3 if member in OPTIONAL_BYTE else 5)
            if (obj[member] is None) == defined:
                raise KbsProtocolError(where, f"must be {'a number' if defined else 'null'} "
                                       f"in a version {version} report")
            fields[member] = 0 if obj[member] is None else _int(
                obj[member], where, 1 if member in OPTIONAL_BYTE else 8)
        elif member != "chip_id":
            name = RENAMED.get(member, member)
            size = OFFSETS[name][1]
            fields[name] = (_int(obj[member], where, size) if size in (1, 4, 8)
                            else _bytes(obj[member], where, size))
    try:
        blob = AttestationReport(**fields).to_bytes()  # type: ignore[arg-type]
    except FormatError as err:
        raise KbsProtocolError(REPORT, str(err)) from None
    if report_to_json(blob) != _normalised(obj):  # what parsed must be what the bytes say
        raise KbsProtocolError(REPORT, "does not describe one report exactly")
    return blob


def _normalised(obj: dict[str, Json]) -> dict[str, Json]:
    """The report JSON with absent `fmc` members written as null."""
    return {name: {part: value.get(part) for part in TCB_MEMBERS} if name in TCBS else value
            for name, value in obj.items()}


def _cert_entry(value: Json, where: str) -> tuple[str, bytes]:
    entry = _object(value, where, ("cert_type", "data"))
    kind = entry["cert_type"]
    named = {name: guid for guid, name in CERT_TYPES.items()}
    if isinstance(kind, str) and kind in named:
        guid_text = str(named[kind])
    elif isinstance(kind, dict) and list(kind) == ["OTHER"] and isinstance(kind["OTHER"], str):
        guid_text = kind["OTHER"]
        if _cert_type(guid_text, f"{where}.cert_type.OTHER") != kind:
            raise KbsProtocolError(f"{where}.cert_type.OTHER", "names a GUID that has a "
                                   "variant of its own")
    else:
        raise KbsProtocolError(f"{where}.cert_type", f"{kind!r} is not one of "
                               f"{tuple(CERT_TYPES.values())} or {{\"OTHER\": guid}}")
    return guid_text, _bytes(entry["data"], f"{where}.data", None)


def snp_evidence_from_json(data: bytes | str | dict[str, Json]) -> SnpEvidence:
    """Strict parse of SNP evidence; `cert_chain` null or absent gives no certificates."""
    obj = load_json(data, "primary_evidence")
    members(obj, "", (REPORT,), ("cert_chain",))
    report = report_from_json(obj[REPORT])
    chain = obj.get("cert_chain")
    if chain is None:
        return SnpEvidence(report, [])
    if not isinstance(chain, list):
        raise KbsProtocolError("cert_chain", "is neither an array nor null")
    certs = [_cert_entry(entry, f"cert_chain[{i}]") for i, entry in enumerate(chain)]
    _no_duplicate_guids([guid for guid, _ in certs])
    return SnpEvidence(report, certs)
