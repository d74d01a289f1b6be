"""End to end: real guest code in plain and SEV VMs, and what the host can and cannot see."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import blocks_found, fnv1a64, secret_bytes, symbol
from sevsim import Host
from sevsim.abi.svm import ExitCode
from sevsim.errors import (
    ConfigError,
    GuestFault,
    GuestTimeout,
    ImageError,
    ResourceExhausted,
    VmStateError,
)
from sevsim.hw.cpu import VmExit
from sevsim.hw.engine import PAGE
from sevsim.testing import host_frames, memory_controller, vcpu_engine

SECRET = secret_bytes()


def run_secret(host: Host, mode: str, build) -> tuple:
    vm = host.create_vm(mode=mode, memory="16M")
    vm.load(build("secret"))
    vm.launch()
    result = vm.run(timeout=30)
    return vm, result


@pytest.mark.parametrize("chip", ["naples", "rome", "milan", "genoa", "turin"])
def test_secret_invisible_to_host_under_sev_visible_without(chip: str, build) -> None:
    outputs = {}
    for mode in ("none", "sev"):
        host = Host(chip=chip, memory="64M")
        vm, result = run_secret(host, mode, build)
        assert result.exit_code == 0
        outputs[mode] = result.console
        digest = int(re.search(r"secret digest: 0x([0-9a-f]{16})", result.console)[1], 16)
        assert digest == fnv1a64(SECRET)  # the guest really computed on the secret
        page = int(re.search(r"secret page at 0x([0-9a-f]+)", result.console)[1], 16)
        views = {
            "hypervisor GPA read": vm.read_gpa(page, PAGE),
            "host view": vm.host_view(),
            "SPA read": host.hypervisor.read_spa(host.hypervisor.gpa_to_spa(vm.hv, page), PAGE),
            "DRAM dump": host.dram_dump(),
        }
        # TSME (Milan's default platform) keeps even a plain VM's cells encrypted in the
        # modules, transparently to every read through the CPU
        tsme = host.firmware.platform.tsme
        for name, view in views.items():
            found = blocks_found(view, SECRET)
            if mode == "sev" or (tsme and name == "DRAM dump"):
                assert found == 0, f"{chip}: {found} secret blocks leaked through {name}"
            else:
                assert found == len(SECRET) // 16, f"{chip}: plain VM secret missing in {name}"
        # a page the guest shared is plaintext to the host in both modes
        assert b"PUBLIC-MESSAGE-FOR-THE-HOST" in views["host view"]
        assert vm.shared_pages(), "the guest kernel told the hypervisor about its shared page"
    assert outputs["none"] == outputs["sev"]


def test_secret_gone_from_dram_after_the_vm_is_destroyed(build) -> None:
    host = Host(memory="64M")
    vm, _ = run_secret(host, "sev", build)
    vm.destroy()
    assert blocks_found(host.dram_dump(), SECRET) == 0


def _blocks(console: str) -> list[bytes]:
    return [bytes.fromhex(line.split(":")[1].replace(" ", ""))
            for line in console.splitlines() if line.startswith("block")]


@pytest.mark.parametrize("chip", ["naples", "milan"])
def test_host_ciphertext_writes_decrypt_under_the_guest_key(chip: str, build) -> None:
    host = Host(chip=chip, memory="64M")
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("blocks"))
    vm.launch()
    original = vm.run(timeout=10).console
    page = int(re.search(r"page at 0x([0-9a-f]+)", original)[1], 16)
    assert _blocks(original) == [b"BLOCK-ZERO-16-B!", b"BLOCK-ONE--16-B!"]

    def rerun(write: bytes) -> list[bytes]:
        """A fresh VM of the same image; the host writes `write` (or moves block 1 onto 0)."""
        vm2 = host.create_vm(mode="sev", memory="8M")
        vm2.load(build("blocks"))
        vm2.launch()
        spa = host.hypervisor.gpa_to_spa(vm2.hv, page)
        cipher = host.hypervisor.read_spa(spa, 32)
        assert cipher[:16] != b"BLOCK-ZERO-16-B!"  # the host only ever sees ciphertext
        host.hypervisor.write_spa(spa, write or cipher[16:32] + cipher[16:32])
        blocks = _blocks(vm2.run(timeout=10).console)
        vm2.destroy()
        return blocks

    # Replaying block 1's ciphertext into block 0 (another SPA) decrypts to garbage for XEX...
    moved = rerun(b"")
    assert moved[1] == b"BLOCK-ONE--16-B!"
    assert moved[0] not in (b"BLOCK-ZERO-16-B!", b"BLOCK-ONE--16-B!")
    # and writing arbitrary bytes gives the guest their decryption, a whole random block
    garbage = rerun(bytes(16))
    assert garbage[0] != bytes(16) and garbage[1] == b"BLOCK-ONE--16-B!"


def test_xe_block_move_is_predictable_on_zen1(build) -> None:
    """SEVurity on Naples: moving ciphertext from SPA a to b yields m ^ T(a) ^ T(b)."""
    host = Host(chip="naples", memory="64M")
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("blocks"))
    vm.launch()
    page = symbol(build("blocks"), "page")
    spa = host.hypervisor.gpa_to_spa(vm.hv, page)
    cipher = host.hypervisor.read_spa(spa, 32)
    host.hypervisor.write_spa(spa, cipher[16:32])  # block 1's ciphertext into block 0
    console = vm.run(timeout=10).console
    assert f"page at 0x{page:x}" in console
    tweak = memory_controller(host).engine.tweak
    expected = bytes(a ^ b ^ c for a, b, c in zip(b"BLOCK-ONE--16-B!", tweak(spa + 16),
                                                   tweak(spa), strict=True))
    assert _blocks(console)[0] == expected


def test_two_sev_vms_cannot_read_each_other(build) -> None:
    host = Host(memory="128M")
    victim, result = run_secret(host, "sev", build)
    page = int(re.search(r"secret page at 0x([0-9a-f]+)", result.console)[1], 16)
    victim_spa = host.hypervisor.gpa_to_spa(victim.hv, page)
    for mode in ("sev", "none"):
        spy = host.create_vm(mode=mode, memory="8M")
        spy.load(build("window"))
        spy.launch()
        window = symbol(build("window"), "window")
        # the hypervisor maps the victim's secret frame into the spy's nested page table
        host.hypervisor.npt_map(spy.hv, window, victim_spa)
        console = spy.run(timeout=10).console
        assert f"window at 0x{window:x}" in console
        seen = bytes.fromhex(console.split(":", 1)[1].replace(" ", ""))
        assert seen != SECRET[:32]
        assert seen[:16] != SECRET[:16] and seen[16:32] != SECRET[16:32]
        spy.destroy()
    # the victim's own view is intact
    assert vcpu_engine(victim.hv.vcpus[0]).mem_read(page, 32) == SECRET[:32]


def test_sev_guest_sees_its_mode(build) -> None:
    for mode, status, eax in (("none", 0, 0), ("sev", 1, 2)):
        host = Host(chip="milan")
        vm = host.create_vm(mode=mode, memory="8M")
        vm.load(build("hello"))
        vm.launch()
        console = vm.run(timeout=10).console
        assert f"SEV_STATUS=0x{status:x}" in console
        assert f"eax=0x{eax:08x}" in console
        assert ("c-bit=51" in console) == (mode == "sev")


def test_msr_and_register_exits_visible_to_the_sev_hypervisor(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("regs"))
    vm.launch()
    seen: list[tuple[int, int]] = []
    inner = vm.hv.hypercall_handler

    def spy(hv, nr: int, args: tuple[int, ...]) -> int | None:
        seen.append((nr, args[0]))  # RBX, straight from the readable VMCB save area
        return inner(hv, nr, args) if inner else None

    vm.hv.hypercall_handler = spy
    result = vm.run(timeout=10)
    assert result.exit_code == 1 and "rdmsr SEV_STATUS=0x1" in result.console
    assert (0x5E5EC0DE, 0x1122334455667788) in seen


def test_smp_guest_runs_on_all_vcpus(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="16M", vcpus=4)
    vm.load(build("smp"))
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 0
    assert f"vcpus 4 sum {sum(i * i for i in range(2000000))}" in result.console


def test_npf_channel_hypervisor_tracks_guest_page_accesses(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("window"))
    vm.launch()
    window = symbol(build("window"), "window")
    spa = host.hypervisor.gpa_to_spa(vm.hv, window)
    host.hypervisor.npt_unmap(vm.hv, window)
    faults: list[int] = []

    def on_npf(hv, vcpu, gpa: int, info: int) -> bool:
        faults.append(gpa)
        host.hypervisor.npt_map(hv, gpa & ~0xFFF, spa)
        return True

    vm.hv.npf_handler = on_npf
    result = vm.run(timeout=10)
    assert result.exit_code == 0
    assert faults and all(f & ~0xFFF == window for f in faults)


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("blob, message", [
    (b"", "malformed ELF"),
    (b"\x7fELF" + bytes(60), "malformed ELF|not a 64-bit"),
    (b"MZ" + bytes(200), "malformed ELF"),
])
def test_malformed_elf_rejected(blob: bytes, message: str) -> None:
    vm = Host().create_vm(mode="sev", memory="4M")
    with pytest.raises(ImageError, match=message):
        vm.load(blob)
    with pytest.raises(VmStateError):
        vm.launch()


def _patched(path, offset: int, data: bytes) -> bytes:
    blob = bytearray(path.read_bytes())
    blob[offset:offset + len(data)] = data
    return bytes(blob)


def test_non_x86_64_and_wrong_type_elves_rejected(build) -> None:
    elf = build("hello")
    vm = Host().create_vm(mode="sev", memory="4M")
    with pytest.raises(ImageError, match="EM_X86_64"):
        vm.load(_patched(elf, 18, (183).to_bytes(2, "little")))  # EM_AARCH64
    with pytest.raises(ImageError, match="ET_EXEC"):
        vm.load(_patched(elf, 16, (3).to_bytes(2, "little")))  # ET_DYN
    with pytest.raises(ImageError, match="entry point"):
        vm.load(_patched(elf, 24, (0x10).to_bytes(8, "little")))
    with pytest.raises(ImageError, match="64-bit"):
        vm.load(_patched(elf, 4, b"\x01"))


def test_image_too_big_for_memory(build) -> None:
    vm = Host().create_vm(mode="sev", memory="1M")
    with pytest.raises(ImageError, match="does not fit"):
        vm.load(build("bench"))


@pytest.mark.parametrize("crash, error, message", [
    (1, GuestFault, "nested page fault at GPA 0x7f000000"),
    (2, GuestFault, "#UD"),
    (4, GuestFault, "#GP.*0xc0de0001"),
    (5, GuestFault, "#DE"),
])
def test_crashing_guest_stops_cleanly_other_vms_unaffected(crash, error, message, build) -> None:
    host = Host(memory="128M")
    bystander = host.create_vm(mode="sev", memory="8M")
    bystander.load(build("hello"))
    bystander.launch()
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("crash", f"-DCRASH={crash}"))
    vm.launch()
    with pytest.raises(error, match=message):
        vm.run(timeout=10)
    assert "about to misbehave" in vm.console
    assert vm.hv.stopped
    vm.run(timeout=1)  # a stopped VM stays stopped: nothing runs, nothing raises
    assert bystander.run(timeout=10).exit_code == 0
    vm.destroy()


def test_guest_that_never_halts_times_out(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("crash", "-DCRASH=3"))
    vm.launch()
    with pytest.raises(GuestTimeout, match=r"0\.3 s"):
        vm.run(timeout=0.3)
    assert vm.hv.stopped


def test_asids_run_out_with_a_clear_error_and_recycle() -> None:
    host = Host(chip="naples", memory="128M")  # Naples: 15 SEV ASIDs
    vms = [host.create_vm(mode="sev", memory="1M") for _ in range(15)]
    assert sorted(vm.asid for vm in vms) == list(range(1, 16))
    frames_before = host_frames(host).used
    with pytest.raises(ResourceExhausted, match=r"no free sev ASID.*15"):
        host.create_vm(mode="sev", memory="1M")
    assert host_frames(host).used == frames_before  # nothing leaked
    vms[3].destroy()
    again = host.create_vm(mode="sev", memory="1M")  # needs DF_FLUSH, done by the hypervisor
    assert again.asid == vms[3].asid
    host.create_vm(mode="none", memory="1M")  # plain VMs need no SEV ASID


def test_lifecycle_misuse_is_refused(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="8M")
    with pytest.raises(VmStateError):
        vm.run()
    vm.load(build("hello"))
    with pytest.raises(VmStateError):
        vm.load(build("hello"))
    vm.launch()
    with pytest.raises(VmStateError):
        vm.launch()
    with pytest.raises(ConfigError, match="unknown mode"):
        host.create_vm(mode="tdx")
    with pytest.raises(ConfigError, match="does not support"):
        Host(chip="naples").create_vm(mode="sev-es")
    with pytest.raises(ConfigError):
        host.create_vm(memory="12Q")


def test_exit_handler_sees_vmcb_exit_info(build) -> None:
    host = Host()
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(build("hello"))
    vm.launch()
    seen: list[VmExit] = []
    original = host.hypervisor.handle_exit

    def record(hv, vcpu, exit: VmExit) -> bool:
        seen.append(exit)
        assert vcpu.vmcb.exit_code == exit.code
        return original(hv, vcpu, exit)

    host.hypervisor.handle_exit = record  # type: ignore[method-assign]
    vm.run(timeout=10)
    codes = {e.code for e in seen}
    assert {ExitCode.IOIO, ExitCode.CPUID, ExitCode.HLT} <= codes
    assert np.count_nonzero([e.code is ExitCode.IOIO for e in seen]) >= len(vm.console)


def test_many_vms_share_the_host_and_a_crash_stays_contained(build) -> None:
    host = Host(memory="256M")
    vms = [host.create_vm(mode=mode, memory="16M", vcpus=vcpus)
           for mode, vcpus in (("sev", 1), ("none", 1), ("sev", 2), ("sev", 1))]
    programs = [build("secret"), build("secret"), build("smp"), build("crash", "-DCRASH=2")]
    for vm, elf in zip(vms, programs, strict=True):
        vm.load(elf)
        vm.launch()
    results = host.run(vms, timeout=60)
    secret, plain, smp, crashed = (results[vm.hv.vm_id] for vm in vms)
    assert secret.error is None and plain.error is None and smp.error is None
    assert secret.console == plain.console and "secret digest" in secret.console
    assert "vcpus 2 sum" in smp.console
    assert isinstance(crashed.error, GuestFault) and "#UD" in str(crashed.error)
    assert len({vm.asid for vm in vms}) == 4


def test_a_spinning_vm_times_out_while_the_others_finish(build) -> None:
    host = Host(memory="128M")
    quick, spinner = host.create_vm(memory="8M"), host.create_vm(memory="8M")
    quick.load(build("hello"))
    spinner.load(build("crash", "-DCRASH=3"))
    for vm in (quick, spinner):
        vm.launch()
    results = host.run([quick, spinner], timeout=1.0)
    assert results[quick.hv.vm_id].error is None
    assert "Hello from a sevsim guest!" in results[quick.hv.vm_id].console
    assert isinstance(results[spinner.hv.vm_id].error, GuestTimeout)
