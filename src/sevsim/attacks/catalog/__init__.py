"""The attack catalog (../shared/research/attacks.md §2), one module per entry, by id."""

from __future__ import annotations

from sevsim.attacks.catalog.a00_snooping import MemorySnooping
from sevsim.attacks.catalog.a15_cachewarp import CacheWarp
from sevsim.attacks.catalog.a19_rmpocalypse import RmPocalypse
from sevsim.attacks.framework import Attack

ATTACKS: dict[str, Attack] = {attack.id: attack for attack in (
    MemorySnooping(),
    CacheWarp(),
    RmPocalypse(),
)}
