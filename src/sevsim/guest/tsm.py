"""configfs-tsm report entries, as Linux's drivers/virt/coco/tsm.c keeps them.

A program makes a directory below /sys/kernel/config/tsm/report, writes up to 64 bytes to
`inblob` (and optionally a `privlevel` no lower than `privlevel_floor`), then reads `outblob`
(the report) and `auxblob` (for SEV-SNP the certificate table). Every write bumps
`generation`; a read asks for a new report only when an input changed since the last one,
so a reader who sees the same generation before and after knows nobody wrote in between.

The entries live in slots of guest memory the kernel hands in as load/store callables: the
kernel keeps no state of its own (a migrated VM's kernel finds everything in the guest).
sevsim's limits: SLOTS entries per VMPL (Linux would run out of memory instead: -ENOSPC
here), names of at most NAME_MAX bytes, canonical absolute paths only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from sevsim.errors import SevsimError

ROOT = b"/sys/kernel/config/tsm/report"
PROVIDER = b"sev_guest\n"  # Linux's sev-guest provider name
INBLOB_MAX = 64  # TSM_INBLOB_MAX
PRIVLEVEL_MAX = 3  # TSM_PRIVLEVEL_MAX
NAME_MAX = 255
PATH_MAX = 4096
OUTBLOB_MAX = 0x4A0
AUXBLOB_MAX = 4 * 4096
SLOTS = 4
SLOT_SIZE = 4096 + AUXBLOB_MAX  # page 0: the entry and its outblob; then the auxblob
_GEN_MASK = (1 << 64) - 1  # Linux: unsigned long generations

EPERM = 1
ENOENT = 2
EIO = 5
ENXIO = 6
EACCES = 13
EBUSY = 16
EEXIST = 17
ENOTDIR = 20
EISDIR = 21
EINVAL = 22
EFBIG = 27
ENOSPC = 28
ERANGE = 34
ENAMETOOLONG = 36

# attribute -> (readable, writable), as tsm_report_extra_type declares them
ATTRIBUTES: dict[bytes, tuple[bool, bool]] = {
    b"inblob": (False, True), b"outblob": (True, False), b"auxblob": (True, False),
    b"privlevel": (False, True), b"privlevel_floor": (True, False),
    b"generation": (True, False), b"provider": (True, False),
}

_MAGIC = b"TSM1"
_HEADER = struct.Struct("<4sH255sB64sBQQBII")  # ... inblob, privlevel, gens, outblob?, sizes
_UINT = re.compile(rb"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\n?")  # kstrtouint, base 0

ReportFn = Callable[[bytes, int], "tuple[bytes, bytes] | int"]


class TsmError(SevsimError):
    """A refused configfs operation; `errno` is what the system call returns negated."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


@dataclass
class TsmEntry:
    """One report directory: its inputs, its generations and the blobs last made."""

    name: bytes
    inblob: bytes = b""
    privlevel: int = 0
    write_generation: int = 0
    read_generation: int = 0
    outblob: bytes | None = None
    auxblob: bytes = field(default=b"")

    def to_bytes(self) -> bytes:
        """The slot's bytes: header and outblob in the first page, the auxblob after it."""
        head = _HEADER.pack(_MAGIC, len(self.name), self.name, len(self.inblob), self.inblob,
                            self.privlevel, self.write_generation, self.read_generation,
                            self.outblob is not None, len(self.outblob or b""),
                            len(self.auxblob))
        return (head + (self.outblob or b"")).ljust(4096, b"\0") + self.auxblob

    @classmethod
    def from_bytes(cls, slot: bytes) -> TsmEntry | None:
        """The entry in a slot, or None for a free one (guest memory starts zeroed)."""
        (magic, name_len, name, in_len, inblob, privlevel, wgen, rgen, has_out, out_len,
         aux_len) = _HEADER.unpack_from(slot)
        if magic != _MAGIC:
            return None
        if not (0 < name_len <= NAME_MAX and in_len <= INBLOB_MAX and out_len <= OUTBLOB_MAX
                and aux_len <= AUXBLOB_MAX and privlevel <= PRIVLEVEL_MAX):
            raise TsmError(EIO, "a corrupt report entry")  # only the kernel writes slots
        out = slot[_HEADER.size:_HEADER.size + out_len] if has_out else None
        return cls(name[:name_len], inblob[:in_len], privlevel, wgen, rgen, out,
                   slot[4096:4096 + aux_len])


def parse_path(path: bytes) -> tuple[bytes | None, bytes | None]:
    """(entry, attribute) of a canonical path at or below ROOT: no '.', '..', empty
    components or trailing slash (sevsim resolves nothing). Raises ENOENT outside the
    report group, ENOTDIR for anything below an attribute."""
    if len(path) >= PATH_MAX:
        raise TsmError(ENAMETOOLONG, "path too long")
    if path == ROOT:
        return None, None
    if not path.startswith(ROOT + b"/"):
        raise TsmError(ENOENT, f"{path!r} is not below {ROOT.decode()}")
    parts = path[len(ROOT) + 1:].split(b"/")
    for part in parts:
        if part in (b"", b".", b".."):
            raise TsmError(EINVAL, f"{path!r} is not a canonical path")
        if len(part) > NAME_MAX:
            raise TsmError(ENAMETOOLONG, "a path component is too long")
    if len(parts) > 2:
        raise TsmError(ENOTDIR if parts[1] in ATTRIBUTES else ENOENT, f"no {path!r}")
    return parts[0], parts[1] if len(parts) == 2 else None


