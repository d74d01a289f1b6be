"""Migration: SEND_* / RECEIVE_* in the firmware, and whole VMs moved between two hosts.

Firmware-level tests drive two Secure Processors directly (policy checks against the target's
certificates, state machines, tampered packets, the finish measure, SEV-ES save areas); the
end-to-end tests pause a real guest half-way on one host, migrate it, and let it finish on
another, checking the result and that its secret never shows in anything a host can read.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import x86_const

from conftest import blocks_found, secret_bytes
from sevsim import Host
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.sev_cert import Algo, EcPublicKey, SevCert, Signature, Usage
from sevsim.abi.sev_session import PacketHeader, seal_packet
from sevsim.abi.status import GuestState, SevStatus
from sevsim.attest.sev_owner import make_session
from sevsim.errors import FirmwareError, VmStateError
from sevsim.firmware.sev import SevFirmware
from sevsim.firmware.transport import TransportPacket, transfer_measure
from sevsim.host.debug import debug_read
from sevsim.host.migration import MigrationError, Record, migrate
from sevsim.hw.chips import PRESETS
from sevsim.hw.cpu import REGISTERS, vmsa_seals
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import vcpu_engine

SECRET = secret_bytes()
NOSEND, DOMAIN, SEV, NODBG, ES = (int(f) for f in (
    PolicyFlags.NOSEND, PolicyFlags.DOMAIN, PolicyFlags.SEV, PolicyFlags.NODBG, PolicyFlags.ES))


# -- two bare Secure Processors -----------------------------------------------------------------


class Platform:
    """A Secure Processor with 32 pages of memory, and what its host would export."""

    def __init__(self, chip: str = "milan") -> None:
        preset = PRESETS[chip]
        self.memory = MemoryController(32 * PAGE, EncryptionEngine(preset.tweak))
        self.fw = SevFirmware(preset, self.memory)
        self.fw.init()
        self._asids = iter(range(preset.max_asid, 0, -1))

    def next_asid(self) -> int:
        return next(self._asids)

    def certs(self) -> tuple[bytes, bytes, bytes]:
        """PDH, chain (PEK, OCA, CEK) and AMD certificates (ASK || ARK) for SEND_START."""
        pdh, chain = self.fw.pdh_cert_export()
        ark, ask = self.fw.amd_certs()
        return pdh.to_bytes(), chain.to_bytes(), ask + ark

    def pdh(self) -> bytes:
        return self.fw.pdh_cert_export()[0].to_bytes()

    def launch(self, policy: int, data: bytes, spa: int = 2 * PAGE) -> int:
        """A RUNNING guest whose memory at `spa` holds `data`."""
        handle = self.fw.launch_start(policy)
        self.fw.activate(handle, self.next_asid())
        self.memory.write(spa, data)
        self.fw.launch_update_data(handle, spa, len(data))
        self.fw.launch_measure(handle)
        self.fw.launch_finish(handle)
        return handle

    def observable(self) -> tuple:
        """Everything a refused command must leave as it was."""
        guests = []
        for handle in range(1, 8):
            try:
                guests.append(self.fw.guest_status(handle))
            except FirmwareError as err:
                guests.append(err.status)
        return (self.fw.platform_status(), guests, self.memory.domain.tobytes(),
                hashlib.sha256(self.memory.dram_dump().tobytes()).digest())

    def refused(self, status: SevStatus, command: Callable[[], object]) -> FirmwareError:
        before = self.observable()
        with pytest.raises(FirmwareError) as info:
            command()
        assert info.value.status is status, str(info.value)
        assert self.observable() == before
        return info.value


@pytest.fixture(scope="module")
def platforms() -> Callable[..., Platform]:
    """Platforms by chip, made once per module: building a chain signs with RSA in Python."""
    made: dict[str, list[Platform]] = {}

    def get(chip: str = "milan", fresh: bool = False) -> Platform:
        if fresh or chip not in made:
            made.setdefault(chip, []).append(Platform(chip))
        platform = made[chip][-1]
        return platform

    return get


def started(source: Platform, target: Platform, policy: int = 0,
            data: bytes = SECRET) -> tuple[int, int]:
    """A guest on `source` in SUPDATE towards `target`, and its handle on `target` (RUPDATE,
    active): the two ends of a migration before any page moved."""
    handle = source.launch(policy, data)
    start = source.fw.send_start(handle, *target.certs())
    incoming = target.fw.receive_start(start.policy, source.pdh(), start.session)
    target.fw.activate(incoming, target.next_asid())
    return handle, incoming


def fresh_pair(chip_a: str = "milan", chip_b: str = "milan") -> tuple[Platform, Platform]:
    return Platform(chip_a), Platform(chip_b)


# -- the firmware: a whole transfer -----------------------------------------------------------


@pytest.mark.parametrize("chips", [("milan", "milan"), ("milan", "genoa"), ("naples", "rome")])
def test_pages_move_under_a_fresh_key_and_the_states_follow_the_spec(chips):
    source, target = fresh_pair(*chips)
    handle, incoming = started(source, target)
    assert source.fw.guest_status(handle).state is GuestState.SUPDATE
    assert target.fw.guest_status(incoming).state is GuestState.RUPDATE
    packets = [source.fw.send_update_data(handle, 2 * PAGE, PAGE // 2),
               source.fw.send_update_data(handle, 2 * PAGE + PAGE // 2, PAGE // 2)]
    for packet in packets:
        assert len(packet.header) == 52 and len(packet.data) == PAGE // 2
        assert found_anywhere(packet.data) == 0  # ciphertext under the TEK
    measure = source.fw.send_finish(handle)
    assert source.fw.guest_status(handle).state is GuestState.SENT

    for i, packet in enumerate(packets):  # the target places the pages where it likes
        target.fw.receive_update_data(incoming, packet, 7 * PAGE + i * PAGE // 2)
    target.fw.receive_finish(incoming, measure)
    status = target.fw.guest_status(incoming)
    assert (status.state, status.policy) == (GuestState.RUNNING, 0) and status.asid
    # the guest's view
    assert target.memory.cells[7 * PAGE:8 * PAGE].tobytes() == SECRET
    assert blocks_found(target.memory.dram_dump(), SECRET) == 0
    # a fresh VM key: the source's DRAM bytes moved to the target's SPA do not decrypt
    assert (target.memory.read(7 * PAGE, PAGE)
            != source.memory.read(2 * PAGE, PAGE))


def test_debug_works_while_a_guest_is_sent_or_received():
    source, target = fresh_pair()
    handle, incoming = started(source, target)
    source.fw.dbg_decrypt(handle, 2 * PAGE, 20 * PAGE, 64)
    assert source.memory.read(20 * PAGE, 64) == SECRET[:64]
    target.fw.receive_update_data(incoming, source.fw.send_update_data(handle, 2 * PAGE, 64),
                                  5 * PAGE)
    target.fw.dbg_decrypt(incoming, 5 * PAGE, 20 * PAGE, 64)
    assert target.memory.read(20 * PAGE, 64) == SECRET[:64]


@settings(max_examples=25, deadline=None)
@given(pieces=st.lists(st.tuples(st.integers(0, 255), st.integers(1, 64)), min_size=1,
                       max_size=6),
       where=st.integers(8, 24))
def test_any_ranges_round_trip(platforms, pieces, where):
    """Arbitrary 16-byte-aligned ranges of the guest page, sent in order, land where the
    target puts them and RECEIVE_FINISH accepts the lot."""
    source, target = platforms("milan"), platforms("rome")
    handle, incoming = started(source, target)
    expected, cursor = [], where * PAGE
    packets = []
    for block, count in pieces:
        count = min(count, 256 - block)
        packets.append((source.fw.send_update_data(handle, 2 * PAGE + 16 * block, 16 * count),
                        cursor))
        expected.append((cursor, SECRET[16 * block:16 * (block + count)]))
        cursor += 16 * count
    measure = source.fw.send_finish(handle)
    for packet, spa in packets:
        target.fw.receive_update_data(incoming, packet, spa)
    target.fw.receive_finish(incoming, measure)
    for spa, data in expected:
        assert target.memory.cells[spa:spa + len(data)].tobytes() == data


# -- SEND_START's policy checks -------------------------------------------------------------------


def test_nosend_is_a_policy_failure(platforms):
    source, target = platforms("milan", fresh=True), platforms("genoa")
    for policy in (NOSEND, NOSEND | NODBG, NOSEND | SEV | DOMAIN):
        handle = source.launch(policy, SECRET)
        source.refused(SevStatus.POLICY_FAILURE,
                       lambda h=handle: source.fw.send_start(h, *target.certs()))
        assert source.fw.guest_status(handle).state is GuestState.RUNNING


def test_the_policy_api_version_must_be_met_by_the_target(platforms):
    source, naples = platforms("milan", fresh=True), platforms("naples")
    needs_1_55 = 1 << 16 | 55 << 24
    handle = source.launch(needs_1_55, SECRET)
    err = source.refused(SevStatus.POLICY_FAILURE,
                         lambda: source.fw.send_start(handle, *naples.certs()))
    assert "1.55" in str(err) and "0.17" in str(err)
    source.fw.send_start(handle, *platforms("turin").certs())  # API 1.58 is enough


def test_sev_policy_needs_a_target_certified_by_amd(platforms):
    source, target = platforms("milan", fresh=True), platforms("genoa")
    pdh, chain, amd = target.certs()
    naples_amd = platforms("naples").certs()[2]
    handle = source.launch(SEV, SECRET)
    for bogus in (b"", os.urandom(len(amd)), amd[len(amd) // 2:] + amd[:len(amd) // 2]):
        source.refused(SevStatus.POLICY_FAILURE,
                       lambda b=bogus: source.fw.send_start(handle, pdh, chain, b))
    # AMD's genuine keys, but for another product: they did not sign this CEK
    source.refused(SevStatus.BAD_SIGNATURE,
                   lambda: source.fw.send_start(handle, pdh, chain, naples_amd))
    source.fw.send_start(handle, pdh, chain, amd)
    # without the SEV bit the AMD certificates are not looked at
    other = source.launch(0, SECRET, spa=4 * PAGE)
    source.fw.send_start(other, pdh, chain, b"")


def owner_oca() -> tuple[ec.EllipticCurvePrivateKey, SevCert]:
    key = ec.generate_private_key(ec.SECP384R1())
    unsigned = SevCert(0, 0, Usage.OCA, Algo.ECDSA_SHA256, EcPublicKey.from_key(key.public_key()),
                       Signature.empty(), Signature.empty())
    return key, sign_slot1(unsigned, Usage.OCA, key)


def sign_slot1(cert: SevCert, usage: Usage, key: ec.EllipticCurvePrivateKey) -> SevCert:
    der = key.sign(cert.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return SevCert(cert.api_major, cert.api_minor, cert.usage, cert.algo, cert.key,
                   Signature.ecdsa(usage, Algo.ECDSA_SHA256, der), cert.sig2)


def test_domain_policy_needs_the_same_owner_on_both_platforms():
    """Platforms are in one domain when one owner's OCA signed both PEKs (PEK_CERT_IMPORT)."""
    source, target, stranger = Platform(), Platform("genoa"), Platform("genoa")
    key, oca = owner_oca()
    for platform in (source, target):
        pek = sign_slot1(platform.fw.pek_csr(), Usage.OCA, key)
        platform.fw.pek_cert_import(pek.to_bytes(), oca.to_bytes())
    handle = source.launch(DOMAIN | SEV, SECRET)
    source.refused(SevStatus.POLICY_FAILURE,
                   lambda: source.fw.send_start(handle, *stranger.certs()))
    source.fw.send_start(handle, *target.certs())
    assert source.fw.guest_status(handle).state is GuestState.SUPDATE


