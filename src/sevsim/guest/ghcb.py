"""The guest kernel's side of the GHCB protocol (SEV-ES), as Linux's sev-shared.c does it.

Before a GHCB exists the kernel talks to the hypervisor through the GHCB MSR alone (protocol
negotiation, CPUID, GHCB registration); afterwards each #VC copies exactly the registers the
event needs into this vCPU's GHCB page, issues VMGEXIT and copies the answer back. Nothing the
hypervisor writes is trusted: an answer that is missing a field, names an error, or does not
fit the request ends the VM with a typed GuestFault (after a termination request, as Linux
does) instead of feeding the guest made-up values.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from sevsim.abi.cpuid import SevStatusMsr
from sevsim.abi.ghcb import (
    DEFAULT_USAGE,
    PAGE_SIZE,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    PSC_MAX_ENTRIES,
    RESULT_ERROR,
    RESULT_EXCEPTION,
    RESULT_OK,
    SHARED_BUFFER_OFFSET,
    SHARED_BUFFER_SIZE,
    TERM_GENERAL_REQUEST,
    TERM_LINUX_REGISTER,
    TERM_PROTOCOL_UNSUPPORTED,
    TERM_SET_GENERAL,
    TERM_SET_LINUX,
    CpuidReg,
    Ghcb,
    GhcbError,
    MsrCode,
    PscEntry,
    VmgexitEvent,
    cpuid_request,
    msr_code,
    msr_gfn,
    pack_psc,
    parse_sev_info,
    psc_request,
    reg_gpa_request,
    term_request,
    unpack_psc,
)
from sevsim.abi.svm import EVTINJ_VALID, EVTINJ_VECTOR_MASK, VECTOR_GP
from sevsim.errors import GuestFault
from sevsim.hw.cpu import GuestCpu

CPUID_MEM_ENCRYPT = 0x8000_001F


TERM_PSC = 1  # GHCB_TERM_PSC in the general reason set (sev-common.h)


def snp_active(cpu: GuestCpu) -> bool:
    """SEV-SNP, as SEV_STATUS says."""
    return bool(cpu.sev_status() & SevStatusMsr.SNP)


def encrypted_state(cpu: GuestCpu) -> bool:
    """SEV-ES or later: SEV_STATUS, which the hardware answers and no hypervisor can fake."""
    return bool(cpu.sev_status() & SevStatusMsr.SEV_ES)


class GhcbClient:
    """One VM's GHCBs: page `ghcb_gpa + index * 4 KiB` for vCPU `index`; the negotiated
    protocol version is kept in guest memory at `version_gpa`, so a kernel that resumes the
    VM (after a migration) finds it there."""

    def __init__(self, ghcb_gpa: int, version_gpa: int) -> None:
        self.ghcb_gpa = ghcb_gpa
        self.version_gpa = version_gpa
        self._version = 0

    # -- boot --------------------------------------------------------------------------------
    def negotiate(self, cpu: GuestCpu) -> int:
        """SEV_INFO over the MSR protocol: pick the highest version both sides speak, and check
        the hypervisor's C-bit position against its own CPUID answer. Returns the C-bit."""
        info = self.msr_protocol(cpu, MsrCode.SEV_INFO_REQ, MsrCode.SEV_INFO_RESP)
        hv_max, hv_min, c_bit = parse_sev_info(info)
        if hv_max < PROTOCOL_MIN or hv_min > PROTOCOL_MAX or hv_min > hv_max:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_PROTOCOL_UNSUPPORTED,
                           f"hypervisor speaks GHCB protocol {hv_min}..{hv_max}, the guest "
                           f"{PROTOCOL_MIN}..{PROTOCOL_MAX}")
        self._version = min(hv_max, PROTOCOL_MAX)
        cpu.write(self.version_gpa, struct.pack("<Q", self._version))
        ebx = self.cpuid_msr(cpu, CPUID_MEM_ENCRYPT, CpuidReg.EBX)
        if ebx & 0x3F != c_bit:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor's SEV_INFO names C-bit {c_bit}, its CPUID {ebx & 0x3F}")
        return c_bit

    def cpuid_msr(self, cpu: GuestCpu, function: int, reg: CpuidReg) -> int:
        """One CPUID register through the MSR protocol (no GHCB needed)."""
        return self.msr_protocol(cpu, cpuid_request(function, reg), MsrCode.CPUID_RESP) >> 32

    def register(self, cpu: GuestCpu) -> None:
        """Register this vCPU's GHCB with the hypervisor and point the GHCB MSR at it."""
        gfn = self.page(cpu) // PAGE_SIZE
        answer = self.msr_protocol(cpu, reg_gpa_request(gfn), MsrCode.REG_GPA_RESP)
        if msr_gfn(answer) != gfn:
            self.terminate(cpu, TERM_SET_LINUX, TERM_LINUX_REGISTER,
                           f"hypervisor registered GHCB GFN 0x{msr_gfn(answer):x}, "
                           f"not 0x{gfn:x}")
        cpu.write_ghcb_msr(self.page(cpu))

    def page(self, cpu: GuestCpu) -> int:
        """GPA of this vCPU's GHCB page."""
        return self.ghcb_gpa + cpu.index * PAGE_SIZE

    # -- the MSR protocol --------------------------------------------------------------------
    def msr_protocol(self, cpu: GuestCpu, request: int, answer: MsrCode) -> int:
        """Send a request in the GHCB MSR and return the response, which must carry `answer`;
        the MSR gets its previous value back afterwards (Linux does the same)."""
        saved = cpu.read_ghcb_msr()
        cpu.write_ghcb_msr(request)
        if not cpu.vmgexit():
            raise GuestFault(f"vCPU {cpu.index}: the hypervisor stopped the VM at GHCB MSR "
                             f"request 0x{msr_code(request):03x}")
        response = cpu.read_ghcb_msr()
        cpu.write_ghcb_msr(saved)
        if msr_code(response) != answer:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor answered GHCB MSR request 0x{msr_code(request):03x} "
                           f"with 0x{response:x}")
        return response

    def terminate(self, cpu: GuestCpu, reason_set: int, reason: int, why: str,
                  error: type[GuestFault] = GuestFault) -> NoReturn:
        """Ask the hypervisor to end the VM, then stop this vCPU with the reason."""
        cpu.write_ghcb_msr(term_request(reason_set, reason))
        cpu.vmgexit()
        raise error(f"vCPU {cpu.index}: guest kernel terminated the VM: {why}")

    # -- page state changes (SEV-SNP) --------------------------------------------------------
    def psc_msr(self, cpu: GuestCpu, gfn: int, operation: int) -> None:
        """One page's state change through the MSR protocol (before the GHCB is usable)."""
        answer = self.msr_protocol(cpu, psc_request(gfn, operation), MsrCode.PSC_RESP)
        if answer >> 32:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_PSC,
                           f"hypervisor refused the state change of GFN 0x{gfn:x}: "
                           f"error 0x{answer >> 32:x}")

    def psc(self, cpu: GuestCpu, first_gfn: int, npages: int, operation: int) -> None:
        """State changes through the PSC NAE event, up to 253 pages a request; the
        hypervisor must report every entry done."""
        for start in range(first_gfn, first_gfn + npages, PSC_MAX_ENTRIES):
            stop = min(start + PSC_MAX_ENTRIES, first_gfn + npages)
            entries = [PscEntry(gfn, operation) for gfn in range(start, stop)]
            scratch, _ = self.scratch(cpu)
            desc = pack_psc(0, len(entries) - 1, entries)
            answer = self.call(cpu, VmgexitEvent.PSC, 0, 0, {"sw_scratch": scratch}, (),
                               f"page state change of {len(entries)} pages", shared=desc)
            if answer is None:
                raise GuestFault(f"vCPU {cpu.index}: the hypervisor stopped the VM at a "
                                 "page state change")
            cur, _, _ = unpack_psc(cpu.read(scratch, len(desc)))
            if answer.get("sw_exit_info_2", 0) or cur != len(entries):
                self.terminate(cpu, TERM_SET_GENERAL, TERM_PSC,
                               f"hypervisor did {cur} of {len(entries)} page state changes "
                               f"(error 0x{answer.get('sw_exit_info_2', 0):x})")

    # -- full-page requests ------------------------------------------------------------------
    def call(self, cpu: GuestCpu, exit_code: int, info1: int, info2: int,
             inputs: dict[str, int], outputs: tuple[str, ...], what: str,
             shared: bytes = b"") -> dict[str, int] | None:
        """One NAE event: `inputs` (and `shared` in the shared buffer) are all the hypervisor
        gets to see; the answer must hold every name in `outputs`. None if the hypervisor
        stopped the VM instead of answering."""
        gpa = self.page(cpu)
        save = {**inputs, "sw_exit_code": exit_code, "sw_exit_info_1": info1,
                "sw_exit_info_2": info2}
        cpu.write(gpa, Ghcb(save, shared, self.version(cpu), DEFAULT_USAGE).to_bytes())
        cpu.write_ghcb_msr(gpa)
        if not cpu.vmgexit():
            return None
        answer = Ghcb.from_bytes(cpu.read(gpa, PAGE_SIZE)).save
        if "sw_exit_info_1" not in answer:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor left SW_EXITINFO1 invalid answering {what}")
        result, event = answer["sw_exit_info_1"] & 0xFFFF_FFFF, answer.get("sw_exit_info_2", 0)
        if result == RESULT_EXCEPTION and event & EVTINJ_VALID:
            vector = event & EVTINJ_VECTOR_MASK
            name = "#GP" if vector == VECTOR_GP else f"exception vector {vector}"
            raise GuestFault(f"vCPU {cpu.index}: {name}: {what}")
        if result == RESULT_ERROR:
            try:
                error = GhcbError(event).name
            except ValueError:
                error = f"0x{event:x}"
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor refused {what}: GHCB error {error}")
        if result != RESULT_OK:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor answered {what} with SW_EXITINFO1 0x{result:x}")
        missing = [name for name in outputs if name not in answer]
        if missing:
            self.terminate(cpu, TERM_SET_GENERAL, TERM_GENERAL_REQUEST,
                           f"hypervisor's answer to {what} lacks {', '.join(missing)}")
        return answer

    def version(self, cpu: GuestCpu) -> int:
        """The GHCB protocol version negotiated at boot (read back from guest memory after a
        migration)."""
        if not self._version:
            self._version = struct.unpack("<Q", cpu.read(self.version_gpa, 8))[0]
        return self._version

    def scratch(self, cpu: GuestCpu) -> tuple[int, int]:
        """(GPA, size) of this vCPU's shared buffer, for string I/O."""
        return self.page(cpu) + SHARED_BUFFER_OFFSET, SHARED_BUFFER_SIZE

