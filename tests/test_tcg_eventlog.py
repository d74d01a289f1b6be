"""The TCG crypto-agile event log: tpm2-tools' tpm2_eventlog is the independent reader, and its
replayed PCR values the oracle for sevsim's; strict parsing refuses malformed logs at the
offset of the culprit."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim.abi.tcg_eventlog import (
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE_GUID,
    GCE_NONHOST_INFO_SIGNATURE,
    ConfidentialTechnology,
    Event,
    EventLog,
    EventType,
    HashAlg,
    Measurement,
    SpecIdEvent,
    boot_services_application,
    efi_variable_driver_config,
    gce_boot,
    grub_command,
    grub_file,
    image_load_path,
    kernel_cmdline,
    nonhost_info,
    parse_nonhost_info,
    parse_uefi_variable_data,
    replay,
    s_crtm_version,
    separator,
    uefi_variable_data,
)
from sevsim.errors import EventLogError, FormatError

PROGRAM = b"\x7fELF" + bytes(range(256)) * 3
SECURE_BOOT = {"SecureBoot": b"\x01", "PK": b"pk-signature-list", "KEK": b"kek-list",
               "db": b"db-list", "dbx": b""}


def gce_log(technology: ConfidentialTechnology = ConfidentialTechnology.AMD_SEV_SNP) -> EventLog:
    return gce_boot(technology, secure_boot=SECURE_BOOT, program=PROGRAM,
                    program_path="\\EFI\\sevsim\\prog.elf", cmdline="console=ttyS0 quiet",
                    files=[("/boot/vmlinuz", b"kernel" * 100), ("/boot/initrd", b"initrd")])


def tpm2_eventlog(raw: bytes, tmp_path: Path) -> str:
    """tpm2_eventlog's YAML for the log; CI installs tpm2-tools, so a missing tool fails."""
    tool = shutil.which("tpm2_eventlog")
    assert tool, "tpm2_eventlog: Debian's tpm2-tools (apt-get install tpm2-tools)"
    path = tmp_path / "binary_bios_measurements"
    path.write_bytes(raw)
    done = subprocess.run([tool, str(path)], capture_output=True, timeout=60)
    stdout, stderr = (out.decode(errors="replace") for out in (done.stdout, done.stderr))
    assert done.returncode == 0 and "ERROR" not in stderr, stderr
    return stdout


def listed_events(yaml: str) -> list[tuple[int, str]]:
    """(PCRIndex, EventType) of each event tpm2_eventlog lists, the Spec ID event included."""
    return [(int(pcr), kind) for pcr, kind in
            re.findall(r"^  PCRIndex: (\d+)\n  EventType: (\w+)$", yaml, re.MULTILINE)]


def listed_pcrs(yaml: str) -> dict[str, dict[int, bytes]]:
    """The "pcrs:" section: tpm2_eventlog's own replay of the log, per bank."""
    section = yaml.split("\npcrs:\n", 1)[1]
    banks: dict[str, dict[int, bytes]] = {}
    for line in section.splitlines():
        if bank := re.fullmatch(r"  (\w+):", line):
            current = banks.setdefault(bank.group(1), {})
        elif value := re.fullmatch(r"    (\d+)\s*: 0x([0-9a-fA-F]+)", line):
            current[int(value.group(1))] = bytes.fromhex(value.group(2))
        else:
            raise AssertionError(f"unexpected line in pcrs: {line!r}")
    return banks


def by_name(pcrs: dict[HashAlg, dict[int, bytes]]) -> dict[str, dict[int, bytes]]:
    return {alg.hashlib_name: values for alg, values in pcrs.items()}


