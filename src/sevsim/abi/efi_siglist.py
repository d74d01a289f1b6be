"""UEFI signature databases: the EFI_SIGNATURE_LIST format of PK, KEK, db and dbx.

UEFI 2.10, 32.4.1 "Signature Database": a variable's value is a run of EFI_SIGNATURE_LISTs,
each a header (SignatureType GUID, UINT32 SignatureListSize, SignatureHeaderSize and
SignatureSize), a SignatureHeader of SignatureHeaderSize bytes, then EFI_SIGNATURE_DATA
entries of SignatureSize bytes each: an owner GUID and the signature (an X.509 certificate
in DER for EFI_CERT_X509_GUID, a 32-byte hash for EFI_CERT_SHA256_GUID). Integers are
little-endian, GUIDs in EFI's mixed-endian layout. These exact bytes are what firmware
measures into PCR 7, so the builder writes lists as efitools' cert-to-efi-sig-list does (one
list per certificate, all hashes in one list) and the parser takes any valid arrangement.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sevsim.errors import SignatureListError

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
SHA256_SIZE = 32
GUID_SIZE = 16
_LIST_HEADER = struct.Struct("<16sIII")  # SignatureType, ListSize, HeaderSize, SignatureSize


@dataclass(frozen=True)
class SignatureData:
    """One EFI_SIGNATURE_DATA: who added it (`owner`) and what it is, typed by its list."""

    signature_type: uuid.UUID
    owner: uuid.UUID
    data: bytes

    def to_bytes(self) -> bytes:
        """The EFI_SIGNATURE_DATA as a list holds it (what EV_EFI_VARIABLE_AUTHORITY logs)."""
        return self.owner.bytes_le + self.data


def x509(owner: uuid.UUID, certificate_der: bytes) -> SignatureData:
    """An X.509 entry: the certificate's DER."""
    return SignatureData(EFI_CERT_X509_GUID, owner, certificate_der)


def sha256(owner: uuid.UUID, digest: bytes) -> SignatureData:
    """A SHA-256 entry: an image hash (in dbx, a revoked image)."""
    if len(digest) != SHA256_SIZE:
        raise SignatureListError(None, "SignatureData", f"a SHA-256 hash is 32 bytes, "
                                 f"not {len(digest)}")
    return SignatureData(EFI_CERT_SHA256_GUID, owner, digest)


def _one_list(signature_type: uuid.UUID, entries: list[SignatureData]) -> bytes:
    size = GUID_SIZE + len(entries[0].data)
    body = b"".join(e.to_bytes() for e in entries)
    return _LIST_HEADER.pack(signature_type.bytes_le, _LIST_HEADER.size + len(body), 0,
                             size) + body


def build(entries: Iterable[SignatureData]) -> bytes:
    """A variable's value: one EFI_SIGNATURE_LIST per X.509 certificate (their sizes differ),
    then one per other type with all its entries, in order of first appearance. An empty
    database is the empty value."""
    out: list[bytes] = []
    grouped: dict[uuid.UUID, list[SignatureData]] = {}
    for entry in entries:
        if entry.signature_type == EFI_CERT_X509_GUID:
            if not entry.data:
                raise SignatureListError(None, "SignatureData", "an empty certificate")
            out.append(_one_list(EFI_CERT_X509_GUID, [entry]))
            continue
        group = grouped.setdefault(entry.signature_type, [])
        if group and len(entry.data) != len(group[0].data):
            raise SignatureListError(None, "SignatureSize", f"entries of type "
                                     f"{entry.signature_type} differ in size")
        group.append(entry)
    out.extend(_one_list(kind, group) for kind, group in grouped.items())
    return b"".join(out)


def parse(raw: bytes) -> list[SignatureData]:
    """Every entry of a variable's value, strictly: each list's sizes add up to the bytes it
    spans, SHA-256 entries are 48 bytes, X.509 lists have no header, nothing is left over."""
    entries: list[SignatureData] = []
    offset = 0
    while offset < len(raw):
        if len(raw) - offset < _LIST_HEADER.size:
            raise SignatureListError(offset, "EFI_SIGNATURE_LIST", f"{_LIST_HEADER.size}-byte "
                                     f"header needed, {len(raw) - offset} bytes left")
        kind_le, list_size, header_size, sig_size = _LIST_HEADER.unpack_from(raw, offset)
        kind = uuid.UUID(bytes_le=kind_le)
        if list_size > len(raw) - offset:
            raise SignatureListError(offset + 16, "SignatureListSize", f"{list_size} bytes, "
                                     f"{len(raw) - offset} left")
        if sig_size <= GUID_SIZE:
            raise SignatureListError(offset + 24, "SignatureSize", f"{sig_size}: an entry is "
                                     "an owner GUID and at least one byte")
        body = list_size - _LIST_HEADER.size - header_size
        if body <= 0 or body % sig_size:  # header_size is a u32: body may go negative
            raise SignatureListError(offset + 16, "SignatureListSize", f"{list_size} is not "
                                     f"the header, a {header_size}-byte SignatureHeader and "
                                     f"whole {sig_size}-byte entries")
        if kind == EFI_CERT_SHA256_GUID and sig_size != GUID_SIZE + SHA256_SIZE:
            raise SignatureListError(offset + 24, "SignatureSize", f"{sig_size} for SHA-256 "
                                     f"entries, which are {GUID_SIZE + SHA256_SIZE}")
        if kind in (EFI_CERT_SHA256_GUID, EFI_CERT_X509_GUID) and header_size:
            raise SignatureListError(offset + 20, "SignatureHeaderSize", f"{header_size} for "
                                     f"{kind}, whose lists have no header")
        at = offset + _LIST_HEADER.size + header_size
        for _ in range(body // sig_size):
            entries.append(SignatureData(kind, uuid.UUID(bytes_le=raw[at:at + GUID_SIZE]),
                                         raw[at + GUID_SIZE:at + sig_size]))
            at += sig_size
        offset += list_size
    return entries
