"""Exact, deterministic vCPU scheduling: a time slice ends between two instructions, so a
program's result never depends on quantum length, host load or the VMs beside it; quanta are
counted in guest blocks or instructions, so seeded runs interleave identically."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from unicorn import x86_const as x86

from sevsim.errors import ConfigError, GuestTimeout
from sevsim.host.machine import Host
from sevsim.hw.quantum import Quantum
from sevsim.testing.bare_unicorn import load_bare, run_bare

SMALL = ("-DWORDS=256", "-DROUNDS=2")  # about 10,000 instructions: for one-instruction quanta


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Another process burning a core beside the test, as on a busy host."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def launched(host: Host, elf: Path, mode: str, vcpus: int = 1, memory: str = "16M"):
    vm = host.create_vm(mode=mode, memory=memory, vcpus=vcpus)
    vm.load(elf)
    vm.launch()
    return vm


@pytest.mark.parametrize("kwargs", [
    {}, {"blocks": 1, "instructions": 1}, {"blocks": 0}, {"instructions": -3},
    {"blocks": 1.5}, {"seconds": 0}, {"seconds": float("nan")}, {"seconds": float("inf")},
    {"blocks": True},
])
def test_a_quantum_is_exactly_one_positive_measure(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Quantum(**kwargs)


@pytest.mark.parametrize("quantum", [
    Quantum(instructions=1), Quantum(instructions=7), Quantum(instructions=1000),
    Quantum(instructions=100_000), Quantum(blocks=1), Quantum(blocks=7), Quantum(blocks=1000),
    Quantum(seconds=0.0001), Quantum(seconds=0.002),
], ids=repr)
def test_every_quantum_gives_the_bare_unicorn_result(build: Callable[..., Path],
                                                      quantum: Quantum) -> None:
    """Two VMs share the host, so every quantum ends somewhere inside the program: at any
    length, counted either way or by the clock, both print what the program computes alone."""
    tiny = quantum.instructions is not None and quantum.instructions < 1000
    elf = build("mix", *SMALL) if tiny or quantum.blocks == 1 else build("mix")
    expected = run_bare(elf.read_bytes()).console
    host = Host(memory="64M", quantum=quantum)
    vms = [launched(host, elf, mode) for mode in ("none", "sev")]
    results = host.run(vms, timeout=120)
    for vm in vms:
        assert results[vm.hv.vm_id].error is None
        assert results[vm.hv.vm_id].console == expected


def test_sev_es_and_snp_vmsas_survive_every_slice(build: Callable[..., Path]) -> None:
    """Under SEV-ES and SNP each slice's end is an exit that seals the VMSA and the next VMRUN
    checks it: the registers come back exactly, however often that happens."""
    elf = build("mix")
    expected = run_bare(elf.read_bytes()).console
    host = Host(memory="64M", quantum=Quantum(blocks=50))
    vms = [launched(host, elf, mode) for mode in ("sev-es", "snp")]
    results = host.run(vms, timeout=120)
    assert [results[vm.hv.vm_id].console for vm in vms] == [expected, expected]


def race(quantum: Quantum, mode: str, build: Callable[..., Path]) -> str:
    host = Host(memory="64M", seed=b"race", quantum=quantum)
    vm = launched(host, build("race", "-DROUNDS=500"), mode, vcpus=2)
    return vm.run(timeout=120).console


@pytest.mark.parametrize("mode", ["none", "sev", "snp"])
def test_racing_vcpus_interleave_identically_on_every_seeded_run(
        build: Callable[..., Path], cpu_hog: None, mode: str) -> None:
    """Two vCPUs racing on shared memory, with and without a lock, beside a CPU hog: the
    console records the interleaving (lost updates, which vCPU took each ticket), and every
    run prints the same. Quanta in blocks never split a basic block, so only instruction
    quanta can separate the unlocked counter's load from its store."""
    for quantum in (Quantum(instructions=13), Quantum(instructions=100), Quantum(blocks=5)):
        first = race(quantum, mode, build)
        assert race(quantum, mode, build) == first
        fields = dict(re.findall(r"(\w+) (0x[0-9a-f]+|\d+)", first))
        assert fields["locked"] == fields["tickets"] == "1000"  # the lock works
        assert int(fields["switches"]) > 20  # the vCPUs really took turns
        if quantum.instructions:
            assert int(fields["racy"]) < 1000  # and the unlocked counter lost updates


def test_the_interleaving_follows_the_quantum_not_the_clock(build: Callable[..., Path]) -> None:
    """Different quanta interleave differently (so the previous test can tell); a quantum
    in wall-clock seconds is exact too, but its interleaving depends on the machine."""
    consoles = {race(q, "none", build) for q in (Quantum(instructions=7),
                                                 Quantum(instructions=11))}
    assert len(consoles) == 2
    assert "locked 1000 tickets 1000" in race(Quantum(seconds=0.0005), "none", build)


