"""Debug access to guest memory through the firmware, as QEMU's gdbstub and monitor do under SEV.

The hypervisor cannot decrypt a private guest page; the firmware can, with the VM key, and
does so only when the guest owner's policy allows debugging: SEV and SEV-ES policies without
NODBG (DBG_DECRYPT / DBG_ENCRYPT, 16-byte blocks at a time), SNP policies with DEBUG
(SNP_DBG_DECRYPT / SNP_DBG_ENCRYPT, one whole 4 KiB page at a time, the guest's side checked
against the RMP). Either way the plaintext passes through a bounce page of host memory, wiped
afterwards, as KVM's `sev_dbg_crypt` does. Pages the guest shares with the host are plaintext
already and are accessed directly; a plain VM needs no firmware at all.
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
    """Guest memory in plaintext; FirmwareError POLICY_FAILURE if the policy forbids debugging
    (NODBG under SEV/SEV-ES, no DEBUG under SNP)."""
    if not vm.hv.mode.encrypted:
        return vm.read_gpa(gpa, length)
    handle = _handle(vm)
    hv = vm.hypervisor
    unit = _unit(vm)
    out = bytearray()
    with _bounce_page(hv) as bounce:
        for lo, hi in _page_pieces(gpa, length):
            if lo // PAGE in vm.hv.shared_gpns:
                out += vm.read_gpa(lo, hi - lo)
                continue
            start, stop = _span(lo, hi, unit)
            _decrypt(vm, handle, hv.gpa_to_spa(vm.hv, start), bounce, stop - start)
            out += hv.read_spa(bounce + lo - start, hi - lo)
    return bytes(out)


def debug_write(vm: VirtualMachine, gpa: int, data: bytes) -> None:
    """Write plaintext into guest memory; what the firmware's unit (a 16-byte block, an SNP
    page) covers beyond the data is read, patched and encrypted again."""
    if not vm.hv.mode.encrypted:
        vm.write_gpa(gpa, data)
        return
    handle = _handle(vm)
    hv = vm.hypervisor
    unit = _unit(vm)
    with _bounce_page(hv) as bounce:
        for lo, hi in _page_pieces(gpa, len(data)):
            piece = data[lo - gpa:hi - gpa]
            if lo // PAGE in vm.hv.shared_gpns:
                vm.write_gpa(lo, piece)
                continue
            start, stop = _span(lo, hi, unit)
            spa = hv.gpa_to_spa(vm.hv, start)
            if (start, stop) != (lo, hi):
                _decrypt(vm, handle, spa, bounce, stop - start)
            hv.write_spa(bounce + lo - start, piece)
            _encrypt(vm, handle, bounce, spa, stop - start)


def _decrypt(vm: VirtualMachine, handle: int, src: int, dst: int, length: int) -> None:
    fw = vm.hypervisor.firmware
    if vm.hv.mode is GuestMode.SNP:
        fw.snp_dbg_decrypt(handle, src, dst)  # always one page
    else:
        fw.dbg_decrypt(handle, src, dst, length)


def _encrypt(vm: VirtualMachine, handle: int, src: int, dst: int, length: int) -> None:
    fw = vm.hypervisor.firmware
    if vm.hv.mode is GuestMode.SNP:
        fw.snp_dbg_encrypt(handle, src, dst)
    else:
        fw.dbg_encrypt(handle, src, dst, length)


def _handle(vm: VirtualMachine) -> int:
    """The firmware's name for the guest: its handle, or under SNP its GCTX page address."""
    if not vm.hv.firmware_handle:
        raise VmStateError("the VM has no firmware context yet: launch it first")
    return vm.hv.firmware_handle


def _unit(vm: VirtualMachine) -> int:
    """What one firmware debug command covers: SNP's commands take whole pages."""
    return PAGE if vm.hv.mode is GuestMode.SNP else BLOCK


def _page_pieces(gpa: int, length: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) GPA ranges of at most one page each, covering [gpa, gpa + length)."""
    lo, end = gpa, gpa + length
    while lo < end:
        hi = min(end, (lo // PAGE + 1) * PAGE)
        yield lo, hi
        lo = hi


def _span(lo: int, hi: int, unit: int) -> tuple[int, int]:
    """The whole units (16-byte blocks or pages) covering [lo, hi)."""
    return lo & ~(unit - 1), (hi + unit - 1) & ~(unit - 1)


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
