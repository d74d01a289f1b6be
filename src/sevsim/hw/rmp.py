"""The SEV-SNP Reverse Map Table: who owns each 4 KiB frame and at which guest address.

One entry per frame (DESIGN.md, attacks.md §4.1): assigned, ASID, GPA, validated, VMSA,
immutable, page size and the permission masks of VMPL0-3 (VMPL0 holds every permission on
a validated page and gives lower VMPLs theirs with RMPADJUST). A frame assigned with ASID 0
belongs to the firmware (a guest context page). The entries live in arrays the memory
controller checks on host writes and the vCPUs check at nested-translation time; the
instructions below are the only ways software changes them. Every change tells the
listeners (the memory controller, which passes it through its reverse map to the SNP VMs
that map those frames), which re-derive their mappings for those frames.

Checks are off until SNP_INIT turns the table on, so SEV, SEV-ES and plain VMs never pay for
it.

On a host whose BIOS reserved DRAM for the table (`table_spa`), the entries also live there,
16 bytes each (abi/rmp.py): the memory controller writes every change through to those bytes,
and a write that reaches those bytes changes the entries (`load`), which is what a stale cache
line written back over the table does (RMPocalypse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sevsim.abi.rmp import (
    FRAMES_2M,
    PAGE_2M,
    PAGE_4K,
    PERM_ALL,
    RMP_ASID_BITS,
    RMP_ASID_SHIFT,
    RMP_ASSIGNED,
    RMP_ENTRY_SIZE,
    RMP_GPA_MASK,
    RMP_IMMUTABLE,
    RMP_PAGE_SIZE_SHIFT,
    RMP_VALIDATED,
    RMP_VMSA,
    VMPLS,
    RmpResult,
)
from sevsim.errors import RmpInstructionError

PAGE = 4096


def rmp_failure(code: RmpResult, message: str) -> RmpInstructionError:
    """The typed error for an RMP instruction returning `code`."""
    return RmpInstructionError(code, f"{code.name}: {message}")


@dataclass(frozen=True)
class RmpEntry:
    """One frame's RMP entry as the hypervisor reads it (the table is in host memory; only
    RMPUPDATE, PSMASH and the firmware change it)."""

    assigned: bool
    asid: int
    gpa: int
    validated: bool
    vmsa: bool
    immutable: bool
    page_size: int


class Rmp:
    """The table, indexed by frame number."""

    def __init__(self, nframes: int) -> None:
        self.nframes = nframes
        self.enabled = False  # SNP_INIT sets it; no check runs before
        self.assigned = np.zeros(nframes, dtype=bool)
        self.asid = np.zeros(nframes, dtype=np.int32)
        self.gpn = np.zeros(nframes, dtype=np.int64)
        self.validated = np.zeros(nframes, dtype=bool)
        self.vmsa = np.zeros(nframes, dtype=bool)
        self.immutable = np.zeros(nframes, dtype=bool)
        self.page_size = np.zeros(nframes, dtype=np.uint8)
        self.perms = np.zeros((nframes, VMPLS), dtype=np.uint8)
        self.listeners: list[Callable[[np.ndarray], None]] = []
        self.table_spa: int | None = None  # where the BIOS put the table in DRAM, if it did

    # -- queries ------------------------------------------------------------------------------
    def guest_owned(self, frames: np.ndarray) -> np.ndarray:
        """Frames a host write may not touch: assigned to a guest or to the firmware."""
        return self.assigned[frames]

    def entry(self, frame: int) -> RmpEntry:
        """A copy of the frame's entry."""
        return RmpEntry(bool(self.assigned[frame]), int(self.asid[frame]),
                        int(self.gpn[frame]) * PAGE, bool(self.validated[frame]),
                        bool(self.vmsa[frame]), bool(self.immutable[frame]),
                        int(self.page_size[frame]))

    def is_firmware(self, frame: int) -> bool:
        """Whether the firmware holds the frame (assigned to ASID 0), e.g. a guest context."""
        return bool(self.assigned[frame] and self.asid[frame] == 0)

    # -- RMPUPDATE (hypervisor) ---------------------------------------------------------------
    def rmpupdate(self, frames: np.ndarray, asid: int = 0, gpns: np.ndarray | None = None,
                  page_size: int = PAGE_4K) -> None:
        """Assign frames to `asid` at `gpns` (unvalidated), or with asid 0 give them back to
        the hypervisor. All or nothing: immutable frames (firmware-held) refuse with
        FAIL_PERMISSION, VMSA frames with FAIL_INUSE, 2 MiB entries need 512 aligned frames."""
        frames = np.asarray(frames, dtype=np.int64)
        self._check_frames(frames)
        if self.immutable[frames].any():
            raise rmp_failure(RmpResult.FAIL_PERMISSION,
                        f"frame 0x{int(frames[self.immutable[frames]][0]):x} is immutable")
        if self.vmsa[frames].any():
            raise rmp_failure(RmpResult.FAIL_INUSE,
                        f"frame 0x{int(frames[self.vmsa[frames]][0]):x} is a VMSA")
        if asid < 0:
            raise rmp_failure(RmpResult.FAIL_INPUT, f"ASID {asid}")
        if asid:
            if gpns is None or len(gpns) != len(frames):
                raise rmp_failure(RmpResult.FAIL_INPUT, "an assigned frame needs its guest page")
            gpns = np.asarray(gpns, dtype=np.int64)
        if page_size == PAGE_2M:
            self._check_2m(frames, gpns)
        elif page_size != PAGE_4K:
            raise rmp_failure(RmpResult.FAIL_INPUT, f"page size {page_size}")
        self.assigned[frames] = asid != 0
        self.asid[frames] = asid
        self.gpn[frames] = gpns if gpns is not None else 0
        self.page_size[frames] = page_size
        self._clear_guest_state(frames)
        self.changed(frames)

    def psmash(self, frame: int) -> None:
        """Split a 2 MiB entry into 512 4 KiB entries with the same state."""
        if frame % FRAMES_2M or not 0 <= frame < self.nframes:
            raise rmp_failure(RmpResult.FAIL_INPUT, f"frame 0x{frame:x} is not 2 MiB aligned")
        span = np.arange(frame, frame + FRAMES_2M)
        if self.page_size[frame] != PAGE_2M:
            raise rmp_failure(RmpResult.FAIL_SIZEMISMATCH,
                              f"frame 0x{frame:x} is not a 2 MiB entry")
        self.page_size[span] = PAGE_4K
        self.changed(span)

    # -- PVALIDATE and RMPADJUST (guest) ------------------------------------------------------
    def pvalidate(self, frames: np.ndarray, validate: bool) -> np.ndarray:
        """Set or clear `validated` on frames the caller has already checked are its own at
        those GPAs (the nested walk does that). Returns rFLAGS.CF per frame: set where the
        entry already had that state and nothing changed (double validation)."""
        frames = np.asarray(frames, dtype=np.int64)
        if (self.page_size[frames] != PAGE_4K).any():
            raise rmp_failure(RmpResult.FAIL_SIZEMISMATCH, "4 KiB PVALIDATE of a 2 MiB entry")
        unchanged = self.validated[frames] == validate
        self.validated[frames] = validate
        self.perms[frames] = (PERM_ALL, 0, 0, 0) if validate else 0
        self.changed(frames[~unchanged])
        return unchanged

    def rmpadjust(self, frame: int, caller_vmpl: int, target_vmpl: int, perms: int,
                  vmsa: bool = False) -> None:
        """A VMPL sets a less privileged VMPL's permissions on one of its validated pages
        (APM RMPADJUST): never more than the caller holds itself; only VMPL0 may turn a page
        into (or back from) a VMSA, which takes the page away from every VMPL's access."""
        if not 0 <= perms <= PERM_ALL or not 0 < target_vmpl < VMPLS:
            raise rmp_failure(RmpResult.FAIL_INPUT, f"VMPL {target_vmpl} permissions 0x{perms:x}")
        if target_vmpl <= caller_vmpl:
            raise rmp_failure(RmpResult.FAIL_PERMISSION,
                              f"VMPL{caller_vmpl} cannot set permissions of VMPL{target_vmpl}")
        if not self.validated[frame]:
            raise rmp_failure(RmpResult.FAIL_INPUT, f"frame 0x{frame:x} is not a validated page")
        held = int(self.perms[frame, caller_vmpl])
        if perms & ~held or ((self.vmsa[frame] or vmsa) and caller_vmpl):
            raise rmp_failure(RmpResult.FAIL_PERMISSION,
                              f"VMPL{caller_vmpl} holds permissions 0x{held:x} on frame "
                              f"0x{frame:x}; it asked to give 0x{perms:x}"
                              + (" and a VMSA" if vmsa else ""))
        self.perms[frame, target_vmpl] = perms
        self.vmsa[frame] = vmsa
        self.changed(np.array([frame]))

    # -- firmware ----------------------------------------------------------------------------
    def set_guest_page(self, frame: int, asid: int, gpn: int, *, vmsa: bool = False,
                       immutable: bool = False) -> None:
        """SNP_LAUNCH_UPDATE: the firmware validates a launched page (and tags a VMSA)."""
        self.assigned[frame], self.asid[frame], self.gpn[frame] = True, asid, gpn
        self.validated[frame], self.vmsa[frame], self.immutable[frame] = True, vmsa, immutable
        self.perms[frame] = (PERM_ALL, 0, 0, 0)
        self.changed(np.array([frame]))

    def set_firmware_page(self, frame: int) -> None:
        """A page the firmware keeps (a guest context): assigned to ASID 0, immutable."""
        self.assigned[frame], self.asid[frame], self.gpn[frame] = True, 0, 0
        self.page_size[frame] = PAGE_4K
        self.immutable[frame] = True
        self._clear_guest_state(np.array([frame]))
        self.changed(np.array([frame]))

    def move(self, src: int, dst: int) -> None:
        """SNP_PAGE_MOVE: `dst` takes `src`'s entry (ASID, GPA, validated state, VMPL
        permissions, page size) and `src` becomes a hypervisor page."""
        self.assigned[dst], self.asid[dst], self.gpn[dst] = True, self.asid[src], self.gpn[src]
        self.validated[dst], self.page_size[dst] = self.validated[src], self.page_size[src]
        self.vmsa[dst], self.immutable[dst] = False, False
        self.perms[dst] = self.perms[src]
        self.changed(np.array([dst]))
        self.reclaim(src)

    def restore(self, frame: int, asid: int, gpn: int, validated: bool, perms: bytes) -> None:
        """SNP_PAGE_SWAP_IN: a 4 KiB guest page with the RMP state it had when swapped out."""
        self.assigned[frame], self.asid[frame], self.gpn[frame] = True, asid, gpn
        self.validated[frame], self.page_size[frame] = validated, PAGE_4K
        self.vmsa[frame], self.immutable[frame] = False, False
        self.perms[frame] = np.frombuffer(perms, dtype=np.uint8)
        self.changed(np.array([frame]))

    def reclaim(self, frame: int) -> None:
        """SNP_PAGE_RECLAIM: the frame becomes an ordinary hypervisor page again."""
        self.assigned[frame], self.asid[frame], self.gpn[frame] = False, 0, 0
        self.immutable[frame] = False
        self.vmsa[frame] = False
        self._clear_guest_state(np.array([frame]))
        self.changed(np.array([frame]))

    def set_firmware_pages(self, frames: np.ndarray) -> None:
        """SNP_INIT: the table's own frames become firmware pages, out of the host's reach."""
        self.assigned[frames], self.asid[frames], self.gpn[frames] = True, 0, 0
        self.page_size[frames] = PAGE_4K
        self.immutable[frames] = True
        self._clear_guest_state(frames)
        self.changed(frames)

    # -- the table in DRAM ---------------------------------------------------------------------
    def in_use(self) -> np.ndarray:
        """The frames whose entry is not all zero (a zeroed table says the rest)."""
        return np.flatnonzero(self.assigned | self.validated | self.vmsa | self.immutable
                              | (self.page_size != 0) | (self.asid != 0) | (self.gpn != 0)
                              | self.perms.any(axis=1))

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """The 16-byte entries of `frames` as the table in DRAM holds them, one row each."""
        lo = (self.assigned[frames].astype(np.uint64) * RMP_ASSIGNED
              | self.page_size[frames].astype(np.uint64) << np.uint64(RMP_PAGE_SIZE_SHIFT)
              | self.immutable[frames].astype(np.uint64) * RMP_IMMUTABLE
              | (self.gpn[frames].astype(np.uint64) * PAGE) & np.uint64(RMP_GPA_MASK)
              | self.asid[frames].astype(np.uint64) << np.uint64(RMP_ASID_SHIFT)
              | self.vmsa[frames].astype(np.uint64) * np.uint64(RMP_VMSA)
              | self.validated[frames].astype(np.uint64) * np.uint64(RMP_VALIDATED))
        hi = np.zeros(len(frames), dtype=np.uint64)
        hi.view(np.uint8).reshape(-1, 8)[:, :VMPLS] = self.perms[frames]
        return np.stack((lo, hi), axis=1).astype("<u8").view(np.uint8).reshape(-1, RMP_ENTRY_SIZE)

    def load(self, frames: np.ndarray, raw: np.ndarray) -> None:
        """The table's bytes for `frames` (one 16-byte row each) changed in DRAM: the entries
        are what those bytes now say."""
        words = np.ascontiguousarray(raw, dtype=np.uint8).view("<u8").reshape(-1, 2)
        lo = words[:, 0].astype(np.uint64)
        self.assigned[frames] = (lo & np.uint64(RMP_ASSIGNED)) != 0
        self.page_size[frames] = (lo >> np.uint64(RMP_PAGE_SIZE_SHIFT)) & np.uint64(1)
        self.immutable[frames] = (lo & np.uint64(RMP_IMMUTABLE)) != 0
        self.gpn[frames] = (lo & np.uint64(RMP_GPA_MASK)) // np.uint64(PAGE)
        self.asid[frames] = (lo >> np.uint64(RMP_ASID_SHIFT)) & np.uint64((1 << RMP_ASID_BITS) - 1)
        self.vmsa[frames] = (lo & np.uint64(RMP_VMSA)) != 0
        self.validated[frames] = (lo & np.uint64(RMP_VALIDATED)) != 0
        self.perms[frames] = words[:, 1].astype("<u8").view(np.uint8).reshape(-1, 8)[:, :VMPLS]
        self.changed(frames)

    def changed(self, frames: np.ndarray) -> None:
        """Tell the listeners (the memory controller, hence the VMs mapping these frames) that
        their entries changed."""
        if frames.size:
            for listener in self.listeners:
                listener(frames)

    # -- helpers ------------------------------------------------------------------------------
    def _clear_guest_state(self, frames: np.ndarray) -> None:
        self.validated[frames] = False
        self.vmsa[frames] = False
        self.perms[frames] = 0

    def _check_frames(self, frames: np.ndarray) -> None:
        if frames.size and (frames.min() < 0 or frames.max() >= self.nframes):
            raise rmp_failure(RmpResult.FAIL_INPUT, "frame outside DRAM")

    @staticmethod
    def _check_2m(frames: np.ndarray, gpns: np.ndarray | None) -> None:
        ok = (frames.size > 0 and frames.size % FRAMES_2M == 0
              and bool((frames[::FRAMES_2M] % FRAMES_2M == 0).all())
              and bool((np.diff(frames) == 1).all()))
        if ok and gpns is not None:
            ok = bool((gpns[::FRAMES_2M] % FRAMES_2M == 0).all()) and bool(
                (np.diff(gpns) == 1).all())
        if not ok:
            raise rmp_failure(RmpResult.FAIL_INPUT, "a 2 MiB entry needs 512 aligned, consecutive "
                        "frames and guest pages")
