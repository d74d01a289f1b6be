"""The TCG PC Client crypto-agile event log, as UEFI firmware and boot loaders write it.

A measured boot extends PCRs with digests; the event log says what each digest was of, so a
relying party can replay it to the quoted PCR values and then judge the events one by one.
Layouts are the TCG PC Client Platform Firmware Profile's (PFP, section 10): the log opens with
one TCG_PCClientPCREvent in the old SHA-1 layout, an EV_NO_ACTION whose data is the
TCG_EfiSpecIdEvent ("Spec ID Event03") naming the PCR banks and their digest sizes; then every
event is a TCG_PCR_EVENT2 carrying a TPML_DIGEST_VALUES with one digest per bank. All integers
are little-endian (the log is a UEFI structure, unlike TPM commands). The event constructors
below give the events Google's Shielded-VM firmware and GRUB log, each with its source.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from sevsim.abi.tpm2 import HashAlg
from sevsim.errors import EventLogError


class EventType(IntEnum):
    """Event types (PFP, Table 9 "Events"), those a PC Client log may hold."""

    EV_PREBOOT_CERT = 0x0
    EV_POST_CODE = 0x1
    EV_UNUSED = 0x2
    EV_NO_ACTION = 0x3
    EV_SEPARATOR = 0x4
    EV_ACTION = 0x5
    EV_EVENT_TAG = 0x6
    EV_S_CRTM_CONTENTS = 0x7
    EV_S_CRTM_VERSION = 0x8
    EV_CPU_MICROCODE = 0x9
    EV_PLATFORM_CONFIG_FLAGS = 0xA
    EV_TABLE_OF_DEVICES = 0xB
    EV_COMPACT_HASH = 0xC
    EV_IPL = 0xD
    EV_IPL_PARTITION_DATA = 0xE
    EV_NONHOST_CODE = 0xF
    EV_NONHOST_CONFIG = 0x10
    EV_NONHOST_INFO = 0x11
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x12
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


PCR_COUNT = 24  # a PC Client TPM has 24 PCRs (PC Client PTP, "PCR bank")
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
SHA1_DIGEST_SIZE = 20
# GCE's vTPM has SHA-1, SHA-256 and SHA-384 banks (Google's "measurement register contents").
GCE_BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384)

_U32 = struct.Struct("<I")
_SHA1_EVENT_HEADER = struct.Struct(f"<II{SHA1_DIGEST_SIZE}sI")  # pcr, type, digest, size
_EVENT2_HEADER = struct.Struct("<III")  # pcr, type, then TPML_DIGEST_VALUES.count
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature ... numberOfAlgorithms
_ALG_SIZE = struct.Struct("<HH")  # TCG_EfiSpecIdEventAlgorithmSize


@dataclass(frozen=True)
class SpecIdEvent:
    """TCG_EfiSpecIdEvent (PFP 10.4.5.1): which banks every later event carries digests for.

    The defaults are a PC Client platform (class 0) following PFP 2.0 errata 0, with 64-bit
    UINTN (uintn_size 2), as EDK2 writes it on x86-64."""

    banks: tuple[HashAlg, ...] = GCE_BANKS
    platform_class: int = 0
    spec_version_minor: int = 0
    spec_version_major: int = 2
    spec_errata: int = 0
    uintn_size: int = 2
    vendor_info: bytes = b""

    def to_bytes(self) -> bytes:
        """The event data of the log's first event."""
        return (_SPEC_ID_FIXED.pack(SPEC_ID_SIGNATURE, self.platform_class,
                                    self.spec_version_minor, self.spec_version_major,
                                    self.spec_errata, self.uintn_size, len(self.banks))
                + b"".join(_ALG_SIZE.pack(alg, alg.digest_size) for alg in self.banks)
                + bytes([len(self.vendor_info)]) + self.vendor_info)


@dataclass(frozen=True)
class Event:
    """One TCG_PCR_EVENT2: `digests` holds one digest per bank, in the log's bank order."""

    pcr: int
    event_type: int
    digests: Mapping[HashAlg, bytes]
    data: bytes

    def to_bytes(self) -> bytes:
        """The TCG_PCR_EVENT2 record."""
        return (_EVENT2_HEADER.pack(self.pcr, self.event_type, len(self.digests))
                + b"".join(struct.pack("<H", alg) + d for alg, d in self.digests.items())
                + _U32.pack(len(self.data)) + self.data)