def test_tpm2_eventlog_reads_a_gce_boot_log_and_replays_it_as_sevsim_does(tmp_path: Path) -> None:
    log = gce_log()
    yaml = tpm2_eventlog(log.to_bytes(), tmp_path)
    assert listed_events(yaml) == [(0, "EV_NO_ACTION")] + [
        (e.pcr, EventType(e.event_type).name) for e in log.events]
    assert [kind for _, kind in listed_events(yaml)[1:4]] == [
        "EV_S_CRTM_VERSION", "EV_NONHOST_INFO", "EV_EFI_VARIABLE_DRIVER_CONFIG"]
    assert "numberOfAlgorithms: 3" in yaml
    # tpm2_eventlog decodes UEFI_VARIABLE_DATA itself: the GUIDs and names must be where it reads
    for name in SECURE_BOOT:
        assert f"UnicodeName: {name}\n" in yaml
    assert f"VariableName: {EFI_GLOBAL_VARIABLE}" in yaml
    assert f"VariableName: {EFI_IMAGE_SECURITY_DATABASE_GUID}" in yaml
    assert '"kernel_cmdline: console=ttyS0 quiet\\0"' in yaml
    pcrs = replay(log)
    assert set(pcrs[HashAlg.SHA256]) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
    assert listed_pcrs(yaml) == by_name(pcrs)


def test_pcr0_of_a_real_gce_vm() -> None:
    """PCR 0 (SHA-256) read from a GCE VM with firmware v2 and NonHostInfo technology 3, as
    dstack's GCP PCR research published it: S-CRTM version, NonHostInfo, separator."""
    log = EventLog()
    for m in (s_crtm_version(2), nonhost_info(ConfidentialTechnology.INTEL_TDX), separator(0)):
        log.measure(m)
    assert replay(log)[HashAlg.SHA256][0] == bytes.fromhex(
        "0cca9ec161b09288802e5a112255d21340ed5b797f5fe29cecccfd8f67b9f802")


def test_gce_event_layouts() -> None:
    # go-tpm-tools: 16-byte signature, technology byte, 15 reserved bytes
    snp = nonhost_info(ConfidentialTechnology.AMD_SEV_SNP).data
    assert snp == GCE_NONHOST_INFO_SIGNATURE + b"\x04" + bytes(15) and len(snp) == 32
    assert s_crtm_version(2).data == "GCE Virtual Firmware v2\0".encode("utf-16-le")
    assert s_crtm_version(0).data == b""
    variable = uefi_variable_data(EFI_GLOBAL_VARIABLE, "PK", b"abc")
    assert variable == (bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
                        + struct.pack("<QQ", 2, 3) + "PK".encode("utf-16-le") + b"abc")
    load = boot_services_application(PROGRAM, "\\a", 0x200000, 0x1000).data
    assert struct.unpack_from("<QQQQ", load) == (0x200000, len(PROGRAM), 0x1000, 14)
    assert load[32:] == bytes([4, 4, 10, 0]) + "\\a\0".encode("utf-16-le") + b"\x7f\xff\x04\x00"
    assert grub_file("/boot/x", b"contents") == Measurement(9, EventType.EV_IPL, b"/boot/x\0",
                                                            b"contents")
    with pytest.raises(EventLogError, match="'Boot0000'"):
        efi_variable_driver_config("Boot0000", b"")


def test_digests_are_hashes_of_what_the_spec_says() -> None:
    log = gce_log()
    for event in log.events:
        if event.event_type == EventType.EV_IPL:  # GRUB: of the string or file, not the data
            if event.pcr == 8:
                prefix, _, rest = event.data.partition(b": ")
                assert prefix == b"kernel_cmdline" and rest.endswith(b"\0")
                measured = rest[:-1]
            else:
                measured = b"kernel" * 100 if event.data == b"/boot/vmlinuz\0" else b"initrd"
        elif event.event_type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
            measured = PROGRAM  # of the image, not of UEFI_IMAGE_LOAD_EVENT
        else:  # S-CRTM version, NonHostInfo, UEFI_VARIABLE_DATA, separator: of the data
            measured = event.data
        assert event.digests == {alg: hashlib.new(alg.hashlib_name, measured).digest()
                                 for alg in log.banks}, EventType(event.event_type).name
    no_action = log.measure(Measurement(0, EventType.EV_NO_ACTION, b"StartupLocality\0\0", b"x"))
    assert all(d == bytes(len(d)) for d in no_action.digests.values())
    assert log.pcrs == replay(log)


