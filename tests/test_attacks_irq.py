"""The attacks on registers and interrupts (A2 VMCB registers, A12 the C-bit via CPUID, A13
WeSee, A14 Heckler) and the mechanisms they rest on: event injection at VMRUN with SNP's
Restricted and Alternate Injection, the guest kernel's #VC and int 0x80 handlers and its
hardening options, page-table attribute bits, the firmware's check of the CPUID page.

The verdicts at every mode and fix are checked in tests/test_attack_matrix.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sevsim.abi.bootinfo import KernelOption
from sevsim.abi.cpuid import SevStatusMsr
from sevsim.abi.status import SevStatus
from sevsim.abi.svm import ExitCode
from sevsim.abi.vmsa import (
    SEV_FEATURES_ALTERNATE_INJECTION,
    SEV_FEATURES_RESTRICTED_INJECTION,
    SEV_FEATURES_SNP,
)
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import Setting, Trace, Verdict
from sevsim.attacks.lab import Lab, planted_secret
from sevsim.attacks.runner import run_attack
from sevsim.errors import ConfigError, FirmwareError, GuestFault, VmrunError
from sevsim.guest.kernel import EINTR, ENOSYS, GuestKernel
from sevsim.host.machine import Host
from sevsim.host.vmm import VirtualMachine
from sevsim.testing import guest_cpu, guest_software

X = Verdict.BROKEN


# -- the attacks ----------------------------------------------------------------------------------
def test_a2_reads_the_registers_where_the_save_area_is_readable() -> None:
    """Under plain SEV the trace shows the four registers; under SEV-ES the read is refused
    before the attacker turns to the VMSA."""
    sev = run_attack(ATTACKS["A2"], Setting("sev"))
    assert any(step.startswith("VMCB save area: r12=0x") for step in sev.trace)
    es = run_attack(ATTACKS["A2"], Setting("sev-es"))
    assert any("guest registers are in the encrypted VMSA" in step for step in es.trace)


def test_wesee_leaks_each_word_through_the_ghcb() -> None:
    outcome = run_attack(ATTACKS["A13"], Setting("sev-es"))
    leaks = [step for step in outcome.trace if "asks for 'hypercall' RAX=" in step]
    words = planted_secret("secret_in_rax")
    assert [step[-16:] for step in leaks] == [
        f"{int.from_bytes(words[i:i + 8], 'little'):016x}" for i in range(0, 32, 8)]


def test_heckler_fails_without_the_injection() -> None:
    """The victim honestly denies: what changes its answer is the injected int 0x80."""
    lab = Lab(Setting("snp"), Trace())
    victim = lab.victim("auth_check", honest=b"access denied")
    victim.vm.run(timeout=30)
    assert victim.vm.console.strip() == "access denied"


# -- event injection ----------------------------------------------------------------------


@pytest.fixture
def booted() -> Callable[..., VirtualMachine]:
    """A launched VM of `mode` running examples/hello.c, booted by one instruction."""
    def make(mode: str, build: Callable[..., Path], sev_features: int = 0) -> VirtualMachine:
        vm = Host(memory="128M").create_vm(mode, "16M")
        vm.load(build("hello"))
        vm.launch(guest_features=SEV_FEATURES_SNP | sev_features)
        assert vm.hv.vcpus[0].run_instructions(1) == 1
        return vm
    return make


@pytest.mark.parametrize(("vector", "error_code"), [(-1, 0), (256, 0), (29, -1), (29, 1 << 64)])
def test_eventinj_takes_a_vector_and_a_64_bit_error_code(vector: int, error_code: int) -> None:
    vm = Host(memory="64M").create_vm("sev", "16M")
    with pytest.raises(ConfigError, match="cannot inject"):
        vm.hv.vcpus[0].vmcb.inject(vector, error_code)
    assert vm.hv.vcpus[0].vmcb.event_inj is None


def test_restricted_injection_lets_only_hv_through(build: Callable[..., Path],
                                                   booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("snp", build, SEV_FEATURES_RESTRICTED_INJECTION)
    status = guest_cpu(vm.hv.vcpus[0]).sev_status()  # what the guest learns of it
    assert status & SevStatusMsr.RESTRICTED_INJECTION and not (
        status & SevStatusMsr.ALTERNATE_INJECTION)
    vmcb = vm.hv.vcpus[0].vmcb
    vmcb.inject(28)  # #HV: the guest's doorbell is empty, it goes on
    vm.run(timeout=30)
    assert "Hello" in vm.console and vmcb.event_inj is None
    vm = booted("snp", build, SEV_FEATURES_RESTRICTED_INJECTION)
    vm.hv.vcpus[0].vmcb.inject(0x80)
    with pytest.raises(VmrunError, match="only #HV"):
        vm.run(timeout=30)


def test_alternate_injection_ignores_the_vmcb(build: Callable[..., Path],
                                              booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("snp", build, SEV_FEATURES_ALTERNATE_INJECTION)
    assert guest_cpu(vm.hv.vcpus[0]).sev_status() & SevStatusMsr.ALTERNATE_INJECTION
    vm.hv.vcpus[0].vmcb.inject(29, ExitCode.VMMCALL)
    vm.run(timeout=30)
    assert "Hello" in vm.console and vm.hv.vcpus[0].vmcb.event_inj is None


def _kernel(vm: VirtualMachine) -> GuestKernel:
    kernel = guest_software(vm.hv.vcpus[0])
    assert isinstance(kernel, GuestKernel)
    return kernel


CODE_GPA = 0x300000  # private guest RAM below the program, where a test writes instructions


def test_an_injected_vc_emulates_its_exit_code_and_steps_over(
        build: Callable[..., Path], booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("sev-es", build)
    cpu, kernel = guest_cpu(vm.hv.vcpus[0]), _kernel(vm)
    cpu.write(CODE_GPA, b"\x0f\xa2")  # CPUID
    cpu.set_reg("rip", CODE_GPA)
    cpu.set_reg("rax", 0x8000_001F)
    cpu.set_reg("rcx", 0)
    kernel.on_event(cpu, 29, ExitCode.CPUID)
    assert cpu.reg("rbx") & 0x3F == 51 and cpu.reg("rip") == CODE_GPA + 2
    # with the check on, the same #VC at an instruction that is not CPUID ends the VM
    cpu.set_reg("rax", 117)  # SYS_KERNEL_OPTIONS, as the program's crt0 makes it
    cpu.set_reg("rdi", KernelOption.VC_INSN_CHECK)
    kernel.on_syscall(cpu)
    assert kernel.options(cpu) == KernelOption.VC_INSN_CHECK
    cpu.write(CODE_GPA, b"\x90\x90")
    cpu.set_reg("rip", CODE_GPA)
    with pytest.raises(GuestFault, match="whose instruction does not cause that exit"):
        kernel.on_event(cpu, 29, ExitCode.CPUID)


def test_an_injected_vc_the_handler_cannot_emulate_ends_the_vm(
        build: Callable[..., Path], booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("sev-es", build)
    cpu = guest_cpu(vm.hv.vcpus[0])
    with pytest.raises(GuestFault, match="0x7b the handler cannot emulate"):
        _kernel(vm).on_event(cpu, 29, ExitCode.IOIO)
    vm = booted("sev-es", build)
    with pytest.raises(GuestFault, match="0x1234 the handler cannot emulate"):
        _kernel(vm).on_event(guest_cpu(vm.hv.vcpus[0]), 29, 0x1234)


def test_int_0x80_runs_32_bit_system_calls_and_other_vectors_are_spurious(
        build: Callable[..., Path], booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("sev", build)
    cpu, kernel = guest_cpu(vm.hv.vcpus[0]), _kernel(vm)
    for nr, result in ((0, -EINTR), (20, 1), (4242, -ENOSYS)):
        cpu.set_reg("rax", nr)
        kernel.on_event(cpu, 0x80, 0)
        assert cpu.reg("rax") == result & (1 << 64) - 1
    cpu.set_reg("rax", 7)
    rip = cpu.reg("rip")
    for vector in (28, 29, 32):  # #HV, #VC without SEV-ES, an interrupt nobody raises
        kernel.on_event(cpu, vector, ExitCode.VMMCALL)
    assert (cpu.reg("rax"), cpu.reg("rip")) == (7, rip)


# -- guest kernel options ----------------------------------------------------------------------


@pytest.mark.parametrize(("cflags", "before"), [((), 0), (("-DSEV_KERNEL_OPTIONS=3",), 3)])
def test_kernel_options_come_from_the_build_and_only_go_up(
        build: Callable[..., Path], cflags: tuple[str, ...], before: int) -> None:
    vm = Host(memory="64M").create_vm("snp", "16M")
    vm.load(build("kopts", *cflags))
    vm.launch()
    vm.run(timeout=30)
    assert vm.console.strip() == f"options {before}, unknown -22, then {before | 1}"


def test_the_lab_builds_kernel_options_and_launches_sev_features() -> None:
    """With both features an injected int 0x80 would kill the hardened victim, but Alternate
    Injection drops it at VMRUN: the victim answers honestly."""
    lab = Lab(Setting("snp", features=frozenset({"no-ia32-emulation", "alternate-injection"})),
              Trace())
    victim = lab.victim("auth_check", honest=b"access denied")
    vcpu = victim.vm.hv.vcpus[0]
    for _ in range(40):  # the kernel boots, crt0 turns the option on
        lab.hypervisor.step(victim.vm)
    assert _kernel(victim.vm).options(guest_cpu(vcpu)) == KernelOption.NO_IA32_EMULATION
    lab.hypervisor.inject_event(victim.vm, 0x80)
    victim.vm.run(timeout=30)
    assert victim.vm.console.strip() == "access denied" and vcpu.vmcb.event_inj is None


# -- the C-bit: CPUID, page-table entries, the firmware's check ------------------------------


def test_an_honest_cpuid_maps_the_secret_page_private() -> None:
    lab = Lab(Setting("sev-es"), Trace())
    victim = lab.victim("secret_page_cbit")
    victim.vm.run(timeout=30)
    assert "C-bit 51" in victim.vm.console
    spa = lab.hypervisor.gpa_to_spa(victim.vm, victim.symbol("secret"))
    assert lab.hypervisor.read_spa(spa, 32).hex() != planted_secret("secret_page_cbit").hex()


def test_pte_attribute_bits_the_mmu_does_not_ignore_leave_guest_memory(
        build: Callable[..., Path], booted: Callable[..., VirtualMachine]) -> None:
    vm = booted("sev", build)
    cpu = guest_cpu(vm.hv.vcpus[0])
    cpu.set_pte_attributes(CODE_GPA, 1, 1 << 58)  # an ignored bit: shared, plaintext to the host
    cpu.write(CODE_GPA, b"plain")
    assert vm.read_gpa(CODE_GPA, 5) == b"plain"
    cpu.set_pte_attributes(CODE_GPA, 1, 1 << 51)  # the C-bit: private again
    cpu.write(CODE_GPA, b"plain")
    assert vm.read_gpa(CODE_GPA, 5) != b"plain"
    with pytest.raises(GuestFault, match="0x800000000000 of the entry"):
        cpu.set_pte_attributes(CODE_GPA, 1, 1 << 47)


@pytest.mark.parametrize("ebx_change", [lambda ebx: ebx & ~0x3F | 47,
                                        lambda ebx: ebx + (1 << 6)])
def test_the_firmware_refuses_a_cpuid_page_with_another_c_bit(
        build: Callable[..., Path], ebx_change: Callable[[int], int]) -> None:
    host = Host(memory="64M")
    eax, ebx, ecx, edx = host.hypervisor.chip.leaf_8000001f().registers()
    host.hypervisor.cpuid_overrides[0x8000_001F] = (eax, ebx_change(ebx), ecx, edx)
    vm = host.create_vm("snp", "16M")
    vm.load(build("hello"))
    with pytest.raises(FirmwareError, match="CPUID page claims Fn8000_001F EBX") as err:
        vm.launch()
    assert err.value.status == SevStatus.INVALID_PARAM


def test_the_vmms_cpuid_table_answers_every_way_a_guest_asks() -> None:
    """Under SEV-ES a lie reaches the guest through the GHCB, and SEV_INFO's C-bit (the MSR
    protocol) says the same, so the kernel's consistency check cannot catch it."""
    lab = Lab(Setting("sev-es"), Trace())
    eax, ebx, ecx, edx = lab.hypervisor.host_cpuid(0x8000_001F)
    lab.hypervisor.set_cpuid(0x8000_001F, (eax, ebx & ~0x3F | 52, ecx, edx))
    victim = lab.victim("secret_page_cbit")
    victim.vm.run(timeout=30)
    assert "C-bit 52" in victim.vm.console
    with pytest.raises(ConfigError, match="0x8000001F only"):
        lab.hypervisor.host_cpuid(1)


@pytest.mark.parametrize(("mode", "c_bit"), [("sev-es", 52), ("snp", 51)])
def test_a_lie_after_an_snp_launch_meets_the_cpuid_page(mode: str, c_bit: int) -> None:
    """A lie told after launch reaches an SEV-ES guest through the GHCB; an SNP guest asks
    the CPUID page the firmware checked at launch, so its secret page stays private."""
    lab = Lab(Setting(mode), Trace())
    victim = lab.victim("secret_page_cbit")
    eax, ebx, ecx, edx = lab.hypervisor.host_cpuid(0x8000_001F)
    lab.hypervisor.set_cpuid(0x8000_001F, (eax, ebx & ~0x3F | 52, ecx, edx))
    victim.vm.run(timeout=30)
    assert f"C-bit {c_bit}," in victim.vm.console
    spa = lab.hypervisor.gpa_to_spa(victim.vm, victim.symbol("secret"))
    leaked = lab.hypervisor.read_spa(spa, 32).hex() == planted_secret("secret_page_cbit").hex()
    assert leaked is (mode == "sev-es")
