"""Shared fixtures: guest programs are built once per session from source with gcc."""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from sevsim.guest.build import build_guest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GUESTS = Path(__file__).resolve().parent / "guests"
MASK64 = (1 << 64) - 1


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build("secret") or build("crash", "-DCRASH=1"): an ELF from examples/ or tests/guests/."""
    out_dir = tmp_path_factory.mktemp("guests")
    cache: dict[tuple[str, ...], Path] = {}

    def _build(name: str, *cflags: str) -> Path:
        key = (name, *cflags)
        if key not in cache:
            source = EXAMPLES / f"{name}.c"
            if not source.exists():
                source = GUESTS / f"{name}.c"
            tag = "-".join(f.strip("-").replace("=", "_") for f in cflags)
            cache[key] = build_guest([source], out_dir / f"{name}{tag}.elf", cflags=cflags)
        return cache[key]

    return _build


def secret_bytes() -> bytes:
    """The 4096 bytes examples/secret.c generates at run time (xorshift64*, LE words)."""
    x, words = 0x5EC12E75EED0F00D, []
    for _ in range(512):
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        words.append((x * 0x2545F4914F6CDD1D) & MASK64)
    return struct.pack("<512Q", *words)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def blocks_found(haystack: bytes | np.ndarray, needle: bytes) -> int:
    """How many of the needle's 16-byte blocks occur block-aligned anywhere in the haystack."""
    hay = np.frombuffer(haystack, dtype=np.uint8) if isinstance(haystack, bytes) else haystack
    hay = hay[: hay.size - hay.size % 16].view(np.uint64).reshape(-1, 2)
    blocks = np.frombuffer(needle, dtype=np.uint64).reshape(-1, 2)
    candidates = hay[np.isin(hay[:, 0], blocks[:, 0])]
    wanted = {tuple(b) for b in blocks.tolist()}
    return sum(1 for row in candidates.tolist() if tuple(row) in wanted)


def symbol(elf: Path, name: str) -> int:
    """Address of a symbol in a guest ELF (where the program keeps a buffer)."""
    with elf.open("rb") as fh:
        for sym in ELFFile(fh).get_section_by_name(".symtab").get_symbol_by_name(name) or []:
            return int(sym["st_value"])
    raise KeyError(name)


OVMF_CANDIDATES = (Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/OVMF/OVMF.fd"))


@pytest.fixture(scope="session")
def ovmf_path() -> Path:
    """Debian's OVMF.fd (package ovmf, which .ci/run installs)."""
    for path in OVMF_CANDIDATES:
        if path.exists():
            return path
    pytest.skip("Debian's ovmf package is not installed")


@pytest.fixture(scope="session")
def snp_measure() -> ModuleType:
    """sev-snp-measure's calculation (a test-only dependency): the independent reference."""
    return pytest.importorskip("sevsnpmeasure.guest")


def measure_entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                        args: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `sevsim measure ARGS` through the entry point, which
    runs `measure` before importing Typer (sevsim.cli.fast)."""
    from sevsim.cli import fast

    monkeypatch.setattr(sys, "argv", ["sevsim", "measure", *args])
    with pytest.raises(SystemExit) as exited:
        fast.main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def postgres_test_url() -> str:
    """The PostgreSQL server `.ci/run` starts (SEVSIM_TEST_POSTGRES_URL): a test on that
    backend skips without it, and fails under CI, where its absence is a broken set-up."""
    url = os.environ.get("SEVSIM_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("SEVSIM_TEST_POSTGRES_URL is unset: .ci/run starts PostgreSQL and sets it")
        pytest.skip("SEVSIM_TEST_POSTGRES_URL is unset (bash .ci/run sets it; or "
                    "tools/postgres_test_server.sh start DIR prints one)")
    return url


DEMO_SEED = bytes.fromhex("5e75e11ade30")  # the seed of the session's demo run


@pytest.fixture(scope="session")
def demo_document() -> dict[str, object]:
    """The document of one full `sevsim demo` run (run_demo, seed DEMO_SEED, matrix on two
    processes): tests of the demo and of its HTML report read it."""
    from sevsim.demo.scenario import run_demo

    return run_demo(DEMO_SEED, jobs=2)
