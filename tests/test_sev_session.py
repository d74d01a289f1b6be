"""The legacy session protocol against the published vectors (virtee/sev src/session tests)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sevsim.abi.sev_session import (
    PacketHeader,
    Session,
    TransportKeys,
    kdf,
    open_packet,
    seal_packet,
)

ZERO_KEYS = TransportKeys(bytes(16), bytes(16))


def test_session_wrap_matches_the_published_vector() -> None:
    session = Session.seal(bytes(48), bytes(16), bytes(16), ZERO_KEYS, 0)
    assert session.wrap_tk.hex() == (
        "2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4")
    assert session.wrap_mac.hex() == (
        "3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d")
    assert session.policy_mac.hex() == (
        "aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af")
    assert Session.from_bytes(session.to_bytes()) == session
    assert len(session.to_bytes()) == 0x80


def test_session_opens_only_with_the_right_secret_and_policy() -> None:
    keys = TransportKeys(os.urandom(16), os.urandom(16))
    shared, nonce, iv = os.urandom(48), os.urandom(16), os.urandom(16)
    session = Session.seal(shared, nonce, iv, keys, 0x1)
    assert session.open(shared, 0x1) == keys
    with pytest.raises(ValueError, match="WRAP_MAC"):
        session.open(os.urandom(48), 0x1)
    with pytest.raises(ValueError, match="POLICY_MAC"):
        session.open(shared, 0x3)
    forged = Session(nonce, bytes(32), iv, session.wrap_mac, session.policy_mac)
    with pytest.raises(ValueError, match="WRAP_MAC"):
        forged.open(shared, 0x1)


def test_kdf_is_counter_mode_with_little_endian_fields() -> None:
    long = kdf(b"k", b"label", b"ctx", 80)
    # L (the output length in bits) is hashed into every block: another length, other bytes
    assert kdf(b"k", b"label", b"ctx", 16) != kdf(b"k", b"label", b"ctx", 32)[:16]
    assert len(long) == 80 and kdf(b"k", b"label", b"", 16) != kdf(b"k", b"other", b"", 16)


@given(data=st.binary(min_size=1, max_size=512))
def test_packets_round_trip_and_any_change_is_caught(data: bytes) -> None:
    keys = TransportKeys(os.urandom(16), os.urandom(16))
    measure = os.urandom(32)
    header, ciphertext = seal_packet(keys, os.urandom(16), data, measure)
    assert PacketHeader.from_bytes(header.to_bytes()) == header
    assert open_packet(keys, header, ciphertext, measure) == data
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    for bad in ((header, flipped, measure), (header, ciphertext, os.urandom(32)),
                (PacketHeader(0, os.urandom(16), header.mac), ciphertext, measure)):
        with pytest.raises(ValueError):
            open_packet(keys, *bad)
