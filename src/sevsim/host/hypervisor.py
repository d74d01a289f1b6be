"""A KVM-like hypervisor: frames, ASIDs, nested page tables, vCPUs and the run loop."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sevsim.abi.cpuid import SevFeatures
from sevsim.abi.ghcb import (
    AP_CREATE,
    DEFAULT_USAGE,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    PSC_PRIVATE,
    PSC_PSMASH,
    PSC_SHARED,
    RESULT_ERROR,
    RESULT_EXCEPTION,
    RESULT_OK,
    SHARED_BUFFER_OFFSET,
    SHARED_BUFFER_SIZE,
    VMM_ERR_BUSY,
    VMM_ERR_INVALID_LEN,
    Ghcb,
    GhcbError,
    MsrCode,
    VmgexitEvent,
    cpuid_response,
    msr_code,
    msr_gfn,
    parse_cpuid_request,
    parse_psc_request,
    parse_term_request,
    psc_response,
    psc_set_cur_entry,
    reg_gpa_response,
    sev_info,
    unpack_psc,
)
from sevsim.abi.snp_report import build_cert_table, parse_cert_table
from sevsim.abi.svm import (
    EVTINJ_TYPE_EXCEPTION,
    EVTINJ_VALID,
    IOIO_STR,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    MSR_WRITE,
    SEVSIM_HC_START_VCPU,
    VECTOR_GP,
    ExitCode,
    ioio_decode,
)
from sevsim.errors import (
    ConfigError,
    FirmwareError,
    GuestFault,
    GuestTimeout,
    MemoryAccessError,
    ResourceExhausted,
    RmpInstructionError,
    RmpViolation,
    SevsimError,
    VmStateError,
)
from sevsim.firmware.sev import SevFirmware
from sevsim.hw.chips import ChipPreset, GuestMode
from sevsim.hw.cpu import Vcpu, VcpuState, VmExit
from sevsim.hw.engine import PAGE
from sevsim.hw.memory import RAW, MemoryController
from sevsim.hw.mmu import GuestAddressSpace
from sevsim.hw.npt import NOT_PRESENT, NestedPageTable
from sevsim.hw.quantum import DEFAULT_QUANTUM, Quantum, now_ns
from sevsim.hw.rmp import RmpEntry

_RESERVED_FRAMES = 256  # the host kernel's own first MiB
_MAX_VCPUS = 64
_MAX_TIMEOUT_S = 10.0 ** 7  # longer is no limit at all; keeps the deadline a 64-bit count
_PSC_INVALID = 1  # a PSC for a page the hypervisor will not change (no such page, bad op)
_GUEST_MSRS = {0x10: 0, 0x1B: 0xFEE0_0900, 0xC000_0080: 0x500, 0xC001_0130: 0}

IoHandler = Callable[["HvVm", int, int, bool, int], int | None]
HypercallHandler = Callable[["HvVm", int, tuple[int, ...]], int | None]
NpfHandler = Callable[["HvVm", Vcpu, int, int], bool]
ExitObserver = Callable[["HvVm", Vcpu, VmExit], None]


@dataclass
class HvVm:
    """The hypervisor's record of one VM."""

    vm_id: int
    mode: GuestMode
    asid: int
    memory_size: int
    npt: NestedPageTable
    _space: GuestAddressSpace  # the SoC's side of the VM's memory: not the hypervisor's to touch
    frames: np.ndarray
    vcpus: list[Vcpu] = field(default_factory=list)
    firmware_handle: int = 0
    io_handler: IoHandler | None = None
    hypercall_handler: HypercallHandler | None = None
    npf_handler: NpfHandler | None = None
    exit_observer: ExitObserver | None = None  # sees every exit before KVM handles it
    skip_tlb_flush: bool = False  # leave out KVM's flush when another vCPU of the ASID ran
    shared_gpns: set[int] = field(default_factory=set)
    msrs: dict[int, int] = field(default_factory=lambda: dict(_GUEST_MSRS))
    vmsa_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rom_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # flash
    gctx_frame: int = -1  # SEV-SNP: the page the firmware holds the guest context in
    ghcb_gpas: dict[int, int] = field(default_factory=dict)  # vCPU index -> registered GHCB
    termination: tuple[int, int] | None = None  # (reason set, code) the guest asked to stop with
    request_tokens: float = 0.0  # guest-request throttling: what the VM may still send now
    request_clock: float = 0.0
    busy_answers: int = 0  # guest requests answered BUSY
    # the VMM's own certificate-table entries, after the firmware's (a GCE host's launch
    # endorsement): KVM lets the VMM supply a VM's certificate data
    vmm_certs: list[tuple[uuid.UUID, bytes]] = field(default_factory=list)
    stopped: bool = False
    destroyed: bool = False


