"""Attacks F1, F2, F3 and A17 (attacks.md §2; their verdicts at every level and fix are checked
in tests/test_attack_matrix.py) and the mechanisms they brought: SNP_PAGE_MOVE, firmware with
the AMD-SP code-execution flaw, the VMM's choice of LAUNCH_UPDATE order, the lab's firmware
flaws, guest owner terms and key broker, the invalid curves of CVE-2019-9836."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import secret_bytes, symbol
from sevsim import Host
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.snp_idblock import IdBlock
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import Generation
from sevsim.abi.snp_tcb import PolicyFlags as SnpPolicyFlags
from sevsim.abi.status import SevStatus
from sevsim.attacks.framework import Attempt, Setting, Trace, Verdict
from sevsim.attacks.lab import Lab
from sevsim.attacks.runner import attack_named, run_attack
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.errors import (
    AttestationError,
    ConfigError,
    FirmwareError,
    MeasurementError,
    SnpVerificationError,
)
from sevsim.firmware.snp_guest import DEFAULT_TCB
from sevsim.host.vmm import DEFAULT_SNP_POLICY
from sevsim.hw.engine import PAGE
from sevsim.testing import memory_controller, platform_identity, sign_report

X, OK, NA = Verdict.BROKEN, Verdict.STOPPED, Verdict.NOT_APPLICABLE
def test_heracles_recovers_the_secret_byte_by_byte_on_every_encrypted_level() -> None:
    for mode, how in (("sev", "remapped each ring page"), ("snp", "SNP_PAGE_MOVE works")):
        outcome = run_attack(attack_named("A17"), Setting(mode))
        assert outcome.verdict is X and len(bytes.fromhex(outcome.evidence)) == 32
        assert any(how in step for step in outcome.trace)
        assert "matched 32 of 32 records" in outcome.trace


def test_heracles_is_stopped_where_the_guest_policy_disables_page_moves() -> None:
    outcome = run_attack(attack_named("A17"), Setting("snp", features=frozenset(
        {"page-move-disabled"})))
    assert outcome.verdict is OK
    assert "POLICY_FAILURE" in outcome.stopped_by and "PAGE_SWAP_DISABLE" in outcome.stopped_by


def test_heracles_reads_only_0xff_under_ciphertext_hiding() -> None:
    outcome = run_attack(attack_named("A17"), Setting("snp", "genoa", frozenset(
        {"ciphertext-hiding"})))
    assert outcome.verdict is OK and "ciphertext hiding" in outcome.stopped_by


def test_the_fix_cells_of_heracles_are_the_catalogs() -> None:
    assert set(attack_named("A17").fixes) == {
        Setting("snp", "genoa", frozenset({"ciphertext-hiding"})),
        Setting("snp", features=frozenset({"page-move-disabled"}))}


def test_f2_migrates_under_sev_and_the_verifier_refuses_the_old_tcb_under_snp() -> None:
    sev = run_attack(attack_named("F2"), Setting("sev"))
    assert any("SEND_START accepted our chain" in step for step in sev.trace)
    snp = run_attack(attack_named("F2"), Setting("snp"))
    fixed = DEFAULT_TCB[Generation.MILAN]
    assert snp.stopped_by.startswith("AttestationError")
    assert f"tcb.reported.snp {fixed.snp - 1}, wants >= {fixed.snp}" in snp.stopped_by


def test_f3_is_stopped_by_the_launch_digest_under_snp() -> None:
    outcome = run_attack(attack_named("F3"), Setting("snp"))
    assert "BAD_MEASUREMENT" in outcome.stopped_by and "launch digest" in outcome.stopped_by
    broken = run_attack(attack_named("F3"), Setting("sev"))
    assert broken.evidence == "'maintenance shell: OPEN'"
    assert any("guest owner's check of the launch digest passed" in s for s in broken.trace)


def test_f1_recovers_the_pdh_key_and_opens_the_owners_launch_secret() -> None:
    outcome = run_attack(attack_named("F1"), Setting("sev"))
    assert outcome.verdict is X
    assert any("SEND_STARTs with off-curve points" in step for step in outcome.trace)
    found = next(step for step in outcome.trace if step.startswith("the PDH private key"))
    assert "odd: True, as LAUNCH_START said: True" in found or (
        "odd: False, as LAUNCH_START said: False" in found)
    fixed = run_attack(attack_named("F1"), Setting("sev", features=frozenset({"fixed-firmware"})))
    assert "INVALID_CERTIFICATE" in fixed.stopped_by and "not on P-384" in fixed.stopped_by


def test_the_invalid_curves_have_the_orders_the_table_says() -> None:
    """Each curve's order kills a point of it: the offline point counts are right."""
    from sevsim.abi.curve_a3 import P, multiply
    from sevsim.attacks.catalog.f01_invalid_curve import curves

    for curve in curves():
        x = next(x for x in range(1, 100)
                 if pow((x ** 3 - 3 * x + curve.b) % P, (P - 1) // 2, P) == 1)
        y = pow((x ** 3 - 3 * x + curve.b) % P, (P + 1) // 4, P)
        assert multiply(curve.points, (x, y, 1))[2] == 0
    torus = next(curves())
    point = torus.point_of_order(1 << 32)
    assert point is not None
    assert multiply(1 << 31, point)[2] and multiply(1 << 32, point)[2] == 0


def test_the_node_curve_leaks_the_key_modulo_small_orders() -> None:
    """The firmware's arithmetic on a point of order 5 of the node curve gives X of
    (k mod 5) times it: what the attack's offline guesses compare against."""
    from sevsim.abi.curve_a3 import affine, multiply, raw_ecdh_x, xs
    from sevsim.attacks.catalog.f01_invalid_curve import curves

    torus = next(curves())
    point = torus.point_of_order(5)
    assert point is not None
    for k in (7, 12, 1 << 300):
        assert raw_ecdh_x(k, *affine(point)) == xs([multiply(k % 5, point)])[0]


# -- SNP_PAGE_MOVE -------------------------------------------------------------------------------


@pytest.fixture
def snp_secret(build: Callable[..., Path]) -> tuple[Host, HypervisorAttacker, object, int]:
    """An SNP guest that generated its secret page, and the GPA of that page."""
    host = Host("milan", "64M", seed=b"page move")
    elf = build("secret")
    vm = host.create_vm("snp", "16M")
    vm.load(elf)
    vm.launch()
    vm.run(timeout=30)
    return host, HypervisorAttacker(host.hypervisor), vm, symbol(elf, "secret_page")


def test_page_move_re_encrypts_the_page_at_its_new_address(snp_secret) -> None:
    host, hv, vm, gpa = snp_secret
    src = hv.gpa_to_spa(vm, gpa)
    before = hv.read_spa(src, PAGE)
    entry = hv.rmp_entry(src)
    dst = hv.allocate_page()
    assert hv.page_move(vm, gpa, dst) == src
    assert hv.gpa_to_spa(vm, gpa) == dst
    cells = memory_controller(host).cells
    assert cells[dst:dst + PAGE].tobytes() == secret_bytes()  # the guest's plaintext moved
    after = hv.read_spa(dst, PAGE)
    assert after != before and after != secret_bytes()  # ciphertext under the new tweak
    moved = hv.rmp_entry(dst)
    assert (moved.assigned, moved.asid, moved.gpa, moved.validated) == (
        True, vm.asid, entry.gpa, entry.validated)
    assert not hv.rmp_entry(src).assigned
    hv.write_spa(src, b"the hypervisor's again")  # no RmpViolation: a host page


def test_page_move_refusals_name_their_status_and_change_nothing(snp_secret) -> None:
    host, hv, vm, gpa = snp_secret
    fw, gctx = host.firmware, vm.hv.firmware_handle
    src, dst = hv.gpa_to_spa(vm, gpa), hv.allocate_page()
    other = hv.gpa_to_spa(vm, gpa + PAGE)  # the shared page's frame: the guest's too
    state = (hv.read_spa(src, PAGE), hv.rmp_entry(src), hv.rmp_entry(dst))
    for status, args in ((SevStatus.INVALID_PAGE_STATE, (gctx, src, other)),
                         (SevStatus.INVALID_PAGE_STATE, (gctx, dst, src)),
                         (SevStatus.INVALID_ADDRESS, (gctx, src, dst + 8)),
                         (SevStatus.INVALID_GUEST, (gctx + PAGE, src, dst))):
        with pytest.raises(FirmwareError) as refused:
            fw.snp_page_move(*args)
        assert refused.value.status is status
        assert (hv.read_spa(src, PAGE), hv.rmp_entry(src), hv.rmp_entry(dst)) == state


def test_swap_out_seals_the_page_and_swap_in_brings_it_back_once(snp_secret) -> None:
    host, hv, vm, gpa = snp_secret
    fw = host.firmware
    src = hv.gpa_to_spa(vm, gpa)
    entry = hv.rmp_entry(src)
    sealed_at, home = hv.allocate_page(), hv.allocate_page()
    mdata = hv.swap_out(vm, gpa, sealed_at)
    assert len(mdata) == 64 and not hv.rmp_entry(src).assigned
    sealed = hv.read_spa(sealed_at, PAGE)
    assert sealed not in (secret_bytes(), hv.read_spa(src, PAGE))  # neither plain nor the VEK's
    hv.swap_in(vm, gpa, sealed_at, home, mdata)
    assert memory_controller(host).cells[home:home + PAGE].tobytes() == secret_bytes()
    back = hv.rmp_entry(home)
    assert (back.assigned, back.asid, back.gpa, back.validated) == (
        True, vm.asid, entry.gpa, entry.validated)
    assert hv.gpa_to_spa(vm, gpa) == home
    again = hv.allocate_page()
    with pytest.raises(FirmwareError) as replayed:  # the same sealed page twice: a replay
        fw.snp_page_swap_in(vm.hv.firmware_handle, sealed_at, again, mdata)
    assert replayed.value.status is SevStatus.INVALID_MDATA_ENTRY
    assert not hv.rmp_entry(again).assigned


def test_swap_in_refuses_a_tampered_page_or_entry(snp_secret) -> None:
    host, hv, vm, gpa = snp_secret
    fw, gctx = host.firmware, vm.hv.firmware_handle
    sealed_at, dst = hv.allocate_page(), hv.allocate_page()
    mdata = hv.swap_out(vm, gpa, sealed_at)
    moved = bytearray(mdata)
    moved[28] ^= 0x10  # the GPA the page comes back at
    for entry in (bytes(moved), mdata[:-1]):
        with pytest.raises(FirmwareError) as refused:
            fw.snp_page_swap_in(gctx, sealed_at, dst, entry)
        assert refused.value.status is SevStatus.INVALID_MDATA_ENTRY
    page = bytearray(hv.read_spa(sealed_at, PAGE))
    page[100] ^= 1
    hv.write_spa(sealed_at, bytes(page))
    with pytest.raises(FirmwareError) as refused:
        fw.snp_page_swap_in(gctx, sealed_at, dst, mdata)
    assert refused.value.status is SevStatus.INVALID_MDATA_ENTRY
    assert not hv.rmp_entry(dst).assigned


def test_page_move_obeys_page_swap_disable(build: Callable[..., Path]) -> None:
    host = Host("milan", "64M", seed=b"no moves")
    vm = host.create_vm("snp", "16M")
    vm.load(build("secret"))
    vm.launch(policy=DEFAULT_SNP_POLICY | SnpPolicyFlags.PAGE_SWAP_DISABLE)
    hv = HypervisorAttacker(host.hypervisor)
    for attempt in (lambda: hv.page_move(vm, 0x1000, hv.allocate_page()),
                    lambda: hv.swap_out(vm, 0x1000, hv.allocate_page())):
        with pytest.raises(FirmwareError) as refused:
            attempt()
        assert refused.value.status is SevStatus.POLICY_FAILURE


def test_page_move_needs_an_snp_guest(build: Callable[..., Path]) -> None:
    host = Host("milan", "64M", seed=b"sev")
    vm = host.create_vm("sev", "16M")
    vm.load(build("secret"))
    vm.launch()
    hv = HypervisorAttacker(host.hypervisor)
    with pytest.raises(FirmwareError) as refused:
        hv.page_move(vm, 0x1000, hv.allocate_page())
    assert refused.value.status is SevStatus.INVALID_PLATFORM_STATE


# -- the AMD-SP code-execution flaw --------------------------------------------------------------


def test_fixed_firmware_refuses_the_exploit_buffer() -> None:
    host = Host("milan", "32M", seed=b"fixed")
    with pytest.raises(FirmwareError) as refused:
        host.firmware.sp_exploit()
    assert refused.value.status is SevStatus.INVALID_PARAM
    assert host.firmware.tcb == DEFAULT_TCB[Generation.MILAN]


def test_vulnerable_firmware_hands_out_its_keys_and_runs_an_older_tcb() -> None:
    host = Host("milan", "32M", seed=b"flawed", vulnerable_sp_code_exec=True)
    fw = host.firmware
    dump = fw.sp_exploit()
    cek = platform_identity(fw).cek.private_numbers().private_value
    assert int.from_bytes(dump.cek, "big") == cek
    fixed = DEFAULT_TCB[Generation.MILAN]
    assert dump.tcb == fw.tcb == fw.current_tcb and dump.tcb.snp == fixed.snp - 1
    assert dump.vcek is not None
    vcek = ec.derive_private_key(int.from_bytes(dump.vcek, "big"), ec.SECP384R1())
    assert vcek.public_key().public_numbers() == fw.vcek_public_key(dump.tcb).public_numbers()
    naples = Host("naples", "32M", seed=b"flawed", vulnerable_sp_code_exec=True)
    assert naples.firmware.sp_exploit().vcek is None  # no SNP, no VCEK


# -- the lab: firmware flaws, owner terms, key broker ---------------------------------------------


def test_the_lab_runs_the_flawed_firmware_unless_the_setting_has_the_fix() -> None:
    flawed = Lab(Setting("sev"), Trace(), flaws=frozenset({"vulnerable_sp_code_exec"}))
    assert flawed.flaws == {"vulnerable_sp_code_exec"}
    assert flawed.hypervisor.firmware.sp_exploit().cek
    fixed = Lab(Setting("sev", features=frozenset({"fixed-firmware"})), Trace(),
                flaws=frozenset({"vulnerable_sp_code_exec"}))
    assert fixed.flaws == frozenset()
    with pytest.raises(FirmwareError):
        fixed.hypervisor.firmware.sp_exploit()
    with pytest.raises(ConfigError, match="unknown platform flaw"):
        Lab(Setting("sev"), Trace(), flaws=frozenset({"made-up"}))


@pytest.mark.parametrize("mode", ["sev", "sev-es", "snp"])
def test_an_honest_launch_passes_the_owners_terms(mode: str) -> None:
    lab = Lab(Setting(mode), Trace())
    victim = lab.victim("launch_config", launch=False)
    terms = lab.owner_terms(victim)
    victim.vm.launch(terms.policy, terms.owner, id_block=terms.id_block, id_auth=terms.id_auth)
    victim.vm.run(timeout=30)
    assert "maintenance shell: closed" in victim.vm.console
    assert lab.judge(Attempt(b"maintenance shell: closed", "")) is False


def test_the_owner_refuses_a_launch_in_another_order() -> None:
    lab = Lab(Setting("sev"), Trace())
    victim = lab.victim("launch_config", launch=False)
    order = victim.vm.measured_pages
    order[1], order[2] = order[2], order[1]
    terms = lab.owner_terms(victim)
    with pytest.raises(MeasurementError):
        victim.vm.launch(owner=terms.owner, page_order=order)


def test_page_order_must_be_a_permutation_of_the_measured_pages() -> None:
    lab = Lab(Setting("sev"), Trace())
    vm = lab.victim("launch_config", launch=False).vm
    pages = vm.measured_pages
    for bad in (pages[:-1], [*pages, pages[0]], [pages[0] + 8, *pages[1:]]):
        with pytest.raises(ConfigError, match="page_order"):
            vm.launch(page_order=bad)
    assert not vm.launched


def test_the_key_broker_releases_only_to_a_fixed_tcb_and_the_right_measurement() -> None:
    lab = Lab(Setting("snp"), Trace())
    victim = lab.victim("secret_in_memory")
    fw = lab.hypervisor.firmware
    terms = lab.owner_terms(victim)
    assert terms.id_block is not None
    chip = lab.hypervisor.hypervisor.chip

    def report(measurement: bytes) -> bytes:
        tcb = fw.tcb.to_int()
        body = AttestationReport(
            policy=DEFAULT_SNP_POLICY, current_tcb=tcb, reported_tcb=tcb, committed_tcb=tcb,
            launch_tcb=tcb, measurement=measurement, cpuid_fam_id=chip.family,
            cpuid_mod_id=chip.model, cpuid_step=chip.stepping, chip_id=fw.chip_id())
        return sign_report(fw, body.to_bytes(), fw.tcb)

    expected = IdBlock.from_bytes(terms.id_block).ld
    secret = lab.release_secret(report(expected), fw.certificate_table(fw.tcb))
    assert lab.judge(Attempt(secret, ""))
    with pytest.raises(AttestationError, match="measurement"):
        lab.release_secret(report(bytes(48)), fw.certificate_table(fw.tcb))
    with pytest.raises(SnpVerificationError):
        forged = bytearray(report(expected))
        forged[0x90] ^= 1  # a bit of the measurement, after signing
        lab.release_secret(bytes(forged), fw.certificate_table(fw.tcb))


def test_the_f2_victim_asks_for_a_genuine_amd_target() -> None:
    lab = Lab(Setting("sev"), Trace())
    victim = lab.victim("secret_in_memory", policy=int(PolicyFlags.NODBG | PolicyFlags.SEV))
    fw = lab.hypervisor.firmware
    policy = fw.guest_status(victim.vm.hv.firmware_handle).policy
    assert policy & PolicyFlags.SEV and policy & PolicyFlags.NODBG

