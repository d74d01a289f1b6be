"""The computed attack matrix equals attacks.md §3 cell by cell.

Nothing in sevsim writes a verdict down: each cell below is what the research note predicts,
and the test runs the attack to see whether the simulated hardware, firmware and guest agree.
The matrix is computed once (as `sevsim attack matrix` does); beside each verdict the test
checks what the cell shows: the data a broken cell recovered or changed, the mechanism that
stopped a stopped one. The mechanisms themselves are tested in tests/test_attacks_*.py.
"""

from __future__ import annotations

import pytest

from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import MODES, Outcome, Verdict
from sevsim.attacks.lab import planted_secret
from sevsim.attacks.runner import run_matrix

X, OK, NA = Verdict.BROKEN, Verdict.STOPPED, Verdict.NOT_APPLICABLE
# attacks.md §3: none, sev, sev-es, snp as shipped
EXPECTED = {
    "A0": (X, OK, OK, OK), "A1": (X, OK, OK, OK), "A2": (X, X, OK, OK),
    "A3": (X, X, X, OK), "A4": (X, X, X, OK), "A5": (X, X, X, OK), "A6": (X, X, X, OK),
    "A7": (X, X, X, X), "A8": (NA, X, X, OK), "A9": (NA, X, X, OK), "A10": (NA, NA, X, X),
    "A11": (X, X, X, X), "A12": (NA, X, X, OK), "A13": (NA, NA, X, X),
    "A14": (NA, X, X, X), "A15": (NA, X, X, X), "A16": (X, X, X, X), "A17": (NA, X, X, X),
    "A19": (NA, NA, NA, X), "A20": (X, X, X, OK), "F1": (NA, X, X, NA),
    "F2": (NA, X, X, OK), "F3": (NA, X, X, OK),
}
# §3's fix column: the settings each attack names as its fix or feature, every one of which
# must stop it ("(✓fix)", the Zen 2 tweak, Genoa's ciphertext hiding, the guest's options)
FIXES = {
    "A0": {"snp@genoa+ciphertext-hiding"},
    "A4": {"sev@rome+fail-closed-checks", "sev-es@rome+fail-closed-checks"},
    "A10": {"snp+vmsa-reg-prot", "snp@genoa+ciphertext-hiding"},
    "A13": {"snp+vc-insn-check", "snp+restricted-injection", "snp+alternate-injection"},
    "A14": {"snp+no-ia32-emulation", "snp+restricted-injection", "snp+alternate-injection"},
    "A15": {"snp+invd-fixed-ucode", "snp@genoa"},
    "A16": {"snp+alias-check"},
    "A17": {"snp+page-move-disabled", "snp@genoa+ciphertext-hiding"},
    "A19": {"snp+fixed-firmware"},
    "F1": {"sev+fixed-firmware", "sev-es+fixed-firmware"},
}

# What a broken cell shows: the secret the lab planted in the named victim (the referee's
# ground truth), or the victim's changed answer.
SECRET_IN = {"A0": "secret_in_memory", "A1": "secret_in_memory", "A2": "secret_in_registers",
             "A5": "response_service", "A6": "bounce_io", "A7": "page_channel",
             "A8": "response_service", "A9": "tlb_tenants", "A10": "ladder",
             "A11": "step_channel", "A12": "secret_page_cbit", "A13": "secret_in_rax",
             "A17": "keypad_echo", "A20": "measured_boot", "F1": "launch_secret",
             "F2": "secret_in_memory"}
ANSWER = {"A3": "'PIN OK: ACCESS GRANTED'", "A4": ": access granted'",
          "A14": "'access granted'", "A15": "'access granted'",
          "A16": "'PIN OK: ACCESS GRANTED'", "A19": "'access granted'",
          "F3": "'maintenance shell: OPEN'"}

