"""The platform's identity: chip secret, CEK, PEK, PDH, OCA and their certificate chain."""

from __future__ import annotations

from sevsim.firmware.core import FirmwareCore


class PlatformPki(FirmwareCore):
    """The platform's identity: chip secret, CEK, PEK, PDH, OCA and their certificate chain."""
