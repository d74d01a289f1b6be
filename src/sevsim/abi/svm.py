"""AMD SVM exit codes and exit-information encodings (AMD APM vol. 2, Linux uapi/asm/svm.h),
plus the hypercall and port numbers sevsim's guests and VMM agree on."""

from __future__ import annotations

from enum import IntEnum

from sevsim.errors import FormatError


class ExitCode(IntEnum):
    """VMCB EXITCODE values for the intercepts sevsim models."""

    EXCP_UD = 0x46
    CPUID = 0x72
    HLT = 0x78
    IOIO = 0x7B
    MSR = 0x7C
    SHUTDOWN = 0x7F
    VMMCALL = 0x81
    NPF = 0x400
    VMGEXIT = 0x403
    PAGE_NOT_VALIDATED = 0x404  # a #VC error code only (APM vol. 2, 15.36.10), never an exit
    INVALID = -1  # SVM_EXIT_ERR: VMRUN refused the guest state (e.g. a VMSA failing its check)


# EXITINFO1 of an IOIO intercept.
IOIO_TYPE_IN = 1 << 0
IOIO_STR = 1 << 2
IOIO_REP = 1 << 3
IOIO_SZ8 = 1 << 4
IOIO_SZ16 = 1 << 5
IOIO_SZ32 = 1 << 6
IOIO_PORT_SHIFT = 16


def ioio_info(port: int, size: int, is_in: bool) -> int:
    """EXITINFO1 for a non-string IN/OUT of `size` bytes."""
    size_bit = {1: IOIO_SZ8, 2: IOIO_SZ16, 4: IOIO_SZ32}.get(size)
    if size_bit is None:
        raise FormatError(f"IN/OUT operand size {size} is not 1, 2 or 4 bytes")
    return port << IOIO_PORT_SHIFT | size_bit | (IOIO_TYPE_IN if is_in else 0)


def ioio_decode(info1: int) -> tuple[int, int, bool]:
    """(port, size, is_in) from EXITINFO1."""
    size = 1 if info1 & IOIO_SZ8 else 2 if info1 & IOIO_SZ16 else 4
    return info1 >> IOIO_PORT_SHIFT & 0xFFFF, size, bool(info1 & IOIO_TYPE_IN)


# EXITINFO1 of an NPF intercept (page-fault error code bits).
NPF_PRESENT = 1 << 0
NPF_WRITE = 1 << 1
NPF_USER = 1 << 2
NPF_FETCH = 1 << 4
NPF_RMP = 1 << 31  # SEV-SNP: the RMP check failed, not the NPT walk
NPF_VMPL = 1 << 36  # SEV-SNP: ... because of the VMPL permission masks (PFERR_GUEST_VMPL)

# EXITINFO1 of an MSR intercept.
MSR_READ = 0
MSR_WRITE = 1

# EVENTINJ / EXITINTINFO: an event to deliver to the guest.
EVTINJ_VECTOR_MASK = 0xFF
EVTINJ_TYPE_EXCEPTION = 3 << 8
EVTINJ_VALID = 1 << 31
VECTOR_GP = 13

# KVM hypercalls (VMMCALL, number in RAX, arguments in RBX, RCX, RDX, RSI).
KVM_HC_MAP_GPA_RANGE = 12
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
# sevsim's own: INIT-SIPI the application processor whose index is in RBX. The AP starts from
# its reset state; its guest kernel finds what to run in guest memory, where the BSP put it.
SEVSIM_HC_START_VCPU = 0x5E5000
# sevsim's host channel: the VMM copies up to RCX bytes of its input to the shared page at RBX
# (RAX = bytes copied), or takes RCX bytes from it as output, RDX = 1 while more of the same
# blob follows. Untrusted both ways: only public bytes (nonces, reports) belong on it.
SEVSIM_HC_HOST_INPUT = 0x5E5001
SEVSIM_HC_HOST_OUTPUT = 0x5E5002
# sevsim's virtual NIC (abi/vnic.py): SETUP registers the shared ring pages (RBX = GPA, RCX =
# pages; the host writes the URL it bridges to), CONNECT opens the VMM's TCP connection,
# KICK moves the TX slots to it and fills the RX slots from it, waiting up to RBX ms for
# data when there is none (RAX = LinkFlag), CLOSE ends the connection. RAX = 0 on success,
# all ones when the VMM has no NIC or refuses.
SEVSIM_HC_NIC_SETUP = 0x5E5003
SEVSIM_HC_NIC_CONNECT = 0x5E5004
SEVSIM_HC_NIC_KICK = 0x5E5005
SEVSIM_HC_NIC_CLOSE = 0x5E5006
# sevsim's vTPM command channel (abi/tpm_channel.py): TRANSMIT sends the command in the shared
# page at RBX (RCX bytes; 0 probes for the device) to the VMM's vTPM and puts its response
# there (RAX = response length); BOOT_READ copies part RDX.. of boot item RCX (the program,
# its command line) into the page; EVENT_LOG hands the VMM the measured boot's event log,
# RCX bytes a page at a time, RDX = 1 while more follows. RAX all ones: refused.
SEVSIM_HC_TPM_TRANSMIT = 0x5E5010
SEVSIM_HC_TPM_BOOT_READ = 0x5E5011
SEVSIM_HC_TPM_EVENT_LOG = 0x5E5012

# Ports of the VMM's devices.
SERIAL_PORT = 0x3F8
DEBUG_EXIT_PORT = 0x501  # a 32-bit OUT here ends the VM with that exit code