def parse_uint(text: bytes) -> int:
    """An unsigned int as Linux's kstrtouint(buf, 0) reads it."""
    if not _UINT.fullmatch(text):
        raise TsmError(EINVAL, f"{text!r} is not a number")
    digits = text.strip().lstrip(b"+")
    value = int(digits, 16) if digits[:2].lower() == b"0x" else int(digits, 8 if
                                                                     digits[:1] == b"0" else 10)
    if value > 0xFFFF_FFFF:
        raise TsmError(ERANGE, f"{value} does not fit an unsigned int")
    return value


class TsmReports:
    """The report group of one VMPL's kernel: mkdir/rmdir of entries, reads and writes of
    their attributes, over SLOTS slots that `load(slot)` and `store(slot, bytes)` reach."""

    def __init__(self, load: Callable[[int], bytes], store: Callable[[int, bytes], None],
                 floor: int, available: bool) -> None:
        self.load, self.store = load, store
        self.floor = floor  # the VMPL the kernel runs at: no report for a higher one
        self.available = available  # a provider registered (SEV-SNP): else mkdir -ENXIO

    def entries(self) -> dict[bytes, tuple[int, TsmEntry]]:
        """Every report entry in use, by name, with its slot."""
        found = {}
        for slot in range(SLOTS):
            entry = TsmEntry.from_bytes(self.load(slot))
            if entry is not None:
                found[entry.name] = (slot, entry)
        return found

    def _entry(self, name: bytes) -> tuple[int, TsmEntry]:
        found = self.entries().get(name)
        if found is None:
            raise TsmError(ENOENT, f"no report entry {name!r}")
        return found

    def mkdir(self, path: bytes) -> None:
        """Make a report entry; where Linux's mkdir would fail, TsmError with its errno."""
        name, attr = parse_path(path)
        entries = self.entries()
        if name is None or (attr is None and name in entries) or (
                attr is not None and name in entries and attr in ATTRIBUTES):
            raise TsmError(EEXIST, f"{path!r} exists")
        if attr is not None:  # a report entry is an item, not a group
            raise TsmError(EPERM if name in entries else ENOENT, f"cannot make {path!r}")
        if not self.available:
            raise TsmError(ENXIO, "no TSM provider (not an SEV-SNP guest)")
        used = {slot for slot, _ in entries.values()}
        free = [slot for slot in range(SLOTS) if slot not in used]
        if not free:
            raise TsmError(ENOSPC, f"all {SLOTS} report entries are in use")
        # privlevel starts at the floor (Linux: 0, which a kernel below VMPL0 cannot get)
        self.store(free[0], TsmEntry(name, privlevel=self.floor).to_bytes())

    def rmdir(self, path: bytes) -> None:
        """Remove a report entry, freeing its slot; where Linux's rmdir would fail, TsmError."""
        name, attr = parse_path(path)
        if name is None:
            raise TsmError(EPERM, "the report group itself stays")
        slot, _ = self._entry(name)
        if attr is not None:
            raise TsmError(ENOTDIR if attr in ATTRIBUTES else ENOENT, f"{path!r}: not a dir")
        self.store(slot, bytes(SLOT_SIZE))

    def _attribute(self, path: bytes, write: bool) -> tuple[int, TsmEntry, bytes]:
        name, attr = parse_path(path)
        if name is None:
            raise TsmError(EISDIR, f"{path!r} is a directory")
        slot, entry = self._entry(name)
        if attr is None:
            raise TsmError(EISDIR, f"{path!r} is a directory")
        if attr not in ATTRIBUTES:
            raise TsmError(ENOENT, f"no attribute {attr!r}")
        if not ATTRIBUTES[attr][write]:
            raise TsmError(EACCES, f"{attr.decode()} is {'read' if write else 'write'}-only")
        return slot, entry, attr

    def write(self, path: bytes, data: bytes) -> None:
        """Write inblob or privlevel; either bumps the generation (-EBUSY, as Linux, once so
        many writes went unread that the generations would meet again)."""
        slot, entry, attr = self._attribute(path, True)
        if attr == b"inblob":
            if len(data) > INBLOB_MAX:  # configfs: beyond the attribute's cb_max_size
                raise TsmError(EFBIG, f"inblob holds at most {INBLOB_MAX} bytes")
            entry.inblob = data
        else:
            level = parse_uint(data)
            if not self.floor <= level <= PRIVLEVEL_MAX:
                raise TsmError(EINVAL, f"privlevel {level} outside {self.floor}..{PRIVLEVEL_MAX}")
            entry.privlevel = level
        if entry.write_generation == (entry.read_generation - 1) & _GEN_MASK:
            raise TsmError(EBUSY, "read the report before writing again")
        entry.write_generation = (entry.write_generation + 1) & _GEN_MASK
        self.store(slot, entry.to_bytes())

    def read(self, path: bytes, report: ReportFn) -> bytes:
        """An attribute's contents. outblob/auxblob come from the cached report while no
        input changed; otherwise report(64 bytes of REPORT_DATA, VMPL) makes a new one
        (a negative result is the errno, and the old blobs are gone, as in Linux)."""
        slot, entry, attr = self._attribute(path, False)
        if attr == b"generation":
            return b"%d\n" % entry.write_generation
        if attr == b"provider":
            return PROVIDER
        if attr == b"privlevel_floor":
            return b"%d\n" % self.floor
        if not entry.inblob:
            raise TsmError(EINVAL, "write inblob first")
        if entry.outblob is None or entry.read_generation != entry.write_generation:
            entry.outblob, entry.auxblob = None, b""
            made = report(entry.inblob.ljust(INBLOB_MAX, b"\0"), entry.privlevel)
            if isinstance(made, int):
                self.store(slot, entry.to_bytes())
                raise TsmError(-made, "the report request failed")
            entry.outblob, entry.auxblob = made
            entry.read_generation = entry.write_generation
            self.store(slot, entry.to_bytes())
        return entry.outblob if attr == b"outblob" else entry.auxblob
