"""The SNP-bound vTPM: a TPM 2.0 (libtpms) that the guest kernel runs at VMPL0, as Coconut
SVSM runs its vTPM, so the host has no process, file or socket that holds its state.

Its whole state (seeds and NV indices, and the volatile state saved after every command:
PCRs, loaded objects) lives in private guest memory at the area the kernel gives it, written
through the vCPU's guest-physical view: the host reads only ciphertext there, and a kernel
that finds the area after a migration resumes the same TPM. Its attestation key is
bound into an SNP report requested at VMPL0 (sevsim.abi.svsm_vtpm.report_data), so a quote
verifies against the report only if this TPM made it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

from sevsim.abi import tpm2
from sevsim.abi.svsm_vtpm import NONCE_MAX, VtpmEvidence, report_data
from sevsim.errors import LibtpmsError, TpmError, TpmFormatError
from sevsim.guest.libtpms import PERMANENT, VOLATILE, TpmEngine
from sevsim.hw.cpu import GuestCpu

PAGE = 4096
# (offset, capacity) of each libtpms blob in the NV area; a slot starts with a u32 length + 1
# (0: no blob). libtpms 0.9's permanent state is ~1.3 KiB fresh and grows with NV indices up
# to its 128 KiB NV memory; the volatile state is ~9 KiB with a few objects loaded.
SLOTS = {PERMANENT: (0, 36 * PAGE), VOLATILE: (36 * PAGE, 28 * PAGE)}
NV_PAGES = 64
_LEN = struct.Struct("<I")
SHA256_PCRS = 24  # the bank the kernel's PCR calls use
ReportFn = Callable[[bytes], "bytes | int"]  # REPORT_DATA -> a VMPL0 report, or -errno


class GuestNvStore:
    """libtpms' named blobs in fixed slots of private guest memory at `gpa`. `cpu` is the
    vCPU whose guest view the TPM's current call runs on."""

    def __init__(self, cpu: GuestCpu, gpa: int) -> None:
        self.cpu = cpu
        self.gpa = gpa

    def _slot(self, name: str) -> tuple[int, int]:
        if name not in SLOTS:
            raise TpmFormatError("libtpms blob", f"no slot for {name!r}")
        offset, capacity = SLOTS[name]
        return self.gpa + offset, capacity

    def load(self, name: str) -> bytes | None:
        """The blob, or None while the slot is empty."""
        gpa, capacity = self._slot(name)
        (length,) = _LEN.unpack(self.cpu.read(gpa, _LEN.size))
        if not length:
            return None
        if length - 1 > capacity - _LEN.size:
            raise TpmFormatError("libtpms blob", f"{name} slot claims {length - 1} bytes")
        return self.cpu.read(gpa + _LEN.size, length - 1)

    def store(self, name: str, data: bytes) -> None:
        """Write the blob (libtpms learns of a blob too large as a failed NV write)."""
        gpa, capacity = self._slot(name)
        if len(data) > capacity - _LEN.size:
            raise TpmFormatError("libtpms blob", f"{name}: {len(data)} bytes, the slot "
                                                 f"holds {capacity - _LEN.size}")
        self.cpu.write(gpa, _LEN.pack(len(data) + 1) + data)

    def delete(self, name: str) -> None:
        """Empty the slot."""
        gpa, _ = self._slot(name)
        self.cpu.write(gpa, _LEN.pack(0))


class SvsmVtpm:
    """The VM's in-VM TPM: PCR extends and reads, and evidence (report + AK + quote) for a
    nonce. One per VM; each call names the vCPU it runs on."""

    def __init__(self, cpu: GuestCpu, gpa: int) -> None:
        self.nv = GuestNvStore(cpu, gpa)
        self.engine = TpmEngine(self.nv)

    def execute(self, cpu: GuestCpu, command: bytes) -> bytes:
        """Run a raw TPM command; malformed commands get the TPM's response code."""
        self.nv.cpu = cpu
        return self.engine.execute(command)

    def extend(self, cpu: GuestCpu, pcr: int, digests: Mapping[int, bytes]) -> None:
        """Extend `pcr` in each bank given (hash algorithm -> digest)."""
        tpm2.parse_pcr_extend_response(self.execute(cpu, tpm2.pcr_extend_command(pcr,
                                                                                  digests)))

    def pcr_read(self, cpu: GuestCpu,
                 selection: tpm2.PcrSelection) -> dict[int, dict[int, bytes]]:
        """The values of `selection`, 8 a call (the TPM's limit)."""
        values: dict[int, dict[int, bytes]] = {alg: {} for alg in selection}
        for alg, pcrs in selection.items():
            for start in range(0, len(pcrs), 8):
                got = tpm2.parse_pcr_read_response(self.execute(
                    cpu, tpm2.pcr_read_command({alg: list(pcrs[start:start + 8])})))
                values[alg].update(got.values.get(alg, {}))
        return values

    def evidence(self, cpu: GuestCpu, nonce: bytes, selection: tpm2.PcrSelection,
                 report: ReportFn) -> VtpmEvidence | int:
        """The AK (a primary of the endorsement hierarchy: the same key every time), an SNP
        report whose REPORT_DATA binds it to `nonce`, and its quote over `selection`
        qualified by the same nonce. -errno if the report cannot be had."""
        if not 0 < len(nonce) <= NONCE_MAX:
            raise TpmFormatError("nonce", f"{len(nonce)} bytes, 1..{NONCE_MAX} allowed")
        ak = tpm2.parse_create_primary_response(self.execute(
            cpu, tpm2.create_primary_command(tpm2.ecc_ak_template())))
        try:
            made = report(report_data(nonce, ak.public))
            if isinstance(made, int):
                return made
            attest, signature = tpm2.parse_quote_response(self.execute(
                cpu, tpm2.quote_command(ak.handle, nonce, selection)))
            pcrs = self.pcr_read(cpu, selection)
        finally:
            tpm2.parse_flush_context_response(self.execute(
                cpu, tpm2.flush_context_command(ak.handle)))
        return VtpmEvidence(made, ak.public, attest, signature, pcrs)


class OnCpu:
    """The vTPM as measured boot drives it (guest/tpm.py's Tpm): commands on one vCPU."""

    def __init__(self, vtpm: SvsmVtpm, cpu: GuestCpu) -> None:
        self.vtpm = vtpm
        self.cpu = cpu

    def execute(self, command: bytes) -> bytes:
        """Run one command on `cpu`."""
        return self.vtpm.execute(self.cpu, command)


def pcr_mask(mask: int) -> dict[int, Sequence[int]]:
    """The SHA-256 PCRs a 24-bit mask selects (the system call's PCR argument)."""
    return {tpm2.HashAlg.SHA256: [p for p in range(SHA256_PCRS) if mask >> p & 1]}


# What a system call that meets these returns: the TPM refused, the request was malformed,
# or the engine is not there.
FAILURES = (TpmError, TpmFormatError, LibtpmsError)
