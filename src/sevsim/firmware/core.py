"""State and checks shared by every part of the Secure Processor's SEV command set.

The commands live in mixins by area (sev.py: platform and launch; pki.py: the platform's
certificate chain; es.py: SEV-ES; transport.py: debug and migration), all on this state.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from sevsim.abi.policy import SevPolicy
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.errors import FirmwareError, MemoryAccessError
from sevsim.hw.chips import ChipPreset
from sevsim.hw.memory import MemoryController
from sevsim.hw.trng import Trng


@dataclass(frozen=True)
class GuestStatus:
    """GUEST_STATUS output: handle's policy, ASID and state (16 bytes)."""

    handle: int
    policy: int
    asid: int
    state: GuestState

    def to_bytes(self) -> bytes:
        """GUEST_STATUS's output buffer."""
        return struct.pack("<IIIB3x", self.handle, self.policy, self.asid, self.state)


@dataclass(frozen=True)
class LaunchMeasurement:
    """LAUNCH_MEASURE output: HMAC over the launch digest, and the nonce in it (48 bytes)."""

    measure: bytes
    mnonce: bytes

    def to_bytes(self) -> bytes:
        """LAUNCH_MEASURE's output: the measurement, then the nonce."""
        return self.measure + self.mnonce


@dataclass
class GuestContext:
    """One guest as the firmware keeps it; its keys never leave the firmware."""

    handle: int
    policy: SevPolicy
    vek: bytes = field(repr=False)
    tek: bytes = field(repr=False)
    tik: bytes = field(repr=False)
    state: GuestState = GuestState.LUPDATE
    asid: int = 0
    launch_digest: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)
    measure: bytes = field(default=b"", repr=False)  # LAUNCH_MEASURE's, for LAUNCH_SECRET


class FirmwareCore:
    """Platform state, guest contexts and ASID bookkeeping of one Secure Processor."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        self.chip = chip
        self._trng = Trng(seed, b"secure processor " + chip.name.encode())
        # Firmware before the fix for CVE-2019-9836 (0.17 build 11 and earlier) did not
        # check that the owner's ECDH point lies on the curve.
        self.vulnerable_cve_2019_9836 = vulnerable_cve_2019_9836
        self._memory = memory
        self._state = PlatformState.UNINIT
        self._guests: dict[int, GuestContext] = {}
        self._next_handle = 1
        self._asid_owner: dict[int, int] = {}  # ASID -> handle of the guest activated on it
        self._asid_dirty: set[int] = set()  # deactivated, caches not flushed (DF_FLUSH)

    def _bind_asid(self, asid: int, asids: range, key: bytes, owner: int) -> None:
        """ACTIVATE / SNP_ACTIVATE: the key goes into the ASID's slot, if the ASID is in the
        range the guest type may use, nobody holds it and its caches were flushed since."""
        if asid not in asids:
            raise FirmwareError(SevStatus.INVALID_ASID,
                                f"ASID {asid} outside {asids.start}..{asids.stop - 1}")
        if asid in self._asid_owner:
            raise FirmwareError(SevStatus.ASID_OWNED,
                                f"ASID {asid} belongs to guest {self._asid_owner[asid]}")
        if asid in self._asid_dirty:
            raise FirmwareError(SevStatus.DF_FLUSH_REQUIRED,
                                f"ASID {asid} was released; DF_FLUSH before reuse")
        self._memory.engine.load_key(asid, key)
        self._asid_owner[asid] = owner

    def _release_asid(self, asid: int) -> None:
        """DEACTIVATE / SNP_DECOMMISSION: the key leaves its slot (the frames fall back to the
        DRAM bytes they hold) and the ASID waits for DF_FLUSH."""
        self._memory.unload_domain(asid)
        self._memory.engine.unload_key(asid)
        del self._asid_owner[asid]
        self._asid_dirty.add(asid)

    def _encrypt_in_place(self, ctx: GuestContext, spa: int, length: int) -> bytes:
        """LAUNCH_UPDATE_*: encrypt [spa, spa+length) under the guest's key; returns what DRAM
        held (what gets measured). INVALID_ADDRESS outside DRAM, or where the RMP gives the
        frame to someone else."""
        try:
            self._memory.check_range(spa, length)
            plaintext = self._memory.read(spa, length)
            self._memory.encrypt_in_place(spa, length, ctx.asid)
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, str(err)) from None
        return plaintext

    # -- checks -----------------------------------------------------------------------------
    def _require_platform(self, allowed: PlatformState | tuple[PlatformState, ...],
                          command: str) -> None:
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if self._state not in allowed:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE,
                                f"{command} needs platform state "
                                f"{'/'.join(s.name for s in allowed)}, it is {self._state.name}")

    def _guest(self, handle: int, command: str,
               state: GuestState | None = None) -> GuestContext:
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
