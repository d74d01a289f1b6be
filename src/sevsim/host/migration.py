"""Migrating a paused VM to another host: both hypervisors and VMMs, as KVM and QEMU do it.

The source streams the guest through its firmware: SEND_START to the target's PDH, then
SEND_UPDATE_DATA over every private page its NPT maps (and SEND_UPDATE_VMSA over each vCPU's
save area under SEV-ES), SEND_FINISH. The target creates a VM of the same shape and receives
it: RECEIVE_START, RECEIVE_UPDATE_DATA into the host frames of the VM's memory slots (its
NPT maps them only once the whole guest is there, as KVM fills its NPT on first touch),
RECEIVE_FINISH; then the VM runs on. Private pages and SEV-ES registers cross the wire as
ciphertext under the transport key; pages the guest shares, the registers of a plain SEV
guest (its VMCB save area is the hypervisor's to read) and the devices go as the host sees
them, as in KVM.

The stream is a sequence of records (kind u8, length u32, payload) that the caller may watch
or change through `tap`. `migrate` pipes one host into the other record by record: a record
the target refuses stops the migration, the source firmware cancels the send (SEND_CANCEL)
and the source VM is left paused and runnable. After SEND_FINISH there is no way back: once
the target has accepted the whole stream the source VM is destroyed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from enum import IntEnum
from functools import partial

import numpy as np

from sevsim.abi.sev_session import PACKET_HEADER_SIZE, SESSION_SIZE
from sevsim.abi.status import GuestState
from sevsim.errors import SevsimError, VmStateError
from sevsim.firmware.transport import MEASURE_SIZE, TransportPacket
from sevsim.guest.kernel import GuestKernel
from sevsim.host.machine import Host
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.chips import GuestMode
from sevsim.hw.cpu import Vcpu, VcpuRunState, VcpuState
from sevsim.hw.engine import PAGE
from sevsim.hw.npt import NOT_PRESENT

CHUNK_PAGES = 512  # packets never cross a 2 MiB guest-physical boundary (a huge page)
_RECORD = struct.Struct("<BI")
_START = struct.Struct("<16sQII")  # mode, memory size, vCPUs, policy; then PDH and session
_PAGES = struct.Struct("<Q")  # GPA; then the packet header and its data, or plain bytes
_VCPU = struct.Struct("<IB?QI")  # index, state, reset pending, GHCB MSR, MSR intercept sites
_DEVICES = struct.Struct("<?qIII")  # stopped, exit code (-1: none), counts of MSRs, shared
#                                     pages and GHCBs; then those, then the console bytes
_STATES = tuple(VcpuState)


class MigrationError(SevsimError):
    """The stream cannot be taken: malformed, out of order, or the target cannot place it."""


class Record(IntEnum):
    """Kinds of record in a migration stream, in the order they come."""

    START = 1  # shape of the VM; SEV: policy, source PDH certificate, session
    C_BITS = 2  # the guest page tables' C-bits (on hardware they travel in its memory)
    PAGES = 3  # SEV: a packet of private pages, ciphertext under the TEK
    PLAIN = 4  # pages as the host reads them: shared pages, or all of a plain VM
    VCPU = 5  # one vCPU's registers from the VMCB save area (none, sev)
    VMSA = 6  # SEV-ES: one vCPU's save area, ciphertext under the TEK (SEND_UPDATE_VMSA)
    DEVICES = 7  # console so far, exit code, MSRs, shared pages, registered GHCBs
    FINISH = 8  # SEV: SEND_FINISH's measure


Tap = Callable[[bytes], bytes]
# What may come after each stage of the stream (the receiver's `expected`).
_FOLLOWS = {Record.START: (Record.START,), Record.C_BITS: (Record.C_BITS,),
            Record.PAGES: (Record.PAGES, Record.PLAIN, Record.VCPU, Record.VMSA),
            Record.VCPU: (Record.VCPU, Record.VMSA, Record.DEVICES),
            Record.DEVICES: (Record.DEVICES,), Record.FINISH: (Record.FINISH,)}


def migrate(vm: VirtualMachine, target: Host, *, tap: Tap | None = None) -> VirtualMachine:
    """Move a launched, paused VM to `target`; return the VM there, ready to run on.

    `tap` sees every record of the stream and returns what the target gets (to record the
    stream, or to tamper with it). On any refusal the target's half-built VM is destroyed,
    the source VM stays (paused, runnable if the send had not finished) and the error is
    raised. A VM with a vTPM is refused: the stream does not carry the TPM's state; so is
    one with boot data files, which its kernel keeps outside the guest memory the stream
    carries."""
    if vm.vtpm is not None:
        raise MigrationError("the VM has a vTPM, whose state the migration stream does not "
                             "carry (yet): it stays where it is")
    if vm.boot_disk.files:
        raise MigrationError("the VM has boot data files, which its kernel keeps where the "
                             "migration stream does not reach (yet): it stays where it is")
    sender = _Sender(vm, target)
    receiver = _Receiver(target)
    try:
        for record in sender.records():
            receiver.take(tap(record) if tap else record)
        migrated = receiver.finish()
    except BaseException:
        receiver.abandon()
        sender.cancel()
        raise
    vm.destroy()  # SENT: the guest lives on the target now
    return migrated


def _record(kind: Record, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return _RECORD.pack(kind, len(payload)) + payload


def _split(record: bytes) -> tuple[Record, bytes]:
    if len(record) < _RECORD.size:
        raise MigrationError("truncated record header")
    kind, length = _RECORD.unpack_from(record)
    if len(record) != _RECORD.size + length:
        raise MigrationError(f"record of {len(record) - _RECORD.size} bytes says {length}")
    try:
        return Record(kind), record[_RECORD.size:]
    except ValueError:
        raise MigrationError(f"unknown record kind {kind}") from None


# -- the source: hypervisor and VMM ----------------------------------------------------------


class _Sender:
    def __init__(self, vm: VirtualMachine, target: Host) -> None:
        if not vm.launched:
            raise VmStateError("only a launched VM can be migrated")
        if vm.hv.mode is GuestMode.SNP:
            raise VmStateError("SNP migration (migration agent, SNP_PAGE_MOVE) is not "
                               "modelled yet")
        if vm.hv.destroyed:
            raise VmStateError(f"VM {vm.hv.vm_id} was destroyed")
        self.vm = vm
        self.target = target
        self.hypervisor = vm.hypervisor
        self.firmware = vm.hypervisor.firmware
        self.handle = vm.hv.firmware_handle
        self.encrypted = vm.hv.mode.encrypted

    def records(self) -> Iterator[bytes]:
        yield self._start()
        ram = self.vm.memory_size // PAGE
        c_bits = self.hypervisor.private_pages(self.vm.hv)
        yield _record(Record.C_BITS, np.packbits(c_bits).tobytes())
        for gpn, count, private in self._runs(ram):
            gpa = gpn * PAGE
            if private:
                spa = self.hypervisor.gpa_to_spa(self.vm.hv, gpa)
                packet = self.firmware.send_update_data(self.handle, spa, count * PAGE)
                yield _record(Record.PAGES, _PAGES.pack(gpa), packet.header, packet.data)
            else:
                yield _record(Record.PLAIN, _PAGES.pack(gpa),
                              self.hypervisor.read_gpa(self.vm.hv, gpa, count * PAGE))
        for vcpu in self.vm.hv.vcpus:
            if vcpu.vmcb.save_area_readable:
                yield _record(Record.VCPU, _vcpu_header(vcpu), vcpu.save_context())
            else:  # SEV-ES: the registers are in the VMSA, which only the firmware may move
                assert vcpu.vmsa_spa is not None  # the hypervisor gives every ES vCPU one
                packet = self.firmware.send_update_vmsa(self.handle, vcpu.vmsa_spa, PAGE)
                yield _record(Record.VMSA, _vcpu_header(vcpu), packet.header, packet.data)
        yield self._devices()
        measure = self.firmware.send_finish(self.handle) if self.encrypted else b""
        yield _record(Record.FINISH, measure)

    def _start(self) -> bytes:
        shape = (self.vm.mode.encode(), self.vm.memory_size, len(self.vm.hv.vcpus))
        if not self.encrypted:
            return _record(Record.START, _START.pack(*shape, 0))
        pdh, chain = self.target.firmware.pdh_cert_export()  # what the target's VMM ships
        ark, ask = self.target.firmware.amd_certs()
        start = self.firmware.send_start(self.handle, pdh.to_bytes(), chain.to_bytes(),
                                         ask + ark)
        own_pdh = self.firmware.pdh_cert_export()[0].to_bytes()
        return _record(Record.START, _START.pack(*shape, start.policy), own_pdh, start.session)

    def _runs(self, ram: int) -> Iterator[tuple[int, int, bool]]:
        """(first page, count, private) of every mapped RAM page: runs that are contiguous in
        guest and host memory, of one kind, inside one 2 MiB chunk."""
        frames = self.vm.hv.npt.frames(0, ram)
        private = np.ones(ram, dtype=bool) if self.encrypted else np.zeros(ram, dtype=bool)
        shared = [g for g in self.vm.hv.shared_gpns if g < ram]
        private[shared] = False
        gpns = np.flatnonzero(frames != NOT_PRESENT)
        if not gpns.size:
            return
        breaks = np.flatnonzero((np.diff(gpns) != 1) | (np.diff(frames[gpns]) != 1)
                                | (np.diff(private[gpns]) != 0)
                                | (gpns[1:] % CHUNK_PAGES == 0)) + 1
        for run in np.split(gpns, breaks):
            yield int(run[0]), int(run.size), bool(private[run[0]])

    def _devices(self) -> bytes:
        """What KVM and QEMU keep of the VM besides memory and registers."""
        vm = self.vm
        msrs, ghcbs = sorted(vm.hv.msrs.items()), sorted(vm.hv.ghcb_gpas.items())
        shared = sorted(vm.hv.shared_gpns)
        return _record(Record.DEVICES,
                       _DEVICES.pack(vm.hv.stopped, -1 if vm.exit_code is None else vm.exit_code,
                                     len(msrs), len(shared), len(ghcbs)),
                       struct.pack(f"<{2 * len(msrs)}Q", *(v for kv in msrs for v in kv)),
                       struct.pack(f"<{len(shared)}Q", *shared),
                       struct.pack(f"<{2 * len(ghcbs)}Q", *(v for kv in ghcbs for v in kv)),
                       bytes(vm.console_bytes))

    def cancel(self) -> None:
        """After a refusal: SEND_CANCEL if the send had not finished, and the VM may run here
        again; after SEND_FINISH the guest is SENT and this host stops it for good."""
        if not self.encrypted or self.vm.hv.destroyed:
            return
        state = self.firmware.guest_status(self.handle).state
        if state is GuestState.SUPDATE:
            self.firmware.send_cancel(self.handle)
        elif state is GuestState.SENT:
            self.hypervisor.stop(self.vm.hv)


# -- the target: hypervisor and VMM ----------------------------------------------------------


class _Receiver:
    def __init__(self, target: Host) -> None:
        self.target = target
        self.hypervisor = target.hypervisor
        self.firmware = target.firmware
        self.vm: VirtualMachine | None = None
        self.handle = 0
        self.expected = Record.START
        self.restored: set[int] = set()  # vCPUs whose registers came
        self.done = False

    def take(self, record: bytes) -> None:
        kind, payload = _split(record)
        if kind not in _FOLLOWS[self.expected] or self.done:
            raise MigrationError(f"a {kind.name} record where {self.expected.name} belongs")
        handlers: dict[Record, Callable[[bytes], None]] = {
            Record.START: self._start, Record.C_BITS: self._c_bits, Record.PAGES: self._pages,
            Record.PLAIN: self._plain, Record.VCPU: partial(self._vcpu, kind=Record.VCPU),
            Record.VMSA: partial(self._vcpu, kind=Record.VMSA), Record.DEVICES: self._devices,
            Record.FINISH: self._finish}
        try:
            handlers[kind](payload)
        except struct.error as err:
            raise MigrationError(f"malformed {kind.name} record: {err}") from None

    def _vm(self) -> VirtualMachine:
        assert self.vm is not None  # the record order guarantees it
        return self.vm

    def _start(self, payload: bytes) -> None:
        if len(payload) < _START.size:
            raise MigrationError("truncated START record")
        mode, memory, vcpus, policy = _START.unpack_from(payload)
        vm = self.vm = self.target.create_vm(mode.rstrip(b"\0").decode(), memory, vcpus)
        # Until the guest is all here its vCPUs map none of its memory (KVM fills the NPT on
        # first touch): pages go in through the VM's memory slots, host frame by frame.
        self.hypervisor.npt_unmap(vm.hv, 0, vm.memory_size // PAGE)
        if vm.hv.mode.encrypted:
            pdh, session = payload[_START.size:-SESSION_SIZE], payload[-SESSION_SIZE:]
            self.handle = self.firmware.receive_start(policy, pdh, session)
            vm.hv.firmware_handle = self.handle
            self.firmware.activate(self.handle, vm.asid)
        self.expected = Record.C_BITS

    def _c_bits(self, payload: bytes) -> None:
        vm = self._vm()
        ram = vm.memory_size // PAGE
        if len(payload) != -(-ram // 8):
            raise MigrationError(f"C-bit map of {len(payload)} bytes for {ram} pages")
        c_bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:ram].astype(bool)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], c_bits, [0])).astype(np.int8)))
        for first, stop in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            vm.hypervisor.set_private(vm.hv, first, stop)
        self.expected = Record.PAGES

    def _pages(self, payload: bytes) -> None:
        vm = self._vm()
        if not vm.hv.mode.encrypted or len(payload) < _PAGES.size + PACKET_HEADER_SIZE:
            raise MigrationError("a PAGES record for a plain VM, or truncated")
        (gpa,) = _PAGES.unpack_from(payload)
        data = payload[_PAGES.size + PACKET_HEADER_SIZE:]
        packet = TransportPacket(payload[_PAGES.size:_PAGES.size + PACKET_HEADER_SIZE], data)
        self.firmware.receive_update_data(self.handle, packet, self._spa(gpa, len(data)))

    def _plain(self, payload: bytes) -> None:
        if len(payload) < _PAGES.size:
            raise MigrationError("truncated PLAIN record")
        (gpa,) = _PAGES.unpack_from(payload)
        data = payload[_PAGES.size:]
        self.hypervisor.write_spa(self._spa(gpa, len(data)), data)

    def _spa(self, gpa: int, length: int) -> int:
        """Where this host keeps [gpa, gpa+length) in its memory slots: one run of host
        memory, as a packet must land (the VM's memory comes in 2 MiB runs, like huge
        pages)."""
        vm = self._vm()
        if gpa % PAGE or length % PAGE or not length or gpa + length > vm.memory_size:
            raise MigrationError(f"packet for 0x{gpa:x}+0x{length:x} is not whole pages of RAM")
        frames = vm.hv.frames[gpa // PAGE:(gpa + length) // PAGE]
        if frames[-1] - frames[0] != frames.size - 1:
            raise MigrationError(f"GPA 0x{gpa:x}+0x{length:x} is not contiguous on this host")
        return int(frames[0]) * PAGE

    def _vcpu(self, payload: bytes, kind: Record) -> None:
        """A vCPU's run state, then its registers: the engine context from the VMCB save area
        (plain SEV), or the VMSA packet into the vCPU's VMSA page (SEV-ES), which its first
        VMRUN here loads."""
        vm = self._vm()
        vcpu, body = _restore_vcpu(vm.hv.vcpus, payload, self.restored)
        if (kind is Record.VMSA) == vcpu.vmcb.save_area_readable:
            raise MigrationError(f"a {kind.name} record for a {vm.mode} vCPU")
        if kind is Record.VCPU:
            try:
                vcpu.restore_context(body)
            except VmStateError as err:
                raise MigrationError(str(err)) from None
        else:
            assert vcpu.vmsa_spa is not None
            packet = TransportPacket(body[:PACKET_HEADER_SIZE], body[PACKET_HEADER_SIZE:])
            self.firmware.receive_update_vmsa(self.handle, packet, vcpu.vmsa_spa)
        self.restored.add(vcpu.index)
        self.expected = Record.VCPU

    def _devices(self, payload: bytes) -> None:
        vm = self._vm()
        if len(self.restored) != len(vm.hv.vcpus):
            raise MigrationError(f"registers of {len(self.restored)} of "
                                 f"{len(vm.hv.vcpus)} vCPUs came")
        if len(payload) < _DEVICES.size:
            raise MigrationError("truncated DEVICES record")
        stopped, exit_code, nmsrs, nshared, nghcbs = _DEVICES.unpack_from(payload)
        pos = _DEVICES.size
        msrs = struct.unpack_from(f"<{2 * nmsrs}Q", payload, pos)
        pos += 16 * nmsrs
        shared = struct.unpack_from(f"<{nshared}Q", payload, pos)
        pos += 8 * nshared
        ghcbs = struct.unpack_from(f"<{2 * nghcbs}Q", payload, pos)
        pos += 16 * nghcbs
        vm.hv.msrs = dict(zip(msrs[::2], msrs[1::2], strict=True))
        vm.hv.shared_gpns = set(shared)
        vm.hv.ghcb_gpas = dict(zip(ghcbs[::2], ghcbs[1::2], strict=True))
        vm.hv.stopped = stopped
        vm.exit_code = None if exit_code < 0 else exit_code
        vm.console_bytes[:] = payload[pos:]
        kernel = GuestKernel()  # it finds everything it knows in the guest's memory
        for vcpu in vm.hv.vcpus:
            vcpu.attach_guest(lambda _cpu: kernel)
        self.expected = Record.FINISH

    def _finish(self, payload: bytes) -> None:
        vm = self._vm()
        if vm.hv.mode.encrypted:
            if len(payload) != MEASURE_SIZE:
                raise MigrationError(f"FINISH record of {len(payload)} bytes")
            self.firmware.receive_finish(self.handle, payload)
        frames = vm.hv.frames
        cuts = (np.flatnonzero(np.diff(frames) != 1) + 1).tolist()
        for first, stop in zip([0, *cuts], [*cuts, frames.size], strict=True):
            self.hypervisor.npt_map(vm.hv, first * PAGE, int(frames[first]) * PAGE,
                                    stop - first)
        vm.launched = True
        self.done = True

    def finish(self) -> VirtualMachine:
        if not self.done:
            raise MigrationError("the stream ended before its FINISH record")
        return self._vm()

    def abandon(self) -> None:
        if self.vm is not None and not self.vm.hv.destroyed:
            self.vm.destroy()


# -- vCPU state: what KVM_GET/SET_REGS, SREGS, FPU, XSAVE, MSRS and the VMCB carry --------------


def _vcpu_header(vcpu: Vcpu) -> bytes:
    """A vCPU's run state, its GHCB MSR (SEV-ES; the VMCB keeps it for the host) and the
    addresses where the MSR intercept is armed; its registers follow."""
    saved = vcpu.run_state()
    sites = saved.msr_sites
    return (_VCPU.pack(vcpu.index, _STATES.index(saved.state), saved.needs_reset,
                       saved.ghcb_msr, len(sites))
            + struct.pack(f"<{len(sites)}Q", *sites))


def _restore_vcpu(vcpus: list[Vcpu], payload: bytes, done: set[int]) -> tuple[Vcpu, bytes]:
    """Apply a vCPU header to its vCPU; returns the vCPU and the register bytes after it."""
    if len(payload) < _VCPU.size:
        raise MigrationError("truncated vCPU record")
    index, state, reset, ghcb, nsites = _VCPU.unpack_from(payload)
    if index >= len(vcpus) or index in done or state >= len(_STATES):
        raise MigrationError(f"vCPU record for vCPU {index} in state {state}")
    vcpu = vcpus[index]
    sites = struct.unpack_from(f"<{nsites}Q", payload, _VCPU.size)
    vcpu.restore_run_state(VcpuRunState(_STATES[state], bool(reset), ghcb, sites))
    return vcpu, payload[_VCPU.size + 8 * nsites:]
