"""Moving guests out of the key domain under policy: debug and migration."""

from __future__ import annotations

from sevsim.firmware.core import FirmwareCore


class GuestTransport(FirmwareCore):
    """Moving guests out of the key domain under policy: debug and migration."""
