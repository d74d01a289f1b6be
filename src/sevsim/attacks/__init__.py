"""The untrusted side's attacks: the attacker toolkit and the catalog of published attacks.

`toolkit` holds the primitives of a malicious hypervisor and a physical attacker; `catalog`
has one module per published attack, each with its victim program in `victims/`; `lab` runs
a victim for the guest owner and keeps its ground truth; `runner` runs an attack at a
setting and judges the outcome against that truth. The names in `__all__` are what the
documentation's examples use; they load on first use, so the CLI starts without the simulator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sevsim.attacks.catalog import ATTACKS
    from sevsim.attacks.framework import FEATURES, Attack, Attempt, Outcome, Setting, Verdict
    from sevsim.attacks.lab import Lab, Victim
    from sevsim.attacks.runner import run_attack, run_matrix
    from sevsim.attacks.toolkit import HypervisorAttacker, PhysicalAttacker

_LAZY = {
    "ATTACKS": "sevsim.attacks.catalog", "FEATURES": "sevsim.attacks.framework",
    "Attack": "sevsim.attacks.framework", "Attempt": "sevsim.attacks.framework",
    "Outcome": "sevsim.attacks.framework", "Setting": "sevsim.attacks.framework",
    "Verdict": "sevsim.attacks.framework", "Lab": "sevsim.attacks.lab",
    "Victim": "sevsim.attacks.lab", "run_attack": "sevsim.attacks.runner",
    "run_matrix": "sevsim.attacks.runner", "HypervisorAttacker": "sevsim.attacks.toolkit",
    "PhysicalAttacker": "sevsim.attacks.toolkit",
}

__all__ = ["ATTACKS", "FEATURES", "Attack", "Attempt", "HypervisorAttacker", "Lab", "Outcome",
           "PhysicalAttacker", "Setting", "Verdict", "Victim", "run_attack", "run_matrix"]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` when it is first asked for."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sevsim.attacks' has no attribute {name!r}")
