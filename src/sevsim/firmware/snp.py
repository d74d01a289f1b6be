"""The SEV-SNP command set: platform init, guest contexts, the SNP launch, decommission.

An SNP guest is named by its guest context page (GCTX), a host page the firmware takes over
(the RMP makes it a firmware page). Launched pages must have been assigned to the guest by the
hypervisor (RMPUPDATE, unvalidated) at the GPA the firmware reads from the RMP; SNP_LAUNCH_UPDATE
encrypts them, validates them and chains PAGE_INFO into the launch digest
(spec-formats.md §6.1, abi/snp_launch.py). SNP_LAUNCH_FINISH checks an optional ID block
and its ID_AUTH_INFO signatures. SNP_DBG_DECRYPT / SNP_DBG_ENCRYPT move one page between a
guest and the hypervisor through the guest's key when its policy has DEBUG; SNP_SHUTDOWN(_EX)
returns the platform to UNINIT once no guest context is left. As everywhere in the firmware,
checks run first and a refused command (FirmwareError with AMD's status) changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sevsim.abi.cpuid import SevFeatures, parse_cpuid_page
from sevsim.abi.rmp import PAGE_4K
from sevsim.abi.snp_idblock import IdAuthInfo, IdBlock, verify_id_block
from sevsim.abi.snp_launch import DIGEST_SIZE, INITIAL_DIGEST, VMSA_GPA, PageType, update_digest
from sevsim.abi.snp_tcb import PolicyFlags, SnpPolicy, TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.abi.vmsa import SEV_FEATURES_SNP, Vmsa
from sevsim.errors import (
    FirmwareError,
    FormatError,
    LaunchFormatError,
    MemoryAccessError,
    TcbFormatError,
)
from sevsim.firmware.core import FirmwareCore
from sevsim.hw.cpu import vmsa_seals
from sevsim.hw.engine import PAGE

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset, PlatformOptions
    from sevsim.hw.memory import MemoryController

SECRETS_VERSION = 2  # the layout of spec-formats.md §7.3
VMPCK_SIZE = 32
_VMPCK_OFFSET = 0x20
_GOSVW_OFFSET = 0x10
_SNP_STATUS = struct.Struct("<BBBBIIIQQ")


class SnpPlatformState(IntEnum):
    """The SNP platform state SNP_PLATFORM_STATUS reports."""

    UNINIT = 0
    INIT = 1


class SnpGuestState(IntEnum):
    """An SNP guest's state: GCTX_CREATE, LAUNCH_START, LAUNCH_FINISH."""

    INIT = 0
    LAUNCH = 1
    RUNNING = 2


class SnpStatusFlags(IntFlag):
    """The u32 at offset 0x08 of SNP_PLATFORM_STATUS (Linux sev_user_data_snp_status)."""

    MASK_CHIP_ID = 1 << 0  # SNP_CONFIG: reports carry no CHIP_ID
    MASK_CHIP_KEY = 1 << 1  # SNP_CONFIG: reports are not signed
    VLEK_EN = 1 << 2  # a VLEK hashstick is loaded (SNP_VLEK_LOAD)
    FEATURE_INFO = 1 << 3  # SNP_FEATURE_INFO is available
    RAPL_DIS = 1 << 4
    CIPHERTEXT_HIDING_CAP = 1 << 5
    CIPHERTEXT_HIDING_EN = 1 << 6


_STATUS_FLAGS_MASK = 0x7F
NO_STATUS_FLAGS = SnpStatusFlags(0)


@dataclass(frozen=True)
class SnpPlatformStatus:
    """SNP_PLATFORM_STATUS output, 0x20 bytes as Linux's sev_user_data_snp_status:

    | off | size | field |
    |---|---|---|
    | 0x00 | 1 | API_MAJOR |
    | 0x01 | 1 | API_MINOR |
    | 0x02 | 1 | STATE (0 UNINIT, 1 INIT) |
    | 0x03 | 1 | bit 0: IS_RMP_INITIALIZED (bits 7:1 reserved) |
    | 0x04 | 4 | BUILD_ID |
    | 0x08 | 4 | flags (SnpStatusFlags; bits 31:7 reserved) |
    | 0x0C | 4 | GUEST_COUNT |
    | 0x10 | 8 | CURRENT_TCB_VERSION |
    | 0x18 | 8 | REPORTED_TCB_VERSION |

    A host tool reads the TCBs here to fetch the VCEK its guests' reports are signed with."""

    api_major: int
    api_minor: int
    state: SnpPlatformState
    rmp_initialized: bool
    build: int
    guest_count: int
    current_tcb: int = 0
    reported_tcb: int = 0
    flags: SnpStatusFlags = NO_STATUS_FLAGS

    SIZE = _SNP_STATUS.size

    def to_bytes(self) -> bytes:
        """SNP_PLATFORM_STATUS's output buffer."""
        return _SNP_STATUS.pack(self.api_major, self.api_minor, self.state,
                                int(self.rmp_initialized), self.build, int(self.flags),
                                self.guest_count, self.current_tcb, self.reported_tcb)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SnpPlatformStatus:
        """Strict: the length, a known state and clear reserved bits."""
        if len(blob) != _SNP_STATUS.size:
            raise FormatError(f"SNP_PLATFORM_STATUS is {_SNP_STATUS.size} bytes, not {len(blob)}")
        (major, minor, state, rmp, build, flags, count, current,
         reported) = _SNP_STATUS.unpack(blob)
        if state not in SnpPlatformState.__members__.values():
            raise FormatError(f"SNP platform state {state} is not one AMD defines")
        if rmp & ~1 or flags & ~_STATUS_FLAGS_MASK:
            raise FormatError("SNP_PLATFORM_STATUS sets reserved bits")
        return cls(major, minor, SnpPlatformState(state), bool(rmp), build, count, current,
                   reported, SnpStatusFlags(flags))


