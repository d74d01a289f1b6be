"""TCB_VERSION, SNP policy, PLATFORM_INFO (spec-formats.md §2-4), the launch structures and
digest rule (§6) and guest messages with the secrets page (§7): round trips, AMD's bit
positions, the crypto both ends compute, and typed errors for bad input."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.snp_guest_msg import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    GuestFieldSelect,
    KeyRequest,
    KeyResponse,
    MessageHeader,
    MsgType,
    ReportRequest,
    RootKey,
    SecretsPage,
    message_iv,
    open_message,
    seal_message,
)
from sevsim.abi.snp_idblock import (
    ID_AUTH_SIZE,
    PUBKEY_SIZE,
    IdAuthInfo,
    IdBlock,
    SnpPublicKey,
    SnpSignature,
    verify_id_block,
)
from sevsim.abi.snp_launch import INITIAL_DIGEST, VMSA_GPA, PageInfo, PageType, update_digest
from sevsim.abi.snp_tcb import Generation, PlatformInfo, PolicyFlags, SnpPolicy, TcbVersion
from sevsim.errors import GuestMessageError, LaunchFormatError, TcbFormatError

ID_KEY = ec.derive_private_key(0x1D, ec.SECP384R1())
AUTHOR_KEY = ec.derive_private_key(0xA7, ec.SECP384R1())
VMPCK = bytes(range(32))
u8 = st.integers(0, 0xFF)


# -- TCB, policy, platform info ------------------------------------------------------------------


def test_milan_tcb_layout_matches_a_real_report() -> None:
    """REPORTED_TCB bytes 03 00 00 00 00 00 08 73 of virtee's Milan report (§2)."""
    value = int.from_bytes(bytes.fromhex("0300000000000873"), "little")
    tcb = TcbVersion.from_int(value, Generation.MILAN)
    assert tcb == TcbVersion(bootloader=3, tee=0, snp=8, microcode=0x73)
    assert tcb.to_int() == value


def test_turin_tcb_layout() -> None:
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert tcb.to_bytes() == bytes((5, 1, 2, 3, 0, 0, 0, 4))
    assert TcbVersion.from_int(tcb.to_int(), Generation.TURIN) == tcb


@given(bl=u8, tee=u8, snp=u8, uc=u8, fmc=st.none() | u8)
def test_tcb_round_trips(bl: int, tee: int, snp: int, uc: int, fmc: int | None) -> None:
    tcb = TcbVersion(bl, tee, snp, uc, fmc)
    gen = Generation.MILAN if fmc is None else Generation.TURIN
    assert TcbVersion.from_int(tcb.to_int(), gen) == tcb


@pytest.mark.parametrize(("value", "gen"), [
    (1 << 16, Generation.MILAN), (1 << 40, Generation.MILAN), (1 << 32, Generation.TURIN),
    (1 << 64, Generation.MILAN), (-1, Generation.TURIN)])
def test_reserved_tcb_bytes_are_refused(value: int, gen: Generation) -> None:
    with pytest.raises(TcbFormatError):
        TcbVersion.from_int(value, gen)


def test_tcb_values_must_fit_a_byte() -> None:
    with pytest.raises(TcbFormatError):
        TcbVersion(256, 0, 0, 0)


@pytest.mark.parametrize(("family", "model", "gen"), [
    (0x19, 0x01, Generation.MILAN), (0x19, 0x11, Generation.GENOA),
    (0x19, 0xA0, Generation.GENOA), (0x1A, 0x02, Generation.TURIN)])
def test_generation_from_cpuid(family: int, model: int, gen: Generation) -> None:
    assert Generation.from_cpuid(family, model) is gen


def test_unknown_cpuid_is_refused_and_chip_id_guess() -> None:
    with pytest.raises(TcbFormatError):
        Generation.from_cpuid(0x17, 0x31)
    assert Generation.guess_from_chip_id(b"\1" * 8 + bytes(56)) is Generation.TURIN
    assert Generation.guess_from_chip_id(b"\1" * 64) is Generation.MILAN
    assert (Generation.TURIN.hwid_size, Generation.GENOA.hwid_size) == (8, 64)


def test_policy_bits_sit_where_amd_puts_them() -> None:
    assert SnpPolicy().to_int() == 0x30000
    policy = SnpPolicy(PolicyFlags.SMT | PolicyFlags.DEBUG, abi_major=1, abi_minor=0x1F)
    assert policy.to_int() == 0xB011F
    assert SnpPolicy.from_int(0x3001F) == SnpPolicy(PolicyFlags.SMT, 0, 0x1F)
    assert SnpPolicy(PolicyFlags.PAGE_SWAP_DISABLE).to_int() == 1 << 25 | 1 << 17


