"""Host physical memory behind the memory controller: what every observer sees.

The controller keeps private frames' plaintext in its cells (the SoC view) and produces DRAM
bytes on the way out. These tests pin down the observable contract: outside observers get
exactly the engine's ciphertext, writes from outside decrypt into the owner's view block by
block, and re-expressing a frame for another key domain never changes what DRAM holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.errors import MemoryAccessError
from sevsim.hw.chips import TweakMode
from sevsim.hw.engine import BLOCK, PAGE, EncryptionEngine, TweakFunction
from sevsim.hw.memory import RAW, MemoryController, frame_runs

MODES = [TweakMode.XE_WEAK, TweakMode.XEX_STRONG]
NFRAMES = 8
SIZE = NFRAMES * PAGE
ASIDS = (1, 2, 3)


def make_memory(mode: TweakMode = TweakMode.XEX_STRONG, nframes: int = NFRAMES,
                seed: int | None = None) -> MemoryController:
    engine = EncryptionEngine(mode, TweakFunction.weak(0xC0FFEE))
    for asid in ASIDS:
        engine.load_key(asid, os.urandom(16))
    memory = MemoryController(nframes * PAGE, engine)
    memory.cells[:] = np.random.default_rng(seed).integers(0, 256, nframes * PAGE, np.uint8)
    return memory


def private(memory: MemoryController, first: int, count: int, asid: int,
            plaintext: np.ndarray | None = None) -> np.ndarray:
    """Give frames to `asid` and put plaintext in them, as the guest would by writing."""
    memory.convert_domain(first, count, asid)
    lo, hi = first * PAGE, (first + count) * PAGE
    if plaintext is None:
        plaintext = np.random.default_rng().integers(0, 256, hi - lo, np.uint8)
    memory.cells[lo:hi] = plaintext
    return plaintext


def u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


# -- reads and writes from outside the key domain -----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_host_read_of_a_private_frame_is_the_engines_ciphertext(mode):
    memory = make_memory(mode)
    plain = private(memory, 2, 2, asid=1)
    spa = 2 * PAGE
    dram = memory.read(spa, 2 * PAGE)
    assert dram == memory.engine.encrypt_blocks(1, spa, plain).tobytes()
    assert dram != plain.tobytes()
    assert np.array_equal(memory.cells[spa:spa + 2 * PAGE], plain)  # the owner's view is intact
    # an unaligned window is the same bytes, cut out
    assert memory.read(spa + 13, 45) == dram[13:58]
    assert memory.read(spa + PAGE - 7, 20) == dram[PAGE - 7:PAGE + 13]
    assert memory.read(spa, 0) == b""


def test_host_read_of_a_raw_frame_is_the_cells():
    memory = make_memory()
    assert memory.read(PAGE + 3, 100) == memory.cells[PAGE + 3:PAGE + 103].tobytes()


@pytest.mark.parametrize("mode", MODES)
def test_writing_ciphertext_sets_the_owners_view_to_its_decryption(mode):
    memory = make_memory(mode)
    private(memory, 1, 1, asid=2)
    spa = PAGE + 0x40
    foreign = os.urandom(0x80)
    memory.write(spa, foreign)
    assert memory.read(spa, 0x80) == foreign
    assert np.array_equal(memory.cells[spa:spa + 0x80],
                          memory.engine.decrypt_blocks(2, spa, u8(foreign)))
    # a host that knew the key could plant chosen plaintext (the engine is the only gate)
    chosen = b"chosen plaintext" * 4
    memory.write(spa, memory.engine.encrypt_blocks(2, spa, u8(chosen)).tobytes())
    assert memory.cells[spa:spa + 64].tobytes() == chosen


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(offset=st.integers(0, 2 * PAGE - 1), length=st.integers(1, 90), seed=st.integers(0, 2**32),
       data=st.data())
def test_partial_host_writes_corrupt_exactly_the_touched_blocks(mode, offset, length, seed, data):
    memory = make_memory(mode, nframes=3, seed=seed)
    private(memory, 0, 2, asid=1)
    length = min(length, 2 * PAGE - offset)
    cells_before = memory.cells.copy()
    dram_before = u8(memory.read(0, memory.size)).copy()
    # every written byte differs from what DRAM held there, so every touched block changes
    flips = data.draw(st.binary(min_size=length, max_size=length).map(
        lambda b: bytes(x | 1 for x in b)))
    written = bytes(a ^ b for a, b in zip(dram_before[offset:offset + length], flips, strict=True))
    memory.write(offset, written)

    dram_after = u8(memory.read(0, memory.size))
    expected = dram_before.copy()
    expected[offset:offset + length] = u8(written)
    assert np.array_equal(dram_after, expected)

    changed = (memory.cells != cells_before).reshape(-1, BLOCK).any(axis=1)
    touched = np.zeros_like(changed)
    touched[offset // BLOCK:(offset + length - 1) // BLOCK + 1] = True
    assert np.array_equal(changed, touched)


def test_a_write_across_raw_and_private_frames_follows_each_frames_domain():
    memory = make_memory(nframes=3)
    private(memory, 1, 1, asid=3)
    spa, payload = PAGE - 8, bytes(range(16))
    memory.write(spa, payload)
    assert memory.read(spa, 16) == payload
    assert memory.cells[spa:PAGE].tobytes() == payload[:8]  # raw frame: the bytes themselves
    assert memory.cells[PAGE:PAGE + 8].tobytes() != payload[8:]  # private frame: decrypted


def test_write_listeners_hear_every_host_write():
    memory = make_memory()
    heard: list[tuple[int, int]] = []
    memory.write_listeners.append(lambda spa, length: heard.append((spa, length)))
    memory.write(0x1234, b"abc")
    memory.write(3 * PAGE, bytes(PAGE))
    assert heard == [(0x1234, 3), (3 * PAGE, PAGE)]


# -- whole-DRAM views --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_dram_dump_equals_reading_every_byte(mode):
    memory = make_memory(mode)
    private(memory, 0, 2, asid=1)
    private(memory, 3, 1, asid=2)
    private(memory, 4, 3, asid=1)
    dump = memory.dram_dump()
    assert dump.tobytes() == memory.read(0, memory.size)
    out = np.empty(memory.size, dtype=np.uint8)
    assert memory.dram_dump(out) is out and np.array_equal(out, dump)
    # raw frames appear as they are, private frames do not
    assert np.array_equal(dump[2 * PAGE:3 * PAGE], memory.cells[2 * PAGE:3 * PAGE])
    assert not np.array_equal(dump[3 * PAGE:4 * PAGE], memory.cells[3 * PAGE:4 * PAGE])


@pytest.mark.parametrize("mode", MODES)
def test_a_planted_secret_never_appears_in_dram(mode):
    memory = make_memory(mode)
    secret = b"TOP-SECRET:" + os.urandom(21)
    memory.convert_domain(1, 3, 2)
    for spa in (PAGE, PAGE + 5, 2 * PAGE - 10, 3 * PAGE + 0x333):  # aligned, unaligned, straddling
        memory.cells[spa:spa + len(secret)] = u8(secret)
    assert secret[:16] not in memory.dram_dump().tobytes()
    assert secret[:16] not in memory.read(0, memory.size)
    # the key leaving its slot does not reveal it either: DRAM still holds ciphertext
    memory.unload_domain(2)
    assert secret[:16] not in memory.dram_dump().tobytes()
    # the same search finds the secret in a raw frame (the check can fail)
    memory.cells[6 * PAGE + 1:6 * PAGE + 1 + len(secret)] = u8(secret)
    assert secret in memory.dram_dump().tobytes()


# -- re-expressing frames -------------------------------------------------------------------


domains = st.sampled_from([RAW, *ASIDS])


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(initial=st.lists(domains, min_size=NFRAMES, max_size=NFRAMES),
       ops=st.lists(st.tuples(st.integers(0, NFRAMES - 1), st.integers(1, NFRAMES), domains),
                    max_size=10),
       seed=st.integers(0, 2**32))
def test_convert_domain_never_changes_dram(mode, initial, ops, seed):
    memory = make_memory(mode, seed=seed)
    for frame, dom in enumerate(initial):
        memory.convert_domain(frame, 1, dom)
    dram = memory.read(0, memory.size)
    for first, count, dom in ops:
        count = min(count, NFRAMES - first)
        memory.convert_domain(first, count, dom)
        assert (memory.domain[first:first + count] == dom).all()
        assert memory.read(0, memory.size) == dram
        assert memory.dram_dump().tobytes() == dram
    # back to raw: the cells are exactly the DRAM bytes
    memory.convert_domain(0, NFRAMES, RAW)
    assert memory.cells.tobytes() == dram


@pytest.mark.parametrize("mode", MODES)
def test_converting_there_and_back_restores_the_owners_plaintext(mode):
    memory = make_memory(mode)
    plain = private(memory, 2, 3, asid=1)
    memory.convert_domain(2, 3, RAW)
    assert not np.array_equal(memory.cells[2 * PAGE:5 * PAGE], plain)
    memory.convert_domain(2, 3, 2)  # another key makes garbage
    assert not np.array_equal(memory.cells[2 * PAGE:5 * PAGE], plain)
    memory.convert_domain(2, 3, 1)
    assert np.array_equal(memory.cells[2 * PAGE:5 * PAGE], plain)


class RecordingMapper:
    """A stand-in for a vCPU mapping: records the frames' domains when released and remapped."""

    def __init__(self, memory: MemoryController) -> None:
        self.memory = memory
        self.events: list[tuple[str, int, int, list[int]]] = []

    def release(self, first: int, stop: int) -> Callable[[], None]:
        self.events.append(("release", first, stop, self.memory.domain.tolist()))
        return lambda: self.events.append(("remap", first, stop, self.memory.domain.tolist()))


