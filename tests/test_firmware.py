"""The SEV firmware (AMD Secure Processor) command set and its state machines.

The state-machine test drives random command sequences against a small independent model of
AMD's rules (SEV API 55766, spec-formats.md §9.2): every command either does what the model
says or is refused with the model's status code, and a refused command changes nothing the
host can observe (PLATFORM_STATUS, every GUEST_STATUS, key slots, DRAM).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os
import struct
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from sevsim.abi.policy import PolicyFlags
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.errors import FirmwareError
from sevsim.firmware.sev import GuestStatus, LaunchMeasurement, PlatformStatus, SevFirmware
from sevsim.hw.chips import PRESETS, ChipPreset
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import RAW, MemoryController

MILAN = PRESETS["milan"]
NFRAMES = 16


def make_firmware(chip: ChipPreset = MILAN, nframes: int = NFRAMES
                  ) -> tuple[SevFirmware, MemoryController]:
    memory = MemoryController(nframes * PAGE, EncryptionEngine(chip.tweak))
    return SevFirmware(chip, memory), memory


def snapshot(fw: SevFirmware, memory: MemoryController, handles: range = range(0, 12)):
    """Everything a refused command must leave as it was."""
    guests = {}
    for handle in handles:
        try:
            guests[handle] = fw.guest_status(handle)
        except FirmwareError as err:
            guests[handle] = err.status
    slots = tuple(memory.engine.has_key(asid) for asid in range(0, 12))
    return (fw.platform_status(), guests, slots, memory.domain.tobytes(),
            hashlib.sha256(memory.dram_dump().tobytes()).digest())


def refused(fw: SevFirmware, memory: MemoryController, status: SevStatus,
            command: Callable[[], object]) -> FirmwareError:
    before = snapshot(fw, memory)
    with pytest.raises(FirmwareError) as info:
        command()
    assert info.value.status is status, str(info.value)
    assert status.name in str(info.value)
    assert snapshot(fw, memory) == before
    return info.value


class RandomRecorder:
    """Stands in for os.urandom so that a test can learn the TIK the firmware drew."""

    def __init__(self) -> None:
        self.drawn: list[bytes] = []
        self.real = os.urandom

    def __call__(self, n: int) -> bytes:
        value = self.real(n)
        self.drawn.append(value)
        return value


def measure_by_spec(tik: bytes, api: tuple[int, int], build: int, policy: int, digest: bytes,
                    mnonce: bytes) -> bytes:
    """spec-formats.md §9.6, written out independently of the firmware."""
    message = bytearray()
    if api >= (0, 17):
        message += bytes([0x04, api[0], api[1], build])
    message += policy.to_bytes(4, "little") + digest + mnonce
    return hmac.new(tik, bytes(message), "sha256").digest()


# -- the whole life of one guest --------------------------------------------------------------


def test_happy_path_from_init_to_decommission():
    fw, memory = make_firmware()
    assert fw.platform_status().state is PlatformState.UNINIT
    fw.init()
    status = fw.platform_status()
    assert (status.state, status.guest_count) == (PlatformState.INIT, 0)
    assert (status.api_major, status.api_minor, status.build) == (1, 55, 29)

    policy = int(PolicyFlags.NODBG | PolicyFlags.NOKS)
    handle = fw.launch_start(policy)
    assert fw.platform_status().state is PlatformState.WORKING
    assert fw.platform_status().guest_count == 1
    assert fw.guest_status(handle) == GuestStatus(handle, policy, 0, GuestState.LUPDATE)

    asid = MILAN.asid_range(MILAN.modes[1]).start
    fw.activate(handle, asid)
    assert fw.guest_status(handle).asid == asid
    assert memory.engine.has_key(asid)

    image = b"guest kernel!" + os.urandom(2 * PAGE - 13)
    memory.write(2 * PAGE, image)
    fw.launch_update_data(handle, 2 * PAGE, 2 * PAGE)
    assert memory.cells[2 * PAGE:4 * PAGE].tobytes() == image  # the guest's view
    assert (memory.domain[2:4] == asid).all()
    dram = memory.read(2 * PAGE, 2 * PAGE)
    assert dram != image and b"guest kernel!" not in memory.dram_dump().tobytes()

    measurement = fw.launch_measure(handle)
    assert isinstance(measurement, LaunchMeasurement)
    assert len(measurement.measure) == 32 and len(measurement.mnonce) == 16
    assert measurement.to_bytes() == measurement.measure + measurement.mnonce
    assert fw.guest_status(handle).state is GuestState.LSECRET
    fw.launch_finish(handle)
    assert fw.guest_status(handle).state is GuestState.RUNNING

    fw.deactivate(handle)
    assert fw.guest_status(handle).asid == 0
    assert not memory.engine.has_key(asid)
    assert (memory.domain[2:4] == RAW).all()
    assert memory.read(2 * PAGE, 2 * PAGE) == dram  # DEACTIVATE leaves DRAM alone

    fw.decommission(handle)
    refused(fw, memory, SevStatus.INVALID_GUEST, lambda: fw.guest_status(handle))
    status = fw.platform_status()
    assert (status.state, status.guest_count) == (PlatformState.INIT, 0)
    fw.shutdown()
    assert fw.platform_status().state is PlatformState.UNINIT


def test_the_key_belongs_to_the_guest_not_the_asid():
    """Reactivated on another ASID, a guest's memory decrypts again; a new guest on the old
    ASID gets a fresh key."""
    fw, memory = make_firmware()
    fw.init()
    page = os.urandom(PAGE)
    memory.write(PAGE, page)
    first = fw.launch_start(0)
    fw.activate(first, 100)
    fw.launch_update_data(first, PAGE, PAGE)
    dram = memory.read(PAGE, PAGE)
    fw.deactivate(first)
    fw.df_flush()
    fw.activate(first, 101)
    memory.convert_domain(1, 1, 101)  # the guest runs again, now on ASID 101
    assert memory.cells[PAGE:2 * PAGE].tobytes() == page

    memory.convert_domain(1, 1, RAW)
    memory.write(PAGE, page)  # the same plaintext at the same SPA ...
    second = fw.launch_start(0)
    fw.activate(second, 100)  # ... on the same ASID, for another guest
    fw.launch_update_data(second, PAGE, PAGE)
    assert memory.cells[PAGE:2 * PAGE].tobytes() == page
    assert memory.read(PAGE, PAGE) != dram


def test_shutdown_unloads_every_key_and_keeps_dram():
    fw, memory = make_firmware()
    fw.init()
    handles = [fw.launch_start(0) for _ in range(3)]
    for handle, asid in zip(handles, (100, 101, 102), strict=True):
        fw.activate(handle, asid)
        fw.launch_update_data(handle, (asid - 100) * PAGE, PAGE)
    dram = memory.read(0, memory.size)
    fw.shutdown()
    assert not any(memory.engine.has_key(asid) for asid in (100, 101, 102))
    assert (memory.domain == RAW).all()
    assert memory.read(0, memory.size) == dram
    status = fw.platform_status()
    assert (status.state, status.guest_count) == (PlatformState.UNINIT, 0)
    fw.init()
    refused(fw, memory, SevStatus.INVALID_GUEST, lambda: fw.guest_status(handles[0]))
    fw.activate(fw.launch_start(0), 100)  # no DF_FLUSH needed after SHUTDOWN


# -- the launch measurement ----------------------------------------------------------------------


def test_measurement_mac_matches_a_published_vector():
    """virtee/sev src/session/mod.rs `verify` test (spec-formats.md §9.6): API 0.18 build 15,
    policy 0, empty launch digest."""
    chip = replace(PRESETS["rome"], api_major=0, api_minor=0x12, build=0x0F)
    fw, _ = make_firmware(chip)
    tik = bytes.fromhex("66320db73158a35a255d051758e95ed4")
    mnonce = bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554")
    expected = bytes.fromhex(
        "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea")
    assert fw.measurement_mac(tik, 0, hashlib.sha256(b"").digest(), mnonce) == expected
    assert fw.measurement_mac(tik, 1, hashlib.sha256(b"").digest(), mnonce) != expected


@pytest.mark.parametrize("api", [(0, 16), (0, 17), (0, 24), (1, 55)])
def test_measurement_mac_follows_the_spec_formula(api):
    chip = replace(MILAN, api_major=api[0], api_minor=api[1], build=7)
    fw, _ = make_firmware(chip)
    tik, mnonce = os.urandom(16), os.urandom(16)
    digest = hashlib.sha256(b"some launch data").digest()
    policy = 0x0001_0003
    mac = fw.measurement_mac(tik, policy, digest, mnonce)
    assert mac == measure_by_spec(tik, api, 7, policy, digest, mnonce)
    assert mac != measure_by_spec(tik, (0, 16) if api >= (0, 17) else (0, 17), 7, policy,
                                  digest, mnonce)


def launch_with_known_tik(fw: SevFirmware, monkeypatch, policy: int = 0) -> tuple[int, list[bytes]]:
    recorder = RandomRecorder()
    monkeypatch.setattr(os, "urandom", recorder)
    handle = fw.launch_start(policy)
    monkeypatch.setattr(os, "urandom", recorder.real)
    return handle, [value for value in recorder.drawn if len(value) == 16]


def tik_explains(candidates: list[bytes], chip: ChipPreset, policy: int, digest: bytes,
                 measurement: LaunchMeasurement) -> bool:
    api = (chip.api_major, chip.api_minor)
    return any(measure_by_spec(tik, api, chip.build, policy, digest, measurement.mnonce)
               == measurement.measure for tik in candidates)


@pytest.mark.parametrize("chip", [PRESETS["naples"], MILAN], ids=lambda c: c.name)
def test_launch_measure_is_the_hmac_of_the_plaintext_digest(chip, monkeypatch):
    """The firmware's TIK is one of the random values it drew at LAUNCH_START; exactly the
    spec formula over SHA-256 of the updated plaintext, in order, explains the measurement.
    A refused update in between does not extend the digest."""
    fw, memory = make_firmware(chip)
    fw.init()
    policy = int(PolicyFlags.NODBG)
    handle, candidates = launch_with_known_tik(fw, monkeypatch, policy)
    fw.activate(handle, chip.max_asid)
    a, b = os.urandom(PAGE), os.urandom(0x230)
    memory.write(4 * PAGE, a)
    memory.write(7 * PAGE + 0x40, b)
    fw.launch_update_data(handle, 4 * PAGE, PAGE)
    refused(fw, memory, SevStatus.INVALID_LENGTH,
            lambda: fw.launch_update_data(handle, 9 * PAGE, 0x18))
    fw.launch_update_data(handle, 7 * PAGE + 0x40, 0x230)
    measurement = fw.launch_measure(handle)

    assert tik_explains(candidates, chip, policy, hashlib.sha256(a + b).digest(), measurement)
    for wrong in (hashlib.sha256(b + a).digest(), hashlib.sha256(a).digest(),
                  hashlib.sha256(memory.read(4 * PAGE, PAGE) + b).digest()):
        assert not tik_explains(candidates, chip, policy, wrong, measurement)
    assert not tik_explains(candidates, chip, policy ^ 1, hashlib.sha256(a + b).digest(),
                            measurement)


def test_identical_launches_measure_differently(monkeypatch):
    fw, memory = make_firmware()
    fw.init()
    measurements = []
    for asid in (100, 101):
        memory.write((asid - 100) * PAGE, b"\x90" * PAGE)
        handle = fw.launch_start(0)
        fw.activate(handle, asid)
        fw.launch_update_data(handle, (asid - 100) * PAGE, PAGE)
        measurements.append(fw.launch_measure(handle))
    assert measurements[0].measure != measurements[1].measure  # TIK per guest
    assert measurements[0].mnonce != measurements[1].mnonce


# -- ACTIVATE and friends -------------------------------------------------------------------


def test_activate_rules():
    fw, memory = make_firmware()
    fw.init()
    one, two = fw.launch_start(0), fw.launch_start(0)
    for bad in (0, -1, MILAN.max_asid + 1, 1 << 32):
        refused(fw, memory, SevStatus.INVALID_ASID, lambda bad=bad: fw.activate(one, bad))
    fw.activate(one, MILAN.max_asid)
    refused(fw, memory, SevStatus.ASID_OWNED, lambda: fw.activate(two, MILAN.max_asid))
    refused(fw, memory, SevStatus.ACTIVE, lambda: fw.activate(one, 5))
    refused(fw, memory, SevStatus.ACTIVE, lambda: fw.activate(one, MILAN.max_asid))
    refused(fw, memory, SevStatus.ACTIVE, lambda: fw.decommission(one))

    fw.deactivate(one)
    refused(fw, memory, SevStatus.INACTIVE, lambda: fw.deactivate(one))
    refused(fw, memory, SevStatus.DF_FLUSH_REQUIRED, lambda: fw.activate(two, MILAN.max_asid))
    refused(fw, memory, SevStatus.DF_FLUSH_REQUIRED, lambda: fw.activate(one, MILAN.max_asid))
    fw.activate(one, 7)  # other ASIDs are fine meanwhile
    fw.df_flush()
    fw.activate(two, MILAN.max_asid)
    assert fw.guest_status(two).asid == MILAN.max_asid
    assert fw.guest_status(one).asid == 7


def test_unknown_handles_are_invalid_guests():
    fw, memory = make_firmware()
    fw.init()
    real = fw.launch_start(0)
    for bogus in (0, real + 1, 999, -1):
        for command in (lambda h: fw.activate(h, 5), fw.deactivate, fw.decommission,
                        fw.guest_status, lambda h: fw.launch_update_data(h, 0, PAGE),
                        fw.launch_measure, fw.launch_finish):
            refused(fw, memory, SevStatus.INVALID_GUEST, lambda c=command, h=bogus: c(h))


def test_platform_commands_in_the_wrong_state():
    fw, memory = make_firmware()
    for command in (fw.shutdown, fw.df_flush, lambda: fw.launch_start(0),
                    lambda: fw.activate(1, 5), lambda: fw.deactivate(1),
                    lambda: fw.decommission(1), lambda: fw.guest_status(1),
                    lambda: fw.launch_update_data(1, 0, PAGE), lambda: fw.launch_measure(1),
                    lambda: fw.launch_finish(1)):
        refused(fw, memory, SevStatus.INVALID_PLATFORM_STATE, command)
    fw.init()
    refused(fw, memory, SevStatus.INVALID_PLATFORM_STATE, fw.init)
    fw.launch_start(0)
    refused(fw, memory, SevStatus.INVALID_PLATFORM_STATE, fw.init)


def test_guest_commands_in_the_wrong_guest_state():
    fw, memory = make_firmware()
    fw.init()
    handle = fw.launch_start(0)
    fw.activate(handle, 100)
    refused(fw, memory, SevStatus.INVALID_GUEST_STATE, lambda: fw.launch_finish(handle))
    fw.launch_measure(handle)
    refused(fw, memory, SevStatus.INVALID_GUEST_STATE, lambda: fw.launch_measure(handle))
    refused(fw, memory, SevStatus.INVALID_GUEST_STATE,
            lambda: fw.launch_update_data(handle, 0, PAGE))
    fw.launch_finish(handle)
    for command in (fw.launch_measure, fw.launch_finish,
                    lambda h: fw.launch_update_data(h, 0, PAGE)):
        refused(fw, memory, SevStatus.INVALID_GUEST_STATE, lambda c=command: c(handle))


@settings(max_examples=40, deadline=None)
@given(reserved=st.integers(1, 0x3FF), low=st.integers(0, 0x3F).filter(lambda v: not v & 4))
def test_reserved_policy_bits_are_invalid_params(reserved, low):
    fw, memory = make_firmware()
    fw.init()
    refused(fw, memory, SevStatus.INVALID_PARAM, lambda: fw.launch_start(low | reserved << 6))
    assert fw.guest_status(fw.launch_start(low)).policy == low


def test_policies_the_firmware_cannot_honour():
    fw, memory = make_firmware()
    fw.init()
    major, minor = MILAN.api_major, MILAN.api_minor
    refused(fw, memory, SevStatus.INVALID_PARAM, lambda: fw.launch_start(1 << 32))
    refused(fw, memory, SevStatus.INVALID_PARAM, lambda: fw.launch_start(-1))
    refused(fw, memory, SevStatus.POLICY_FAILURE,
            lambda: fw.launch_start((major + 1) << 16))
    refused(fw, memory, SevStatus.POLICY_FAILURE,
            lambda: fw.launch_start(major << 16 | (minor + 1) << 24))
    es = int(PolicyFlags.ES)
    assert fw.guest_status(fw.launch_start(es)).policy == es  # Milan has SEV-ES
    naples, naples_memory = make_firmware(PRESETS["naples"])
    naples.init()
    refused(naples, naples_memory, SevStatus.POLICY_FAILURE, lambda: naples.launch_start(es))
    exact = major << 16 | minor << 24 | int(PolicyFlags.NOSEND)
    assert fw.guest_status(fw.launch_start(exact)).policy == exact
    older = (minor - 1) << 24 | major << 16
    assert fw.guest_status(fw.launch_start(older)).policy == older


def test_launch_update_data_checks_its_buffer():
    fw, memory = make_firmware()
    fw.init()
    handle = fw.launch_start(0)
    refused(fw, memory, SevStatus.INACTIVE, lambda: fw.launch_update_data(handle, 0, PAGE))
    fw.activate(handle, 100)
    for spa, length in ((0, 0), (0, 15), (0, 17), (8, 32), (PAGE + 1, PAGE), (0, -16)):
        refused(fw, memory, SevStatus.INVALID_LENGTH,
                lambda s=spa, n=length: fw.launch_update_data(handle, s, n))
    for spa, length in ((memory.size, 16), (memory.size - PAGE, 2 * PAGE), (-PAGE, 16),
                        (1 << 40, PAGE)):
        refused(fw, memory, SevStatus.INVALID_ADDRESS,
                lambda s=spa, n=length: fw.launch_update_data(handle, s, n))
    fw.launch_update_data(handle, memory.size - 16, 16)  # the last block is fine
    assert memory.domain[-1] == 100


def test_launch_update_data_twice_on_one_page():
    """Two updates may share a page (firmware encrypts just the ranges given)."""
    fw, memory = make_firmware()
    fw.init()
    handle = fw.launch_start(0)
    fw.activate(handle, 100)
    halves = os.urandom(PAGE // 2), os.urandom(PAGE // 2)
    memory.write(PAGE, halves[0] + halves[1])
    fw.launch_update_data(handle, PAGE, PAGE // 2)
    fw.launch_update_data(handle, PAGE + PAGE // 2, PAGE // 2)
    assert memory.cells[PAGE:2 * PAGE].tobytes() == halves[0] + halves[1]
    assert halves[0][:16] not in memory.dram_dump().tobytes()


# -- output layouts -------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(major=st.integers(0, 255), minor=st.integers(0, 255), state=st.sampled_from(PlatformState),
       owner=st.integers(0, 1), config=st.integers(0, 0xFFFF), build=st.integers(0, 255),
       count=st.integers(0, 2**32 - 1))
def test_platform_status_layout(major, minor, state, owner, config, build, count):
    raw = PlatformStatus(major, minor, state, owner, config, build, count).to_bytes()
    assert len(raw) == 12
    assert raw[0] == major and raw[1] == minor and raw[2] == state and raw[3] == owner
    assert int.from_bytes(raw[4:6], "little") == config
    assert raw[6] == 0
    assert raw[7] == build
    assert int.from_bytes(raw[8:12], "little") == count


@settings(max_examples=50, deadline=None)
@given(handle=st.integers(0, 2**32 - 1), policy=st.integers(0, 2**32 - 1),
       asid=st.integers(0, 2**32 - 1), state=st.sampled_from(GuestState))
def test_guest_status_layout(handle, policy, asid, state):
    raw = GuestStatus(handle, policy, asid, state).to_bytes()
    assert len(raw) == 16
    assert struct.unpack_from("<III", raw) == (handle, policy, asid)
    assert raw[12] == state and raw[13:] == bytes(3)


def test_live_status_bytes():
    fw, _ = make_firmware()
    fw.init()
    handles = [fw.launch_start(0x0001_0001) for _ in range(3)]
    fw.activate(handles[1], 0x123)
    raw = fw.platform_status().to_bytes()
    assert raw == bytes([1, 55, PlatformState.WORKING, 0, 0, 0, 0, 29]) + (3).to_bytes(4, "little")
    raw = fw.guest_status(handles[1]).to_bytes()
    assert raw == (struct.pack("<III", handles[1], 0x0001_0001, 0x123)
                   + bytes([GuestState.LUPDATE, 0, 0, 0]))


# -- random command sequences against a model -------------------------------------------------

SMALL = MILAN.with_asids(4, 3)  # ASIDs 1..4, so the sequences run into ownership conflicts
MODEL_FRAMES = 48
ASIDS = st.one_of(st.integers(1, SMALL.max_asid), st.integers(-1, SMALL.max_asid + 2))
POLICIES = st.one_of(
    st.sampled_from([  # acceptable
        0, int(PolicyFlags.NODBG), int(PolicyFlags.NOKS | PolicyFlags.NOSEND),
        int(PolicyFlags.ES),  # Milan has SEV-ES
        SMALL.api_major << 16 | SMALL.api_minor << 24,  # exactly this firmware's API
    ]),
    st.sampled_from([  # refused
        1 << 6, 1 << 15,  # reserved bits
        (SMALL.api_major + 1) << 16,  # needs a newer firmware
        1 << 32,
    ]),
)


class FirmwareModel(RuleBasedStateMachine):
    """The legacy SEV platform and guest state machines, written from the spec."""

    @initialize(up=st.integers(0, 3), active=st.lists(st.booleans(), max_size=3))
    def boot(self, up, active):
        """Start from a powered-off platform, or (mostly) one already running some guests."""
        self.fw, self.memory = make_firmware(SMALL, MODEL_FRAMES)
        self.platform = PlatformState.UNINIT
        self.guests: dict[int, list] = {}  # handle -> [GuestState, asid, policy]
        self.owner: dict[int, int] = {}  # asid -> handle
        self.dirty: set[int] = set()
        self.next_frame = 0
        if not up:
            return
        self.fw.init()
        self.platform = PlatformState.INIT
        for asid, on in enumerate(active, start=1):
            handle = self.fw.launch_start(0)
            self.guests[handle] = [GuestState.LUPDATE, 0, 0]
            self.platform = PlatformState.WORKING
            if on:
                self.fw.activate(handle, asid)
                self.guests[handle][1] = asid
                self.owner[asid] = handle

    # -- the model's verdicts --------------------------------------------------------------
    def platform_ok(self) -> SevStatus | None:
        return SevStatus.INVALID_PLATFORM_STATE if self.platform is PlatformState.UNINIT else None

    def guest_ok(self, handle: int, state: GuestState | None = None) -> SevStatus | None:
        if self.platform is PlatformState.UNINIT:
            return SevStatus.INVALID_PLATFORM_STATE
        if handle not in self.guests:
            return SevStatus.INVALID_GUEST
        if state is not None and self.guests[handle][0] is not state:
            return SevStatus.INVALID_GUEST_STATE
        return None

    def pick(self, data: st.DataObject) -> int:
        """A live handle most of the time, any small number otherwise."""
        if self.guests and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(sorted(self.guests)))
        return data.draw(st.integers(0, 12))

    def run(self, expected: SevStatus | None, command: Callable[[], object]) -> object:
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None  # CPython keeps frames
        caller = frame.f_back.f_code.co_name  # the rule, for the statistics
        event(f"{caller}: {'ok' if expected is None else expected.name}")
        if expected is None:
            return command()
        refused(self.fw, self.memory, expected, command)
        return None

    # -- platform commands ------------------------------------------------------------------
    @rule()
    def init(self):
        ok = self.platform is PlatformState.UNINIT
        self.run(None if ok else SevStatus.INVALID_PLATFORM_STATE, self.fw.init)
        if ok:
            self.platform = PlatformState.INIT

    @rule(now=st.integers(0, 5))
    def shutdown(self, now):
        if now:  # rarely: SHUTDOWN wipes everything the other rules build up
            return
        expected = self.platform_ok()
        dram = self.memory.read(0, self.memory.size)
        self.run(expected, self.fw.shutdown)
        if expected is None:
            assert self.memory.read(0, self.memory.size) == dram
            assert (self.memory.domain == RAW).all()
            self.platform = PlatformState.UNINIT
            self.guests.clear()
            self.owner.clear()
            self.dirty.clear()

    @rule()
    def df_flush(self):
        expected = self.platform_ok()
        self.run(expected, self.fw.df_flush)
        if expected is None:
            self.dirty.clear()

    # -- guest commands ---------------------------------------------------------------------
    @rule(policy=POLICIES)
    def launch_start(self, policy):
        expected = self.platform_ok()
        if expected is None:
            if not 0 <= policy < 1 << 32 or policy & 0xFFC0:
                expected = SevStatus.INVALID_PARAM
            elif (policy >> 16 & 0xFF, policy >> 24) > (SMALL.api_major, SMALL.api_minor):
                expected = SevStatus.POLICY_FAILURE
        handle = self.run(expected, lambda: self.fw.launch_start(policy))
        if expected is None:
            assert isinstance(handle, int) and handle not in self.guests
            self.guests[handle] = [GuestState.LUPDATE, 0, policy]
            self.platform = PlatformState.WORKING

    @rule(data=st.data(), asid=ASIDS)
    def activate(self, data, asid):
        handle = self.pick(data)
        expected = self.guest_ok(handle)
        if expected is None:
            if self.guests[handle][1]:
                expected = SevStatus.ACTIVE
            elif not 1 <= asid <= SMALL.max_asid:
                expected = SevStatus.INVALID_ASID
            elif asid in self.owner:
                expected = SevStatus.ASID_OWNED
            elif asid in self.dirty:
                expected = SevStatus.DF_FLUSH_REQUIRED
        self.run(expected, lambda: self.fw.activate(handle, asid))
        if expected is None:
            self.guests[handle][1] = asid
            self.owner[asid] = handle

    @rule(data=st.data())
    def deactivate(self, data):
        handle = self.pick(data)
        expected = self.guest_ok(handle)
        if expected is None and not self.guests[handle][1]:
            expected = SevStatus.INACTIVE
        dram = self.memory.read(0, self.memory.size)
        self.run(expected, lambda: self.fw.deactivate(handle))
        if expected is None:
            asid = self.guests[handle][1]
            assert self.memory.read(0, self.memory.size) == dram
            assert not (self.memory.domain == asid).any()
            del self.owner[asid]
            self.dirty.add(asid)
            self.guests[handle][1] = 0

    @rule(data=st.data())
    def decommission(self, data):
        handle = self.pick(data)
        expected = self.guest_ok(handle)
        if expected is None and self.guests[handle][1]:
            expected = SevStatus.ACTIVE
        self.run(expected, lambda: self.fw.decommission(handle))
        if expected is None:
            del self.guests[handle]
            if not self.guests:
                self.platform = PlatformState.INIT

    @rule(data=st.data(), shape=st.sampled_from(["page", "blocks", "unaligned", "outside"]))
    def launch_update_data(self, data, shape):
        handle = self.pick(data)
        expected = self.guest_ok(handle, GuestState.LUPDATE)
        if expected is None and not self.guests[handle][1]:
            expected = SevStatus.INACTIVE
        spa, length = self.next_frame % MODEL_FRAMES * PAGE, PAGE
        if shape == "blocks":
            spa, length = spa + 0x30, 0x120
        elif shape == "unaligned":
            length = PAGE - 4
        elif shape == "outside":
            spa = MODEL_FRAMES * PAGE
        if expected is None and shape == "unaligned":
            expected = SevStatus.INVALID_LENGTH
        if expected is None and shape == "outside":
            expected = SevStatus.INVALID_ADDRESS
        plain = self.memory.read(spa, length) if shape in ("page", "blocks") else b""
        self.run(expected, lambda: self.fw.launch_update_data(handle, spa, length))
        if expected is None:
            self.next_frame += 1
            asid = self.guests[handle][1]
            assert self.memory.domain[spa // PAGE] == asid
            assert self.memory.cells[spa:spa + length].tobytes() == plain
            assert self.memory.read(spa, length) != plain

    @rule(data=st.data())
    def launch_measure(self, data):
        handle = self.pick(data)
        expected = self.guest_ok(handle, GuestState.LUPDATE)
        result = self.run(expected, lambda: self.fw.launch_measure(handle))
        if expected is None:
            assert isinstance(result, LaunchMeasurement) and len(result.to_bytes()) == 48
            self.guests[handle][0] = GuestState.LSECRET

    @rule(data=st.data())
    def launch_finish(self, data):
        handle = self.pick(data)
        expected = self.guest_ok(handle, GuestState.LSECRET)
        self.run(expected, lambda: self.fw.launch_finish(handle))
        if expected is None:
            self.guests[handle][0] = GuestState.RUNNING

    @rule(data=st.data())
    def guest_status(self, data):
        handle = self.pick(data)
        self.run(self.guest_ok(handle), lambda: self.fw.guest_status(handle))

    # -- what must hold after every step -----------------------------------------------------
    @invariant()
    def status_matches_the_model(self):
        status = self.fw.platform_status()
        assert status.state is self.platform
        assert status.guest_count == len(self.guests)
        if self.platform is PlatformState.UNINIT:
            return
        for handle in range(0, 13):
            if handle in self.guests:
                state, asid, policy = self.guests[handle]
                assert self.fw.guest_status(handle) == GuestStatus(handle, policy, asid, state)
            else:
                with pytest.raises(FirmwareError) as info:
                    self.fw.guest_status(handle)
                assert info.value.status is SevStatus.INVALID_GUEST

    @invariant()
    def key_slots_hold_exactly_the_active_guests(self):
        engine = self.memory.engine
        for asid in range(0, SMALL.max_asid + 2):
            assert engine.has_key(asid) == (asid in self.owner)
        used = set(np.unique(self.memory.domain).tolist()) - {RAW}
        assert used <= set(self.owner)


FirmwareModel.TestCase.settings = settings(
    max_examples=120, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_firmware_state_machine = FirmwareModel.TestCase
