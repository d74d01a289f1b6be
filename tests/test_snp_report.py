"""The SNP ATTESTATION_REPORT, MSG_REPORT_RSP and certificate table (spec-formats.md §1) on
real reports from real Milan machines: exact round trips, signatures that verify with the
real VCEKs, strict parsing with typed errors for everything else."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    OFFSETS,
    REPORT_SIZE,
    SIGNED_SIZE,
    STATUS_INVALID_PARAM,
    AttestationReport,
    ReportResponse,
    SignerInfo,
    build_cert_table,
    parse_cert_table,
    verify_report,
)
from sevsim.abi.snp_tcb import Generation, PlatformInfo, PolicyFlags, SigningKey, TcbVersion
from sevsim.errors import ReportFormatError

DATA = Path(__file__).resolve().parent / "data" / "snp"
NAMES = ("milan-v2-a", "milan-v2-b")
RESERVED = [name for name in OFFSETS if name.startswith("reserved_")]
KEY = ec.derive_private_key(0x5EB51A, ec.SECP384R1())


def report_bytes(name: str) -> bytes:
    path = DATA / name / "report.bin"
    if path.exists():
        return path.read_bytes()
    return bytes.fromhex((DATA / name / "report.hex").read_text().strip())


def vcek(name: str) -> SnpCertificate:
    return SnpCertificate.from_der((DATA / name / "vcek.der").read_bytes())


REPORTS = {name: report_bytes(name) for name in NAMES}


# -- real reports ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_real_report_round_trips_byte_for_byte(name: str) -> None:
    blob = REPORTS[name]
    report = AttestationReport.from_bytes(blob)
    assert report.to_bytes() == blob
    assert report.signed_bytes() == blob[:SIGNED_SIZE]


def test_real_report_fields_sit_at_amd_offsets() -> None:
    """milan-v2-b: virtee/sev's report_milan.hex (fw 1.52 build 4, policy 0x30000)."""
    blob = REPORTS["milan-v2-b"]
    report = AttestationReport.from_bytes(blob)
    assert report.version == 2 and report.policy == 0x30000
    assert report.policy_info.flags == PolicyFlags.SMT
    assert report.vmpl == struct.unpack_from("<I", blob, 0x30)[0]
    assert (report.current_major, report.current_minor, report.current_build) == (1, 52, 4)
    assert blob[0x180:0x188] == bytes.fromhex("0300000000000873")
    assert report.tcb("reported_tcb") == TcbVersion(bootloader=3, tee=0, snp=8,
                                                    microcode=0x73)
    assert report.signer_info == SignerInfo(False, False, SigningKey.VCEK)
    assert report.platform == PlatformInfo.SMT_EN
    assert report.report_id_ma == b"\xff" * 32
    assert report.chip_id == blob[0x1A0:0x1E0] and any(report.chip_id[8:])
    assert report.generation is Generation.MILAN
    assert report.measurement == blob[0x90:0xC0]
    assert report.signature_r == int.from_bytes(blob[0x2A0:0x2E8], "little")


@pytest.mark.parametrize("name", NAMES)
def test_real_report_verifies_with_its_real_vcek(name: str) -> None:
    report = verify_report(REPORTS[name], vcek(name).tbs.public_key())
    assert report.chip_id == vcek(name).amd.hw_id


