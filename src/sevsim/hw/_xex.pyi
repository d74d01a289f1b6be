"""Type stub of the C extension `sevsim.hw._xex` (see _xex.c)."""

import numpy as np

Buffer = np.ndarray | bytes | bytearray | memoryview

class Key:
    """An AES-128 key slot; the key stays in C memory."""

    def __init__(self, key: bytes, /) -> None: ...
    def transform(self, encrypt: bool, pre: bool, post: bool, src: Buffer, dst: Buffer,
                  unit_tweaks: Buffer, base_tweaks: Buffer, /) -> None: ...

class XtsKey:
    """An AES-256-XTS key slot (K1 || K2, 64 bytes); the key stays in C memory."""

    def __init__(self, key: bytes, /) -> None: ...
    def transform(self, encrypt: bool, src: Buffer, dst: Buffer, spa: int, /) -> None: ...
