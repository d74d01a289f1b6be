"""The virtual NIC's shared pages: a control page and two rings of fixed-size slots.

The guest kernel shares NIC_PAGES pages (C-bit clear) and registers them with
SEVSIM_HC_NIC_SETUP; the VMM bridges the rings to one TCP connection to the address it was
configured with (the guest never names a host or port: the host routes its traffic anyway).
Everything here is visible to and writable by the host, so the guest reads each value once
and checks it (ring indices, slot lengths) before it trusts it; nothing confidential belongs
on the wire (the KBS sends secrets as a JWE to a key the guest holds in private memory).

Layout (little-endian):

  page 0, control:  0x00 magic "SEVSNIC1" (guest)   0x08 u32 tx_prod (guest)
                    0x0C u32 tx_cons (host)         0x10 u32 rx_prod (host)
                    0x14 u32 rx_cons (guest)        0x18 u32 link flags (host, LINK_*)
                    0x20 u16 url length (host)      0x22 the URL the host bridges to (host)
  pages 1..8:       TX slots, guest -> host         pages 9..16: RX slots, host -> guest
  slot (2 KiB):     u32 length, u32 flags (SLOT_FIN: the sender closed), data

Indices are free-running u32 counters; slot i of a ring is at (index % SLOTS). A ring holds
prod - cons slots, never more than SLOTS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from sevsim.errors import FormatError

PAGE = 4096
MAGIC = b"SEVSNIC1"
SLOTS = 16
SLOT_SIZE = 2048
SLOT_DATA = SLOT_SIZE - 8
RING_PAGES = SLOTS * SLOT_SIZE // PAGE
NIC_PAGES = 1 + 2 * RING_PAGES
TX_OFFSET = PAGE
RX_OFFSET = PAGE + RING_PAGES * PAGE
URL_OFFSET = 0x22
URL_MAX = 0x400
_CONTROL = struct.Struct("<8sIIIII4xH")
_SLOT_HEAD = struct.Struct("<II")


class LinkFlag(IntFlag):
    """What the host says about the connection (control page 0x18, and KICK's result)."""

    CONNECTED = 1
    PEER_CLOSED = 2  # the far end closed: what the RX ring holds is all there will be
    ERROR = 4  # the connection failed or broke


SLOT_FIN = 1


@dataclass(frozen=True)
class Control:
    """The control page's counters and flags, as read at one moment."""

    magic: bytes
    tx_prod: int
    tx_cons: int
    rx_prod: int
    rx_cons: int
    link: int

    @classmethod
    def from_bytes(cls, page: bytes) -> Control:
        """Parse the control page's head; FormatError for a short page."""
        if len(page) < _CONTROL.size:
            raise FormatError(f"NIC control page: {len(page)} bytes, need {_CONTROL.size}")
        magic, tx_prod, tx_cons, rx_prod, rx_cons, link, _ = _CONTROL.unpack_from(page)
        return cls(magic, tx_prod, tx_cons, rx_prod, rx_cons, link)


def counter_offset(name: str) -> int:
    """Byte offset of a control-page counter (tx_prod, tx_cons, rx_prod, rx_cons, link)."""
    return {"tx_prod": 8, "tx_cons": 12, "rx_prod": 16, "rx_cons": 20, "link": 24}[name]


def pack_u32(value: int) -> bytes:
    """A control-page counter as stored (wrapping at 2^32)."""
    return struct.pack("<I", value & 0xFFFF_FFFF)


def pending(prod: int, cons: int) -> int:
    """Slots between two free-running counters; FormatError if more than a ring holds."""
    count = (prod - cons) & 0xFFFF_FFFF
    if count > SLOTS:
        raise FormatError(f"NIC ring: producer {prod} is {count} slots ahead of consumer "
                          f"{cons}, the ring has {SLOTS}")
    return count


def slot_offset(ring: int, index: int) -> int:
    """Offset of slot `index` (free-running) of the ring at page offset `ring`."""
    return ring + (index % SLOTS) * SLOT_SIZE


def pack_slot(data: bytes, flags: int = 0) -> bytes:
    """A slot's bytes: header then data (at most SLOT_DATA bytes)."""
    if len(data) > SLOT_DATA:
        raise FormatError(f"NIC slot: {len(data)} bytes, a slot carries {SLOT_DATA}")
    return _SLOT_HEAD.pack(len(data), flags) + data


def parse_slot(raw: bytes) -> tuple[bytes, int]:
    """A slot's data and flags; FormatError for a length past the slot or unknown flags."""
    if len(raw) < _SLOT_HEAD.size:
        raise FormatError(f"NIC slot: {len(raw)} bytes, need a {_SLOT_HEAD.size}-byte header")
    length, flags = _SLOT_HEAD.unpack_from(raw)
    if length > min(SLOT_DATA, len(raw) - _SLOT_HEAD.size):
        raise FormatError(f"NIC slot: length {length}, a slot carries {SLOT_DATA}")
    if flags & ~SLOT_FIN:
        raise FormatError(f"NIC slot: unknown flags 0x{flags:x}")
    return raw[_SLOT_HEAD.size:_SLOT_HEAD.size + length], flags


def pack_url(url: str) -> bytes:
    """The URL field the host writes at URL_OFFSET: u16 length, then ASCII."""
    data = url.encode("ascii")
    if len(data) > URL_MAX:
        raise FormatError(f"NIC URL: {len(data)} bytes, the control page holds {URL_MAX}")
    return struct.pack("<H", len(data)) + data


def parse_url(page: bytes) -> str:
    """The URL the host wrote into the control page; FormatError if it does not fit or is
    not printable ASCII."""
    if len(page) < URL_OFFSET:
        raise FormatError(f"NIC control page: {len(page)} bytes, the URL starts at "
                          f"0x{URL_OFFSET:x}")
    (length,) = struct.unpack_from("<H", page, URL_OFFSET - 2)
    if length > URL_MAX or URL_OFFSET + length > len(page):
        raise FormatError(f"NIC URL: length {length}, the control page holds {URL_MAX}")
    raw = page[URL_OFFSET:URL_OFFSET + length]
    if not raw.isascii() or not all(0x21 <= b < 0x7F for b in raw):
        raise FormatError("NIC URL: not printable ASCII")
    return raw.decode("ascii")
