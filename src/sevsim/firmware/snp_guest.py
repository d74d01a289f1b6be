"""SNP_GUEST_REQUEST: the guest's AES-256-GCM messages to the firmware (spec-formats.md §7).

The hypervisor only carries the encrypted pages; the firmware opens them with the VMPCK the
header names, insists on the next sequence number for that key (so a replayed or reordered
message fails), and answers MSG_REPORT_REQ with an ATTESTATION_REPORT signed by the VCEK of the
reported TCB, and MSG_KEY_REQ with a key derived from the chip or the VM and the fields the
guest selects. AMD's derivations are not public; sevsim's use the same inputs, so the same
launch gives the same key and another measurement another key.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import TYPE_CHECKING

from sevsim.abi.sev_session import kdf
from sevsim.abi.snp_guest_msg import (
    GuestFieldSelect,
    KeyRequest,
    KeyResponse,
    MessageHeader,
    MsgType,
    ReportRequest,
    RootKey,
    open_message,
    seal_message,
)
from sevsim.abi.snp_report import OFFSETS, AttestationReport, ReportResponse, SignerInfo
from sevsim.abi.snp_tcb import Generation, PlatformInfo, SigningKey, TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.errors import FirmwareError, SnpFormatError
from sevsim.firmware.snp import SnpFirmware, SnpGuestContext, SnpGuestState
from sevsim.firmware.snp_pki import SnpPki

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset
    from sevsim.hw.memory import MemoryController

# The TCB each generation reports until TCB updates are modelled (values seen on real parts).
DEFAULT_TCB = {Generation.MILAN: TcbVersion(3, 0, 8, 115),
               Generation.GENOA: TcbVersion(7, 0, 14, 72),
               Generation.TURIN: TcbVersion(1, 0, 3, 72, fmc=2)}
REPORT_VERSION = {Generation.MILAN: 3, Generation.GENOA: 3, Generation.TURIN: 5}


class SnpGuestRequests(SnpPki, SnpFirmware):
    """MSG_REPORT_REQ and MSG_KEY_REQ, with per-VMPCK sequence numbers, and the platform's
    three TCBs: CURRENT (the firmware installed), COMMITTED (the floor a rollback may not go
    below, raised by SNP_COMMIT) and REPORTED (what SNP_CONFIG says reports carry and which
    VCEK signs them; at most CURRENT, so a host can hide an update, not invent one)."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        super().__init__(chip, memory, seed=seed, vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        # chips without SNP (Naples, Rome) keep an all-zero TCB nothing ever reports
        generation = _generation(self.chip.product)
        self.current_tcb = self.committed_tcb = self.tcb = (
            DEFAULT_TCB[generation] if generation else TcbVersion(0, 0, 0, 0))

    # -- TCB ---------------------------------------------------------------------------------
    def install_firmware(self, tcb: TcbVersion) -> None:
        """DOWNLOAD_FIRMWARE(_EX): a new CURRENT TCB, never below COMMITTED (anti-rollback);
        REPORTED follows CURRENT."""
        if _above(self.committed_tcb, tcb):
            raise FirmwareError(SevStatus.INVALID_CONFIG,
                                f"firmware TCB {tcb} is below the committed {self.committed_tcb}")
        self.current_tcb = self.tcb = tcb

    def snp_commit(self) -> None:
        """SNP_COMMIT: the current TCB becomes the floor."""
        self.committed_tcb = self.current_tcb

    def snp_config(self, reported_tcb: TcbVersion) -> None:
        """SNP_CONFIG: the TCB reports carry (and whose VCEK signs them), at most CURRENT."""
        if _above(reported_tcb, self.current_tcb):
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                f"reported TCB {reported_tcb} is above the current "
                                f"{self.current_tcb}")
        self.tcb = reported_tcb

    def snp_guest_request(self, gctx: int, request: bytes) -> bytes:
        """Open a guest's message, act on it, and return the sealed response message. The
        firmware knows the sender's VMPL only by its key: VMPCKn speaks for VMPL n, so a
        report or key it asks for may name VMPL n or a less privileged one, never VMPL < n."""
        ctx = self._snp_context(gctx, "SNP_GUEST_REQUEST", SnpGuestState.RUNNING)
        try:
            header = MessageHeader.from_bytes(request)
            if header.vmpck >= len(ctx.vmpcks):
                raise FirmwareError(SevStatus.INVALID_PARAM, f"no VMPCK{header.vmpck}")
            key = ctx.vmpcks[header.vmpck]
            header, payload = open_message(key, request)
        except SnpFormatError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, f"guest message: {err}") from None
        expected = ctx.next_seqno[header.vmpck]
        if header.seqno != expected:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                f"sequence number {header.seqno}, expected {expected}: a replay "
                                "or a lost message")
        try:
            if header.msg_type is MsgType.REPORT_REQ:
                answer = self._report(ctx, ReportRequest.from_bytes(payload), header.vmpck)
            elif header.msg_type is MsgType.KEY_REQ:
                answer = self._derived_key(ctx, KeyRequest.from_bytes(payload), header.vmpck)
            else:
                raise FirmwareError(SevStatus.INVALID_PARAM,
                                    f"{header.msg_type.name} is not a request sevsim serves")
        except SnpFormatError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, f"guest message: {err}") from None
        ctx.next_seqno[header.vmpck] = header.seqno + 2  # the response used +1
        return seal_message(key, header.msg_type.response, header.seqno + 1, answer,
                            vmpck=header.vmpck, msg_version=header.msg_version)

    # -- reports -----------------------------------------------------------------------------
    def _attestation_report(self, ctx: SnpGuestContext, report_data: bytes, vmpl: int) -> bytes:
        """The signed ATTESTATION_REPORT of a guest (0x4A0 bytes), as MSG_REPORT_REQ returns
        it: the guest's fixed report, with this request's REPORT_DATA and VMPL, signed."""
        state = (self.tcb, self.current_tcb, self.committed_tcb, self.vlek_loaded)
        templates = ctx.report_templates
        if state not in templates:
            templates[state] = self._unsigned_report(ctx).to_bytes()
        blob = bytearray(templates[state])
        for name, value in (("report_data", report_data), ("vmpl", vmpl.to_bytes(4, "little"))):
            offset, size = OFFSETS[name]
            if len(value) != size:
                raise FirmwareError(SevStatus.INVALID_PARAM, f"{name} is not {size} bytes")
            blob[offset:offset + size] = value
        return self._sign_report(blob, self.tcb)

    def _platform_info(self) -> PlatformInfo:
        """PLATFORM_INFO: the platform's settings (SMT, TSME, ECC, RAPL disabled),
        ciphertext hiding as SNP_INIT_EX enabled it, and the DRAM alias check when the boot
        firmware ran it (SNP_INIT only succeeds if it passed)."""
        platform = self.platform
        info = PlatformInfo(0)
        for on, bit in ((platform.smt, PlatformInfo.SMT_EN), (platform.tsme, PlatformInfo.TSME_EN),
                        (platform.ecc, PlatformInfo.ECC_EN),
                        (platform.rapl_disabled, PlatformInfo.RAPL_DIS),
                        (bool(self._memory.hidden_asids), PlatformInfo.CIPHERTEXT_HIDING_EN),
                        (platform.alias_check, PlatformInfo.ALIAS_CHECK_COMPLETE)):
            if on:
                info |= bit
        return info

    def _unsigned_report(self, ctx: SnpGuestContext) -> AttestationReport:
        generation = Generation(self.chip.product)
        tcb, current = self.tcb.to_int(), self.current_tcb.to_int()
        block = ctx.id_block
        return AttestationReport(
            version=REPORT_VERSION[generation],
            guest_svn=block.guest_svn if block else 0,
            policy=ctx.policy.to_int(),
            family_id=block.family_id if block else bytes(16),
            image_id=block.image_id if block else bytes(16),
            current_tcb=current,
            platform_info=int(self._platform_info()),
            signer_info=SignerInfo(author_key_en=any(ctx.author_key_digest),
                                   signing_key=SigningKey.VLEK if self.vlek_loaded
                                   else SigningKey.VCEK),
            measurement=ctx.launch_digest,
            host_data=ctx.host_data,
            id_key_digest=ctx.id_key_digest,
            author_key_digest=ctx.author_key_digest,
            report_id=kdf(self._chip_secret, b"sevsim REPORT_ID", ctx.vek, 32),
            reported_tcb=tcb,
            cpuid_fam_id=self.chip.family,
            cpuid_mod_id=self.chip.model,
            cpuid_step=self.chip.stepping,
            chip_id=bytes(64) if self.vlek_loaded else self.chip_id(),  # a VLEK names no chip
            committed_tcb=self.committed_tcb.to_int(),
            current_build=self.chip.build, current_minor=self.chip.api_minor,
            current_major=self.chip.api_major,
            committed_build=self.chip.build, committed_minor=self.chip.api_minor,
            committed_major=self.chip.api_major,
            launch_tcb=current,
        )

    def _report(self, ctx: SnpGuestContext, request: ReportRequest, caller_vmpl: int) -> bytes:
        if request.vmpl < caller_vmpl:
            return ReportResponse(int(SevStatus.INVALID_PARAM)).to_bytes()
        report = self._attestation_report(ctx, request.report_data, request.vmpl)
        return ReportResponse(0, report).to_bytes()

    # -- derived keys ------------------------------------------------------------------------
    def _derived_key(self, ctx: SnpGuestContext, request: KeyRequest, caller_vmpl: int) -> bytes:
        """Same request and same launch, same key: the root (chip or VM) and every selected
        field go into the derivation; refused when asking above what the guest has."""
        svn = ctx.id_block.guest_svn if ctx.id_block else 0
        tcb = TcbVersion.from_int(request.tcb_version, Generation(self.chip.product)) \
            if request.tcb_version else self.tcb
        if (request.vmpl < caller_vmpl or request.guest_svn > svn
                or _above(tcb, self.tcb)):
            return KeyResponse(int(SevStatus.INVALID_PARAM)).to_bytes()
        root = (kdf(self._chip_secret, b"sevsim VCEK root", self.tcb.to_bytes(), 48)
                if request.root_key is RootKey.VCEK
                else kdf(ctx.vek, b"sevsim VMRK", b"", 48))
        select = request.guest_field_select
        block = ctx.id_block
        fields = [struct.pack("<QIIQQ", int(select), request.vmpl, request.guest_svn,
                              tcb.to_int() if GuestFieldSelect.TCB_VERSION in select else 0,
                              request.launch_mit_vector)]
        selectable = (
            (GuestFieldSelect.GUEST_POLICY, ctx.policy.to_int().to_bytes(8, "little")),
            (GuestFieldSelect.IMAGE_ID, block.image_id if block else bytes(16)),
            (GuestFieldSelect.FAMILY_ID, block.family_id if block else bytes(16)),
            (GuestFieldSelect.MEASUREMENT, ctx.launch_digest))
        for flag, value in selectable:
            if flag in select:
                fields.append(value)
        key = hmac.new(root, b"sevsim derived key\0" + b"".join(fields), hashlib.sha384)
        return KeyResponse(0, key.digest()[:32]).to_bytes()


def _generation(product: str) -> Generation | None:
    try:
        return Generation(product)
    except ValueError:
        return None


def _above(asked: TcbVersion, current: TcbVersion) -> bool:
    """A TCB component higher than the platform's (a key for a future TCB is refused)."""
    pairs = [(asked.bootloader, current.bootloader), (asked.tee, current.tee),
             (asked.snp, current.snp), (asked.microcode, current.microcode),
             (asked.fmc or 0, current.fmc or 0)]
    return any(a > c for a, c in pairs)

