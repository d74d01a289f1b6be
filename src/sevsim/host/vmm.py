"""A QEMU-like VMM: loads the guest image, drives the launch, emulates the devices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sevsim.abi.bootinfo import BOOTINFO_GPA, BootInfo, Segment
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.svm import DEBUG_EXIT_PORT, SERIAL_PORT
from sevsim.errors import ImageError, SevsimError, VmStateError
from sevsim.firmware.sev import LaunchMeasurement
from sevsim.guest.kernel import GuestKernel, kernel_identity
from sevsim.host.elf import GuestImage, parse_elf
from sevsim.host.hypervisor import HvVm, Hypervisor
from sevsim.hw.cpu import VcpuState
from sevsim.hw.engine import PAGE

BSP_STACK_SIZE = 256 * 1024
DEFAULT_POLICY = int(PolicyFlags.NODBG)  # QEMU's default sev-guest policy
_LINE_STATUS = SERIAL_PORT + 5
_LSR_IDLE = 0x60  # transmitter empty: the guest may always write


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    console: str
    error: SevsimError | None = None  # set by Host.run for a VM that faulted or timed out


class VirtualMachine:
    """One guest as its VMM sees it: the API users drive (load, launch, run, inspect)."""

    def __init__(self, hypervisor: Hypervisor, vm: HvVm) -> None:
        self.hypervisor = hypervisor
        self.hv = vm
        self.console_bytes = bytearray()
        self.exit_code: int | None = None
        self.measurement: LaunchMeasurement | None = None
        self.image: GuestImage | None = None
        self.launched = False
        self._measured_pages: list[int] = []
        vm.io_handler = self._io

    # -- facts ---------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.hv.mode.value

    @property
    def asid(self) -> int:
        return self.hv.asid

    @property
    def memory_size(self) -> int:
        return self.hv.memory_size

    @property
    def console(self) -> str:
        return self.console_bytes.decode("utf-8", "replace")

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self, image: str | Path | bytes) -> None:
        """Copy a guest ELF and its boot info into guest memory (still unencrypted)."""
        if self.image is not None:
            raise VmStateError("an image is already loaded")
        blob = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
        parsed = parse_elf(blob)
        stack_top = self.memory_size
        heap_start = -(-parsed.end // PAGE) * PAGE
        if heap_start > stack_top - BSP_STACK_SIZE:
            raise ImageError(f"image ends at 0x{parsed.end:x}; it does not fit in "
                             f"{self.memory_size >> 20} MiB with a "
                             f"{BSP_STACK_SIZE >> 10} KiB stack")
        boot = BootInfo(self.memory_size, len(self.hv.vcpus), heap_start,
                        stack_top - BSP_STACK_SIZE, self.mode, parsed.entry, stack_top,
                        tuple(Segment(s.gpa, len(s.data), s.memsz, s.flags)
                              for s in parsed.segments), kernel_identity())
        self.hypervisor.write_gpa(self.hv, BOOTINFO_GPA, boot.to_bytes())
        for seg in parsed.segments:
            self.hypervisor.write_gpa(self.hv, seg.gpa, seg.data)
        self._measured_pages = boot.launched_pages()
        kernel = GuestKernel()
        for vcpu in self.hv.vcpus:
            vcpu.attach_guest(kernel)
        self.image = parsed

    def launch(self, policy: int = DEFAULT_POLICY) -> LaunchMeasurement | None:
        """SEV: LAUNCH_START, ACTIVATE, LAUNCH_UPDATE_DATA over the image, MEASURE, FINISH."""
        if self.image is None:
            raise VmStateError("load an image before launching")
        if self.launched:
            raise VmStateError("the VM is already launched")
        if self.hv.mode.encrypted:
            fw = self.hypervisor.firmware
            handle = fw.launch_start(policy)
            self.hv.firmware_handle = handle
            fw.activate(handle, self.asid)
            for gpa, length in self._spa_runs():
                fw.launch_update_data(handle, gpa, length)
            self._launch_vmsas(handle)
            self.measurement = fw.launch_measure(handle)
            fw.launch_finish(handle)
        self.launched = True
        return self.measurement

    def _launch_vmsas(self, handle: int) -> None:
        """SEV-ES: LAUNCH_UPDATE_VMSA for every vCPU (plain SEV has no VMSA to measure)."""
        del handle

    def _spa_runs(self) -> list[tuple[int, int]]:
        """The measured pages as (SPA, length) runs, in guest-physical order."""
        runs: list[tuple[int, int]] = []
        for gpn in self._measured_pages:
            spa = self.hypervisor.gpa_to_spa(self.hv, gpn * PAGE)
            if runs and runs[-1][0] + runs[-1][1] == spa:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((spa, PAGE))
        return runs

    def run(self, timeout: float = 60.0) -> RunResult:
        """Run until the guest exits or halts; GuestFault / GuestTimeout stop it and raise."""
        self.check_runnable()
        self.hypervisor.run(self.hv, timeout)
        return self.result()

    def run_for(self, seconds: float) -> bool:
        """Run for at most `seconds`, then pause; True once the guest has stopped by itself."""
        self.check_runnable()
        error = self.hypervisor.run_all([self.hv], seconds, pause_at_timeout=True)[self.hv.vm_id]
        if error is not None:
            raise error
        return self.finished

    @property
    def finished(self) -> bool:
        """The guest exited or all its vCPUs halted."""
        return self.hv.stopped or not any(v.state is VcpuState.RUNNABLE for v in self.hv.vcpus)

    def check_runnable(self) -> None:
        if not self.launched:
            raise VmStateError("launch the VM before running it")

    def result(self, error: SevsimError | None = None) -> RunResult:
        code = self.exit_code if self.exit_code is not None else 0
        return RunResult(code, self.console, error)

    def destroy(self) -> None:
        self.hypervisor.destroy_vm(self.hv)

    # -- the hypervisor's view -------------------------------------------------------------------
    def read_gpa(self, gpa: int, length: int) -> bytes:
        return self.hypervisor.read_gpa(self.hv, gpa, length)

    def write_gpa(self, gpa: int, data: bytes) -> None:
        self.hypervisor.write_gpa(self.hv, gpa, data)

    def host_view(self) -> bytes:
        """All guest-physical memory as the hypervisor reads it."""
        return self.read_gpa(0, self.memory_size)

    def shared_pages(self) -> list[int]:
        """GPAs the guest told the hypervisor it shares."""
        return [gpn * PAGE for gpn in sorted(self.hv.shared_gpns)]

    # -- devices ---------------------------------------------------------------------------------
    def _io(self, vm: HvVm, port: int, size: int, is_in: bool, value: int) -> int | None:
        if port == SERIAL_PORT and not is_in:
            self.console_bytes.append(value & 0xFF)
        elif port == DEBUG_EXIT_PORT and not is_in:
            self.exit_code = value
            return None
        elif port == _LINE_STATUS and is_in:
            return _LSR_IDLE
        elif is_in:
            return (1 << 8 * size) - 1  # nothing answers: the bus floats high
        return 0
