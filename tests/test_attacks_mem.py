"""The memory attacks (A0's fix, A1, A3, A4, A10, A16) and the mechanisms they meet: ciphertext
hiding, VMSA register protection, DRAM aliasing and the boot-time alias check. Their verdicts
at every level and fix, with what each cell shows, are checked in tests/test_attack_matrix.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sevsim import Host
from sevsim.abi.cpuid import SevStatusMsr
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import PlatformInfo, PolicyFlags, SnpPolicy
from sevsim.abi.status import SevStatus
from sevsim.abi.svm import (
    SEVSIM_HC_HOST_INPUT,
    SEVSIM_HC_TPM_BOOT_READ,
    SEVSIM_HC_TPM_TRANSMIT,
)
from sevsim.abi.vmsa import (
    OFFSETS,
    SEV_FEATURES_SNP,
    SEV_FEATURES_VMSA_REG_PROT,
    Vmsa,
    protect_registers,
    reset_state,
    unprotect_registers,
)
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import Outcome, Setting, Verdict
from sevsim.attacks.lab import VICTIMS
from sevsim.attacks.runner import run_attack
from sevsim.attacks.toolkit import HypervisorAttacker, PhysicalAttacker
from sevsim.errors import (
    ConfigError,
    FirmwareError,
    MemoryAccessError,
    RmpViolation,
    VmStateError,
)
from sevsim.firmware.snp import SnpStatusFlags
from sevsim.guest.build import build_guest
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.chips import TweakMode
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import memory_controller

X, OK, NA = Verdict.BROKEN, Verdict.STOPPED, Verdict.NOT_APPLICABLE
def _run(attack_id: str, setting: Setting) -> Outcome:
    return run_attack(ATTACKS[attack_id], setting)


# -- what the successes show -------------------------------------------------------------------
def test_cold_boot_reads_a_plain_vm_s_secret_and_only_ciphertext_of_an_encrypted_one() -> None:
    plain, sev = _run("A1", Setting("none")), _run("A1", Setting("sev"))
    assert plain.verdict is X and len(bytes.fromhex(plain.evidence)) == 32
    assert sev.evidence != plain.evidence  # the same secret, as ciphertext


def test_replay_unlocks_the_pin_pad_and_snp_refuses_the_write_back() -> None:
    broken = _run("A3", Setting("sev-es"))
    assert "ACCESS GRANTED" in broken.evidence
    assert any("read the counter's block at its SPA" in step for step in broken.trace)
    assert "RMP violation" in _run("A3", Setting("snp")).stopped_by


def test_block_move_forges_the_exact_role_only_under_the_zen1_tweak() -> None:
    """The "Zen 2 tweak" column from both sides: the fail-closed victim falls on Naples (XE,
    Δ learned, the chosen role lands exactly) and holds on Rome (XEX: garbage)."""
    naples = _run("A4", Setting("sev", "naples", frozenset({"fail-closed-checks"})))
    assert naples.verdict is X and "role 21746f6f72212121: access granted" in naples.evidence
    assert any("exactly the chosen ROLE_ADMIN" in step for step in naples.trace)
    rome = _run("A4", Setting("sev", "rome", frozenset({"fail-closed-checks"})))
    assert rome.verdict is OK and "access denied" in rome.evidence
    milan = _run("A4", Setting("sev"))  # fail-open victim: garbage passes
    assert milan.verdict is X and "21746f6f72212121" not in milan.evidence
    assert any("another SPA's tweak" in step for step in milan.trace)


def test_cipherleaks_recovers_the_key_from_two_ciphertexts() -> None:
    outcome = _run("A10", Setting("snp"))
    assert outcome.verdict is X and len(bytes.fromhex(outcome.evidence)) == 32
    assert any("2 distinct ciphertexts" in step for step in outcome.trace)


def test_badram_replays_an_snp_guest_through_the_alias() -> None:
    outcome = _run("A16", Setting("snp"))
    assert outcome.verdict is X and "ACCESS GRANTED" in outcome.evidence
    assert any("has no RMP entry" in step for step in outcome.trace)


def test_attacks_are_deterministic() -> None:
    first, second = _run("A10", Setting("sev-es")), _run("A10", Setting("sev-es"))
    assert (first.verdict, first.evidence, first.trace) == (
        second.verdict, second.evidence, second.trace)


# -- ciphertext hiding -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secret_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("victims") / "secret.elf"
    build_guest([VICTIMS / "secret_in_memory.c"], out,
                cflags=tuple(f"-DSECRET_{i}=0x{0x1111111111111111 * (i + 1):016x}ULL"
                             for i in range(4)))
    return out


def _launched(host: Host, elf: Path, mode: str = "snp", **launch: int) -> VirtualMachine:
    vm = host.create_vm(mode, "16M")
    vm.load(elf)
    vm.launch(**launch)
    return vm


def test_ciphertext_hiding_returns_ff_to_host_reads_of_snp_memory_only(secret_elf) -> None:
    host = Host("genoa", "128M", seed=b"cth", platform="smt,ecc,alias-check,ciphertext-hiding")
    snp, sev_es = _launched(host, secret_elf), _launched(host, secret_elf, "sev-es")
    for vm in (snp, sev_es):
        vm.run(timeout=30)
    page = host.hypervisor.gpa_to_spa(snp.hv, 0x403000)
    assert host.hypervisor.read_spa(page, 64) == b"\xff" * 64
    assert snp.read_gpa(0x403000, 16) == b"\xff" * 16
    assert sev_es.read_gpa(0x403000, 16) != b"\xff" * 16  # no RMP entry: not hidden
    shared = snp.shared_pages()
    assert shared and snp.read_gpa(shared[0], 16) != b"\xff" * 16  # shared pages stay readable
    # the cells and the modules are not the CPU's reads: firmware and a cold boot see ciphertext
    assert memory_controller(host).read(page, 16) != b"\xff" * 16
    assert host.dram_dump()[page:page + 16].tobytes() != b"\xff" * 16
    assert host.hypervisor.dram_dump()[page:page + 16].tobytes() == b"\xff" * 16
    flags = host.firmware.snp_platform_status().flags
    assert SnpStatusFlags.CIPHERTEXT_HIDING_CAP in flags
    assert SnpStatusFlags.CIPHERTEXT_HIDING_EN in flags


def test_ciphertext_hiding_is_off_by_default_and_only_on_parts_that_have_it() -> None:
    with pytest.raises(ConfigError, match="Milan has no ciphertext hiding"):
        Host("milan", "64M", platform="ciphertext-hiding")
    genoa = Host("genoa", "64M")
    assert SnpStatusFlags.CIPHERTEXT_HIDING_EN not in genoa.firmware.snp_platform_status().flags
    milan = Host("milan", "64M")
    with pytest.raises(FirmwareError) as refused:
        milan.firmware.snp_init(ciphertext_hiding_asids=10)
    assert refused.value.status is SevStatus.INVALID_PARAM


# -- VMSA register protection ------------------------------------------------------------------
def test_register_protection_masks_the_registers_with_the_page_s_nonce() -> None:
    page = Vmsa({"r12": 1, "rip": 0x1000, "vmpl": 0, "sev_features": 1}).to_bytes()
    masked = protect_registers(page, 0xDEADBEEF)
    r12, vmpl = OFFSETS["r12"][0], OFFSETS["sev_features"][0]
    assert masked[r12:r12 + 8] == (1 ^ 0xDEADBEEF).to_bytes(8, "little")
    assert masked[vmpl:vmpl + 8] == page[vmpl:vmpl + 8]  # the hypervisor's fields stay clear
    assert unprotect_registers(masked) == page


def _r12_blocks(elf: Path, features: int) -> list[bytes]:
    """The VMSA's R12/R13 ciphertext at every exit of one SNP run."""
    host = Host("milan", "64M", seed=b"regprot")
    vm = _launched(host, elf, guest_features=features)
    attacker = HypervisorAttacker(host.hypervisor)
    seen: list[bytes] = []
    attacker.on_exit(vm, lambda cpu, exit: seen.append(
        attacker.read_spa(cpu.vmsa_spa + 0x360, 16)))
    assert "secret in place" in vm.run(timeout=30).console  # the masked VMSA still runs
    return seen


