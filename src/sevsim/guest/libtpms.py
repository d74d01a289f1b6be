"""libtpms (the TPM 2.0 engine swtpm is built on) through ctypes, for a TPM that runs inside
the VM's trust domain rather than in a host process.

libtpms keeps one TPM per process: one set of globals, one set of NVRAM callbacks. Each
`TpmEngine` therefore owns only its state, and the module lends the library to one engine at
a time under a process-wide lock. The store always holds the engine's whole state: libtpms
writes its permanent state through the NVRAM store callback whenever it changes, and after
every command the engine saves the volatile state (TPMLIB_VolatileAll_Store: PCRs, loaded
objects, sessions) there too. Handing the library to another engine is then only
TPMLIB_Terminate, then the other's state brought in (permanent and volatile state through the
NVRAM load callback) and TPMLIB_MainInit. The callbacks reach only the active engine's
store, so no engine's state lands in another's; consecutive commands from one engine swap
nothing; and a new engine over the same store (a guest kernel after a migration) resumes
exactly where the last command left the TPM.

The library is found as libtpms.so.0 (Debian's libtpms0); missing, or a TPMLIB_* call failing,
is a LibtpmsError naming the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any, Protocol

from sevsim.abi import tpm2
from sevsim.errors import LibtpmsError, SevsimError

TPMLIB_TPM_VERSION_2 = 1  # enum TPMLIB_TPMVersion
TPM_SUCCESS = 0
TPM_FAIL = 0x09
TPM_RETRY = 0x800  # from the load callback: no such blob yet (a TPM to manufacture)
PERMANENT = "permall"  # TPM_PERMANENT_ALL_NAME: seeds, NV indices, hierarchies
VOLATILE = "volatilestate"  # TPM_VOLATILESTATE_NAME: loaded objects, sessions, PCRs
_RETRIES = 10


class NvStore(Protocol):
    """Where one TPM's named state blobs live (for the SNP-bound vTPM: private guest memory)."""

    def load(self, name: str) -> bytes | None:
        """The blob stored under `name`, or None if there is none."""

    def store(self, name: str, data: bytes) -> None:
        """Keep `data` under `name`, replacing what was there."""

    def delete(self, name: str) -> None:
        """Forget `name` (nothing happens if it is absent)."""


_Init = ctypes.CFUNCTYPE(ctypes.c_uint32)
_LoadData = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p),
                             ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32, ctypes.c_char_p)
_StoreData = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32,
                              ctypes.c_uint32, ctypes.c_char_p)
_DeleteName = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p,
                               ctypes.c_ubyte)
_GetLocality = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
                                ctypes.c_uint32)
_GetPresence = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.POINTER(ctypes.c_ubyte),
                                ctypes.c_uint32)


class _Callbacks(ctypes.Structure):
    """struct libtpms_callbacks (libtpms/tpm_library.h)."""

    _fields_ = [("sizeOfStruct", ctypes.c_int), ("tpm_nvram_init", _Init),
                ("tpm_nvram_loaddata", _LoadData), ("tpm_nvram_storedata", _StoreData),
                ("tpm_nvram_deletename", _DeleteName), ("tpm_io_init", _Init),
                ("tpm_io_getlocality", _GetLocality),
                ("tpm_io_getphysicalpresence", _GetPresence)]