@dataclass(frozen=True)
class SnpGuestStatus:
    """SNP_GUEST_STATUS output: the guest's policy, ASID and state."""

    policy: int
    asid: int
    state: SnpGuestState


@dataclass
class SnpGuestContext:
    """One SNP guest as the firmware keeps it (in its GCTX page, out of everyone's reach)."""

    gctx: int
    state: SnpGuestState = SnpGuestState.INIT
    policy: SnpPolicy = field(default_factory=SnpPolicy)
    vek: bytes = field(default=b"", repr=False)
    vmpcks: tuple[bytes, ...] = field(default=(), repr=False)
    gosvw: bytes = bytes(16)
    asid: int = 0
    launch_digest: bytes = INITIAL_DIGEST
    host_data: bytes = bytes(32)
    # from SNP_LAUNCH_FINISH's ID block, for the reports: zero without one
    id_block: IdBlock | None = None
    id_key_digest: bytes = bytes(DIGEST_SIZE)
    author_key_digest: bytes = bytes(DIGEST_SIZE)
    # the next sequence number each VMPCK's request must carry (AMD's MSG_COUNT0-3)
    next_seqno: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    # unsigned reports by platform TCB state, built and checked once each
    report_templates: dict[tuple[object, ...], bytes] = field(default_factory=dict, repr=False)
    # pages swapped out and not yet back, by sequence number: a swap-in is good once
    swapped: set[int] = field(default_factory=set)
    swap_count: int = 0


_MDATA = struct.Struct("<12s16sQ?4sQ15x")


@dataclass(frozen=True)
class MdataEntry:
    """The metadata of a swapped-out page, 64 bytes the hypervisor keeps for SNP_PAGE_SWAP_IN
    (sevsim's layout of AMD's MDATA entry): the AES-GCM IV and tag of the page, and the RMP
    state it had (GPA, validated, VMPL permissions), authenticated with it, and its sequence
    number."""

    iv: bytes
    tag: bytes
    gpa: int
    validated: bool
    perms: bytes
    sequence: int

    SIZE = _MDATA.size

    def aad(self) -> bytes:
        """What the tag covers besides the page: everything but the IV and the tag."""
        return struct.pack("<Q?4sQ", self.gpa, self.validated, self.perms, self.sequence)

    def to_bytes(self) -> bytes:
        """The 64-byte entry."""
        return _MDATA.pack(self.iv, self.tag, self.gpa, self.validated, self.perms,
                           self.sequence)

    @classmethod
    def from_bytes(cls, blob: bytes) -> MdataEntry:
        """Parse an entry; ValueError for a wrong length."""
        if len(blob) != _MDATA.size:
            raise ValueError(f"an MDATA entry is {_MDATA.size} bytes, not {len(blob)}")
        return cls(*_MDATA.unpack(blob))


