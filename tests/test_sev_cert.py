"""The legacy certificate formats (spec-formats.md §9.4) on AMD's real certificates: exact
round trips, the fields AMD's tools read, and typed errors for everything else."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.sev_cert import (
    CERT_CHAIN_SIZE,
    SEV_CERT_SIZE,
    Algo,
    AmdCert,
    CertChain,
    Curve,
    EcPublicKey,
    RsaPublicKey,
    SevCert,
    Signature,
    Usage,
    check_signature,
)
from sevsim.errors import SevCertFormatError

VECTORS = Path(__file__).resolve().parent / "data" / "sev"  # real platform certificates
ROOTS = Path(__file__).resolve().parent.parent / "src" / "sevsim" / "attest" / "roots" / "sev"
PRODUCTS = ("naples", "rome", "milan", "genoa", "turin")
PLATFORM = [(p, n) for p in ("naples", "rome") for n in ("pdh", "pek", "oca", "cek")]
AMD = [(p, n) for p in PRODUCTS for n in ("ark", "ask")]


def real(product: str, name: str) -> bytes:
    base = VECTORS if name in ("pdh", "pek", "oca", "cek") else ROOTS
    return (base / product / f"{name}.cert").read_bytes()


@pytest.mark.parametrize(("product", "name"), PLATFORM)
def test_real_platform_certificates_round_trip_exactly(product: str, name: str) -> None:
    blob = real(product, name)
    cert = SevCert.from_bytes(blob)
    assert cert.to_bytes() == blob
    assert cert.signed_bytes() == blob[:0x414]
    assert cert.usage is Usage[name.upper()]
    assert isinstance(cert.key, EcPublicKey) and cert.key.curve is Curve.P384
    cert.to_key()  # every real key is a point on P-384


@pytest.mark.parametrize(("product", "name"), AMD)
def test_real_amd_certificates_round_trip_exactly(product: str, name: str) -> None:
    blob = real(product, name)
    cert = AmdCert.from_bytes(blob)
    assert cert.to_bytes() == blob
    bits = 2048 if product == "naples" else 4096
    assert len(blob) == {2048: 832, 4096: 1600}[bits]
    assert (cert.modulus_bits, cert.pub_exp_bits, cert.exponent) == (bits, bits, 65537)
    assert cert.usage is (Usage.ARK if name == "ark" else Usage.ASK)
    assert cert.self_signed == (name == "ark")
    assert cert.to_key().key_size == bits


def test_the_fields_amd_tools_read() -> None:
    naples, rome = (SevCert.from_bytes(real(p, "cek")) for p in ("naples", "rome"))
    assert (naples.api_major, naples.api_minor) == (0, 14)
    assert naples.algo is Algo.ECDSA_SHA256  # a P-384 key that signs with SHA-256
    assert (naples.sig1.usage, naples.sig1.algo) == (Usage.ASK, Algo.RSA_SHA256)
    assert (rome.sig1.usage, rome.sig1.algo) == (Usage.ASK, Algo.RSA_SHA384)
    assert naples.sig2.is_empty and naples.signatures == (naples.sig1,)
    pek = SevCert.from_bytes(real("rome", "pek"))
    assert [s.usage for s in pek.signatures] == [Usage.OCA, Usage.CEK]
    pdh = SevCert.from_bytes(real("rome", "pdh"))
    assert pdh.algo is Algo.ECDH_SHA256 and pdh.sig1.usage is Usage.PEK
    ask = AmdCert.from_bytes(real("rome", "ask"))
    assert ask.certifying_id == AmdCert.from_bytes(real("rome", "ark")).key_id
    assert ask.sev_algo is Algo.RSA_SHA384 and isinstance(ask.pss_hash, hashes.SHA384)


def test_signatures_check_against_the_real_signers() -> None:
    pek, cek, oca = (SevCert.from_bytes(real("naples", n)) for n in ("pek", "cek", "oca"))
    check_signature(pek, pek.sig2, cek.to_key())
    check_signature(pek, pek.sig1, oca.to_key())
    ask = AmdCert.from_bytes(real("naples", "ask"))
    check_signature(cek, cek.sig1, ask.to_key())  # RSA-PSS, SHA-256, salt 32
    assert len(cek.sig1.rsa_big_endian(2048)) == 256


def test_chain_buffer_is_pek_oca_cek() -> None:
    certs = [SevCert.from_bytes(real("rome", n)) for n in ("pek", "oca", "cek")]
    blob = b"".join(c.to_bytes() for c in certs)
    assert len(blob) == CERT_CHAIN_SIZE
    chain = CertChain.from_bytes(blob)
    assert (chain.pek, chain.oca, chain.cek) == tuple(certs)
    assert chain.to_bytes() == blob
    for bad in (blob[:-1], blob + b"\0", b""):
        with pytest.raises(SevCertFormatError, match="chain"):
            CertChain.from_bytes(bad)


# -- building certificates --------------------------------------------------------------------


def test_built_ec_and_rsa_certificates_round_trip_and_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    unsigned = SevCert(1, 2, Usage.OCA, Algo.ECDSA_SHA384, EcPublicKey.from_key(key.public_key()),
                       Signature.empty(), Signature.empty())
    der = key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    cert = SevCert(1, 2, Usage.OCA, Algo.ECDSA_SHA384, unsigned.key,
                   Signature.ecdsa(Usage.OCA, Algo.ECDSA_SHA384, der), Signature.empty())
    parsed = SevCert.from_bytes(cert.to_bytes())
    assert parsed == cert and len(cert.to_bytes()) == SEV_CERT_SIZE
    check_signature(parsed, parsed.sig1, key.public_key())
    assert parsed.key.curve is Curve.P256

    rsa_key = rsa.generate_private_key(65537, 2048)
    numbers = rsa_key.public_key().public_numbers()
    rsa_cert = SevCert(0, 24, Usage.OCA, Algo.RSA_SHA256, RsaPublicKey(2048, 65537, numbers.n),
                       Signature.empty(), Signature.empty())
    signature = rsa_key.sign(rsa_cert.signed_bytes(),
                             padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    rsa_cert = SevCert(0, 24, Usage.OCA, Algo.RSA_SHA256, rsa_cert.key,
                       Signature.rsa(Usage.OCA, Algo.RSA_SHA256, signature), Signature.empty())
    parsed = SevCert.from_bytes(rsa_cert.to_bytes())
    assert parsed == rsa_cert
    check_signature(parsed, parsed.sig1, parsed.key.to_key())
    assert parsed.to_key().public_numbers() == numbers


def test_an_off_curve_point_is_representable_but_not_a_key() -> None:
    """The format cannot know; the firmware of CVE-2019-9836 did not check either."""
    point = EcPublicKey(Curve.P384, 1, 2)
    assert EcPublicKey.from_bytes(point.to_bytes()) == point
    with pytest.raises(ValueError):
        point.to_key()


# -- bad input ----------------------------------------------------------------------------------


def patched(blob: bytes, offset: int, data: bytes) -> bytes:
    return blob[:offset] + data + blob[offset + len(data):]


PDH = real("rome", "pdh")
CEK = real("naples", "cek")
ASK_KEY = AmdCert.from_bytes(real("naples", "ask")).to_key()


@pytest.mark.parametrize(("blob", "message"), [
    (PDH[:-1], "0x824 bytes"),
    (PDH + b"\0", "0x824 bytes"),
    (b"", "0x824 bytes"),
    (patched(PDH, 0, struct.pack("<I", 2)), "version 2"),
    (patched(PDH, 6, b"\1"), "reserved"),
    (patched(PDH, 8, struct.pack("<I", 0x1005)), "usage 0x1005"),
    (patched(PDH, 12, struct.pack("<I", 0x7)), "algorithm 0x7"),
    (patched(PDH, 12, struct.pack("<I", 0)), "INVALID"),
    (patched(PDH, 0x10, struct.pack("<I", 3)), "curve 0x3"),
    (patched(PDH, 0x300, b"\1"), "padding after the EC point"),
    (patched(PDH, 0x41C + 200, b"\1"), "padding after an ECDSA signature"),
    (patched(PDH, 0x620, struct.pack("<I", 2)), "empty signature slot"),
    (patched(PDH, 0x700, b"\1"), "empty signature slot"),
    (patched(PDH, 0x418, struct.pack("<I", 3)), "not a signature algorithm"),
    (patched(CEK, 0x414 + 8 + 300, b"\1"), None),  # beyond a 2048-bit RSA signature: caught
], ids=["short", "long", "empty", "version", "reserved", "usage", "algo", "algo-invalid",
        "curve", "key-padding", "sig-padding", "empty-slot-algo", "empty-slot-data",
        "ecdh-signature", "rsa-tail"])
def test_malformed_sev_certificates_are_typed_errors(blob: bytes, message: str | None) -> None:
    if message is None:  # the slot's length is the signer's; the signature check refuses it
        cert = SevCert.from_bytes(blob)
        original = SevCert.from_bytes(CEK)
        check_signature(original, original.sig1, ASK_KEY)
        with pytest.raises(InvalidSignature, match="after the RSA signature"):
            check_signature(cert, cert.sig1, ASK_KEY)
        return
    with pytest.raises(SevCertFormatError, match=message):
        SevCert.from_bytes(blob)


ARK = real("rome", "ark")


@pytest.mark.parametrize(("blob", "message"), [
    (ARK[:-1], "1600"),
    (ARK + b"\0", "1600"),
    (ARK[:0x20], "truncated inside its header"),
    (patched(ARK, 0, struct.pack("<I", 0)), "version 0"),
    (patched(ARK, 0x24, struct.pack("<I", 0x1002)), "not ARK or ASK"),
    (patched(ARK, 0x24, struct.pack("<I", 0x77)), "key usage 0x77"),
    (patched(ARK, 0x30, b"\1"), "reserved"),
    (patched(ARK, 0x3C, struct.pack("<I", 3072)), "2048"),
    (patched(ARK, 0x40 + 512 + 511, b"\0"), "not a 4096-bit number"),
], ids=["short", "long", "header", "version", "usage", "usage-unknown", "reserved", "size",
        "modulus"])
def test_malformed_amd_certificates_are_typed_errors(blob: bytes, message: str) -> None:
    with pytest.raises(SevCertFormatError, match=message):
        AmdCert.from_bytes(blob)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(PLATFORM), changes=st.lists(
    st.tuples(st.integers(0, SEV_CERT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_changed_sev_certificate_parses_to_exactly_its_bytes_or_fails(
        name: tuple[str, str], changes: list[tuple[int, int]]) -> None:
    """Strict parsing: nothing is dropped or normalised, so a change survives to the
    signature checks or stops here."""
    blob = bytearray(real(*name))
    for offset, value in changes:
        blob[offset] = value
    try:
        cert = SevCert.from_bytes(bytes(blob))
    except SevCertFormatError:
        return
    assert cert.to_bytes() == bytes(blob)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(AMD), offset=st.integers(0, 1599), value=st.integers(0, 255))
def test_a_changed_amd_certificate_parses_to_exactly_its_bytes_or_fails(
        name: tuple[str, str], offset: int, value: int) -> None:
    blob = bytearray(real(*name))
    blob[offset % len(blob)] = value
    try:
        cert = AmdCert.from_bytes(bytes(blob))
    except SevCertFormatError:
        return
    assert cert.to_bytes() == bytes(blob)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2200))
def test_garbage_is_a_format_error(blob: bytes) -> None:
    for parse in (SevCert.from_bytes, AmdCert.from_bytes, CertChain.from_bytes):
        try:
            parsed = parse(blob)
        except SevCertFormatError:
            continue
        assert parsed.to_bytes() == blob


def test_values_that_do_not_fit_are_refused_when_encoding() -> None:
    with pytest.raises(SevCertFormatError, match="QX"):
        EcPublicKey(Curve.P384, 1 << 576, 0).to_bytes()
    with pytest.raises(SevCertFormatError, match="modulus"):
        RsaPublicKey(4096, 65537, 1 << 4096).to_bytes()
    ark = AmdCert.from_bytes(ARK)
    with pytest.raises(SevCertFormatError, match="one modulus long"):
        AmdCert(ark.key_id, ark.certifying_id, ark.usage, 4096, 4096, ark.exponent,
                ark.modulus, ark.signature[:-1]).to_bytes()