def test_round_trip() -> None:
    log = gce_log()
    log.measure(grub_command("set root=(hd0,gpt1)"))
    raw = log.to_bytes()
    parsed = EventLog.from_bytes(raw)
    assert parsed.spec_id == log.spec_id and parsed.events == log.events
    assert parsed.to_bytes() == raw and parsed.pcrs == log.pcrs


def test_every_truncation_is_refused_at_the_cut() -> None:
    log = EventLog(SpecIdEvent((HashAlg.SHA256,)))
    log.measure(kernel_cmdline("a"))
    raw = log.to_bytes()
    first_event = len(raw) - len(log.events[0].to_bytes())
    for cut in set(range(len(raw))) - {first_event}:
        with pytest.raises(EventLogError) as caught:
            EventLog.from_bytes(raw[:cut])
        # the error points into the structure the cut broke
        assert caught.value.offset <= cut
        assert caught.value.offset >= (first_event if cut > first_event else 0)
        assert isinstance(caught.value, FormatError)
    assert EventLog.from_bytes(raw[:first_event]).events == []


def corrupt(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


def test_corruptions_are_refused_at_their_offset() -> None:
    log = gce_log()
    raw = log.to_bytes()
    second = len(log.to_bytes()) - sum(len(e.to_bytes()) for e in log.events[1:])
    cases = [
        (corrupt(raw, 4, b"\x04"), 0, "first event"),  # SHA-1 header not EV_NO_ACTION
        (corrupt(raw, 32, b"Spec ID Event02"), 32, "signature"),
        (corrupt(raw, 55, b"\x03"), 55, "uintnSize 3"),
        (corrupt(raw, 56, b"\x05"), 72, "digest sizes"),  # 5 banks: the 4th overruns the event
        (corrupt(raw, 62, b"\x21"), 60, "digest size 33"),  # SHA-1 of 33 bytes
        (corrupt(raw, 64, b"\x04"), 64, "SHA1 listed twice"),
        (corrupt(raw, 72, b"\x01"), 72, "vendorInfoSize 1"),
        (corrupt(raw, second + 8, b"\x02"), second + 8, "2 digests"),
        (corrupt(raw, second + 12, b"\x0b"), second + 12, "SHA1"),
        (corrupt(raw, second, b"\x18"), second, "PCR index 24"),
        (raw + b"\x00" * 5, len(raw), "header"),
    ]
    for bad, offset, message in cases:
        with pytest.raises(EventLogError, match=message) as caught:
            EventLog.from_bytes(bad)
        assert caught.value.offset == offset, message
    no_action = Event(0, EventType.EV_NO_ACTION,
                      {alg: b"\x01" * alg.digest_size for alg in log.banks}, b"")
    with pytest.raises(EventLogError, match="nonzero digest") as caught:
        EventLog.from_bytes(raw + no_action.to_bytes())
    assert caught.value.offset == len(raw)


def test_writer_refuses_events_that_do_not_fit_the_log() -> None:
    log = EventLog()
    with pytest.raises(EventLogError, match="banks"):
        log.append(Event(0, EventType.EV_IPL, {HashAlg.SHA256: bytes(32)}, b""))
    with pytest.raises(EventLogError, match="PCR 24"):
        log.measure(Measurement(24, EventType.EV_IPL, b"", b""))
    assert log.events == [] and all(not values for values in log.pcrs.values())


# tpm2_eventlog decodes the data of EFI and a few other event types: those get well-formed
# data from the constructors, the rest any bytes.
DECODED = {EventType.EV_NO_ACTION, EventType.EV_IPL, EventType.EV_POST_CODE,
           EventType.EV_S_CRTM_CONTENTS, EventType.EV_S_CRTM_VERSION}  # as UEFI blobs, strings
OPAQUE_TYPES = st.sampled_from([t for t in EventType if t < EventType.EV_EFI_VARIABLE_DRIVER_CONFIG
                                and t not in DECODED])
measurements = st.one_of(
    st.builds(Measurement, st.integers(0, 23), OPAQUE_TYPES, st.binary(max_size=64),
              st.binary(max_size=64)),
    st.builds(s_crtm_version, st.integers(0, 2**32 - 1)),
    st.builds(nonhost_info, st.sampled_from(ConfidentialTechnology)),
    st.builds(separator, st.integers(0, 7), error=st.booleans()),
    st.builds(efi_variable_driver_config, st.sampled_from(sorted(SECURE_BOOT)),
              st.binary(max_size=64)),
    st.builds(boot_services_application, st.binary(max_size=64), st.text(max_size=8),
              st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.builds(kernel_cmdline, st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                      max_size=20)),
    st.builds(grub_file, st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                 max_size=20), st.binary(max_size=64)),
)
bank_sets = st.lists(st.sampled_from(list(HashAlg)), min_size=1, max_size=4, unique=True)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(banks=bank_sets, events=st.lists(measurements, max_size=12),
       vendor=st.binary(max_size=8))
