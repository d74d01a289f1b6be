"""`sevsim attack`: list, a narrated run, the matrix as JSON, typed errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def sevsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_list_names_every_attack() -> None:
    from sevsim.attacks.catalog import ATTACKS

    ran = sevsim("attack", "list")
    assert ran.returncode == 0, ran.stderr
    for attack in ATTACKS.values():
        assert attack.id in ran.stdout


def test_run_narrates_a_success_with_the_data() -> None:
    ran = sevsim("attack", "run", "A0", "--mode", "none")
    assert ran.returncode == 0, ran.stderr
    assert "read 32 bytes at SPA" in ran.stdout
    assert "BROKEN ✗: the attack got" in ran.stdout


def test_run_names_what_stopped_the_attack() -> None:
    ran = sevsim("attack", "run", "a0", "--mode", "sev", "--json")
    assert ran.returncode == 0, ran.stderr
    outcome = json.loads(ran.stdout)
    assert outcome["verdict"] == "✓" and "private to ASID" in outcome["stopped_by"]
    assert outcome["evidence"] and outcome["trace"]


def test_matrix_json_has_a_cell_per_mode() -> None:
    ran = sevsim("attack", "matrix", "--only", "A0", "--json", "--jobs", "1")
    assert ran.returncode == 0, ran.stderr
    doc = json.loads(ran.stdout)
    assert [c["mode"] for c in doc["cells"]][:4] == ["none", "sev", "sev-es", "snp"]
    assert [c["verdict"] for c in doc["cells"]][:4] == ["✗", "✓", "✓", "✓"]


@pytest.mark.parametrize(("args", "message"), [
    (("run", "A99"), "no attack 'A99'"),
    (("run", "A0", "--mode", "tdx"), "unknown mode 'tdx'"),
    (("run", "A0", "--feature", "magic"), "unknown feature 'magic'"),
    (("run", "A0", "--chip", "zen9"), "zen9"),
    (("matrix", "--jobs", "0", "--only", "A0"), "at least one"),
])
def test_bad_input_is_a_typed_error(args: tuple[str, ...], message: str) -> None:
    ran = sevsim("attack", *args)
    assert ran.returncode != 0
    assert message in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_mode_the_chip_lacks_is_an_error_not_a_verdict() -> None:
    ran = sevsim("attack", "run", "A0", "--mode", "sev-es", "--chip", "naples")
    assert ran.returncode != 0
    assert "naples" in ran.stderr and "STOPPED" not in ran.stdout
