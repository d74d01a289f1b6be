r"""Signatures appended to a file, as Linux signs kernel modules (scripts/sign-file).

A signed file is the unsigned bytes, a detached PKCS#7 SignedData over them (DER), the
12-byte `struct module_signature` information block (include/linux/module_signature.h:
algo, hash, id_type, signer_len, key_id_len, three pad bytes, all zero but id_type
PKEY_ID_PKCS7 = 2, then the big-endian length of the PKCS#7 blob) and the magic string
"~Module signature appended~\n". sevsim signs guest ELF programs this way: the loader ignores
bytes past the last segment, so a signed program still runs where an unsigned one does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sevsim.errors import ImageSignatureError

MAGIC = b"~Module signature appended~\n"
PKEY_ID_PKCS7 = 2
_INFO = struct.Struct(">BBBBB3sI")  # algo, hash, id_type, signer_len, key_id_len, pad, sig_len


@dataclass(frozen=True)
class SignedFile:
    """A file split at its appended signature: `content` is what the signature covers."""

    content: bytes
    pkcs7: bytes


def append(content: bytes, pkcs7_der: bytes) -> bytes:
    """`content` with its detached PKCS#7 signature appended."""
    if not pkcs7_der:
        raise ImageSignatureError("sig_len", "an empty signature")
    return content + pkcs7_der + _INFO.pack(0, 0, PKEY_ID_PKCS7, 0, 0, bytes(3),
                                            len(pkcs7_der)) + MAGIC


def split(blob: bytes) -> SignedFile | None:
    """The content and signature of a signed file; None when it carries no magic (unsigned).
    A trailer that is there but malformed is an ImageSignatureError, checked as Linux's
    mod_check_sig checks it."""
    if not blob.endswith(MAGIC):
        return None
    end = len(blob) - len(MAGIC)
    if end < _INFO.size:
        raise ImageSignatureError("module_signature", "file too short for the information "
                                  "block")
    algo, hash_, id_type, signer_len, key_id_len, pad, sig_len = _INFO.unpack_from(
        blob, end - _INFO.size)
    if id_type != PKEY_ID_PKCS7:
        raise ImageSignatureError("id_type", f"{id_type}, not PKEY_ID_PKCS7 ({PKEY_ID_PKCS7})")
    if algo or hash_ or signer_len or key_id_len or any(pad):
        raise ImageSignatureError("module_signature", "PKCS#7 signature info has non-zero "
                                  "algo, hash, signer_len, key_id_len or padding")
    start = end - _INFO.size - sig_len
    if sig_len == 0 or start < 0:
        raise ImageSignatureError("sig_len", f"{sig_len} bytes of signature in a file of "
                                  f"{end - _INFO.size} bytes before the information block")
    return SignedFile(blob[:start], blob[start:end - _INFO.size])
