"""A full host: the BIOS's ASID split as a Host option, and VM creation whose cost does not
grow with the VMs already running."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sevsim.errors import ConfigError, ResourceExhausted
from sevsim.host.machine import Host
from sevsim.hw.chips import GuestMode
from sevsim.hw.mmu import GuestAddressSpace
from sevsim.hw.npt import NOT_PRESENT, NestedPageTable
from sevsim.testing import address_space


@pytest.mark.parametrize("min_sev_asid", [1, 100, 300, 509, 510])
def test_min_sev_asid_is_what_cpuid_reports_and_how_asids_split(min_sev_asid):
    host = Host(memory="64M", min_sev_asid=min_sev_asid)
    leaf = host.chip.leaf_8000001f()
    assert (leaf.ecx, leaf.edx) == (509, min_sev_asid)
    assert host.chip.asid_range(GuestMode.SNP) == range(1, min_sev_asid)
    assert host.chip.asid_range(GuestMode.SEV_ES) == range(1, min_sev_asid)
    assert host.chip.asid_range(GuestMode.SEV) == range(min_sev_asid, 510)


def test_without_the_option_the_preset_split_stays():
    assert Host(memory="64M").chip.leaf_8000001f().edx == 100


@pytest.mark.parametrize(("chip", "min_sev_asid"),
                         [("milan", 0), ("milan", 511), ("milan", -5), ("naples", 2),
                          ("genoa", 1008)])
def test_a_split_outside_the_chip_is_refused(chip, min_sev_asid):
    with pytest.raises(ConfigError, match=str(min_sev_asid)):
        Host(chip, memory="64M", min_sev_asid=min_sev_asid)


def test_naples_accepts_the_only_split_it_has():
    assert Host("naples", memory="64M", min_sev_asid=1).chip.leaf_8000001f().edx == 1


def test_a_full_milan_runs_out_at_the_510th_es_or_snp_vm():
    host = Host(memory="600M", min_sev_asid=510)  # every ASID for SEV-ES and SNP
    vms = [host.create_vm("snp" if i % 2 else "sev-es", memory="1M") for i in range(509)]
    assert sorted(vm.asid for vm in vms) == list(range(1, 510))
    for mode in ("snp", "sev-es"):
        with pytest.raises(ResourceExhausted, match=r"no free .* ASID.*509 \(1\.\.509\)"):
            host.create_vm(mode, memory="1M")
    with pytest.raises(ResourceExhausted, match=r"no free sev ASID.*has 0"):
        host.create_vm("sev", memory="1M")  # nothing left above the split
    vms[7].destroy()
    assert host.create_vm("snp", memory="1M").asid == vms[7].asid  # after a DF_FLUSH


def test_sev_asids_follow_the_split():
    host = Host(memory="128M", min_sev_asid=505)
    sev = [host.create_vm("sev", memory="1M") for _ in range(5)]
    assert [vm.asid for vm in sev] == [505, 506, 507, 508, 509]
    with pytest.raises(ResourceExhausted, match=r"no free sev ASID.*\(505\.\.509\)"):
        host.create_vm("sev", memory="1M")
    assert host.create_vm("snp", memory="1M").asid == 1


def launched(host: Host, elf: bytes):
    vm = host.create_vm("snp", memory="8M")
    vm.load(elf)
    vm.launch()
    return vm


def test_launching_a_vm_reaches_no_other_vm(build, monkeypatch):
    """Host writes, RMP changes and frame releases go to the address spaces that map the
    frames (the memory's reverse map, by 2 MiB granule), so the n-th VM's launch does the
    work of the first one: before, every SNP VM re-scanned its NPT at every RMP change of any
    VM. Only the VM just below in memory may share a granule with the new one."""
    calls: Counter[int] = Counter()

    def counting(original):
        def spy(self, *args):
            calls[id(self)] += 1
            return original(self, *args)
        return spy

    for name in ("host_wrote", "rmp_changed", "release", "refresh"):
        monkeypatch.setattr(GuestAddressSpace, name, counting(getattr(GuestAddressSpace, name)))
    elf = build("hello").read_bytes()
    host = Host(memory="256M", min_sev_asid=510)
    first = launched(host, elf)
    work_of_first = calls[id(address_space(first))]
    others = [launched(host, elf) for _ in range(12)]
    calls.clear()
    last = launched(host, elf)
    assert calls[id(address_space(last))] == work_of_first > 0
    assert set(calls) <= {id(address_space(last)), id(address_space(others[-1]))}
    results = host.run([first, *others, last], timeout=120)
    assert all(r.exit_code == 0 and "Hello from a sevsim guest!" in r.console
               for r in results.values())


def test_the_nested_page_table_finds_the_guest_pages_of_frames():
    npt = NestedPageTable(64 << 12)
    npt.map(0, 100, 4)
    npt.map(10 << 12, 101)  # an alias of frame 101
    npt.map(20 << 12, 0)  # frame 0 is a frame like any other
    assert npt.gpns_of(101, 103).tolist() == [1, 2, 10]
    assert npt.gpns_of(0, 1).tolist() == [20]
    assert npt.frames(0, 5).tolist() == [100, 101, 102, 103, NOT_PRESENT]
    assert npt.frame(20) == 0 and npt.frame(64) == NOT_PRESENT and npt.frame(-1) == NOT_PRESENT
    npt.unmap(1 << 12, 2)
    assert npt.gpns_of(101, 103).tolist() == [10]
    assert npt.lookup((20 << 12) + 5) == 5 and npt.lookup(1 << 12) is None


def test_creating_a_vm_allocates_after_the_last_one():
    """Next fit: the frames of a new VM come from where the last allocation ended, so a host
    full of VMs does not search past them; freed frames are used again once the end is
    reached."""
    host = Host(memory="64M")
    a, b = (host.create_vm("sev", memory="16M") for _ in range(2))
    assert int(b.hv.frames[0]) == int(a.hv.frames[-1]) + 1
    a.destroy()
    c = host.create_vm("sev", memory="16M")
    assert int(c.hv.frames[0]) == int(b.hv.frames[-1]) + 1
    d = host.create_vm("sev", memory="16M")  # the end is too small: back to a's frames
    assert np.array_equal(d.hv.frames, a.hv.frames)
