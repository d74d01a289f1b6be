"""`--json` on the commands that report, and progress bars on long work: the JSON says what the
text says (computed by the same run), a failed run still reports as JSON with its exit status,
and a progress bar appears only where stderr is a terminal (FORCE_COLOR stands in for one),
never in what scripts read on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import fnv1a64, secret_bytes, symbol
from sevsim.attacks.catalog import ATTACKS
from sevsim.hw.chips import PRESETS

SECRET = secret_bytes()


def sevsim(*args: str | Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=None if env is None else {**os.environ, **env})


def as_json(ran: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    assert ran.returncode == status, ran.stderr
    return json.loads(ran.stdout)


def test_run_json_reports_the_run_and_its_digest(build) -> None:
    elf = build("secret")
    doc = as_json(sevsim("run", elf, "--mode", "snp", "--memory", "16M", "--json"))
    assert doc["mode"] == "snp" and doc["chip"] == "milan" and doc["encrypted"] is True
    assert doc["exit_code"] == 0 and doc["error"] is None and doc["secure_boot"] is None
    assert f"secret digest: {fnv1a64(SECRET):#018x}" in doc["console"]
    measured = as_json(sevsim("measure", elf, "--memory", "16M", "--json"))
    assert measured == {"mode": "snp", "digest": doc["snp_launch_digest"]}
    assert doc["launch_measurement"] is None  # SNP has no LAUNCH_MEASURE


def test_run_json_of_sev_carries_the_launch_measurement(build) -> None:
    doc = as_json(sevsim("run", build("secret"), "--mode", "sev", "--memory", "16M", "--json"))
    assert len(bytes.fromhex(doc["launch_measurement"])) == 32
    assert doc["snp_launch_digest"] is None and doc["asid"] >= 1


def test_run_json_of_a_guest_that_times_out(build) -> None:
    """The run still reports: no exit code, the error, exit status 124 as without --json."""
    ran = sevsim("run", build("spin", "-DWRITE_SIZE=1"), "--mode", "sev", "--memory", "16M",
                 "--timeout", "1", "--json")
    doc = as_json(ran, 124)
    assert doc["exit_code"] is None and doc["error"]["type"] == "GuestTimeout"
    assert "GuestTimeout" in ran.stderr


def test_chips_and_attack_list_json_are_the_tables() -> None:
    chips = as_json(sevsim("chips", "--json"))
    assert [c["chip"] for c in chips] == list(PRESETS)
    assert {c["chip"]: c["max_asid"] for c in chips} == {
        name: p.max_asid for name, p in PRESETS.items()}
    listed = as_json(sevsim("attack", "list", "--json"))
    assert [a["id"] for a in listed] == list(ATTACKS)
    assert listed[0]["fixes"] == [s.label for s in next(iter(ATTACKS.values())).fixes]


def test_owner_measure_json_agrees_with_measure(build) -> None:
    elf = build("secret")
    owner = as_json(sevsim("owner", "measure", elf, "--memory", "16M", "--json"))
    plain = sevsim("owner", "measure", elf, "--memory", "16M")
    assert owner["digest"] == plain.stdout.strip()
    assert as_json(sevsim("measure", elf, "--mode", "sev", "--memory", "16M", "--json")) == {
        "mode": "sev", "digest": owner["digest"]}


def test_debug_read_json_holds_the_bytes(build) -> None:
    elf = build("secret")
    page = symbol(elf, "secret_page")
    doc = as_json(sevsim("debug", "read", elf, hex(page), "64", "--memory", "16M", "--json"))
    assert bytes.fromhex(doc["data"]) == SECRET[:64]
    assert doc["gpa"] == hex(page) and doc["length"] == 64 and doc["policy"] == "0x0"


def test_idblock_json_is_the_text(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "id.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    args = ("idblock", "--measurement", "11" * 48, "--id-key", tmp_path / "id.pem")
    text = sevsim(*args, "-o", tmp_path / "a")
    doc = as_json(sevsim(*args, "-o", tmp_path / "b", "--json"))
    lines = dict(line.split(": ", 1) for line in text.stdout.splitlines())
    assert doc["id-key-digest"] == lines["id-key-digest"]
    assert doc["author-key-enabled"] == "off" and set(doc) == set(lines)
    # ECDSA signs anew each time: the ID block (no signature in it) is the same, the auth not
    assert doc["id-block"] == lines["id-block"]


@pytest.mark.parametrize("terminal", [False, True])
def test_matrix_progress_only_on_a_terminal(terminal: bool) -> None:
    env = {"FORCE_COLOR": "1", "COLUMNS": "200"} if terminal else {"TERM": "dumb"}
    ran = sevsim("attack", "matrix", "--only", "A3", "--jobs", "1", "--json", env=env)
    doc = as_json(ran)
    assert len(doc["cells"]) == 4
    assert ("attack matrix" in ran.stderr) is terminal
    if terminal:  # the bar counts the cells and names the last one done
        assert "4/4" in ran.stderr and "A3 snp ✓" in ran.stderr
