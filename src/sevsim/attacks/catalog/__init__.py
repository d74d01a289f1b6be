"""The attack catalog (../shared/research/attacks.md §2), one module per entry, by id."""

from __future__ import annotations

from sevsim.attacks.catalog.a00_snooping import MemorySnooping
from sevsim.attacks.catalog.a05_severed import Severed
from sevsim.attacks.catalog.a06_io_oracle import IoOracle
from sevsim.attacks.catalog.a07_page_faults import PageFaultChannel
from sevsim.attacks.catalog.a08_crossline import CrossLine
from sevsim.attacks.catalog.a09_tlb_poisoning import TlbPoisoning
from sevsim.attacks.catalog.a11_sev_step import SevStep
from sevsim.attacks.framework import Attack

ATTACKS: dict[str, Attack] = {attack.id: attack for attack in (
    MemorySnooping(),
    Severed(),
    IoOracle(),
    PageFaultChannel(),
    CrossLine(),
    TlbPoisoning(),
    SevStep(),
)}
