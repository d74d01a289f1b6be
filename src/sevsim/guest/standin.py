"""The guest's side of attestation for an image that is launched but not executed.

`sevsim report --ovmf` launches an OVMF image as measured content; nothing inside runs, yet a
report must come from the guest, since only the guest holds VMPCK0. This stand-in does on the
boot vCPU what OVMF and Linux's sev-guest driver do: read the secrets page through the guest's
own (private) mapping, share a GHCB and message pages with the hypervisor (PVALIDATE rescind,
page state change, register), seal MSG_REPORT_REQ with VMPCK0 and the next sequence number,
send the extended guest request and open the answer. The hypervisor and the firmware see
exactly what they would see from a real guest; the VMPCK never leaves guest memory.
"""

from __future__ import annotations

import struct

from sevsim.abi.ghcb import PSC_SHARED, VMM_ERR_INVALID_LEN, VmgexitEvent
from sevsim.abi.snp_guest_msg import (
    MsgType,
    ReportRequest,
    SecretsPage,
    open_message,
    seal_message,
)
from sevsim.abi.snp_report import ReportResponse
from sevsim.abi.svm import ExitCode
from sevsim.errors import GuestFault, SnpFormatError
from sevsim.guest.ghcb import GhcbClient
from sevsim.hw.cpu import GuestCpu

PAGE = 4096
CERT_PAGES = 4  # room for the hypervisor's certificate table (VCEK, ASK, ARK)
SCRATCH_PAGES = 4 + CERT_PAGES  # version page, GHCB, request, response, certificates


class ReportingGuest:
    """A guest that only asks for reports. `secrets_gpa` is its secrets page (from the
    image's SEV metadata); `scratch_gpa` names SCRATCH_PAGES pages of RAM the image did not
    launch, which it takes for its GHCB protocol version, GHCB and message pages."""

    def __init__(self, cpu: GuestCpu, secrets_gpa: int, scratch_gpa: int) -> None:
        self._cpu = cpu
        self.secrets_gpa = secrets_gpa
        self._version_gpa = scratch_gpa
        self._ghcb_gpa = scratch_gpa + PAGE
        self._request_gpa = scratch_gpa + 2 * PAGE
        self._response_gpa = scratch_gpa + 3 * PAGE
        self._certs_gpa = scratch_gpa + 4 * PAGE
        self._ghcb = GhcbClient(self._ghcb_gpa, self._version_gpa)
        self._booted = False

    def on_reset(self, cpu: GuestCpu) -> None:
        """The image is launched, not executed: nothing boots on this vCPU."""
        raise GuestFault("this VM's firmware is launched as measured content, not executed")

    def on_syscall(self, cpu: GuestCpu) -> None:
        """Never reached: no program runs (see `on_reset`)."""
        self.on_reset(cpu)

    def on_vc(self, cpu: GuestCpu, code: ExitCode, info1: int) -> bool:
        """Never reached: no program runs (see `on_reset`)."""
        self.on_reset(cpu)
        return False

    def on_event(self, cpu: GuestCpu, vector: int, error_code: int) -> None:
        """Never reached: no program runs (see `on_reset`)."""
        self.on_reset(cpu)

    def report(self, report_data: bytes, vmpl: int = 0) -> tuple[bytes, bytes]:
        """An ATTESTATION_REPORT carrying `report_data` (64 bytes) and the certificate table
        the hypervisor returns beside it (untrusted: a verifier checks the chain)."""
        if len(report_data) != 64:
            raise GuestFault(f"REPORT_DATA is 64 bytes, not {len(report_data)}")
        self._boot()
        cpu = self._cpu
        secrets = SecretsPage.from_bytes(cpu.read(self.secrets_gpa, PAGE))
        key, seqno = secrets.vmpck[0], secrets.msg_seqno[0] + 1
        if not any(key):
            raise GuestFault("VMPCK0 was wiped: the guest may not send requests any more")
        request = seal_message(key, MsgType.REPORT_REQ, seqno,
                               ReportRequest(report_data, vmpl).to_bytes())
        cpu.write(self._request_gpa, request.ljust(PAGE, b"\0"))
        answer = self._ghcb.call(cpu, VmgexitEvent.EXT_GUEST_REQUEST, self._request_gpa,
                                 self._response_gpa,
                                 {"rax": self._certs_gpa, "rbx": CERT_PAGES}, (),
                                 "an SNP extended guest request")
        status = 0 if answer is None else answer.get("sw_exit_info_2", 0)
        if answer is None or status:
            reason = "stopped the VM" if answer is None else (
                "needs more certificate pages" if status == VMM_ERR_INVALID_LEN
                else f"refused it: 0x{status:x}")
            raise GuestFault(f"SNP guest request: the hypervisor {reason}")
        try:
            header, plain = open_message(key, cpu.read(self._response_gpa, PAGE))
            if header.seqno != seqno + 1 or header.msg_type is not MsgType.REPORT_RSP:
                raise SnpFormatError("MSG_SEQNO", f"{header.msg_type.name} #{header.seqno} "
                                     f"answers MSG_REPORT_REQ #{seqno}")
            response = ReportResponse.from_bytes(plain)
        except SnpFormatError as error:
            raise GuestFault(f"SNP guest request: bad answer: {error}") from None
        cpu.write(self.secrets_gpa + SecretsPage.seqno_offset(0), struct.pack("<I", seqno + 1))
        if response.status:
            raise GuestFault(f"the firmware refused the report: status 0x{response.status:x}")
        return response.report, cpu.read(self._certs_gpa, CERT_PAGES * PAGE)

    def _boot(self) -> None:
        """What firmware does before it can talk to the hypervisor: map the secrets page
        private, validate its own private page, negotiate the GHCB protocol, and share the
        GHCB (MSR protocol, before a GHCB exists) and the message pages."""
        if self._booted:
            return
        cpu, ghcb = self._cpu, self._ghcb
        cpu.set_c_bit(self.secrets_gpa, 1, private=True)
        cpu.pvalidate(self._version_gpa, 1, True)
        cpu.set_c_bit(self._version_gpa, 1, private=True, zero=True)
        ghcb.negotiate(cpu)
        ghcb.psc_msr(cpu, self._ghcb_gpa // PAGE, PSC_SHARED)
        cpu.set_c_bit(self._ghcb_gpa, 1, private=False, zero=True)
        ghcb.register(cpu)
        shared = SCRATCH_PAGES - 2
        ghcb.psc(cpu, self._request_gpa // PAGE, shared, PSC_SHARED)
        cpu.set_c_bit(self._request_gpa, shared, private=False, zero=True)
        self._booted = True