def test_the_target_chain_is_checked_link_by_link(platforms):
    source, target = platforms("milan", fresh=True), platforms("genoa")
    pdh, chain, amd = target.certs()
    other_pdh = platforms("rome").certs()[0]
    handle = source.launch(0, SECRET)
    flipped = bytearray(pdh)
    flipped[0x20] ^= 1  # inside the PDH's public key: its PEK signature no longer holds
    source.refused(SevStatus.BAD_SIGNATURE,
                   lambda: source.fw.send_start(handle, bytes(flipped), chain, amd))
    source.refused(SevStatus.BAD_SIGNATURE,  # a PDH of another platform, with this chain
                   lambda: source.fw.send_start(handle, other_pdh, chain, amd))
    source.refused(SevStatus.INVALID_LENGTH,
                   lambda: source.fw.send_start(handle, pdh[:-1], chain, amd))
    source.refused(SevStatus.INVALID_CERTIFICATE,
                   lambda: source.fw.send_start(handle, pdh, chain[:-4], amd))
    source.refused(SevStatus.INVALID_CERTIFICATE,  # the PEK where the PDH belongs
                   lambda: source.fw.send_start(handle, chain[:0x824], chain, amd))
    swapped = chain[0x824:0x1048] + chain[:0x824] + chain[0x1048:]  # OCA and PEK swapped
    source.refused(SevStatus.INVALID_CERTIFICATE,
                   lambda: source.fw.send_start(handle, pdh, swapped, amd))


