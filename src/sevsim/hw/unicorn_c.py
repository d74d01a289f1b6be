"""Unicorn's C API, called directly where its Python binding cannot serve sevsim.

The binding registers only Python callables as hooks (a trip through Python per event), and
reads registers one at a time at several microseconds each. sevsim's time-slice hooks are C
functions (`sevsim.hw._quantum`), and a world switch under SEV-ES reads some fifty registers;
both go through `uclib` here. The one place that touches the binding's engine handle.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from unicorn import Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

_SLOT = 16  # bytes per register in a batch: the widest read here is an XMM register


def _handle(uc: Uc) -> object:
    """The engine's C handle: the binding keeps it in `_uch` and has no public accessor."""
    return uc._uch


def emu_stop_address() -> int:
    """Where uc_emu_stop lives, for C code that stops an engine."""
    return ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value or 0


def add_hook(uc: Uc, kind: int, callback: int, data: int) -> int:
    """uc_hook_add with a C callback and user data (addresses), over every address."""
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(_handle(uc), ctypes.byref(handle), kind,
                               ctypes.c_void_p(callback), ctypes.c_void_p(data), 1, 0)
    if status:
        raise UcError(status)
    return handle.value


def delete_hook(uc: Uc, hook: int) -> None:
    """uc_hook_del: remove a hook `add_hook` installed."""
    status = uclib.uc_hook_del(_handle(uc), hook)
    if status:
        raise UcError(status)


class RegisterReader:
    """Reads a fixed list of registers in one uc_reg_read_batch call."""

    def __init__(self, ids: Sequence[int]) -> None:
        count = len(ids)
        self._count = count
        self._ids = (ctypes.c_int * count)(*ids)
        self._values = ctypes.create_string_buffer(count * _SLOT)
        base = ctypes.addressof(self._values)
        self._slots = (ctypes.c_void_p * count)(*(base + _SLOT * i for i in range(count)))

    def read(self, uc: Uc) -> list[int]:
        """Each register's value (unsigned, as wide as the register)."""
        ctypes.memset(self._values, 0, self._count * _SLOT)
        status = uclib.uc_reg_read_batch(_handle(uc), self._ids, self._slots, self._count)
        if status:
            raise UcError(status)
        raw = self._values.raw
        return [int.from_bytes(raw[i:i + _SLOT], "little")
                for i in range(0, self._count * _SLOT, _SLOT)]
