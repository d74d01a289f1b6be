"""Moving guests out of the key domain under policy: debug and migration.

DBG_DECRYPT / DBG_ENCRYPT give the hypervisor plaintext of a guest whose owner allowed it
(policy without NODBG). The SEND_* / RECEIVE_* commands move a guest to another platform:
SEND_START checks the target's certificates against the policy and wraps fresh transport
keys (TEK, TIK) to the target's PDH with the guest owner's session construction; each page
leaves the source firmware decrypted with the VM key and re-encrypted under the TEK with a
MAC under the TIK; the target firmware checks every MAC and encrypts the page under a fresh
VM key. Every refused command raises FirmwareError with AMD's status code and changes nothing.

One addition to AMD's legacy API: SEND_FINISH returns a MAC under the TIK over the policy
and every packet MAC in order, and RECEIVE_FINISH checks it, so that a host which drops,
replays or reorders packets is caught (AMD's RECEIVE_FINISH takes only the handle).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidSignature

from sevsim.abi.policy import PolicyFlags, SevPolicy
from sevsim.abi.sev_cert import (
    CertChain,
    EcPublicKey,
    SevCert,
    Usage,
    check_signature,
)
from sevsim.abi.sev_session import (
    PACKET_HEADER_SIZE,
    SESSION_SIZE,
    PacketHeader,
    Session,
    TransportKeys,
    open_packet,
    seal_packet,
)
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.errors import FirmwareError, MemoryAccessError, SevCertFormatError
from sevsim.firmware.amd_root import PRODUCTS, simulated_root
from sevsim.firmware.core import FirmwareCore, GuestContext
from sevsim.hw.chips import GuestMode
from sevsim.hw.cpu import vmsa_seals
from sevsim.hw.engine import BLOCK, PAGE

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset
    from sevsim.hw.memory import MemoryController

MEASURE_SIZE = 32


@dataclass(frozen=True)
class SendStart:
    """SEND_START's output: the guest's policy and the session buffer for RECEIVE_START."""

    policy: int
    session: bytes


@dataclass(frozen=True)
class TransportPacket:
    """What SEND_UPDATE_* writes and RECEIVE_UPDATE_* reads: the 52-byte packet header
    (flags, IV, MAC) and the data encrypted under the TEK."""

    header: bytes
    data: bytes


@dataclass
class _Transfer:
    """A send or receive in progress: its transport keys and the digest of its packet MACs."""

    keys: TransportKeys
    macs: hashlib._Hash = field(default_factory=hashlib.sha256)  # over the MACs so far, in order


def transfer_measure(tik: bytes, policy: int, mac_digest: bytes) -> bytes:
    """SEND_FINISH's value: HMAC-SHA256 under the TIK over LE32(policy) and the digest."""
    return hmac.new(tik, struct.pack("<I", policy) + mac_digest, hashlib.sha256).digest()


