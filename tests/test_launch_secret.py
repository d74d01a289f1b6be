"""LAUNCH_START with a guest owner's session, LAUNCH_SECRET, and CVE-2019-9836, at the
firmware's command interface: the owner's keys arrive only through a session made for this
PDH, a secret only through a packet MAC'd for this launch, and every refusal carries AMD's
status code and changes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.bootinfo import (
    SECRET_GPA,
    SECRET_SIZE,
    BootInfo,
    Segment,
    boot_info_for,
    launch_image,
    pack_secret,
)
from sevsim.abi.curve_a3 import P, raw_ecdh_x
from sevsim.abi.sev_cert import SEV_CERT_SIZE, Algo, Curve, EcPublicKey, SevCert, Signature, Usage
from sevsim.abi.sev_session import PacketHeader, Session, TransportKeys, seal_packet
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.attest.sev_owner import (
    LaunchSession,
    VerifiedLaunch,
    make_session,
    verify_measurement,
)
from sevsim.errors import FirmwareError, MeasurementError
from sevsim.firmware.sev import SevFirmware
from sevsim.hw.chips import PRESETS, ChipPreset
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import platform_identity

MILAN = PRESETS["milan"]
ASID = 100
IMAGE_SPA = 2 * PAGE
SECRET_SPA = 5 * PAGE


def platform(chip: ChipPreset = MILAN, vulnerable: bool = False
             ) -> tuple[SevFirmware, MemoryController]:
    memory = MemoryController(16 * PAGE, EncryptionEngine(chip.tweak))
    fw = SevFirmware(chip, memory, vulnerable_cve_2019_9836=vulnerable)
    fw.init()
    return fw, memory


def observable(fw: SevFirmware, memory: MemoryController) -> tuple[object, ...]:
    """What a refused command must leave as it was."""
    guests = {}
    for handle in range(0, 6):
        try:
            guests[handle] = fw.guest_status(handle)
        except FirmwareError as err:
            guests[handle] = err.status
    return (fw.platform_status(), guests, memory.domain.tobytes(),
            hashlib.sha256(memory.dram_dump().tobytes()).digest(),
            hashlib.sha256(memory.cells.tobytes()).digest())


def refused(fw: SevFirmware, memory: MemoryController, status: SevStatus,
            command: Callable[[], object]) -> None:
    before = observable(fw, memory)
    with pytest.raises(FirmwareError) as info:
        command()
    assert info.value.status is status, str(info.value)
    assert observable(fw, memory) == before


def session_for(fw: SevFirmware, policy: int = 0) -> LaunchSession:
    pdh, _ = fw.pdh_cert_export()
    return make_session(pdh, policy)


def launch(fw: SevFirmware, memory: MemoryController, owner: LaunchSession
           ) -> tuple[int, VerifiedLaunch]:
    """LAUNCH_START with the owner's session, one measured page, LAUNCH_MEASURE, checked by
    the owner: a guest in LSECRET and the owner's verified view of it."""
    image = os.urandom(PAGE)
    memory.write(IMAGE_SPA, image)
    handle = fw.launch_start(owner.policy, owner.godh_cert.to_bytes(), owner.session.to_bytes())
    fw.activate(handle, ASID)
    fw.launch_update_data(handle, IMAGE_SPA, PAGE)
    measured = fw.launch_measure(handle)
    verified = verify_measurement(owner, measured.to_bytes(), fw.platform_status(),
                                  hashlib.sha256(image).digest())
    return handle, verified


# -- the owner's session ------------------------------------------------------------------------


