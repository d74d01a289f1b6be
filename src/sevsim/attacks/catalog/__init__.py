"""The attack catalog (../shared/research/attacks.md §2), one module per entry, by id."""

from __future__ import annotations

from sevsim.attacks.catalog.a00_snooping import MemorySnooping
from sevsim.attacks.catalog.a01_cold_boot import ColdBoot
from sevsim.attacks.catalog.a02_vmcb_registers import VmcbRegisters
from sevsim.attacks.catalog.a03_replay import CiphertextReplay
from sevsim.attacks.catalog.a04_block_move import BlockMove
from sevsim.attacks.catalog.a05_severed import Severed
from sevsim.attacks.catalog.a06_io_oracle import IoOracle
from sevsim.attacks.catalog.a07_page_faults import PageFaultChannel
from sevsim.attacks.catalog.a08_crossline import CrossLine
from sevsim.attacks.catalog.a09_tlb_poisoning import TlbPoisoning
from sevsim.attacks.catalog.a10_cipherleaks import CipherLeaks
from sevsim.attacks.catalog.a11_sev_step import SevStep
from sevsim.attacks.catalog.a12_cbit_cpuid import CbitCpuid
from sevsim.attacks.catalog.a13_wesee import WeSee
from sevsim.attacks.catalog.a14_heckler import Heckler
from sevsim.attacks.catalog.a15_cachewarp import CacheWarp
from sevsim.attacks.catalog.a16_badram import BadRam
from sevsim.attacks.catalog.a17_heracles import Heracles
from sevsim.attacks.catalog.a19_rmpocalypse import RmPocalypse
from sevsim.attacks.catalog.a20_forged_pcrs import ForgedPcrs
from sevsim.attacks.catalog.f01_invalid_curve import InvalidCurvePdh
from sevsim.attacks.catalog.f02_sp_firmware import SpFirmwareBug
from sevsim.attacks.catalog.f03_permutation import LaunchPermutation
from sevsim.attacks.framework import Attack

ATTACKS: dict[str, Attack] = {attack.id: attack for attack in (
    MemorySnooping(),
    ColdBoot(),
    VmcbRegisters(),
    CiphertextReplay(),
    BlockMove(),
    Severed(),
    IoOracle(),
    PageFaultChannel(),
    CrossLine(),
    TlbPoisoning(),
    CipherLeaks(),
    SevStep(),
    CbitCpuid(),
    WeSee(),
    Heckler(),
    CacheWarp(),
    BadRam(),
    RmPocalypse(),
    Heracles(),
    ForgedPcrs(),
    InvalidCurvePdh(),
    SpFirmwareBug(),
    LaunchPermutation(),
)}
"""Every attack of the catalog by its id ("A0" ... "F3"), in the order the matrix lists them."""
