"""The memory encryption engine: per-ASID keys, the SPA tweak, XE versus XEX.

Nothing here compares against stored ciphertext: every expectation is a property that holds for
any key and any tweak constants (determinism, binding to SPA and key, block independence,
invertibility, linearity of the tweak, the SEVurity relations), so the tests keep working when
the engine is rewritten and fail when one of those properties breaks.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import types

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

import sevsim.hw.engine as engine_module
from conftest import blocks_found, secret_bytes
from sevsim import Host
from sevsim.errors import ConfigError
from sevsim.hw.chips import TweakMode
from sevsim.hw.engine import BLOCK, PAGE, EncryptionEngine, SlotCipher, TweakFunction
from sevsim.testing import engine_on_one_core, memory_controller

MODES = [TweakMode.XE_WEAK, TweakMode.XEX_STRONG]
ADDRESS_BITS = 52

# A block-aligned host physical address anywhere in the 52-bit physical space.
block_spa = st.integers(0, (1 << ADDRESS_BITS) - 1).map(lambda a: a & ~(BLOCK - 1))
# Physical addresses low enough for a few pages to follow them.
low_spa = st.integers(0, (1 << 40) - 1).map(lambda a: a & ~(BLOCK - 1))


def arr(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


def rand(n: int, seed: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, n, dtype=np.uint8)


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def make_engine(mode: TweakMode, seed: int = 0x5EED, *, fresh_tweak: bool = False,
                keys: dict[int, bytes] | None = None) -> EncryptionEngine:
    tweak = None if fresh_tweak else TweakFunction.weak(seed)
    engine = EncryptionEngine(mode, tweak)
    for asid, key in (keys or {1: os.urandom(16), 2: os.urandom(16)}).items():
        engine.load_key(asid, key)
    return engine


def enc(engine: EncryptionEngine, asid: int, spa: int, data: bytes) -> bytes:
    return engine.encrypt_blocks(asid, spa, arr(data)).tobytes()


def dec(engine: EncryptionEngine, asid: int, spa: int, data: bytes) -> bytes:
    return engine.decrypt_blocks(asid, spa, arr(data)).tobytes()


# -- determinism and binding -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(spa=block_spa, data=st.binary(min_size=16, max_size=128).map(lambda b: b[:len(b) & ~15]))
def test_same_plaintext_spa_and_key_give_same_ciphertext(mode, spa, data):
    key = os.urandom(16)
    first = make_engine(mode, keys={1: key})
    second = make_engine(mode, keys={7: key})  # same key in another slot of another engine
    c1 = enc(first, 1, spa, data)
    assert c1 == enc(first, 1, spa, data)
    assert c1 == enc(second, 7, spa, data)
    # and it really is encryption: no 16-byte block survives unchanged
    for i in range(0, len(data), BLOCK):
        assert c1[i:i + BLOCK] != data[i:i + BLOCK]


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(a=block_spa, b=block_spa, block=st.binary(min_size=16, max_size=16))
def test_ciphertext_is_bound_to_the_spa(mode, a, b, block):
    engine = make_engine(mode)
    if a == b:
        assert enc(engine, 1, a, block) == enc(engine, 1, b, block)
    else:
        assert enc(engine, 1, a, block) != enc(engine, 1, b, block)


@pytest.mark.parametrize("mode", MODES)
def test_identical_blocks_on_one_page_encrypt_differently(mode):
    engine = make_engine(mode)
    page = np.zeros(PAGE, dtype=np.uint8)
    cipher = engine.encrypt_pages(1, 0x1234, page).reshape(-1, BLOCK)
    assert len({bytes(row) for row in cipher}) == PAGE // BLOCK


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=20, deadline=None)
@given(spa=block_spa, block=st.binary(min_size=16, max_size=16))
def test_ciphertext_is_bound_to_the_asid_key(mode, spa, block):
    engine = make_engine(mode)
    assert enc(engine, 1, spa, block) != enc(engine, 2, spa, block)
    # the key, not the slot number, decides: the same key in two slots agrees
    shared = os.urandom(16)
    engine.load_key(3, shared)
    engine.load_key(4, shared)
    assert enc(engine, 3, spa, block) == enc(engine, 4, spa, block)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, PAGE // BLOCK - 1),
       delta=st.binary(min_size=16, max_size=16).filter(any),
       frame=st.integers(0, (1 << 40) - 1))
def test_changing_one_block_changes_only_that_blocks_ciphertext(mode, seed, index, delta, frame):
    engine = make_engine(mode)
    page = rand(PAGE, seed)
    before = engine.encrypt_pages(1, frame, page).reshape(-1, BLOCK).copy()
    page[index * BLOCK:(index + 1) * BLOCK] ^= arr(delta)
    after = engine.encrypt_pages(1, frame, page).reshape(-1, BLOCK)
    changed = np.flatnonzero((before != after).any(axis=1))
    assert changed.tolist() == [index]


# -- decryption ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(spa=low_spa, nblocks=st.integers(1, 80), seed=st.integers(0, 2**32 - 1))
def test_decrypt_blocks_inverts_encrypt_blocks(mode, spa, nblocks, seed):
    engine = make_engine(mode)
    plain = rand(nblocks * BLOCK, seed)
    cipher = engine.encrypt_blocks(2, spa, plain)
    assert not np.array_equal(cipher, plain)
    assert np.array_equal(engine.decrypt_blocks(2, spa, cipher), plain)
    # decrypting at another address does not give the plaintext back
    assert not np.array_equal(engine.decrypt_blocks(2, spa + BLOCK, cipher), plain)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=15, deadline=None)
@given(frame=st.integers(0, (1 << 40) - 1), npages=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_decrypt_pages_inverts_encrypt_pages(mode, frame, npages, seed):
    engine = make_engine(mode)
    plain = rand(npages * PAGE, seed)
    cipher = engine.encrypt_pages(1, frame, plain)
    assert np.array_equal(engine.decrypt_pages(1, frame, cipher), plain)
    # in place, through `out`, as the memory controller uses it
    buf = cipher.copy()
    engine.decrypt_pages(1, frame, buf, buf)
    assert np.array_equal(buf, plain)


@pytest.mark.parametrize("mode", MODES)
def test_long_runs_cross_the_engines_chunking(mode):
    """More than 256 KiB at once: pages and blocks agree with themselves and each other."""
    engine = make_engine(mode)
    npages = 70
    frame = 0x12345
    plain = rand(npages * PAGE, 1)
    pages = engine.encrypt_pages(1, frame, plain)
    blocks = engine.encrypt_blocks(1, frame * PAGE, plain)
    assert np.array_equal(pages, blocks)
    # page by page gives the same answer (each page's tweak depends only on its frame)
    for i in (0, 63, 64, 69):
        one = engine.encrypt_pages(1, frame + i, plain[i * PAGE:(i + 1) * PAGE])
        assert np.array_equal(one, pages[i * PAGE:(i + 1) * PAGE])
    assert np.array_equal(engine.decrypt_blocks(1, frame * PAGE, blocks), plain)
    assert np.array_equal(engine.decrypt_pages(1, frame, pages), plain)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=20, deadline=None)
@given(frame=st.integers(0, (1 << 40) - 1), npages=st.integers(1, 3),
       start_block=st.integers(0, 255), seed=st.integers(0, 2**32))
def test_encrypt_pages_agrees_with_encrypt_blocks(mode, frame, npages, start_block, seed):
    engine = make_engine(mode)
    plain = rand(npages * PAGE, seed)
    pages = engine.encrypt_pages(2, frame, plain)
    assert np.array_equal(pages, engine.encrypt_blocks(2, frame * PAGE, plain))
    # a block run starting mid-page is the matching slice of the page run
    off = start_block * BLOCK
    part = engine.encrypt_blocks(2, frame * PAGE + off, plain[off:])
    assert np.array_equal(part, pages[off:])


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(boundary=st.integers(1, (1 << 30) - 1), before=st.integers(0, 40),
       nblocks=st.integers(1, 120), high=st.sampled_from([0, 1 << 40, (1 << 52) - (1 << 32)]))
def test_a_run_is_the_concatenation_of_its_blocks(mode, boundary, before, nblocks, high):
    """However the engine cuts a run internally, each block is encrypted at its own SPA.
    Runs start just before 2**k-aligned addresses, where chunked implementations split."""
    engine = make_engine(mode)
    align = 1 << (boundary.bit_length() + 11)
    spa = high + ((boundary * align) & ((1 << 51) - 1)) - before * BLOCK
    spa = max(spa, 0)
    plain = rand(nblocks * BLOCK, boundary)
    run = engine.encrypt_blocks(1, spa, plain)
    single = b"".join(enc(engine, 1, spa + i * BLOCK, plain[i * BLOCK:(i + 1) * BLOCK].tobytes())
                      for i in range(nblocks))
    assert run.tobytes() == single
    assert np.array_equal(engine.decrypt_blocks(1, spa, run), plain)


def reference_tweak(constants: np.ndarray, spa: int) -> bytes:
    """T(spa) from its definition: XOR of t_i over the set bits i >= 4 of the address."""
    value = np.zeros(2, dtype=np.uint64)
    for bit in range(4, min(constants.shape[0], 64)):
        if spa >> bit & 1:
            value ^= constants[bit]
    return value.tobytes()


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(spa=block_spa, m=st.binary(min_size=16, max_size=16))
def test_ciphertext_follows_the_documented_construction(mode, spa, m):
    """XE: c = E_k(m ^ T(spa)); XEX: c = E_k(m ^ T(spa)) ^ T(spa), with AES-128 from
    `cryptography` as the reference and T computed from the tweak constants by definition."""
    key = os.urandom(16)
    engine = make_engine(mode, fresh_tweak=True, keys={5: key})
    t = reference_tweak(engine.tweak.constants, spa)
    assert engine.tweak(spa) == t
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expected = aes.update(xor(m, t))
    if mode is TweakMode.XEX_STRONG:
        expected = xor(expected, t)
    assert enc(engine, 5, spa, m) == expected


# -- the tweak -------------------------------------------------------------------------------


def tweak_int(tweak: TweakFunction, spa: int) -> int:
    value = tweak(spa)
    assert isinstance(value, bytes) and len(value) == BLOCK
    return int.from_bytes(value, "little")


@pytest.mark.parametrize("make", [lambda: TweakFunction.weak(0xDEADBEEF), TweakFunction.strong],
                         ids=["weak", "strong"])
@settings(max_examples=50, deadline=None)
@given(a=block_spa, b=block_spa)
def test_tweak_is_linear_in_the_address(make, a, b):
    tweak = make()
    assert tweak_int(tweak, 0) == 0
    # disjoint bits: T(a | b) = T(a) ^ T(b)
    lo, hi = a & ~b, b & ~a
    assert tweak_int(tweak, lo | hi) == tweak_int(tweak, lo) ^ tweak_int(tweak, hi)
    # and over GF(2) in general
    assert tweak_int(tweak, a ^ b) == tweak_int(tweak, a) ^ tweak_int(tweak, b)


@settings(max_examples=30, deadline=None)
@given(spa=block_spa, low=st.integers(0, 15))
def test_tweak_ignores_the_offset_inside_a_block(spa, low):
    tweak = TweakFunction.strong()
    assert tweak(spa + low) == tweak(spa)


def test_every_block_address_bit_moves_the_tweak():
    tweak = TweakFunction.strong()
    values = [tweak_int(tweak, 1 << bit) for bit in range(4, ADDRESS_BITS)]
    assert all(values)
    assert len(set(values)) == len(values)
    assert all(tweak_int(tweak, 1 << bit) == 0 for bit in range(4))


@settings(max_examples=20, deadline=None)
@given(spa=low_spa, nblocks=st.integers(1, 40))
def test_vectorised_tweaks_agree_with_the_scalar_tweak(spa, nblocks):
    tweak = TweakFunction.weak(42)
    table = tweak.blocks(spa, nblocks)
    for i in range(nblocks):
        assert table[i].tobytes() == tweak(spa + i * BLOCK)
    frame = spa // PAGE
    pages = tweak.frame_range(frame, 2)
    assert (pages[0] ^ tweak.page_offsets[5]).tobytes() == tweak(frame * PAGE + 5 * BLOCK)
    assert (pages[1] ^ tweak.page_offsets[17]).tobytes() == tweak((frame + 1) * PAGE + 17 * BLOCK)


@settings(max_examples=50, deadline=None)
@given(first=st.integers(0, 1 << 40) | st.integers(2, 40).map(lambda b: (1 << b) - 3),
       count=st.integers(1, 5000))
def test_frame_range_by_linearity_matches_the_tweak_of_each_frame(first, count):
    tweak = TweakFunction.weak(7)
    frames = np.arange(first, first + count, dtype=np.uint64)
    assert np.array_equal(tweak.frame_range(first, count), tweak.frames(frames))


def test_strong_tweak_is_fresh_per_boot_and_weak_tweak_follows_its_seed():
    spas = [0x10, 0x1000, 0xABCDE0, 1 << 47]
    strong = [EncryptionEngine(TweakMode.XEX_STRONG).tweak for _ in range(2)]
    for spa in spas:
        assert strong[0](spa) != strong[1](spa)
    for spa in spas:
        assert TweakFunction.weak(1234)(spa) == TweakFunction.weak(1234)(spa)
        assert TweakFunction.weak(1234)(spa) != TweakFunction.weak(1235)(spa)
    # default Zen 1 engines draw a seed per boot too
    weak = [EncryptionEngine(TweakMode.XE_WEAK).tweak for _ in range(2)]
    assert any(weak[0](spa) != weak[1](spa) for spa in spas)


def test_strong_engines_encrypt_differently_per_boot_even_with_the_same_key():
    key = os.urandom(16)
    one = make_engine(TweakMode.XEX_STRONG, fresh_tweak=True, keys={1: key})
    two = make_engine(TweakMode.XEX_STRONG, fresh_tweak=True, keys={1: key})
    block = b"same plaintext!!"
    assert enc(one, 1, 0x1000, block) != enc(two, 1, 0x1000, block)


# -- XE versus XEX: what SEVurity exploits ----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(a=block_spa, b=block_spa, m=st.binary(min_size=16, max_size=16))
def test_xe_ciphertext_can_be_predicted_across_addresses(a, b, m):
    """XE: c = E(m ^ T(a)) at a equals the ciphertext of m ^ T(a) ^ T(b) at b."""
    engine = make_engine(TweakMode.XE_WEAK, fresh_tweak=True)
    ta, tb = engine.tweak(a), engine.tweak(b)
    assert enc(engine, 1, a, m) == enc(engine, 1, b, xor(xor(m, ta), tb))
    # moving the ciphertext from a to b makes the owner read m ^ T(a) ^ T(b) there
    assert dec(engine, 1, b, enc(engine, 1, a, m)) == xor(xor(m, ta), tb)


@settings(max_examples=40, deadline=None)
@given(a=block_spa, b=block_spa, m=st.binary(min_size=16, max_size=16))
def test_xex_breaks_the_xe_relation(a, b, m):
    engine = make_engine(TweakMode.XEX_STRONG, fresh_tweak=True)
    ta, tb = engine.tweak(a), engine.tweak(b)
    moved = enc(engine, 1, b, xor(xor(m, ta), tb))
    if a == b:
        assert enc(engine, 1, a, m) == moved
    else:
        assert enc(engine, 1, a, m) != moved
        # raw ciphertext moved from a to b no longer decrypts to a predictable value
        assert dec(engine, 1, b, enc(engine, 1, a, m)) != xor(xor(m, ta), tb)
    # but knowing the tweaks, the XEX whitening can be undone: c ^ T(a) ^ T(b) at b
    relocated = xor(xor(enc(engine, 1, a, m), ta), tb)
    assert dec(engine, 1, b, relocated) == xor(xor(m, ta), tb)


# -- keys stay inside ------------------------------------------------------------------------


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, types.CodeType, types.FrameType)


def reachable(root: object, depth: int = 8) -> list[object]:
    """Every object reachable from `root` through attributes, slots, containers and C-level
    references, up to `depth` hops (classes, modules and functions are not followed)."""
    seen: set[int] = set()
    found: list[object] = []
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        obj, level = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        found.append(obj)
        if level >= depth or isinstance(obj, (bytes, bytearray, str, int, float, np.ndarray)):
            continue
        children: list[object] = []
        if isinstance(obj, dict):
            children += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children += list(obj)
        if hasattr(obj, "__dict__"):
            children += list(vars(obj).values())
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if hasattr(obj, name):
                    children.append(getattr(obj, name))
        children += gc.get_referents(obj)
        stack += [(child, level + 1) for child in children]
    return found


def holds(obj: object, key: bytes) -> bool:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return key in bytes(obj)
    if isinstance(obj, np.ndarray):
        return key in obj.tobytes()
    if isinstance(obj, str):
        return key.hex() in obj.lower()
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj in (int.from_bytes(key, "little"), int.from_bytes(key, "big"))
    return False


class _Slotted:
    __slots__ = ("inner",)

    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_the_reachability_search_finds_a_planted_key():
    """Guard for the next test: a key hidden a few levels deep is found."""
    key = os.urandom(16)
    planted = types.SimpleNamespace(
        engine=make_engine(TweakMode.XEX_STRONG),
        spy={"nested": [_Slotted(types.SimpleNamespace(blob=bytearray(b"xx" + key)))]})
    assert any(holds(obj, key) for obj in reachable(planted))
    planted.spy = _Slotted((np.frombuffer(key, dtype=np.uint64).copy(),))
    assert any(holds(obj, key) for obj in reachable(planted))
    planted.spy = None
    assert not any(holds(obj, key) for obj in reachable(planted))


@pytest.mark.parametrize("key_bytes", [16, 64], ids=["aes128", "xts256"])
@pytest.mark.parametrize("mode", MODES)
def test_no_loaded_key_is_reachable_from_the_engine(mode, key_bytes):
    keys = {asid: os.urandom(key_bytes) for asid in (1, 2, 9)}
    engine = EncryptionEngine(mode)
    for asid, key in keys.items():
        assert engine.load_key(asid, key) is None
    # use every path once so that any caching of key material has happened
    plain = rand(2 * PAGE, 3)
    for asid in keys:
        engine.decrypt_pages(asid, 5, engine.encrypt_pages(asid, 5, plain))
        engine.decrypt_blocks(asid, 0x40, engine.encrypt_blocks(asid, 0x40, plain[:64]))
    objects = reachable(engine)
    assert any(obj is engine.tweak for obj in objects)  # the walk did get inside
    for key in keys.values():
        assert not [obj for obj in objects if holds(obj, key)]
        assert key.hex() not in repr(engine) and key.hex() not in str(vars(engine))


@pytest.mark.parametrize("mode", MODES)
def test_unload_key_makes_later_use_fail(mode):
    engine = make_engine(mode)
    block = arr(b"0123456789abcdef")
    cipher = engine.encrypt_blocks(2, 0x2000, block)
    engine.unload_key(1)
    assert not engine.has_key(1) and engine.has_key(2)
    for call in (lambda: engine.encrypt_blocks(1, 0, block),
                 lambda: engine.decrypt_blocks(1, 0, block),
                 lambda: engine.encrypt_pages(1, 0, np.zeros(PAGE, np.uint8)),
                 lambda: engine.decrypt_pages(1, 0, np.zeros(PAGE, np.uint8))):
        with pytest.raises(KeyError):
            call()
    # the other slot is untouched, and unloading twice is harmless
    assert np.array_equal(engine.encrypt_blocks(2, 0x2000, block), cipher)
    engine.unload_key(1)
    assert not engine.has_key(1)


@pytest.mark.parametrize("mode", MODES)
def test_reloading_a_slot_replaces_its_key(mode):
    engine = make_engine(mode)
    block = arr(b"fedcba9876543210")
    old = engine.encrypt_blocks(1, 0, block).copy()
    engine.load_key(1, os.urandom(16))
    assert not np.array_equal(engine.encrypt_blocks(1, 0, block), old)


def test_bad_keys_and_misaligned_runs_are_refused():
    engine = make_engine(TweakMode.XEX_STRONG)
    for bad in (b"", bytes(15), bytes(17), bytes(32)):
        with pytest.raises(ValueError):
            engine.load_key(3, bad)
    assert not engine.has_key(3)
    with pytest.raises(ValueError):
        engine.encrypt_blocks(1, 8, np.zeros(16, np.uint8))
    with pytest.raises(ValueError):
        engine.encrypt_blocks(1, 0, np.zeros(24, np.uint8))
    with pytest.raises(ValueError):
        engine.encrypt_pages(1, 0, np.zeros(PAGE + 16, np.uint8))


# -- AES-256-XTS (SNP policy MEM_AES_256_XTS on Genoa and Turin) ------------------------------


def xts_key() -> bytes:
    return os.urandom(64)  # K1 || K2; equal halves have probability 2**-256


def xts_reference(key: bytes, spa: int, data: bytes, encrypt: bool = True) -> bytes:
    """`cryptography`'s AES-256-XTS, one 16-byte data unit per block, tweak = the block's SPA
    as a 64-bit little-endian number in the 16-byte IV."""
    out = b""
    for i in range(0, len(data), BLOCK):
        cipher = Cipher(algorithms.AES(key), modes.XTS((spa + i).to_bytes(16, "little")))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        out += ctx.update(data[i:i + BLOCK]) + ctx.finalize()
    return out


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(spa=block_spa, nblocks=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_xts_blocks_match_cryptography_xts(mode, spa, nblocks, seed):
    """The chip's tweak mode does not matter to an XTS slot: the SPA is the XTS tweak."""
    key = xts_key()
    engine = make_engine(mode, keys={4: key})
    assert engine.cipher(4) is SlotCipher.AES256_XTS
    plain = rand(nblocks * BLOCK, seed)
    cipher = engine.encrypt_blocks(4, spa, plain)
    assert cipher.tobytes() == xts_reference(key, spa, plain.tobytes())
    assert engine.decrypt_blocks(4, spa, cipher).tobytes() == plain.tobytes()
    assert xts_reference(key, spa, cipher.tobytes(), encrypt=False) == plain.tobytes()


