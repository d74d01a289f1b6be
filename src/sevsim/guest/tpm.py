"""The guest kernel's TPM driver and its measured boot (the firmware's and boot loader's part).

The driver talks to the VMM's vTPM through the command channel (abi/tpm_channel.py): one
shared page of the kernel's, a command in, a response back, each framed and checked here
before it is trusted. Measured boot does what a GCE Confidential VM's firmware and GRUB do
before the OS runs: TPM2_Startup(CLEAR), then one event per measurement in GCE's order
(tcg_eventlog.gce_boot), each extended into the SHA-256 and SHA-384 banks as it is logged.
It drives any `Tpm`: the host's vTPM through the channel, and under SEV-SNP the SNP-bound
vTPM too, so both measure the same events and the one log describes either.
The program and its command line come from the host (as a boot loader reads them from the
host's disk); the program file is measured only after its loadable segments were found to be
exactly what was launched into memory, so PCR 4 names the program that runs. Boot data files
(an initrd's part) are read once into the kernel's private memory, and those very bytes are
what PCR 9 measures and what the program reads (sev_boot_file): never read twice from the host.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from sevsim.abi import tpm2
from sevsim.abi.bootinfo import BootInfo
from sevsim.abi.cpuid import SevStatusMsr
from sevsim.abi.svm import (
    SEVSIM_HC_TPM_BOOT_READ,
    SEVSIM_HC_TPM_EVENT_LOG,
    SEVSIM_HC_TPM_TRANSMIT,
)
from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, SpecIdEvent, gce_boot
from sevsim.abi.tpm2 import RETRY_CODES, HashAlg, response_code
from sevsim.abi.tpm_channel import (
    CHANNEL_ERROR,
    MAX_BOOT_FILE_NAME,
    MAX_BOOT_FILE_SIZE,
    MAX_BOOT_FILES,
    PAGE,
    PROBE,
    BootItem,
    boot_arg,
    boot_file_name_error,
    framing_error,
)
from sevsim.errors import GuestFault, LibtpmsError, SevsimError, TpmError, TpmFormatError
from sevsim.guest.secure_boot import Verdict, authority
from sevsim.hw.cpu import GuestCpu

BANKS = (HashAlg.SHA256, HashAlg.SHA384)
PROGRAM_PATH = "\\EFI\\sevsim\\program.elf"  # where the boot loader's log says it came from
BOOT_FILE_DIR = "/boot/"  # GRUB's PCR 9 events name a data file by this path and its name
_RETRIES = 10


class Tpm(Protocol):
    """What measured boot drives: a TPM 2.0 that answers a command with its response."""

    def execute(self, command: bytes) -> bytes:
        """Run one command; its response."""
        ...


class ChannelError(SevsimError):
    """The VMM refused a channel call or answered with bytes that are no TPM response."""


class TpmChannel:
    """The command channel through the kernel's page at `gpa` (already shared)."""

    def __init__(self, cpu: GuestCpu, gpa: int) -> None:
        self.cpu = cpu
        self.gpa = gpa

    @staticmethod
    def present(cpu: GuestCpu) -> bool:
        """Whether the VMM offers a vTPM (the probe touches no memory)."""
        return cpu.vmmcall(SEVSIM_HC_TPM_TRANSMIT, 0, PROBE) == 0

    def transmit(self, command: bytes) -> bytes:
        """One command, its response; ChannelError when the VMM refuses or answers with
        bytes that are not one framed response. The page is wiped afterwards, so nothing
        lingers there longer than the exchange."""
        self.cpu.write(self.gpa, command.ljust(PAGE, b"\0"))
        length = self.cpu.vmmcall(SEVSIM_HC_TPM_TRANSMIT, self.gpa, len(command))
        response = self.cpu.read(self.gpa, min(length, PAGE))
        self.cpu.write(self.gpa, bytes(PAGE))
        if length > PAGE or framing_error(response) is not None:
            raise ChannelError(f"the VMM answered 0x{length:x}")
        return response

    def execute(self, command: bytes) -> bytes:
        """`transmit`, again while the TPM answers a retry warning (libtpms self-tests an
        algorithm on first use), as a TSS does."""
        for _ in range(_RETRIES):
            response = self.transmit(command)
            if response_code(response) not in RETRY_CODES:
                break
            time.sleep(0.001)
        return response

    def boot_read(self, item: BootItem, limit: int, index: int = 0) -> bytes:
        """A whole boot item (of data file `index`) from the host, at most `limit` bytes
        (ChannelError past it)."""
        data = bytearray()
        while True:
            got = self.cpu.vmmcall(SEVSIM_HC_TPM_BOOT_READ, self.gpa, boot_arg(item, index),
                                   len(data))
            if got > PAGE or len(data) + got > limit:
                raise ChannelError(f"boot item {item.name}: the VMM answered 0x{got:x}")
            if not got:
                return bytes(data)
            data += self.cpu.read(self.gpa, got)

    def file_count(self) -> int:
        """How many data files the host offers (the call touches no memory)."""
        count = self.cpu.vmmcall(SEVSIM_HC_TPM_BOOT_READ, self.gpa, BootItem.FILE_COUNT, 0)
        if count == CHANNEL_ERROR or count > MAX_BOOT_FILES:
            raise ChannelError(f"boot files: the VMM answered 0x{count:x}")
        return count

    def boot_files(self, count: int) -> list[tuple[str, bytes]]:
        """The host's `count` data files, each read once, checked against the channel's
        limits (ChannelError otherwise)."""
        files = []
        for index in range(count):
            raw = self.boot_read(BootItem.FILE_NAME, MAX_BOOT_FILE_NAME, index)
            name = raw.decode("ascii", "replace")
            if (why := boot_file_name_error(name)) is not None:
                raise ChannelError(f"boot file {index}'s name: {why}")
            files.append((name, self.boot_read(BootItem.FILE_DATA, MAX_BOOT_FILE_SIZE, index)))
        return files

    def hand_over_log(self, log: bytes) -> None:
        """Give the VMM the event log, a page at a time (it is public)."""
        for start in range(0, max(len(log), 1), PAGE):
            chunk = log[start:start + PAGE]
            self.cpu.write(self.gpa, chunk)
            if self.cpu.vmmcall(SEVSIM_HC_TPM_EVENT_LOG, self.gpa, len(chunk),
                                int(start + PAGE < len(log))) != 0:
                raise ChannelError("the VMM refused the event log")
        self.cpu.write(self.gpa, bytes(PAGE))