def test_the_owners_secret_lands_in_private_memory_only() -> None:
    fw, memory = platform()
    owner = session_for(fw, 0x3)
    handle, verified = launch(fw, memory, owner)
    secret = b"owner's key material " + os.urandom(43)
    header, ciphertext = verified.seal_secret(secret)
    fw.launch_secret(handle, header.to_bytes(), SECRET_SPA, ciphertext)
    payload = pack_secret(secret)
    assert memory.cells[SECRET_SPA:SECRET_SPA + len(payload)].tobytes() == payload  # guest view
    assert memory.domain[SECRET_SPA // PAGE] == ASID
    dram = memory.dram_dump().tobytes()
    assert secret[:16] not in dram and payload[:16] not in dram and secret[-16:] not in dram
    assert fw.guest_status(handle).state is GuestState.LSECRET  # more secrets may follow
    fw.launch_finish(handle)
    assert fw.guest_status(handle).state is GuestState.RUNNING


def test_the_measurement_binds_image_policy_and_firmware() -> None:
    fw, memory = platform()
    owner = session_for(fw)
    image = os.urandom(PAGE)
    memory.write(IMAGE_SPA, image)
    handle = fw.launch_start(0, owner.godh_cert.to_bytes(), owner.session.to_bytes())
    fw.activate(handle, ASID)
    fw.launch_update_data(handle, IMAGE_SPA, PAGE)
    measured = fw.launch_measure(handle).to_bytes()
    status = fw.platform_status()
    digest = hashlib.sha256(image).digest()
    verify_measurement(owner, measured, status, digest)
    changed = bytearray(image)
    changed[100] ^= 1
    wrong = [
        (owner, measured, status, hashlib.sha256(bytes(changed)).digest()),
        (owner, measured, replace(status, build=status.build + 1), digest),
        (owner, measured, replace(status, api_minor=status.api_minor - 1), digest),
        (replace(owner, policy=1), measured, status, digest),
        (owner, measured[:32] + os.urandom(16), status, digest),  # another nonce
        (session_for(fw), measured, status, digest),  # another TIK
    ]
    for args in wrong:
        with pytest.raises(MeasurementError):
            verify_measurement(*args)
    with pytest.raises(MeasurementError, match="48 bytes"):
        verify_measurement(owner, measured[:47], status, digest)


def test_forged_sessions_are_refused_without_a_trace() -> None:
    fw, memory = platform()
    other, _ = platform()
    owner = session_for(fw, 0x1)
    godh, session = owner.godh_cert.to_bytes(), owner.session.to_bytes()
    foreign = session_for(other, 0x1)
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_cert = replace(owner.godh_cert, key=EcPublicKey.from_key(p256.public_key()))
    ecdsa_cert = replace(owner.godh_cert, algo=Algo.ECDSA_SHA256)
    forged = Session(owner.session.nonce, os.urandom(32), owner.session.wrap_iv,
                     owner.session.wrap_mac, owner.session.policy_mac)
    cases = [
        (SevStatus.BAD_MEASUREMENT, 0x1, godh, os.urandom(0x80)),
        (SevStatus.BAD_MEASUREMENT, 0x1, godh, forged.to_bytes()),
        (SevStatus.BAD_MEASUREMENT, 0x1, foreign.godh_cert.to_bytes(), foreign.session.to_bytes()),
        (SevStatus.BAD_MEASUREMENT, 0x1, godh, foreign.session.to_bytes()),
        (SevStatus.BAD_MEASUREMENT, 0x3, godh, session),  # the hypervisor changed the policy
        (SevStatus.INVALID_LENGTH, 0x1, godh, session[:-1]),
        (SevStatus.INVALID_LENGTH, 0x1, godh[:-1], session),
        (SevStatus.INVALID_CERTIFICATE, 0x1, os.urandom(SEV_CERT_SIZE), session),
        (SevStatus.INVALID_CERTIFICATE, 0x1, p256_cert.to_bytes(), session),
        (SevStatus.INVALID_CERTIFICATE, 0x1, ecdsa_cert.to_bytes(), session),
        (SevStatus.INVALID_PARAM, 0x1, godh, None),
        (SevStatus.INVALID_PARAM, 0x1, None, session),
    ]
    for status, policy, cert, blob in cases:
        refused(fw, memory, status, lambda p=policy, c=cert, b=blob: fw.launch_start(p, c, b))
    assert fw.platform_status().state is PlatformState.INIT
    fw.launch_start(0x1, godh, session)  # the genuine session still opens


def test_a_new_pdh_invalidates_old_sessions() -> None:
    fw, memory = platform()
    owner = session_for(fw)
    fw.pdh_gen()
    refused(fw, memory, SevStatus.BAD_MEASUREMENT,
            lambda: fw.launch_start(0, owner.godh_cert.to_bytes(), owner.session.to_bytes()))


# -- LAUNCH_SECRET ---------------------------------------------------------------------------------


def test_tampered_secret_packets_are_refused_without_a_trace() -> None:
    fw, memory = platform()
    handle, verified = launch(fw, memory, session_for(fw))
    header, ciphertext = verified.seal_secret(b"s" * 40)
    raw = header.to_bytes()
    other_fw, other_memory = platform()
    _, other = launch(other_fw, other_memory, session_for(other_fw))
    foreign_header, foreign_data = other.seal_secret(b"s" * 40)
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    cases = [
        (SevStatus.BAD_MEASUREMENT, raw, flipped),
        (SevStatus.BAD_MEASUREMENT, raw[:20] + bytes(32), ciphertext),  # MAC
        (SevStatus.BAD_MEASUREMENT, raw[:4] + os.urandom(16) + raw[20:], ciphertext),  # IV
        (SevStatus.BAD_MEASUREMENT, raw, ciphertext + bytes(16)),  # length is MAC'd
        (SevStatus.BAD_MEASUREMENT, foreign_header.to_bytes(), foreign_data),
        (SevStatus.INVALID_PARAM, b"\x01\0\0\0" + raw[4:], ciphertext),  # COMPRESSED
        (SevStatus.INVALID_LENGTH, raw[:-1], ciphertext),
        (SevStatus.INVALID_LENGTH, raw, ciphertext[:-1]),
        (SevStatus.INVALID_LENGTH, raw, b""),
    ]
    for status, head, data in cases:
        refused(fw, memory, status,
                lambda h=head, d=data: fw.launch_secret(handle, h, SECRET_SPA, d))
    fw.launch_secret(handle, raw, SECRET_SPA, ciphertext)


def test_launch_secret_state_handle_and_address_rules() -> None:
    fw, memory = platform()
    owner = session_for(fw)
    memory.write(IMAGE_SPA, os.urandom(PAGE))
    handle = fw.launch_start(0, owner.godh_cert.to_bytes(), owner.session.to_bytes())
    keys = VerifiedLaunch(owner.keys, bytes(32), (MILAN.api_major, MILAN.api_minor))
    header, data = keys.seal_secret(b"x" * 20)
    raw = header.to_bytes()

    def inject(h: int = handle, spa: int = SECRET_SPA, blob: bytes = data) -> None:
        fw.launch_secret(h, raw, spa, blob)

    refused(fw, memory, SevStatus.INVALID_GUEST_STATE, inject)  # LUPDATE: not measured yet
    fw.activate(handle, ASID)
    fw.launch_update_data(handle, IMAGE_SPA, PAGE)
    fw.launch_measure(handle)
    refused(fw, memory, SevStatus.INVALID_GUEST, lambda: inject(h=handle + 1))
    refused(fw, memory, SevStatus.INVALID_LENGTH, lambda: inject(spa=SECRET_SPA + 8))
    refused(fw, memory, SevStatus.INVALID_ADDRESS, lambda: inject(spa=memory.size))
    refused(fw, memory, SevStatus.INVALID_ADDRESS, lambda: inject(spa=-PAGE))
    refused(fw, memory, SevStatus.BAD_MEASUREMENT, inject)  # sealed for a zero measurement
    fw.deactivate(handle)
    refused(fw, memory, SevStatus.INACTIVE, inject)
    fw.df_flush()
    fw.activate(handle, ASID)
    fw.launch_finish(handle)
    refused(fw, memory, SevStatus.INVALID_GUEST_STATE, inject)  # RUNNING: too late
    fw.shutdown()
    refused(fw, memory, SevStatus.INVALID_PLATFORM_STATE, inject)


def test_a_secret_written_into_a_frame_the_guest_never_launched() -> None:
    """The firmware writes with the guest's key wherever the hypervisor points it: the rest of
    that frame keeps its DRAM bytes (now decrypting to garbage for the guest), as on hardware."""
    fw, memory = platform()
    handle, verified = launch(fw, memory, session_for(fw))
    spa = 9 * PAGE
    memory.write(spa, b"\xab" * PAGE)
    before = memory.read(spa, PAGE)
    header, data = verified.seal_secret(b"k" * 28)
    fw.launch_secret(handle, header.to_bytes(), spa + 0x100, data)
    assert memory.domain[spa // PAGE] == ASID
    assert memory.cells[spa + 0x100:spa + 0x120].tobytes() == pack_secret(b"k" * 28)
    after = memory.read(spa, PAGE)
    assert after[:0x100] == before[:0x100] and after[0x120:] == before[0x120:]
    assert after[0x100:0x120] != before[0x100:0x120]


@pytest.mark.parametrize(("api", "covers_measure"), [((0, 16), False), ((0, 17), True),
                                                      ((1, 55), True)])
def test_the_packet_mac_covers_the_measurement_from_api_0_17(api: tuple[int, int],
                                                             covers_measure: bool) -> None:
    fw, memory = platform(replace(MILAN, api_major=api[0], api_minor=api[1]))
    handle, verified = launch(fw, memory, session_for(fw))
    payload = pack_secret(b"secret for an old firmware")
    right, wrong = (verified.measure, b"") if covers_measure else (b"", verified.measure)
    header, data = seal_packet(verified.keys, os.urandom(16), payload, wrong)
    refused(fw, memory, SevStatus.BAD_MEASUREMENT,
            lambda: fw.launch_secret(handle, header.to_bytes(), SECRET_SPA, data))
    header, data = seal_packet(verified.keys, os.urandom(16), payload, right)
    fw.launch_secret(handle, header.to_bytes(), SECRET_SPA, data)
    assert memory.cells[SECRET_SPA:SECRET_SPA + len(payload)].tobytes() == payload


def test_secret_payloads() -> None:
    assert pack_secret(b"abc") == b"\x03\0\0\0abc" + bytes(9)
    assert len(pack_secret(bytes(12))) == 16 and len(pack_secret(bytes(13))) == 32
    assert len(pack_secret(bytes(SECRET_SIZE - 4))) == SECRET_SIZE
    for bad in (b"", bytes(SECRET_SIZE - 3)):
        with pytest.raises(ValueError, match="a secret is"):
            pack_secret(bad)


# -- where the guest finds it ----------------------------------------------------------------------


def test_boot_info_names_the_secret_page_and_launches_it() -> None:
    boot = boot_info_for(0x400000, [Segment(0x400000, 0x1234, 0x3000, 5)], 16 << 20, 2, "sev",
                         bytes(range(48)))
    assert (boot.secret_gpa, boot.secret_size) == (SECRET_GPA, SECRET_SIZE) == (0x2000, 0x1000)
    page = boot.to_bytes()
    assert int.from_bytes(page[0x30:0x38], "little") == SECRET_GPA  # struct sev_bootinfo
    assert int.from_bytes(page[0x38:0x40], "little") == SECRET_SIZE
    assert BootInfo.from_bytes(page) == boot
    assert boot.launched_pages() == [1, 2, 0x400, 0x401]
    image = launch_image(boot, [b"\xcc" * 0x1234])
    assert [gpn for gpn, _ in image] == [1, 2, 0x400, 0x401]
    assert image[0][1] == page and image[1][1] == bytes(PAGE)
    assert image[2][1] == b"\xcc" * PAGE
    assert image[3][1] == b"\xcc" * 0x234 + bytes(PAGE - 0x234)
    with pytest.raises(ValueError, match="file bytes"):
        launch_image(boot, [b"short"])
    with pytest.raises(ValueError, match="does not fit"):
        boot_info_for(0x400000, [Segment(0x400000, 16, 16 << 20, 5)], 16 << 20, 1, "sev",
                      bytes(48))
    for bad in (replace(boot, secret_gpa=0x2008), replace(boot, secret_size=100)):
        with pytest.raises(ValueError, match="page aligned"):
            bad.to_bytes()
        unaligned = bytearray(page)
        unaligned[0x30:0x40] = bad.secret_gpa.to_bytes(8, "little") + bad.secret_size.to_bytes(
            8, "little")
        with pytest.raises(ValueError, match="page aligned"):
            BootInfo.from_bytes(bytes(unaligned))


# -- CVE-2019-9836 ---------------------------------------------------------------------------------


def godh_at(x: int, y: int) -> bytes:
    return SevCert(0, 17, Usage.PDH, Algo.ECDH_SHA256, EcPublicKey(Curve.P384, x, y),
                   Signature.empty(), Signature.empty()).to_bytes()


def order_two_point() -> tuple[int, int]:
    """(x, 0) lies on y^2 = x^3 - 3x + b' for b' = -(x^3 - 3x): a point of order 2 on a curve
    that shares P-384's a, not on P-384."""
    return int.from_bytes(os.urandom(48), "big") % P, 0


def test_fixed_firmware_refuses_a_point_off_p384() -> None:
    fw, memory = platform()
    x, y = order_two_point()
    keys = TransportKeys(os.urandom(16), os.urandom(16))
    session = Session.seal(x.to_bytes(48, "big"), os.urandom(16), os.urandom(16), keys, 0)
    refused(fw, memory, SevStatus.INVALID_CERTIFICATE,
            lambda: fw.launch_start(0, godh_at(x, y), session.to_bytes()))
    valid = session_for(fw).godh_cert
    assert isinstance(valid.key, EcPublicKey)
    refused(fw, memory, SevStatus.INVALID_CERTIFICATE,
            lambda: fw.launch_start(0, godh_at(valid.key.qx, valid.key.qy + 1),
                                    session.to_bytes()))


def test_vulnerable_firmware_computes_with_a_point_off_the_curve() -> None:
    """With an order-2 point, d*P is P for odd d and the point at infinity for even d: of the
    two sessions an attacker can seal, exactly one opens, and which one tells the PDH private
    key's parity (the first step of the invalid-curve attack)."""
    fw, _ = platform(vulnerable=True)
    pdh_private = platform_identity(fw).pdh.private_numbers().private_value  # to check the leak
    x, y = order_two_point()
    opened = []
    for guess_odd, shared in ((True, x.to_bytes(48, "big")), (False, bytes(48))):
        keys = TransportKeys(os.urandom(16), os.urandom(16))
        session = Session.seal(shared, os.urandom(16), os.urandom(16), keys, 0)
        try:
            fw.launch_start(0, godh_at(x, y), session.to_bytes())
        except FirmwareError as err:
            assert err.status is SevStatus.BAD_MEASUREMENT
            continue
        opened.append(guess_odd)
    assert opened == [pdh_private % 2 == 1]
    assert raw_ecdh_x(pdh_private, x, y) == (x.to_bytes(48, "big") if pdh_private % 2
                                             else bytes(48))


@settings(max_examples=10, deadline=None)
@given(seed=st.binary(min_size=8, max_size=8))
def test_the_vulnerable_arithmetic_agrees_with_ecdh_on_p384(seed: bytes) -> None:
    ours = ec.derive_private_key(int.from_bytes(hashlib.sha384(seed).digest(), "big") % (
        2**383) + 1, ec.SECP384R1())
    theirs = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    assert raw_ecdh_x(ours.private_numbers().private_value, theirs.x, theirs.y) == ours.exchange(
        ec.ECDH(), theirs.public_key())


def test_vulnerable_firmware_still_serves_honest_owners() -> None:
    fw, memory = platform(vulnerable=True)
    handle, verified = launch(fw, memory, session_for(fw))
    header, data = verified.seal_secret(b"an honest owner's secret")
    fw.launch_secret(handle, header.to_bytes(), SECRET_SPA, data)
    assert PacketHeader.from_bytes(header.to_bytes()) == header


def test_key_sharing_needs_both_policies_without_noks() -> None:
    """LAUNCH_START's HANDLE: a guest may take another's VM key unless either policy has NOKS.
    Shared keys show as equal ciphertext of equal plaintext at one SPA under both ASIDs."""
    import numpy as np

    from sevsim.abi.policy import PolicyFlags
    from sevsim.abi.status import SevStatus
    from sevsim.errors import FirmwareError
    from sevsim.firmware.sev import SevFirmware
    from sevsim.hw.chips import PRESETS
    from sevsim.hw.engine import EncryptionEngine
    from sevsim.hw.memory import MemoryController

    memory = MemoryController(1 << 20, EncryptionEngine(PRESETS["milan"].tweak))
    fw = SevFirmware(PRESETS["milan"], memory)
    fw.init()
    first = fw.launch_start(0)
    fw.activate(first, 100)
    sharing = fw.launch_start(0, share_with=first)
    fw.activate(sharing, 101)
    loner = fw.launch_start(0)
    fw.activate(loner, 102)
    block = np.frombuffer(b"sixteen bytes!!!", dtype=np.uint8)
    first_ct, shared_ct, loner_ct = (memory.engine.encrypt_blocks(asid, 0x4000, block).tobytes()
                                     for asid in (100, 101, 102))
    assert first_ct == shared_ct != loner_ct
    noks = fw.launch_start(int(PolicyFlags.NOKS))
    before = fw.platform_status()
    for policy, other in ((0, noks), (int(PolicyFlags.NOKS), first)):
        with pytest.raises(FirmwareError) as refused:
            fw.launch_start(policy, share_with=other)
        assert refused.value.status is SevStatus.POLICY_FAILURE
    assert fw.platform_status() == before
    with pytest.raises(FirmwareError) as unknown:
        fw.launch_start(0, share_with=999)
    assert unknown.value.status is SevStatus.INVALID_GUEST