@settings(max_examples=15, deadline=None)
@given(frame=st.integers(0, (1 << 40) - 1), npages=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_xts_pages_match_cryptography_xts_and_round_trip(frame, npages, seed):
    key = xts_key()
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: key, 2: os.urandom(16)})
    plain = rand(npages * PAGE, seed)
    cipher = engine.encrypt_pages(1, frame, plain)
    assert cipher.tobytes() == xts_reference(key, frame * PAGE, plain.tobytes())
    assert np.array_equal(cipher, engine.encrypt_blocks(1, frame * PAGE, plain))
    assert np.array_equal(engine.decrypt_pages(1, frame, cipher), plain)
    buf = cipher.copy()  # in place, through `out`, as the memory controller uses it
    engine.decrypt_pages(1, frame, buf, buf)
    assert np.array_equal(buf, plain)
    # the AES-128 slot next to it is unaffected and differs
    assert not np.array_equal(engine.encrypt_pages(2, frame, plain), cipher)


@settings(max_examples=20, deadline=None)
@given(spa=low_spa, nblocks=st.integers(1, 600), seed=st.integers(0, 2**32 - 1))
def test_xts_block_runs_round_trip_across_page_boundaries(spa, nblocks, seed):
    engine = make_engine(TweakMode.XEX_STRONG, keys={3: xts_key()})
    plain = rand(nblocks * BLOCK, seed)
    cipher = engine.encrypt_blocks(3, spa, plain)
    assert np.array_equal(engine.decrypt_blocks(3, spa, cipher), plain)
    # each block is its own data unit: the run is the concatenation of its blocks
    for i in {0, nblocks // 2, nblocks - 1}:
        one = engine.encrypt_blocks(3, spa + i * BLOCK, plain[i * BLOCK:(i + 1) * BLOCK])
        assert np.array_equal(one, cipher[i * BLOCK:(i + 1) * BLOCK])


def test_xts_large_runs_shared_between_cores_match_one_core():
    """Past PARALLEL_PAGES the run is cut between threads; every piece keeps its own SPAs."""
    key = xts_key()
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: key})
    npages = engine_module.PARALLEL_PAGES + 37
    frame = 0x12345
    plain = rand(npages * PAGE, 9)
    shared = engine.encrypt_pages(1, frame, plain)
    with engine_on_one_core():
        alone = engine.encrypt_pages(1, frame, plain)
    assert np.array_equal(shared, alone)
    for i in (0, npages // 3, npages - 1):
        lo = i * PAGE
        expected = xts_reference(key, (frame + i) * PAGE, plain[lo:lo + PAGE].tobytes())
        assert shared[lo:lo + PAGE].tobytes() == expected
    assert np.array_equal(engine.decrypt_pages(1, frame, shared), plain)
    assert np.array_equal(engine.decrypt_blocks(1, frame * PAGE, shared), plain)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no worker pool")
def test_a_forked_child_shares_large_runs_out_too():
    """The attack matrix forks workers after the parent used the pool: a child inherits the
    pool without its threads, so it needs one of its own or its first large run waits forever."""
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: xts_key()})
    plain = rand((engine_module.PARALLEL_PAGES + 3) * PAGE, 11)
    cipher = engine.encrypt_pages(1, 0x777, plain)  # the parent's pool has started its threads
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same run must come back, and soon
        os.close(reader)
        ok = np.array_equal(engine.encrypt_pages(1, 0x777, plain), cipher)
        os.write(writer, b"1" if ok else b"0")
        os._exit(0)
    os.close(writer)
    try:
        ready, _, _ = select.select([reader], [], [], 60)
        answer = os.read(reader, 1) if ready else b""
    finally:
        os.close(reader)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer == b"1", "the forked child's large run did not finish"