# -- the guest state machine ----------------------------------------------------------------------


def test_send_commands_need_supdate_and_sent_is_final():
    source, target = fresh_pair()
    handle = source.launch(0, SECRET)
    for command in (lambda: source.fw.send_update_data(handle, 2 * PAGE, PAGE),
                    lambda: source.fw.send_update_vmsa(handle, 2 * PAGE, PAGE),
                    lambda: source.fw.send_finish(handle),
                    lambda: source.fw.send_cancel(handle)):
        source.refused(SevStatus.INVALID_GUEST_STATE, command)
    source.fw.send_start(handle, *target.certs())
    source.refused(SevStatus.INVALID_GUEST_STATE,
                   lambda: source.fw.send_start(handle, *target.certs()))
    source.fw.send_cancel(handle)  # back to RUNNING, and a new send may start
    assert source.fw.guest_status(handle).state is GuestState.RUNNING
    source.fw.send_start(handle, *target.certs())
    source.fw.send_update_data(handle, 2 * PAGE, PAGE)
    source.fw.send_finish(handle)
    for command in (lambda: source.fw.send_update_data(handle, 2 * PAGE, PAGE),
                    lambda: source.fw.send_finish(handle), lambda: source.fw.send_cancel(handle),
                    lambda: source.fw.send_start(handle, *target.certs())):
        source.refused(SevStatus.INVALID_GUEST_STATE, command)
    assert source.fw.guest_status(handle).state is GuestState.SENT
    source.fw.deactivate(handle)  # what remains is to let it go
    source.fw.decommission(handle)