def test_register_protection_changes_the_r12_block_at_every_exit(secret_elf: Path) -> None:
    plain = _r12_blocks(secret_elf, SEV_FEATURES_SNP)
    masked = _r12_blocks(secret_elf, SEV_FEATURES_SNP | SEV_FEATURES_VMSA_REG_PROT)
    assert len(set(plain)) < len(plain)  # R12/R13 unchanged between exits: same ciphertext
    assert len(set(masked)) == len(masked) > 1  # a fresh nonce every save


def test_the_guest_sees_register_protection_in_sev_status(secret_elf: Path) -> None:
    page = reset_state(SEV_FEATURES_SNP | SEV_FEATURES_VMSA_REG_PROT).to_bytes()
    assert Vmsa.from_bytes(page).regs["sev_features"] == 0x4001  # measured at launch
    for features in (SEV_FEATURES_SNP, SEV_FEATURES_SNP | SEV_FEATURES_VMSA_REG_PROT):
        vm = _launched(Host("milan", "64M"), secret_elf, guest_features=features)
        vm.run(timeout=30)
        status = vm.hv.vcpus[0].sev_status()
        assert bool(status & SevStatusMsr.VMSA_REG_PROT) == (features != SEV_FEATURES_SNP)
        assert status & SevStatusMsr.SNP


