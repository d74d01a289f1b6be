"""The memory encryption engine: per-ASID AES key slots and the SPA tweak, vectorised.

Every aligned 16-byte block is encrypted on its own under the key of the ASID that owns it,
tweaked by its host physical address: XE (c = E(m ^ T)) on Zen 1, XEX (c = E(m ^ T) ^ T)
from Zen 2 on. T is linear, an XOR of one 128-bit constant per address bit (bits 4 and up),
which is the property SEVurity-style attacks exploit. AMD does not publish the constants;
sevsim draws them per boot (Zen 1 from a 32-bit seed, as weak as the real ones).
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
_CHUNK_PAGES = 64  # 256 KiB: the working set of one pass stays in L2


class _KeySlot:
    """One loaded key: the AES contexts only; the raw key is never kept outside the cipher."""

    __slots__ = ("decryptor", "encryptor")

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(algorithms.AES(key), modes.ECB())
        self.encryptor = cipher.encryptor()
        self.decryptor = cipher.decryptor()


class TweakFunction:
    """T(spa) = XOR of t_i over the set address bits i >= 4 of the block address."""

    def __init__(self, constants: np.ndarray) -> None:
        # constants[i] is t_i as two uint64 words; rows 0..3 are zero (sub-block bits).
        self.constants = constants
        offs = np.arange(_BLOCKS_PER_PAGE, dtype=np.uint64) << np.uint64(4)
        self._page_offsets = self._combine(offs, 4, 12)  # (256, 2)

    @classmethod
    def weak(cls, seed: int, address_bits: int = 52) -> TweakFunction:
        """Zen 1: constants expanded from a 32-bit seed, so an attacker can search for them."""
        return cls(_expand(seed.to_bytes(4, "little"), address_bits))

    @classmethod
    def strong(cls, address_bits: int = 52) -> TweakFunction:
        """Zen 2+: 128 bits of fresh entropy per constant, per boot."""
        return cls(_expand(os.urandom(32), address_bits))

    def _combine(self, addresses: np.ndarray, low: int, high: int) -> np.ndarray:
        out = np.zeros((addresses.shape[0], 2), dtype=np.uint64)
        for bit in range(low, min(high, self.constants.shape[0])):
            sel = ((addresses >> np.uint64(bit)) & np.uint64(1)).astype(bool)
            out[sel] ^= self.constants[bit]
        return out

    def frames(self, frames: np.ndarray) -> np.ndarray:
        """The page part of the tweak for each frame number: shape (n, 2)."""
        return self._combine(frames.astype(np.uint64) << np.uint64(12), 12, 64)

    def pages(self, first_frame: int, count: int) -> np.ndarray:
        """Tweaks of every block of `count` consecutive frames: shape (count, 256, 2)."""
        frames = np.arange(first_frame, first_frame + count, dtype=np.uint64)
        return self._page_offsets[None, :, :] ^ self.frames(frames)[:, None, :]

    def blocks(self, spa: int, nblocks: int) -> np.ndarray:
        """Tweaks of `nblocks` consecutive blocks from a 16-byte aligned SPA: shape (n, 2)."""
        addrs = np.uint64(spa) + (np.arange(nblocks, dtype=np.uint64) << np.uint64(4))
        return self._combine(addrs, 4, 64)

    def __call__(self, spa: int) -> bytes:
        return self.blocks(spa & ~0xF, 1).tobytes()


def _expand(seed: bytes, address_bits: int) -> np.ndarray:
    material = hashlib.shake_256(b"sevsim tweak constants" + seed).digest(16 * address_bits)
    constants = np.frombuffer(material, dtype=np.uint64).reshape(address_bits, 2).copy()
    constants[:4] = 0
    return constants


class EncryptionEngine:
    """AES-128 per ASID with the SPA tweak. Keys go in through `load_key` and never come out."""

    def __init__(self, mode: TweakMode, tweak: TweakFunction | None = None) -> None:
        self.mode = mode
        if tweak is None:
            tweak = (TweakFunction.weak(int.from_bytes(os.urandom(4), "little"))
                     if mode is TweakMode.XE_WEAK else TweakFunction.strong())
        self.tweak = tweak
        self._slots: dict[int, _KeySlot] = {}
        self._scratch_in = np.empty(_CHUNK_PAGES * PAGE, dtype=np.uint8)
        self._scratch_out = np.empty(_CHUNK_PAGES * PAGE + BLOCK, dtype=np.uint8)

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
        npages = src.nbytes // PAGE
        for start in range(0, npages, _CHUNK_PAGES):
            count = min(_CHUNK_PAGES, npages - start)
            nbytes = count * PAGE
            tweak = self.tweak.pages(first_frame + start, count).reshape(-1)
            lo, hi = start * PAGE, start * PAGE + nbytes
            self._transform(slot, src[lo:hi], out[lo:hi], tweak, encrypt)
        return out

    def _blocks(self, asid: int, spa: int, src: np.ndarray, encrypt: bool) -> np.ndarray:
        slot = self._slot(asid)
        if spa % BLOCK or src.nbytes % BLOCK:
            raise ValueError("block runs must be 16-byte aligned")
        out = np.empty(src.nbytes, dtype=np.uint8)
        for start in range(0, src.nbytes, _CHUNK_PAGES * PAGE):
            part = src[start:start + _CHUNK_PAGES * PAGE]
            tweak = self.tweak.blocks(spa + start, part.nbytes // BLOCK).reshape(-1)
            self._transform(slot, part, out[start:start + part.nbytes], tweak, encrypt)
        return out

    def _transform(self, slot: _KeySlot, src: np.ndarray, dst: np.ndarray, tweak: np.ndarray,
                   encrypt: bool) -> None:
        """One cache-sized chunk: whiten, AES-ECB, whiten (XEX) or the XE variant."""
        n = src.nbytes
        staged = self._scratch_in[:n]
        result = self._scratch_out[:n + BLOCK]
        words = n // 8
        xex = self.mode is TweakMode.XEX_STRONG
        src64 = src.view(np.uint64)
        dst64 = dst.view(np.uint64)
        if encrypt or xex:
            np.bitwise_xor(src64, tweak[:words], out=staged.view(np.uint64))
        else:
            staged[:] = src
        ctx = slot.encryptor if encrypt else slot.decryptor
        ctx.update_into(memoryview(staged), memoryview(result))
        if xex or not encrypt:
            np.bitwise_xor(result[:n].view(np.uint64), tweak[:words], out=dst64)
        else:
            dst[:] = result[:n]