class SnpFirmware(FirmwareCore):
    """SNP platform and launch commands."""

    # The platform's TCBs (CURRENT, and REPORTED as SNP_CONFIG sets it), kept by
    # SnpGuestRequests, the mixin that composes this one (firmware/snp_guest.py).
    current_tcb: TcbVersion
    tcb: TcbVersion
    # Whether SNP_INIT flushes the cores' caches before it writes the RMP: the fix for
    # RMPocalypse (CVE-2025-0033); the composed firmware's image decides (firmware/sev.py).
    _rmp_init_flushes = True

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        super().__init__(chip, memory, seed=seed, vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        self._snp_state = SnpPlatformState.UNINIT
        self._rmp_initialized = False  # SNP_INIT sets up the RMP once; only a reset clears it
        self._snp_guests: dict[int, SnpGuestContext] = {}
        self._platform = chip.platform  # BIOS and boot firmware settings (firmware/sev.py)
        self.sockets = 1

    # -- platform ---------------------------------------------------------------------------
    def snp_init(self, ciphertext_hiding_asids: int = 0) -> None:
        """Initialise SNP: the firmware writes the RMP into the DRAM the BIOS reserved for it
        (fixed firmware first writes back every dirty cache line, so that none can land on the
        table later), and from here on the RMP is checked. After a plain SNP_SHUTDOWN the
        table, enforced all along, carries on as it is.

        `ciphertext_hiding_asids` is SNP_INIT_EX's CIPHERTEXT_HIDING_EN with MAX_SNP_ASID:
        host reads of memory the RMP assigns to SNP ASIDs 1..N return 0xFF (Genoa and later;
        INVALID_PARAM on chips without it or for N outside the SEV-ES/SNP ASIDs). On a
        platform with the alias check (the AMD-SB-3015 fix) SNP_INIT first probes the DRAM
        map for aliases and refuses with INVALID_CONFIG if a module maps two SPAs onto one
        cell."""
        if SevFeatures.SEV_SNP not in self.chip.features:
            raise FirmwareError(SevStatus.UNSUPPORTED, f"{self.chip.product} has no SEV-SNP")
        if self._snp_state is not SnpPlatformState.UNINIT:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE, "SNP is already initialised")
        hidden = ciphertext_hiding_asids
        if hidden and not (self.chip.ciphertext_hiding and 0 < hidden < self.chip.min_sev_asid):
            raise FirmwareError(SevStatus.INVALID_PARAM, f"SNP_INIT_EX: ciphertext hiding for "
                                f"{ciphertext_hiding_asids} ASIDs on {self.chip.product}")
        if self._platform.alias_check:
            self._check_dram_aliases()
        if not self._rmp_initialized:
            if self._rmp_init_flushes:
                self._memory.cache.write_back()
            self._memory.init_rmp_table()
        self._snp_state = SnpPlatformState.INIT
        self._rmp_initialized = True
        self._memory.rmp.enabled = True
        self._memory.hidden_asids = ciphertext_hiding_asids

    @property
    def platform(self) -> PlatformOptions:
        """How the platform was set up at boot (SMT, TSME, ECC, RAPL, the DRAM alias check of
        the boot firmware): what PLATFORM_INFO reports, fixed until a reboot."""
        return self._platform

    def _check_dram_aliases(self) -> None:
        """The boot-time alias check: write a marker through each SPA the memory map claims
        above installed-looking memory and see whether it shows up lower down. sevsim's
        modules can claim one extra address bit, so one probe of the top half suffices."""
        memory = self._memory
        half = memory.mapped_size // 2
        if memory.mapped_size == memory.size or half % PAGE:
            return  # nothing claimed beyond the cells: no alias to find
        saved_low, saved_high = memory.read(0, 16), memory.read(half, 16)
        marker = bytes(~b & 0xFF for b in saved_low)
        memory.write(half, marker)
        aliased = memory.read(0, 16) == marker
        memory.write(half, saved_high)
        memory.write_soc(0, saved_low)
        if aliased:
            raise FirmwareError(SevStatus.INVALID_CONFIG,
                                f"SNP_INIT: DRAM alias check failed: SPA 0x{half:x} reaches the "
                                "cells of SPA 0x0 (a module claims more memory than it has)")

    def snp_shutdown(self) -> None:
        """SNP_SHUTDOWN (0x82): SNP INIT back to UNINIT. As on hardware (Linux's
        __sev_snp_shutdown_locked) this does not switch the RMP off: SYSCFG.SNPEn stays set
        until a reset, so host writes to guest and firmware pages keep faulting, and
        SNP_INIT works again without setting the table up anew."""
        self.snp_shutdown_ex()

    def snp_shutdown_ex(self, iommu_snp_shutdown: bool = False,
                        x86_snp_shutdown: bool = False) -> None:
        """SNP_SHUTDOWN_EX (0x86). Refused with INVALID_PLATFORM_STATE outside INIT or while
        any guest context exists (SNP_DECOMMISSION them first: a shutdown must not take
        guests' keys away under them), DF_FLUSH_REQUIRED while a decommissioned SNP ASID
        waits for SNP_DF_FLUSH (Linux flushes and retries). IOMMU_SNP_SHUTDOWN is accepted
        with nothing to do (no IOMMU is modelled); X86_SNP_SHUTDOWN also disables SNP on
        the cores: RMP checks stop and the table's contents are void (sevsim clears it, as
        the host kernel zeroes it before SNP is enabled again)."""
        command = "SNP_SHUTDOWN_EX" if (iommu_snp_shutdown or x86_snp_shutdown) \
            else "SNP_SHUTDOWN"
        self._require_snp(command)
        if self._snp_guests:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE,
                                f"{command}: {len(self._snp_guests)} guest context(s) remain; "
                                "SNP_DECOMMISSION them first")
        dirty = sorted(self._asid_dirty & set(range(1, self.chip.min_sev_asid)))
        if dirty:
            raise FirmwareError(SevStatus.DF_FLUSH_REQUIRED,
                                f"{command}: ASID {dirty[0]} was released; SNP_DF_FLUSH first")
        self._snp_state = SnpPlatformState.UNINIT
        if x86_snp_shutdown:
            rmp = self._memory.rmp
            rmp.enabled = False
            rmp.page_size[:] = PAGE_4K
            for frame in np.flatnonzero(rmp.assigned).tolist():
                rmp.reclaim(frame)
            self._rmp_initialized = False

    def snp_df_flush(self) -> None:
        """SNP_DF_FLUSH (0x84): flush the data fabric so released ASIDs may be reused."""
        self._require_snp("SNP_DF_FLUSH")
        self._asid_dirty.clear()

    @property
    def snp_initialized(self) -> bool:
        """Whether SNP_INIT has run."""
        return self._snp_state is SnpPlatformState.INIT

    def snp_platform_status(self) -> SnpPlatformStatus:
        """SNP_PLATFORM_STATUS (0x83), allowed in any state: the firmware's version, state,
        guest count and the CURRENT and REPORTED TCBs."""
        flags = NO_STATUS_FLAGS
        if getattr(self, "vlek_loaded", False):  # SnpPki's, in the composed firmware
            flags |= SnpStatusFlags.VLEK_EN
        if self.chip.ciphertext_hiding:
            flags |= SnpStatusFlags.CIPHERTEXT_HIDING_CAP
        if self._memory.hidden_asids:
            flags |= SnpStatusFlags.CIPHERTEXT_HIDING_EN
        return SnpPlatformStatus(self.chip.api_major, self.chip.api_minor, self._snp_state,
                                 self._rmp_initialized, self.chip.build,
                                 len(self._snp_guests), self.current_tcb.to_int(),
                                 self.tcb.to_int(), flags)

    # -- guest contexts ---------------------------------------------------------------------
    def snp_gctx_create(self, gctx: int) -> None:
        """The page at `gctx` (a hypervisor page) becomes this guest's context page."""
        self._require_snp("SNP_GCTX_CREATE")
        frame = self._page_frame(gctx, "SNP_GCTX_CREATE")
        if self._memory.rmp.assigned[frame]:
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"SNP_GCTX_CREATE: page 0x{gctx:x} is not a hypervisor page")
        self._memory.rmp.set_firmware_page(frame)
        self._snp_guests[gctx] = SnpGuestContext(gctx)

    def _snp_context(self, gctx: int, command: str = "SNP command",
                    state: SnpGuestState | None = None) -> SnpGuestContext:
        """The context a GCTX page address names, in `state` if given."""
        self._require_snp(command)
        ctx = self._snp_guests.get(gctx)
        if ctx is None:
            raise FirmwareError(SevStatus.INVALID_GUEST, f"{command}: no guest context at "
                                f"0x{gctx:x}")
        if state is not None and ctx.state is not state:
            raise FirmwareError(SevStatus.INVALID_GUEST_STATE,
                                f"{command} needs guest state {state.name}, it is "
                                f"{ctx.state.name}")
        return ctx

    def snp_launch_start(self, gctx: int, policy: int, gosvw: bytes = bytes(16),
                         migration_agent: int = 0) -> None:
        """Check the guest policy against this platform; a fresh VEK and VMPCK0-3."""
        ctx = self._snp_context(gctx, "SNP_LAUNCH_START", SnpGuestState.INIT)
        try:
            decoded = SnpPolicy.from_int(policy)
        except TcbFormatError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
        if len(gosvw) != 16:
            raise FirmwareError(SevStatus.INVALID_LENGTH, "GOSVW is 16 bytes")
        refusal = self._policy_refusal(decoded, migration_agent)
        if refusal:
            raise FirmwareError(SevStatus.POLICY_FAILURE, f"SNP_LAUNCH_START: {refusal}")
        if migration_agent:
            self._snp_context(migration_agent, "SNP_LAUNCH_START (migration agent)",
                             SnpGuestState.RUNNING)
        ctx.policy, ctx.gosvw = decoded, gosvw
        # AES-256-XTS takes two 256-bit keys; otherwise AES-128 with the address tweak
        ctx.vek = self._trng.random(64 if PolicyFlags.MEM_AES_256_XTS in decoded.flags else 16)
        ctx.vmpcks = tuple(self._trng.random(VMPCK_SIZE) for _ in range(4))
        ctx.state = SnpGuestState.LAUNCH

    def _policy_refusal(self, policy: SnpPolicy, migration_agent: int) -> str:
        flags = policy.flags
        if (policy.abi_major, policy.abi_minor) > (self.chip.api_major, self.chip.api_minor):
            return (f"policy needs ABI {policy.abi_major}.{policy.abi_minor}, firmware is "
                    f"{self.chip.api_major}.{self.chip.api_minor}")
        if PolicyFlags.SMT not in flags and self._platform.smt:
            return "policy forbids SMT, which is enabled on this host"
        if PolicyFlags.SINGLE_SOCKET in flags and self.sockets > 1:
            return f"policy requires a single socket, this host has {self.sockets}"
        if PolicyFlags.MEM_AES_256_XTS in flags and not self.chip.xts256:
            return f"policy requires AES-256-XTS, which {self.chip.product} lacks"
        if PolicyFlags.RAPL_DIS in flags and not self._platform.rapl_disabled:
            return "policy requires RAPL disabled; this platform keeps it enabled"
        if PolicyFlags.CIPHERTEXT_HIDING in flags and not self._memory.hidden_asids:
            return "policy requires ciphertext hiding, which this platform has not enabled"
        if migration_agent and PolicyFlags.MIGRATE_MA not in flags:
            return "a migration agent was given, the policy does not allow one"
        return ""

    def snp_activate(self, gctx: int, asid: int) -> None:
        """Bind the guest to an ASID from the SEV-ES/SNP range and load its key."""
        ctx = self._snp_context(gctx, "SNP_ACTIVATE")
        if ctx.state is SnpGuestState.INIT:
            raise FirmwareError(SevStatus.INVALID_GUEST_STATE,
                                "SNP_ACTIVATE before SNP_LAUNCH_START")
        if ctx.asid:
            raise FirmwareError(SevStatus.ACTIVE, f"guest is already on ASID {ctx.asid}")
        self._bind_asid(asid, range(1, self.chip.min_sev_asid), ctx.vek, gctx)  # SEV-ES/SNP
        ctx.asid = asid

    # -- launch ------------------------------------------------------------------------------
    def snp_launch_update(self, gctx: int, spa: int, page_type: PageType) -> None:
        """Launch one page the hypervisor assigned to the guest (RMPUPDATE): encrypt it as its
        type says, validate it in the RMP and extend the launch digest with its PAGE_INFO."""
        ctx = self._snp_context(gctx, "SNP_LAUNCH_UPDATE", SnpGuestState.LAUNCH)
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, "SNP_ACTIVATE before SNP_LAUNCH_UPDATE")
        try:
            page_type = PageType(page_type)
        except ValueError:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                f"page type {page_type} is not one AMD defines") from None
        frame = self._page_frame(spa, "SNP_LAUNCH_UPDATE")
        rmp = self._memory.rmp
        if not (rmp.assigned[frame] and rmp.asid[frame] == ctx.asid) or (
                rmp.validated[frame] or rmp.immutable[frame] or rmp.vmsa[frame]
                or rmp.page_size[frame] != PAGE_4K):
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"page 0x{spa:x} is not an unvalidated 4 KiB page assigned "
                                f"to ASID {ctx.asid}")
        plaintext = self._memory.read(spa, PAGE)  # what the hypervisor put in DRAM
        gpa = VMSA_GPA if page_type is PageType.VMSA else int(rmp.gpn[frame]) * PAGE
        if page_type is PageType.VMSA:
            self._check_vmsa(plaintext)
        elif page_type is PageType.CPUID:
            self._check_cpuid_page(plaintext)
        try:
            digest = update_digest(ctx.launch_digest, page_type, gpa, plaintext)
        except LaunchFormatError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, f"SNP_LAUNCH_UPDATE: {err}") from None
        # checks done: from here on the command succeeds
        if page_type is PageType.ZERO:
            self._memory.write_domain(spa, bytes(PAGE), ctx.asid)
        elif page_type is PageType.SECRETS:
            self._memory.write_domain(spa, self._secrets_page(ctx), ctx.asid)
        else:
            self._memory.encrypt_in_place(spa, PAGE, ctx.asid)
        if page_type is PageType.VMSA:
            vmsa_seals(self._memory).seal(ctx.asid, spa, plaintext)
        ctx.launch_digest = digest
        vmsa = page_type is PageType.VMSA
        rmp.set_guest_page(frame, ctx.asid, int(rmp.gpn[frame]), vmsa=vmsa, immutable=vmsa)

    def snp_launch_finish(self, gctx: int, host_data: bytes = bytes(32),
                          id_block: bytes | None = None, id_auth: bytes | None = None,
                          author_key_en: bool = False) -> None:
        """End the launch: the guest may run. With an ID block (and its ID_AUTH_INFO) the
        author's expected launch digest and policy must be this guest's and the ID key's
        (and with AUTHOR_KEY_EN the author key's) ECDSA P-384 signature must verify."""
        ctx = self._snp_context(gctx, "SNP_LAUNCH_FINISH", SnpGuestState.LAUNCH)
        if len(host_data) != 32:
            raise FirmwareError(SevStatus.INVALID_LENGTH, "HOST_DATA is 32 bytes")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, "SNP_ACTIVATE before SNP_LAUNCH_FINISH")
        block, digests = None, None
        if id_block is not None or id_auth is not None or author_key_en:
            if id_block is None or id_auth is None:
                raise FirmwareError(SevStatus.INVALID_PARAM,
                                    "an ID block comes with its ID_AUTH_INFO")
            try:
                block = IdBlock.from_bytes(id_block)
                auth = IdAuthInfo.from_bytes(id_auth)
            except LaunchFormatError as err:
                raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
            if block.ld != ctx.launch_digest:
                raise FirmwareError(SevStatus.BAD_MEASUREMENT,
                                    "the ID block expects another launch digest")
            if block.policy != ctx.policy.to_int():
                raise FirmwareError(SevStatus.POLICY_FAILURE,
                                    f"the ID block names policy 0x{block.policy:x}, the "
                                    f"guest has 0x{ctx.policy.to_int():x}")
            try:
                digests = verify_id_block(block, auth, author_key_en)
            except LaunchFormatError as err:
                raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
            except InvalidSignature as err:
                raise FirmwareError(SevStatus.BAD_SIGNATURE,
                                    f"ID_AUTH_INFO: {err or 'signature does not verify'}"
                                    ) from None
        ctx.host_data = host_data
        if block is not None and digests is not None:
            ctx.id_block = block
            ctx.id_key_digest, ctx.author_key_digest = (digests.id_key_digest,
                                                        digests.author_key_digest)
        ctx.state = SnpGuestState.RUNNING

    def snp_guest_status(self, gctx: int) -> SnpGuestStatus:
        """SNP_GUEST_STATUS: the guest's policy, ASID and state."""
        ctx = self._snp_context(gctx, "SNP_GUEST_STATUS")
        return SnpGuestStatus(ctx.policy.to_int(), ctx.asid, ctx.state)

    # -- debug -------------------------------------------------------------------------------
    def snp_dbg_decrypt(self, gctx: int, src_spa: int, dst_spa: int) -> None:
        """SNP_DBG_DECRYPT (0xB0): the guest's 4 KiB page at `src_spa` (assigned to it in the
        RMP, a VMSA included) decrypted with its VEK into the hypervisor page at `dst_spa`."""
        command = "SNP_DBG_DECRYPT"
        ctx = self._snp_debuggable(gctx, command)
        src = self._page_frame(src_spa, command)
        dst = self._page_frame(dst_spa, command)
        self._check_guest_page(ctx, src, command, write=False)
        self._check_hypervisor_page(dst, command)
        self._memory.write(dst_spa, self._read_page_with_key(ctx.asid, src_spa))

    def snp_dbg_encrypt(self, gctx: int, src_spa: int, dst_spa: int) -> None:
        """SNP_DBG_ENCRYPT (0xB1): the hypervisor page at `src_spa` encrypted with the guest's
        VEK into its 4 KiB page at `dst_spa`, which must be the guest's and writable by the
        firmware (not a VMSA, not immutable)."""
        command = "SNP_DBG_ENCRYPT"
        ctx = self._snp_debuggable(gctx, command)
        src = self._page_frame(src_spa, command)
        dst = self._page_frame(dst_spa, command)
        self._check_hypervisor_page(src, command)
        self._check_guest_page(ctx, dst, command, write=True)
        self._memory.write_domain(dst_spa, self._memory.read(src_spa, PAGE), ctx.asid)

    # -- page moves ----------------------------------------------------------------------------
    def snp_page_move(self, gctx: int, src_spa: int, dst_spa: int) -> None:
        """SNP_PAGE_MOVE: move a running guest's 4 KiB page from `src_spa` to the hypervisor
        page at `dst_spa` (the hypervisor compacting or migrating host memory). The firmware
        decrypts the page with the VEK under the source address's tweak and encrypts it again
        under the destination's; the destination's RMP entry takes the source's (same ASID,
        GPA, validated state, VMPL permissions) and the source goes back to the hypervisor.
        The hypervisor then points its NPT at the new page. Refused with POLICY_FAILURE when
        the guest policy has PAGE_SWAP_DISABLE (bit 25, SNP ABI 1.58)."""
        command = "SNP_PAGE_MOVE"
        ctx = self._page_mover(gctx, command)
        src = self._swappable_page(ctx, src_spa, command)
        dst = self._page_frame(dst_spa, command)
        self._check_hypervisor_page(dst, command)  # the source is assigned: dst != src
        plaintext = self._read_page_with_key(ctx.asid, src_spa)
        self._memory.write_domain(dst_spa, plaintext, ctx.asid)
        self._memory.rmp.move(src, dst)

    def snp_page_swap_out(self, gctx: int, src_spa: int, dst_spa: int) -> bytes:
        """SNP_PAGE_SWAP_OUT: a running guest's 4 KiB page at `src_spa` leaves for the
        hypervisor page at `dst_spa`, encrypted and authenticated (AES-256-GCM under a key
        derived from the VEK, its RMP state in the tag), and goes back to the hypervisor.
        Returns the page's MDATA entry, which SNP_PAGE_SWAP_IN needs. Refused with
        POLICY_FAILURE when the policy has PAGE_SWAP_DISABLE."""
        command = "SNP_PAGE_SWAP_OUT"
        ctx = self._page_mover(gctx, command)
        src = self._swappable_page(ctx, src_spa, command)
        dst = self._page_frame(dst_spa, command)
        self._check_hypervisor_page(dst, command)
        rmp = self._memory.rmp
        entry = MdataEntry(self._trng.random(12), b"", int(rmp.gpn[src]) * PAGE,
                           bool(rmp.validated[src]), rmp.perms[src].tobytes(),
                           ctx.swap_count + 1)
        sealed = AESGCM(_swap_key(ctx)).encrypt(entry.iv, self._read_page_with_key(
            ctx.asid, src_spa), entry.aad())
        self._memory.write(dst_spa, sealed[:PAGE])
        rmp.reclaim(src)
        ctx.swap_count += 1
        ctx.swapped.add(entry.sequence)
        return replace(entry, tag=sealed[PAGE:]).to_bytes()

    def snp_page_swap_in(self, gctx: int, src_spa: int, dst_spa: int, mdata: bytes) -> None:
        """SNP_PAGE_SWAP_IN: the swapped-out page at `src_spa` comes back into the hypervisor
        page at `dst_spa` under the VEK, with the RMP state its MDATA entry authenticates.
        INVALID_MDATA_ENTRY for an entry this guest has not swapped out or already took back
        (a replay), or a page or entry that fails the tag."""
        command = "SNP_PAGE_SWAP_IN"
        ctx = self._page_mover(gctx, command)
        src = self._page_frame(src_spa, command)
        dst = self._page_frame(dst_spa, command)
        self._check_hypervisor_page(src, command)
        self._check_hypervisor_page(dst, command)
        try:
            entry = MdataEntry.from_bytes(mdata)
        except ValueError as err:
            raise FirmwareError(SevStatus.INVALID_MDATA_ENTRY, f"{command}: {err}") from None
        if entry.sequence not in ctx.swapped:
            raise FirmwareError(SevStatus.INVALID_MDATA_ENTRY,
                                f"{command}: no page of this guest is out under sequence "
                                f"{entry.sequence} (never swapped out, or already back)")
        try:
            plaintext = AESGCM(_swap_key(ctx)).decrypt(
                entry.iv, self._memory.read(src_spa, PAGE) + entry.tag, entry.aad())
        except InvalidTag:
            raise FirmwareError(SevStatus.INVALID_MDATA_ENTRY,
                                f"{command}: the page or its MDATA entry fails the tag") from None
        self._memory.write_domain(dst_spa, plaintext, ctx.asid)
        self._memory.rmp.restore(dst, ctx.asid, entry.gpa // PAGE, entry.validated,
                                 entry.perms)
        ctx.swapped.discard(entry.sequence)

    def _page_mover(self, gctx: int, command: str) -> SnpGuestContext:
        """What page moves and swaps share: a running, activated guest whose policy lacks
        PAGE_SWAP_DISABLE (bit 25, SNP ABI 1.58)."""
        ctx = self._snp_context(gctx, command, SnpGuestState.RUNNING)
        if PolicyFlags.PAGE_SWAP_DISABLE in ctx.policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"{command}: policy 0x{ctx.policy.to_int():x} disables page "
                                "moves and swaps (PAGE_SWAP_DISABLE, bit 25)")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, f"{command}: the guest is not activated")
        return ctx

    def _swappable_page(self, ctx: SnpGuestContext, spa: int, command: str) -> int:
        """The frame of a 4 KiB page of the guest that is neither a VMSA nor immutable."""
        frame = self._page_frame(spa, command)
        self._check_guest_page(ctx, frame, command, write=True)
        if self._memory.rmp.page_size[frame] != PAGE_4K:
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"{command}: page 0x{spa:x} is part of a 2 MiB entry")
        return frame

    def _snp_debuggable(self, gctx: int, command: str) -> SnpGuestContext:
        """The checks both debug commands share: the policy's DEBUG bit, and the VEK in the
        memory controller (SNP_ACTIVATE). The launch state does not matter."""
        ctx = self._snp_context(gctx, command)
        if PolicyFlags.DEBUG not in ctx.policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"{command}: policy 0x{ctx.policy.to_int():x} does not allow "
                                "debugging (DEBUG, bit 19)")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, f"{command}: the guest is not activated")
        return ctx

    def _check_guest_page(self, ctx: SnpGuestContext, frame: int, command: str,
                          write: bool) -> None:
        rmp = self._memory.rmp
        if not rmp.assigned[frame] or int(rmp.asid[frame]) != ctx.asid:
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"{command}: page 0x{frame * PAGE:x} is not assigned to the "
                                f"guest's ASID {ctx.asid} in the RMP")
        if write and (rmp.vmsa[frame] or rmp.immutable[frame]):
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"{command}: page 0x{frame * PAGE:x} is a VMSA or immutable")

    def _check_hypervisor_page(self, frame: int, command: str) -> None:
        if self._memory.rmp.assigned[frame]:
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE,
                                f"{command}: page 0x{frame * PAGE:x} is not a hypervisor page")

    def _read_page_with_key(self, asid: int, spa: int) -> bytes:
        """A page as the guest's key decrypts it: a frame in the key domain holds that
        plaintext on the SoC side already; any other frame is DRAM decrypted under the key."""
        memory = self._memory
        if memory.domain[spa // PAGE] == asid:
            return memory.cells[spa:spa + PAGE].tobytes()
        dram = np.frombuffer(memory.read(spa, PAGE), dtype=np.uint8)
        return memory.engine.decrypt_blocks(asid, spa, dram).tobytes()

    # -- teardown ----------------------------------------------------------------------------
    def snp_decommission(self, gctx: int) -> None:
        """Destroy the guest: its key leaves the slot, the ASID needs DF_FLUSH, and its pages
        (and the GCTX page) stay as the RMP says until the hypervisor reclaims them."""
        ctx = self._snp_context(gctx, "SNP_DECOMMISSION")
        if ctx.asid:
            self._release_asid(ctx.asid)
        del self._snp_guests[gctx]

    def snp_page_reclaim(self, spa: int) -> None:
        """Hand a firmware page (a decommissioned guest's GCTX) or an immutable page of a
        decommissioned guest (its VMSA) back to the hypervisor."""
        frame = self._page_frame(spa, "SNP_PAGE_RECLAIM")
        rmp = self._memory.rmp
        if self._snp_state is not SnpPlatformState.INIT:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE, "SNP is not initialised")
        if rmp.is_firmware(frame):
            if spa in self._snp_guests:
                raise FirmwareError(SevStatus.INVALID_PAGE_STATE, f"page 0x{spa:x} holds a "
                                    "live guest context; SNP_DECOMMISSION first")
        elif not (rmp.assigned[frame] and rmp.immutable[frame]) or (
                int(rmp.asid[frame]) in self._asid_owner):
            raise FirmwareError(SevStatus.INVALID_PAGE_STATE, f"page 0x{spa:x} is not a "
                                "firmware page or an immutable page of a decommissioned guest")
        rmp.reclaim(frame)

    # -- helpers -----------------------------------------------------------------------------
    def _require_snp(self, command: str) -> None:
        if self._snp_state is not SnpPlatformState.INIT:
            raise FirmwareError(SevStatus.INVALID_PLATFORM_STATE,
                                f"{command}: SNP_INIT has not run")

    def _page_frame(self, spa: int, command: str) -> int:
        if spa % PAGE:
            raise FirmwareError(SevStatus.INVALID_ADDRESS,
                                f"{command}: 0x{spa:x} is not page aligned")
        try:
            self._memory.check_range(spa, PAGE)
        except MemoryAccessError as err:
            raise FirmwareError(SevStatus.INVALID_ADDRESS, f"{command}: {err}") from None
        return spa // PAGE

    def _secrets_page(self, ctx: SnpGuestContext) -> bytes:
        """The secrets page (spec-formats.md §7.3): version, FMS, GOSVW and VMPCK0-3."""
        page = bytearray(PAGE)
        struct.pack_into("<III", page, 0, SECRETS_VERSION, 0, self.chip.signature)
        page[_GOSVW_OFFSET:_GOSVW_OFFSET + 16] = ctx.gosvw
        page[_VMPCK_OFFSET:_VMPCK_OFFSET + 4 * VMPCK_SIZE] = b"".join(ctx.vmpcks)
        return bytes(page)

    @staticmethod
    def _check_vmsa(page: bytes) -> None:
        if not Vmsa.from_bytes(page).regs.get("sev_features", 0) & SEV_FEATURES_SNP:
            raise FirmwareError(SevStatus.INVALID_PARAM,
                                "the VMSA's SEV_FEATURES does not enable SNP")

    def _check_cpuid_page(self, page: bytes) -> None:
        """Minimal model of the firmware's CPUID check: the page may not claim SEV features
        (Fn8000_001F EAX) the chip lacks, another C-bit position or physical address
        reduction (Fn8000_001F EBX[11:0]), nor another family/model/stepping (Fn0000_0001
        EAX). Other leaves pass."""
        try:
            entries = parse_cpuid_page(page)
        except ValueError as err:
            raise FirmwareError(SevStatus.INVALID_PARAM, str(err)) from None
        for entry in entries:
            leaf, eax = entry.leaf, entry.eax
            if leaf == 0x8000_001F and eax & ~int(self.chip.features):
                raise FirmwareError(SevStatus.INVALID_PARAM,
                                    f"CPUID page claims Fn8000_001F EAX 0x{eax:x}, the chip "
                                    f"has 0x{int(self.chip.features):x}")
            chip_ebx = self.chip.leaf_8000001f().ebx & 0xFFF
            if leaf == 0x8000_001F and entry.ebx & 0xFFF != chip_ebx:
                raise FirmwareError(SevStatus.INVALID_PARAM,
                                    f"CPUID page claims Fn8000_001F EBX[11:0] 0x"
                                    f"{entry.ebx & 0xFFF:x} (C-bit {entry.ebx & 0x3F}), the "
                                    f"chip has 0x{chip_ebx:x} (C-bit {self.chip.c_bit})")
            if leaf == 1 and eax != self.chip.signature:
                raise FirmwareError(SevStatus.INVALID_PARAM,
                                    f"CPUID page claims signature 0x{eax:x}, the chip is "
                                    f"0x{self.chip.signature:x}")


def _swap_key(ctx: SnpGuestContext) -> bytes:
    """The guest's AES-256-GCM key for swapped-out pages, derived from its VEK."""
    return hmac.new(ctx.vek, b"sevsim page swap key", hashlib.sha256).digest()