@dataclass(frozen=True)
class Measurement:
    """What a measuring agent logs: the event's data and the bytes its digests are of.

    The two differ where the PFP or the agent says so: an EV_EFI_BOOT_SERVICES_APPLICATION's
    data describes where the image was loaded while its digest is of the image; GRUB's EV_IPL
    data is a description string while its digest is of the command or file."""

    pcr: int
    event_type: int
    data: bytes
    measured: bytes


def extend(alg: HashAlg, value: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend: the new PCR value is H(old value || digest)."""
    return alg.hash(value + digest)


class EventLog:
    """A crypto-agile event log being written, with the PCR values its events extend to.

    Measuring and appending are one step so that the log and the PCR values cannot drift: a
    TPM driver extends the TPM with `Event.digests` of what `measure` returns."""

    def __init__(self, spec_id: SpecIdEvent | None = None) -> None:
        self.spec_id = spec_id or SpecIdEvent()
        if not self.spec_id.banks or len(set(self.spec_id.banks)) != len(self.spec_id.banks):
            raise EventLogError(None, f"banks {self.spec_id.banks}: need one or more, "
                                "none twice")
        self.events: list[Event] = []
        self.pcrs: dict[HashAlg, dict[int, bytes]] = {alg: {} for alg in self.spec_id.banks}

    @property
    def banks(self) -> tuple[HashAlg, ...]:
        """The PCR banks every event carries a digest for, in the log's order."""
        return self.spec_id.banks

    def measure(self, m: Measurement) -> Event:
        """Append the event for `m`, its digests the hashes of `m.measured` in every bank."""
        if m.event_type == EventType.EV_NO_ACTION:  # PFP 10.4.2: digests are zero, no extend
            digests = {alg: bytes(alg.digest_size) for alg in self.banks}
        else:
            digests = {alg: alg.hash(m.measured) for alg in self.banks}
        event = Event(m.pcr, m.event_type, digests, m.data)
        self.append(event)
        return event

    def append(self, event: Event) -> None:
        """Append an event whose digests were computed elsewhere (an image's Authenticode hash)
        and extend the running PCR values with them."""
        if not 0 <= event.pcr < PCR_COUNT:
            raise EventLogError(None, f"PCR {event.pcr}: a PC Client TPM has PCRs "
                                f"0..{PCR_COUNT - 1}")
        if tuple(event.digests) != self.banks:
            raise EventLogError(None, f"digests for {list(event.digests)}, the log's banks "
                                f"are {list(self.banks)}")
        for alg, digest in event.digests.items():
            if len(digest) != alg.digest_size:
                raise EventLogError(None, f"{alg.name} digest of {len(digest)} bytes")
        self.events.append(event)
        _extend_event(self.pcrs, event)

    def to_bytes(self) -> bytes:
        """The log as firmware hands it over (Linux's binary_bios_measurements)."""
        spec_id = self.spec_id.to_bytes()
        header = _SHA1_EVENT_HEADER.pack(0, EventType.EV_NO_ACTION, bytes(SHA1_DIGEST_SIZE),
                                         len(spec_id)) + spec_id
        return header + b"".join(e.to_bytes() for e in self.events)

    @classmethod
    def from_bytes(cls, raw: bytes) -> EventLog:
        """Parse a whole log strictly: every byte belongs to an event, every event carries
        exactly the banks of the Spec ID event in its order, EV_NO_ACTION digests are zero."""
        spec_id, offset = _parse_spec_id(raw)
        log = cls(spec_id)
        while offset < len(raw):
            event, end = _parse_event2(raw, offset, spec_id.banks)
            log.append(event)
            offset = end
        return log


def _need(raw: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(raw):
        raise EventLogError(offset, f"{what}: {size} bytes needed, {len(raw) - offset} left")


def _parse_spec_id(raw: bytes) -> tuple[SpecIdEvent, int]:
    _need(raw, 0, _SHA1_EVENT_HEADER.size, "first event (TCG_PCClientPCREvent)")
    pcr, event_type, digest, size = _SHA1_EVENT_HEADER.unpack_from(raw, 0)
    if pcr != 0 or event_type != EventType.EV_NO_ACTION or any(digest):
        raise EventLogError(0, f"first event is PCR {pcr} type {event_type:#x}, not the "
                               "zero-digest EV_NO_ACTION in PCR 0 of a crypto-agile log")
    at = _SHA1_EVENT_HEADER.size
    _need(raw, at, size, "Spec ID event")
    end = at + size
    _need(raw[:end], at, _SPEC_ID_FIXED.size, "TCG_EfiSpecIdEvent")
    signature, platform_class, minor, major, errata, uintn, count = _SPEC_ID_FIXED.unpack_from(
        raw, at)
    if signature != SPEC_ID_SIGNATURE:
        raise EventLogError(at, f"signature {signature!r}, not {SPEC_ID_SIGNATURE!r}")
    if uintn not in (1, 2):
        raise EventLogError(at + 23, f"uintnSize {uintn}: 1 (UINT32) or 2 (UINT64)")
    at += _SPEC_ID_FIXED.size
    banks: list[HashAlg] = []
    for _ in range(count):
        _need(raw[:end], at, _ALG_SIZE.size, "digest sizes")
        alg_id, digest_size = _ALG_SIZE.unpack_from(raw, at)
        if alg_id not in HashAlg.__members__.values():
            raise EventLogError(at, f"algorithm {alg_id:#06x} not supported")
        alg = HashAlg(alg_id)
        if digest_size != alg.digest_size or alg in banks:
            raise EventLogError(at, f"{alg.name} listed twice or with digest size {digest_size}")
        banks.append(alg)
        at += _ALG_SIZE.size
    if not banks:
        raise EventLogError(at, "no PCR banks")
    _need(raw[:end], at, 1, "vendorInfoSize")
    vendor_size = raw[at]
    if at + 1 + vendor_size != end:
        raise EventLogError(at, f"vendorInfoSize {vendor_size} does not end the Spec ID event "
                                f"({end - at - 1} bytes left in it)")
    spec_id = SpecIdEvent(tuple(banks), platform_class, minor, major, errata, uintn,
                          raw[at + 1:end])
    return spec_id, end


def _parse_event2(raw: bytes, offset: int, banks: tuple[HashAlg, ...]) -> tuple[Event, int]:
    _need(raw, offset, _EVENT2_HEADER.size, "TCG_PCR_EVENT2 header")
    pcr, event_type, count = _EVENT2_HEADER.unpack_from(raw, offset)
    if pcr >= PCR_COUNT:
        raise EventLogError(offset, f"PCR index {pcr}: a PC Client TPM has {PCR_COUNT}")
    if count != len(banks):
        raise EventLogError(offset + 8, f"{count} digests, the Spec ID event names "
                                        f"{len(banks)} banks")
    at = offset + _EVENT2_HEADER.size
    digests: dict[HashAlg, bytes] = {}
    for alg in banks:
        _need(raw, at, 2, "TPMT_HA.hashAlg")
        (alg_id,) = struct.unpack_from("<H", raw, at)
        if alg_id != alg:
            raise EventLogError(at, f"digest algorithm {alg_id:#06x} where the Spec ID event "
                                    f"puts {alg.name}")
        _need(raw, at + 2, alg.digest_size, f"{alg.name} digest")
        digests[alg] = raw[at + 2:at + 2 + alg.digest_size]
        at += 2 + alg.digest_size
    _need(raw, at, 4, "eventSize")
    (size,) = _U32.unpack_from(raw, at)
    _need(raw, at + 4, size, "event data")
    if event_type == EventType.EV_NO_ACTION and any(any(d) for d in digests.values()):
        raise EventLogError(offset, "EV_NO_ACTION with a nonzero digest")
    return Event(pcr, event_type, digests, raw[at + 4:at + 4 + size]), at + 4 + size


def _extend_event(pcrs: dict[HashAlg, dict[int, bytes]], event: Event) -> None:
    """Extend `pcrs` with the event's digests; EV_NO_ACTION extends nothing (PFP 10.4.2)."""
    if event.event_type == EventType.EV_NO_ACTION:
        return
    for alg, digest in event.digests.items():
        bank = pcrs[alg]
        bank[event.pcr] = extend(alg, bank.get(event.pcr, bytes(alg.digest_size)), digest)


def replay(log: EventLog) -> dict[HashAlg, dict[int, bytes]]:
    """The PCR values the log's events extend to from reset (all zeros), per bank, for the
    PCRs the log touches: what a relying party compares with a quoted PCR digest. Recomputed
    from the events alone, whatever running values the log object carries."""
    pcrs: dict[HashAlg, dict[int, bytes]] = {alg: {} for alg in log.banks}
    for event in log.events:
        _extend_event(pcrs, event)
    return pcrs


# --- The events a GCE Shielded VM's firmware and its boot loader log ------------------------

class ConfidentialTechnology(IntEnum):
    """The technology byte of GCE's NonHostInfo event (go-tpm-tools proto/attest.proto,
    GCEConfidentialTechnology)."""

    NONE = 0
    AMD_SEV = 1
    AMD_SEV_ES = 2
    INTEL_TDX = 3
    AMD_SEV_SNP = 4


# go-tpm-tools server/policy_constants.go: GCENonHostInfoSignature, GceVirtualFirmwarePrefix.
GCE_NONHOST_INFO_SIGNATURE = b"GCE NonHostInfo\x00"
GCE_NONHOST_INFO_SIZE = 32  # signature, technology byte, 15 reserved zero bytes
GCE_FIRMWARE_PREFIX = "GCE Virtual Firmware v"
SEPARATOR_DATA = bytes(4)  # PFP 10.4.4: 0x00000000; 0xFFFFFFFF marks an error
SEPARATOR_ERROR_DATA = b"\xff" * 4
# UEFI 2.10, 3.3 "Globally defined variables" and 32.6.1 "Image security database".
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
SECURE_BOOT_VARIABLES = {"SecureBoot": EFI_GLOBAL_VARIABLE, "PK": EFI_GLOBAL_VARIABLE,
                         "KEK": EFI_GLOBAL_VARIABLE, "db": EFI_IMAGE_SECURITY_DATABASE_GUID,
                         "dbx": EFI_IMAGE_SECURITY_DATABASE_GUID}
# GRUB (grub-core/commands/tpm.c): strings into PCR 8, files into PCR 9, both EV_IPL.
GRUB_STRING_PCR = 8
GRUB_BINARY_PCR = 9
_UEFI_IMAGE_LOAD_EVENT = struct.Struct("<QQQQ")  # location, length, link address, path size
_UEFI_VARIABLE_DATA = struct.Struct("<16sQQ")  # VariableName GUID, name chars, data size


def s_crtm_version(firmware_version: int) -> Measurement:
    """GCE's EV_S_CRTM_VERSION in PCR 0: "GCE Virtual Firmware v<N>" in UCS-2 with its NUL,
    version 0 an empty string (go-tpm-tools ConvertGCEFirmwareVersionToSCRTMVersion). The
    digest is of the data (PFP 3.3.4.1)."""
    data = (f"{GCE_FIRMWARE_PREFIX}{firmware_version}\x00".encode("utf-16-le")
            if firmware_version else b"")
    return Measurement(0, EventType.EV_S_CRTM_VERSION, data, data)


def nonhost_info(technology: ConfidentialTechnology) -> Measurement:
    """GCE's EV_NONHOST_INFO in PCR 0: 16-byte signature, the confidential technology, 15
    reserved bytes (go-tpm-tools GCENonHostInfoSignature); the digest is of the data."""
    data = GCE_NONHOST_INFO_SIGNATURE + bytes([technology]).ljust(16, b"\x00")
    return Measurement(0, EventType.EV_NONHOST_INFO, data, data)


def parse_nonhost_info(data: bytes) -> ConfidentialTechnology:
    """The confidential technology a GCE NonHostInfo event's data names; data of another
    shape, or a technology byte go-tpm-tools does not define, is an EventLogError."""
    if len(data) != GCE_NONHOST_INFO_SIZE or not data.startswith(GCE_NONHOST_INFO_SIGNATURE):
        raise EventLogError(None, f"{len(data)}-byte NonHostInfo {data[:16]!r}: not GCE's "
                                  f"{GCE_NONHOST_INFO_SIZE}-byte event")
    technology = data[len(GCE_NONHOST_INFO_SIGNATURE)]
    if technology not in ConfidentialTechnology.__members__.values():
        raise EventLogError(None, f"NonHostInfo names confidential technology {technology}")
    return ConfidentialTechnology(technology)


def separator(pcr: int, *, error: bool = False) -> Measurement:
    """EV_SEPARATOR closing the pre-OS measurements of PCRs 0-7 (PFP 3.3.2.2); the digest is
    of the four data bytes."""
    data = SEPARATOR_ERROR_DATA if error else SEPARATOR_DATA
    return Measurement(pcr, EventType.EV_SEPARATOR, data, data)


def uefi_variable_data(guid: uuid.UUID, name: str, value: bytes) -> bytes:
    """UEFI_VARIABLE_DATA (PFP 10.4.4.6): VariableName GUID (EFI mixed-endian), the name's
    length in UTF-16 characters and the value's in bytes, the name without NUL, the value."""
    encoded = name.encode("utf-16-le")
    return _UEFI_VARIABLE_DATA.pack(guid.bytes_le, len(encoded) // 2, len(value)) + encoded + value


def parse_uefi_variable_data(data: bytes) -> tuple[uuid.UUID, str, bytes]:
    """(VariableName GUID, name, value) of a UEFI_VARIABLE_DATA, as uefi_variable_data writes
    it; an event whose data is not one is an EventLogError (no offset: the caller has the
    event, not the log)."""
    if len(data) < _UEFI_VARIABLE_DATA.size:
        raise EventLogError(None, f"UEFI_VARIABLE_DATA of {len(data)} bytes, the header "
                                  f"alone is {_UEFI_VARIABLE_DATA.size}")
    guid, name_chars, value_size = _UEFI_VARIABLE_DATA.unpack_from(data)
    name_end = _UEFI_VARIABLE_DATA.size + 2 * name_chars
    if name_end + value_size != len(data):
        raise EventLogError(None, f"UEFI_VARIABLE_DATA says {name_chars} name characters and "
                                  f"{value_size} value bytes, the event holds {len(data)} bytes")
    try:
        name = data[_UEFI_VARIABLE_DATA.size:name_end].decode("utf-16-le")
    except UnicodeDecodeError as e:
        raise EventLogError(None, f"UEFI_VARIABLE_DATA name is not UTF-16: {e.reason}") from None
    return uuid.UUID(bytes_le=guid), name, data[name_end:]


def efi_variable_driver_config(name: str, value: bytes) -> Measurement:
    """EV_EFI_VARIABLE_DRIVER_CONFIG in PCR 7 for a Secure Boot variable (SecureBoot, PK, KEK,
    db, dbx) as EDK2 measures it at boot, even when empty; the digest is of the whole
    UEFI_VARIABLE_DATA (PFP 3.3.4.8)."""
    if name not in SECURE_BOOT_VARIABLES:
        raise EventLogError(None, f"{name!r}: not one of {sorted(SECURE_BOOT_VARIABLES)}")
    data = uefi_variable_data(SECURE_BOOT_VARIABLES[name], name, value)
    return Measurement(7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, data, data)


def efi_variable_authority(signature_data: bytes, name: str = "db") -> Measurement:
    """EV_EFI_VARIABLE_AUTHORITY in PCR 7 (PFP 3.3.4.8, 10.4.4.6): the UEFI_VARIABLE_DATA of
    the variable whose entry authorised a loaded image, its value the EFI_SIGNATURE_DATA of
    that entry (owner GUID and certificate); EDK2 logs each such entry once per boot."""
    if name not in SECURE_BOOT_VARIABLES:
        raise EventLogError(None, f"{name!r}: not one of {sorted(SECURE_BOOT_VARIABLES)}")
    data = uefi_variable_data(SECURE_BOOT_VARIABLES[name], name, signature_data)
    return Measurement(7, EventType.EV_EFI_VARIABLE_AUTHORITY, data, data)


def file_path_device_path(path: str) -> bytes:
    """An EFI device path of one File Path media node (type 4, subtype 4, NUL-terminated UTF-16
    path) and the End of Hardware node (0x7F, 0xFF), per UEFI 2.10 10.3.5.4 and 10.3.1."""
    encoded = (path + "\x00").encode("utf-16-le")
    return struct.pack("<BBH", 4, 4, 4 + len(encoded)) + encoded + bytes([0x7F, 0xFF, 4, 0])


def boot_services_application(image: bytes, path: str, location: int,
                              link_time_address: int = 0) -> Measurement:
    """EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4 for the loaded program: the data is
    UEFI_IMAGE_LOAD_EVENT (PFP 10.4.4.3: load address, length, link-time address, device path
    length, device path). UEFI hashes a PE image Authenticode-style; sevsim's programs are ELF
    files, so the digest here is of the file."""
    device_path = file_path_device_path(path)
    data = _UEFI_IMAGE_LOAD_EVENT.pack(location, len(image), link_time_address,
                                       len(device_path)) + device_path
    return Measurement(4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, data, image)


def image_load_path(data: bytes) -> str:
    """The file path of a UEFI_IMAGE_LOAD_EVENT whose device path is one File Path node, as
    boot_services_application writes it; anything else is an EventLogError."""
    if len(data) < _UEFI_IMAGE_LOAD_EVENT.size:
        raise EventLogError(None, f"UEFI_IMAGE_LOAD_EVENT of {len(data)} bytes")
    *_, path_size = _UEFI_IMAGE_LOAD_EVENT.unpack_from(data)
    path = data[_UEFI_IMAGE_LOAD_EVENT.size:]
    if len(path) != path_size or path_size < 8 or path[:2] != b"\x04\x04":
        raise EventLogError(None, "the image's device path is not one File Path node")
    node_size = int.from_bytes(path[2:4], "little")
    if path[node_size:] != bytes([0x7F, 0xFF, 4, 0]):
        raise EventLogError(None, "the image's device path does not end after its File Path")
    try:
        return path[4:node_size].decode("utf-16-le").removesuffix("\x00")
    except UnicodeDecodeError as e:
        raise EventLogError(None, f"the image's file path is not UTF-16: {e.reason}") from None


def grub_command(command: str, prefix: str = "grub_cmd: ") -> Measurement:
    """EV_IPL in PCR 8 as GRUB logs a command or command line (grub_tpm_verify_string): the
    data is prefix + string with its NUL, the digest is of the string alone. Prefixes are
    "grub_cmd: ", "kernel_cmdline: " and "module_cmdline: "."""
    return Measurement(GRUB_STRING_PCR, EventType.EV_IPL,
                       f"{prefix}{command}\x00".encode(), command.encode())


def kernel_cmdline(cmdline: str) -> Measurement:
    """GRUB's EV_IPL for the Linux kernel command line in PCR 8."""
    return grub_command(cmdline, "kernel_cmdline: ")


def grub_file(path: str, contents: bytes) -> Measurement:
    """EV_IPL in PCR 9 as GRUB logs a file it reads (kernel, initrd, config): the data is the
    file name with its NUL, the digest is of the contents."""
    return Measurement(GRUB_BINARY_PCR, EventType.EV_IPL, f"{path}\x00".encode(), contents)


def secure_boot_measurements(secure_boot: Mapping[str, bytes], authority: bytes | None = None
                             ) -> tuple[list[Measurement], list[Measurement]]:
    """PCR 7's events on either side of its separator (PFP 3.3.4.8): before it, the Secure
    Boot variables SecureBoot, PK, KEK, db and dbx as EDK2 measures them at start (an empty
    value when unset); after it, the db entry (EFI_SIGNATURE_DATA) that authorised the image
    the firmware loaded, when secure boot let one run."""
    config = [efi_variable_driver_config(name, secure_boot.get(name, b""))
              for name in SECURE_BOOT_VARIABLES]
    return config, [] if authority is None else [efi_variable_authority(authority, "db")]


def gce_boot(technology: ConfidentialTechnology, *, secure_boot: Mapping[str, bytes],
             program: bytes | None, program_path: str, cmdline: str,
             files: Iterable[tuple[str, bytes]] = (), firmware_version: int = 2,
             load_address: int = 0x100000, spec_id: SpecIdEvent | None = None,
             authority: bytes | None = None) -> EventLog:
    """A log in the order a GCE Confidential VM's firmware and GRUB write it: PCR 0's S-CRTM
    version and NonHostInfo, PCR 7's Secure Boot variables, the separators of PCRs 0-7, the
    db entry that authorised the program (`authority`, with secure boot on), the program in
    PCR 4, then the command line (PCR 8) and files (PCR 9). `secure_boot` maps each of
    SecureBoot, PK, KEK, db, dbx to its value; `program` None is a boot that loaded nothing
    (secure boot refused it): the log ends after PCR 7. `spec_id` names the banks (default
    GCE's three)."""
    log = EventLog(spec_id)
    log.measure(s_crtm_version(firmware_version))
    log.measure(nonhost_info(technology))
    config, authorised = secure_boot_measurements(secure_boot, authority)
    for m in config:
        log.measure(m)
    for pcr in range(8):
        log.measure(separator(pcr))
    for m in authorised:
        log.measure(m)
    if program is None:
        return log
    log.measure(boot_services_application(program, program_path, load_address))
    log.measure(kernel_cmdline(cmdline))
    for path, contents in files:
        log.measure(grub_file(path, contents))
    return log