def test_receive_commands_need_rupdate_and_an_active_guest():
    source, target = fresh_pair()
    handle, incoming = started(source, target)
    packet = source.fw.send_update_data(handle, 2 * PAGE, PAGE)
    measure = source.fw.send_finish(handle)
    running = target.launch(0, b"\x90" * PAGE, spa=12 * PAGE)
    for command in (lambda: target.fw.receive_update_data(running, packet, 3 * PAGE),
                    lambda: target.fw.receive_update_vmsa(running, packet, 3 * PAGE),
                    lambda: target.fw.receive_finish(running, measure)):
        target.refused(SevStatus.INVALID_GUEST_STATE, command)
    target.fw.deactivate(incoming)
    target.refused(SevStatus.INACTIVE,
                   lambda: target.fw.receive_update_data(incoming, packet, 3 * PAGE))
    target.fw.activate(incoming, target.next_asid())
    target.fw.receive_update_data(incoming, packet, 3 * PAGE)
    target.fw.receive_finish(incoming, measure)
    target.refused(SevStatus.INVALID_GUEST_STATE,
                   lambda: target.fw.receive_update_data(incoming, packet, 3 * PAGE))


def test_buffers_unknown_guests_and_an_uninitialised_platform():
    source, target = fresh_pair()
    handle, incoming = started(source, target)
    packet = source.fw.send_update_data(handle, 2 * PAGE, 64)
    for spa, length, status in ((2 * PAGE + 8, 64, SevStatus.INVALID_ADDRESS),
                                (2 * PAGE, 0, SevStatus.INVALID_LENGTH),
                                (2 * PAGE, 24, SevStatus.INVALID_LENGTH),
                                (32 * PAGE - 16, 32, SevStatus.INVALID_ADDRESS),
                                (-PAGE, 16, SevStatus.INVALID_ADDRESS)):
        source.refused(status, lambda s=spa, n=length: source.fw.send_update_data(handle, s, n))
    target.refused(SevStatus.INVALID_ADDRESS,
                   lambda: target.fw.receive_update_data(incoming, packet, 3 * PAGE + 4))
    target.refused(SevStatus.INVALID_ADDRESS,
                   lambda: target.fw.receive_update_data(incoming, packet, 32 * PAGE - 32))
    for bogus in (0, 99):
        source.refused(SevStatus.INVALID_GUEST,
                       lambda b=bogus: source.fw.send_update_data(b, 2 * PAGE, 64))
        target.refused(SevStatus.INVALID_GUEST,
                       lambda b=bogus: target.fw.receive_finish(b, bytes(32)))
    source.fw.shutdown()
    with pytest.raises(FirmwareError) as info:
        source.fw.receive_start(0, target.pdh(), bytes(0x80))
    assert info.value.status is SevStatus.INVALID_PLATFORM_STATE


# -- RECEIVE_START and the packets ---------------------------------------------------------------


def test_receive_start_refusals_create_no_guest(platforms):
    source, target = platforms("milan", fresh=True), platforms("genoa", fresh=True)
    handle = source.launch(NODBG, SECRET)
    start = source.fw.send_start(handle, *target.certs())
    pdh = source.pdh()
    cases = [
        (SevStatus.BAD_MEASUREMENT, 0, pdh, start.session),  # NODBG dropped: POLICY_MAC fails
        (SevStatus.BAD_MEASUREMENT, NODBG, platforms("rome").pdh(), start.session),
        (SevStatus.BAD_MEASUREMENT, NODBG, pdh, start.session[:-1] + b"\0"),
        (SevStatus.INVALID_LENGTH, NODBG, pdh, start.session[:-1]),
        (SevStatus.INVALID_LENGTH, NODBG, pdh[:100], start.session),
        (SevStatus.INVALID_PARAM, NODBG | 1 << 9, pdh, start.session),
        (SevStatus.POLICY_FAILURE, NODBG | 9 << 16, pdh, start.session),
    ]
    pek = source.fw.pdh_cert_export()[1].pek.to_bytes()
    cases.append((SevStatus.INVALID_CERTIFICATE, NODBG, pek, start.session))
    for status, policy, cert, session in cases:
        target.refused(status, lambda p=policy, c=cert, s=session:
                       target.fw.receive_start(p, c, s))
    assert target.fw.platform_status().guest_count == 0
    incoming = target.fw.receive_start(NODBG, pdh, start.session)
    assert target.fw.guest_status(incoming).policy == NODBG


def test_an_es_guest_needs_a_platform_with_sev_es():
    naples = Platform("naples")
    session = make_session(SevCert.from_bytes(naples.pdh()), ES)
    naples.refused(SevStatus.POLICY_FAILURE, lambda: naples.fw.receive_start(
        ES, session.godh_cert.to_bytes(), session.session.to_bytes()))


