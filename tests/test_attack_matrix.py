"""The computed attack matrix equals attacks.md §3 cell by cell.

Nothing in sevsim writes a verdict down: each cell below is what the research note predicts,
and the test runs the attack to see whether the simulated hardware, firmware and guest agree.
"""

from __future__ import annotations

import pytest

from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import MODES, Verdict
from sevsim.attacks.runner import run_matrix

X, OK, NA = Verdict.BROKEN, Verdict.STOPPED, Verdict.NOT_APPLICABLE
# attacks.md §3: none, sev, sev-es, snp as shipped (the fix column is each attack's `fixes`,
# every one of which must stop it)
EXPECTED = {
    "A0": (X, OK, OK, OK), "A1": (X, OK, OK, OK), "A2": (X, X, OK, OK),
    "A3": (X, X, X, OK), "A4": (X, X, X, OK), "A5": (X, X, X, OK), "A6": (X, X, X, OK),
    "A7": (X, X, X, X), "A8": (NA, X, X, OK), "A9": (NA, X, X, OK), "A10": (NA, NA, X, X),
    "A11": (X, X, X, X), "A12": (NA, X, X, OK), "A13": (NA, NA, X, X),
    "A14": (NA, X, X, X), "A15": (NA, X, X, X), "A16": (X, X, X, X), "A17": (NA, X, X, X),
    "A19": (NA, NA, NA, X), "F1": (NA, X, X, NA), "F2": (NA, X, X, OK), "F3": (NA, X, X, OK),
}
# rows whose fix column names a fix or feature that must be run ("(✓fix)", Zen 2 tweak)
NEEDS_FIX_CELLS = {"A4", "A10", "A13", "A14", "A15", "A16", "A17", "A19", "F1"}


@pytest.fixture(scope="module")
def matrix():
    return run_matrix(jobs=2)


def test_the_catalog_covers_every_row_the_model_can_express() -> None:
    assert sorted(ATTACKS) == sorted(EXPECTED)


@pytest.mark.parametrize("attack_id", sorted(EXPECTED))
def test_each_row_is_computed_as_the_catalog_predicts(matrix, attack_id: str) -> None:
    if attack_id not in ATTACKS:
        pytest.fail(f"{attack_id} is not in the catalog yet")
    mine = [o for o in matrix if o.attack == attack_id]
    base, fixes = mine[:len(MODES)], mine[len(MODES):]  # the runner's order: modes, then fixes
    assert [o.setting.mode for o in base] == list(MODES)
    got = tuple(o.verdict for o in base)
    assert got == EXPECTED[attack_id], [(o.setting.label, o.stopped_by) for o in base]
    assert all(o.verdict is OK for o in fixes), [(o.setting.label, o.evidence) for o in fixes]
    if attack_id in NEEDS_FIX_CELLS:
        assert fixes, f"{attack_id} names a fix or feature: run the attack against it"


def test_every_success_shows_data_and_every_failure_names_its_mechanism(matrix) -> None:
    for outcome in matrix:
        if outcome.verdict is X:
            assert outcome.evidence, outcome
        else:
            assert outcome.stopped_by, outcome
        if outcome.verdict is not NA:
            assert outcome.trace, outcome  # the run is narrated
