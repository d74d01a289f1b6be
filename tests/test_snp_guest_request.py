"""SNP_GUEST_REQUEST at the firmware: sealed messages, sequence numbers, reports, derived keys.

The guest contexts here are made directly (the launch itself is tested in test_snp_launch.py);
what is under test is the message protocol and what the firmware answers."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidSignature

from sevsim.abi.snp_guest_msg import (
    GuestFieldSelect,
    KeyRequest,
    KeyResponse,
    MsgType,
    ReportRequest,
    RootKey,
    open_message,
    seal_message,
)
from sevsim.abi.snp_report import ReportResponse, verify_report
from sevsim.abi.status import SevStatus
from sevsim.errors import FirmwareError
from sevsim.firmware.snp import SnpGuestContext
from sevsim.firmware.snp_guest import SnpGuestRequests
from sevsim.testing import GCTX, launched_snp_guest, secure_processor


def firmware(chip: str = "milan", measurement: bytes | None = None,
             seed: bytes = b"chip") -> tuple[SnpGuestRequests, SnpGuestContext]:
    """A reproducible Secure Processor with one guest context as SNP_LAUNCH_FINISH leaves it."""
    fw = secure_processor(chip, seed=seed)
    fw.snp_init()
    return fw, launched_snp_guest(fw, GCTX, measurement=measurement)


def ask(fw: SnpGuestRequests, ctx: SnpGuestContext, msg_type: MsgType, payload: bytes,
        seqno: int, vmpck: int = 0) -> bytes:
    response = fw.snp_guest_request(GCTX, seal_message(ctx.vmpcks[vmpck], msg_type, seqno,
                                                       payload, vmpck=vmpck))
    header, plain = open_message(ctx.vmpcks[vmpck], response)
    assert header.seqno == seqno + 1 and header.msg_type is msg_type.response
    return plain


@pytest.mark.parametrize(("chip", "version"), [("milan", 3), ("genoa", 3), ("turin", 5)])
def test_report_carries_the_launch_and_verifies_with_the_vcek(chip: str, version: int) -> None:
    fw, ctx = firmware(chip)
    nonce = os.urandom(64)
    plain = ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest(nonce, vmpl=0).to_bytes(), 1)
    response = ReportResponse.from_bytes(plain)
    assert response.status == 0
    report = verify_report(response.report, fw.vcek_public_key(fw.tcb))
    assert report.version == version and report.report_data == nonce
    assert report.measurement == ctx.launch_digest and report.chip_id == fw.chip_id()
    assert report.reported_tcb == fw.tcb.to_int() and report.vmpl == 0
    assert report.policy == ctx.policy.to_int()
    with pytest.raises(InvalidSignature):
        verify_report(response.report, firmware(chip, seed=b"other")[0].vcek_public_key(fw.tcb))


def test_sequence_numbers_stop_replays_and_skips() -> None:
    fw, ctx = firmware()
    request = seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 1, ReportRequest().to_bytes())
    fw.snp_guest_request(GCTX, request)
    for replay in (request,  # the same message again
                   seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 2,
                                ReportRequest().to_bytes()),  # the response's number
                   seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 5,
                                ReportRequest().to_bytes())):  # a skip
        with pytest.raises(FirmwareError) as refused:
            fw.snp_guest_request(GCTX, replay)
        assert refused.value.status is SevStatus.INVALID_PARAM
    ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest().to_bytes(), 3)  # the next one works


def test_tampered_or_foreign_messages_are_refused_and_change_nothing() -> None:
    fw, ctx = firmware()
    request = bytearray(seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 1,
                                     ReportRequest().to_bytes()))
    for position in (0, 0x20, 0x34, 0x60, len(request) - 1):  # tag, seqno, type, payload
        bad = bytearray(request)
        bad[position] ^= 1
        with pytest.raises(FirmwareError) as refused:
            fw.snp_guest_request(GCTX, bytes(bad))
        assert refused.value.status is SevStatus.INVALID_PARAM
    wrong_key = seal_message(os.urandom(32), MsgType.REPORT_REQ, 1, ReportRequest().to_bytes())
    with pytest.raises(FirmwareError):
        fw.snp_guest_request(GCTX, wrong_key)
    ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest().to_bytes(), 1)  # number 1 still unused
    with pytest.raises(FirmwareError) as unknown:
        fw.snp_guest_request(0x9000, bytes(request))
    assert unknown.value.status is SevStatus.INVALID_GUEST


def test_the_vmpck_sets_the_lowest_vmpl_a_request_may_name() -> None:
    """The firmware knows a sender only by its key: VMPCK2 speaks for VMPL2."""
    fw, ctx = firmware()
    plain = ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest(vmpl=1).to_bytes(), 1, vmpck=2)
    assert ReportResponse.from_bytes(plain).status == SevStatus.INVALID_PARAM
    plain = ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest(vmpl=3).to_bytes(), 3, vmpck=2)
    report = verify_report(ReportResponse.from_bytes(plain).report, fw.vcek_public_key(fw.tcb))
    assert report.vmpl == 3
    key = ask(fw, ctx, MsgType.KEY_REQ, KeyRequest(vmpl=1).to_bytes(), 5, vmpck=2)
    assert KeyResponse.from_bytes(key).status == SevStatus.INVALID_PARAM
    own = KeyResponse.from_bytes(ask(fw, ctx, MsgType.KEY_REQ, KeyRequest(vmpl=2).to_bytes(),
                                     7, vmpck=2))
    vmpl0 = KeyResponse.from_bytes(ask(fw, ctx, MsgType.KEY_REQ, KeyRequest(vmpl=0).to_bytes(),
                                       1, vmpck=0))
    assert own.status == vmpl0.status == 0 and own.derived_key != vmpl0.derived_key
    beyond = bytearray(seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 3,
                                    ReportRequest().to_bytes()))
    beyond[0x3C] = 4  # MSG_VMPCK: a key no guest has
    with pytest.raises(FirmwareError) as refused:
        fw.snp_guest_request(GCTX, bytes(beyond))
    assert refused.value.status is SevStatus.INVALID_PARAM


def test_derived_keys_match_across_identical_launches_and_differ_otherwise() -> None:
    measurement = os.urandom(48)
    request = KeyRequest(RootKey.VCEK, GuestFieldSelect.MEASUREMENT | GuestFieldSelect
                         .GUEST_POLICY).to_bytes()

    def key(fw: SnpGuestRequests, ctx: SnpGuestContext, req: bytes = request) -> bytes:
        response = KeyResponse.from_bytes(ask(fw, ctx, MsgType.KEY_REQ, req, 1))
        assert response.status == 0
        return response.derived_key

    same = key(*firmware(measurement=measurement))
    assert same == key(*firmware(measurement=measurement))  # same chip, same launch
    assert same != key(*firmware())  # another measurement
    assert same != key(*firmware(measurement=measurement, seed=b"other chip"))
    no_fields = KeyRequest(RootKey.VCEK).to_bytes()
    assert key(*firmware(measurement=measurement), no_fields) == key(*firmware(), no_fields)
    vmrk = KeyRequest(RootKey.VMRK).to_bytes()
    assert key(*firmware(), vmrk) != key(*firmware(), vmrk)  # per-VM root: per launch
    fw, ctx = firmware()
    future = KeyRequest(RootKey.VCEK, tcb_version=0xFF00_0000_0000_0003).to_bytes()
    refused = KeyResponse.from_bytes(ask(fw, ctx, MsgType.KEY_REQ, future, 1))
    assert refused.status == 0x16


def test_tcb_update_changes_the_vcek_and_a_rollback_shows_in_the_report() -> None:
    from sevsim.abi.snp_tcb import TcbVersion

    fw, ctx = firmware()
    old = fw.current_tcb
    newer = TcbVersion(old.bootloader, old.tee, old.snp + 1, old.microcode)
    fw.install_firmware(newer)
    fw.snp_commit()

    def report(seqno: int):
        plain = ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest().to_bytes(), seqno)
        return ReportResponse.from_bytes(plain).report

    updated = verify_report(report(1), fw.vcek_public_key(newer))
    assert updated.reported_tcb == updated.current_tcb == updated.committed_tcb \
        == newer.to_int()
    with pytest.raises(InvalidSignature):  # the old VCEK no longer signs
        verify_report(report(3), fw.vcek_public_key(old))
    fw.snp_config(old)  # the host reports the old TCB: visible, not hidden
    rolled = verify_report(report(5), fw.vcek_public_key(old))
    assert rolled.reported_tcb == old.to_int() < rolled.current_tcb == newer.to_int()
    for refused in (lambda: fw.install_firmware(old),  # below the committed TCB
                    lambda: fw.snp_config(TcbVersion(9, 9, 99, 255))):  # above current
        with pytest.raises(FirmwareError):
            refused()
    assert fw.current_tcb == newer


def test_a_loaded_vlek_signs_reports_and_names_no_chip() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from sevsim.abi.snp_cert import SnpCertificate
    from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VLEK, parse_cert_table
    from sevsim.abi.snp_tcb import SigningKey
    from sevsim.firmware.snp_pki import snp_vlek_ca_chain

    fw, ctx = firmware()
    registry_copy, _ = firmware()  # KDS's view of the same chip (same seed)
    hashstick = registry_copy.seal_hashstick("cc-us-east-2.example", fw.tcb)
    other_chip, _ = firmware(seed=b"another chip")
    with pytest.raises(FirmwareError) as refused:
        other_chip.snp_vlek_load(hashstick)  # bound to the chip it was wrapped for
    assert refused.value.status is SevStatus.BAD_SIGNATURE and not other_chip.vlek_loaded
    with pytest.raises(FirmwareError):
        fw.snp_vlek_load(hashstick[:-1] + bytes([hashstick[-1] ^ 1]))
    fw.snp_vlek_load(hashstick)
    entries = dict(parse_cert_table(fw.certificate_table(fw.tcb)))
    assert set(entries) == {GUID_VLEK, GUID_ASK, GUID_ARK}
    vlek = SnpCertificate.from_der(entries[GUID_VLEK])
    assert vlek.is_vlek and vlek.amd.csp_id == "CN=cc-us-east-2.example"
    asvk = snp_vlek_ca_chain("Milan")[0].public_key()
    assert isinstance(asvk, rsa.RSAPublicKey)
    vlek.verify(asvk)
    plain = ask(fw, ctx, MsgType.REPORT_REQ, ReportRequest().to_bytes(), 1)
    report = verify_report(ReportResponse.from_bytes(plain).report, vlek.tbs.public_key())
    assert report.signer_info.signing_key is SigningKey.VLEK and report.chip_id == bytes(64)
    with pytest.raises(InvalidSignature):
        verify_report(ReportResponse.from_bytes(plain).report, fw.vcek_public_key(fw.tcb))