def test_tampered_packets_are_refused_and_change_nothing():
    source, target = fresh_pair()
    handle, incoming = started(source, target)
    packet = source.fw.send_update_data(handle, 2 * PAGE, PAGE)

    def flipped(blob: bytes, at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 0x80]) + blob[at + 1:]

    for bad in (TransportPacket(packet.header, flipped(packet.data, 100)),
                TransportPacket(flipped(packet.header, 10), packet.data),  # the IV
                TransportPacket(flipped(packet.header, 40), packet.data),  # the MAC
                TransportPacket(packet.header, packet.data[:-16]),
                TransportPacket(packet.header, packet.data + bytes(16))):
        target.refused(SevStatus.BAD_MEASUREMENT,
                       lambda b=bad: target.fw.receive_update_data(incoming, b, 3 * PAGE))
    header = PacketHeader.from_bytes(packet.header)
    compressed = PacketHeader(1, header.iv, header.mac)
    target.refused(SevStatus.UNSUPPORTED, lambda: target.fw.receive_update_data(
        incoming, TransportPacket(compressed.to_bytes(), packet.data), 3 * PAGE))
    target.refused(SevStatus.INVALID_LENGTH, lambda: target.fw.receive_update_data(
        incoming, TransportPacket(packet.header[:51], packet.data), 3 * PAGE))
    target.fw.receive_update_data(incoming, packet, 3 * PAGE)  # the genuine one still goes in
    assert target.memory.cells[3 * PAGE:4 * PAGE].tobytes() == SECRET


def test_the_finish_measure_catches_dropped_replayed_and_reordered_packets():
    def transfer(order: Callable[[list[TransportPacket]], list[TransportPacket]]) -> tuple:
        source, target = fresh_pair()
        handle, incoming = started(source, target)
        packets = [source.fw.send_update_data(handle, 2 * PAGE + i * 1024, 1024)
                   for i in range(4)]
        measure = source.fw.send_finish(handle)
        for i, packet in enumerate(order(packets)):
            target.fw.receive_update_data(incoming, packet, 8 * PAGE + i * 1024)
        return target, incoming, measure

    for order in (lambda p: p[:3], lambda p: [*p, p[0]], lambda p: [p[1], p[0], p[2], p[3]],
                  lambda p: [p[0], p[0], p[2], p[3]]):
        target, incoming, measure = transfer(order)
        target.refused(SevStatus.BAD_MEASUREMENT,
                       lambda t=target, i=incoming, m=measure: t.fw.receive_finish(i, m))
        assert target.fw.guest_status(incoming).state is GuestState.RUPDATE
    target, incoming, measure = transfer(lambda p: p)
    target.refused(SevStatus.BAD_MEASUREMENT,
                   lambda: target.fw.receive_finish(incoming, bytes(32)))
    target.fw.receive_finish(incoming, measure)


def test_the_finish_measure_is_the_mac_of_the_policy_and_the_packet_macs(monkeypatch):
    """Recomputed from the outside with the TIK the source drew (os.urandom recorded)."""
    source, target = fresh_pair()
    handle = source.launch(NODBG, SECRET)
    drawn: list[bytes] = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: drawn.append(real(n)) or drawn[-1])
    source.fw.send_start(handle, *target.certs())
    monkeypatch.setattr(os, "urandom", real)
    tik = drawn[1]  # TEK, TIK, then the session's nonce and IV
    macs = [PacketHeader.from_bytes(source.fw.send_update_data(handle, 2 * PAGE, 256).header).mac
            for _ in range(3)]
    measure = source.fw.send_finish(handle)
    assert measure == transfer_measure(tik, NODBG, hashlib.sha256(b"".join(macs)).digest())
    assert measure != transfer_measure(tik, 0, hashlib.sha256(b"".join(macs)).digest())


# -- SEV-ES save areas --------------------------------------------------------------------------


def es_guest(platform: Platform, vmsa_spa: int) -> tuple[int, bytes]:
    """An SEV-ES guest received from a stand-in sender (the owner's session construction) with
    one VMSA page at `vmsa_spa`; returns its handle and the VMSA."""
    session = make_session(SevCert.from_bytes(platform.pdh()), ES)
    handle = platform.fw.receive_start(ES, session.godh_cert.to_bytes(),
                                       session.session.to_bytes())
    platform.fw.activate(handle, 1)  # SEV-ES guests take ASIDs below the first SEV one
    vmsa = os.urandom(PAGE)
    header, data = seal_packet(session.keys, os.urandom(16), vmsa, b"")
    platform.fw.receive_update_vmsa(handle, TransportPacket(header.to_bytes(), data), vmsa_spa)
    macs = hashlib.sha256(header.mac).digest()
    platform.fw.receive_finish(handle, transfer_measure(session.keys.tik, ES, macs))
    return handle, vmsa