SECURE_BOOT_OFF = {"SecureBoot": b"\x00"}  # GCE's firmware with Secure Boot off: no keys


def technology(sev_status: int) -> ConfidentialTechnology:
    """What NonHostInfo names, from the SEV_STATUS MSR, as firmware finds out what it runs
    on: from the CPU, not from the host."""
    for bit, tech in ((SevStatusMsr.SNP, ConfidentialTechnology.AMD_SEV_SNP),
                      (SevStatusMsr.SEV_ES, ConfidentialTechnology.AMD_SEV_ES),
                      (SevStatusMsr.SEV, ConfidentialTechnology.AMD_SEV)):
        if sev_status & bit:
            return tech
    return ConfidentialTechnology.NONE


def launched_mismatch(program: bytes, boot: BootInfo, cpu: GuestCpu) -> str | None:
    """Why the ELF file the host offered is not the program launched into memory (entry,
    PT_LOAD segments and their file bytes), or None when it is."""
    try:
        elf = ELFFile(io.BytesIO(program))
        entry = elf.header["e_entry"]
        loads = sorted((seg["p_paddr"] or seg["p_vaddr"], seg["p_filesz"], seg["p_memsz"],
                        seg["p_flags"], seg.data()) for seg in elf.iter_segments()
                       if seg["p_type"] == "PT_LOAD" and seg["p_memsz"])
    except (ELFError, ValueError, KeyError, EOFError) as err:  # what pyelftools raises
        return f"not an ELF file: {err}"
    if entry != boot.entry:
        return f"entry 0x{entry:x}, the launched program's is 0x{boot.entry:x}"
    launched = [(s.gpa, s.filesz, s.memsz, s.flags) for s in boot.segments]
    if [load[:4] for load in loads] != launched:
        return "its loadable segments are not the launched program's"
    for gpa, filesz, _, _, data in loads:
        if data != cpu.read(gpa, filesz):
            return f"the segment at 0x{gpa:x} differs from the launched bytes"
    return None


def extend_log(tpms: Sequence[Tpm], log: EventLog) -> None:
    """TPM2_Startup(CLEAR), then every event of `log` extended into each of `tpms`: what
    measuring the boot leaves in a TPM. TpmError/TpmFormatError/LibtpmsError when one refuses."""
    for tpm in tpms:
        tpm2.parse_startup_response(tpm.execute(tpm2.startup_command(tpm2.Su.CLEAR)))
    for event in log.events:
        digests = {int(alg): digest for alg, digest in event.digests.items()}
        for tpm in tpms:
            tpm2.parse_pcr_extend_response(tpm.execute(tpm2.pcr_extend_command(event.pcr,
                                                                               digests)))


def measured_boot(channel: TpmChannel, boot: BootInfo,
                  secure_boot: Mapping[str, bytes] = SECURE_BOOT_OFF,
                  verdict: Verdict | None = None,
                  files: list[tuple[str, bytes]] | None = None,
                  tpms: Sequence[Tpm] | None = None) -> bytes:
    """TPM2_Startup(CLEAR), then GCE's boot events (PCRs 0, 7, separators, 4, 8, and 9 for
    each of the data files `files` the kernel read, as GRUB names them at BOOT_FILE_DIR) measured
    into the SHA-256 and SHA-384 banks of each of `tpms` (default: the channel's vTPM) and
    logged; returns the event log, handed to the host when its vTPM measured it. The boot
    files come through `channel` either way. PCR 7 holds the
    Secure Boot variables and, when secure boot (`verdict`) let the program run, the db entry
    that verified it; a program it refused is not measured, as firmware does not load it.
    GuestFault when the TPM refuses or the channel fails: firmware that cannot measure does
    not boot on."""
    tpms = (channel,) if tpms is None else tpms
    try:
        program: bytes | None = None
        cmdline = ""
        if verdict is None or verdict.ok:
            program = channel.boot_read(BootItem.PROGRAM, boot.ram_size)
            if (mismatch := launched_mismatch(program, boot, channel.cpu)) is not None:
                raise ChannelError(f"the program file the host offered: {mismatch}")
            raw_cmdline = channel.boot_read(BootItem.CMDLINE, PAGE)
            if not raw_cmdline.isascii():
                raise ChannelError("the command line is not ASCII")
            cmdline = raw_cmdline.decode()
        log = gce_boot(technology(channel.cpu.sev_status()), secure_boot=secure_boot,
                       program=program, program_path=PROGRAM_PATH, cmdline=cmdline,
                       files=[(BOOT_FILE_DIR + name, data) for name, data in files or ()],
                       load_address=boot.segments[0].gpa, spec_id=SpecIdEvent(banks=BANKS),
                       authority=None if verdict is None else authority(verdict))
        extend_log(tpms, log)
        raw = log.to_bytes()
        if channel in tpms:
            channel.hand_over_log(raw)
    except (ChannelError, TpmError, TpmFormatError, LibtpmsError) as err:
        raise GuestFault(f"guest kernel: measured boot failed: {err}") from None
    return raw
