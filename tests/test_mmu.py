"""Guest-physical address spaces on real Unicorn engines: the NPT, the C-bit, foreign frames.

Each test builds the hardware by hand (memory controller, nested page tables, address spaces,
bare `unicorn.Uc` engines) and observes through the same interfaces a vCPU and the host have:
`uc.mem_read/mem_write` for the guest, `MemoryController.read/write` for the hypervisor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn.x86_const import UC_X86_REG_EAX

from sevsim.hw.chips import TweakMode
from sevsim.hw.engine import BLOCK, PAGE, EncryptionEngine, TweakFunction
from sevsim.hw.memory import RAW, MemoryController
from sevsim.hw.mmu import GuestAddressSpace
from sevsim.hw.npt import NestedPageTable

GUEST_PAGES = 8


@dataclass
class Vm:
    asid: int
    npt: NestedPageTable
    space: GuestAddressSpace
    uc: Uc
    first_frame: int

    def spa(self, gpa: int) -> int:
        spa = self.npt.lookup(gpa)
        assert spa is not None
        return spa

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.uc.mem_read(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        self.uc.mem_write(gpa, data)


def make_host(mode: TweakMode = TweakMode.XEX_STRONG, nframes: int = 32) -> MemoryController:
    engine = EncryptionEngine(mode, TweakFunction.weak(77) if mode is TweakMode.XE_WEAK else None)
    for asid in (1, 2):
        engine.load_key(asid, os.urandom(16))
    return MemoryController(nframes * PAGE, engine)


def make_vm(memory: MemoryController, asid: int, first_frame: int, encrypted: bool = True,
            private: bool = True) -> Vm:
    npt = NestedPageTable(GUEST_PAGES * PAGE)
    space = GuestAddressSpace(memory, npt, asid, encrypted)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    space.attach(uc)
    npt.map(0, first_frame, GUEST_PAGES)
    if private:
        space.set_c_bit(0, GUEST_PAGES, True, zero=True)
    return Vm(asid, npt, space, uc, first_frame)


def secret_page(tag: bytes) -> bytes:
    return (tag + os.urandom(16)) * (PAGE // (len(tag) + 16)) + bytes(PAGE % (len(tag) + 16))


MODES = [TweakMode.XE_WEAK, TweakMode.XEX_STRONG]


# -- private memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_private_pages_are_plaintext_to_the_guest_and_ciphertext_to_the_host(mode):
    memory = make_host(mode)
    vm = make_vm(memory, 1, first_frame=4)
    data = secret_page(b"guest-1 secret")
    vm.write(2 * PAGE, data)
    assert vm.read(2 * PAGE, PAGE) == data
    spa = vm.spa(2 * PAGE)
    assert spa == 6 * PAGE
    host = memory.read(spa, PAGE)
    assert host != data and b"guest-1 secret" not in host
    assert host == memory.engine.encrypt_blocks(1, spa, np.frombuffer(data, np.uint8)).tobytes()
    assert b"guest-1 secret" not in memory.dram_dump().tobytes()


def test_fresh_private_pages_read_as_zero():
    memory = make_host()
    memory.cells[:] = 0xAB  # stale host data in the frames before the VM gets them
    vm = make_vm(memory, 1, first_frame=0)
    assert vm.read(0, GUEST_PAGES * PAGE) == bytes(GUEST_PAGES * PAGE)


def test_every_vcpu_of_a_vm_sees_the_same_memory():
    memory = make_host()
    vm = make_vm(memory, 1, first_frame=8)
    second = Uc(UC_ARCH_X86, UC_MODE_64)
    vm.space.attach(second)  # attaching later maps what is already there
    vm.write(0x1234, b"shared between vCPUs")
    assert bytes(second.mem_read(0x1234, 20)) == b"shared between vCPUs"
    second.mem_write(3 * PAGE + 8, b"back")
    assert vm.read(3 * PAGE + 8, 4) == b"back"


def test_host_writes_into_a_private_page_reach_the_guest_as_garbage_blocks():
    memory = make_host()
    vm = make_vm(memory, 1, first_frame=0)
    data = secret_page(b"victim data")
    vm.write(PAGE, data)
    memory.write(vm.spa(PAGE) + 0x41, b"\x00\x01")  # bit flips from the hypervisor
    seen = vm.read(PAGE, PAGE)
    diff = [i // BLOCK for i in range(PAGE) if seen[i] != data[i]]
    assert diff and set(diff) == {0x40 // BLOCK}


def test_host_written_code_takes_effect_in_a_plain_vm():
    memory = make_host()
    vm = make_vm(memory, 0, first_frame=0, encrypted=False, private=False)
    code = 2 * PAGE
    memory.write(vm.spa(code), b"\xb8\x01\x00\x00\x00")  # mov eax, 1
    vm.uc.emu_start(code, code + 5)
    assert vm.uc.reg_read(UC_X86_REG_EAX) == 1
    memory.write(vm.spa(code), b"\xb8\x02\x00\x00\x00")  # mov eax, 2
    vm.uc.emu_start(code, code + 5)
    assert vm.uc.reg_read(UC_X86_REG_EAX) == 2


# -- the hypervisor moves pages around ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_remapping_within_one_asid_shows_the_other_frames_plaintext(mode):
    """SEVered: the tweak is the SPA, so a frame keeps decrypting correctly at any GPA."""
    memory = make_host(mode)
    vm = make_vm(memory, 1, first_frame=0)
    a, b = secret_page(b"page A"), secret_page(b"page B")
    vm.write(0, a)
    vm.write(5 * PAGE, b)
    vm.npt.map(0, vm.first_frame + 5)  # GPA 0 now points at the frame behind GPA 5
    assert vm.read(0, PAGE) == b
    assert vm.read(5 * PAGE, PAGE) == b
    vm.write(0x10, b"through the alias")
    assert vm.read(5 * PAGE + 0x10, 17) == b"through the alias"
    vm.npt.map(0, vm.first_frame)  # put it back: the original page was never touched
    assert vm.read(0, PAGE) == a


@pytest.mark.parametrize("mode", MODES)
def test_another_vms_frame_reads_as_garbage_and_writes_land_as_our_ciphertext(mode):
    memory = make_host(mode)
    one = make_vm(memory, 1, first_frame=0)
    two = make_vm(memory, 2, first_frame=16)
    mine, theirs = secret_page(b"VM one secret"), secret_page(b"VM two secret")
    one.write(3 * PAGE, mine)
    two.write(PAGE, theirs)
    victim_spa = two.spa(PAGE)

    one.npt.map(3 * PAGE, victim_spa // PAGE)  # the hypervisor points VM one at VM two's page
    seen = one.read(3 * PAGE, PAGE)
    assert seen != theirs and seen != mine
    assert b"VM two secret" not in seen
    dram = np.frombuffer(memory.read(victim_spa, PAGE), np.uint8)
    assert seen == memory.engine.decrypt_blocks(1, victim_spa, dram).tobytes()
    assert two.read(PAGE, PAGE) == theirs  # the owner is unaffected by being read

    one.write(3 * PAGE + 0x25, b"XY")
    assert one.read(3 * PAGE + 0x25, 2) == b"XY"  # the writer reads back what it wrote
    expected_view = bytearray(seen)
    expected_view[0x25:0x27] = b"XY"
    assert memory.read(victim_spa + 0x20, BLOCK) == memory.engine.encrypt_blocks(
        1, victim_spa + 0x20, np.frombuffer(bytes(expected_view[0x20:0x30]), np.uint8)).tobytes()
    after = two.read(PAGE, PAGE)
    corrupted = {i // BLOCK for i in range(PAGE) if after[i] != theirs[i]}
    assert corrupted == {0x20 // BLOCK}
    assert b"XY" not in after[0x20:0x30]


def test_a_foreign_frame_nobody_maps_still_reads_as_garbage():
    memory = make_host()
    two = make_vm(memory, 2, first_frame=16)
    theirs = secret_page(b"parked secret")
    two.write(0, theirs)
    two.space.detach_all()  # VM two is descheduled; its frames sit in DRAM
    assert not memory.pins.any()
    one = make_vm(memory, 1, first_frame=0)
    one.npt.map(PAGE, 16)
    seen = one.read(PAGE, PAGE)
    assert seen != theirs and b"parked secret" not in seen
    dram = memory.read(16 * PAGE, PAGE)
    assert seen == memory.engine.decrypt_blocks(1, 16 * PAGE, np.frombuffer(dram, np.uint8)
                                                ).tobytes()
    # DRAM did not change: giving the page back to its owner restores the secret
    one.npt.unmap(PAGE)
    one.space.detach_all()
    back = make_vm(memory, 2, first_frame=16, private=False)
    back.space.set_c_bit(0, GUEST_PAGES, True)
    assert back.read(0, PAGE) == theirs


def test_unmapped_gpas_fault_and_remapping_restores_them():
    memory = make_host()
    vm = make_vm(memory, 1, first_frame=0)
    vm.write(4 * PAGE, b"still here")
    vm.npt.unmap(4 * PAGE)
    assert vm.npt.lookup(4 * PAGE) is None
    with pytest.raises(UcError):
        vm.read(4 * PAGE, 4)
    with pytest.raises(UcError):
        vm.write(4 * PAGE + 100, b"x")
    assert vm.read(3 * PAGE, 4) == bytes(4) and vm.read(5 * PAGE, 4) == bytes(4)  # neighbours
    vm.npt.map(4 * PAGE, vm.first_frame + 4)
    assert vm.read(4 * PAGE, 10) == b"still here"


def test_npt_refuses_bad_ranges():
    from sevsim.errors import MemoryAccessError

    npt = NestedPageTable(4 * PAGE)
    for bad in (lambda: npt.map(1, 0), lambda: npt.map(0, 0, 0), lambda: npt.map(3 * PAGE, 0, 2),
                lambda: npt.unmap(4 * PAGE)):
        with pytest.raises(MemoryAccessError):
            bad()
    assert npt.lookup(0) is None and npt.lookup(-PAGE) is None and npt.lookup(4 * PAGE) is None
    npt.map(PAGE, 9, 2)
    assert npt.lookup(PAGE + 5) == 9 * PAGE + 5 and npt.lookup(2 * PAGE) == 10 * PAGE


# -- the guest's C-bit --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_c_bit_flip_to_shared_exposes_ciphertext_and_shared_pages_are_plaintext(mode):
    memory = make_host(mode)
    vm = make_vm(memory, 1, first_frame=8)
    data = secret_page(b"was private")
    vm.write(2 * PAGE, data)
    spa = vm.spa(2 * PAGE)
    ciphertext = memory.read(spa, PAGE)

    vm.space.set_c_bit(2, 3, False)  # the guest now accesses the page with C=0
    assert vm.read(2 * PAGE, PAGE) == ciphertext == memory.read(spa, PAGE)
    assert memory.domain[spa // PAGE] == RAW

    vm.write(2 * PAGE, b"hello hypervisor")  # a shared page: plaintext both ways
    assert memory.read(spa, 16) == b"hello hypervisor"
    memory.write(spa + 16, b"hello guest")
    assert vm.read(2 * PAGE + 16, 11) == b"hello guest"
    assert vm.read(PAGE, 4) == bytes(4)  # the neighbours stay private
    assert memory.read(vm.spa(PAGE), 16) != bytes(16)

    # back to private without zeroing: the guest decrypts what the host left there
    vm.space.set_c_bit(2, 3, True)
    seen = vm.read(2 * PAGE, PAGE)
    dram = np.frombuffer(memory.read(spa, PAGE), np.uint8)
    assert seen == memory.engine.decrypt_blocks(1, spa, dram).tobytes()
    assert b"hello" not in seen
    vm.space.set_c_bit(2, 3, True, zero=True)
    assert vm.read(2 * PAGE, PAGE) == bytes(PAGE)


def test_an_unencrypted_vm_is_plaintext_to_the_host_whatever_its_c_bits():
    memory = make_host()
    vm = make_vm(memory, 0, first_frame=0, encrypted=False)
    vm.write(PAGE, b"no protection")
    assert memory.read(vm.spa(PAGE), 13) == b"no protection"


# -- mappings stay consistent ------------------------------------------------------------------


@pytest.mark.parametrize("alias", [False, True])
def test_aliases_do_not_confuse_the_release_of_mapped_frames(alias):
    """A frame once mapped at two GPAs of a plain VM, one alias since removed, is then
    launch-updated for an SEV guest (encrypt_in_place). The plain VM must lose its direct
    mapping onto the cells, which now hold the SEV guest's plaintext: it reads DRAM
    ciphertext, and the SEV guest's later secrets stay out of its reach."""
    memory = make_host()
    spy = make_vm(memory, 0, first_frame=0, encrypted=False, private=False)
    if alias:
        spy.npt.unmap(5 * PAGE)
        spy.npt.map(6 * PAGE, 1)  # frame 1 at GPA 1 and GPA 6
        spy.npt.unmap(6 * PAGE)
    memory.write(PAGE, b"L" * PAGE)  # the victim's launch image, put there by the host
    memory.encrypt_in_place(PAGE, PAGE, 2)  # LAUNCH_UPDATE_DATA for ASID 2
    assert spy.read(PAGE, PAGE) == memory.read(PAGE, PAGE) != b"L" * PAGE

    victim = make_vm(memory, 2, first_frame=16, private=False)
    victim.npt.map(0, 1)  # the victim's GPA 0 is the launched frame
    victim.space.set_c_bit(0, 1, True)
    assert victim.read(0, PAGE) == b"L" * PAGE
    victim.write(0x80, b"victim's runtime secret")
    assert b"victim's runtime secret" not in spy.read(PAGE, PAGE)


def test_detach_all_releases_every_pin():
    memory = make_host()
    one = make_vm(memory, 1, first_frame=0)
    two = make_vm(memory, 2, first_frame=8)
    one.npt.map(7 * PAGE, 9)  # a foreign page too
    assert memory.pins[:GUEST_PAGES - 1].all() and memory.pins[8:16].all()
    one.space.detach_all()
    assert not memory.pins[:8].any() and memory.pins[8:16].all()
    two.space.detach_all()
    assert not memory.pins.any()
    assert memory.mappers == [] and memory.write_listeners == [] and not memory.reverse_map
