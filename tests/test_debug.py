"""DBG_DECRYPT / DBG_ENCRYPT: the firmware gives the host plaintext only when the policy allows.

Firmware-level tests on a bare Secure Processor and memory, then the host's debug API
(`sevsim.host.debug`) and `sevsim debug read` on real guests.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import blocks_found, secret_bytes, symbol
from sevsim import Host
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.status import GuestState, SevStatus
from sevsim.cli.debug import hexdump
from sevsim.errors import FirmwareError, VmStateError
from sevsim.firmware.sev import SevFirmware
from sevsim.host.debug import debug_read, debug_write
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController

SECRET = secret_bytes()
GUEST_PAGE, HOST_PAGE = 2 * PAGE, 6 * PAGE  # a launched guest page; a host buffer page


def firmware(chip: str = "milan") -> tuple[SevFirmware, MemoryController]:
    preset = PRESETS[chip]
    memory = MemoryController(16 * PAGE, EncryptionEngine(preset.tweak))
    fw = SevFirmware(preset, memory)
    fw.init()
    return fw, memory


def launched(fw: SevFirmware, memory: MemoryController, policy: int,
             data: bytes = SECRET) -> int:
    """A RUNNING guest on the last ASID whose page GUEST_PAGE holds `data` (DRAM: ciphertext)."""
    handle = fw.launch_start(policy)
    fw.activate(handle, fw.chip.max_asid)
    memory.write(GUEST_PAGE, data)
    fw.launch_update_data(handle, GUEST_PAGE, len(data))
    fw.launch_measure(handle)
    fw.launch_finish(handle)
    return handle


def observable(fw: SevFirmware, memory: MemoryController, handle: int) -> tuple:
    """What a refused command must leave as it was: guest status, domains, every DRAM byte."""
    return (fw.platform_status(), fw.guest_status(handle), memory.domain.tobytes(),
            hashlib.sha256(memory.dram_dump().tobytes()).digest())


def refused(fw: SevFirmware, memory: MemoryController, handle: int, status: SevStatus,
            command: Callable[[], object]) -> None:
    before = observable(fw, memory, handle)
    with pytest.raises(FirmwareError) as info:
        command()
    assert info.value.status is status, str(info.value)
    assert observable(fw, memory, handle) == before


# -- the firmware commands ----------------------------------------------------------------------


@pytest.mark.parametrize("chip", ["naples", "milan"])
def test_dbg_decrypt_gives_the_plaintext_and_dbg_encrypt_writes_under_the_key(chip: str):
    fw, memory = firmware(chip)
    handle = launched(fw, memory, policy=0)
    assert blocks_found(memory.dram_dump(), SECRET) == 0
    fw.dbg_decrypt(handle, GUEST_PAGE, HOST_PAGE, PAGE)
    assert memory.read(HOST_PAGE, PAGE) == SECRET  # the host buffer: plaintext in DRAM

    patch = os.urandom(48)
    memory.write(HOST_PAGE, patch)
    fw.dbg_encrypt(handle, HOST_PAGE, GUEST_PAGE + 0x40, 48)
    expected = SECRET[:0x40] + patch + SECRET[0x70:]
    assert memory.cells[GUEST_PAGE:GUEST_PAGE + PAGE].tobytes() == expected  # the guest's view
    dram = memory.read(GUEST_PAGE, PAGE)
    assert patch[:16] not in dram and dram[:0x40] == memory.read(GUEST_PAGE, 0x40)
    fw.dbg_decrypt(handle, GUEST_PAGE + 0x30, HOST_PAGE + 0x100, 0x50)
    assert memory.read(HOST_PAGE + 0x100, 0x50) == expected[0x30:0x80]


def test_nodbg_refuses_both_directions_with_policy_failure():
    fw, memory = firmware()
    for policy in (int(PolicyFlags.NODBG), int(PolicyFlags.NODBG | PolicyFlags.NOSEND),
                   0x3701_0001):
        handle = launched(fw, memory, policy)
        memory.write(HOST_PAGE, bytes(PAGE))
        refused(fw, memory, handle, SevStatus.POLICY_FAILURE,
                lambda h=handle: fw.dbg_decrypt(h, GUEST_PAGE, HOST_PAGE, PAGE))
        refused(fw, memory, handle, SevStatus.POLICY_FAILURE,
                lambda h=handle: fw.dbg_encrypt(h, HOST_PAGE, GUEST_PAGE, PAGE))
        assert memory.read(HOST_PAGE, PAGE) == bytes(PAGE)
        fw.deactivate(handle)
        fw.decommission(handle)
        fw.df_flush()


def test_debug_needs_an_active_guest():
    fw, memory = firmware()
    handle = launched(fw, memory, policy=0)
    fw.deactivate(handle)
    for command in (fw.dbg_decrypt, fw.dbg_encrypt):
        refused(fw, memory, handle, SevStatus.INACTIVE,
                lambda c=command: c(handle, GUEST_PAGE, HOST_PAGE, PAGE))
    fw.df_flush()
    fw.activate(handle, fw.chip.max_asid - 1)  # the key follows the guest to its new ASID
    fw.dbg_decrypt(handle, GUEST_PAGE, HOST_PAGE, PAGE)
    assert memory.read(HOST_PAGE, PAGE) == SECRET


def test_debug_buffers_must_be_aligned_whole_blocks_inside_dram():
    fw, memory = firmware()
    handle = launched(fw, memory, policy=0)
    for command in (fw.dbg_decrypt, fw.dbg_encrypt):
        for src, dst in ((GUEST_PAGE + 8, HOST_PAGE), (GUEST_PAGE, HOST_PAGE + 1),
                         (memory.size, HOST_PAGE), (GUEST_PAGE, memory.size - 16),
                         (-PAGE, HOST_PAGE), (GUEST_PAGE, 1 << 40)):
            refused(fw, memory, handle, SevStatus.INVALID_ADDRESS,
                    lambda c=command, s=src, d=dst: c(handle, s, d, 32))
        for length in (0, 15, 17, -16):
            refused(fw, memory, handle, SevStatus.INVALID_LENGTH,
                    lambda c=command, n=length: c(handle, GUEST_PAGE, HOST_PAGE, n))
    fw.dbg_decrypt(handle, GUEST_PAGE, memory.size - 16, 16)  # the last block is fine
    assert memory.read(memory.size - 16, 16) == SECRET[:16]


def test_debug_refusals_for_unknown_guests_and_an_uninitialised_platform():
    fw, memory = firmware()
    handle = launched(fw, memory, policy=0)
    for command in (fw.dbg_decrypt, fw.dbg_encrypt):
        for bogus in (0, handle + 1, -1):
            refused(fw, memory, handle, SevStatus.INVALID_GUEST,
                    lambda c=command, b=bogus: c(b, GUEST_PAGE, HOST_PAGE, 16))
    fw.shutdown()
    with pytest.raises(FirmwareError) as info:
        fw.dbg_decrypt(handle, GUEST_PAGE, HOST_PAGE, 16)
    assert info.value.status is SevStatus.INVALID_PLATFORM_STATE


def test_debug_works_in_every_launch_state():
    """DBG_* depend on the policy and the ASID, not on GSTATE: a developer may look at a guest
    while it is being launched."""
    fw, memory = firmware()
    handle = fw.launch_start(0)
    fw.activate(handle, fw.chip.max_asid)
    memory.write(GUEST_PAGE, SECRET)
    fw.launch_update_data(handle, GUEST_PAGE, PAGE)
    for step in (lambda: None, lambda: fw.launch_measure(handle),
                 lambda: fw.launch_finish(handle)):
        step()
        memory.write(HOST_PAGE, bytes(PAGE))
        fw.dbg_decrypt(handle, GUEST_PAGE, HOST_PAGE, PAGE)
        assert memory.read(HOST_PAGE, PAGE) == SECRET, fw.guest_status(handle).state
    assert fw.guest_status(handle).state is GuestState.RUNNING


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, PAGE // 16 - 16), blocks=st.integers(1, 16),
       host=st.integers(0, PAGE // 16 - 1), data=st.binary(min_size=256, max_size=256))
def test_encrypt_then_decrypt_round_trips_anywhere(offset: int, blocks: int, host: int,
                                                   data: bytes):
    fw, memory = firmware()
    handle = launched(fw, memory, policy=0)
    src, dst, length = HOST_PAGE + 16 * host, GUEST_PAGE + 16 * offset, 16 * blocks
    memory.write(src, data[:length])
    fw.dbg_encrypt(handle, src, dst, length)
    assert memory.cells[dst:dst + length].tobytes() == data[:length]
    memory.write(src, bytes(length))
    fw.dbg_decrypt(handle, dst, src, length)
    assert memory.read(src, length) == data[:length]


# -- the host's debug API on real guests --------------------------------------------------------


def run_secret(build, policy: int, memory: str = "16M") -> tuple:
    host = Host(memory="64M")
    vm = host.create_vm(mode="sev", memory=memory)
    vm.load(build("secret"))
    vm.launch(policy=policy)
    result = vm.run(timeout=30)
    page = int(re.search(r"secret page at 0x([0-9a-f]+)", result.console)[1], 16)
    shared = int(re.search(r"shared page at 0x([0-9a-f]+)", result.console)[1], 16)
    return host, vm, page, shared


def test_debug_read_of_a_debuggable_guest_sees_its_secret(build):
    host, vm, page, shared = run_secret(build, policy=0)
    assert debug_read(vm, page, PAGE) == SECRET
    assert debug_read(vm, page + 5, 27) == SECRET[5:32]  # unaligned: whole blocks underneath
    assert debug_read(vm, page - 16, 48)[16:] == SECRET[:32]  # across a page boundary
    assert blocks_found(vm.read_gpa(page, PAGE), SECRET) == 0  # the plain read: ciphertext
    # the page the guest shared is read as it is, plaintext for everyone
    assert debug_read(vm, shared, 27) == b"PUBLIC-MESSAGE-FOR-THE-HOST"
    # no plaintext is left behind in host memory by the bounce buffer
    assert blocks_found(host.dram_dump(), SECRET) == 0


def test_debug_read_of_a_nodbg_guest_is_refused(build):
    host, vm, page, _ = run_secret(build, policy=int(PolicyFlags.NODBG))
    with pytest.raises(FirmwareError) as info:
        debug_read(vm, page, 64)
    assert info.value.status is SevStatus.POLICY_FAILURE
    with pytest.raises(FirmwareError, match="POLICY_FAILURE"):
        debug_write(vm, page, b"x" * 16)
    assert blocks_found(host.dram_dump(), SECRET) == 0


def test_debug_write_changes_what_the_guest_reads(build):
    elf = build("blocks")
    page = symbol(elf, "page")
    host = Host(memory="64M")
    vm = host.create_vm(mode="sev", memory="8M")
    vm.load(elf)
    vm.launch(policy=0)
    assert debug_read(vm, page, 32) == b"BLOCK-ZERO-16-B!BLOCK-ONE--16-B!"
    debug_write(vm, page + 6, b"PATCH")  # inside block 0: read, patch, re-encrypt
    console = vm.run(timeout=10).console
    blocks = [bytes.fromhex(line.split(":")[1].replace(" ", ""))
              for line in console.splitlines() if line.startswith("block")]
    assert blocks == [b"BLOCK-PATCH16-B!", b"BLOCK-ONE--16-B!"]
    assert vm.read_gpa(page, 16) != blocks[0]  # the hypervisor still sees ciphertext


def test_debug_api_on_plain_and_unlaunched_vms(build):
    host = Host(memory="64M")
    plain = host.create_vm(mode="none", memory="8M")
    plain.load(build("blocks"))
    page = symbol(build("blocks"), "page")
    assert debug_read(plain, page, 16) == b"BLOCK-ZERO-16-B!"
    debug_write(plain, page, b"X")
    assert plain.read_gpa(page, 2) == b"XL"
    unlaunched = host.create_vm(mode="sev", memory="8M")
    with pytest.raises(VmStateError, match="launch"):
        debug_read(unlaunched, 0x1000, 16)


# -- sevsim debug read ------------------------------------------------------------------------


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def undump(text: str) -> tuple[int, bytes]:
    """The first address and the bytes of a hexdump."""
    rows = [line for line in text.splitlines() if line.strip()]
    data = b"".join(bytes.fromhex(line[18:67].replace(" ", "")) for line in rows)
    return int(rows[0][:16], 16), data


@pytest.mark.parametrize("mode, policy", [("sev", "0x0"), ("sev-es", "0x4")])
def test_cli_debug_read_dumps_a_debuggable_guest(mode: str, policy: str, build):
    elf = build("secret")
    page = symbol(elf, "secret_page")
    ran = sevsim("debug", "read", elf, hex(page), "64", "--memory", "16M", "--mode", mode)
    assert ran.returncode == 0, ran.stderr
    assert undump(ran.stdout) == (page, SECRET[:64])
    assert "secret digest: 0x" in ran.stderr  # the guest ran to the end first
    assert f"mode={mode} " in ran.stderr and f"policy={policy}" in ran.stderr


def test_cli_debug_read_refuses_a_nodbg_policy(build):
    elf = build("secret")
    ran = sevsim("debug", "read", elf, hex(symbol(elf, "secret_page")), "64", "--memory",
                 "16M", "--policy", "0x1")
    assert ran.returncode == 125
    assert "POLICY_FAILURE" in ran.stderr and "NODBG" in ran.stderr
    assert ran.stdout == ""


def test_cli_debug_read_bad_arguments(build):
    elf = build("secret")
    assert sevsim("debug", "read", elf, "nowhere", "16").returncode == 2
    assert sevsim("debug", "read", elf, "0x1000", "0").returncode == 2
    outside = sevsim("debug", "read", elf, "0x7f000000", "16", "--memory", "8M")
    assert outside.returncode == 125 and "not mapped" in outside.stderr


def test_hexdump_layout():
    text = hexdump(bytes(range(0x41, 0x41 + 20)), 0x404000)
    assert text.splitlines() == [
        "0000000000404000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  |ABCDEFGHIJKLMNOP|",
        "0000000000404010  51 52 53 54                                       |QRST|",
    ]