class _Library:
    """The loaded libtpms with its prototypes and the one callback table it is given."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("tpms") or "libtpms.so.0"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise LibtpmsError("dlopen", 0, f"{e} (Debian: apt-get install "
                                            "libtpms0)") from None
        self.libc = ctypes.CDLL(None)
        self.libc.malloc.restype = ctypes.c_void_p
        self.libc.malloc.argtypes = [ctypes.c_size_t]
        self.libc.free.argtypes = [ctypes.c_void_p]
        lib = self.lib
        u32, ptr = ctypes.c_uint32, ctypes.POINTER
        lib.TPMLIB_ChooseTPMVersion.argtypes = [ctypes.c_int]
        lib.TPMLIB_ChooseTPMVersion.restype = u32
        lib.TPMLIB_RegisterCallbacks.argtypes = [ptr(_Callbacks)]
        lib.TPMLIB_RegisterCallbacks.restype = u32
        lib.TPMLIB_MainInit.argtypes = []
        lib.TPMLIB_MainInit.restype = u32
        lib.TPMLIB_Terminate.argtypes = []
        lib.TPMLIB_Terminate.restype = None
        lib.TPMLIB_Process.argtypes = [ptr(ctypes.c_void_p), ptr(u32), ptr(u32),
                                       ctypes.c_char_p, u32]
        lib.TPMLIB_Process.restype = u32
        lib.TPMLIB_VolatileAll_Store.argtypes = [ptr(ctypes.c_void_p), ptr(u32)]
        lib.TPMLIB_VolatileAll_Store.restype = u32
        self.active: TpmEngine | None = None
        # kept as an attribute: C holds pointers into it for the life of the process
        self.table = _Callbacks(ctypes.sizeof(_Callbacks), _Init(lambda: TPM_SUCCESS),
                                _LoadData(self._load), _StoreData(self._store),
                                _DeleteName(self._delete), _Init(lambda: TPM_SUCCESS),
                                _GetLocality(self._locality), _GetPresence(self._presence))
        self.check("TPMLIB_ChooseTPMVersion", lib.TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2))
        self.check("TPMLIB_RegisterCallbacks", lib.TPMLIB_RegisterCallbacks(
            ctypes.byref(self.table)))

    @staticmethod
    def check(call: str, result: int) -> None:
        if result != TPM_SUCCESS:
            raise LibtpmsError(call, result, "failed")

    # The callbacks run inside libtpms calls, under the lock, for the active engine (pointer
    # arguments are ctypes pointers, typed Any). An exception must not cross into C: it
    # becomes TPM_FAIL, which libtpms reports.
    def _load(self, data: Any, length: Any, _tpm: int, name: bytes) -> int:
        try:
            blob = self.active.store.load(name.decode()) if self.active else None
        except Exception:  # any: an exception must not unwind through C
            return TPM_FAIL
        if blob is None:
            return TPM_RETRY
        buf = self.libc.malloc(max(len(blob), 1))  # libtpms frees it
        if not buf:
            return TPM_FAIL
        ctypes.memmove(buf, blob, len(blob))
        data[0] = buf
        length[0] = len(blob)
        return TPM_SUCCESS

    def _store(self, data: int, length: int, _tpm: int, name: bytes) -> int:
        if self.active is None:
            return TPM_FAIL
        try:
            self.active.store.store(name.decode(), ctypes.string_at(data, length))
        except Exception:  # any: an exception must not unwind through C
            return TPM_FAIL
        return TPM_SUCCESS

    def _delete(self, _tpm: int, name: bytes, _must_exist: int) -> int:
        if self.active is None:
            return TPM_FAIL
        try:
            self.active.store.delete(name.decode())
        except Exception:  # any: an exception must not unwind through C
            return TPM_FAIL
        return TPM_SUCCESS

    @staticmethod
    def _locality(locality: Any, _tpm: int) -> int:
        locality[0] = 0
        return TPM_SUCCESS

    @staticmethod
    def _presence(present: Any, _tpm: int) -> int:
        present[0] = 0
        return TPM_SUCCESS

    def save(self, engine: TpmEngine) -> None:
        """Write the active engine's volatile state into its store. If that fails, the
        engine is lost for good rather than later resuming from an older volatile state (a
        rollback of its PCRs), and the library is released."""
        buf, size = ctypes.c_void_p(), ctypes.c_uint32()
        try:
            self.check("TPMLIB_VolatileAll_Store", self.lib.TPMLIB_VolatileAll_Store(
                ctypes.byref(buf), ctypes.byref(size)))
            engine.store.store(VOLATILE, ctypes.string_at(buf, size.value))
        except SevsimError as e:
            engine.lost = f"its volatile state could not be saved: {e}"
            self.release()
        finally:
            self.libc.free(buf)

    def release(self) -> None:
        """Terminate the active engine's TPM (its state is in its store already)."""
        if self.active is not None:
            self.active = None
            self.lib.TPMLIB_Terminate()

    def resume(self, engine: TpmEngine) -> bool:
        """Bring `engine`'s state into the library; True if it resumed a running TPM (its
        volatile state was there), False for one that needs TPM2_Startup."""
        resumed = engine.store.load(VOLATILE) is not None
        self.check("TPMLIB_ChooseTPMVersion", self.lib.TPMLIB_ChooseTPMVersion(
            TPMLIB_TPM_VERSION_2))
        self.active = engine
        result = self.lib.TPMLIB_MainInit()
        if result != TPM_SUCCESS:
            self.active = None
            self.lib.TPMLIB_Terminate()
            raise LibtpmsError("TPMLIB_MainInit", result, "the TPM state did not load")
        return resumed

    def process(self, command: bytes) -> bytes:
        buf, size, capacity = ctypes.c_void_p(), ctypes.c_uint32(), ctypes.c_uint32()
        try:
            self.check("TPMLIB_Process", self.lib.TPMLIB_Process(
                ctypes.byref(buf), ctypes.byref(size), ctypes.byref(capacity), command,
                len(command)))
            return ctypes.string_at(buf, size.value)
        finally:
            self.libc.free(buf)


_LOCK = threading.Lock()
_LIBRARY: _Library | None = None


def _library() -> _Library:
    global _LIBRARY  # the one libtpms of this process
    if _LIBRARY is None:
        _LIBRARY = _Library()
    return _LIBRARY


def _is_startup(command: bytes) -> bool:
    return command[6:10] == int(tpm2.Cc.Startup).to_bytes(4, "big")


class TpmEngine:
    """One TPM 2.0 whose whole state lives in `store`; `execute` runs a command on it. The
    first command of a TPM that has no volatile state yet is preceded by TPM2_Startup(CLEAR)
    unless it is a TPM2_Startup itself, as measured boot's first command is (a TPM without
    permanent state is manufactured first, with fresh seeds)."""

    def __init__(self, store: NvStore) -> None:
        self.store = store
        self.lost = ""  # why this TPM may not run again (its state could not be saved)
        with _LOCK:
            _library()  # a missing libtpms fails here, not at the first command

    def transmit(self, command: bytes) -> bytes:
        """One command's whole response."""
        with _LOCK:
            lib = _library()
            self._check_lost()
            if lib.active is not self:
                lib.release()
                if not lib.resume(self) and not _is_startup(command):
                    try:
                        tpm2.parse_startup_response(lib.process(tpm2.startup_command()))
                    except SevsimError:
                        lib.release()  # the next command starts it again, from its store
                        raise
            response = lib.process(command)
            lib.save(self)
            self._check_lost()
            return response

    def execute(self, command: bytes) -> bytes:
        """`transmit`, sent again while the TPM answers a retry warning."""
        for _ in range(_RETRIES):
            response = self.transmit(command)
            if tpm2.response_code(response) not in tpm2.RETRY_CODES:
                break
        return response

    def _check_lost(self) -> None:
        if self.lost:
            raise LibtpmsError("TPMLIB_VolatileAll_Store", 0, self.lost)
