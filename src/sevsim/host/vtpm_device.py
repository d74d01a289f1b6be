"""UNTRUSTED: the VMM's TPM device, one swtpm per VM (host/vtpm.py) behind the guest's command
channel (abi/tpm_channel.py), as QEMU's tpm-crb device and its swtpm chardev are.

The device serves the guest's exits and nothing else; it also plays the host's disk for the
guest's boot loader (the program file and its command line, which the guest measures) and
keeps the event log the guest hands over. Stopping it sends TPM2_Shutdown(TPM_SU_STATE), as
an orderly OS shutdown does, so the state directory keeps the PCRs a later
TPM2_Startup(TPM_SU_STATE) resumes; then swtpm is stopped and its sockets removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from sevsim.abi import tpm2
from sevsim.abi.svm import (
    SEVSIM_HC_TPM_BOOT_READ,
    SEVSIM_HC_TPM_EVENT_LOG,
    SEVSIM_HC_TPM_TRANSMIT,
)
from sevsim.abi.tpm_channel import (
    BUFFER_SIZE,
    CHANNEL_ERROR,
    PAGE,
    PROBE,
    BootItem,
    framing_error,
)
from sevsim.errors import MemoryAccessError, TpmError, TpmFormatError, VtpmError
from sevsim.host.vtpm import Vtpm

TPM_HYPERCALLS = (SEVSIM_HC_TPM_TRANSMIT, SEVSIM_HC_TPM_BOOT_READ, SEVSIM_HC_TPM_EVENT_LOG)
MAX_EVENT_LOG = 1 << 20  # what the device keeps of a guest's log


class GuestPhysical(Protocol):
    """Guest memory as the hypervisor reaches it (VirtualMachine.read_gpa / write_gpa)."""

    def read_gpa(self, gpa: int, length: int) -> bytes:
        """Bytes as the host reads them."""
        ...

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """Write as the host can."""
        ...


def boot_read(mem: GuestPhysical, items: Mapping[BootItem, bytes], args: tuple[int, ...]) -> int:
    """Serve SEVSIM_HC_TPM_BOOT_READ from `items` (CHANNEL_ERROR for what is refused). The VMM
    serves it with or without a vTPM: an SNP guest measures its boot into its own vTPM."""
    gpa, item, offset = args[0], args[1], args[2]
    if gpa % PAGE or item not in set(BootItem):
        return CHANNEL_ERROR
    chunk = items.get(BootItem(item), b"")[offset:offset + PAGE]
    try:
        mem.write_gpa(gpa, chunk)
    except MemoryAccessError:  # a page the host may not touch
        return CHANNEL_ERROR
    return len(chunk)


class VtpmDevice:
    """One VM's TPM: a swtpm waiting for the guest's TPM2_Startup, state in `state_dir`
    (a temporary directory when None). VtpmError when swtpm is missing or does not start."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None,
                 swtpm: str = "swtpm") -> None:
        self.tpm = Vtpm(state_dir, swtpm, startup=False)
        self.boot_items: dict[BootItem, bytes] = {item: b"" for item in BootItem}
        self.event_log = b""  # the log the guest handed over last, as it sent it
        self._log_part = bytearray()
        self.commands = 0  # TPM commands the guest sent

    @property
    def state_dir(self) -> str:
        """Where swtpm keeps this TPM's NV state."""
        return str(self.tpm.state_dir)

    def hypercall(self, mem: GuestPhysical, nr: int, args: tuple[int, ...]) -> int:
        """Serve one SEVSIM_HC_TPM_* exit; CHANNEL_ERROR for what the device refuses.
        VtpmError (the VM must stop) when swtpm is gone."""
        if nr == SEVSIM_HC_TPM_BOOT_READ:
            return boot_read(mem, self.boot_items, args)
        gpa, length, third = args[0], args[1], args[2]
        if gpa % PAGE:
            return CHANNEL_ERROR
        try:
            if nr == SEVSIM_HC_TPM_TRANSMIT:
                return self._transmit(mem, gpa, length)
            return self._event_log(mem, gpa, length, bool(third))
        except MemoryAccessError:  # a page the host may not touch
            return CHANNEL_ERROR

    def _transmit(self, mem: GuestPhysical, gpa: int, length: int) -> int:
        if length == PROBE:
            return 0
        if length > BUFFER_SIZE:
            return CHANNEL_ERROR
        command = mem.read_gpa(gpa, length)
        if framing_error(command) is not None:
            return CHANNEL_ERROR
        self.commands += 1
        response = self.tpm.transmit(command)
        if framing_error(response) is not None:
            raise VtpmError(f"{self.tpm.program} (pid {self.tpm.pid}): a "
                            f"{len(response)}-byte response the channel cannot carry")
        mem.write_gpa(gpa, response)
        return len(response)

    def _event_log(self, mem: GuestPhysical, gpa: int, length: int, more: bool) -> int:
        if length > PAGE or len(self._log_part) + length > MAX_EVENT_LOG:
            self._log_part.clear()
            return CHANNEL_ERROR
        self._log_part += mem.read_gpa(gpa, length)
        if not more:
            self.event_log = bytes(self._log_part)
            self._log_part.clear()
        return 0

    def stop(self) -> VtpmError | None:
        """TPM2_Shutdown(TPM_SU_STATE), then stop swtpm and remove its sockets; safe to call
        twice. Returns the VtpmError when swtpm had died before it could save its state (its
        directory then holds what it last wrote), None otherwise."""
        if self.tpm.stopped:
            return None
        failure = self.tpm.died()
        if failure is None:
            try:
                tpm2.parse_shutdown_response(self.tpm.execute(
                    tpm2.shutdown_command(tpm2.Su.STATE)))
            except (TpmError, TpmFormatError):
                pass  # no TPM2_Startup yet (TPM_RC_INITIALIZE): nothing to save
            except VtpmError as err:
                failure = err
        self.tpm.close()
        return failure