def test_step_runs_exactly_one_instruction(build: Callable[..., Path]) -> None:
    """The hypervisor's single step walks the program's instructions one by one, as a bare
    engine stepping with count=1 does; the program still computes the right result."""
    elf = build("mix", *SMALL)
    host = Host(memory="64M")
    vm = launched(host, elf, "none")
    vcpu = vm.hv.vcpus[0]
    uc, entry, _, _ = load_bare(elf.read_bytes())
    assert vcpu.step() == 1  # the first VMRUN boots the guest kernel, then one instruction
    rip = entry
    uc.emu_start(rip, 0, count=1)
    for _ in range(300):
        assert vcpu.vmcb.read("rip") == uc.reg_read(x86.UC_X86_REG_RIP)
        assert vcpu.vmcb.read("rax") == uc.reg_read(x86.UC_X86_REG_RAX)
        assert vcpu.step() == 1
        uc.emu_start(uc.reg_read(x86.UC_X86_REG_RIP), 0, count=1)
    assert vcpu.run_instructions(1234) == 1234
    assert vm.run(timeout=60).console == run_bare(elf.read_bytes()).console


@pytest.mark.parametrize("mode", ["sev-es", "snp"])
def test_stepping_an_encrypted_state_guest_keeps_its_result(build: Callable[..., Path],
                                                            mode: str) -> None:
    elf = build("mix", *SMALL)
    vm = launched(Host(memory="64M"), elf, mode)
    vcpu = vm.hv.vcpus[0]
    assert [vcpu.step() for _ in range(50)] == [1] * 50
    assert vcpu.run_instructions(500) == 500
    assert vm.run(timeout=60).console == run_bare(elf.read_bytes()).console


def test_a_vm_paused_over_and_over_by_the_clock_computes_the_same(
        build: Callable[..., Path], cpu_hog: None) -> None:
    """run_for pauses at a wall-clock time, wherever the guest is: it must still be exact."""
    elf = build("mix", "-DROUNDS=64")
    vm = launched(Host(memory="64M"), elf, "sev")
    pauses = 0
    while not vm.run_for(0.001):
        pauses += 1
    assert pauses > 5
    assert vm.result().console == run_bare(elf.read_bytes()).console


def test_a_runaway_guest_stops_at_its_timeout(build: Callable[..., Path]) -> None:
    vm = launched(Host(memory="64M"), build("crash", "-DCRASH=3"), "sev")
    start = time.monotonic()
    with pytest.raises(GuestTimeout):
        vm.run(timeout=0.5)
    assert time.monotonic() - start < 2


def test_time_in_the_guest_kernel_counts_against_the_timeout(build: Callable[..., Path]) -> None:
    """A guest looping on 1 MiB console writes spends its time in system calls, not in its
    own code: the timeout still stops it on time."""
    vm = launched(Host(memory="64M"), build("spin", "-DWRITE_SIZE=1048576"), "sev")
    start = time.monotonic()
    with pytest.raises(GuestTimeout):
        vm.run(timeout=1)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
def test_a_meaningless_timeout_is_refused(build: Callable[..., Path], timeout: float) -> None:
    vm = launched(Host(memory="64M"), build("hello"), "none")
    with pytest.raises(ConfigError):
        vm.run(timeout=timeout)


@pytest.mark.slow
def test_full_bench_beside_a_cpu_hog_prints_the_bare_unicorn_checksum(
        build: Callable[..., Path], cpu_hog: None) -> None:
    """examples/bench.c at full scale in two VMs sharing a busy host, one quantum at a time."""
    elf = build("bench")
    expected = run_bare(elf.read_bytes()).console
    host = Host(memory="256M")
    vms = [launched(host, elf, mode, memory="64M") for mode in ("none", "sev")]
    results = host.run(vms, timeout=300)
    assert [results[vm.hv.vm_id].console for vm in vms] == [expected, expected]


def test_a_seeded_host_reproduces_consoles_dumps_and_reports(build: Callable[..., Path]) -> None:
    """Same seed, same VMs: racing vCPUs, DRAM (ciphertext under keys the firmware drew) and
    the signed SNP report all come out byte for byte the same; another seed changes them."""
    def once(seed: bytes) -> tuple[list[str], bytes, list[bytes]]:
        host = Host(memory="64M", seed=seed, quantum=Quantum(blocks=5))
        racing = launched(host, build("race", "-DROUNDS=200"), "snp", vcpus=2)
        reporting = launched(host, build("report"), "snp")
        results = host.run([racing, reporting], timeout=120)
        return ([results[vm.hv.vm_id].console for vm in (racing, reporting)],
                host.dram_dump().tobytes(), reporting.outputs)

    first = once(b"seed one")
    assert first[2]  # the report guest handed its report over
    assert once(b"seed one") == first
    other = once(b"seed two")
    assert other[1] != first[1] and other[2] != first[2]
