"""The attacks that need a write-back cache (A15 CacheWarp, A19 RMPocalypse), and the cache
and RMP-in-DRAM mechanisms they rest on.

Their verdicts at every mode and fix are checked in tests/test_attack_matrix.py; here are the
attacks' own behaviour and the tests that pin down the cache's contract (held lines, WBINVD,
INVD, the Secure Processor writing beneath the caches) and the RMP's home in DRAM.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.rmp import (
    PERM_ALL,
    RMP_ASSIGNED,
    RMP_ENTRY_SIZE,
    RMP_GPA_MASK,
    rmp_entry_offset,
    rmp_table_size,
)
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import Setting, Trace, Verdict
from sevsim.attacks.lab import Lab
from sevsim.attacks.runner import run_attack
from sevsim.errors import ConfigError, RmpViolation
from sevsim.host.machine import Host
from sevsim.hw.cache import LINE
from sevsim.hw.chips import TweakMode
from sevsim.hw.engine import PAGE, EncryptionEngine, TweakFunction
from sevsim.hw.memory import MemoryController
from sevsim.hw.rmp import Rmp
from sevsim.testing import guest_cpu

X, OK = Verdict.BROKEN, Verdict.STOPPED
def test_cachewarp_needs_the_invd_the_fix_removes() -> None:
    """The same attack with INVD made to write back (a fixed platform) gets nothing: the
    verdict comes from the cache, not from the mode."""
    vulnerable = run_attack(ATTACKS["A15"], Setting("sev-es"))
    fixed = run_attack(ATTACKS["A15"], Setting("sev-es", features=frozenset({"invd-fixed-ucode"})))
    assert (vulnerable.verdict, fixed.verdict) == (X, OK)
    assert any("1 dirty line(s) cached" in step for step in vulnerable.trace)


def test_rmpocalypse_corrupts_the_table_only_on_vulnerable_firmware() -> None:
    broken = run_attack(ATTACKS["A19"], Setting("snp"))
    fixed = run_attack(ATTACKS["A19"], Setting("snp", features=frozenset({"fixed-firmware"})))
    assert any("assigned=False" in step for step in broken.trace)
    assert any("assigned=True, immutable=True" in step for step in fixed.trace)


def test_the_lab_gives_the_platform_the_attacks_flaws_unless_fixed() -> None:
    with pytest.raises(ConfigError, match="unknown platform flaw 'no-such-flaw'"):
        Lab(Setting("snp"), Trace(), flaws=frozenset({"no-such-flaw"}))
    flaw = frozenset({"vulnerable_cachewarp"})
    for features, survives in ((frozenset(), False), (frozenset({"invd-fixed-ucode"}), True),
                               (frozenset({"alias-check"}), False)):
        hv = Lab(Setting("sev", features=features), Trace(), flaws=flaw).hypervisor
        page = hv.allocate_page()
        with hv.holding_cache():
            hv.write_spa(page, b"store")
            hv.invd()
        assert (hv.read_spa(page, 5) == b"store") is survives, features
    hv = Lab(Setting("sev"), Trace()).hypervisor  # no flaw asked for: today's platform
    page = hv.allocate_page()
    with hv.holding_cache():
        hv.write_spa(page, b"store")
        hv.invd()
    assert hv.read_spa(page, 5) == b"store"


# -- the cache ------------------------------------------------------------------------------------


def make_memory(nframes: int = 4) -> MemoryController:
    engine = EncryptionEngine(TweakMode.XEX_STRONG, TweakFunction.weak(0xC0FFEE))
    engine.load_key(1, os.urandom(16))
    memory = MemoryController(nframes * PAGE, engine)
    memory.cells[:] = np.random.default_rng(7).integers(0, 256, nframes * PAGE, np.uint8)
    memory.cache.invd_writes_back = False  # Zen 3 before the CacheWarp fix, HWCR[4] clear
    return memory


def test_an_unheld_cache_writes_every_store_back_at_once() -> None:
    memory = make_memory()
    memory.write(0x100, b"new")
    assert memory.cache.dirty_lines == []
    assert memory.cache.invalidate() == 0
    assert memory.read(0x100, 3) == b"new"


def test_inside_a_hold_invd_drops_the_line_and_wbinvd_keeps_it() -> None:
    memory = make_memory()
    before = memory.read(0, 2 * PAGE)
    memory.hold_cache(True)
    memory.write(0x100, b"dropped")
    assert memory.cache.dirty_lines == [0x100]
    assert memory.read(0x100, 7) == b"dropped"  # the cores see the cache
    assert memory.cache.invalidate() == 1
    assert memory.read(0, 2 * PAGE) == before  # DRAM's older bytes, all of them
    memory.write(0x1000, b"kept")
    assert memory.cache.write_back() == 1
    assert memory.cache.invalidate() == 0
    assert memory.read(0x1000, 4) == b"kept"
    memory.hold_cache(False)


def test_a_store_dirties_whole_64_byte_lines_and_only_those() -> None:
    memory = make_memory()
    memory.hold_cache(True)
    memory.write(0x13F, b"ab")  # straddles two lines
    assert memory.cache.dirty_lines == [0x100, 0x140]
    memory.cache.write_back()
    memory.write(0x200, b"x")
    memory.write(0x23F, b"y")  # the same line again: still one dirty line
    assert memory.cache.dirty_lines == [0x200]
    line = memory.read(0x200, LINE)
    memory.cache.invalidate()
    assert memory.read(0x13F, 2) == b"ab"
    assert memory.read(0x200, LINE) != line
    memory.hold_cache(False)


def test_invd_restores_an_encrypted_line_to_its_older_plaintext() -> None:
    memory = make_memory()
    memory.convert_domain(1, 1, 1)  # frame 1 belongs to ASID 1: cells are its plaintext
    memory.cells[PAGE:2 * PAGE] = 0
    old = memory.read(PAGE, PAGE)  # ciphertext
    memory.hold_cache(True)
    memory.cache.store(PAGE + 0x40, 8)  # a guest store, as the vCPU's hook reports it
    memory.cells[PAGE + 0x40:PAGE + 0x48] = 0xAA
    memory.cache.invalidate()
    assert not memory.cells[PAGE:2 * PAGE].any()
    assert memory.read(PAGE, PAGE) == old
    memory.hold_cache(False)


def test_invd_that_writes_back_is_wbinvd() -> None:
    memory = make_memory()
    memory.cache.invd_writes_back = True
    memory.hold_cache(True)
    memory.write(0x100, b"kept")
    assert memory.cache.invalidate() == 1
    assert memory.read(0x100, 4) == b"kept"
    memory.hold_cache(False)


def test_releasing_the_hold_evicts_what_is_left() -> None:
    memory = make_memory()
    memory.hold_cache(True)
    memory.write(0x100, b"evicted")
    memory.hold_cache(False)
    assert memory.cache.dirty_lines == [] and not memory.cache.held
    assert memory.cache.invalidate() == 0
    assert memory.read(0x100, 7) == b"evicted"


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * LINE), st.integers(1, 3 * LINE))
def test_the_secure_processor_writes_beneath_the_dirty_lines(start: int, length: int) -> None:
    memory = make_memory()
    base = 0x400
    dram = memory.read(0, 2 * PAGE)
    memory.hold_cache(True)
    memory.write(base + LINE, b"C" * LINE)  # one dirty line among its neighbours
    seen = memory.read(0, 2 * PAGE)
    psp = bytes(range(length))
    with memory.cache.beneath(base + start, length):
        memory.write_soc(base + start, psp)
    expected_dram = bytearray(dram)
    expected_dram[base + start:base + start + length] = psp
    expected_view = bytearray(expected_dram)
    expected_view[base + LINE:base + 2 * LINE] = seen[base + LINE:base + 2 * LINE]
    assert memory.read(0, 2 * PAGE) == bytes(expected_view)  # the cores' stale line stays
    memory.cache.invalidate()
    assert memory.read(0, 2 * PAGE) == bytes(expected_dram)  # beneath it: the new bytes
    memory.hold_cache(False)


# -- the RMP in DRAM ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1023), st.integers(0, (1 << 39) - 1),
                          st.booleans(), st.booleans(), st.booleans(), st.integers(0, 1),
                          st.integers(0, PERM_ALL)), min_size=1, max_size=8))
def test_rmp_entries_round_trip_through_their_bytes(entries: list[tuple]) -> None:
    rmp = Rmp(len(entries))
    frames = np.arange(len(entries))
    for frame, (assigned, asid, gpn, validated, vmsa, immutable, size, perm) in enumerate(
            entries):
        rmp.assigned[frame], rmp.asid[frame], rmp.gpn[frame] = assigned, asid, gpn
        rmp.validated[frame], rmp.vmsa[frame], rmp.immutable[frame] = validated, vmsa, immutable
        rmp.page_size[frame], rmp.perms[frame] = size, (perm, perm >> 1, 0, perm)
    raw = rmp.encode(frames)
    assert raw.shape == (len(entries), RMP_ENTRY_SIZE)
    low = raw[:, :8].copy().view("<u8")[:, 0]
    assert ((low & RMP_ASSIGNED) != 0).tolist() == [e[0] for e in entries]
    assert ((low & RMP_GPA_MASK) >> 12).tolist() == [e[2] for e in entries]
    copy = Rmp(len(entries))
    copy.load(frames, raw)
    for frame in frames.tolist():
        assert copy.entry(frame) == rmp.entry(frame)
    assert (copy.perms == rmp.perms).all()


def test_the_bios_reserves_the_rmp_at_the_top_and_snp_init_writes_it() -> None:
    host = Host(memory="64M", seed=b"rmp home")
    base, end = host.hypervisor.rmp_table()
    assert end == 64 << 20 and end - base == -(-rmp_table_size((64 << 20) // PAGE) // PAGE) * PAGE
    vm = host.create_vm("snp", "4M")  # KVM's SNP_INIT
    assert max(vm.hv.frames) < base // PAGE  # never handed out
    assert host.hypervisor.rmp_entry(base).immutable  # the table's frames: the firmware's
    spa = host.hypervisor.gpa_to_spa(vm.hv, 0)
    host.hypervisor.rmpupdate(spa, vm.asid, 0)
    raw = host.hypervisor.read_spa(base + rmp_entry_offset(spa // PAGE), RMP_ENTRY_SIZE)
    low = int.from_bytes(raw[:8], "little")
    assert low & RMP_ASSIGNED and low & RMP_GPA_MASK == 0 and low >> 51 & 0x3FF == vm.asid
    with pytest.raises(RmpViolation, match="belongs to the firmware"):
        host.hypervisor.write_spa(base + rmp_entry_offset(spa // PAGE), bytes(16))


def test_a_stale_line_written_back_over_the_table_changes_the_entries() -> None:
    """Write-back is unchecked: the line was dirtied before SNP_INIT, when nothing checked."""
    for flushes in (False, True):
        host = Host(memory="64M", seed=b"rmp race", vulnerable_rmpocalypse=not flushes)
        base, _ = host.hypervisor.rmp_table()
        own = base + rmp_entry_offset(base // PAGE)
        host.hypervisor.hold_cache(True)
        host.hypervisor.write_spa(own, bytes(LINE))
        host.firmware.snp_init()
        assert host.hypervisor.rmp_entry(base).assigned  # the table in DRAM says so, for now
        assert host.hypervisor.wbinvd() == (0 if flushes else 1)
        host.hypervisor.hold_cache(False)
        assert host.hypervisor.rmp_entry(base).assigned is flushes
        assert host.hypervisor.rmp_entry(base + 4 * PAGE).assigned  # outside the line


def test_the_vcpus_report_their_stores_only_while_the_cache_is_held() -> None:
    """The store hooks exist only inside a hold: a guest running outside one leaves no line
    dirty; inside one, its instructions' stores and its kernel's own writes stay cached."""
    lab = Lab(Setting("sev"), Trace(), flaws=frozenset({"vulnerable_cachewarp"}))
    victim = lab.victim("lock_then_check", honest=b"access denied")
    hv, vm = lab.hypervisor, victim.vm
    hv.run_instructions(vm, 5)  # the guest boots and stores, with no hold: straight to DRAM
    assert hv.invd() == 0
    gpa = victim.symbol("locked")
    spa = hv.gpa_to_spa(vm, gpa)
    with hv.holding_cache():
        before = hv.read_spa(spa, 16)
        guest_cpu(vm.hv.vcpus[0]).write(gpa, (7).to_bytes(8, "little"))  # the kernel's write
        assert hv.read_spa(spa, 16) != before
        assert hv.invd() == 1
        assert hv.read_spa(spa, 16) == before
        hv.run_instructions(vm, 30)  # main stores the key and the lock
        assert hv.read_spa(spa, 16) != before
        assert hv.invd() >= 2
        assert hv.read_spa(spa, 16) == before
    hv.run_instructions(vm, 5)
    assert hv.invd() == 0
