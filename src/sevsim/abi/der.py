"""The few DER (X.690) encodings AMD's VCEK/VLEK certificates use, strict both ways.

AMD issues VCEKs and VLEKs with serial number 0, which `cryptography` refuses to build and
will one day refuse to load, so sevsim encodes and decodes them itself. Only definite,
minimal lengths and single-byte tags exist here; anything else is refused, so a parse that
re-encodes to the same bytes proves the input was canonical DER.
"""

from __future__ import annotations

from dataclasses import dataclass

from sevsim.errors import SnpCertFormatError

BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31
STRINGS = {UTF8_STRING: "utf-8", PRINTABLE_STRING: "ascii", IA5_STRING: "ascii"}


def context(number: int, constructed: bool = True) -> int:
    """The tag [number] (EXPLICIT tags are constructed)."""
    return 0x80 | (0x20 if constructed else 0) | number


def encode(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    length = len(content)
    if length < 0x80:
        head = bytes((length,))
    else:
        size = (length.bit_length() + 7) // 8
        head = bytes((0x80 | size,)) + length.to_bytes(size, "big")
    return bytes((tag,)) + head + content


def read(blob: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, position after) of the element at `pos`."""
    if pos + 2 > len(blob):
        raise SnpCertFormatError("DER", f"truncated element at offset {pos}")
    tag, first = blob[pos], blob[pos + 1]
    if tag & 0x1F == 0x1F:
        raise SnpCertFormatError("DER", f"multi-byte tag at offset {pos}")
    pos += 2
    if first < 0x80:
        length = first
    else:
        size = first & 0x7F
        if size == 0 or size > 4 or pos + size > len(blob):
            raise SnpCertFormatError("DER", f"bad length encoding at offset {pos - 1}")
        length = int.from_bytes(blob[pos:pos + size], "big")
        if length < 0x80 or length >> 8 * (size - 1) == 0:
            raise SnpCertFormatError("DER", f"non-minimal length at offset {pos - 1}")
        pos += size
    if pos + length > len(blob):
        raise SnpCertFormatError("DER", f"element at offset {pos} runs past its container")
    return tag, bytes(blob[pos:pos + length]), pos + length


def read_one(blob: bytes, tag: int, what: str) -> bytes:
    """The content of `blob`, which must be exactly one element with `tag`."""
    got, content, end = read(blob)
    if got != tag or end != len(blob):
        raise SnpCertFormatError(what, f"expected one element with tag 0x{tag:02x}")
    return content


def children(content: bytes) -> list[tuple[int, bytes]]:
    """Every element inside a constructed value, in order."""
    out, pos = [], 0
    while pos < len(content):
        tag, value, pos = read(content, pos)
        out.append((tag, value))
    return out


@dataclass(frozen=True)
class Element:
    """One element of a parsed DER tree: its tag, its content and, when it is constructed
    (tag bit 0x20: SEQUENCE, SET, EXPLICIT tags), the elements inside it."""

    tag: int
    content: bytes
    children: tuple[Element, ...] = ()


def tree(blob: bytes) -> Element:
    """`blob`, exactly one element, parsed down to its primitives: the structure two
    encodings of the same kind of object can be compared by (tags, lengths, order)."""
    tag, content, end = read(blob)
    if end != len(blob):
        raise SnpCertFormatError("DER", f"{len(blob) - end} bytes after the element")
    return _element(tag, content)


def _element(tag: int, content: bytes) -> Element:
    if not tag & 0x20:
        return Element(tag, content)
    return Element(tag, content, tuple(_element(t, c) for t, c in children(content)))


def sequence(*elements: bytes) -> bytes:
    """A SEQUENCE of already encoded elements."""
    return encode(SEQUENCE, b"".join(elements))


def integer(value: int) -> bytes:
    """An INTEGER in the minimal two's-complement encoding DER requires."""
    size = (value if value >= 0 else ~value).bit_length() // 8 + 1  # room for the sign bit
    return encode(INTEGER, value.to_bytes(size, "big", signed=True))


def parse_integer(content: bytes, what: str) -> int:
    """A non-negative INTEGER's value; SnpCertFormatError names `what` otherwise."""
    if not content or (len(content) > 1 and (
            (content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF
                                                       and content[1] >= 0x80))):
        raise SnpCertFormatError(what, "INTEGER is empty or not minimally encoded")
    return int.from_bytes(content, "big", signed=True)


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | arc & 0x7F)
            arc >>= 7
        body += bytes(reversed(chunk))
    return encode(OID, bytes(body))


def parse_oid(content: bytes, what: str) -> str:
    """Decode an OID whose first two arcs share one byte (all of X.509's do)."""
    if not content or content[0] & 0x80 or content[-1] & 0x80:
        raise SnpCertFormatError(what, "malformed OBJECT IDENTIFIER")
    first = min(content[0] // 40, 2)
    arcs = [first, content[0] - 40 * first]
    value, start = 0, True
    for byte in content[1:]:
        if start and byte == 0x80:
            raise SnpCertFormatError(what, "OBJECT IDENTIFIER arc not minimally encoded")
        value = value << 7 | byte & 0x7F
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    return ".".join(str(arc) for arc in arcs)


def string(tag: int, text: str) -> bytes:
    """A string element of `tag` (UTF8String, PrintableString, IA5String)."""
    return encode(tag, text.encode(STRINGS[tag]))


def parse_string(tag: int, content: bytes, what: str) -> str:
    """The text of a string element of `tag`; SnpCertFormatError names `what`."""
    if tag not in STRINGS:
        raise SnpCertFormatError(what, f"tag 0x{tag:02x} is not a string sevsim reads")
    try:
        return content.decode(STRINGS[tag])
    except UnicodeDecodeError:
        raise SnpCertFormatError(what, f"not a valid {STRINGS[tag]} string") from None