def test_random_logs_round_trip_and_replay_as_tpm2_eventlog_does(
        tmp_path: Path, banks: list[HashAlg], events: list[Measurement], vendor: bytes) -> None:
    log = EventLog(SpecIdEvent(tuple(banks), vendor_info=vendor))
    for m in events:
        log.measure(m)
    raw = log.to_bytes()
    parsed = EventLog.from_bytes(raw)
    assert parsed.events == log.events and parsed.to_bytes() == raw
    assert replay(parsed) == log.pcrs
    yaml = tpm2_eventlog(raw, tmp_path)
    assert listed_events(yaml)[1:] == [(m.pcr, EventType(m.event_type).name) for m in events]
    expected = {name: values for name, values in by_name(replay(log)).items() if values}
    assert {name: values for name, values in listed_pcrs(yaml).items() if values} == expected


def test_event_data_parsers_read_what_the_constructors_write() -> None:
    for technology in ConfidentialTechnology:
        assert parse_nonhost_info(nonhost_info(technology).data) is technology
    data = efi_variable_driver_config("db", b"\x01\x02").data
    assert parse_uefi_variable_data(data) == (EFI_IMAGE_SECURITY_DATABASE_GUID, "db",
                                              b"\x01\x02")
    image = boot_services_application(PROGRAM, "\\EFI\\BOOT\\BOOTX64.EFI", 0x100000)
    assert image_load_path(image.data) == "\\EFI\\BOOT\\BOOTX64.EFI"


@pytest.mark.parametrize(("parse", "data", "message"), [
    (parse_nonhost_info, GCE_NONHOST_INFO_SIGNATURE + bytes(15), "not GCE's 32-byte"),
    (parse_nonhost_info, GCE_NONHOST_INFO_SIGNATURE + b"\x09" + bytes(15), "technology 9"),
    (parse_uefi_variable_data, bytes(31), "the header alone is 32"),
    (parse_uefi_variable_data, uefi_variable_data(EFI_GLOBAL_VARIABLE, "PK", b"x") + b"y",
     "the event holds"),
    (parse_uefi_variable_data, uefi_variable_data(EFI_GLOBAL_VARIABLE, "PK", b"")[:32]
     + b"\x00\xd8", "UEFI_VARIABLE_DATA says"),
    (parse_uefi_variable_data, uefi_variable_data(EFI_GLOBAL_VARIABLE, "P", b"")[:-2]
     + b"\x00\xd8", "name is not UTF-16"),
    (image_load_path, bytes(31), "UEFI_IMAGE_LOAD_EVENT of 31 bytes"),
    (image_load_path, boot_services_application(b"", "p", 0).data[:-1], "not one File Path"),
    (image_load_path, boot_services_application(b"", "p", 0).data[:-4] + bytes(4),
     "does not end"),
])
def test_event_data_parsers_refuse_what_is_not_one(parse: object, data: bytes,
                                                   message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        parse(data)  # type: ignore[operator]
