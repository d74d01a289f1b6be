"""The attack catalog (../shared/research/attacks.md §2), one module per entry, by id."""

from __future__ import annotations

from sevsim.attacks.catalog.a00_snooping import MemorySnooping
from sevsim.attacks.catalog.a17_heracles import Heracles
from sevsim.attacks.catalog.f01_invalid_curve import InvalidCurvePdh
from sevsim.attacks.catalog.f02_sp_firmware import SpFirmwareBug
from sevsim.attacks.catalog.f03_permutation import LaunchPermutation
from sevsim.attacks.framework import Attack

ATTACKS: dict[str, Attack] = {attack.id: attack for attack in (
    MemorySnooping(),
    Heracles(),
    InvalidCurvePdh(),
    SpFirmwareBug(),
    LaunchPermutation(),
)}