class Hypervisor:
    """Owns host memory allocation and every VM's NPT; runs vCPUs; handles their exits."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, firmware: SevFirmware) -> None:
        self.chip = chip
        self._memory = memory
        self.firmware = firmware
        self.vms: dict[int, HvVm] = {}
        self._next_vm = 1
        self._frame_used = np.zeros(memory.nframes, dtype=bool)
        self._frame_used[:_RESERVED_FRAMES] = True
        if memory.rmp.table_spa is not None:  # the BIOS's RMP range is no host memory
            self._frame_used[memory.rmp.table_spa // PAGE:] = True
        self._alloc_hint = _RESERVED_FRAMES  # next fit: where the last allocation ended
        self._asids_in_use: set[int] = set()
        self._asids_to_flush: set[int] = set()
        self._plain_asid = chip.max_asid + 1  # unencrypted guests still get a TLB tag
        self._last_vcpu: dict[int, Vcpu] = {}  # per ASID: the vCPU that ran with it last
        self.request_rate: tuple[float, int] | None = None  # guest requests per s, burst
        self.quantum: Quantum = DEFAULT_QUANTUM  # what each vCPU runs before the next one
        # KVM_SET_CPUID2: leaves the VMM sets itself, answered instead of the chip's for the
        # VMs it creates from now on (and put in their SNP CPUID pages)
        self.cpuid_overrides: dict[int, tuple[int, int, int, int]] = {}
        self.ciphertext_hiding_asids = 0  # kvm-amd's ciphertext_hiding_asids, for SNP_INIT_EX

    # -- VM lifecycle -----------------------------------------------------------------------
    def create_vm(self, mode: GuestMode, memory_size: int, vcpus: int,
                  gpa_limit: int = 0) -> HvVm:
        """A VM with `memory_size` bytes of RAM from GPA 0; its address space reaches 1 GiB
        beyond RAM, or `gpa_limit` if that is more (firmware flash just below 4 GiB)."""
        if mode not in self.chip.modes:
            raise ConfigError(f"chip {self.chip.name} does not support mode {mode.value}; "
                              f"it supports {', '.join(m.value for m in self.chip.modes)}")
        if memory_size < 1 << 20 or memory_size % PAGE:
            raise ConfigError(f"VM memory {memory_size} must be a multiple of 4 KiB, >= 1 MiB")
        if not 1 <= vcpus <= _MAX_VCPUS:
            raise ConfigError(f"vCPU count {vcpus} outside 1..{_MAX_VCPUS}")
        es = mode in (GuestMode.SEV_ES, GuestMode.SNP)
        if mode is GuestMode.SNP and not self.firmware.snp_initialized:
            # KVM initialises SNP when its first SNP guest needs it
            self.firmware.snp_init(self.ciphertext_hiding_asids)
        frames = self.allocate_host_pages(memory_size // PAGE + (vcpus if es else 0))
        try:
            asid = self._allocate_asid(mode)
        except ResourceExhausted:
            self._frame_used[frames] = False
            raise
        npt = NestedPageTable(max(memory_size + (1 << 30), gpa_limit))
        space = GuestAddressSpace(self._memory, npt, asid, mode.encrypted,
                                  snp=mode is GuestMode.SNP)
        ram, vmsas = np.split(frames, [memory_size // PAGE])  # VMSAs: outside the guest's RAM
        vm = HvVm(self._next_vm, mode, asid, memory_size, npt, space, ram, vmsa_frames=vmsas)
        self._next_vm += 1
        self._map_frames(vm, 0, vm.frames)
        for index in range(vcpus):
            vcpu = Vcpu(index, space, mode, self.chip, asid, self._on_exit(vm))
            if es:
                vcpu.vmsa_spa = int(vmsas[index]) * PAGE
            vm.vcpus.append(vcpu)
        self.vms[vm.vm_id] = vm
        return vm

    def destroy_vm(self, vm: HvVm) -> None:
        """Tear down: stop vCPUs, release the key (DEACTIVATE/DECOMMISSION), free everything."""
        if vm.destroyed:
            return
        for vcpu in vm.vcpus:
            vcpu.state = VcpuState.STOPPED
        vm._space.detach_all()
        if vm.mode is GuestMode.SNP:
            self._decommission_snp(vm)
        elif vm.firmware_handle:
            if self.firmware.guest_status(vm.firmware_handle).asid:
                self.firmware.deactivate(vm.firmware_handle)
            self.firmware.decommission(vm.firmware_handle)
            vm.firmware_handle = 0
        if vm.mode.encrypted:
            self._asids_in_use.discard(vm.asid)
            self._asids_to_flush.add(vm.asid)
        self._frame_used[vm.frames] = False
        self._frame_used[vm.vmsa_frames] = False
        self._frame_used[vm.rom_frames] = False
        vm.destroyed = True
        del self.vms[vm.vm_id]

    def _decommission_snp(self, vm: HvVm) -> None:
        """SNP_DECOMMISSION, then take every page back: PAGE_RECLAIM for the firmware's and
        the immutable ones (GCTX, VMSAs), RMPUPDATE for the rest."""
        if vm.firmware_handle:
            self.firmware.snp_decommission(vm.firmware_handle)
            vm.firmware_handle = 0
        rmp = self._memory.rmp
        frames = np.concatenate((vm.frames, vm.vmsa_frames, vm.rom_frames)).astype(np.int64)
        if vm.gctx_frame >= 0:
            frames = np.append(frames, vm.gctx_frame)
        held = frames[rmp.immutable[frames] | rmp.vmsa[frames]]
        for frame in held.tolist():
            self.firmware.snp_page_reclaim(frame * PAGE)
        rmp.rmpupdate(frames[rmp.assigned[frames]])
        if vm.gctx_frame >= 0:
            self._frame_used[vm.gctx_frame] = False

    def rmp_assign(self, vm: HvVm, first: int, npages: int) -> None:
        """RMPUPDATE guest pages [first, first+npages) to the VM, unvalidated (KVM's
        rmp_make_private): the guest validates them before use."""
        frames = vm.npt.frames(first, first + npages)
        if (frames == NOT_PRESENT).any():
            raise MemoryAccessError(f"VM {vm.vm_id}: GPA 0x{first * PAGE:x}+{npages} pages "
                                    "are not all mapped")
        self._memory.rmp.rmpupdate(frames, vm.asid, np.arange(first, first + npages))

    def map_rom(self, vm: HvVm, gpa: int, npages: int) -> np.ndarray:
        """Back `npages` guest pages from `gpa` beyond RAM (QEMU's pflash below 4 GiB) with
        fresh host pages; they go with the VM."""
        if gpa < vm.memory_size:
            raise MemoryAccessError(f"VM {vm.vm_id}: flash at GPA 0x{gpa:x} overlaps RAM")
        if not 0 <= gpa // PAGE <= vm.npt.limit_pages - npages or gpa % PAGE:
            raise MemoryAccessError(f"VM {vm.vm_id}: flash at GPA 0x{gpa:x}+{npages} pages is "
                                    "outside its address space")
        frames = self.allocate_host_pages(npages)
        self._map_frames(vm, gpa, frames)
        vm.rom_frames = np.concatenate((vm.rom_frames, frames)).astype(np.int64)
        return frames

    def allocate_host_pages(self, count: int) -> np.ndarray:
        """Zeroed frames for the host's own use (VM memory, VMSAs, bounce buffers): the first
        run of `count` free frames from where the last allocation ended (next fit, so a host
        full of VMs searches past none of them), else any free frames."""
        frames = self._free_run(count)
        if frames is None:
            free = np.flatnonzero(~self._frame_used)
            if free.size < count:
                raise ResourceExhausted(f"host memory exhausted: {count} frames wanted, "
                                        f"{free.size} free")
            frames = free[:count].copy()  # not a view that keeps the whole free list alive
        self._frame_used[frames] = True
        self._alloc_hint = int(frames[-1]) + 1 if frames.size else self._alloc_hint
        self._memory.fill(frames, RAW)  # KVM hands out zeroed pages
        return frames

    def _free_run(self, count: int) -> np.ndarray | None:
        """`count` consecutive free frames, searched from the hint to the end, then from the
        start; each window skips past its last used frame."""
        used = self._frame_used
        for lo, hi in ((self._alloc_hint, used.size), (_RESERVED_FRAMES, self._alloc_hint)):
            pos = lo
            while pos + count <= hi:
                busy = np.flatnonzero(used[pos:pos + count])
                if not busy.size:
                    return np.arange(pos, pos + count, dtype=np.int64)
                pos += int(busy[-1]) + 1
        return None

    def free_host_pages(self, frames: np.ndarray) -> None:
        """Give back frames from `allocate_host_pages`; they are zeroed when handed out again."""
        self._frame_used[frames] = False

    def _allocate_asid(self, mode: GuestMode) -> int:
        if not mode.encrypted:
            self._plain_asid += 1
            return self._plain_asid - 1
        span = self.chip.asid_range(mode)
        for attempt in range(2):
            for asid in span:
                if asid not in self._asids_in_use and asid not in self._asids_to_flush:
                    self._asids_in_use.add(asid)
                    return asid
            if attempt == 0 and self._asids_to_flush & set(span):
                self.firmware.df_flush()  # recycle deactivated ASIDs, as KVM does
                self._asids_to_flush.clear()
        raise ResourceExhausted(
            f"no free {mode.value} ASID: chip {self.chip.name} has {len(span)} "
            f"({span.start}..{span.stop - 1}), all in use")

    @staticmethod
    def _map_frames(vm: HvVm, gpa: int, frames: np.ndarray) -> None:
        """Map consecutive guest pages from `gpa` to `frames`, a run of frames at a time."""
        runs = np.flatnonzero(np.diff(frames) != 1) + 1
        for run in np.split(frames, runs):
            vm.npt.map(gpa, int(run[0]), run.size)
            gpa += run.size * PAGE

    # -- what the host can touch --------------------------------------------------------------
    def read_spa(self, spa: int, length: int) -> bytes:
        """Host-physical bytes as the hypervisor reads them: ciphertext in guests' private pages."""
        return self._memory.read_host(spa, length)

    def write_spa(self, spa: int, data: bytes) -> None:
        """Write host-physical bytes; under SNP the RMP refuses guest and firmware frames."""
        self._memory.write(spa, data)

    def dram_dump(self) -> np.ndarray:
        """Every byte of DRAM as the host's key domain reads it through the CPU: ciphertext of
        private pages, 0xFF where ciphertext hiding is on."""
        return self._memory.dram_dump(host_read=True)

    @property
    def memory_size(self) -> int:
        """Bytes of host physical memory."""
        return self._memory.size

    def rmp_entry(self, spa: int) -> RmpEntry:
        """The RMP entry of the frame holding `spa` (the host reads the table, never writes
        it but through RMPUPDATE)."""
        self._memory.check_range(spa, 1)
        return self._memory.rmp.entry(spa // PAGE)

    def rmpupdate(self, spa: int, asid: int = 0, gpa: int = 0) -> None:
        """RMPUPDATE of one 4 KiB frame: assign it to `asid` at `gpa` (unvalidated), or with
        asid 0 take it back; RmpInstructionError as the instruction fails."""
        self._memory.check_range(spa, PAGE)
        self._memory.rmp.rmpupdate(np.array([spa // PAGE]), asid,
                                   np.array([gpa // PAGE]) if asid else None)

    def rmp_table(self) -> tuple[int, int]:
        """The RMP's DRAM range as MSRs RMP_BASE and RMP_END give it (MemoryAccessError on a
        host whose BIOS reserved none)."""
        table = self._memory.rmp.table_spa
        if table is None:
            raise MemoryAccessError("this host's BIOS reserved no RMP (a chip without SEV-SNP)")
        return table, self._memory.size

    # -- the caches -----------------------------------------------------------------------------
    def wbinvd(self) -> int:
        """WBINVD: write every dirty cache line back to DRAM and empty the caches; returns
        how many lines were dirty."""
        return self._memory.cache.write_back()

    def invd(self) -> int:
        """INVD (with HWCR bit 4 cleared, as the host kernel may): empty the caches without
        writing back, so the stores still in them are lost; on fixed microcode and on Zen 4
        and later it writes back like WBINVD. Returns how many lines were dirty."""
        return self._memory.cache.invalidate()

    def hold_cache(self, on: bool) -> None:
        """Model the write-back cache exactly (`on`: while held, a store stays in its dirty
        line until WBINVD or INVD, as over a window of a few instructions on hardware) or
        stop, which writes back what is left. Outside a hold every store reaches DRAM at
        once (an eviction right away, which a real cache may also do)."""
        self._memory.hold_cache(on)

    def private_pages(self, vm: HvVm) -> np.ndarray:
        """Which of the VM's RAM pages it keeps private, as KVM tracks them from the guest's
        page-state hypercalls and requests (the hypervisor never reads guest page tables)."""
        return vm._space.c_bit[:vm.memory_size // PAGE].copy()

    def set_private(self, vm: HvVm, first: int, stop: int) -> None:
        """Before a VM first runs (an incoming migration): pages [first, stop) are private."""
        if any(v.has_run for v in vm.vcpus):
            raise VmStateError(f"VM {vm.vm_id} already runs: its page state is its own")
        vm._space.set_c_bit(first, stop, private=True)

    def gpa_to_spa(self, vm: HvVm, gpa: int) -> int:
        """Where the VM's NPT maps a GPA (MemoryAccessError if it is unmapped)."""
        spa = vm.npt.lookup(gpa)
        if spa is None:
            raise MemoryAccessError(f"VM {vm.vm_id}: GPA 0x{gpa:x} is not mapped")
        return spa

    def _spa_runs(self, vm: HvVm, gpa: int, length: int) -> list[tuple[int, int, int]]:
        """(offset, SPA, length) pieces of a GPA range, merging physically contiguous pages."""
        if length <= 0:
            return []
        first, last = gpa // PAGE, (gpa + length - 1) // PAGE
        if first == last and 0 <= first < vm.npt.limit_pages:  # one page: the GHCB's case
            frame = vm.npt.frame(first)
            if frame != NOT_PRESENT:
                return [(0, frame * PAGE + gpa % PAGE, length)]
        if gpa < 0 or last >= vm.npt.limit_pages:
            raise MemoryAccessError(f"VM {vm.vm_id}: GPA range 0x{gpa:x}+0x{length:x} "
                                    "is outside the guest address space")
        frames = vm.npt.frames(first, last + 1)
        missing = np.flatnonzero(frames == NOT_PRESENT)
        if missing.size:
            raise MemoryAccessError(
                f"VM {vm.vm_id}: GPA 0x{(first + int(missing[0])) * PAGE:x} is not mapped")
        cuts = (np.flatnonzero(np.diff(frames) != 1) + 1).tolist()
        runs = []
        for a, b in zip([0, *cuts], [*cuts, frames.size], strict=True):
            lo = max(gpa, (first + a) * PAGE)
            hi = min(gpa + length, (first + b) * PAGE)
            runs.append((lo - gpa, int(frames[a]) * PAGE + lo - (first + a) * PAGE, hi - lo))
        return runs

    def read_gpa(self, vm: HvVm, gpa: int, length: int) -> bytes:
        """Guest memory as the hypervisor reads it: through its NPT, outside the key domain."""
        return b"".join(self._memory.read_host(spa, n)
                        for _, spa, n in self._spa_runs(vm, gpa, length))

    def write_gpa(self, vm: HvVm, gpa: int, data: bytes) -> None:
        """Write guest memory as the hypervisor can: through its NPT, outside the key domain (the
        guest decrypts whatever lands in a private page)."""
        for offset, spa, n in self._spa_runs(vm, gpa, len(data)):
            self._memory.write(spa, data[offset:offset + n])

    def npt_map(self, vm: HvVm, gpa: int, spa: int, npages: int = 1) -> None:
        """Point `npages` guest pages from `gpa` at host pages from a page-aligned `spa`: the
        hypervisor may remap a guest's memory at any time."""
        if spa % PAGE:
            raise MemoryAccessError(f"SPA 0x{spa:x} is not page aligned")
        self._memory.check_range(spa, npages * PAGE)
        vm.npt.map(gpa, spa // PAGE, npages)

    def npt_unmap(self, vm: HvVm, gpa: int, npages: int = 1) -> None:
        """Unmap guest pages; the guest's next access to them exits with #NPF."""
        vm.npt.unmap(gpa, npages)

    # -- running ------------------------------------------------------------------------------
    def run(self, vm: HvVm, timeout: float) -> None:
        """Run one VM until its vCPUs all stop; its fault or timeout is raised."""
        error = self.run_all([vm], timeout)[vm.vm_id]
        if error is not None:
            raise error

    def run_all(self, vms: list[HvVm], timeout: float,
                pause_at_timeout: bool = False) -> dict[int, SevsimError | None]:
        """Round-robin every vCPU of several VMs, one quantum each, until all have stopped.

        The order is fixed (VMs as given, vCPUs by index) and quanta are counted in guest
        blocks or instructions (`self.quantum`), so the same VMs interleave the same way on
        every run, however busy the machine is. A VM that faults or outlives the timeout
        (wall clock, time in exits and the guest kernel included) is stopped on its own; the
        others go on. Returns each VM's error (GuestFault, GuestTimeout) or None. With
        `pause_at_timeout` the VMs still running are only paused (no error), at an instruction
        boundary: run them again later, or migrate.
        """
        for vm in vms:
            if vm.destroyed:
                raise VmStateError(f"VM {vm.vm_id} was destroyed")
        if not timeout >= 0:  # NaN too
            raise ConfigError(f"timeout {timeout!r} must be a number of seconds >= 0")
        errors: dict[int, SevsimError | None] = {vm.vm_id: None for vm in vms}
        deadline = now_ns() + int(min(timeout, _MAX_TIMEOUT_S) * 1e9)
        while True:
            runnable = [(vm, v) for vm in vms if not vm.stopped
                        for v in vm.vcpus if v.state is VcpuState.RUNNABLE]
            if not runnable:
                return errors
            # a VM with one vCPU alone on the host keeps the CPU until it halts or times out
            alone = len(vms) == 1 and len(vms[0].vcpus) == 1
            for vm, vcpu in runnable:
                if vm.stopped:
                    continue
                if now_ns() >= deadline:
                    if pause_at_timeout:
                        return errors
                    for late in vms:
                        if not late.stopped:
                            self.stop(late)
                            errors[late.vm_id] = GuestTimeout(
                                f"VM {late.vm_id} still running after {timeout:g} s")
                    return errors
                self._pre_run(vm, vcpu)
                try:
                    vcpu.run(None if alone else self.quantum, deadline,
                             timeout=not pause_at_timeout)
                except GuestFault as fault:
                    self.stop(vm)
                    errors[vm.vm_id] = fault
                except GuestTimeout:
                    self.stop(vm)
                    errors[vm.vm_id] = GuestTimeout(
                        f"VM {vm.vm_id} still running after {timeout:g} s")

    def _pre_run(self, vm: HvVm, vcpu: Vcpu) -> None:
        """KVM's pre_sev_run: the vCPUs of a VM share its ASID, so when another one ran with
        it last, TLB_CONTROL flushes the ASID's TLB entries at VMRUN (unless `skip_tlb_flush`:
        the choice is the host's, short of SEV-SNP)."""
        asid = vcpu.vmcb.asid
        if self._last_vcpu.get(asid) is not vcpu:
            self._last_vcpu[asid] = vcpu
            if not vm.skip_tlb_flush:
                vcpu.vmcb.tlb_control = True

    def stop(self, vm: HvVm) -> None:
        """Stop the VM's vCPUs for good; its memory and key stay until `destroy_vm`."""
        vm.stopped = True
        for vcpu in vm.vcpus:
            vcpu.state = VcpuState.STOPPED

    # -- exits --------------------------------------------------------------------------------
    def _on_exit(self, vm: HvVm) -> Callable[[Vcpu, VmExit], bool]:
        def handle(vcpu: Vcpu, exit: VmExit) -> bool:
            return self.handle_exit(vm, vcpu, exit)
        return handle

    def handle_exit(self, vm: HvVm, vcpu: Vcpu, exit: VmExit) -> bool:
        """KVM's exit dispatch; False stops the vCPU."""
        if vm.exit_observer is not None:
            vm.exit_observer(vm, vcpu, exit)
        vmcb = vcpu.vmcb
        if exit.code is ExitCode.IOIO:
            port, size, is_in = ioio_decode(exit.info1)
            result = self._io(vm, port, size, is_in, vmcb.read("rax"))
            if result is None:
                return False
            if is_in:
                vmcb.write("rax", result)
            return True
        if exit.code is ExitCode.CPUID:
            regs = self.cpuid(vm, vmcb.read("rax") & 0xFFFF_FFFF, vmcb.read("rcx") & 0xFFFF_FFFF)
            for name, value in zip(("rax", "rbx", "rcx", "rdx"), regs, strict=True):
                vmcb.write(name, value)
            return True
        if exit.code is ExitCode.MSR:
            msr = vmcb.read("rcx") & 0xFFFF_FFFF
            write = exit.info1 == MSR_WRITE
            edx_eax = (vmcb.read("rdx") & 0xFFFF_FFFF) << 32 | vmcb.read("rax") & 0xFFFF_FFFF
            msr_value = self._msr(vm, msr, write, edx_eax)
            if msr_value is None:
                raise GuestFault(f"#GP: {'WRMSR' if write else 'RDMSR'} of unknown MSR 0x{msr:x}")
            if not write:
                vmcb.write("rax", msr_value & 0xFFFF_FFFF)
                vmcb.write("rdx", msr_value >> 32)
            return True
        if exit.code is ExitCode.VMMCALL:
            vmcb.write("rax", self._hypercall(vm, vmcb.read("rax"),
                                              tuple(vmcb.read(r) for r in ("rbx", "rcx", "rdx",
                                                                           "rsi", "r8"))))
            return True
        if exit.code is ExitCode.VMGEXIT:
            vcpus = len(vm.vcpus)
            keep = self._vmgexit(vm, vcpu)
            if len(vm.vcpus) != vcpus:  # an AP was created: the scheduler must see it
                vcpu.preempt()
            return keep
        if exit.code is ExitCode.HLT:
            if all(v.state is not VcpuState.RUNNABLE for v in vm.vcpus):
                vm.stopped = True
            return False
        if exit.code is ExitCode.NPF:
            return bool(vm.npf_handler and vm.npf_handler(vm, vcpu, exit.info2, exit.info1))
        return False

    def _io(self, vm: HvVm, port: int, size: int, is_in: bool, rax: int) -> int | None:
        """A port access through the VMM's devices; None stops the VM."""
        value = rax & ((1 << 8 * size) - 1)
        result = vm.io_handler(vm, port, size, is_in, value) if vm.io_handler else 0xFF
        if result is None:
            self.stop(vm)
        return result

    def cpuid(self, vm: HvVm, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """The CPUID table the VMM configured: the chip's, with SEV bits for the VM's mode,
        unless `cpuid_overrides` has the leaf."""
        del subleaf
        override = self.cpuid_overrides.get(leaf)
        if override is not None:
            return override
        vendor = b"AuthenticAMD"
        ebx, edx, ecx = (int.from_bytes(vendor[i:i + 4], "little") for i in (0, 4, 8))
        if leaf == 0:
            return 0xD, ebx, ecx, edx
        if leaf == 1:
            return self.chip.signature, 0, 1 << 31, 0  # ECX bit 31: running under a hypervisor
        if leaf == 0x4000_0000:
            kvm = b"KVMKVMKVM\0\0\0"
            b, c, d = (int.from_bytes(kvm[i:i + 4], "little") for i in (0, 4, 8))
            return 0x4000_0001, b, c, d
        if leaf == 0x8000_0000:
            return 0x8000_001F, ebx, ecx, edx
        if leaf == 0x8000_001F:
            if not vm.mode.encrypted:
                return 0, 0, 0, 0
            leaf_regs = self.chip.leaf_8000001f()
            features = SevFeatures.SEV
            if vm.mode in (GuestMode.SEV_ES, GuestMode.SNP):
                features |= SevFeatures.SEV_ES
            if vm.mode is GuestMode.SNP:
                features |= SevFeatures.SEV_SNP
            return int(features), leaf_regs.ebx, 0, 0
        return 0, 0, 0, 0

    def _msr(self, vm: HvVm, msr: int, write: bool, value: int) -> int | None:
        """RDMSR result or WRMSR effect on the MSRs KVM emulates; None for #GP."""
        if msr not in vm.msrs:
            return None
        if write:
            vm.msrs[msr] = value
        return vm.msrs[msr]

    def _hypercall(self, vm: HvVm, nr: int, args: tuple[int, ...]) -> int:
        if nr == KVM_HC_MAP_GPA_RANGE:
            gpa, npages, attrs = args[:3]
            gpns = range(gpa // PAGE, gpa // PAGE + npages)
            if attrs & KVM_MAP_GPA_RANGE_ENCRYPTED:
                vm.shared_gpns.difference_update(gpns)
            else:
                vm.shared_gpns.update(gpns)
            return 0
        if nr == SEVSIM_HC_START_VCPU:
            index = args[0]
            if not 0 < index < len(vm.vcpus):
                return (1 << 64) - 1
            try:
                vm.vcpus[index].start()
            except VmStateError:
                return (1 << 64) - 1
            return 0
        if vm.hypercall_handler:
            result = vm.hypercall_handler(vm, nr, args)
            if result is not None:
                return result
        return (1 << 64) - 1000  # -KVM_ENOSYS

    # -- SEV-ES: VMGEXIT --------------------------------------------------------------------
    def _vmgexit(self, vm: HvVm, vcpu: Vcpu) -> bool:
        """KVM's sev_handle_vmgexit. The guest's registers are out of reach: the hypervisor
        has the GHCB MSR value (in the VMCB) and whatever the guest wrote into its GHCB."""
        msr = vcpu.vmcb.ghcb_gpa
        if msr_code(msr):
            return self._ghcb_msr_protocol(vm, vcpu, msr)
        registered = vm.ghcb_gpas.get(vcpu.index)
        if registered is not None and registered != msr:
            raise GuestFault(f"vCPU {vcpu.index}: VMGEXIT with a GHCB at 0x{msr:x}, "
                             f"registered 0x{registered:x}")
        try:
            ghcb = Ghcb.from_bytes(self.read_gpa(vm, msr, PAGE))
        except MemoryAccessError as err:
            raise GuestFault(f"vCPU {vcpu.index}: VMGEXIT with an unusable GHCB: {err}") from None
        reply = self._ghcb_request(vm, msr, ghcb)
        if reply is None:
            return False
        try:
            self.write_gpa(vm, msr, Ghcb(reply, ghcb.shared_buffer, ghcb.protocol_version,
                                         ghcb.usage).to_bytes())
        except RmpViolation as err:  # SNP: the guest named a private page as its GHCB
            raise GuestFault(f"vCPU {vcpu.index}: VMGEXIT with a GHCB the hypervisor may "
                             f"not write: {err}") from None
        return True

    def _ghcb_msr_protocol(self, vm: HvVm, vcpu: Vcpu, msr: int) -> bool:
        """GHCB MSR protocol requests; an unknown one comes back unchanged, as from KVM."""
        code = msr_code(msr)
        if code == MsrCode.SEV_INFO_REQ:
            # the C-bit of the CPUID table the VM gets (KVM: its sev_enc_bit)
            msr = sev_info(PROTOCOL_MAX, PROTOCOL_MIN, self.cpuid(vm, 0x8000_001F, 0)[1] & 0x3F)
        elif code == MsrCode.CPUID_REQ:
            function, reg = parse_cpuid_request(msr)
            msr = cpuid_response(self.cpuid(vm, function, 0)[reg])
        elif code == MsrCode.REG_GPA_REQ:
            vm.ghcb_gpas[vcpu.index] = msr_gfn(msr) * PAGE
            msr = reg_gpa_response(msr_gfn(msr))
        elif code == MsrCode.PSC_REQ and vm.mode is GuestMode.SNP:
            gfn, operation = parse_psc_request(msr)
            if operation in (PSC_PRIVATE, PSC_SHARED):
                msr = psc_response(self.page_state_change(vm, gfn, operation))
            else:  # PSMASH and UNSMASH only come in the NAE buffer
                msr = psc_response(_PSC_INVALID)
        elif code == MsrCode.TERM_REQ:
            vm.termination = parse_term_request(msr)
            self.stop(vm)
            return False
        vcpu.vmcb.ghcb_gpa = msr
        return True

    def _ghcb_request(self, vm: HvVm, gpa: int, ghcb: Ghcb) -> dict[str, int] | None:
        """The fields the answer to a full-GHCB request sets (KVM's sev_es_validate_vmgexit,
        the exit handler, sev_es_sync_to_ghcb); None when the request stopped the VM."""
        save = ghcb.save

        def error(code: GhcbError) -> dict[str, int]:
            return {"sw_exit_info_1": RESULT_ERROR, "sw_exit_info_2": code}

        if ghcb.usage != DEFAULT_USAGE:
            return error(GhcbError.INVALID_USAGE)
        if not {"sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"} <= save.keys():
            return error(GhcbError.MISSING_INPUT)
        code, info1, info2 = save["sw_exit_code"], save["sw_exit_info_1"], save["sw_exit_info_2"]
        out: dict[str, int] = {}
        if code == ExitCode.IOIO:
            port, size, is_in = ioio_decode(info1)
            if info1 & IOIO_STR:
                if is_in or "sw_scratch" not in save:
                    return error(GhcbError.INVALID_INPUT)
                start = save["sw_scratch"] - gpa - SHARED_BUFFER_OFFSET
                if not 0 <= start <= start + info2 * size <= SHARED_BUFFER_SIZE:
                    return error(GhcbError.INVALID_SCRATCH_AREA)
                data = ghcb.shared_buffer[start:start + info2 * size]
                for unit in range(info2):
                    value = int.from_bytes(data[unit * size:(unit + 1) * size], "little")
                    if self._io(vm, port, size, False, value) is None:
                        return None
            else:
                if not is_in and "rax" not in save:
                    return error(GhcbError.MISSING_INPUT)
                result = self._io(vm, port, size, is_in, save.get("rax", 0))
                if result is None:
                    return None
                if is_in:
                    out["rax"] = result
        elif code == ExitCode.CPUID:
            if not {"rax", "rcx"} <= save.keys():
                return error(GhcbError.MISSING_INPUT)
            regs = self.cpuid(vm, save["rax"] & 0xFFFF_FFFF, save["rcx"] & 0xFFFF_FFFF)
            out.update(zip(("rax", "rbx", "rcx", "rdx"), regs, strict=True))
        elif code == ExitCode.MSR:
            write = info1 == MSR_WRITE
            if "rcx" not in save or (write and not {"rax", "rdx"} <= save.keys()):
                return error(GhcbError.MISSING_INPUT)
            msr_value = self._msr(vm, save["rcx"] & 0xFFFF_FFFF, write,
                                  (save.get("rdx", 0) & 0xFFFF_FFFF) << 32
                                  | save.get("rax", 0) & 0xFFFF_FFFF)
            if msr_value is None:  # KVM injects #GP into the guest through the GHCB
                return {"sw_exit_info_1": RESULT_EXCEPTION,
                        "sw_exit_info_2": VECTOR_GP | EVTINJ_TYPE_EXCEPTION | EVTINJ_VALID}
            if not write:
                out.update(rax=msr_value & 0xFFFF_FFFF, rdx=msr_value >> 32)
        elif code == ExitCode.VMMCALL:
            if not {"rax", "cpl"} <= save.keys():
                return error(GhcbError.MISSING_INPUT)
            args = tuple(save.get(name, 0) for name in ("rbx", "rcx", "rdx", "rsi"))
            out["rax"] = self._hypercall(vm, save["rax"], (*args, 0))
        elif code == VmgexitEvent.PSC and vm.mode is GuestMode.SNP:
            return self._psc_buffer(vm, gpa, ghcb)
        elif code == VmgexitEvent.AP_CREATION and vm.mode is GuestMode.SNP:
            if not self.create_ap(vm, info1, info2):
                return error(GhcbError.INVALID_INPUT)
        elif (code in (VmgexitEvent.GUEST_REQUEST, VmgexitEvent.EXT_GUEST_REQUEST)
              and vm.mode is GuestMode.SNP):
            extended = code == VmgexitEvent.EXT_GUEST_REQUEST
            if extended and not {"rax", "rbx"} <= save.keys():
                return error(GhcbError.MISSING_INPUT)
            pages = (save["rax"], save["rbx"]) if extended else None
            try:
                return self.guest_request(vm, info1, info2, pages)
            except (MemoryAccessError, RmpViolation):
                return error(GhcbError.INVALID_INPUT)
        else:
            return error(GhcbError.INVALID_EVENT)
        return {**out, "sw_exit_info_1": RESULT_OK, "sw_exit_info_2": 0}

    # -- SEV-SNP: vCPUs the guest builds --------------------------------------------------------
    def create_ap(self, vm: HvVm, info1: int, vmsa_gpa: int) -> bool:
        """The AP creation event (CREATE): run a vCPU from a VMSA the guest built in its
        own memory and tagged in the RMP (VMRUN checks that; the hypervisor cannot read the
        page). A new APIC ID gets a vCPU of its own, which is how sevsim runs a lower VMPL
        beside VMPL0; an AP still waiting for SIPI can start from it too."""
        request, apic_id = info1 & 0xFFFF_FFFF, info1 >> 32
        if request != AP_CREATE or vmsa_gpa % PAGE or vm.npt.lookup(vmsa_gpa) is None:
            return False
        if apic_id == len(vm.vcpus) < _MAX_VCPUS:
            vcpu = Vcpu(apic_id, vm._space, vm.mode, self.chip, vm.asid, self._on_exit(vm))
            vcpu.share_guest(vm.vcpus[0])
            vm.vcpus.append(vcpu)
        elif apic_id < len(vm.vcpus) and vm.vcpus[apic_id].state is VcpuState.WAIT_FOR_SIPI:
            vcpu = vm.vcpus[apic_id]
        else:
            return False
        vcpu.vmsa_spa = self.gpa_to_spa(vm, vmsa_gpa)
        vcpu.start()
        return True

    # -- SEV-SNP: page state changes --------------------------------------------------------
    def page_state_change(self, vm: HvVm, gfn: int, operation: int) -> int:
        """KVM's PSC for one 4 KiB page: RMPUPDATE to the guest (private) or back to the
        hypervisor (shared); PSMASH splits a 2 MiB entry. Returns 0 or an error code."""
        frame = vm.npt.frame(gfn)
        if frame == NOT_PRESENT or gfn >= vm.memory_size // PAGE:
            return _PSC_INVALID
        try:
            if operation == PSC_PRIVATE:
                self.rmp_assign(vm, gfn, 1)
            elif operation == PSC_SHARED:
                self._memory.rmp.rmpupdate(np.array([frame]))
            elif operation == PSC_PSMASH:
                self._memory.rmp.psmash(int(frame))
            else:
                return _PSC_INVALID
        except RmpInstructionError as err:
            return err.code
        return 0

    def _psc_buffer(self, vm: HvVm, gpa: int, ghcb: Ghcb) -> dict[str, int]:
        """The PSC NAE event: the descriptor in the shared buffer, processed from cur_entry to
        end_entry; cur_entry goes back advanced, SW_EXITINFO2 carries the first error."""
        scratch = ghcb.save.get("sw_scratch", 0) - gpa - SHARED_BUFFER_OFFSET
        if scratch != 0:
            return {"sw_exit_info_1": RESULT_ERROR,
                    "sw_exit_info_2": GhcbError.INVALID_SCRATCH_AREA}
        try:
            cur, end, entries = unpack_psc(ghcb.shared_buffer)
        except ValueError:
            return {"sw_exit_info_1": RESULT_ERROR, "sw_exit_info_2": GhcbError.INVALID_INPUT}
        failure = 0
        while cur <= end and not failure:
            entry = entries[cur]
            failure = (_PSC_INVALID if entry.huge
                       else self.page_state_change(vm, entry.gfn, entry.operation))
            if not failure:
                cur += 1
        ghcb.shared_buffer = psc_set_cur_entry(ghcb.shared_buffer, cur)
        return {"sw_exit_info_1": RESULT_OK, "sw_exit_info_2": failure}

    # -- SEV-SNP: guest requests --------------------------------------------------------------
    def guest_request(self, vm: HvVm, request_gpa: int, response_gpa: int,
                      data: tuple[int, int] | None = None) -> dict[str, int]:
        """The (extended) guest request NAE event, as KVM's snp_handle_guest_req: carry the
        sealed request page to SNP_GUEST_REQUEST and the sealed answer back. A firmware error
        goes back in SW_EXITINFO2's low half and nothing is written. `data` (extended: the
        data pages' GPA and count) gets the certificate table; too few pages and the request
        is not issued at all: INVALID_LEN, RBX = the pages needed. Hypervisor reads and
        writes go through the NPT, so a private page named here raises RmpViolation."""
        ok = {"sw_exit_info_1": RESULT_OK, "sw_exit_info_2": 0}
        if not self._request_allowed(vm):
            vm.busy_answers += 1
            return {**ok, "sw_exit_info_2": VMM_ERR_BUSY}
        certs = b""
        if data is not None:
            certs = self.firmware.certificate_table(self.firmware.tcb)
            if vm.vmm_certs:
                certs = build_cert_table(parse_cert_table(certs) + vm.vmm_certs)
            needed = -(-len(certs) // PAGE)
            if data[1] < needed:
                return {**ok, "sw_exit_info_2": VMM_ERR_INVALID_LEN, "rbx": needed}
        request = self.read_gpa(vm, request_gpa, PAGE)
        try:
            response = self.firmware.snp_guest_request(vm.firmware_handle, request)
        except FirmwareError as err:
            return {**ok, "sw_exit_info_2": int(err.status) & 0xFFFF_FFFF}
        self.write_gpa(vm, response_gpa, response.ljust(PAGE, b"\0"))
        if data is not None:
            self.write_gpa(vm, data[0], certs)
        return ok

    def _request_allowed(self, vm: HvVm) -> bool:
        """A token bucket per VM when `request_rate` is set (KVM may throttle guest requests
        to share the Secure Processor between guests; the guest retries on BUSY)."""
        if self.request_rate is None:
            return True
        rate, burst = self.request_rate
        now = time.monotonic()
        if not vm.request_clock:
            vm.request_tokens, vm.request_clock = float(burst), now
        vm.request_tokens = min(float(burst), vm.request_tokens + (now - vm.request_clock) * rate)
        vm.request_clock = now
        if vm.request_tokens < 1:
            return False
        vm.request_tokens -= 1
        return True
