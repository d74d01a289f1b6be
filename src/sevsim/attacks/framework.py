"""How an attack is run and judged: settings, attempts, outcomes, the narrated trace.

An attack's code holds only its actor's handles (`sevsim.attacks.toolkit`) and returns an
`Attempt`: the bytes it recovered, or the result it made the victim compute, and what it saw.
The verdict is not the attack's to give: the runner compares the attempt with the victim's
ground truth (the secret the guest owner planted, the result an honest run computes), so an
attack succeeds only if its primitives actually got the data. A failure names what stopped
it: the typed error a primitive raised (an RMP violation at an SPA, a VMRUN integrity check,
a firmware status) or what the attacker saw instead of the secret (ciphertext, 0xFF).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sevsim.attacks.lab import Lab

MODES = ("none", "sev", "sev-es", "snp")


class Verdict(Enum):
    """A cell of the matrix, in the catalog's notation."""

    BROKEN = "✗"  # the attack worked: data recovered or the result changed
    STOPPED = "✓"  # the protection level stopped it
    NOT_APPLICABLE = "n/a"  # the level lacks what the attack targets


@dataclass(frozen=True)
class Setting:
    """Where an attack runs: the protection level, the chip, and the fixes and opt-in
    features turned on (names from `FEATURES`)."""

    mode: str
    chip: str = "milan"
    features: frozenset[str] = frozenset()

    def has(self, feature: str) -> bool:
        """Whether `feature` is on."""
        return feature in self.features

    @property
    def label(self) -> str:
        """`snp`, `sev@naples`, `snp+ciphertext-hiding`: how the matrix names the cell."""
        chip = "" if self.chip == "milan" else f"@{self.chip}"
        return self.mode + chip + "".join(f"+{f}" for f in sorted(self.features))


FEATURES = {
    "ciphertext-hiding": "host reads of SNP-private memory return 0xFF (Genoa and later)",
    "vmsa-reg-prot": "SNP VMSA register protection: saved registers XORed with a fresh nonce",
    "restricted-injection": "SNP Restricted Injection: the host may inject only #HV",
    "alternate-injection": "SNP Alternate Injection: interrupts come from a higher VMPL",
    "vc-insn-check": "the guest's #VC handler checks the instruction matches the exit code",
    "no-ia32-emulation": "the guest kernel refuses int 0x80 (Linux's ia32_emulation=0)",
    "alias-check": "the boot-time DRAM alias check (AMD-SB-3015) refuses SNP_INIT",
    "page-move-disabled": "firmware refuses SNP page moves and swaps for the guest",
    "invd-fixed-ucode": "microcode that makes a host INVD write back (CacheWarp fix)",
    "fixed-firmware": "firmware with the published fix for this attack",
    "fail-closed-checks": "the guest grants only on the exact privileged value and refuses "
                          "anything else (fault-injection hardening, as MCUboot's FIH does)",
}
"""The fixes and opt-in features a `Setting` can turn on, by name, with what each turns on."""


@dataclass(frozen=True)
class Attempt:
    """What the attack code ends with: `data` (the recovered secret, or the victim's result
    the attacker wanted) and `saw`, what it observed on the way (shown if the data is wrong)."""

    data: bytes
    saw: str


@dataclass
class Trace:
    """The narration of one run: what the attacker did and what it saw, in order."""

    steps: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> None:
        """Record one step."""
        self.steps.append(text)


@dataclass(frozen=True)
class Outcome:
    """One computed cell: the verdict, the data that proves it, and what stopped the attack."""

    attack: str
    setting: Setting
    verdict: Verdict
    evidence: str  # on success: the recovered or altered data; else what the attacker got
    stopped_by: str  # the mechanism that stopped it ("" on success or n/a)
    trace: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """The cell as the JSON matrix lists it."""
        return {"attack": self.attack, "mode": self.setting.mode, "chip": self.setting.chip,
                "features": sorted(self.setting.features), "verdict": self.verdict.value,
                "evidence": self.evidence, "stopped_by": self.stopped_by,
                "trace": list(self.trace)}


class Attack(ABC):
    """One catalog entry. Subclasses set the class attributes and implement `attempt`."""

    id: str  # "A5"
    name: str  # "SEVered page remapping"
    actor: str  # "malicious hypervisor"
    source: str  # the paper or advisory
    fixes: tuple[Setting, ...] = ()  # the "fix / feature" cells: settings that stop it
    # flaws of the platform the attack was published against (`Host` keywords such as
    # "vulnerable_rmpocalypse"): the lab's platform has them unless a feature fixes them
    flaws: frozenset[str] = frozenset()

    def not_applicable(self, setting: Setting) -> str | None:
        """Why the attack has no meaning at this level (None: run it)."""
        del setting
        return None

    @abstractmethod
    def attempt(self, lab: Lab) -> Attempt:
        """Run the attack in `lab`: set the victim up through the lab, attack through its
        attacker handles, return what was recovered. Raise the primitive's error to fail."""
