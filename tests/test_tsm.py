"""configfs-tsm reports: a guest makes /sys/kernel/config/tsm/report/r0, writes inblob and
privlevel, and reads outblob (a VCEK-signed report carrying them) and auxblob (the
certificate table); the kernel asks the Secure Processor again only when an input changed,
and refuses what Linux refuses with Linux's errnos, changing nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sevsim import Host
from sevsim.abi.snp_report import REPORT_SIZE, parse_cert_table, verify_report
from sevsim.guest import tsm
from sevsim.host.hypervisor import HvVm
from sevsim.host.vmm import VirtualMachine
from sevsim.testing import snp_context

NONCE = bytes(range(0xA0, 0xE0))


def tsm_vm(build: Callable[..., Path], action: bytes,
           requests: list[int]) -> tuple[Host, VirtualMachine]:
    """A VM running tests/guests/tsm.c; `requests` collects one entry per guest request
    the hypervisor carries to the firmware."""
    host = Host(chip="milan")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("tsm"))
    vm.host_input = action + NONCE + b"\xff"
    vm.launch()
    hv = vm.hypervisor
    original = hv.guest_request

    def counting(hvm: HvVm, request: int, response: int,
                 data: tuple[int, int] | None = None) -> dict[str, int]:
        requests.append(request)
        return original(hvm, request, response, data)

    hv.guest_request = counting  # type: ignore[method-assign]
    return host, vm


def lines(console: str) -> list[str]:
    return [line for line in console.splitlines() if not line.startswith("VMPL")]


@pytest.mark.parametrize(("action", "floor"), [(b"c", 0), (b"1", 1)])
def test_reports_cache_until_an_input_changes(build: Callable[..., Path], action: bytes,
                                              floor: int) -> None:
    requests: list[int] = []
    host, vm = tsm_vm(build, action, requests)
    result = vm.run(timeout=60)
    assert result.exit_code == 0, result.console
    below_floor = "-22" if floor else "2"  # privlevel 0 is below VMPL1's floor
    assert lines(result.console) == [
        "mkdir 0", "provider sev_guest", f"floor {floor}", "generation 0", "inblob 64",
        "generation 1", "outblob 1184", "outblob 1184", f"auxblob {len(vm.outputs[2])}",
        f"privlevel 0 {below_floor}", f"generation {2 - floor}", "privlevel 2 2",
        f"generation {3 - floor}", "outblob 1184"]
    first, again, aux, changed = vm.outputs
    assert first == again  # the cached report: one request for two reads and the auxblob
    assert len(requests) == 2
    firmware = host.firmware
    vcek = firmware.vcek_public_key(firmware.tcb)
    report = verify_report(first, vcek)
    assert len(first) == REPORT_SIZE
    assert report.report_data == NONCE and report.vmpl == floor
    assert report.measurement == snp_context(firmware, vm.hv.firmware_handle).launch_digest
    later = verify_report(changed, vcek)
    assert later.vmpl == 2 and later.report_data == NONCE
    assert later.report_id == report.report_id and changed != first
    table = parse_cert_table(aux)
    assert len(table) == 3
    assert aux == firmware.certificate_table(firmware.tcb)[:len(aux)]


def test_refusals_carry_linux_errnos_and_change_nothing(build: Callable[..., Path]) -> None:
    requests: list[int] = []
    host, vm = tsm_vm(build, b"e", requests)
    result = vm.run(timeout=60)
    assert result.exit_code == 0, result.console
    got = dict(line.rsplit(" ", 1) for line in lines(result.console))
    assert got == {
        "mkdir": "0", "mkdir again": f"-{tsm.EEXIST}",
        "outblob before inblob": f"-{tsm.EINVAL}", "inblob 65": f"-{tsm.EFBIG}",
        "privlevel 4": f"-{tsm.EINVAL}", "privlevel x": f"-{tsm.EINVAL}",
        "unknown entry": f"-{tsm.ENOENT}", "unknown attribute": f"-{tsm.ENOENT}",
        "read inblob": f"-{tsm.EACCES}", "write outblob": f"-{tsm.EACCES}",
        "outside": f"-{tsm.ENOENT}", "relative": f"-{tsm.ENOENT}",
        "dotdot": f"-{tsm.EINVAL}", "double slash": f"-{tsm.EINVAL}",
        "directory": f"-{tsm.EISDIR}", "below attribute": f"-{tsm.ENOTDIR}",
        "rmdir unknown": f"-{tsm.ENOENT}",
        "generation": "0",  # none of the refused writes counted
        "inblob": "64", "outblob": "1184", "rmdir": "0",
        "generation after rmdir": f"-{tsm.ENOENT}"}
    assert len(requests) == 1  # no refused operation reached the firmware
    [blob] = vm.outputs
    report = verify_report(blob, host.firmware.vcek_public_key(host.firmware.tcb))
    assert report.report_data == NONCE and report.vmpl == 0


def test_the_example_hands_out_a_report_and_its_certificates(
        build: Callable[..., Path]) -> None:
    host = Host(chip="genoa")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("tsm_report"))
    vm.host_input = NONCE
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 0, result.console
    outblob, auxblob = vm.outputs
    assert "provider sev_guest\n" in result.console
    assert f"outblob 1184 bytes, auxblob {len(auxblob)} bytes, generation 1 -> 1" \
        in result.console
    firmware = host.firmware
    assert verify_report(outblob, firmware.vcek_public_key(firmware.tcb)).report_data == NONCE
    assert len(parse_cert_table(auxblob)) == 3


def test_no_provider_outside_snp(build: Callable[..., Path]) -> None:
    vm = Host().create_vm(mode="sev-es", memory="16M")
    vm.load(build("tsm_report"))
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 2
    assert f"configfs-tsm unavailable: -{tsm.ENXIO}" in result.console


# -- the entries on their own (what a guest cannot easily reach) --------------------------------
def reports(floor: int = 0) -> tuple[tsm.TsmReports, list[bytes]]:
    slots = [bytes(tsm.SLOT_SIZE)] * tsm.SLOTS

    def store(slot: int, data: bytes) -> None:
        slots[slot] = data.ljust(tsm.SLOT_SIZE, b"\0")

    return tsm.TsmReports(lambda slot: slots[slot], store, floor, True), slots


R0 = tsm.ROOT + b"/r0"


def test_entries_run_out_and_rmdir_frees_one() -> None:
    group, _ = reports()
    for i in range(tsm.SLOTS):
        group.mkdir(tsm.ROOT + b"/r%d" % i)
    with pytest.raises(tsm.TsmError) as err:
        group.mkdir(tsm.ROOT + b"/spare")
    assert err.value.errno == tsm.ENOSPC
    group.rmdir(tsm.ROOT + b"/r2")
    group.mkdir(tsm.ROOT + b"/spare")
    assert sorted(group.entries()) == [b"r0", b"r1", b"r3", b"spare"]


def test_writes_stop_before_the_generations_meet() -> None:
    """Linux's guard against 2**64 unread writes: -EBUSY until someone reads a report."""
    group, slots = reports()
    group.mkdir(R0)
    slot, entry = group.entries()[b"r0"]
    entry.write_generation, entry.read_generation = (1 << 64) - 2, 0
    slots[slot] = entry.to_bytes().ljust(tsm.SLOT_SIZE, b"\0")
    group.write(R0 + b"/inblob", b"x")
    with pytest.raises(tsm.TsmError) as err:
        group.write(R0 + b"/inblob", b"y")
    assert err.value.errno == tsm.EBUSY
    made: list[tuple[bytes, int]] = []
    assert group.read(R0 + b"/outblob", lambda d, v: made.append((d, v)) or (b"R", b"A")) \
        == b"R"
    assert made == [(b"x".ljust(64, b"\0"), 0)]
    group.write(R0 + b"/inblob", b"y")  # read: writable again
    assert group.read(R0 + b"/generation", lambda d, v: -tsm.EIO) == b"0\n"


def test_a_failed_request_returns_its_errno_and_drops_the_old_report() -> None:
    group, _ = reports(floor=1)
    group.mkdir(R0)
    group.write(R0 + b"/inblob", b"n")
    group.write(R0 + b"/privlevel", b"0x3\n")
    assert group.read(R0 + b"/outblob", lambda d, v: (b"R%d" % v, b"")) == b"R3"
    for bad in (b"0", b"", b"3x", b"99999999999"):
        with pytest.raises(tsm.TsmError):
            group.write(R0 + b"/privlevel", bad)
    group.write(R0 + b"/inblob", b"m")
    with pytest.raises(tsm.TsmError) as err:
        group.read(R0 + b"/outblob", lambda d, v: -tsm.EIO)
    assert err.value.errno == tsm.EIO
    assert group.entries()[b"r0"][1].outblob is None
