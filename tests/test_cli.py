"""The `sevsim` command as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, blocks_found, secret_bytes


def sevsim(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_guest_build_then_run_in_both_modes(tmp_path: Path) -> None:
    elf = tmp_path / "hello.elf"
    built = sevsim("guest", "build", EXAMPLES / "hello.c", "-o", elf)
    assert built.returncode == 0, built.stderr
    for mode, chip in (("none", "rome"), ("sev", "genoa")):
        ran = sevsim("run", elf, "--mode", mode, "--chip", chip, "--memory", "16M")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith("Hello from a sevsim guest!\n")
        info = re.search(r"mode=(\S+) chip=(\S+) asid=(\d+)", ran.stderr)
        assert info and info.group(1) == mode and info.group(2) == chip
        assert ("launch measurement" in ran.stderr) == (mode == "sev")


def test_min_sev_asid_moves_the_split(build) -> None:
    for mode, asid in (("sev", 300), ("sev-es", 1)):
        ran = sevsim("run", build("hello"), "--mode", mode, "--memory", "8M",
                     "--min-sev-asid", "300")
        assert ran.returncode == 0, ran.stderr
        assert f"mode={mode} chip=milan asid={asid} " in ran.stderr
    bad = sevsim("run", build("hello"), "--min-sev-asid", "600")
    assert bad.returncode == 125 and "min SEV ASID 600" in bad.stderr


def test_dump_host_view_hides_the_secret_only_under_sev(build, tmp_path: Path) -> None:
    secret = secret_bytes()
    for mode, expected in (("sev", 0), ("none", len(secret) // 16)):
        dump = tmp_path / f"{mode}.bin"
        ran = sevsim("run", build("secret"), "--mode", mode, "--memory", "16M",
                     "--dump-host-view", dump)
        assert ran.returncode == 0, ran.stderr
        assert dump.stat().st_size == 16 << 20
        assert blocks_found(dump.read_bytes(), secret) == expected
        assert "secret digest: 0x" in ran.stdout


def test_exit_code_and_errors(build, tmp_path: Path) -> None:
    ran = sevsim("run", build("regs"), "--mode", "sev", "--memory", "8M")
    assert ran.returncode == 1  # the guest's own exit code (its SEV_STATUS)
    fault = sevsim("run", build("crash", "-DCRASH=2"), "--memory", "8M")
    assert fault.returncode == 125 and "GuestFault" in fault.stderr and "#UD" in fault.stderr
    assert "about to misbehave" in fault.stdout
    hang = sevsim("run", build("crash", "-DCRASH=3"), "--memory", "8M", "--timeout", "0.5")
    assert hang.returncode == 124 and "GuestTimeout" in hang.stderr
    garbage = tmp_path / "garbage.elf"
    garbage.write_bytes(b"\x7fELF not really")
    bad = sevsim("run", garbage)
    assert bad.returncode == 125 and "ImageError" in bad.stderr
    missing = sevsim("run", tmp_path / "nope.elf")
    assert missing.returncode == 125 and "cannot read" in missing.stderr
    wrong = sevsim("run", build("hello"), "--chip", "naples", "--mode", "sev-es")
    assert wrong.returncode == 125 and "does not support" in wrong.stderr
    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return }\n")
    failed = sevsim("guest", "build", broken, "-o", tmp_path / "broken.elf")
    assert failed.returncode == 125 and "GuestBuildError" in failed.stderr


def test_chips_lists_every_preset() -> None:
    listed = sevsim("chips")
    assert listed.returncode == 0
    for name in ("naples", "rome", "milan", "genoa", "turin"):
        assert name in listed.stdout
    assert "0x00A00F11" in listed.stdout  # Milan's CPUID signature
