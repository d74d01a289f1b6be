"""Debug access to guest memory through the firmware, as QEMU's gdbstub and monitor do under SEV.

The hypervisor cannot decrypt a private guest page; the firmware can, with the VM key, and
does so only when the guest owner's policy allows debugging (no NODBG): DBG_DECRYPT and
DBG_ENCRYPT, 16-byte blocks at a time, through a bounce page of host memory as KVM's
`sev_dbg_crypt` does. Pages the guest shares with the host are plaintext already and are
accessed directly; a plain VM needs no firmware at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sevsim.errors import VmStateError
from sevsim.host.hypervisor import Hypervisor
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.chips import GuestMode
from sevsim.hw.engine import BLOCK, PAGE


def debug_read(vm: VirtualMachine, gpa: int, length: int) -> bytes:
    """Guest memory in plaintext; FirmwareError POLICY_FAILURE if the policy has NODBG."""
    if not vm.hv.mode.encrypted:
        return vm.read_gpa(gpa, length)
    handle = _handle(vm)
    hv = vm.hypervisor
    out = bytearray()
    with _bounce_page(hv) as bounce:
        for lo, hi in _page_pieces(gpa, length):
            if lo // PAGE in vm.hv.shared_gpns:
                out += vm.read_gpa(lo, hi - lo)
                continue
            start, stop = _blocks(lo, hi)
            hv.firmware.dbg_decrypt(handle, hv.gpa_to_spa(vm.hv, start), bounce, stop - start)
            out += hv.read_spa(bounce + lo - start, hi - lo)
    return bytes(out)


def debug_write(vm: VirtualMachine, gpa: int, data: bytes) -> None:
    """Write plaintext into guest memory; partial blocks are read, patched and re-encrypted."""
    if not vm.hv.mode.encrypted:
        vm.write_gpa(gpa, data)
        return
    handle = _handle(vm)
    hv = vm.hypervisor
    with _bounce_page(hv) as bounce:
        for lo, hi in _page_pieces(gpa, len(data)):
            piece = data[lo - gpa:hi - gpa]
            if lo // PAGE in vm.hv.shared_gpns:
                vm.write_gpa(lo, piece)
                continue
            start, stop = _blocks(lo, hi)
            spa = hv.gpa_to_spa(vm.hv, start)
            if (start, stop) != (lo, hi):
                hv.firmware.dbg_decrypt(handle, spa, bounce, stop - start)
            hv.write_spa(bounce + lo - start, piece)
            hv.firmware.dbg_encrypt(handle, bounce, spa, stop - start)


def _handle(vm: VirtualMachine) -> int:
    if not vm.hv.firmware_handle:
        raise VmStateError("the VM has no firmware context yet: launch it first")
    if vm.hv.mode is GuestMode.SNP:
        raise VmStateError("SNP_DBG_DECRYPT/ENCRYPT are not modelled yet")
    return vm.hv.firmware_handle


def _page_pieces(gpa: int, length: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) GPA ranges of at most one page each, covering [gpa, gpa + length)."""
    lo, end = gpa, gpa + length
    while lo < end:
        hi = min(end, (lo // PAGE + 1) * PAGE)
        yield lo, hi
        lo = hi


def _blocks(lo: int, hi: int) -> tuple[int, int]:
    """The 16-byte blocks covering [lo, hi): the firmware works on whole blocks."""
    return lo & ~(BLOCK - 1), (hi + BLOCK - 1) & ~(BLOCK - 1)


@contextmanager
def _bounce_page(hv: Hypervisor) -> Iterator[int]:
    """A page of host memory for the firmware's plaintext, wiped and freed afterwards."""
    frames = hv.allocate_host_pages(1)
    spa = int(frames[0]) * PAGE
    try:
        yield spa
    finally:
        hv.write_spa(spa, bytes(PAGE))
        hv.free_host_pages(frames)