def test_vmsa_pages_travel_sealed_for_the_next_vmrun():
    source, target = fresh_pair("milan", "genoa")
    handle, vmsa = es_guest(source, 4 * PAGE)
    seals = vmsa_seals(source.memory)
    assert seals.check(1, 4 * PAGE, vmsa)
    assert source.memory.cells[4 * PAGE:5 * PAGE].tobytes() == vmsa

    start = source.fw.send_start(handle, *target.certs())
    incoming = target.fw.receive_start(start.policy, source.pdh(), start.session)
    target.fw.activate(incoming, 1)
    for spa, length, status in ((4 * PAGE + 16, PAGE, SevStatus.INVALID_ADDRESS),
                                (4 * PAGE, PAGE - 16, SevStatus.INVALID_LENGTH)):
        source.refused(status, lambda s=spa, n=length: source.fw.send_update_vmsa(handle, s, n))
    packet = source.fw.send_update_vmsa(handle, 4 * PAGE, PAGE)
    assert found_anywhere(packet.data, vmsa) == 0
    target.fw.receive_update_vmsa(incoming, packet, 9 * PAGE)
    target.fw.receive_finish(incoming, source.fw.send_finish(handle))
    assert vmsa_seals(target.memory).check(1, 9 * PAGE, vmsa)
    assert target.memory.cells[9 * PAGE:10 * PAGE].tobytes() == vmsa


def test_a_vmsa_the_host_changed_is_not_sent_and_plain_guests_have_none():
    source, target = fresh_pair()
    handle, _ = es_guest(source, 4 * PAGE)
    source.fw.send_start(handle, *target.certs())
    dram = bytearray(source.memory.read(4 * PAGE, PAGE))
    dram[0x170] ^= 1  # the host flips a bit of the encrypted save area (RIP's block)
    source.memory.write(4 * PAGE, bytes(dram))
    source.refused(SevStatus.SECURE_DATA_INVALID,
                   lambda: source.fw.send_update_vmsa(handle, 4 * PAGE, PAGE))
    plain, incoming = started(source, target)
    source.refused(SevStatus.POLICY_FAILURE,
                   lambda: source.fw.send_update_vmsa(plain, 2 * PAGE, PAGE))
    packet = source.fw.send_update_data(plain, 2 * PAGE, PAGE)
    target.refused(SevStatus.POLICY_FAILURE,
                   lambda: target.fw.receive_update_vmsa(incoming, packet, 3 * PAGE))


# -- whole VMs between hosts ----------------------------------------------------------------------


_REFERENCE: dict[tuple, str] = {}


def reference_console(build, name: str, memory: str, cflags: tuple[str, ...] = (),
                      mode: str = "sev") -> str:
    """What the guest prints when it runs start to finish on one host."""
    key = (name, memory, cflags, mode)
    if key not in _REFERENCE:
        vm = Host(memory="64M").create_vm(mode=mode, memory=memory)
        vm.load(build(name, *cflags))
        vm.launch()
        _REFERENCE[key] = vm.run(timeout=60).console
    return _REFERENCE[key]


def paused(host: Host, build, name: str, memory: str, policy: int | None = None,
           mode: str = "sev", until: str = "", cflags: tuple[str, ...] = ()):
    """A VM run until its console shows `until`, then paused (not finished)."""
    vm = host.create_vm(mode=mode, memory=memory)
    vm.load(build(name, *cflags))
    vm.launch(policy=policy)
    while until not in vm.console:
        assert not vm.run_for(0.01)
    assert not vm.run_for(0.02) and not vm.finished
    return vm


def found_anywhere(haystack: bytes, needle: bytes = SECRET) -> int:
    """Blocks of the needle in the haystack at any byte offset (records do not keep pages
    16-byte aligned, so blocks_found alone would look in the wrong places)."""
    return sum(blocks_found(haystack[shift:], needle) for shift in range(16))