# What stops each stopped or n/a cell: parts its `stopped_by` names ("^": how it begins).
STOPPED_BY: dict[tuple[str, str], tuple[str, ...]] = {
    **{("A0", mode): ("private to ASID",) for mode in ("sev", "sev-es", "snp")},
    ("A0", "snp@genoa+ciphertext-hiding"): ("0xFF",),
    **{("A1", mode): ("key slot",) for mode in ("sev", "sev-es", "snp")},
    ("A2", "sev-es"): ("^VmrunError: vCPU 0: VMRUN refused: the VMSA at SPA",),
    ("A2", "snp"): ("^RmpViolation: RMP violation: host write to SPA",),
    ("A3", "snp"): ("RmpViolation",),
    ("A4", "snp"): ("RmpViolation",),
    ("A4", "sev@rome+fail-closed-checks"): ("another SPA's tweak",),
    ("A4", "sev-es@rome+fail-closed-checks"): ("another SPA's tweak",),
    ("A5", "snp"): ("RMP check failed", "SPA 0x"),
    ("A6", "snp"): ("#NPF with the RMP bit", "SPA 0x"),
    ("A8", "none"): ("no memory encryption",),
    ("A8", "snp"): ("RMP check failed", "SPA 0x"),
    ("A9", "none"): ("no memory encryption",),
    ("A9", "snp"): ("flushed the ASID",),
    ("A10", "none"): ("VMCB",),
    ("A10", "sev"): ("VMCB",),
    ("A10", "snp+vmsa-reg-prot"): ("register protection",),
    ("A10", "snp@genoa+ciphertext-hiding"): ("ciphertext hiding",),
    ("A12", "snp"): ("^FirmwareError: INVALID_PARAM (0x16): CPUID page claims Fn8000_001F EBX",),
    ("A13", "snp+vc-insn-check"): (
        "^GuestFault: vCPU 0: guest kernel terminated the VM: #VC with exit code 0x81",),
    ("A13", "snp+restricted-injection"): (
        "^VmrunError: vCPU 0: VMRUN refused: Restricted Injection: EVENTINJ holds vector 29",),
    ("A13", "snp+alternate-injection"): ("^0 of 4 injected #VC reached the GHCB",),
    ("A14", "snp+no-ia32-emulation"): ("^GuestFault: vCPU 0: int 0x80 with IA32 emulation "
                                       "disabled",),
    ("A14", "snp+restricted-injection"): (
        "^VmrunError: vCPU 0: VMRUN refused: Restricted Injection: EVENTINJ holds vector 128",),
    ("A14", "snp+alternate-injection"): ("^the victim still answered 'access denied'",),
    ("A15", "snp+invd-fixed-ucode"): ("INVD wrote the dirty line back",),
    ("A15", "snp@genoa"): ("INVD wrote the dirty line back",),
    ("A16", "snp+alias-check"): ("DRAM alias check failed",),
    ("A19", "snp+fixed-firmware"): ("^RmpViolation: RMP violation: host write",
                                    "belongs to the firmware"),
    ("A20", "snp"): ("^QuoteError: signature: the AK's signature over TPMS_ATTEST",),
    ("F1", "sev+fixed-firmware"): ("INVALID_CERTIFICATE", "not on P-384"),
    ("F1", "sev-es+fixed-firmware"): ("INVALID_CERTIFICATE", "not on P-384"),
}
# what the victim answered where the attack was stopped
STOPPED_EVIDENCE = {("A15", "snp+invd-fixed-ucode"): "'access denied'",
                    ("A15", "snp@genoa"): "'access denied'"}


@pytest.fixture(scope="module")
def matrix() -> list[Outcome]:
    return run_matrix(jobs=2)


def names(stopped_by: str, parts: tuple[str, ...]) -> bool:
    return all(stopped_by.startswith(part[1:]) if part.startswith("^") else part in stopped_by
               for part in parts)


def test_the_catalog_covers_every_row_the_model_can_express() -> None:
    assert sorted(ATTACKS) == sorted(EXPECTED)


@pytest.mark.parametrize("attack_id", sorted(EXPECTED))
def test_each_row_is_computed_as_the_catalog_predicts(matrix: list[Outcome],
                                                      attack_id: str) -> None:
    mine = [o for o in matrix if o.attack == attack_id]
    base, fixes = mine[:len(MODES)], mine[len(MODES):]  # the runner's order: modes, then fixes
    assert [o.setting.mode for o in base] == list(MODES)
    got = tuple(o.verdict for o in base)
    assert got == EXPECTED[attack_id], [(o.setting.label, o.stopped_by) for o in base]
    assert {o.setting.label for o in fixes} == FIXES.get(attack_id, set())
    assert all(o.verdict is OK for o in fixes), [(o.setting.label, o.evidence) for o in fixes]


@pytest.mark.parametrize("attack_id", sorted(EXPECTED))
def test_each_cell_shows_its_data_or_what_stopped_it(matrix: list[Outcome],
                                                     attack_id: str) -> None:
    for outcome in (o for o in matrix if o.attack == attack_id):
        cell = (attack_id, outcome.setting.label)
        if outcome.verdict is X:
            assert not outcome.stopped_by, cell
            if attack_id in SECRET_IN:
                assert outcome.evidence == planted_secret(SECRET_IN[attack_id]).hex(), cell
            else:
                assert outcome.evidence and ANSWER[attack_id] in outcome.evidence, cell
        else:
            assert outcome.stopped_by, cell
            if cell in STOPPED_BY:
                assert names(outcome.stopped_by, STOPPED_BY[cell]), (cell, outcome.stopped_by)
            if cell in STOPPED_EVIDENCE:
                assert outcome.evidence == STOPPED_EVIDENCE[cell], cell
        if outcome.verdict is NA:
            assert not outcome.trace, cell  # not run
        else:
            assert outcome.trace, cell  # the run is narrated


def test_every_expectation_names_a_cell_of_the_matrix(matrix: list[Outcome]) -> None:
    """A table entry for a cell that does not exist, or is not stopped, would check nothing."""
    stopped = {(o.attack, o.setting.label) for o in matrix if o.verdict is not X}
    assert set(STOPPED_BY) | set(STOPPED_EVIDENCE) <= stopped
    broken_rows = {o.attack for o in matrix if o.verdict is X}
    assert set(SECRET_IN) | set(ANSWER) == broken_rows
    assert not set(SECRET_IN) & set(ANSWER)