def test_real_report_does_not_verify_with_another_chips_vcek() -> None:
    with pytest.raises(InvalidSignature):
        verify_report(REPORTS["milan-v2-a"], vcek("milan-v2-b").tbs.public_key())


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), bit=st.integers(0, SIGNED_SIZE * 8 - 1))
def test_flipping_any_signed_bit_fails_verification(name: str, bit: int) -> None:
    blob = bytearray(REPORTS[name])
    blob[bit // 8] ^= 1 << bit % 8
    key = vcek(name).tbs.public_key()
    with pytest.raises((InvalidSignature, ReportFormatError)):
        verify_report(bytes(blob), key)
    # The signature itself refuses the bytes, whether or not the strict parse does.
    original = AttestationReport.from_bytes(REPORTS[name])
    with pytest.raises(InvalidSignature):
        key.verify(original.signature_der(), bytes(blob[:SIGNED_SIZE]),
                   ec.ECDSA(hashes.SHA384()))


@settings(max_examples=100, deadline=None)
@given(bit=st.integers(SIGNED_SIZE * 8, 0x330 * 8 - 1))
def test_flipping_a_signature_bit_fails_verification(bit: int) -> None:
    blob = bytearray(REPORTS["milan-v2-b"])
    blob[bit // 8] ^= 1 << bit % 8
    with pytest.raises((InvalidSignature, ReportFormatError)):
        verify_report(bytes(blob), vcek("milan-v2-b").tbs.public_key())


# -- strictness --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", RESERVED)
def test_nonzero_reserved_bytes_are_refused_by_name(field: str) -> None:
    offset, size = OFFSETS[field]
    blob = bytearray(REPORTS["milan-v2-a"])
    blob[offset + size - 1] = 1
    with pytest.raises(ReportFormatError) as err:
        AttestationReport.from_bytes(bytes(blob))
    assert err.value.field == field


@pytest.mark.parametrize(("field", "version"), [
    ("cpuid_fam_id", 2), ("cpuid_step", 2), ("launch_mit_vector", 2),
    ("current_mit_vector", 3), ("launch_mit_vector", 4)])
def test_fields_a_version_does_not_define_must_be_zero(field: str, version: int) -> None:
    blob = bytearray(REPORTS["milan-v2-a"])
    struct.pack_into("<I", blob, 0, version)
    blob[OFFSETS[field][0]] = 1
    with pytest.raises(ReportFormatError) as err:
        AttestationReport.from_bytes(bytes(blob))
    assert err.value.field == field


@pytest.mark.parametrize(("offset", "value", "field"), [
    (0x000, 1, "version"), (0x000, 6, "version"),
    (0x008, 0x10000, "policy"),  # bit 17 clear
    (0x008, 0x30000 | 1 << 26, "policy"), (0x040, 1 << 6, "platform_info"),
    (0x040, 1 << 8, "platform_info"), (0x048, 1 << 5, "signer_info"),
    (0x048, 2 << 2, "signer_info"), (0x048, 6 << 2, "signer_info")])
def test_reserved_bits_in_fields_are_refused(offset: int, value: int, field: str) -> None:
    blob = bytearray(REPORTS["milan-v2-a"])
    fmt = "<Q" if offset in (0x008, 0x040) else "<I"
    struct.pack_into(fmt, blob, offset, value)
    with pytest.raises(ReportFormatError) as err:
        AttestationReport.from_bytes(bytes(blob))
    assert err.value.field == field


@pytest.mark.parametrize("field", ["signature_r", "signature_s"])
def test_signature_components_use_only_48_bytes(field: str) -> None:
    blob = bytearray(REPORTS["milan-v2-a"])
    blob[OFFSETS[field][0] + 48] = 1
    with pytest.raises(ReportFormatError) as err:
        AttestationReport.from_bytes(bytes(blob))
    assert err.value.field == field


@settings(max_examples=200)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_garbage_raises_only_report_format_error(blob: bytes) -> None:
    with pytest.raises(ReportFormatError):
        AttestationReport.from_bytes(blob)


@settings(max_examples=200)
@given(cut=st.integers(0, REPORT_SIZE - 1), extra=st.binary(min_size=1, max_size=64))
def test_truncated_or_oversized_reports_are_refused(cut: int, extra: bytes) -> None:
    blob = REPORTS["milan-v2-b"]
    for bad in (blob[:cut], blob + extra):
        with pytest.raises(ReportFormatError):
            AttestationReport.from_bytes(bad)


def test_building_refuses_values_that_do_not_fit() -> None:
    for bad in (AttestationReport(vmpl=1 << 32), AttestationReport(report_data=bytes(63)),
                AttestationReport(signature_r=1 << 384), AttestationReport(version=2,
                                                                           cpuid_fam_id=0x19)):
        with pytest.raises(ReportFormatError):
            bad.to_bytes()


# -- round trips of built reports ---------------------------------------------------------------


def blobs(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


@st.composite
def reports(draw: st.DrawFn) -> AttestationReport:
    version = draw(st.sampled_from((2, 3, 4, 5)))
    u8, u32, u64 = st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
    flags = draw(st.integers(0, 0x3FF)) << 16 & ~(1 << 17)
    cpuid = (0, 0, 0) if version == 2 else (draw(u8), draw(u8), draw(u8))
    mit = (draw(u64), draw(u64)) if version == 5 else (0, 0)
    return AttestationReport(
        version=version, guest_svn=draw(u32), policy=flags | 1 << 17 | draw(st.integers(
            0, 0xFFFF)), family_id=draw(blobs(16)), image_id=draw(blobs(16)), vmpl=draw(u32),
        signature_algo=draw(u32), current_tcb=draw(u64),
        platform_info=draw(st.integers(0, 0xFF)) & ~(1 << 6),
        signer_info=SignerInfo(draw(st.booleans()), draw(st.booleans()),
                               draw(st.sampled_from(SigningKey))),
        report_data=draw(blobs(64)), measurement=draw(blobs(48)), host_data=draw(blobs(32)),
        id_key_digest=draw(blobs(48)), author_key_digest=draw(blobs(48)),
        report_id=draw(blobs(32)), report_id_ma=draw(blobs(32)), reported_tcb=draw(u64),
        cpuid_fam_id=cpuid[0], cpuid_mod_id=cpuid[1], cpuid_step=cpuid[2],
        chip_id=draw(blobs(64)), committed_tcb=draw(u64), current_build=draw(u8),
        current_minor=draw(u8), current_major=draw(u8), committed_build=draw(u8),
        committed_minor=draw(u8), committed_major=draw(u8), launch_tcb=draw(u64),
        launch_mit_vector=mit[0], current_mit_vector=mit[1],
        signature_r=draw(st.integers(0, 2**384 - 1)), signature_s=draw(st.integers(0, 2**384 - 1)))


@settings(max_examples=200)
@given(reports())
def test_built_reports_round_trip(report: AttestationReport) -> None:
    blob = report.to_bytes()
    assert len(blob) == REPORT_SIZE
    assert AttestationReport.from_bytes(blob) == report
    assert AttestationReport.from_bytes(blob).to_bytes() == blob


def test_signed_v3_report_verifies_and_names_its_generation() -> None:
    report = AttestationReport(version=3, cpuid_fam_id=0x19, cpuid_mod_id=0x11,
                               report_data=b"\x42" * 64).sign(KEY)
    assert verify_report(report.to_bytes(), KEY.public_key()) == report
    assert report.generation is Generation.GENOA
    assert AttestationReport.from_bytes(report.to_bytes()).signature_der() == \
        report.signature_der()


def test_v5_report_decodes_turin_tcb() -> None:
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=0xD9, fmc=4)
    report = AttestationReport(version=5, cpuid_fam_id=0x1A, cpuid_mod_id=0x02,
                               reported_tcb=tcb.to_int(), launch_mit_vector=3)
    assert report.generation is Generation.TURIN
    assert report.tcb("reported_tcb") == tcb
    with pytest.raises(ReportFormatError):
        report.tcb("chip_id")


def test_a_report_with_another_algorithm_does_not_verify() -> None:
    blob = bytearray(AttestationReport().sign(KEY).to_bytes())
    struct.pack_into("<I", blob, 0x34, 2)
    with pytest.raises(InvalidSignature):
        verify_report(bytes(blob), KEY.public_key())


def test_with_signature_der_refuses_garbage() -> None:
    with pytest.raises(ReportFormatError):
        AttestationReport().with_signature_der(b"\x30\x00junk")


# -- MSG_REPORT_RSP ------------------------------------------------------------------------------


def test_report_response_layout_and_linux_buffer() -> None:
    rsp = ReportResponse(0, REPORTS["milan-v2-a"])
    blob = rsp.to_bytes()
    assert struct.unpack_from("<II", blob) == (0, REPORT_SIZE)
    assert blob[0x20:] == REPORTS["milan-v2-a"] and not any(blob[8:0x20])
    assert ReportResponse.from_bytes(blob.ljust(4000, b"\0")) == rsp
    failed = ReportResponse(STATUS_INVALID_PARAM)
    assert ReportResponse.from_bytes(failed.to_bytes()) == failed


@pytest.mark.parametrize("mutate", [
    lambda b: b[:0x1F], lambda b: b[:-1], lambda b: b + b"\1",
    lambda b: b[:4] + struct.pack("<I", 0x4A1) + b[8:],
    lambda b: b[:8] + b"\1" + b[9:]])
def test_bad_report_responses_are_refused(mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ReportFormatError):
        ReportResponse.from_bytes(mutate(ReportResponse(0, REPORTS["milan-v2-a"]).to_bytes()))


def test_report_response_refuses_a_wrong_size_report() -> None:
    with pytest.raises(ReportFormatError):
        ReportResponse(0, bytes(10)).to_bytes()


# -- certificate table -------------------------------------------------------------------------


def test_cert_table_layout_uses_rfc_order_guids() -> None:
    entries = [(GUID_VCEK, b"vcek"), (GUID_ASK, b"ask!!"), (GUID_ARK, b"ark")]
    blob = build_cert_table(entries)
    assert blob[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert struct.unpack_from("<II", blob, 16) == (4 * 24, 4)
    assert blob[3 * 24:4 * 24] == bytes(24)
    assert blob[4 * 24:] == b"vcekask!!ark"
    assert parse_cert_table(blob) == entries
    assert parse_cert_table(blob + bytes(100)) == entries  # the data pages are larger


@settings(max_examples=100)
@given(st.lists(st.tuples(st.uuids().filter(lambda u: u.int != 0), st.binary(max_size=64)),
                max_size=6, unique_by=lambda e: e[0]))
def test_cert_table_round_trips(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    assert parse_cert_table(build_cert_table(entries)) == entries


@pytest.mark.parametrize("blob", [
    b"", bytes(23),
    GUID_VLEK.bytes + struct.pack("<II", 0, 4) + bytes(24) + b"abcd",  # points into header
    GUID_VLEK.bytes + struct.pack("<II", 48, 5) + bytes(24) + b"abcd",  # past the end
    GUID_VLEK.bytes + struct.pack("<II", 48, 1),  # no terminator
    (GUID_VLEK.bytes + struct.pack("<II", 72, 0)) * 2 + bytes(24)])  # GUID twice
def test_bad_cert_tables_are_refused(blob: bytes) -> None:
    with pytest.raises(ReportFormatError):
        parse_cert_table(blob)


def test_building_a_bad_cert_table_is_refused() -> None:
    with pytest.raises(ReportFormatError):
        build_cert_table([(GUID_ASK, b""), (GUID_ASK, b"")])
    with pytest.raises(ReportFormatError):
        build_cert_table([(uuid.UUID(int=0), b"")])


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_cert_table_garbage_raises_only_report_format_error(blob: bytes) -> None:
    try:
        entries = parse_cert_table(blob)
    except ReportFormatError:
        return
    assert all(data in blob for _, data in entries)
