"""Input files: the largest size each format allows, and the one bounded read that enforces it.

An endless input (/dev/zero, a symlink to it, a sparse file of terabytes) must be refused, not
read until the machine runs out of memory; so every file sevsim reads from a path the user
chose goes through `read_bounded` with its format's limit. A leaf like sevsim.errors (it
imports nothing else of sevsim), so every layer that reads a user's file, attest/ and host/ as
well as cli/, shares the one read and the one table of limits.
"""

from __future__ import annotations

import os
from typing import IO

from sevsim.errors import ConfigError

# The largest legal size of each kind of input file: a bounded read refuses anything longer
# (an endless /dev/zero included) after reading one byte more.
MAX_REPORT_FILE = 64 << 10  # 0x4A0 bytes, or as hex text with any whitespace
MAX_CERT_FILE = 1 << 20  # a certificate, PEM bundle, CRL or extended report's table
MAX_POLICY_FILE = 1 << 20  # a TOML validation policy (also a key broker's stored policy)
MAX_KBS_RESOURCE = 1 << 20  # a secret a key broker stores and releases
MAX_KEY_FILE = 64 << 10  # a PEM private key
MAX_SEV_CERT = 0x824  # a legacy SEV certificate (PDH, PEK, OCA, CEK, GODH)
MAX_SESSION_FILE = 4096  # session.bin, tek_tik.bin
MAX_SECRET = 4092  # LAUNCH_SECRET: one page less the length word
MAX_ID_BLOCK = 0x60
MAX_ID_AUTH = 0x1000
MAX_OVMF = 16 << 20  # the x86 firmware window just below 4 GiB
MAX_KERNEL = 1 << 30  # a directly booted kernel or initrd: what QEMU loads below 4 GiB
MAX_GUEST_ELF = 256 << 20  # a sevsim guest program (loaded into the VM's RAM at 4 MiB)
MAX_TPM_STRUCT = 64 << 10  # a TPMT_PUBLIC, TPMS_ATTEST or TPMT_SIGNATURE (TPM2B sizes are 16-bit)
MAX_EVENT_LOG = 16 << 20  # a TCG event log (Linux's binary_bios_measurements: tens of KiB)
MAX_RUN_DOCUMENT = 64 << 20  # `sevsim demo --json`: pages as base64, the full attack matrix


def read_bounded(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """A file's bytes, if it holds at most `limit` (the largest `what` there can be). Reads
    limit + 1 bytes at most, so an endless input is refused at once. OSError when it cannot
    be read; ConfigError naming the file and the limit when too long (callers with a typed
    error of their own for a bad file re-raise it as that)."""
    with open(path, "rb") as stream:
        return read_stream(stream, limit, what, os.fspath(path))


def read_stream(stream: IO[bytes], limit: int, what: str, name: str) -> bytes:
    """As read_bounded, from an open stream `name` (a KDS's HTTP answer): one too long is a
    ConfigError, after reading one byte more than `limit`."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{name} holds more than {limit} bytes, the most {what} can be")
    return data
