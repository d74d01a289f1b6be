"""Byte formats in sevsim.abi: the legacy guest policy, the boot-info page, IOIO exit info."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.bootinfo import BOOTINFO_GPA, MAGIC, MAX_SEGMENTS, MODES, BootInfo, Segment
from sevsim.abi.policy import PolicyFlags, SevPolicy
from sevsim.abi.status import SevStatus
from sevsim.abi.svm import (
    IOIO_SZ8,
    IOIO_SZ16,
    IOIO_SZ32,
    IOIO_TYPE_IN,
    ioio_decode,
    ioio_info,
)
from sevsim.errors import FirmwareError

u8 = st.integers(0, 0xFF)
u64 = st.integers(0, 2**64 - 1)

# -- legacy SEV guest policy (spec-formats.md §3.2) -----------------------------------------------

valid_policies = st.builds(
    lambda low, major, minor: low | major << 16 | minor << 24, st.integers(0, 0x3F), u8, u8)


@settings(max_examples=200, deadline=None)
@given(valid_policies)
def test_policy_round_trips(value):
    policy = SevPolicy.from_int(value)
    assert policy.to_int() == value
    assert SevPolicy.from_int(policy.to_int()) == policy
    assert policy.api_major == (value >> 16) & 0xFF and policy.api_minor == value >> 24
    assert int(policy.flags) == value & 0x3F


@settings(max_examples=200, deadline=None)
@given(valid_policies, st.integers(1, 0x3FF))
def test_reserved_policy_bits_are_rejected(value, reserved):
    with pytest.raises(ValueError, match="reserved"):
        SevPolicy.from_int(value | reserved << 6)


@pytest.mark.parametrize("value", [-1, 1 << 32, (1 << 40) | 1])
def test_policies_wider_than_32_bits_are_rejected(value):
    with pytest.raises(ValueError):
        SevPolicy.from_int(value)


@pytest.mark.parametrize("flag, bit", [(PolicyFlags.NODBG, 0), (PolicyFlags.NOKS, 1),
                                       (PolicyFlags.ES, 2), (PolicyFlags.NOSEND, 3),
                                       (PolicyFlags.DOMAIN, 4), (PolicyFlags.SEV, 5)])
def test_policy_flag_bits_follow_the_spec(flag, bit):
    assert SevPolicy.from_int(1 << bit).flags == flag
    assert SevPolicy(flag).to_int() == 1 << bit


def test_policy_api_fields():
    policy = SevPolicy.from_int(0x1811_0001)  # API 0x11.0x18, NODBG
    assert (policy.api_major, policy.api_minor, policy.flags) == (0x11, 0x18, PolicyFlags.NODBG)
    assert SevPolicy().to_int() == 0


# -- status codes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, code", [
    ("SUCCESS", 0x00), ("INVALID_PLATFORM_STATE", 0x01), ("INVALID_GUEST_STATE", 0x02),
    ("INVALID_LENGTH", 0x04), ("POLICY_FAILURE", 0x07), ("INACTIVE", 0x08),
    ("INVALID_ADDRESS", 0x09), ("ASID_OWNED", 0x0C), ("INVALID_ASID", 0x0D),
    ("DF_FLUSH_REQUIRED", 0x0F), ("INVALID_GUEST", 0x10), ("ACTIVE", 0x12),
    ("INVALID_PARAM", 0x16), ("RING_BUFFER_EXIT", 0x1F),
])
def test_status_codes_are_amds(name, code):
    assert SevStatus[name] == code
    err = FirmwareError(SevStatus(code), "because")
    assert err.status is SevStatus[name]
    assert name in str(err) and f"0x{code:02X}" in str(err) and "because" in str(err)


# -- boot info ---------------------------------------------------------------------------------

segments = st.builds(Segment, u64, u64, u64, st.integers(0, 2**64 - 1))
pages = st.integers(0, 2**52 - 1).map(lambda n: n * 4096)
boot_infos = st.builds(
    BootInfo, u64, u64, u64, u64, st.sampled_from(MODES), u64, u64,
    st.lists(segments, max_size=MAX_SEGMENTS).map(tuple), st.binary(min_size=48, max_size=48),
    pages, pages)


@settings(max_examples=150, deadline=None)
@given(boot_infos)
def test_boot_info_round_trips(info):
    page = info.to_bytes()
    assert len(page) == 4096
    assert BootInfo.from_bytes(page) == info


@settings(max_examples=50, deadline=None)
@given(boot_infos)
def test_boot_info_layout(info):
    """The head is what guest programs read through struct sev_bootinfo."""
    page = info.to_bytes()
    assert page[:8] == MAGIC == b"SEVSIMBI"
    assert struct.unpack_from("<7Q", page, 8) == (
        info.ram_size, info.nvcpus, info.heap_start, info.heap_end, MODES.index(info.mode),
        info.secret_gpa, info.secret_size)
    assert struct.unpack_from("<3Q", page, 0x100) == (
        info.entry, info.stack_top, len(info.segments))
    for i, seg in enumerate(info.segments):
        assert struct.unpack_from("<4Q", page, 0x118 + 32 * i) == (
            seg.gpa, seg.filesz, seg.memsz, seg.flags)
    assert page[0x800:0x830] == info.kernel_id


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000))
def test_boot_info_garbage_is_a_value_error(blob):
    try:
        BootInfo.from_bytes(blob)
    except ValueError:
        return
    # the only way to parse is to look like a boot-info page
    assert blob[:8] == MAGIC


def base_page() -> bytes:
    return BootInfo(1 << 24, 2, 0x20000, 0x40000, "sev", 0x10000, 1 << 24,
                    (Segment(0x10000, 0x800, 0x1000, 5),), bytes(range(48))).to_bytes()


@pytest.mark.parametrize("mutate", [
    lambda p: b"SEVSIMBX" + p[8:],  # magic
    lambda p: p[:0x28] + struct.pack("<Q", len(MODES)) + p[0x30:],  # mode out of range
    lambda p: p[:0x110] + struct.pack("<Q", MAX_SEGMENTS + 1) + p[0x118:],  # segment count
    lambda p: p[:0x20],  # truncated inside the head
    lambda p: p[:0x108],  # truncated inside the image description
    lambda p: p[:0x120],  # truncated inside the segment table
    lambda p: p[:0x810],  # truncated inside the kernel identity
    lambda p: b"",
], ids=["magic", "mode", "count", "head", "image", "segments", "kernel-id", "empty"])
def test_broken_boot_info_pages_are_value_errors(mutate):
    BootInfo.from_bytes(base_page())  # the unbroken page parses
    with pytest.raises(ValueError):
        BootInfo.from_bytes(mutate(base_page()))


def test_boot_info_that_cannot_be_encoded_is_refused():
    good = BootInfo.from_bytes(base_page())
    too_many = tuple(Segment(0x1000 * i, 0, 0, 0) for i in range(MAX_SEGMENTS + 1))
    for bad in (
        replace(good, segments=too_many),
        replace(good, kernel_id=bytes(47)),
        replace(good, kernel_id=bytes(49)),
        replace(good, mode="tdx"),
    ):
        with pytest.raises(ValueError):
            bad.to_bytes()


def test_launched_pages_cover_the_boot_info_and_file_bytes_only():
    info = BootInfo(1 << 24, 1, 0, 0, "snp", 0x400000, 1 << 24, (
        Segment(0x400000, 0x1001, 0x3000, 5),  # file bytes on two pages, .bss on a third
        Segment(0x600800, 0x10, 0x10, 6),  # a few bytes in the middle of a page
        Segment(0x700000, 0, 0x5000, 6),  # only .bss: not measured
    ), bytes(48))
    assert info.launched_pages() == [BOOTINFO_GPA // 4096, 0x400, 0x401, 0x600]
    assert [s.executable for s in info.segments] == [True, False, False]


# -- IOIO exit information (APM vol. 2, 15.10.2) ------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(port=st.integers(0, 0xFFFF), size=st.sampled_from([1, 2, 4]), is_in=st.booleans())
def test_ioio_info_round_trips(port, size, is_in):
    info = ioio_info(port, size, is_in)
    assert ioio_decode(info) == (port, size, is_in)
    assert info >> 16 == port
    assert bool(info & 1) == is_in
    assert (info >> 4) & 0x7 == {1: 1, 2: 2, 4: 4}[size]
    assert info & 0xFFFF & ~0x71 == 0  # no string, REP or other bits


def test_ioio_bits_are_the_apms():
    assert (IOIO_TYPE_IN, IOIO_SZ8, IOIO_SZ16, IOIO_SZ32) == (1, 1 << 4, 1 << 5, 1 << 6)
    assert ioio_info(0x3F8, 1, False) == 0x03F8_0010
    assert ioio_info(0x501, 4, True) == 0x0501_0041


@pytest.mark.parametrize("size", [0, 3, 8])
def test_ioio_info_refuses_impossible_sizes(size):
    with pytest.raises(ValueError, match="size"):
        ioio_info(0x80, size, False)