@given(flags=st.integers(0, 0x3FF), major=u8, minor=u8)
def test_policy_round_trips(flags: int, major: int, minor: int) -> None:
    value = (flags << 16 | 1 << 17) | major << 8 | minor
    assert SnpPolicy.from_int(value).to_int() == value


@pytest.mark.parametrize("value", [0x10000, 0, 0x30000 | 1 << 26, 0x30000 | 1 << 63, 1 << 64])
def test_bad_policies_are_refused(value: int) -> None:
    with pytest.raises(TcbFormatError):
        SnpPolicy.from_int(value)


def test_platform_info() -> None:
    assert PlatformInfo.from_int(0x27) == (PlatformInfo.SMT_EN | PlatformInfo.TSME_EN
                                           | PlatformInfo.ECC_EN
                                           | PlatformInfo.ALIAS_CHECK_COMPLETE)
    assert PlatformInfo.from_int(0x80) == PlatformInfo.TIO_EN
    for bad in (0x40, 0x100, 1 << 64):
        with pytest.raises(TcbFormatError):
            PlatformInfo.from_int(bad)


# -- PAGE_INFO and the launch digest ---------------------------------------------------------


def test_page_info_layout() -> None:
    info = PageInfo(b"\1" * 48, b"\2" * 48, PageType.VMSA, VMSA_GPA, True, 3, 2, 1)
    blob = info.to_bytes()
    assert len(blob) == 0x70
    assert blob[:48] == b"\1" * 48 and blob[48:96] == b"\2" * 48
    assert blob[0x60:0x68] == bytes((0x70, 0, 2, 1, 3, 2, 1, 0))
    assert struct.unpack_from("<Q", blob, 0x68)[0] == 0xFFFFFFFFF000
    assert PageInfo.from_bytes(blob) == info


def test_digest_rule_chains_sha384_of_page_info() -> None:
    page = bytes(range(256)) * 16
    ld = update_digest(INITIAL_DIGEST, PageType.NORMAL, 0xFFC00000, page)
    expected = hashlib.sha384(INITIAL_DIGEST + hashlib.sha384(page).digest()
                              + bytes((0x70, 0, 1, 0, 0, 0, 0, 0))
                              + struct.pack("<Q", 0xFFC00000)).digest()
    assert ld == expected
    ld2 = update_digest(ld, PageType.SECRETS, 0x1000, page)  # contents ignored
    assert ld2 == hashlib.sha384(ld + bytes(48) + bytes((0x70, 0, 5, 0, 0, 0, 0, 0))
                                 + struct.pack("<Q", 0x1000)).digest()
    assert update_digest(ld, PageType.ZERO, 0x1000) != update_digest(ld, PageType.ZERO, 0x2000)


@settings(max_examples=100)
@given(cur=st.binary(min_size=48, max_size=48), contents=st.binary(min_size=48, max_size=48),
       ptype=st.sampled_from(PageType), gpa=st.integers(0, (1 << 40) - 1), imi=st.booleans(),
       perms=st.tuples(u8, u8, u8))
def test_page_info_round_trips(cur: bytes, contents: bytes, ptype: PageType, gpa: int,
                               imi: bool, perms: tuple[int, int, int]) -> None:
    info = PageInfo(cur, contents, ptype, gpa << 12, imi, *perms)
    assert PageInfo.from_bytes(info.to_bytes()) == info


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1], lambda b: b[:0x60] + b"\x71" + b[0x61:],
    lambda b: b[:0x62] + b"\x07" + b[0x63:], lambda b: b[:0x63] + b"\x02" + b[0x64:],
    lambda b: b[:0x67] + b"\x01" + b[0x68:], lambda b: b[:0x68] + b"\x01" + b[0x69:]])
def test_bad_page_info_is_refused(mutate: Callable[[bytes], bytes]) -> None:
    blob = PageInfo(bytes(48), bytes(48), PageType.NORMAL, 0x1000).to_bytes()
    with pytest.raises(LaunchFormatError):
        PageInfo.from_bytes(mutate(blob))