class GuestTransport(FirmwareCore):
    """Moving guests out of the key domain under policy: debug and migration."""

    # Provided by PlatformPki, the mixin beside this one in SevFirmware.
    _pdh_shared_x: Callable[[EcPublicKey], bytes]
    _check: Callable[[SevCert, Usage, SevCert], None]
    _parse: Callable[[bytes, str], SevCert]
    pdh_cert_export: Callable[[], tuple[SevCert, CertChain]]

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        super().__init__(chip, memory, seed=seed, vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        self._transfers: dict[int, _Transfer] = {}

    # -- debug ------------------------------------------------------------------------------
    def dbg_decrypt(self, handle: int, src_spa: int, dst_spa: int, length: int) -> None:
        """Decrypt guest memory at `src_spa` with the VM key into host memory at `dst_spa`."""
        ctx = self._debuggable(handle, "DBG_DECRYPT", src_spa, dst_spa, length)
        self._memory.write(dst_spa, self._read_with_key(ctx, src_spa, length))

    def dbg_encrypt(self, handle: int, src_spa: int, dst_spa: int, length: int) -> None:
        """Encrypt host memory at `src_spa` with the VM key into guest memory at `dst_spa`."""
        ctx = self._debuggable(handle, "DBG_ENCRYPT", src_spa, dst_spa, length)
        self._memory.write_domain(dst_spa, self._memory.read(src_spa, length), ctx.asid)

    def _debuggable(self, handle: int, command: str, src_spa: int, dst_spa: int,
                    length: int) -> GuestContext:
        """The checks of both debug commands. They depend on the policy and the key being in
        the memory controller, not on GSTATE: a guest can be debugged in any state."""
        ctx = self._guest(handle, command)
        if PolicyFlags.NODBG in ctx.policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"{command}: guest {handle}'s policy forbids debugging (NODBG)")
        self._check_buffer(ctx, command, src_spa, length)
        self._check_buffer(ctx, command, dst_spa, length)
        return ctx

    # -- send -------------------------------------------------------------------------------
    def send_start(self, handle: int, pdh_cert: bytes, plat_certs: bytes,
                   amd_certs: bytes) -> SendStart:
        """Begin sending a RUNNING guest to the platform whose PDH certificate, chain (PEK, OCA,
        CEK) and AMD certificates (ASK || ARK) are given: NOSEND, the API version, DOMAIN and
        SEV are checked against them, then new transport keys are wrapped to that PDH."""
        ctx = self._guest(handle, "SEND_START", GuestState.RUNNING)
        policy = ctx.policy
        if PolicyFlags.NOSEND in policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"SEND_START: guest {handle}'s policy forbids sending (NOSEND)")
        pdh, chain = self._target_chain(pdh_cert, plat_certs)
        if (policy.api_major, policy.api_minor) > (chain.pek.api_major, chain.pek.api_minor):
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"SEND_START: the policy needs API {policy.api_major}."
                                f"{policy.api_minor}, the target runs {chain.pek.api_major}."
                                f"{chain.pek.api_minor}")
        if PolicyFlags.DOMAIN in policy.flags and (
                chain.oca.to_bytes() != self.pdh_cert_export()[1].oca.to_bytes()):
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                "SEND_START: DOMAIN policy, and the target's OCA is not ours")
        if PolicyFlags.SEV in policy.flags:
            self._check_genuine_amd(chain.cek, amd_certs)
        shared_x = self._pdh_shared_x(pdh)
        keys = TransportKeys(self._trng.random(16), self._trng.random(16))
        session = Session.seal(shared_x, self._trng.random(16), self._trng.random(16), keys,
                               policy.to_int())
        self._forget_stale_transfers()
        self._transfers[handle] = _Transfer(keys)
        ctx.state = GuestState.SUPDATE
        return SendStart(policy.to_int(), session.to_bytes())

    def send_update_data(self, handle: int, spa: int, length: int) -> TransportPacket:
        """Guest memory at [spa, spa+length), decrypted with the VM key, as a packet under
        the transport keys."""
        return self._send(handle, "SEND_UPDATE_DATA", spa, length)

    def send_update_vmsa(self, handle: int, spa: int, length: int) -> TransportPacket:
        """An SEV-ES vCPU's save area (one encrypted page of guest memory) as a packet; a page
        the host changed since the CPU last sealed it is refused (SECURE_DATA_INVALID)."""
        return self._send(handle, "SEND_UPDATE_VMSA", spa, length, vmsa=True)

    def send_finish(self, handle: int) -> bytes:
        """End the send: the guest is SENT and this platform keeps no transport keys. Returns
        the MAC the target's RECEIVE_FINISH checks (see the module docstring)."""
        ctx = self._guest(handle, "SEND_FINISH", GuestState.SUPDATE)
        transfer = self._transfers.pop(handle)
        ctx.state = GuestState.SENT
        return transfer_measure(transfer.keys.tik, ctx.policy.to_int(), transfer.macs.digest())

    def send_cancel(self, handle: int) -> None:
        """Abandon a send before SEND_FINISH: the guest is RUNNING here again."""
        ctx = self._guest(handle, "SEND_CANCEL", GuestState.SUPDATE)
        del self._transfers[handle]
        ctx.state = GuestState.RUNNING

    def _send(self, handle: int, command: str, spa: int, length: int,
              vmsa: bool = False) -> TransportPacket:
        ctx = self._guest(handle, command, GuestState.SUPDATE)
        self._check_buffer(ctx, command, spa, length, vmsa)
        transfer = self._transfers[handle]
        plaintext = self._read_with_key(ctx, spa, length)
        if vmsa and not vmsa_seals(self._memory).check(ctx.asid, spa, plaintext):
            raise FirmwareError(SevStatus.SECURE_DATA_INVALID,
                                f"{command}: the VMSA at 0x{spa:x} fails its integrity check")
        header, data = seal_packet(transfer.keys, self._trng.random(16), plaintext, b"")
        transfer.macs.update(header.mac)
        return TransportPacket(header.to_bytes(), data)

    def _target_chain(self, pdh_cert: bytes, plat_certs: bytes
                      ) -> tuple[EcPublicKey, CertChain]:
        """The target's PDH key and its chain, each link checked: PDH by the PEK, PEK by the
        OCA and the CEK, the OCA by itself."""
        pdh = self._parse(pdh_cert, "PDH")
        pdh_key = _ecdh_key(pdh, "SEND_START")
        try:
            chain = CertChain.from_bytes(plat_certs)
        except SevCertFormatError as err:
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                f"SEND_START: platform certificates: {err}") from None
        for cert, usage in ((chain.pek, Usage.PEK), (chain.oca, Usage.OCA),
                            (chain.cek, Usage.CEK)):
            if cert.usage is not usage:
                raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                    f"SEND_START: a {cert.usage.name} certificate where the "
                                    f"{usage.name} belongs")
        self._check(chain.oca, Usage.OCA, chain.oca)
        self._check(chain.pek, Usage.OCA, chain.oca)
        self._check(chain.pek, Usage.CEK, chain.cek)
        self._check(pdh, Usage.PEK, chain.pek)
        return pdh_key, chain

    @staticmethod
    def _check_genuine_amd(cek: SevCert, amd_certs: bytes) -> None:
        """SEV policy: the target must be an AMD SEV platform, its CEK signed by the ASK of a
        genuine ARK (here sevsim's simulated AMD keys, which this firmware knows)."""
        half = len(amd_certs) // 2
        genuine = {(root.ask.to_bytes(), root.ark.to_bytes()): root.ask
                   for root in map(simulated_root, PRODUCTS)}
        ask = genuine.get((amd_certs[:half], amd_certs[half:]))
        if ask is None:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                "SEND_START: SEV policy, and the target's ASK and ARK are not "
                                "AMD's")
        slot = next((s for s in cek.signatures if s.usage is Usage.ASK), None)
        try:
            if slot is None:
                raise InvalidSignature
            check_signature(cek, slot, ask.to_key())
        except (InvalidSignature, ValueError):
            raise FirmwareError(SevStatus.BAD_SIGNATURE,
                                "SEND_START: the target's CEK is not signed by its ASK") \
                from None

    # -- receive ----------------------------------------------------------------------------
    def receive_start(self, policy: int, pdh_cert: bytes, session: bytes) -> int:
        """A new guest context for an incoming guest: the session (made for our PDH by the
        sender whose PDH certificate is given) yields the transport keys, the guest gets a
        fresh VM key. Returns the handle; the guest is in RUPDATE."""
        self._require_platform((PlatformState.INIT, PlatformState.WORKING), "RECEIVE_START")
        try:
            decoded = SevPolicy.from_int(policy)
        except ValueError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, f"RECEIVE_START: {err}") from None
        if (decoded.api_major, decoded.api_minor) > (self.chip.api_major, self.chip.api_minor):
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"RECEIVE_START: the policy needs API {decoded.api_major}."
                                f"{decoded.api_minor}, firmware is {self.chip.api_major}."
                                f"{self.chip.api_minor}")
        if PolicyFlags.ES in decoded.flags and GuestMode.SEV_ES not in self.chip.modes:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"RECEIVE_START: SEV-ES guest, and {self.chip.name} has no SEV-ES")
        sender = _ecdh_key(self._parse(pdh_cert, "PDH"), "RECEIVE_START")
        if len(session) != SESSION_SIZE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"RECEIVE_START: session of {len(session)} bytes, not "
                                f"{SESSION_SIZE}")
        shared_x = self._pdh_shared_x(sender)
        try:
            keys = Session.from_bytes(session).open(shared_x, policy)
        except ValueError as err:
            raise FirmwareError(SevStatus.BAD_MEASUREMENT, f"RECEIVE_START: {err}") from None
        handle = self._next_handle
        self._next_handle += 1
        self._guests[handle] = GuestContext(handle, decoded, self._trng.random(16), keys.tek,
                                            keys.tik, state=GuestState.RUPDATE)
        self._forget_stale_transfers()
        self._transfers[handle] = _Transfer(keys)
        self._state = PlatformState.WORKING
        return handle

    def receive_update_data(self, handle: int, packet: TransportPacket, spa: int) -> None:
        """Check a packet's MAC, decrypt it, and store it at `spa` under the VM key."""
        self._receive(handle, "RECEIVE_UPDATE_DATA", packet, spa)

    def receive_update_vmsa(self, handle: int, packet: TransportPacket, spa: int) -> None:
        """An SEV-ES vCPU's save area, into its page of guest memory under the VM key, sealed
        for the vCPU's next VMRUN."""
        self._receive(handle, "RECEIVE_UPDATE_VMSA", packet, spa, vmsa=True)

    def receive_finish(self, handle: int, measure: bytes) -> None:
        """Check the sender's SEND_FINISH value against the packets received: the guest is
        RUNNING here. BAD_MEASUREMENT if a packet is missing, extra or out of order."""
        ctx = self._guest(handle, "RECEIVE_FINISH", GuestState.RUPDATE)
        transfer = self._transfers[handle]
        expected = transfer_measure(transfer.keys.tik, ctx.policy.to_int(),
                                    transfer.macs.digest())
        if not hmac.compare_digest(expected, measure):
            raise FirmwareError(SevStatus.BAD_MEASUREMENT,
                                "RECEIVE_FINISH: the packets received are not the packets sent")
        del self._transfers[handle]
        ctx.state = GuestState.RUNNING

    def _receive(self, handle: int, command: str, packet: TransportPacket, spa: int,
                 vmsa: bool = False) -> None:
        ctx = self._guest(handle, command, GuestState.RUPDATE)
        if len(packet.header) != PACKET_HEADER_SIZE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"{command}: packet header of {len(packet.header)} bytes, not "
                                f"{PACKET_HEADER_SIZE}")
        header = PacketHeader.from_bytes(packet.header)
        if header.flags:
            raise FirmwareError(SevStatus.UNSUPPORTED,
                                f"{command}: packet flags 0x{header.flags:x} (compression is "
                                "not supported)")
        self._check_buffer(ctx, command, spa, len(packet.data), vmsa)
        transfer = self._transfers[handle]
        try:
            plaintext = open_packet(transfer.keys, header, packet.data, b"")
        except ValueError as err:
            raise FirmwareError(SevStatus.BAD_MEASUREMENT, f"{command}: {err}") from None
        self._memory.write_domain(spa, plaintext, ctx.asid)
        if vmsa:  # the CPU's first VMRUN of the vCPU checks the page against this
            vmsa_seals(self._memory).seal(ctx.asid, spa, plaintext)
        transfer.macs.update(header.mac)

    # -- shared -----------------------------------------------------------------------------
    def _check_buffer(self, ctx: GuestContext, command: str, spa: int, length: int,
                      vmsa: bool = False) -> None:
        """The key must be in the memory controller, the buffer whole 16-byte blocks in DRAM
        (a VMSA: one page, of an SEV-ES guest)."""
        if vmsa and PolicyFlags.ES not in ctx.policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"{command}: guest {ctx.handle} is not an SEV-ES guest")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, f"{command}: guest {ctx.handle} is not "
                                                    "active")
        unit = PAGE if vmsa else BLOCK
        if spa % unit:
            raise FirmwareError(SevStatus.INVALID_ADDRESS,
                                f"{command}: 0x{spa:x} is not {unit}-byte aligned")
        if length <= 0 or length % BLOCK or (vmsa and length != PAGE):
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"{command}: length 0x{length:x} is not "
                                f"{'one page' if vmsa else 'a positive multiple of 16'}")
        try:
            self._memory.check_range(spa, length)
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, f"{command}: {err}") from None

    def _read_with_key(self, ctx: GuestContext, spa: int, length: int) -> bytes:
        """What the firmware reads through the VM key: DRAM decrypted under it. Frames held
        in the guest's key domain already are that plaintext, on the SoC's side."""
        memory = self._memory
        if (memory.domain[spa // PAGE:(spa + length - 1) // PAGE + 1] == ctx.asid).all():
            return memory.cells[spa:spa + length].tobytes()
        dram = np.frombuffer(memory.read(spa, length), dtype=np.uint8)
        return memory.engine.decrypt_blocks(ctx.asid, spa, dram).tobytes()

    def _forget_stale_transfers(self) -> None:
        """Transfers of guests decommissioned mid-way: their keys go."""
        for handle in self._transfers.keys() - self._guests.keys():
            del self._transfers[handle]


def _ecdh_key(cert: SevCert, command: str) -> EcPublicKey:
    """The point of a PDH certificate (the sender's or the target's)."""
    if cert.usage is not Usage.PDH or cert.algo.is_ecdsa or not isinstance(cert.key,
                                                                          EcPublicKey):
        raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                            f"{command}: a {cert.usage.name} {cert.algo.name} certificate, not "
                            "an ECDH PDH")
    return cert.key
