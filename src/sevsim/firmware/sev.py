"""The SEV API command set (AMD 55766) with its platform and guest state machines.

Every refused command raises FirmwareError with AMD's status code and leaves all state as
it was: checks run first, effects after.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from sevsim.abi.policy import PolicyFlags, SevPolicy
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.errors import FirmwareError, MemoryAccessError
from sevsim.hw.chips import ChipPreset
from sevsim.hw.engine import BLOCK
from sevsim.hw.memory import MemoryController


@dataclass(frozen=True)
class PlatformStatus:
    """PLATFORM_STATUS output, 12 bytes as sev-tool's sev_platform_status."""

    api_major: int
    api_minor: int
    state: PlatformState
    owner: int
    config: int
    build: int
    guest_count: int

    def to_bytes(self) -> bytes:
        return struct.pack("<BBBBHBBI", self.api_major, self.api_minor, self.state, self.owner,
                           self.config, 0, self.build, self.guest_count)


@dataclass(frozen=True)
class GuestStatus:
    """GUEST_STATUS output: handle's policy, ASID and state (16 bytes)."""

    handle: int
    policy: int
    asid: int
    state: GuestState

    def to_bytes(self) -> bytes:
        return struct.pack("<IIIB3x", self.handle, self.policy, self.asid, self.state)


@dataclass(frozen=True)
class LaunchMeasurement:
    """LAUNCH_MEASURE output: HMAC over the launch digest, and the nonce in it (48 bytes)."""

    measure: bytes
    mnonce: bytes

    def to_bytes(self) -> bytes:
        return self.measure + self.mnonce


@dataclass
class _GuestContext:
    handle: int
    policy: SevPolicy
    vek: bytes = field(repr=False)
    tek: bytes = field(repr=False)
    tik: bytes = field(repr=False)
    state: GuestState = GuestState.LUPDATE
    asid: int = 0
    launch_digest: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)