def test_measured_pages_need_their_contents() -> None:
    with pytest.raises(LaunchFormatError):
        update_digest(INITIAL_DIGEST, PageType.NORMAL, 0)
    with pytest.raises(LaunchFormatError):
        update_digest(INITIAL_DIGEST, PageType.VMSA, VMSA_GPA, bytes(10))


# -- ID block, ID auth, keys and signatures ------------------------------------------------------


def test_public_key_format_and_digest() -> None:
    key = SnpPublicKey.from_key(ID_KEY.public_key())
    blob = key.to_bytes()
    numbers = ID_KEY.public_key().public_numbers()
    assert len(blob) == PUBKEY_SIZE and struct.unpack_from("<I", blob)[0] == 2
    assert int.from_bytes(blob[4:0x4C], "little") == numbers.x
    assert int.from_bytes(blob[0x4C:0x94], "little") == numbers.y
    assert not any(blob[0x94:])
    assert key.digest() == hashlib.sha384(blob).digest()
    assert SnpPublicKey.from_bytes(blob) == key
    assert key.to_key().public_numbers() == numbers


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1], lambda b: b"\1" + b[1:], lambda b: b[:0x100] + b"\1" + b[0x101:],
    lambda b: b[:0x40] + b"\1" + b[0x41:]])
