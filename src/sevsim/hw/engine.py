"""The memory encryption engine: per-ASID AES key slots and the SPA tweak, vectorised.

Every aligned 16-byte block is encrypted on its own under the key of the ASID that owns it,
tweaked by its host physical address: XE (c = E(m ^ T)) on Zen 1, XEX (c = E(m ^ T) ^ T)
from Zen 2 on. T is linear, an XOR of one 128-bit constant per address bit (bits 4 and up),
which is the property SEVurity-style attacks exploit. AMD does not publish the constants;
sevsim draws them per boot (Zen 1 from a 32-bit seed, as weak as the real ones).

Speed: `cryptography` holds the GIL and there is no XEX mode with this tweak in OpenSSL, so a
run costs one AES-ECB call plus numpy XOR passes per chunk; what is left to optimise is how many
passes touch memory and where the data sits when they do (see `EncryptionEngine._run`).
benchmarks/engine_throughput.py compares the result with `openssl speed`.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevsim.hw.chips import TweakMode

PAGE = 4096
BLOCK = 16
_BLOCKS_PER_PAGE = PAGE // BLOCK
_ADDRESS_WIDTH = 64  # SPAs are 64-bit: tweak constants beyond bit 63 are never used
# Bytes per pass of the run loop, a power of two. The chunk's working set (cached tweak table,
# tweaks, whitened input, source and destination slices) stays in L2, and ~5 calls per chunk
# keep Python overhead small. Measured on a 256 MiB dump: 32 KiB 2.6, 64 KiB 3.1, 128 KiB 3.5,
# 256 KiB 3.2, 1 MiB 2.3 GB/s.
_CHUNK = 128 * 1024
_BLOCK16 = np.dtype("V16")  # one 16-byte tweak as an opaque value, for fills


class _KeySlot:
    """One loaded key: the AES contexts only; the raw key is never kept outside the cipher."""

    __slots__ = ("decryptor", "encryptor")

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(algorithms.AES(key), modes.ECB())
        self.encryptor = cipher.encryptor()
        self.decryptor = cipher.decryptor()


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
        self._page_offsets = self.of(offs)  # (256, 2)

    @classmethod
    def weak(cls, seed: int, address_bits: int = 52) -> TweakFunction:
        """Zen 1: constants expanded from a 32-bit seed, so an attacker can search for them."""
        return cls(_expand(seed.to_bytes(4, "little"), address_bits))

    @classmethod
    def strong(cls, address_bits: int = 52) -> TweakFunction:
        """Zen 2+: 128 bits of fresh entropy per constant, per boot."""
        return cls(_expand(os.urandom(32), address_bits))

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

    def pages(self, first_frame: int, count: int) -> np.ndarray:
        """Tweaks of every block of `count` consecutive frames: shape (count, 256, 2)."""
        frames = np.arange(first_frame, first_frame + count, dtype=np.uint64)
        return self._page_offsets[None, :, :] ^ self.frames(frames)[:, None, :]

    def blocks(self, spa: int, nblocks: int) -> np.ndarray:
        """Tweaks of `nblocks` consecutive blocks from a 16-byte aligned SPA: shape (n, 2)."""
        addrs = np.uint64(spa) + (np.arange(nblocks, dtype=np.uint64) << np.uint64(4))
        return self.of(addrs)

    def __call__(self, spa: int) -> bytes:
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
    """AES-128 per ASID with the SPA tweak. Keys go in through `load_key` and never come out.

    Runs are processed in `_CHUNK`-aligned chunks of SPA space. Because T is linear and a chunk
    base B has no bits in common with an offset inside the chunk, T(B + off) = T(B) ^ T(off):
    each chunk's tweaks are one cached table of T(off) XOR one 16-byte constant, instead of a
    table built from the address bits for every chunk.
    """

    def __init__(self, mode: TweakMode, tweak: TweakFunction | None = None) -> None:
        self.mode = mode
        if tweak is None:
            tweak = (TweakFunction.weak(int.from_bytes(os.urandom(4), "little"))
                     if mode is TweakMode.XE_WEAK else TweakFunction.strong())
        self.tweak = tweak
        self._slots: dict[int, _KeySlot] = {}
        # Scratch reused by every chunk, so no pass allocates (or page-faults) memory.
        self._tweaks = np.empty(_CHUNK // 8, dtype=np.uint64)
        self._fill = np.empty(_CHUNK // 8, dtype=np.uint64)
        self._staged = np.empty(_CHUNK + BLOCK, dtype=np.uint8)  # AES wants len(in) + 15

    @property
    def tweak(self) -> TweakFunction:
        return self._tweak

    @tweak.setter
    def tweak(self, tweak: TweakFunction) -> None:
        self._tweak = tweak
        # T(off) for every block offset inside a chunk, flat uint64: the cached part.
        self._local = tweak.blocks(0, _CHUNK // BLOCK).reshape(-1)
        # T(_CHUNK) repeated: an odd chunk's tweaks are the even chunk before it XOR this.
        self._carry = np.empty_like(self._local)
        np.copyto(self._carry.view(_BLOCK16), tweak.blocks(_CHUNK, 1).view(_BLOCK16)[0])

    def load_key(self, asid: int, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("the memory encryption key is AES-128")
        self._slots[asid] = _KeySlot(key)

    def unload_key(self, asid: int) -> None:
        self._slots.pop(asid, None)

    def has_key(self, asid: int) -> bool:
        return asid in self._slots

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
        return self._blocks(asid, spa, src, encrypt=False)

    def _slot(self, asid: int) -> _KeySlot:
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

    def _run(self, slot: _KeySlot, spa: int, src: np.ndarray, dst: np.ndarray,
             encrypt: bool) -> None:
        """Transform `src` (DRAM bytes or plaintext of [spa, spa + n)) into `dst`.

        Per chunk:
        1. tweaks = cached T(off) ^ T(base), built in L2-resident scratch (the 16-byte T(base)
           is filled as a V16 value, because numpy broadcasts over a length-2 axis ~10x slower
           than it streams); an odd chunk right after a whole one just XORs in T(_CHUNK);
        2. whiten the input into scratch (XE decryption skips this: AES reads `src` directly);
        3. AES-ECB straight into `dst`. For big runs `dst` is DRAM-sized memory; writing it
           once from AES and then whitening it in place while it is still in cache beat
           AES into scratch plus a whitening pass out to `dst` (that costs a DRAM round trip);
        4. whiten `dst` in place (XEX, and XE decryption).
        AES gets 16 spare bytes of `dst` (its output-size rule) but writes exactly the chunk,
        which the assert checks. `dst` may be `src` (in-place conversion): each chunk is read
        before any of it is written.
        """
        n = src.nbytes
        if n == 0:
            return
        xex = self.mode is TweakMode.XEX_STRONG
        whiten_in, whiten_out = encrypt or xex, xex or not encrypt
        aes = slot.encryptor if encrypt else slot.decryptor
        src_bytes, dst_bytes = memoryview(src), memoryview(dst)
        src64, dst64 = src.view(np.uint64), dst.view(np.uint64)
        staged, staged64 = memoryview(self._staged), self._staged.view(np.uint64)
        first_base = spa - spa % _CHUNK
        bases = np.arange(first_base, spa + n, _CHUNK, dtype=np.uint64)
        base_tweaks = self._tweak.of(bases).view(_BLOCK16)  # (chunks, 1): one T(base) each
        follows_full = False  # self._tweaks holds a whole chunk's tweaks from the last pass
        for i, base in enumerate(range(first_base, spa + n, _CHUNK)):
            lo, hi = max(spa, base) - spa, min(spa + n, base + _CHUNK) - spa  # bytes in src
            w_lo, w_hi, words = lo // 8, hi // 8, (hi - lo) // 8
            off = (spa + lo - base) // 8
            tweaks = self._tweaks[:words]
            if follows_full and (base // _CHUNK) % 2:
                # base = previous base + _CHUNK flips only the chunk-size bit: one XOR pass
                np.bitwise_xor(tweaks, self._carry[:words], out=tweaks)
            else:
                fill = self._fill[:words]
                np.copyto(fill.view(_BLOCK16), base_tweaks[i])
                np.bitwise_xor(self._local[off:off + words], fill, out=tweaks)
            follows_full = words == _CHUNK // 8
            if whiten_in:
                np.bitwise_xor(src64[w_lo:w_hi], tweaks, out=staged64[:words])
                aes_in = staged[:hi - lo]
            else:
                aes_in = src_bytes[lo:hi]
            if hi + BLOCK <= n:  # room after the chunk for AES's output-size rule
                written = aes.update_into(aes_in, dst_bytes[lo:hi + BLOCK])
                if whiten_out:
                    np.bitwise_xor(dst64[w_lo:w_hi], tweaks, out=dst64[w_lo:w_hi])
            else:  # the run's last chunk: AES into scratch, then out to dst
                written = aes.update_into(aes_in, staged)
                if whiten_out:
                    np.bitwise_xor(staged64[:words], tweaks, out=dst64[w_lo:w_hi])
                else:
                    dst[lo:hi] = self._staged[:hi - lo]
            assert written == hi - lo  # ECB without padding: no block held back