@settings(max_examples=30, deadline=None)
@given(a=block_spa, b=block_spa, block=st.binary(min_size=16, max_size=16))
def test_xts_ciphertext_is_bound_to_the_spa_and_moving_it_garbles_it(a, b, block):
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: xts_key()})
    cipher = enc(engine, 1, a, block)
    assert cipher != block
    if a == b:
        assert enc(engine, 1, b, block) == cipher
        return
    assert enc(engine, 1, b, block) != cipher
    # ciphertext copied from a to b decrypts there to garbage, not the plaintext
    assert dec(engine, 1, b, cipher) != block


def test_identical_blocks_on_one_xts_page_encrypt_differently():
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: xts_key()})
    cipher = engine.encrypt_pages(1, 0x1234, np.zeros(PAGE, dtype=np.uint8)).reshape(-1, BLOCK)
    assert len({bytes(row) for row in cipher}) == PAGE // BLOCK


def test_xts_slot_is_bound_to_its_key_and_differs_from_aes128_with_the_same_bytes():
    key = xts_key()
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: key, 2: key, 3: xts_key(),
                                                     4: key[:16]})
    block = arr(b"0123456789abcdef")
    assert np.array_equal(engine.encrypt_blocks(1, 0x40, block),
                          engine.encrypt_blocks(2, 0x40, block))
    assert not np.array_equal(engine.encrypt_blocks(1, 0x40, block),
                              engine.encrypt_blocks(3, 0x40, block))
    assert not np.array_equal(engine.encrypt_blocks(1, 0x40, block),
                              engine.encrypt_blocks(4, 0x40, block))
    assert engine.cipher(4) is SlotCipher.AES128_TWEAK


