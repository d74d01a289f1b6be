"""sevsim: AMD SEV confidential VMs in software.

The names in `__all__` are what the documentation's examples (docs/) use. All but
`SevsimError` load on first use: the relying party's tools (`sevsim.attest`, `sevsim measure`)
start without numpy, Unicorn or the firmware.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sevsim.errors import SevsimError

if TYPE_CHECKING:
    from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, gce_boot
    from sevsim.firmware.gce_endorser import simulated_endorser
    from sevsim.guest.kernel import kernel_identity
    from sevsim.guest.signing import sign_program
    from sevsim.host.debug import debug_read, debug_write
    from sevsim.host.elf import parse_elf
    from sevsim.host.machine import Host
    from sevsim.host.migration import Record as MigrationRecord
    from sevsim.host.migration import migrate
    from sevsim.host.secure_boot import SecureBootConfig
    from sevsim.host.vtpm import Vtpm
    from sevsim.hw.chips import PlatformOptions
    from sevsim.hw.quantum import Quantum

# public name -> (module, name there)
_LAZY = {
    "ConfidentialTechnology": ("sevsim.abi.tcg_eventlog", "ConfidentialTechnology"),
    "EventLog": ("sevsim.abi.tcg_eventlog", "EventLog"),  # a TCG crypto-agile event log
    "gce_boot": ("sevsim.abi.tcg_eventlog", "gce_boot"),  # the log a GCE VM's boot writes
    "Host": ("sevsim.host.machine", "Host"),
    "MigrationRecord": ("sevsim.host.migration", "Record"),  # the kinds of a migration stream
    "debug_read": ("sevsim.host.debug", "debug_read"),
    "debug_write": ("sevsim.host.debug", "debug_write"),
    "kernel_identity": ("sevsim.guest.kernel", "kernel_identity"),
    "migrate": ("sevsim.host.migration", "migrate"),
    "parse_elf": ("sevsim.host.elf", "parse_elf"),
    "PlatformOptions": ("sevsim.hw.chips", "PlatformOptions"),
    "Quantum": ("sevsim.hw.quantum", "Quantum"),
    "SecureBootConfig": ("sevsim.host.secure_boot", "SecureBootConfig"),  # a VM's db/dbx
    "sign_program": ("sevsim.guest.signing", "sign_program"),  # `sevsim guest sign`
    "Vtpm": ("sevsim.host.vtpm", "Vtpm"),  # the host-provided vTPM (a swtpm process)
    "simulated_endorser": ("sevsim.firmware.gce_endorser", "simulated_endorser"),  # Google's
}

__all__ = ["ConfidentialTechnology", "EventLog", "Host", "MigrationRecord", "PlatformOptions",
           "Quantum", "SecureBootConfig", "SevsimError", "Vtpm", "debug_read", "debug_write",
           "gce_boot", "kernel_identity", "migrate", "parse_elf", "sign_program",
           "simulated_endorser"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'sevsim' has no attribute {name!r}")
