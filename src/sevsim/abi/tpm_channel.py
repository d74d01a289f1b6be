"""The vTPM command channel between a guest kernel and its VMM: one shared page and a hypercall.

It plays the part of a TPM's CRB interface (a command/response buffer and a start bit) in the
form sevsim's other devices take: the guest kernel shares one page of its own (C-bit clear),
writes a whole TPM 2.0 command at offset 0 and executes VMMCALL (under SEV-ES/SNP through the
GHCB); the VMM passes the bytes to its vTPM (swtpm) and writes the whole response over the
page. Everything in the page is the host's to read and change, as every byte a host-provided
TPM sees is: a guest never puts a secret in a TPM command it does not mean the TPM to have.

Hypercalls (abi/svm.py), RAX = number, arguments in RBX, RCX, RDX:

  SEVSIM_HC_TPM_TRANSMIT   RBX = page GPA, RCX = command length. RCX = 0 probes: RAX = 0 when
                           the VMM has a vTPM. Otherwise the VMM requires
                           HEADER_SIZE <= RCX <= BUFFER_SIZE and the header's commandSize equal
                           to RCX (a command it could not frame is never sent), and returns the
                           response length in RAX, the response at offset 0 of the page. Any
                           command it can frame goes to the TPM as it is, so a malformed one
                           gets the TPM's own response code (TPM_RC_BAD_TAG, TPM_RC_COMMAND_CODE,
                           ...). A vTPM process that died stops the VM with VtpmError.
  SEVSIM_HC_TPM_BOOT_READ  RBX = page GPA, RCX = boot item (BootItem), RDX = offset: the VMM
                           copies up to a page of the item from that offset into the page;
                           RAX = bytes copied, 0 past the end. What a boot loader reads from
                           the host's disk: untrusted, measured as it is. Served without a
                           vTPM too: an SNP guest measures its boot into its own vTPM.
  SEVSIM_HC_TPM_EVENT_LOG  RBX = page GPA, RCX = length (<= a page), RDX = 1 while more of the
                           log follows: the guest hands over the measured boot's event log
                           (public, as /sys/kernel/security/tpm0/binary_bios_measurements is).

RAX = CHANNEL_ERROR (all ones) for a call the VMM refuses: no vTPM (but for boot reads), a bad
address or length, an unknown boot item.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from sevsim.abi.tpm2 import HEADER_SIZE

PAGE = 4096
BUFFER_SIZE = PAGE  # swtpm's TPM_BUFFER_MAX: no command or response is longer
CHANNEL_ERROR = (1 << 64) - 1
PROBE = 0
_HEADER = struct.Struct(">HII")  # tag, commandSize / responseSize, commandCode / responseCode


class BootItem(IntEnum):
    """What SEVSIM_HC_TPM_BOOT_READ reads: the boot loader's files on the host's disk."""

    PROGRAM = 0  # the guest program's ELF file, measured into PCR 4
    CMDLINE = 1  # its command line (ASCII), measured into PCR 8


def framing_error(message: bytes) -> str | None:
    """Why `message` (a command or response) cannot travel on the channel, or None: its
    length must be HEADER_SIZE..BUFFER_SIZE and equal to the size its header states."""
    if not HEADER_SIZE <= len(message) <= BUFFER_SIZE:
        return f"{len(message)} bytes, the channel carries {HEADER_SIZE}..{BUFFER_SIZE}"
    _, size, _ = _HEADER.unpack_from(message)
    if size != len(message):
        return f"the header states {size} bytes, the message has {len(message)}"
    return None
