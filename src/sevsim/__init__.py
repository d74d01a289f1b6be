"""sevsim: AMD SEV confidential VMs in software."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sevsim.errors import SevsimError

if TYPE_CHECKING:
    from sevsim.host.machine import Host
    from sevsim.hw.quantum import Quantum

__all__ = ["Host", "Quantum", "SevsimError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`sevsim.Host` loads the simulated machine only when asked for: the relying party's
    tools (`sevsim.attest`, `sevsim measure`) start without numpy, Unicorn or the firmware."""
    if name == "Host":
        from sevsim.host.machine import Host
        return Host
    if name == "Quantum":
        from sevsim.hw.quantum import Quantum
        return Quantum
    raise AttributeError(f"module 'sevsim' has no attribute {name!r}")
