"""The SEV API command set (AMD 55766) with its platform and guest state machines.

Every refused command raises FirmwareError with AMD's status code and leaves all state as
it was: checks run first, effects after.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sevsim.abi.cpuid import SevFeatures
from sevsim.abi.policy import PolicyFlags, SevPolicy
from sevsim.abi.sev_cert import Algo, Curve, EcPublicKey
from sevsim.abi.sev_session import (
    MEASUREMENT_API_PREFIX,
    PACKET_HEADER_SIZE,
    SESSION_SIZE,
    PacketHeader,
    Session,
    TransportKeys,
    measurement,
    open_packet,
)
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.abi.status import GuestState, PlatformState, PlatformStatus, SevStatus
from sevsim.errors import FirmwareError, MemoryAccessError
from sevsim.firmware.core import (
    FirmwareCore,
    GuestContext,
    GuestStatus,
    LaunchMeasurement,
)
from sevsim.firmware.es import EsLaunch
from sevsim.firmware.snp_guest import SnpGuestRequests
from sevsim.firmware.transport import GuestTransport
from sevsim.hw.engine import BLOCK
from sevsim.hw.trng import Trng

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset, PlatformOptions
    from sevsim.hw.memory import MemoryController

__all__ = ["GuestStatus", "LaunchMeasurement", "PlatformStatus", "SevFirmware",
           "SpKeyDump"]


@dataclass(frozen=True)
class SpKeyDump:
    """What code running on a compromised Secure Processor copies out: the private keys the
    firmware holds, as 48-byte big-endian P-384 scalars (the VCEK's only on SNP parts, for
    the TCB the firmware runs, which is all it can derive)."""

    cek: bytes
    vcek: bytes | None
    tcb: TcbVersion


class SevFirmware(SnpGuestRequests, EsLaunch, GuestTransport, FirmwareCore):
    """The legacy SEV command set of one Secure Processor."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False,
                 vulnerable_rmpocalypse: bool = False, platform: PlatformOptions | None = None,
                 vulnerable_sp_code_exec: bool = False) -> None:
        """`vulnerable_rmpocalypse`: firmware from before the RMPocalypse fix (AMD-SB-3020),
        whose SNP_INIT writes the RMP without flushing the cores' caches first.
        `platform`: how the BIOS set the machine up (the chip preset's by default), which
        PLATFORM_INFO reports; with TSME the Secure Processor draws the TSME key at boot, and
        with the alias check (AMD-SB-3015) SNP_INIT runs it. `vulnerable_sp_code_exec`:
        firmware from before the fixes of Buhren et al. (CCS 2019), whose command parsing
        lets the host run code on the Secure Processor (`sp_exploit`); on SNP parts such
        firmware is older, so it runs (and reports) a TCB with a lower SNP firmware SVN than
        the fixed firmware's."""
        super().__init__(chip, memory, seed=seed, vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        self._rmp_init_flushes = not vulnerable_rmpocalypse
        self._platform = chip.platform_options(platform)
        if self._platform.tsme:
            memory.enable_tsme(Trng(seed, b"tsme " + chip.name.encode()).random(16))
        self.vulnerable_sp_code_exec = vulnerable_sp_code_exec
        if vulnerable_sp_code_exec and self.current_tcb.snp:
            old = replace(self.current_tcb, snp=self.current_tcb.snp - 1)
            self.current_tcb = self.committed_tcb = self.tcb = old

    def sp_exploit(self) -> SpKeyDump:
        """The host's crafted command buffer for the parsing bug of Buhren et al.: firmware
        with the bug runs the payload in it on the Secure Processor, which copies the keys
        the firmware holds out to host memory. Fixed firmware refuses the malformed buffer
        (INVALID_PARAM) and nothing happens."""
        if not self.vulnerable_sp_code_exec:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                "the command buffer is malformed; this firmware checks it")
        cek = self._cek.private_numbers().private_value.to_bytes(48, "big")
        vcek = (self._vcek_key(self.tcb).private_numbers().private_value.to_bytes(48, "big")
                if self.tcb.snp else None)
        return SpKeyDump(cek, vcek, self.tcb)

    # -- platform ---------------------------------------------------------------------------
    def init(self) -> None:
        """INIT: the platform goes from UNINIT to INIT."""
        self._require_platform(PlatformState.UNINIT, "INIT")
        self._state = PlatformState.INIT

    def shutdown(self) -> None:
        """SHUTDOWN: back to UNINIT; every guest and its key are dropped."""
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
        """PLATFORM_STATUS: API version, state, owner, build, guest count."""
        return PlatformStatus(self.chip.api_major, self.chip.api_minor, self._state,
                              int(self.externally_owned), 0, self.chip.build, len(self._guests))

    def df_flush(self) -> None:
        """Flush the data fabric write buffers so deactivated ASIDs may be reused."""
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "DF_FLUSH")
        self._asid_dirty.clear()

    # -- guest launch -----------------------------------------------------------------------
    def launch_start(self, policy: int, gdh_cert: bytes | None = None,
                     session: bytes | None = None, share_with: int = 0) -> int:
        """A new guest context with a fresh VM encryption key; returns its handle.

        With the guest owner's GODH certificate and session buffer (spec-formats.md §9.5) the
        TEK and TIK are the owner's, unwrapped with ECDH(PDH, GODH); without, random ones.
        `share_with` is LAUNCH_START's HANDLE field: the new guest takes that guest's VM key
        instead, which both policies must allow (no NOKS)."""
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "LAUNCH_START")
        try:
            decoded = SevPolicy.from_int(policy)
        except ValueError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
        if (decoded.api_major, decoded.api_minor) > (self.chip.api_major, self.chip.api_minor):
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"policy needs API {decoded.api_major}.{decoded.api_minor}, "
                                f"firmware is {self.chip.api_major}.{self.chip.api_minor}")
        if PolicyFlags.ES in decoded.flags and SevFeatures.SEV_ES not in self.chip.features:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"policy requires SEV-ES, which {self.chip.product} lacks")
        vek = self._trng.random(16)
        if share_with:
            other = self._guest(share_with, "LAUNCH_START")
            if PolicyFlags.NOKS in other.policy.flags | decoded.flags:
                raise FirmwareError(SevStatus.POLICY_FAILURE,
                                    f"key sharing with guest {share_with}: a policy sets NOKS")
            vek = other.vek
        if gdh_cert is None and session is None:
            keys = TransportKeys(self._trng.random(16), self._trng.random(16))
        elif gdh_cert is not None and session is not None:
            keys = self._open_session(policy, gdh_cert, session)
        else:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                "a session needs both the GODH certificate and the session buffer")
        handle = self._next_handle
        self._next_handle += 1
        self._guests[handle] = GuestContext(handle, decoded, vek, keys.tek, keys.tik)
        self._state = PlatformState.WORKING
        return handle

    def _open_session(self, policy: int, gdh_cert: bytes, session: bytes) -> TransportKeys:
        """ECDH with the owner's point, then the session's MACs: the wrapped keys are for
        this PDH, and the policy is the one the owner chose."""
        if len(session) != SESSION_SIZE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"session buffer of {len(session)} bytes, not {SESSION_SIZE}")
        godh = self._parse(gdh_cert, "GODH")
        if (godh.algo not in (Algo.ECDH_SHA256, Algo.ECDH_SHA384)
                or not isinstance(godh.key, EcPublicKey) or godh.key.curve is not Curve.P384):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                "the GODH certificate is not a P-384 ECDH key")
        shared_x = self._pdh_shared_x(godh.key)
        try:
            return Session.from_bytes(session).open(shared_x, policy)
        except ValueError as err:
            raise FirmwareError(SevStatus.BAD_MEASUREMENT, str(err)) from None

    def activate(self, handle: int, asid: int) -> None:
        """Bind a guest to an ASID: its key goes into the memory controller's slot."""
        ctx = self._guest(handle, "ACTIVATE")
        if ctx.asid:
            raise FirmwareError(SevStatus.ACTIVE, f"guest {handle} is already on ASID {ctx.asid}")
        self._bind_asid(asid, range(1, self.chip.max_asid + 1), ctx.vek, handle)
        ctx.asid = asid

    def deactivate(self, handle: int) -> None:
        """DEACTIVATE: the guest's key leaves its ASID's slot."""
        ctx = self._guest(handle, "DEACTIVATE")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, f"guest {handle} is not active")
        self._release_asid(ctx.asid)
        ctx.asid = 0

    def decommission(self, handle: int) -> None:
        """DECOMMISSION: forget the guest; refused while it is active."""
        ctx = self._guest(handle, "DECOMMISSION")
        if ctx.asid:
            raise FirmwareError(SevStatus.ACTIVE, f"guest {handle} is active; DEACTIVATE first")
        del self._guests[handle]
        if not self._guests:
            self._state = PlatformState.INIT

    def guest_status(self, handle: int) -> GuestStatus:
        """GUEST_STATUS: the guest's policy, ASID and state."""
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
        ctx.launch_digest.update(self._encrypt_in_place(ctx, spa, length))

    def launch_measure(self, handle: int) -> LaunchMeasurement:
        """HMAC-SHA256 under the TIK over the launch digest (spec-formats.md §9.6)."""
        ctx = self._guest(handle, "LAUNCH_MEASURE", GuestState.LUPDATE)
        mnonce = self._trng.random(16)
        ctx.measure = self.measurement_mac(ctx.tik, ctx.policy.to_int(),
                                           ctx.launch_digest.digest(), mnonce)
        ctx.state = GuestState.LSECRET
        return LaunchMeasurement(ctx.measure, mnonce)

    def measurement_mac(self, tik: bytes, policy: int, digest: bytes, mnonce: bytes) -> bytes:
        """LAUNCH_MEASURE's HMAC under `tik`, as this firmware computes it."""
        return measurement(tik, (self.chip.api_major, self.chip.api_minor), self.chip.build,
                           policy, digest, mnonce)

    def launch_secret(self, handle: int, header: bytes, guest_paddr: int,
                      ciphertext: bytes) -> None:
        """Inject the owner's secret: check the packet's MAC under the TIK (over the
        measurement too, from API 0.17), decrypt it with the TEK and write the plaintext at
        guest_paddr (a host physical address in the guest's memory) under the VM's key."""
        ctx = self._guest(handle, "LAUNCH_SECRET", GuestState.LSECRET)
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, "ACTIVATE the guest before LAUNCH_SECRET")
        if len(header) != PACKET_HEADER_SIZE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"packet header of {len(header)} bytes, not {PACKET_HEADER_SIZE}")
        parsed = PacketHeader.from_bytes(header)
        if parsed.flags:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                f"packet flags 0x{parsed.flags:x}: compression is not supported")
        if not ciphertext or len(ciphertext) % BLOCK or guest_paddr % BLOCK:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"0x{guest_paddr:x}+0x{len(ciphertext):x} is not 16-byte aligned "
                                "and non-empty")
        try:
            self._memory.check_range(guest_paddr, len(ciphertext))
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, str(err)) from None
        api = (self.chip.api_major, self.chip.api_minor)
        try:
            plaintext = open_packet(TransportKeys(ctx.tek, ctx.tik), parsed, ciphertext,
                                    ctx.measure if api >= MEASUREMENT_API_PREFIX else b"")
        except ValueError as err:
            raise FirmwareError(SevStatus.BAD_MEASUREMENT, str(err)) from None
        self._memory.write_domain(guest_paddr, plaintext, ctx.asid)

    def launch_finish(self, handle: int) -> None:
        """LAUNCH_FINISH: the launch is over and the guest may run."""
        ctx = self._guest(handle, "LAUNCH_FINISH", GuestState.LSECRET)
        ctx.state = GuestState.RUNNING
