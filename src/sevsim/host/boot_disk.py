"""UNTRUSTED: the host's disk as the guest's boot loader reads it (abi/tpm_channel.py's
SEVSIM_HC_TPM_BOOT_READ): the program file, its command line and the boot data files.

It is the VM's, not its vTPM's: a VM without a vTPM still boots its data files (unmeasured),
as a machine without a TPM still loads its initrd. Everything here is the host's to change
at any time; the guest reads each item once and measures what it read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sevsim.abi.tpm_channel import (
    CHANNEL_ERROR,
    MAX_BOOT_FILE_SIZE,
    MAX_BOOT_FILES,
    PAGE,
    BootItem,
    boot_file_name_error,
    split_boot_arg,
)
from sevsim.errors import ConfigError, MemoryAccessError
from sevsim.host.vtpm_device import GuestPhysical
from sevsim.inputs import read_bounded

BootFile = tuple[str, bytes] | str | os.PathLike[str]  # (name, contents) or a path


def boot_files(files: Sequence[BootFile]) -> list[tuple[str, bytes]]:
    """(name, contents) for each of `files` (a path is named by its file name), checked
    against the channel's limits; ConfigError for too many, a name that cannot be one, a file
    too long or unreadable."""
    if len(files) > MAX_BOOT_FILES:
        raise ConfigError(f"{len(files)} boot files, at most {MAX_BOOT_FILES}")
    found: list[tuple[str, bytes]] = []
    for item in files:
        if isinstance(item, tuple):
            name, data = item
        else:
            name = Path(item).name
            try:
                data = read_bounded(item, MAX_BOOT_FILE_SIZE, "a boot file")
            except OSError as err:
                raise ConfigError(f"boot file {os.fspath(item)}: {err.strerror}") from None
        if (why := boot_file_name_error(name)) is not None:
            raise ConfigError(f"boot file name {name[:40]!r}: {why}")
        if len(data) > MAX_BOOT_FILE_SIZE:
            raise ConfigError(f"boot file {name}: {len(data)} bytes, at most "
                              f"{MAX_BOOT_FILE_SIZE}")
        found.append((name, bytes(data)))
    return found


class BootDisk:
    """What the boot loader may read: set by VirtualMachine.load, served on the guest's
    SEVSIM_HC_TPM_BOOT_READ exits."""

    def __init__(self) -> None:
        self.program = b""
        self.cmdline = b""
        self.files: list[tuple[str, bytes]] = []

    def hypercall(self, mem: GuestPhysical, args: tuple[int, ...]) -> int:
        """Copy up to a page of the item RCX names from offset RDX to the page at RBX;
        CHANNEL_ERROR for an unknown item or a page the host may not touch."""
        gpa, (item, index), offset = args[0], split_boot_arg(args[1]), args[2]
        if gpa % PAGE:
            return CHANNEL_ERROR
        if item == BootItem.FILE_COUNT:
            return len(self.files)
        if item == BootItem.PROGRAM:
            data = self.program
        elif item == BootItem.CMDLINE:
            data = self.cmdline
        elif item in (BootItem.FILE_NAME, BootItem.FILE_DATA):
            name, contents = self.files[index] if index < len(self.files) else ("", b"")
            data = name.encode() if item == BootItem.FILE_NAME else contents
        else:
            return CHANNEL_ERROR
        chunk = data[offset:offset + PAGE]
        try:
            mem.write_gpa(gpa, chunk)
        except MemoryAccessError:
            return CHANNEL_ERROR
        return len(chunk)
