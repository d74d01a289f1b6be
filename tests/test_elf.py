"""The ELF loader takes any bytes: it returns an image or raises ImageError, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim.errors import ImageError
from sevsim.host.elf import LOWEST_LOAD_ADDRESS, parse_elf


@pytest.fixture(scope="module")
def hello(build) -> Path:
    return Path(build("hello"))


def test_real_guest_parses(hello: Path) -> None:
    image = parse_elf(hello.read_bytes())
    assert image.entry >= LOWEST_LOAD_ADDRESS
    assert any(s.flags & 1 and s.gpa <= image.entry < s.gpa + s.memsz for s in image.segments)
    assert all(len(s.data) <= s.memsz for s in image.segments)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_loader(blob: bytes) -> None:
    with pytest.raises(ImageError):
        parse_elf(blob)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 0x1FF), st.integers(0, 255)), min_size=1,
                      max_size=8),
       cut=st.none() | st.integers(0, 1 << 14))
def test_mutated_guest_either_loads_or_is_refused(hello: Path, edits: list[tuple[int, int]],
                                                  cut: int | None) -> None:
    """Corrupt the ELF and program headers, maybe truncate: ImageError or a sane image."""
    blob = bytearray(hello.read_bytes())
    for offset, value in edits:
        blob[offset] = value
    if cut is not None:
        blob = blob[:cut]
    try:
        image = parse_elf(bytes(blob))
    except ImageError:
        return
    assert image.segments and image.segments[0].gpa >= LOWEST_LOAD_ADDRESS