class Recorder:
    """A tap that keeps every record of the stream."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def __call__(self, record: bytes) -> bytes:
        self.records.append(record)
        return record

    @property
    def stream(self) -> bytes:
        return b"".join(self.records)

    def kinds(self) -> list[Record]:
        return [Record(r[0]) for r in self.records]

    def of(self, *kinds: Record) -> bytes:
        return b"".join(r for r in self.records if r[0] in kinds)


@pytest.mark.parametrize("mode, chips", [
    ("sev", ("milan", "milan")), ("sev", ("milan", "genoa")), ("sev", ("naples", "rome")),
    ("sev-es", ("milan", "genoa")), ("sev-es", ("rome", "turin")),
])
def test_a_paused_guest_finishes_on_another_host_as_if_never_moved(mode, chips, build):
    expected = reference_console(build, "longsecret", "8M", mode=mode)
    assert "registers kept: yes" in expected
    source, target = Host(chips[0], memory="64M"), Host(chips[1], memory="64M")
    vm = paused(source, build, "longsecret", "8M", mode=mode, until="round 0")
    host_state = (vm.console, dict(vm.hv.msrs), set(vm.hv.shared_gpns), dict(vm.hv.ghcb_gpas))
    assert bool(host_state[3]) == (mode == "sev-es")  # the GHCB the guest registered
    tap = Recorder()
    moved = migrate(vm, target, tap=tap)

    assert (moved.mode, moved.memory_size) == (mode, 8 << 20)
    assert (moved.console, moved.hv.msrs, moved.hv.shared_gpns, moved.hv.ghcb_gpas) == host_state
    assert target.firmware.guest_status(moved.hv.firmware_handle).state is GuestState.RUNNING
    kinds = tap.kinds()
    assert kinds[:2] == [Record.START, Record.C_BITS]
    assert kinds[-3:] == [Record.VCPU if mode == "sev" else Record.VMSA, Record.DEVICES,
                          Record.FINISH]
    assert Record.PAGES in kinds and Record.PLAIN in kinds  # private, and the shared page
    # the secret page is in no byte the hosts see: the stream, either host's DRAM, the new VM
    registers = tap.of(Record.VCPU, Record.VMSA)
    assert found_anywhere(tap.stream) == found_anywhere(registers)
    assert b"PUBLIC-MESSAGE-FOR-THE-HOST" in tap.stream  # a shared page goes as it is
    for host in (source, target):
        assert blocks_found(host.dram_dump(), SECRET) == 0
    assert blocks_found(moved.host_view(), SECRET) == 0
    # its first two words sit in R12 and R13: plain SEV ships the VMCB save area as it is
    # (there they are, side by side), SEV-ES only the VMSA under the transport key
    assert (SECRET[:16] in registers) == (mode == "sev")
    assert (SECRET[8:16] in tap.stream) == (mode == "sev")
    # the source is gone: SENT, then destroyed (its key left the memory controller)
    with pytest.raises(VmStateError, match="destroyed"):
        vm.run(timeout=1)
    assert source.firmware.platform_status().guest_count == 0

    result = moved.run(timeout=60)
    assert result.exit_code == 0
    assert result.console == expected


def test_plain_sev_registers_arrive_whole(build):
    """The VMCB save area is the hypervisor's to copy: every register, XMM and the segment
    bases included, is on the target vCPU as it was on the source."""
    source, target = Host(memory="64M"), Host("genoa", memory="64M")
    vm = paused(source, build, "longsecret", "8M", until="round 0")
    xmm = [getattr(x86_const, f"UC_X86_REG_XMM{i}") for i in range(16)]
    vcpu = vm.hv.vcpus[0]
    vcpu.vmcb.write("fs_base", 0x7F00_1234_5000)  # what the guest never set: it must travel too
    vcpu_engine(vcpu).reg_write(xmm[15], 0x0123456789ABCDEF_FEDCBA9876543210)
    before = ({name: vcpu.vmcb.read(name) for name in REGISTERS},
              [vcpu_engine(vcpu).reg_read(reg) for reg in xmm])
    moved = migrate(vm, target).hv.vcpus[0]
    after = ({name: moved.vmcb.read(name) for name in REGISTERS},
             [vcpu_engine(moved).reg_read(reg) for reg in xmm])
    assert after == before
    assert before[0]["r12"].to_bytes(8, "little") == SECRET[:8]  # mid-loop: the live state


def test_bench_checksum_survives_migration_to_another_generation(build):
    flags = ("-DBENCH_SCALE=1",)
    expected = reference_console(build, "bench", "16M", flags)
    assert "bench checksum: 0x" in expected
    source, target = Host("milan", memory="64M"), Host("genoa", memory="64M")
    vm = paused(source, build, "bench", "16M", cflags=flags)
    assert "bench checksum" not in vm.console
    result = migrate(vm, target).run(timeout=60)
    assert result.console == expected


def test_a_plain_vm_migrates_in_the_clear(build):
    expected = reference_console(build, "longsecret", "8M")
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", mode="none", until="round 0")
    tap = Recorder()
    moved = migrate(vm, target, tap=tap)
    assert Record.PAGES not in tap.kinds()
    assert found_anywhere(tap.stream) >= len(SECRET) // 16  # no firmware, no secrecy
    assert moved.run(timeout=60).console == expected


def test_a_nodbg_guest_stays_undebuggable_on_the_target(build):
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", policy=NODBG, until="round 0")
    page = int(re.search(r"secret ready at 0x([0-9a-f]+)", vm.console)[1], 16)
    moved = migrate(vm, target)
    assert target.firmware.guest_status(moved.hv.firmware_handle).policy == NODBG
    with pytest.raises(FirmwareError, match="POLICY_FAILURE"):
        debug_read(moved, page, 16)
    debuggable = paused(source, build, "longsecret", "8M", policy=0, until="round 0")
    assert debug_read(migrate(debuggable, target), page, len(SECRET)) == SECRET


def assert_runs_on_at_home(vm, source: Host, target: Host, expected: str) -> None:
    """After a refused migration: the target holds nothing, the source VM finishes."""
    assert not target.hypervisor.vms
    assert target.firmware.platform_status().guest_count == 0
    if vm.hv.firmware_handle:
        assert source.firmware.guest_status(vm.hv.firmware_handle).state is GuestState.RUNNING
    assert vm.run(timeout=60).console == expected


def test_nosend_refuses_migration_and_the_guest_runs_on(build):
    expected = reference_console(build, "longsecret", "8M")
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", policy=NOSEND | NODBG, until="round 0")
    tap = Recorder()
    with pytest.raises(FirmwareError) as info:
        migrate(vm, target, tap=tap)
    assert info.value.status is SevStatus.POLICY_FAILURE and "NOSEND" in str(info.value)
    assert tap.records == []  # nothing left the host
    assert_runs_on_at_home(vm, source, target, expected)


def tamper_first(kind: Record, change: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    done = []

    def tap(record: bytes) -> bytes:
        if record[0] == kind and not done:
            done.append(record)
            return change(record)
        return record

    return tap


def flip(at: int) -> Callable[[bytes], bytes]:
    """A change of one bit of a record, at `at` (negative: from the end)."""
    def change(record: bytes) -> bytes:
        i = at % len(record)
        return record[:i] + bytes([record[i] ^ 1]) + record[i + 1:]
    return change


@pytest.mark.parametrize("tap, status", [
    (tamper_first(Record.PAGES, flip(-100)), SevStatus.BAD_MEASUREMENT),  # page ciphertext
    (tamper_first(Record.PAGES, flip(5 + 8 + 30)), SevStatus.BAD_MEASUREMENT),  # its MAC
    (tamper_first(Record.START, flip(5 + 28)), SevStatus.BAD_MEASUREMENT),  # the policy
    (tamper_first(Record.START, flip(-1)), SevStatus.BAD_MEASUREMENT),  # the session
], ids=["page-data", "page-mac", "policy", "session"])
def test_a_tampered_stream_is_refused_and_the_source_runs_on(tap, status, build):
    expected = reference_console(build, "longsecret", "8M")
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", until="round 0")
    with pytest.raises(FirmwareError) as info:
        migrate(vm, target, tap=tap)
    assert info.value.status is status
    assert_runs_on_at_home(vm, source, target, expected)


@pytest.mark.parametrize("change", [lambda r: b"", lambda r: b"\x63" + r[1:],
                                    lambda r: r[:-3]], ids=["dropped", "unknown", "truncated"])
def test_a_malformed_stream_is_refused(change, build):
    expected = reference_console(build, "longsecret", "8M")
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", until="round 0")
    with pytest.raises(MigrationError):
        migrate(vm, target, tap=tamper_first(Record.C_BITS, change))
    assert_runs_on_at_home(vm, source, target, expected)


def test_a_replayed_page_packet_is_caught_at_receive_finish_and_the_guest_is_lost(build):
    """The host sends the first packet again in place of the second: each MAC holds, so the
    target only finds out at RECEIVE_FINISH. The source is SENT by then: there is no way
    back, as on hardware, and the source host stops its copy."""
    source, target = Host(memory="64M"), Host(memory="64M")
    vm = paused(source, build, "longsecret", "8M", until="round 0")
    pages: list[bytes] = []

    def replay(record: bytes) -> bytes:
        if record[0] != Record.PAGES:
            return record
        pages.append(record)
        return pages[0] if len(pages) == 2 else record

    with pytest.raises(FirmwareError) as info:
        migrate(vm, target, tap=replay)
    assert info.value.status is SevStatus.BAD_MEASUREMENT and "RECEIVE_FINISH" in str(info.value)
    assert source.firmware.guest_status(vm.hv.firmware_handle).state is GuestState.SENT
    assert vm.finished
    console = vm.console
    vm.run(timeout=1)
    assert vm.console == console  # nothing runs
    assert not target.hypervisor.vms


def test_a_tampered_vmsa_record_is_refused_and_the_es_guest_runs_on(build):
    expected = reference_console(build, "longsecret", "8M", mode="sev-es")
    source, target = Host(memory="64M"), Host("genoa", memory="64M")
    vm = paused(source, build, "longsecret", "8M", mode="sev-es", until="round 0")
    with pytest.raises(FirmwareError) as info:
        migrate(vm, target, tap=tamper_first(Record.VMSA, flip(-1)))
    assert info.value.status is SevStatus.BAD_MEASUREMENT
    assert "RECEIVE_UPDATE_VMSA" in str(info.value)
    assert_runs_on_at_home(vm, source, target, expected)


def test_migrating_an_unlaunched_vm_is_refused(build):
    host = Host(memory="64M")
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("hello"))
    target = Host(memory="64M")
    with pytest.raises(VmStateError, match="launched"):
        migrate(vm, target)
    assert not target.hypervisor.vms
