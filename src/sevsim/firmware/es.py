"""SEV-ES launch: LAUNCH_UPDATE_VMSA.

Each vCPU's initial register state (its VMSA page, built by the VMM) is encrypted in place
under the VM key and appended to the launch digest, so the guest owner's measurement covers
where every vCPU starts (spec-formats.md §6.3). The Secure Processor also seals the page: the
CPU's first VMRUN of that vCPU refuses the page if the host changed it afterwards.
"""

from __future__ import annotations

from sevsim.abi.policy import PolicyFlags
from sevsim.abi.status import GuestState, SevStatus
from sevsim.errors import FirmwareError
from sevsim.firmware.core import FirmwareCore
from sevsim.hw.cpu import vmsa_seals
from sevsim.hw.engine import PAGE


class EsLaunch(FirmwareCore):
    """SEV-ES launch: LAUNCH_UPDATE_VMSA."""

    def launch_update_vmsa(self, handle: int, spa: int, length: int = PAGE) -> None:
        """Encrypt the VMSA page at `spa` with the guest's key, measure it, seal it."""
        ctx = self._guest(handle, "LAUNCH_UPDATE_VMSA", GuestState.LUPDATE)
        if PolicyFlags.ES not in ctx.policy.flags:
            raise FirmwareError(SevStatus.POLICY_FAILURE,
                                f"LAUNCH_UPDATE_VMSA: guest {handle}'s policy does not "
                                "enable SEV-ES")
        if not ctx.asid:
            raise FirmwareError(SevStatus.INACTIVE, "ACTIVATE the guest before LAUNCH_UPDATE_VMSA")
        if length != PAGE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"a VMSA is one 4 KiB page, not 0x{length:x} bytes")
        if spa % PAGE:
            raise FirmwareError(SevStatus.INVALID_ADDRESS,
                                f"VMSA address 0x{spa:x} is not page aligned")
        page = self._encrypt_in_place(ctx, spa, PAGE)
        ctx.launch_digest.update(page)
        vmsa_seals(self._memory).seal(ctx.asid, spa, page)
