"""The attacker toolkit: the primitives of a malicious hypervisor and of a physical attacker.

A `HypervisorAttacker` holds what KVM and QEMU hold on a real host and nothing more: DRAM
through the memory controller as the host's key domain sees it, the nested page tables, the
VMCBs, the GHCBs and other shared pages, and the Secure Processor's command interface. A
`PhysicalAttacker` holds the DIMMs. Neither can reach the guest's software, the engine's key
slots or the firmware's state: every primitive below goes through an interface a real
attacker has (tests/test_boundary.py walks these handles too). Researchers write new attacks
with these primitives; `sevsim.attacks.catalog` is the published ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sevsim.abi.ghcb import Ghcb
from sevsim.errors import ConfigError, MemoryAccessError
from sevsim.firmware.sev import SevFirmware
from sevsim.host.hypervisor import HvVm, Hypervisor
from sevsim.host.machine import Host
from sevsim.host.vmm import VirtualMachine
from sevsim.host.vtpm import Vtpm
from sevsim.hw.cpu import Vcpu, Vmcb, VmExit
from sevsim.hw.engine import PAGE
from sevsim.hw.rmp import RmpEntry


@dataclass(frozen=True)
class Fault:
    """One #NPF the hypervisor saw: the page-aligned GPA (all it learns of the address) and
    whether it was a write or a fetch, from EXITINFO1's error code; `rmp` when the page was
    present but the SEV-SNP RMP check refused it (the error code's RMP bit)."""

    gpa: int
    write: bool
    fetch: bool
    rmp: bool = False


@dataclass
class FaultTrace:
    """The ordered #NPFs of a page-fault trace (the controlled channel)."""

    faults: list[Fault] = field(default_factory=list)

    @property
    def pages(self) -> list[int]:
        """The faulting GPAs in order."""
        return [fault.gpa for fault in self.faults]


_NPF_WRITE, _NPF_FETCH, _NPF_RMP = 1 << 1, 1 << 4, 1 << 31  # error-code bits in EXITINFO1


class HypervisorAttacker:
    """A malicious hypervisor: host-physical memory, NPTs, VMCBs, exits, firmware commands.

    `victim` arguments are the VMM's VMs (`VirtualMachine`), which the hypervisor runs."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hypervisor = hypervisor

    @staticmethod
    def vtpm() -> Vtpm:
        """A fresh host-provided vTPM (swtpm), as the VMM starts one per VM: the host owns its
        process and state outright. Use as a context manager."""
        return Vtpm()

    @property
    def firmware(self) -> SevFirmware:
        """The Secure Processor's command interface, as /dev/sev gives it to the host."""
        return self.hypervisor.firmware

    # -- host-physical memory ------------------------------------------------------------------
    def read_spa(self, spa: int, length: int) -> bytes:
        """DRAM bytes as the host reads them: ciphertext of private pages (or 0xFF where
        ciphertext hiding is on), plaintext of shared and host pages."""
        return self.hypervisor.read_spa(spa, length)

    def write_spa(self, spa: int, data: bytes) -> None:
        """Write DRAM bytes; the owner later decrypts whatever lands there. Under SNP the RMP
        refuses guest and firmware frames (RmpViolation)."""
        self.hypervisor.write_spa(spa, data)

    def move_ciphertext(self, src_spa: int, dst_spa: int, length: int) -> bytes:
        """Copy DRAM bytes from one SPA to another (a ciphertext block move); returns them."""
        data = self.read_spa(src_spa, length)
        self.write_spa(dst_spa, data)
        return data

    def dram_dump(self) -> np.ndarray:
        """All of DRAM as the host reads it."""
        return self.hypervisor.dram_dump()

    def gpa_to_spa(self, victim: VirtualMachine, gpa: int) -> int:
        """Where the victim's NPT maps `gpa`."""
        return self.hypervisor.gpa_to_spa(victim.hv, gpa)

    def read_gpa(self, victim: VirtualMachine, gpa: int, length: int) -> bytes:
        """Guest memory through the NPT, as the host reads it."""
        return victim.read_gpa(gpa, length)

    def write_gpa(self, victim: VirtualMachine, gpa: int, data: bytes) -> None:
        """Write guest memory through the NPT, as the host can."""
        victim.write_gpa(gpa, data)

    def rmp_entry(self, spa: int) -> RmpEntry:
        """The RMP entry of the frame at `spa` (the table is readable host memory)."""
        return self.hypervisor.rmp_entry(spa)

    def rmpupdate(self, spa: int, asid: int = 0, gpa: int = 0) -> None:
        """RMPUPDATE one frame (to a guest at `gpa`, or back to the host with asid 0)."""
        self.hypervisor.rmpupdate(spa, asid, gpa)

    def page_move(self, victim: VirtualMachine, gpa: int, dst_spa: int) -> int:
        """Move the victim's SNP page at `gpa` to the free host page `dst_spa` (the firmware's
        SNP_PAGE_MOVE re-encrypts it under the new address) and point the NPT there; returns
        the page's old SPA, now the hypervisor's."""
        src = self.gpa_to_spa(victim, gpa & ~(PAGE - 1))
        self.firmware.snp_page_move(victim.hv.firmware_handle, src, dst_spa)
        self.hypervisor.npt_map(victim.hv, gpa & ~(PAGE - 1), dst_spa)
        return src

    def swap_out(self, victim: VirtualMachine, gpa: int, dst_spa: int) -> bytes:
        """Swap the victim's SNP page at `gpa` out to the host page `dst_spa` (the firmware's
        SNP_PAGE_SWAP_OUT seals it) and unmap it; returns its MDATA entry for `swap_in`."""
        page = gpa & ~(PAGE - 1)
        mdata = self.firmware.snp_page_swap_out(victim.hv.firmware_handle,
                                                self.gpa_to_spa(victim, page), dst_spa)
        self.hypervisor.npt_unmap(victim.hv, page)
        return mdata

    def swap_in(self, victim: VirtualMachine, gpa: int, src_spa: int, dst_spa: int,
                mdata: bytes) -> None:
        """Bring a swapped-out page back from `src_spa` into the free host page `dst_spa`
        (SNP_PAGE_SWAP_IN) and map it at `gpa` again."""
        self.firmware.snp_page_swap_in(victim.hv.firmware_handle, src_spa, dst_spa, mdata)
        self.hypervisor.npt_map(victim.hv, gpa & ~(PAGE - 1), dst_spa)

    def rmp_table(self) -> tuple[int, int]:
        """The RMP's DRAM range [RMP_BASE, RMP_END), as the BIOS set the MSRs; a frame's
        entry is at RMP_BASE + abi.rmp.rmp_entry_offset(frame)."""
        return self.hypervisor.rmp_table()

    def allocate_page(self) -> int:
        """A fresh zeroed host page's SPA, for the attacker's own use."""
        return int(self.hypervisor.allocate_host_pages(1)[0]) * PAGE

    # -- the caches ---------------------------------------------------------------------------
    @contextmanager
    def holding_cache(self) -> Iterator[None]:
        """Within the block the write-back cache keeps every line dirty until WBINVD or INVD:
        the guest's stores and the host's own `write_spa`s stay in the cache, as over the few
        instructions a real attack times (the simulator evicts nothing on its own). At the
        end what is left is written back."""
        self.hypervisor.hold_cache(True)
        try:
            yield
        finally:
            self.hypervisor.hold_cache(False)

    def wbinvd(self) -> int:
        """WBINVD: every dirty line is written back to DRAM (unchecked: the RMP checked the
        store, not the write-back) and the cache emptied; returns how many lines went."""
        return self.hypervisor.wbinvd()

    def invd(self) -> int:
        """INVD after clearing HWCR bit 4: the cache is emptied without write-back, so DRAM
        keeps its older bytes (CacheWarp); fixed microcode and Zen 4+ write back instead.
        Returns how many dirty lines there were."""
        return self.hypervisor.invd()

    # -- nested page tables ----------------------------------------------------------------
    def remap(self, victim: VirtualMachine, gpa: int, spa: int, npages: int = 1) -> None:
        """Point the victim's guest pages from `gpa` at other host pages."""
        self.hypervisor.npt_map(victim.hv, gpa, spa, npages)

    def unmap(self, victim: VirtualMachine, gpa: int, npages: int = 1) -> None:
        """Make guest pages not present: the next access exits with #NPF."""
        self.hypervisor.npt_unmap(victim.hv, gpa, npages)

    @contextmanager
    def tracing_faults(self, victim: VirtualMachine, gpas: list[int],
                       on_fault: Callable[[Fault], None] | None = None
                       ) -> Iterator[FaultTrace]:
        """The controlled channel: unmap the pages of `gpas`; each access faults, is
        recorded, the faulting page is mapped back and every other traced page unmapped
        again, so each change of page shows once, in order. `on_fault` runs at each fault
        (a timing anchor for other primitives). Everything is mapped back at the end."""
        hv, record = self.hypervisor, victim.hv
        pages = sorted({gpa & ~(PAGE - 1) for gpa in gpas})
        home = {gpa: hv.gpa_to_spa(record, gpa) for gpa in pages}
        trace = FaultTrace()

        def fault(vm: HvVm, vcpu: Vcpu, gpa: int, error: int) -> bool:
            del vm, vcpu
            page = gpa & ~(PAGE - 1)
            if page not in home:
                return False  # a fault the trace did not cause: the guest really faulted
            event = Fault(page, bool(error & _NPF_WRITE), bool(error & _NPF_FETCH),
                          bool(error & _NPF_RMP))
            trace.faults.append(event)
            for other in pages:
                if other != page:
                    hv.npt_unmap(record, other)
            hv.npt_map(record, page, home[page])
            if on_fault is not None:
                on_fault(event)
            return True

        previous, record.npf_handler = record.npf_handler, fault
        for page in pages:
            hv.npt_unmap(record, page)
        try:
            yield trace
        finally:
            record.npf_handler = previous
            for page in pages:
                hv.npt_map(record, page, home[page])

    # -- vCPUs -------------------------------------------------------------------------------
    def vmcb(self, victim: VirtualMachine, vcpu: int = 0) -> Vmcb:
        """The vCPU's VMCB: control fields always; the register save area under no SEV and
        plain SEV (under SEV-ES and SNP reading it raises VmStateError)."""
        return victim.hv.vcpus[vcpu].vmcb

    def set_asid(self, vm: VirtualMachine, asid: int, vcpu: int = 0) -> None:
        """Write VMCB.ASID: the key slot (and TLB tag) the vCPU runs with from its next VMRUN.
        KVM writes the VM's own; CrossLine writes another guest's into the attacker's VM."""
        vm.hv.vcpus[vcpu].vmcb.asid = asid

    def skip_tlb_flush(self, vm: VirtualMachine, skip: bool = True) -> None:
        """Leave out the TLB flush KVM asks for when another vCPU of the VM ran last on the
        CPU (TLB poisoning); SEV-SNP hardware flushes anyway when the VMSA changes."""
        vm.hv.skip_tlb_flush = skip

    def set_vmsa_pointer(self, vm: VirtualMachine, spa: int, vcpu: int = 0) -> None:
        """Point the VMCB at another VMSA page; the next VMRUN checks and loads that one."""
        vm.hv.vcpus[vcpu].vmsa_spa = spa

    def vmsa_ciphertext(self, victim: VirtualMachine, vcpu: int = 0) -> bytes:
        """The DRAM bytes of the vCPU's VMSA page (SEV-ES and SNP): what CipherLeaks reads."""
        return self.read_spa(self.vmsa_spa(victim, vcpu), PAGE)

    def vmsa_spa(self, victim: VirtualMachine, vcpu: int = 0) -> int:
        """Where the VMCB's VMSA pointer points (SEV-ES and SNP): the host allocated it."""
        spa = victim.hv.vcpus[vcpu].vmsa_spa
        if spa is None:
            raise MemoryAccessError(f"{victim.mode}: vCPU {vcpu} has no VMSA page")
        return spa

    def ghcb(self, victim: VirtualMachine, vcpu: int = 0) -> Ghcb | None:
        """The GHCB the vCPU's GHCB MSR names at its last VMGEXIT, as the shared page holds
        it now (None when the MSR carries a GHCB MSR protocol request, not a page)."""
        msr = victim.hv.vcpus[vcpu].vmcb.ghcb_gpa
        if not msr or msr % PAGE:
            return None
        return Ghcb.from_bytes(victim.read_gpa(msr, PAGE))

    def on_hypercall(self, victim: VirtualMachine, observer: Callable[[int], None]) -> None:
        """Call `observer(nr)` at every hypercall the victim makes to its VMM (a VMMCALL, or
        under SEV-ES and SNP the one the GHCB carries), before the VMM answers it: the moment
        a guest asks for input, the host may act and queue the input it hands over."""
        handler = victim.hv.hypercall_handler

        def hooked(vm: HvVm, nr: int, args: tuple[int, ...]) -> int | None:
            observer(nr)
            return handler(vm, nr, args) if handler is not None else None

        victim.hv.hypercall_handler = hooked

    def on_exit(self, victim: VirtualMachine,
                observer: Callable[[Vcpu, VmExit], None] | None) -> None:
        """Call `observer(vcpu, exit)` at every #VMEXIT of the victim, before KVM handles it
        (None to stop); the VMCB is the hypervisor's to read and write there."""
        victim.hv.exit_observer = None if observer is None else (
            lambda vm, vcpu, exit: observer(vcpu, exit))

    def inject_event(self, victim: VirtualMachine, vector: int, error_code: int = 0,
                     vcpu: int = 0) -> None:
        """EVENTINJ: the vCPU's next VMRUN delivers `vector` (with `error_code`; for #VC,
        vector 29, the exit code its handler is to emulate) before the next instruction;
        from an exit observer or fault callback, as soon as that exit returns. Under SNP
        Restricted Injection that VMRUN fails (VmrunError) for anything but #HV (28), and
        under Alternate Injection the field is ignored."""
        victim.hv.vcpus[vcpu].vmcb.inject(vector, error_code)

    def set_cpuid(self, leaf: int, registers: tuple[int, int, int, int]) -> None:
        """The VMM's CPUID table: from now on answer CPUID `leaf` with (EAX, EBX, ECX, EDX)
        at intercepts and through the GHCB (and in SEV_INFO's C-bit for that leaf), and put
        it in the CPUID page of SNP guests launched from now on (the firmware checks those
        pages against the chip)."""
        eax, ebx, ecx, edx = (value & 0xFFFF_FFFF for value in registers)
        self.hypervisor.cpuid_overrides[leaf] = (eax, ebx, ecx, edx)

    def host_cpuid(self, leaf: int) -> tuple[int, int, int, int]:
        """CPUID as the host executes it on its own CPU (the SEV leaf 0x8000001F: features,
        C-bit position, ASIDs); ConfigError for other leaves, which sevsim's host does
        not model."""
        if leaf != 0x8000_001F:
            raise ConfigError(f"the host models CPUID 0x8000001F only, not 0x{leaf:x}")
        return self.hypervisor.chip.leaf_8000001f().registers()

    def step(self, victim: VirtualMachine, vcpu: int = 0) -> int:
        """Let the vCPU retire exactly one instruction, then exit (SEV-Step's APIC timer);
        returns how many ran (0 once it has stopped)."""
        return victim.hv.vcpus[vcpu].step()

    def run_instructions(self, victim: VirtualMachine, count: int, vcpu: int = 0) -> int:
        """Let the vCPU retire exactly `count` instructions (fewer if it stops)."""
        return victim.hv.vcpus[vcpu].run_instructions(count)

    def run(self, victim: VirtualMachine, timeout: float = 30.0) -> None:
        """Run the victim until it stops (its fault, if any, is raised)."""
        victim.run(timeout=timeout)


class PhysicalAttacker:
    """Someone with the machine in hand: the DIMMs' cells and their SPD chips; keys stay in
    the SoC."""

    def __init__(self, host: Host) -> None:
        self._host = host  # the machine the DIMMs sit in, not its software

    def dram_dump(self) -> np.ndarray:
        """Cold boot: every DRAM byte, copied out of the modules (ciphertext hiding is the
        CPU's and does not apply to the cells)."""
        return self._host.dram_dump()

    def spd_alias(self) -> int:
        """BadRAM: rewrite the modules' SPD to claim one more address bit and reboot, before
        any VM runs; returns the offset at which each SPA's cells appear a second time. The
        RMP has no entry there, so a colluding hypervisor writes guest cells unchecked."""
        return self._host.spd_alias()