class SevFirmware:
    """The legacy SEV command set of one Secure Processor."""

    def __init__(self, chip: ChipPreset, memory: MemoryController) -> None:
        self.chip = chip
        self._memory = memory
        self._state = PlatformState.UNINIT
        self._guests: dict[int, _GuestContext] = {}
        self._next_handle = 1
        self._asid_owner: dict[int, int] = {}  # ASID -> handle of the guest activated on it
        self._asid_dirty: set[int] = set()  # deactivated, caches not flushed (DF_FLUSH)

    # -- platform ---------------------------------------------------------------------------
    def init(self) -> None:
        self._require_platform(PlatformState.UNINIT, "INIT")
        self._state = PlatformState.INIT

    def shutdown(self) -> None:
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "SHUTDOWN")
        for ctx in list(self._guests.values()):
            if ctx.asid:
                self._memory.unload_domain(ctx.asid)
                self._memory.engine.unload_key(ctx.asid)
        self._guests.clear()
        self._asid_owner.clear()
        self._asid_dirty.clear()
        self._state = PlatformState.UNINIT

    def platform_status(self) -> PlatformStatus:
        return PlatformStatus(self.chip.api_major, self.chip.api_minor, self._state, 0, 0,
                              self.chip.build, len(self._guests))

    def df_flush(self) -> None:
        """Flush the data fabric write buffers so deactivated ASIDs may be reused."""
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "DF_FLUSH")
        self._asid_dirty.clear()

    # -- guest launch -----------------------------------------------------------------------
    def launch_start(self, policy: int) -> int:
        """A new guest context with a fresh VM encryption key; returns its handle."""
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "LAUNCH_START")
        try:
            decoded = SevPolicy.from_int(policy)
        except ValueError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
        if (decoded.api_major, decoded.api_minor) > (self.chip.api_major, self.chip.api_minor):
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"policy needs API {decoded.api_major}.{decoded.api_minor}, "
                                f"firmware is {self.chip.api_major}.{self.chip.api_minor}")
        if PolicyFlags.ES in decoded.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                "policy requires SEV-ES; launch it with LAUNCH_UPDATE_VMSA")
        handle = self._next_handle
        self._next_handle += 1
        self._guests[handle] = _GuestContext(handle, decoded, os.urandom(16), os.urandom(16),
                                             os.urandom(16))
        self._state = PlatformState.WORKING
        return handle

    def activate(self, handle: int, asid: int) -> None:
        """Bind a guest to an ASID: its key goes into the memory controller's slot."""
        ctx = self._guest(handle, "ACTIVATE")
        if ctx.asid:
            raise FirmwareError(SevStatus.ACTIVE, f"guest {handle} is already on ASID {ctx.asid}")
        if asid not in range(1, self.chip.max_asid + 1):
            raise FirmwareError(SevStatus.INVALID_ASID,
                                f"ASID {asid} outside 1..{self.chip.max_asid}")
        if asid in self._asid_owner:
            raise FirmwareError(SevStatus.ASID_OWNED,
                                f"ASID {asid} belongs to guest {self._asid_owner[asid]}")
        if asid in self._asid_dirty:
            raise FirmwareError(SevStatus.DF_FLUSH_REQUIRED,
                                f"ASID {asid} was deactivated; DF_FLUSH before reuse")
        self._memory.engine.load_key(asid, ctx.vek)
        ctx.asid = asid
        self._asid_owner[asid] = handle

    def deactivate(self, handle: int) -> None:
        ctx = self._guest(handle, "DEACTIVATE")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, f"guest {handle} is not active")
        self._memory.unload_domain(ctx.asid)
        self._memory.engine.unload_key(ctx.asid)
        del self._asid_owner[ctx.asid]
        self._asid_dirty.add(ctx.asid)
        ctx.asid = 0

    def decommission(self, handle: int) -> None:
        ctx = self._guest(handle, "DECOMMISSION")
        if ctx.asid:
            raise FirmwareError(SevStatus.ACTIVE, f"guest {handle} is active; DEACTIVATE first")
        del self._guests[handle]
        if not self._guests:
            self._state = PlatformState.INIT

    def guest_status(self, handle: int) -> GuestStatus:
        ctx = self._guest(handle, "GUEST_STATUS")
        return GuestStatus(handle, ctx.policy.to_int(), ctx.asid, ctx.state)

    def launch_update_data(self, handle: int, spa: int, length: int) -> None:
        """Encrypt [spa, spa+length) in place with the guest's key and extend the digest."""
        ctx = self._guest(handle, "LAUNCH_UPDATE_DATA", GuestState.LUPDATE)
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, "ACTIVATE the guest before LAUNCH_UPDATE_DATA")
        if length <= 0 or length % BLOCK or spa % BLOCK:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"0x{spa:x}+0x{length:x} is not 16-byte aligned and non-empty")
        try:
            self._memory.check_range(spa, length)
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, str(err)) from None
        plaintext = self._memory.read(spa, length)  # what DRAM holds is what gets encrypted
        try:
            self._memory.encrypt_in_place(spa, length, ctx.asid)
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, str(err)) from None
        ctx.launch_digest.update(plaintext)

    def launch_measure(self, handle: int) -> LaunchMeasurement:
        """HMAC-SHA256 under the TIK over the launch digest (spec-formats.md §9.6)."""
        ctx = self._guest(handle, "LAUNCH_MEASURE", GuestState.LUPDATE)
        mnonce = os.urandom(16)
        measure = self.measurement_mac(ctx.tik, ctx.policy.to_int(),
                                       ctx.launch_digest.digest(), mnonce)
        ctx.state = GuestState.LSECRET
        return LaunchMeasurement(measure, mnonce)

    def measurement_mac(self, tik: bytes, policy: int, digest: bytes, mnonce: bytes) -> bytes:
        prefix = b""
        if (self.chip.api_major, self.chip.api_minor) >= (0, 17):
            prefix = bytes((0x04, self.chip.api_major, self.chip.api_minor, self.chip.build))
        message = prefix + struct.pack("<I", policy) + digest + mnonce
        return hmac.new(tik, message, hashlib.sha256).digest()

    def launch_finish(self, handle: int) -> None:
        ctx = self._guest(handle, "LAUNCH_FINISH", GuestState.LSECRET)
        ctx.state = GuestState.RUNNING

    # -- checks -----------------------------------------------------------------------------
    def _require_platform(self, allowed: PlatformState | tuple[PlatformState, ...],
                          command: str) -> None:
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if self._state not in allowed:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE,
                                f"{command} needs platform state "
                                f"{'/'.join(s.name for s in allowed)}, it is {self._state.name}")

    def _guest(self, handle: int, command: str,
               state: GuestState | None = None) -> _GuestContext:
        if self._state is PlatformState.UNINIT:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE,
                                f"{command}: the platform is not initialised")
        ctx = self._guests.get(handle)
        if ctx is None:
            raise FirmwareError(SevStatus.INVALID_GUEST,
                                f"{command}: no guest with handle {handle}")
        if state is not None and ctx.state is not state:
            raise FirmwareError(SevStatus.INVALID_GUEST_STATE,
                                f"{command} needs guest state {state.name}, "
                                f"guest {handle} is {ctx.state.name}")
        return ctx
