"""SNP_DBG_DECRYPT / SNP_DBG_ENCRYPT, SNP_SHUTDOWN(_EX) and SNP_PLATFORM_STATUS.

Firmware-level tests on a host with SNP initialised, then the host's debug API
(`sevsim.host.debug`) and `sevsim debug read --mode snp` on real SNP guests.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import blocks_found, secret_bytes, symbol
from sevsim import Host
from sevsim.abi.snp_tcb import PolicyFlags, TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.abi.vmsa import Vmsa, reset_state
from sevsim.errors import FirmwareError, GuestFault, RmpViolation
from sevsim.firmware.snp import SnpPlatformState, SnpPlatformStatus, SnpStatusFlags
from sevsim.host.debug import debug_read, debug_write
from sevsim.hw.engine import PAGE
from sevsim.testing import guest_cpu, memory_controller

SECRET = secret_bytes()
POLICY = 0x30000  # SMT + reserved bit 17: no DEBUG
DEBUG_POLICY = POLICY | int(PolicyFlags.DEBUG)
ASID = 1


def host_page(host: Host, data: bytes = b"") -> int:
    frame = int(host.hypervisor.allocate_host_pages(1)[0])
    host.hypervisor.write_spa(frame * PAGE, data.ljust(PAGE, b"\0"))
    return frame * PAGE


def assign(host: Host, spa: int, asid: int, gpn: int) -> int:
    memory_controller(host).rmp.rmpupdate(np.array([spa // PAGE]), asid, np.array([gpn]))
    return spa


def launched(policy: int, chip: str = "milan") -> tuple[Host, int, int, int]:
    """A RUNNING SNP guest on ASID 1 with SECRET launched at GPA 0x10 pages and a VMSA;
    returns the host, its GCTX, the secret page's SPA and the VMSA's SPA."""
    host = Host(chip=chip, memory="64M")
    fw = host.firmware
    fw.snp_init()
    gctx = host_page(host)
    fw.snp_gctx_create(gctx)
    fw.snp_launch_start(gctx, policy)
    fw.snp_activate(gctx, ASID)
    page = assign(host, host_page(host, SECRET), ASID, 0x10)
    fw.snp_launch_update(gctx, page, 1)
    vmsa = reset_state()
    vmsa.regs["sev_features"] = 1
    vmsa_spa = assign(host, host_page(host, vmsa.to_bytes()), ASID, 0xFFFF_FFFF_F)
    fw.snp_launch_update(gctx, vmsa_spa, 2)
    fw.snp_launch_finish(gctx)
    return host, gctx, page, vmsa_spa


def observable(host: Host, gctx: int) -> tuple:
    """What a refused command must leave as it was: statuses, RMP, domains, every DRAM byte."""
    rmp = memory_controller(host).rmp
    return (host.firmware.snp_platform_status(), host.firmware.snp_guest_status(gctx),
            rmp.assigned.tobytes(), rmp.asid.tobytes(), rmp.validated.tobytes(),
            memory_controller(host).domain.tobytes(),
            hashlib.sha256(memory_controller(host).dram_dump().tobytes()).digest())


def refused(host: Host, gctx: int, status: SevStatus, command: Callable[[], object]) -> None:
    before = observable(host, gctx)
    with pytest.raises(FirmwareError) as info:
        command()
    assert info.value.status is status, str(info.value)
    assert observable(host, gctx) == before


# -- SNP_DBG_DECRYPT / SNP_DBG_ENCRYPT ------------------------------------------------------------


def test_snp_dbg_decrypt_and_encrypt_a_debug_guest_page() -> None:
    host, gctx, page, _ = launched(DEBUG_POLICY)
    fw = host.firmware
    assert blocks_found(host.dram_dump(), SECRET) == 0
    assert blocks_found(host.hypervisor.read_spa(page, PAGE), SECRET) == 0
    bounce = host_page(host)
    fw.snp_dbg_decrypt(gctx, page, bounce)
    assert host.hypervisor.read_spa(bounce, PAGE) == SECRET
    # and back: new plaintext from a hypervisor page lands under the guest's key
    patch = bytes(range(256)) * 16
    host.hypervisor.write_spa(bounce, patch)
    fw.snp_dbg_encrypt(gctx, bounce, page)
    assert host.hypervisor.read_spa(page, PAGE) != patch  # DRAM: ciphertext
    assert memory_controller(host).rmp.validated[page // PAGE]  # still the guest's validated page
    host.hypervisor.write_spa(bounce, bytes(PAGE))
    fw.snp_dbg_decrypt(gctx, page, bounce)
    assert host.hypervisor.read_spa(bounce, PAGE) == patch


def test_snp_dbg_decrypt_reads_a_vmsa_but_encrypt_cannot_write_one() -> None:
    host, gctx, _, vmsa_spa = launched(DEBUG_POLICY)
    bounce = host_page(host)
    host.firmware.snp_dbg_decrypt(gctx, vmsa_spa, bounce)
    assert Vmsa.from_bytes(host.hypervisor.read_spa(bounce, PAGE)).regs["sev_features"] == 1
    refused(host, gctx, SevStatus.INVALID_PAGE_STATE,
            lambda: host.firmware.snp_dbg_encrypt(gctx, bounce, vmsa_spa))


def test_without_debug_both_directions_fail_with_policy_failure() -> None:
    host, gctx, page, _ = launched(POLICY)
    fw = host.firmware
    bounce = host_page(host)
    refused(host, gctx, SevStatus.POLICY_FAILURE, lambda: fw.snp_dbg_decrypt(gctx, page, bounce))
    refused(host, gctx, SevStatus.POLICY_FAILURE, lambda: fw.snp_dbg_encrypt(gctx, bounce, page))
    assert host.hypervisor.read_spa(bounce, PAGE) == bytes(PAGE)
    assert blocks_found(host.dram_dump(), SECRET) == 0


def test_snp_debug_checks_guest_addresses_and_page_states() -> None:
    host, gctx, page, _ = launched(DEBUG_POLICY)
    fw = host.firmware
    bounce = host_page(host)
    other = assign(host, host_page(host, b"another guest"), ASID + 1, 0x10)
    cases: list[tuple[SevStatus, Callable[[], object]]] = [
        (SevStatus.INVALID_GUEST, lambda: fw.snp_dbg_decrypt(gctx + PAGE, page, bounce)),
        (SevStatus.INVALID_ADDRESS, lambda: fw.snp_dbg_decrypt(gctx, page + 16, bounce)),
        (SevStatus.INVALID_ADDRESS, lambda: fw.snp_dbg_decrypt(gctx, page, bounce + 16)),
        (SevStatus.INVALID_ADDRESS, lambda: fw.snp_dbg_decrypt(gctx, page, 1 << 40)),
        # the source must be this guest's page, the destination the hypervisor's
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_decrypt(gctx, bounce, bounce)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_decrypt(gctx, other, bounce)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_decrypt(gctx, page, page)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_decrypt(gctx, page, gctx)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_decrypt(gctx, gctx, bounce)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_encrypt(gctx, page, page)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_encrypt(gctx, bounce, other)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_encrypt(gctx, bounce, gctx)),
        (SevStatus.INVALID_PAGE_STATE, lambda: fw.snp_dbg_encrypt(gctx, bounce, bounce)),
    ]
    for status, command in cases:
        refused(host, gctx, status, command)
    # a guest with DEBUG that was never activated has no key in the memory controller
    idle = host_page(host)
    fw.snp_gctx_create(idle)
    fw.snp_launch_start(idle, DEBUG_POLICY)
    with pytest.raises(FirmwareError, match="INACTIVE"):
        fw.snp_dbg_decrypt(idle, page, bounce)


# -- the host's debug API on real SNP guests --------------------------------------------------


def run_secret(build, policy: int) -> tuple:
    host = Host(memory="64M")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("secret"))
    vm.launch(policy=policy)
    result = vm.run(timeout=30)
    page = int(re.search(r"secret page at 0x([0-9a-f]+)", result.console)[1], 16)
    shared = int(re.search(r"shared page at 0x([0-9a-f]+)", result.console)[1], 16)
    return host, vm, page, shared


def test_debug_read_of_an_snp_debug_guest_sees_its_secret(build) -> None:
    host, vm, page, shared = run_secret(build, DEBUG_POLICY)
    assert debug_read(vm, page, PAGE) == SECRET
    assert debug_read(vm, page + 5, 27) == SECRET[5:32]  # inside a page: the page underneath
    assert debug_read(vm, page - 16, 48)[16:] == SECRET[:32]  # across a page boundary
    assert blocks_found(vm.read_gpa(page, PAGE), SECRET) == 0  # the plain read: ciphertext
    assert debug_read(vm, shared, 27) == b"PUBLIC-MESSAGE-FOR-THE-HOST"
    assert blocks_found(host.dram_dump(), SECRET) == 0  # the bounce page was wiped


def test_debug_read_of_an_snp_guest_without_debug_is_refused(build) -> None:
    host, vm, page, _ = run_secret(build, POLICY)
    with pytest.raises(FirmwareError) as info:
        debug_read(vm, page, 64)
    assert info.value.status is SevStatus.POLICY_FAILURE
    assert "DEBUG" in str(info.value)
    with pytest.raises(FirmwareError, match="POLICY_FAILURE"):
        debug_write(vm, page, b"x" * 16)
    assert blocks_found(host.dram_dump(), SECRET) == 0


def test_debug_write_changes_what_the_snp_guest_reads(build) -> None:
    elf = build("blocks")
    page = symbol(elf, "page")
    host = Host(memory="64M")
    vm = host.create_vm(mode="snp", memory="8M")
    vm.load(elf)
    vm.launch(policy=DEBUG_POLICY)
    assert debug_read(vm, page, 32) == b"BLOCK-ZERO-16-B!BLOCK-ONE--16-B!"
    debug_write(vm, page + 6, b"PATCH")  # one page decrypted, patched, encrypted again
    # the guest's kernel reads the patch first: measuring the boot into the SNP-bound vTPM,
    # it finds the launched program is no longer the file the host offers, and stops
    with pytest.raises(GuestFault, match="differs from the launched bytes"):
        vm.run(timeout=10)
    blocks = [guest_cpu(vm.hv.vcpus[0]).read(page + 16 * b, 16) for b in range(2)]
    assert blocks == [b"BLOCK-PATCH16-B!", b"BLOCK-ONE--16-B!"]
    assert vm.read_gpa(page, 16) != blocks[0]  # the hypervisor still sees ciphertext
    assert blocks_found(host.dram_dump(), b"BLOCK-PATCH16-B!") == 0


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_debug_read_of_an_snp_guest(build) -> None:
    elf = build("secret")
    page = symbol(elf, "secret_page")
    ran = sevsim("debug", "read", elf, hex(page), "32", "--memory", "16M", "--mode", "snp")
    assert ran.returncode == 0, ran.stderr
    assert "mode=snp " in ran.stderr and "policy=0xb0000" in ran.stderr
    rows = ran.stdout.splitlines()
    assert int(rows[0][:16], 16) == page
    assert b"".join(bytes.fromhex(row[18:67].replace(" ", "")) for row in rows) == SECRET[:32]
    denied = sevsim("debug", "read", elf, hex(page), "32", "--memory", "16M", "--mode", "snp",
                    "--policy", "0x30000")
    assert denied.returncode == 125 and denied.stdout == ""
    assert "POLICY_FAILURE" in denied.stderr and "DEBUG (bit 19)" in denied.stderr


# -- SNP_SHUTDOWN -------------------------------------------------------------------------------


def test_snp_shutdown_waits_for_guests_and_keeps_the_rmp() -> None:
    host, gctx, _, vmsa_spa = launched(DEBUG_POLICY)
    fw = host.firmware
    refused(host, gctx, SevStatus.INVALID_PLATFORM_STATE, fw.snp_shutdown)
    fw.snp_decommission(gctx)
    with pytest.raises(FirmwareError, match="DF_FLUSH_REQUIRED"):
        fw.snp_shutdown()
    assert fw.snp_platform_status().state is SnpPlatformState.INIT
    fw.snp_df_flush()
    fw.snp_shutdown()
    status = fw.snp_platform_status()
    assert status.state is SnpPlatformState.UNINIT and status.guest_count == 0
    # only a reset turns it off
    assert status.rmp_initialized and memory_controller(host).rmp.enabled
    with pytest.raises(RmpViolation):
        host.hypervisor.write_spa(gctx, bytes(16))  # still a firmware page, still enforced
    for command in (fw.snp_shutdown, fw.snp_df_flush, lambda: fw.snp_page_reclaim(gctx),
                    lambda: fw.snp_gctx_create(host_page(host))):
        with pytest.raises(FirmwareError, match="INVALID_PLATFORM_STATE"):
            command()
    fw.snp_init()  # works again, on the same table
    for spa in (gctx, vmsa_spa):
        fw.snp_page_reclaim(spa)
    fresh = host_page(host)
    fw.snp_gctx_create(fresh)
    fw.snp_launch_start(fresh, POLICY)
    fw.snp_activate(fresh, ASID)
    assert fw.snp_platform_status().guest_count == 1


def test_snp_shutdown_ex_x86_disables_snp_and_clears_the_rmp() -> None:
    host, gctx, _, _ = launched(POLICY)
    fw = host.firmware
    fw.snp_decommission(gctx)
    fw.snp_df_flush()
    fw.snp_shutdown_ex(iommu_snp_shutdown=True, x86_snp_shutdown=True)
    rmp = memory_controller(host).rmp
    assert not rmp.enabled and not rmp.assigned.any()
    status = fw.snp_platform_status()
    assert status.state is SnpPlatformState.UNINIT and not status.rmp_initialized
    host.hypervisor.write_spa(gctx, b"the hypervisor's page again")
    fw.snp_init()
    assert rmp.enabled and fw.snp_platform_status().rmp_initialized


# -- SNP_PLATFORM_STATUS ------------------------------------------------------------------------


@pytest.mark.parametrize("chip", ["milan", "genoa", "turin"])
def test_snp_platform_status_bytes(chip: str) -> None:
    host = Host(chip=chip)
    fw = host.firmware
    blob = fw.snp_platform_status().to_bytes()
    assert len(blob) == SnpPlatformStatus.SIZE == 0x20
    assert blob[2] == 0 and blob[3] == 0  # UNINIT, RMP not initialised
    fw.snp_init()
    gctx = host_page(host)
    fw.snp_gctx_create(gctx)
    reported = TcbVersion(fw.current_tcb.bootloader - 1, fw.current_tcb.tee,
                          fw.current_tcb.snp, fw.current_tcb.microcode, fw.current_tcb.fmc)
    fw.snp_config(reported)
    blob = fw.snp_platform_status().to_bytes()
    assert (blob[0], blob[1]) == (host.chip.api_major, host.chip.api_minor)
    assert blob[2] == 1 and blob[3] == 1  # INIT; IS_RMP_INITIALIZED in bit 0
    assert struct.unpack_from("<I", blob, 0x04)[0] == host.chip.build
    # no VLEK, no masking, ciphertext hiding not enabled (but offered from Genoa on)
    cap = SnpStatusFlags.CIPHERTEXT_HIDING_CAP if host.chip.ciphertext_hiding else 0
    assert struct.unpack_from("<I", blob, 0x08)[0] == cap
    assert struct.unpack_from("<I", blob, 0x0C)[0] == 1  # one guest context
    assert blob[0x10:0x18] == fw.current_tcb.to_bytes() != bytes(8)
    assert blob[0x18:0x20] == reported.to_bytes() != fw.current_tcb.to_bytes()
    assert SnpPlatformStatus.from_bytes(blob) == fw.snp_platform_status()


def test_snp_platform_status_parser_is_strict() -> None:
    good = SnpPlatformStatus(1, 55, SnpPlatformState.INIT, True, 21, 3, 5, 4,
                             SnpStatusFlags.VLEK_EN).to_bytes()
    assert struct.unpack_from("<I", good, 0x08)[0] == 4  # VLEK_EN is bit 2
    assert SnpPlatformStatus.from_bytes(good).flags is SnpStatusFlags.VLEK_EN
    for bad in (good[:-1], good[:2] + b"\x02" + good[3:], good[:3] + b"\x02" + good[4:],
                good[:8] + (1 << 7).to_bytes(4, "little") + good[12:]):
        with pytest.raises(ValueError):
            SnpPlatformStatus.from_bytes(bad)