def test_bad_public_keys_are_refused(mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(LaunchFormatError):
        SnpPublicKey.from_bytes(mutate(SnpPublicKey.from_key(ID_KEY.public_key()).to_bytes()))


def test_off_curve_and_foreign_keys_are_refused() -> None:
    with pytest.raises(LaunchFormatError):
        SnpPublicKey(1, 1).to_key()
    with pytest.raises(LaunchFormatError):
        SnpPublicKey.from_key(ec.generate_private_key(ec.SECP256R1()).public_key())


@given(r=st.integers(0, 2**384 - 1), s=st.integers(0, 2**384 - 1))
def test_signature_round_trips(r: int, s: int) -> None:
    blob = SnpSignature(r, s).to_bytes()
    assert len(blob) == 0x200 and not any(blob[144:])
    assert SnpSignature.from_bytes(blob) == SnpSignature(r, s)


def test_id_block_layout() -> None:
    block = IdBlock(b"\xaa" * 48, b"\1" * 16, b"\2" * 16, guest_svn=7, policy=0xB0000)
    blob = block.to_bytes()
    assert len(blob) == 0x60
    assert struct.unpack_from("<IIQ", blob, 0x50) == (1, 7, 0xB0000)
    assert IdBlock.from_bytes(blob) == block
    with pytest.raises(LaunchFormatError):
        IdBlock.from_bytes(blob[:0x50] + b"\2" + blob[0x51:])


@pytest.mark.parametrize("author", [False, True])
def test_id_auth_signs_and_verifies(author: bool) -> None:
    block = IdBlock(b"\x11" * 48, guest_svn=2)
    auth = IdAuthInfo.create(block, ID_KEY, AUTHOR_KEY if author else None)
    blob = auth.to_bytes()
    assert len(blob) == ID_AUTH_SIZE
    assert struct.unpack_from("<II", blob) == (1, 1)
    assert blob[0x240:0x644] == SnpPublicKey.from_key(ID_KEY.public_key()).to_bytes()
    parsed = IdAuthInfo.from_bytes(blob)
    assert parsed == auth
    digests = verify_id_block(block, parsed, author)
    assert digests.id_key_digest == hashlib.sha384(blob[0x240:0x644]).digest()
    assert digests.author_key_digest == (hashlib.sha384(blob[0x880:0xC84]).digest()
                                         if author else bytes(48))


def test_id_block_tampering_fails_the_signature() -> None:
    block = IdBlock(b"\x11" * 48)
    auth = IdAuthInfo.create(block, ID_KEY, AUTHOR_KEY)
    with pytest.raises(InvalidSignature):
        verify_id_block(IdBlock(b"\x12" + b"\x11" * 47), auth, False)
    forged = IdAuthInfo(auth.id_block_sig, auth.id_key, auth.id_key_sig,
                        SnpPublicKey.from_key(ID_KEY.public_key()))
    with pytest.raises(InvalidSignature):
        verify_id_block(block, forged, True)
    with pytest.raises(InvalidSignature):
        verify_id_block(block, IdAuthInfo.create(block, ID_KEY), True)  # no author key


def test_bad_id_auth_is_refused() -> None:
    blob = IdAuthInfo.create(IdBlock(bytes(48)), ID_KEY).to_bytes()
    for bad in (blob[:-1], blob[:0x10] + b"\1" + blob[0x11:], blob[:0xD00] + b"\1" + blob[0xD01:]):
        with pytest.raises(LaunchFormatError):
            IdAuthInfo.from_bytes(bad)
    wrong_algo = IdAuthInfo.from_bytes(b"\2" + blob[1:])
    with pytest.raises(LaunchFormatError):
        verify_id_block(IdBlock(bytes(48)), wrong_algo, False)


# -- guest messages ---------------------------------------------------------------------------


def test_message_header_layout_and_crypto() -> None:
    payload = ReportRequest(b"\x55" * 64, vmpl=1).to_bytes()
    blob = seal_message(VMPCK, MsgType.REPORT_REQ, 5, payload, vmpck=2)
    assert len(blob) == HEADER_SIZE + len(payload)
    assert struct.unpack_from("<Q", blob, 0x20)[0] == 5
    assert blob[0x30:0x38] == bytes((1, 1, 0x60, 0, 5, 1)) + struct.pack("<H", 0x60)
    assert blob[0x3C] == 2 and not any(blob[0x10:0x20]) and not any(blob[0x3D:0x60])
    # Independent AES-256-GCM: IV = seqno LE padded to 12 bytes, AAD = header 0x30-0x5F.
    assert message_iv(5) == b"\5" + bytes(11)
    plain = AESGCM(VMPCK).decrypt(message_iv(5), blob[0x60:] + blob[:16], blob[0x30:0x60])
    assert plain == payload
    header, opened = open_message(VMPCK, blob + bytes(100))
    assert opened == payload
    assert (header.msg_type, header.seqno, header.vmpck, header.msg_size) == (
        MsgType.REPORT_REQ, 5, 2, 0x60)


@settings(max_examples=100)
@given(payload=st.binary(max_size=600), seqno=st.integers(1, 2**64 - 1),
       vmpck=st.integers(0, 3), kind=st.sampled_from([t for t in MsgType if t % 2]))
def test_messages_round_trip(payload: bytes, seqno: int, vmpck: int, kind: MsgType) -> None:
    header, plain = open_message(VMPCK, seal_message(VMPCK, kind, seqno, payload, vmpck))
    assert plain == payload
    assert (header.msg_type, header.seqno, header.vmpck) == (kind, seqno, vmpck)
    assert MessageHeader.from_bytes(header.to_bytes()) == header


@settings(max_examples=300)
@given(data=st.data())
def test_a_flipped_bit_anywhere_fails(data: st.DataObject) -> None:
    blob = bytearray(seal_message(VMPCK, MsgType.KEY_REQ, 9, KeyRequest().to_bytes()))
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << bit % 8
    with pytest.raises(GuestMessageError):
        open_message(VMPCK, bytes(blob))


def test_wrong_key_and_replayed_sequence_numbers_are_detectable() -> None:
    blob = seal_message(VMPCK, MsgType.REPORT_REQ, 3, bytes(0x60))
    with pytest.raises(GuestMessageError) as err:
        open_message(bytes(32), blob)
    assert err.value.field == "AUTHTAG"
    header, _ = open_message(VMPCK, blob)
    assert header.seqno == 3  # the receiver compares with what it expects; a replay repeats it
    forged = blob[:0x20] + struct.pack("<Q", 4) + blob[0x28:]  # the IV binds the seqno
    with pytest.raises(GuestMessageError):
        open_message(VMPCK, forged)
    assert MsgType.REPORT_REQ.response is MsgType.REPORT_RSP
    with pytest.raises(GuestMessageError):
        _ = MsgType.REPORT_RSP.response


@pytest.mark.parametrize(("args", "field"), [
    ((bytes(31), MsgType.KEY_REQ, 1, b""), "VMPCK"), ((VMPCK, MsgType.KEY_REQ, 0, b""),
                                                       "MSG_SEQNO"),
    ((VMPCK, MsgType.KEY_REQ, 1, bytes(MAX_PAYLOAD + 1)), "MSG_SZ"),
    ((VMPCK, MsgType.KEY_REQ, 1 << 64, b""), "MSG_SEQNO")])
def test_sealing_bad_arguments_is_refused(args: tuple[bytes, MsgType, int, bytes],
                                          field: str) -> None:
    with pytest.raises(GuestMessageError) as err:
        seal_message(*args)
    assert err.value.field == field


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_message_garbage_raises_only_guest_message_error(blob: bytes) -> None:
    with pytest.raises(GuestMessageError):
        open_message(VMPCK, blob)


def test_payloads_round_trip_and_are_strict() -> None:
    req = ReportRequest(bytes(range(64)), 3)
    assert ReportRequest.from_bytes(req.to_bytes()) == req
    key_req = KeyRequest(RootKey.VMRK, GuestFieldSelect.MEASUREMENT | GuestFieldSelect.GUEST_SVN,
                         1, 2, 3, 4)
    blob = key_req.to_bytes()
    assert len(blob) == 0x28 and struct.unpack_from("<IIQ", blob) == (1, 0, 0x18)
    assert KeyRequest.from_bytes(blob) == key_req
    rsp = KeyResponse(0, b"\x99" * 32)
    assert KeyResponse.from_bytes(rsp.to_bytes()) == rsp and rsp.to_bytes()[0x20:] == b"\x99" * 32
    for bad_req in (b"\0" * 0x5F, bytes(0x44) + b"\1" + bytes(0x1B),
                    bytes(0x40) + b"\4" + bytes(0x1F)):
        with pytest.raises(GuestMessageError):
            ReportRequest.from_bytes(bad_req)
    for bad_key in (b"\2" + blob[1:], blob[:4] + b"\1" + blob[5:], blob[:0xF] + b"\1" + blob[0x10:],
                    blob[:0x10] + b"\4" + blob[0x11:], blob[:-1]):
        with pytest.raises(GuestMessageError):
            KeyRequest.from_bytes(bad_key)
    with pytest.raises(GuestMessageError):
        KeyResponse.from_bytes(b"\0" * 4 + b"\1" + bytes(59))


# -- secrets page ------------------------------------------------------------------------------


def test_secrets_page_layout() -> None:
    keys = tuple(bytes([i]) * 32 for i in range(4))
    page = SecretsPage(keys, msg_seqno=(1, 2, 3, 4), fms=0xA00F11, tsc_factor=7,  # type: ignore[arg-type]
                       svsm_guest_vmpl=1)
    blob = page.to_bytes()
    assert len(blob) == 4096
    for i in range(4):
        assert blob[0x20 + 32 * i:0x40 + 32 * i] == keys[i]
        assert SecretsPage.vmpck_offset(i) == 0x20 + 32 * i
        assert struct.unpack_from("<I", blob, SecretsPage.seqno_offset(i))[0] == i + 1
    assert struct.unpack_from("<I", blob, 8)[0] == 0xA00F11
    assert blob[0x15C] == 1 and struct.unpack_from("<I", blob, 0x160)[0] == 7
    assert SecretsPage.from_bytes(blob) == page
    for offset in (0x00C, 0x0B8, 0x15D, 0x164, 0xFFF):
        with pytest.raises(GuestMessageError):
            SecretsPage.from_bytes(blob[:offset] + b"\1" + blob[offset + 1:])
    with pytest.raises(GuestMessageError):
        SecretsPage.from_bytes(blob[:-1])
    with pytest.raises(GuestMessageError):
        SecretsPage.seqno_offset(4)
    with pytest.raises(GuestMessageError):
        SecretsPage.vmpck_offset(4)


PARSERS: list[tuple[Any, int, type[Exception]]] = [
    (PageInfo, 0x70, LaunchFormatError), (IdBlock, 0x60, LaunchFormatError),
    (IdAuthInfo, ID_AUTH_SIZE, LaunchFormatError), (SnpPublicKey, PUBKEY_SIZE, LaunchFormatError),
    (SnpSignature, 0x200, LaunchFormatError), (SecretsPage, 4096, GuestMessageError),
    (ReportRequest, 0x60, GuestMessageError), (KeyRequest, 0x28, GuestMessageError),
    (KeyResponse, 0x40, GuestMessageError)]


@pytest.mark.parametrize(("kind", "size", "error"), PARSERS)
@settings(max_examples=100)
@given(data=st.data())
def test_parsers_raise_only_their_typed_error(kind: Any, size: int, error: type[Exception],
                                              data: st.DataObject) -> None:
    """Random bytes of any length, or of the exact size with zero padding: either a typed
    error, or a value that encodes back to the same bytes."""
    blob = data.draw(st.binary(max_size=size + 8) | st.binary(max_size=size).map(
        lambda b: b.ljust(size, b"\0")))
    try:
        value = kind.from_bytes(blob)
    except error:
        return
    assert value.to_bytes() == blob
