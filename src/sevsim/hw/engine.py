"""The memory encryption engine: per-ASID AES key slots and the SPA tweak, vectorised.

A slot holds one of two ciphers, chosen by the key's length at `load_key`: a 16-byte key is
AES-128 with the chip's SPA tweak (below, every SEV generation); a 64-byte key K1 || K2 is
AES-256-XTS, which Genoa and Turin give SNP guests whose policy sets MEM_AES_256_XTS.

Every aligned 16-byte block is encrypted on its own under the key of the ASID that owns it,
tweaked by its host physical address: XE (c = E(m ^ T)) on Zen 1, XEX (c = E(m ^ T) ^ T)
from Zen 2 on. T is linear, an XOR of one 128-bit constant per address bit (bits 4 and up),
which is the property SEVurity-style attacks exploit. AMD does not publish the constants;
sevsim draws them per boot (Zen 1 from a 32-bit seed, as weak as the real ones).

The cipher loop is `sevsim.hw._xex`, a small C extension over OpenSSL's AES-128 (libcrypto):
OpenSSL has no mode with this tweak, and whitening in numpy passes around an ECB call moves
every byte through memory several times. Page runs go to C as whole frames with one tweak per
frame; large runs are split across the host's cores (the C loop releases the GIL).
benchmarks/engine_throughput.py compares the result with `openssl speed`.

AES-256-XTS treats each aligned 16-byte block as its own data unit, with tweak value i = the
block's SPA (64-bit little-endian in the 16-byte IV, as OpenSSL's XTS takes it):
T = AES-256_K2(i), c = AES-256_K1(m ^ T) ^ T. AMD does not publish how its XTS tweak is derived
from the address; this choice keeps what matters: the same plaintext at another address gives
other ciphertext, and ciphertext moved to another address decrypts to garbage, but the tweak is
no longer linear, so the SEVurity-style tweak attacks do not apply. In C too (`_xex.XtsKey`):
per 4 KiB piece one ECB pass under K2 turns the addresses into tweaks, one under K1 does the
data, with the whitening in L1 (one EVP aes-256-xts call per block runs about 15x slower).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from itertools import pairwise

import numpy as np

from sevsim.errors import ConfigError
from sevsim.hw._xex import Key, XtsKey
from sevsim.hw.chips import TweakMode
from sevsim.hw.trng import Trng

PAGE = 4096
BLOCK = 16
_BLOCKS_PER_PAGE = PAGE // BLOCK
_ADDRESS_WIDTH = 64  # SPAs are 64-bit: tweak constants beyond bit 63 are never used
PARALLEL_PAGES = 1024  # runs of 4 MiB and more are shared out between the host's cores
_WORKERS = min(os.cpu_count() or 1, 8)


def _new_pool() -> ThreadPoolExecutor | None:
    if _WORKERS < 2:
        return None
    return ThreadPoolExecutor(_WORKERS, thread_name_prefix="sevsim-engine")


_POOL = _new_pool()


def _pool_for_forked_child() -> None:
    """A forked child (the attack matrix's workers) inherits the pool without its threads:
    work handed to it would wait forever, so the child gets a pool of its own."""
    global _POOL
    _POOL = _new_pool()


os.register_at_fork(after_in_child=_pool_for_forked_child)
_ZERO_TWEAK = np.zeros(2, dtype=np.uint64)
AES128_KEY_BYTES = 16  # AES-128 with the chip's SPA tweak (XE or XEX)
XTS256_KEY_BYTES = 64  # AES-256-XTS: K1 (data key) || K2 (tweak key)

Slot = Key | XtsKey


class SlotCipher(Enum):
    """What a loaded key slot does to memory, fixed by the key's length when it is loaded."""

    AES128_TWEAK = "aes-128"  # the chip's XE/XEX SPA tweak (TweakMode)
    AES256_XTS = "aes-256-xts"  # SNP policy MEM_AES_256_XTS, Genoa and later


class TweakFunction:
    """T(spa) = XOR of t_i over the set address bits i >= 4 of the block address.

    Evaluated a byte of address at a time: row 256 j + v of `_byte_table` is the XOR of the
    constants of the set bits of v placed at bits 8j..8j+7, so a tweak costs one table lookup
    per address byte instead of one pass per address bit.
    """

    def __init__(self, constants: np.ndarray) -> None:
        # constants[i] is t_i as two uint64 words; rows 0..3 are zero (sub-block bits).
        self.constants = constants
        self._byte_table = _byte_tables(constants).reshape(-1, 2)
        self._byte_rows = np.arange(0, self._byte_table.shape[0], 256)[:, None]  # byte j: 256 j
        offs = np.arange(_BLOCKS_PER_PAGE, dtype=np.uint64) << np.uint64(4)
        self.page_offsets = self.of(offs)  # (256, 2)

    @classmethod
    def weak(cls, seed: int, address_bits: int = 52) -> TweakFunction:
        """Zen 1: constants expanded from a 32-bit seed, so an attacker can search for them."""
        return cls(_expand(seed.to_bytes(4, "little"), address_bits))

    @classmethod
    def strong(cls, address_bits: int = 52, entropy: Trng | None = None) -> TweakFunction:
        """Zen 2+: 128 bits of fresh entropy per constant, per boot."""
        return cls(_expand((entropy or Trng()).random(32), address_bits))

    def of(self, addresses: np.ndarray) -> np.ndarray:
        """T of each address (bits 0..3 ignored): shape (n, 2).

        One gather for all bytes of all addresses and one XOR-reduce: a handful of numpy
        calls whatever the count, which keeps single-block accesses cheap.
        """
        nbytes = self._byte_rows.shape[0]
        octets = np.ascontiguousarray(addresses, dtype="<u8").view(np.uint8).reshape(-1, 8)
        rows = octets[:, :nbytes].T + self._byte_rows  # row of byte j of each address
        return np.bitwise_xor.reduce(np.take(self._byte_table, rows, axis=0), axis=0)

    def frames(self, frames: np.ndarray) -> np.ndarray:
        """The page part of the tweak for each frame number: shape (n, 2)."""
        return self.of(frames.astype(np.uint64) << np.uint64(12))

    def frame_range(self, first: int, count: int) -> np.ndarray:
        """Page tweaks of consecutive frames, by linearity: inside an aligned block of 2^k
        frames, T(base + i) = T(base) ^ T(i), and T(i) for all i < 2^k doubles up one
        constant at a time. With 2^k >= count the range touches at most two such blocks."""
        k = count.bit_length()
        low = np.zeros((1, 2), dtype=np.uint64)
        for bit in range(12, 12 + k):
            constant = self.constants[bit] if bit < self.constants.shape[0] else _ZERO_TWEAK
            low = np.concatenate((low, low ^ constant))
        size, stop = 1 << k, first + count
        bases = np.arange(first >> k << k, stop, size, dtype=np.uint64)
        parts = [low[max(first - b, 0):min(stop - b, size)] ^ t
                 for b, t in zip(bases.tolist(), self.frames(bases), strict=True)]
        return np.concatenate(parts)

    def blocks(self, spa: int, nblocks: int) -> np.ndarray:
        """Tweaks of `nblocks` consecutive blocks from a 16-byte aligned SPA: shape (n, 2)."""
        addrs = np.uint64(spa) + (np.arange(nblocks, dtype=np.uint64) << np.uint64(4))
        return self.of(addrs)

    def __call__(self, spa: int) -> bytes:
        """The 16-byte tweak of the block that holds `spa`."""
        return self.blocks(spa & ~0xF, 1).tobytes()


def _byte_tables(constants: np.ndarray) -> np.ndarray:
    """(nbytes, 256, 2): entry [j, v] is the XOR of t_{8j+i} over the set bits i of v."""
    used = min(constants.shape[0], _ADDRESS_WIDTH)
    per_bit = np.zeros((-(-used // 8) * 8, 2), dtype=np.uint64)
    per_bit[4:used] = constants[4:used]  # bits 0..3 address bytes inside a block
    per_bit = per_bit.reshape(-1, 8, 2)
    tables = np.zeros((per_bit.shape[0], 256, 2), dtype=np.uint64)
    for i in range(8):  # entries with bit i set = entries below 2**i, plus t_i
        tables[:, 1 << i:2 << i] = tables[:, :1 << i] ^ per_bit[:, i, None, :]
    return tables


def _expand(seed: bytes, address_bits: int) -> np.ndarray:
    material = hashlib.shake_256(b"sevsim tweak constants" + seed).digest(16 * address_bits)
    constants = np.frombuffer(material, dtype=np.uint64).reshape(address_bits, 2).copy()
    constants[:4] = 0
    return constants


class EncryptionEngine:
    """AES-128 with the SPA tweak, or AES-256-XTS, per ASID. Keys go in through `load_key` and
    never come out: each slot is a `_xex.Key` or `_xex.XtsKey`, which keeps the key in C memory
    and wipes it when dropped."""

    def __init__(self, mode: TweakMode, tweak: TweakFunction | None = None,
                 entropy: Trng | None = None) -> None:
        """`entropy` draws the tweak constants at boot (unless `tweak` is given)."""
        self.mode = mode
        if tweak is None:
            entropy = entropy or Trng()
            tweak = (TweakFunction.weak(int.from_bytes(entropy.random(4), "little"))
                     if mode is TweakMode.XE_WEAK else TweakFunction.strong(entropy=entropy))
        self.tweak = tweak
        self._slots: dict[int, Slot] = {}

    def load_key(self, asid: int, key: bytes) -> None:
        """Install `key` in the ASID's slot: 16 bytes for AES-128 with the chip's SPA tweak,
        64 bytes (K1 || K2, distinct halves) for AES-256-XTS. A bad key leaves the slot as
        it was (ConfigError)."""
        size = len(key)
        if size == AES128_KEY_BYTES:
            slot: Slot = Key(key)
        elif size == XTS256_KEY_BYTES:
            if key[:32] == key[32:]:
                raise ConfigError("AES-256-XTS key halves K1 and K2 must differ (IEEE 1619)")
            slot = XtsKey(key)
        else:
            raise ConfigError(f"a memory encryption key is {AES128_KEY_BYTES} bytes (AES-128, "
                              f"SPA tweak) or {XTS256_KEY_BYTES} bytes (AES-256-XTS, K1 || K2), "
                              f"not {size}")
        self._slots[asid] = slot

    def unload_key(self, asid: int) -> None:
        """Empty the ASID's slot, wiping the key; nothing happens if none is loaded."""
        self._slots.pop(asid, None)

    def has_key(self, asid: int) -> bool:
        """Whether the ASID's slot holds a key."""
        return asid in self._slots

    def cipher(self, asid: int) -> SlotCipher:
        """The cipher of the ASID's loaded key (KeyError if none is loaded)."""
        return (SlotCipher.AES256_XTS if isinstance(self._slot(asid), XtsKey)
                else SlotCipher.AES128_TWEAK)

    def encrypt_pages(self, asid: int, first_frame: int, src: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
        """Ciphertext of whole consecutive frames (uint8, length a multiple of 4096)."""
        return self._pages(asid, first_frame, src, out, encrypt=True)

    def decrypt_pages(self, asid: int, first_frame: int, src: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
        """Plaintext of whole consecutive frames of DRAM ciphertext."""
        return self._pages(asid, first_frame, src, out, encrypt=False)

    def encrypt_blocks(self, asid: int, spa: int, src: np.ndarray) -> np.ndarray:
        """Ciphertext of whole 16-byte blocks starting at a 16-byte aligned SPA."""
        return self._blocks(asid, spa, src, encrypt=True)

    def decrypt_blocks(self, asid: int, spa: int, src: np.ndarray) -> np.ndarray:
        """Plaintext of whole 16-byte blocks of DRAM ciphertext at a 16-byte aligned SPA."""
        return self._blocks(asid, spa, src, encrypt=False)

    def _slot(self, asid: int) -> Slot:
        try:
            return self._slots[asid]
        except KeyError:
            raise KeyError(f"no key loaded for ASID {asid}") from None

    def _pages(self, asid: int, first_frame: int, src: np.ndarray, out: np.ndarray | None,
               encrypt: bool) -> np.ndarray:
        slot = self._slot(asid)
        if src.nbytes % PAGE:
            raise ValueError("page runs must be whole 4 KiB frames")
        if out is None:
            out = np.empty(src.nbytes, dtype=np.uint8)
        self._run(slot, first_frame * PAGE, src, out, encrypt)
        return out

    def _blocks(self, asid: int, spa: int, src: np.ndarray, encrypt: bool) -> np.ndarray:
        slot = self._slot(asid)
        if spa % BLOCK or src.nbytes % BLOCK:
            raise ValueError("block runs must be 16-byte aligned")
        out = np.empty(src.nbytes, dtype=np.uint8)
        self._run(slot, spa, src, out, encrypt)
        return out

    def _run(self, slot: Slot, spa: int, src: np.ndarray, dst: np.ndarray, encrypt: bool) -> None:
        """Transform `src` (plaintext or DRAM bytes of [spa, spa + n)) into `dst` (may be src).

        Whole frames go to C with the in-page offset tweaks as the unit table and one frame
        tweak each; a partial first or last frame goes block by block, each block's full tweak
        as its base and a zero unit table.
        """
        n = src.nbytes
        if isinstance(slot, XtsKey):
            self._run_xts(slot, spa, src, dst, encrypt)
            return
        xex = self.mode is TweakMode.XEX_STRONG
        pre, post = encrypt or xex, xex or not encrypt
        head = min(n, -spa % PAGE)
        pages = (n - head) // PAGE
        body_end = head + pages * PAGE
        for lo, hi in ((0, head), (body_end, n)):
            if hi > lo:
                slot.transform(encrypt, pre, post, src[lo:hi], dst[lo:hi], _ZERO_TWEAK,
                               self.tweak.blocks(spa + lo, (hi - lo) // BLOCK))
        if not pages:
            return
        frames = self.tweak.frame_range((spa + head) // PAGE, pages)
        unit = self.tweak.page_offsets
        if _POOL is None or pages < PARALLEL_PAGES:
            slot.transform(encrypt, pre, post, src[head:body_end], dst[head:body_end], unit,
                           frames)
            return
        cuts = np.linspace(0, pages, _WORKERS + 1, dtype=np.int64).tolist()
        jobs = [_POOL.submit(slot.transform, encrypt, pre, post,
                             src[head + a * PAGE:head + b * PAGE],
                             dst[head + a * PAGE:head + b * PAGE], unit, frames[a:b])
                for a, b in pairwise(cuts)]
        for job in jobs:
            job.result()

    @staticmethod
    def _run_xts(slot: XtsKey, spa: int, src: np.ndarray, dst: np.ndarray,
                 encrypt: bool) -> None:
        """XTS needs no tweak tables: C derives each block's tweak from its SPA. Large runs are
        cut at page boundaries and shared out between the cores like the AES-128 path."""
        pages = src.nbytes // PAGE
        if _POOL is None or pages < PARALLEL_PAGES:
            slot.transform(encrypt, src, dst, spa)
            return
        cuts = [a * PAGE for a in np.linspace(0, pages, _WORKERS + 1, dtype=np.int64).tolist()]
        cuts[-1] = src.nbytes
        jobs = [_POOL.submit(slot.transform, encrypt, src[a:b], dst[a:b], spa + a)
                for a, b in pairwise(cuts)]
        for job in jobs:
            job.result()
