"""SEV-ES launch: LAUNCH_UPDATE_VMSA."""

from __future__ import annotations

from sevsim.firmware.core import FirmwareCore


class EsLaunch(FirmwareCore):
    """SEV-ES launch: LAUNCH_UPDATE_VMSA."""
