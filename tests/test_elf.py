"""The ELF loader takes any bytes: it returns an image or raises ImageError, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim.errors import ImageError
from sevsim.host.elf import LOWEST_LOAD_ADDRESS, parse_elf


@pytest.fixture(scope="module")
def hello(build) -> bytes:
    return Path(build("hello")).read_bytes()


def test_real_guest_parses(hello: bytes) -> None:
    image = parse_elf(hello)
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
@given(data=st.data())
def test_mutated_guest_either_loads_or_is_refused(hello: bytes, data: st.DataObject) -> None:
    blob = bytearray(hello)
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.integers(0, min(len(blob), 0x200) - 1))  # headers and phdrs
        blob[offset] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        image = parse_elf(bytes(blob))
    except ImageError:
        return
    assert image.segments and image.segments[0].gpa >= LOWEST_LOAD_ADDRESS