def test_conversion_of_mapped_frames_happens_while_mappers_let_go():
    memory = make_memory()
    mapper = RecordingMapper(memory)
    memory.mappers.append(mapper)
    memory.convert_domain(0, 2, 1)  # nothing pinned: mappers are not bothered
    assert mapper.events == []
    memory.pins[5] = 1
    memory.convert_domain(4, 3, 2)
    assert [e[:3] for e in mapper.events] == [("release", 4, 7), ("remap", 4, 7)]
    assert mapper.events[0][3][4:7] == [RAW] * 3
    assert mapper.events[1][3][4:7] == [2] * 3


# -- firmware-side operations -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_encrypt_in_place_keeps_the_plaintext_for_the_owner(mode):
    memory = make_memory(mode)
    plain = memory.cells[PAGE:3 * PAGE].copy()
    others = memory.read(0, PAGE) + memory.read(3 * PAGE, memory.size - 3 * PAGE)
    memory.encrypt_in_place(PAGE, 2 * PAGE, 1)
    assert (memory.domain[1:3] == 1).all()
    assert np.array_equal(memory.cells[PAGE:3 * PAGE], plain)
    assert memory.read(PAGE, 2 * PAGE) == memory.engine.encrypt_blocks(1, PAGE, plain).tobytes()
    assert memory.read(0, PAGE) + memory.read(3 * PAGE, memory.size - 3 * PAGE) == others