def test_reloading_a_slot_switches_its_cipher():
    engine = make_engine(TweakMode.XEX_STRONG)
    block = arr(b"fedcba9876543210")
    assert engine.cipher(1) is SlotCipher.AES128_TWEAK
    key = xts_key()
    engine.load_key(1, key)
    assert engine.cipher(1) is SlotCipher.AES256_XTS
    assert enc(engine, 1, 0x80, block.tobytes()) == xts_reference(key, 0x80, block.tobytes())
    aes = os.urandom(16)
    engine.load_key(1, aes)
    assert engine.cipher(1) is SlotCipher.AES128_TWEAK
    t = engine.tweak(0x80)
    expected = xor(Cipher(algorithms.AES(aes), modes.ECB()).encryptor().update(
        xor(block.tobytes(), t)), t)
    assert enc(engine, 1, 0x80, block.tobytes()) == expected
    with pytest.raises(KeyError):
        engine.cipher(99)


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytes(24), bytes(32), bytes(48),
                                 bytes(63), bytes(65), bytes(128)], ids=len)
def test_wrong_key_sizes_raise_a_config_error_and_change_nothing(bad):
    key = xts_key()
    engine = make_engine(TweakMode.XEX_STRONG, keys={1: key})
    block = arr(bytes(range(16)))
    before = engine.encrypt_blocks(1, 0x100, block).copy()
    with pytest.raises(ConfigError, match=r"16 bytes .* or 64 bytes"):
        engine.load_key(1, bad)
    with pytest.raises(ConfigError):
        engine.load_key(7, bad)
    assert not engine.has_key(7)
    assert engine.cipher(1) is SlotCipher.AES256_XTS
    assert np.array_equal(engine.encrypt_blocks(1, 0x100, block), before)


def test_xts_key_with_equal_halves_is_refused():
    engine = make_engine(TweakMode.XEX_STRONG)
    half = os.urandom(32)
    with pytest.raises(ConfigError, match="differ"):
        engine.load_key(1, half + half)
    assert engine.cipher(1) is SlotCipher.AES128_TWEAK  # the old key is still there


def test_an_snp_guest_whose_policy_asks_for_xts_runs_under_an_xts_key(build) -> None:
    host = Host(chip="genoa")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("secret"))
    vm.launch(policy=0x30000 | 1 << 22)  # SMT allowed, reserved bit 17, MEM_AES_256_XTS
    assert memory_controller(host).engine.cipher(vm.hv.asid) is SlotCipher.AES256_XTS
    result = vm.run(timeout=20)
    assert result.exit_code == 0, result.console
    assert blocks_found(host.dram_dump(), secret_bytes()) == 0
    plain = host.create_vm(mode="snp", memory="16M")
    plain.load(build("secret"))
    plain.launch()
    assert memory_controller(host).engine.cipher(plain.hv.asid) is SlotCipher.AES128_TWEAK