# -- DRAM aliasing and the alias check ---------------------------------------------------------
def test_an_aliased_module_answers_at_two_spas_and_the_rmp_sees_only_one() -> None:
    memory = MemoryController(64 * PAGE, EncryptionEngine(TweakMode.XEX_STRONG))
    offset = memory.claim_extra_address_bit()
    assert offset == 64 * PAGE and memory.mapped_size == 128 * PAGE
    memory.write(5 * PAGE + 16, b"through the alias")
    memory.write(offset + 6 * PAGE, b"x" * 16)
    assert memory.read(offset + 5 * PAGE + 16, 17) == b"through the alias"
    assert memory.read(6 * PAGE, 16) == b"x" * 16
    memory.rmp.enabled = True
    memory.rmp.rmpupdate(np.array([7]), 1, np.array([0]))
    with pytest.raises(RmpViolation):
        memory.write(7 * PAGE, b"y" * 16)
    memory.write(offset + 7 * PAGE, b"y" * 16)  # the alias frame has no RMP entry
    assert memory.read(7 * PAGE, 16) == b"y" * 16
    with pytest.raises(MemoryAccessError, match="outside the aliased DRAM"):
        memory.read(2 * offset - 8, 16)


def test_the_alias_check_refuses_snp_init_on_aliased_modules_only() -> None:
    checked = Host("milan", "64M")  # the preset's firmware has the fix
    PhysicalAttacker(checked).spd_alias()
    with pytest.raises(FirmwareError) as refused:
        checked.create_vm("snp", "16M")
    assert refused.value.status is SevStatus.INVALID_CONFIG
    assert not checked.firmware.snp_initialized
    unchecked = Host("milan", "64M", platform="smt,tsme,ecc")
    PhysicalAttacker(unchecked).spd_alias()
    unchecked.create_vm("snp", "16M")  # the platform without the fix comes up
    clean = Host("milan", "64M")
    clean.create_vm("snp", "16M")
    assert clean.firmware.snp_initialized
    assert memory_controller(clean).read(0, 16) == bytes(16)  # the probe left no trace


def test_the_spd_is_read_at_boot() -> None:
    host = Host("milan", "64M")
    host.create_vm("sev", "16M")
    with pytest.raises(VmStateError, match="at boot"):
        PhysicalAttacker(host).spd_alias()


def test_on_hypercall_sees_each_request_before_the_vmm_answers(tmp_path) -> None:
    elf = tmp_path / "pin.elf"
    build_guest([VICTIMS / "pin_lockout.c"], elf,
                cflags=tuple(f"-DSECRET_{i}=0x{i}ULL" for i in range(4)))  # PIN 10
    host = Host("milan", "64M")
    vm = _launched(host, elf, "sev-es")
    seen: list[int] = []

    def wrong_guess(nr: int) -> None:
        seen.append(nr)
        vm.host_input = b"99"  # queued before the VMM hands input over

    HypervisorAttacker(host.hypervisor).on_hypercall(vm, wrong_guess)
    assert "LOCKED OUT" in vm.run(timeout=30).console
    # the boot's TPM probe and its question for boot files first
    assert seen == [SEVSIM_HC_TPM_TRANSMIT, SEVSIM_HC_TPM_BOOT_READ] + [SEVSIM_HC_HOST_INPUT] * 3


@pytest.mark.parametrize(("platform", "expected"), [
    ("smt", PlatformInfo.SMT_EN),
    ("smt,ciphertext-hiding,alias-check",
     PlatformInfo.SMT_EN | PlatformInfo.CIPHERTEXT_HIDING_EN | PlatformInfo.ALIAS_CHECK_COMPLETE),
])
def test_reports_tell_the_verifier_about_hiding_and_the_alias_check(
        build: Callable[..., Path], platform: str, expected: PlatformInfo) -> None:
    host = Host("genoa", "64M", platform=platform)
    vm = _launched(host, build("report"))
    vm.host_input = bytes(64)
    vm.run(timeout=30)
    report = AttestationReport.from_bytes(vm.outputs[0])
    assert PlatformInfo.from_int(report.platform_info) == expected


def test_a_policy_requiring_ciphertext_hiding_launches_only_where_it_is_on(
        secret_elf: Path) -> None:
    policy = int(SnpPolicy(PolicyFlags.SMT | PolicyFlags.CIPHERTEXT_HIDING).to_int())
    hidden = Host("genoa", "64M", platform="smt,ecc,alias-check,ciphertext-hiding")
    _launched(hidden, secret_elf, policy=policy)
    with pytest.raises(FirmwareError, match="has not enabled"):
        _launched(Host("genoa", "64M"), secret_elf, policy=policy)