@pytest.mark.parametrize("mode", MODES)
def test_encrypt_in_place_of_part_of_a_page(mode):
    """LAUNCH_UPDATE_DATA may cover part of a page; the rest of DRAM stays as it was."""
    memory = make_memory(mode)
    spa = 4 * PAGE
    dram = memory.read(spa, PAGE)
    memory.encrypt_in_place(spa + 0x100, 0x200, 3)
    after = memory.read(spa, PAGE)
    assert after[:0x100] == dram[:0x100] and after[0x300:] == dram[0x300:]
    assert after[0x100:0x300] == memory.engine.encrypt_blocks(
        3, spa + 0x100, u8(dram[0x100:0x300])).tobytes()
    assert memory.cells[spa + 0x100:spa + 0x300].tobytes() == dram[0x100:0x300]


@pytest.mark.parametrize("mode", MODES)
def test_encrypt_in_place_twice_on_one_page(mode):
    """Two updates of one page (two halves, as firmware allows) give the owner both halves."""
    memory = make_memory(mode)
    spa = 5 * PAGE
    first, second = os.urandom(PAGE // 2), os.urandom(PAGE // 2)
    memory.write(spa, first + second)
    memory.encrypt_in_place(spa, PAGE // 2, 2)
    memory.encrypt_in_place(spa + PAGE // 2, PAGE // 2, 2)
    assert memory.cells[spa:spa + PAGE].tobytes() == first + second
    assert memory.read(spa, PAGE) == memory.engine.encrypt_blocks(
        2, spa, u8(first + second)).tobytes()


def test_encrypt_in_place_encrypts_what_dram_holds():
    """Updating a range again encrypts its current DRAM bytes (ciphertext) once more, as the
    firmware would: the owner then reads the old ciphertext."""
    memory = make_memory()
    spa = 2 * PAGE
    memory.encrypt_in_place(spa, PAGE, 1)
    once = memory.read(spa, PAGE)
    memory.encrypt_in_place(spa, PAGE, 1)
    assert memory.cells[spa:spa + PAGE].tobytes() == once
    assert memory.read(spa, PAGE) == memory.engine.encrypt_blocks(1, spa, u8(once)).tobytes()


def test_fill_zeroes_frames_through_a_domain():
    memory = make_memory()
    memory.fill(np.array([6, 2, 3]), 1)
    for frame in (2, 3, 6):
        assert memory.domain[frame] == 1
        assert not memory.cells[frame * PAGE:(frame + 1) * PAGE].any()
        assert memory.read(frame * PAGE, PAGE) == memory.engine.encrypt_blocks(
            1, frame * PAGE, np.zeros(PAGE, np.uint8)).tobytes()
    memory.fill(np.array([2]), RAW)
    assert memory.read(2 * PAGE, PAGE) == bytes(PAGE)


@pytest.mark.parametrize("mode", MODES)
def test_unload_domain_leaves_dram_alone_and_frames_raw(mode):
    memory = make_memory(mode)
    private(memory, 0, 2, asid=1)
    private(memory, 2, 1, asid=2)
    private(memory, 5, 2, asid=1)
    dram = memory.read(0, memory.size)
    memory.unload_domain(1)
    assert memory.domain.tolist() == [RAW, RAW, 2, RAW, RAW, RAW, RAW, RAW]
    assert memory.read(0, memory.size) == dram
    assert memory.cells[:2 * PAGE].tobytes() == dram[:2 * PAGE]  # raw cells hold DRAM bytes
    memory.unload_domain(3)  # nothing of ASID 3: nothing happens
    assert memory.read(0, memory.size) == dram


# -- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize("spa, length", [(SIZE, 1), (SIZE - 4, 5), (-1, 4), (0, SIZE + 1),
                                         (0, -1), (SIZE + PAGE, 0)])
def test_out_of_range_accesses_are_refused(spa, length):
    memory = make_memory()
    private(memory, NFRAMES - 1, 1, asid=1)
    dram = memory.read(0, memory.size)
    with pytest.raises(MemoryAccessError):
        memory.read(spa, length)
    with pytest.raises(MemoryAccessError):
        memory.check_range(spa, length)
    if length > 0:
        with pytest.raises(MemoryAccessError):
            memory.write(spa, bytes(length))
        with pytest.raises(MemoryAccessError):
            memory.encrypt_in_place(spa, length, 2)
    assert memory.read(0, memory.size) == dram
    assert memory.domain.tolist() == [RAW] * (NFRAMES - 1) + [1]


@pytest.mark.parametrize("size", [0, -PAGE, 100, PAGE + 1])
def test_dram_must_be_whole_frames(size):
    with pytest.raises(MemoryAccessError):
        MemoryController(size, EncryptionEngine(TweakMode.XEX_STRONG))


def test_frame_address_points_at_the_cells():
    memory = make_memory()
    assert memory.frame_address(3) - memory.frame_address(0) == 3 * PAGE
    assert memory.frame_address(0) == memory.cells.ctypes.data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-2, 2), max_size=30))
def test_frame_runs_splits_into_maximal_runs(values):
    array = np.array(values, dtype=np.int32)
    runs = list(frame_runs(array))
    rebuilt = [value for start, stop, value in runs for _ in range(start, stop)]
    assert rebuilt == values
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in pairwise(runs))
