"""The chain verifier on AMD's real Naples and Rome chains and on sevsim's simulated ones:
every link checked, any changed byte caught, the failing link named."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim import Host
from sevsim.abi.sev_cert import AmdCert, SevCert
from sevsim.attest.sev_chain import (
    PRODUCTS,
    CaCerts,
    PlatformChain,
    trusted_roots,
    verify,
    verify_chain,
)
from sevsim.errors import CertificateError, SevCertFormatError
from sevsim.firmware import amd_root
from sevsim.inputs import MAX_SEV_CERT

VECTORS = Path(__file__).resolve().parent / "data" / "sev"
FILES = ("pdh", "pek", "oca", "cek", "ask", "ark")

# First 16 hex digits of the SHA-256 of AMD's legacy ARK/ASK as virtee/sev ships them: the
# shipped trust anchors must be AMD's, byte for byte.
AMD_ROOTS = {
    ("naples", "ark"): "dedabca561e1dece", ("naples", "ask"): "c6f30cf923f526c3",
    ("rome", "ark"): "865977b268c16d5b", ("rome", "ask"): "7754a69407d25540",
    ("milan", "ark"): "1246469862b78a7a", ("milan", "ask"): "c7c73765561c5800",
    ("genoa", "ark"): "8f4e3fd36589c23f", ("genoa", "ask"): "c30307e4f594fb6c",
    ("turin", "ark"): "f6405e5096a6eee1", ("turin", "ask"): "2ee285477f0d5eb9",
}


def real_files(product: str) -> dict[str, bytes]:
    files = {n: (VECTORS / product / f"{n}.cert").read_bytes() for n in FILES[:4]}
    ca = trusted_roots(product)
    return files | {"ark": ca.ark.to_bytes(), "ask": ca.ask.to_bytes()}


def check(files: dict[str, bytes], product: str | None = None, trust: str = "amd") -> str:
    """Parse and verify six certificate files; the product they verify to."""
    chain = PlatformChain(*(SevCert.from_bytes(files[n]) for n in FILES[:4]))
    ca = CaCerts(AmdCert.from_bytes(files["ark"]), AmdCert.from_bytes(files["ask"]))
    return verify(chain, trust, product, ca).product  # type: ignore[arg-type]


def test_shipped_amd_roots_are_amds() -> None:
    for (product, name), fingerprint in AMD_ROOTS.items():
        cert = getattr(trusted_roots(product), name)
        assert hashlib.sha256(cert.to_bytes()).hexdigest()[:16] == fingerprint


@pytest.mark.parametrize("product", ["naples", "rome"])
def test_real_chains_verify_to_amds_real_roots(product: str) -> None:
    files = real_files(product)
    assert check(files) == product  # found from the CEK's signer
    assert check(files, product) == product
    chain = PlatformChain.load(VECTORS / product)
    verified = verify(chain)
    assert (verified.product, verified.trust) == (product, "amd")
    verify_chain(chain, trusted_roots(product))


@pytest.mark.parametrize("product", ["naples", "rome"])
@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_changing_any_byte_of_a_real_chain_fails(product: str, data: st.DataObject) -> None:
    files = real_files(product)
    name = data.draw(st.sampled_from(FILES))
    offset = data.draw(st.integers(0, len(files[name]) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(files[name])
    changed[offset] ^= flip
    with pytest.raises((CertificateError, SevCertFormatError)):
        check(files | {name: bytes(changed)})


def test_every_byte_of_the_real_naples_signed_regions_matters() -> None:
    """Exhaustively for the bytes the signatures cover (the rest is the signature itself or
    zero padding, both covered by the property test above)."""
    files = real_files("naples")
    for name in ("pdh", "pek", "oca", "cek"):
        for offset in range(0, 0x414 + 8, 7):
            changed = bytearray(files[name])
            changed[offset] ^= 0x01
            with pytest.raises((CertificateError, SevCertFormatError)):
                check(files | {name: bytes(changed)})


@pytest.mark.parametrize(("product", "link"), [("naples", "ASK -> CEK"), ("rome", "ASK -> CEK")])
def test_real_chains_do_not_verify_to_other_roots(product: str, link: str) -> None:
    chain = PlatformChain.load(VECTORS / product)
    with pytest.raises(CertificateError, match="ASK -> CEK") as info:
        verify(chain, "sevsim")
    assert info.value.link == link
    other = "milan" if product == "rome" else "rome"
    with pytest.raises(CertificateError, match="ASK -> CEK"):
        verify(chain, "amd", other)
    with pytest.raises(CertificateError, match="ASK -> CEK"):
        verify(chain, "amd", None, trusted_roots(other))  # AMD's, but another product's
    with pytest.raises(CertificateError, match="not amd's ARK"):
        verify(chain, "amd", None, trusted_roots(product, "sevsim"))
    ca = trusted_roots(product)
    with pytest.raises(CertificateError, match=r"not amd.s \w+ ASK"):
        verify(chain, "amd", None, CaCerts(ca.ark, trusted_roots(other).ask))


def test_each_broken_link_is_named() -> None:
    naples = PlatformChain.load(VECTORS / "naples")
    rome = PlatformChain.load(VECTORS / "rome")
    cases = {
        "OCA -> PEK": dataclasses.replace(rome, oca=naples.oca),
        "CEK -> PEK": dataclasses.replace(naples, pek=dataclasses.replace(
            naples.pek, sig2=rome.pek.sig2)),
        "PEK -> PDH": dataclasses.replace(rome, pdh=naples.pdh),
        "PDH": dataclasses.replace(rome, pdh=rome.pek),
        "PEK": dataclasses.replace(rome, pek=rome.pdh),
        "OCA": dataclasses.replace(rome, oca=rome.cek),
    }
    for link, chain in cases.items():
        with pytest.raises(CertificateError) as info:
            verify(chain, product=None if link != "OCA -> PEK" else "rome")
        assert info.value.link == link, str(info.value)
    ca = trusted_roots("rome")
    with pytest.raises(CertificateError, match="ARK -> ASK"):
        verify_chain(rome, CaCerts(ca.ark, trusted_roots("milan").ask))
    with pytest.raises(CertificateError, match=r"^ARK: not a self-signed ARK"):
        verify_chain(rome, CaCerts(ca.ask, ca.ask))


@pytest.mark.parametrize("name", ["pdh", "pek", "oca", "cek"])
def test_an_endless_file_in_the_chain_directory_is_refused(tmp_path: Path, name: str) -> None:
    """Each certificate is read bounded by its 0x824 bytes: a symlink to /dev/zero is a
    SevCertFormatError naming the file and the limit, raised at once."""
    PlatformChain.load(VECTORS / "rome").save(tmp_path)
    (tmp_path / f"{name}.cert").unlink()
    (tmp_path / f"{name}.cert").symlink_to("/dev/zero")
    with pytest.raises(SevCertFormatError, match=rf"{tmp_path / name}.cert holds more than "
                       rf"{MAX_SEV_CERT} bytes"):
        PlatformChain.load(tmp_path)


def test_unknown_products_and_anchors_are_refused() -> None:
    with pytest.raises(CertificateError, match="no product 'zen9'"):
        trusted_roots("zen9")
    with pytest.raises(CertificateError, match="no trust anchor"):
        trusted_roots("rome", "intel")  # type: ignore[arg-type]


# -- sevsim's simulated chains ---------------------------------------------------------------------


@pytest.mark.parametrize("chip", ["naples", "rome", "milan", "genoa", "turin"])
def test_simulated_chains_verify_to_sevsims_roots_only(chip: str) -> None:
    host = Host(chip=chip, memory="4M")
    pdh, certs = host.firmware.pdh_cert_export()
    chain = PlatformChain(pdh, certs.pek, certs.oca, certs.cek)
    verified = verify(chain, "sevsim")
    assert verified.product == chip
    ark, ask = host.firmware.amd_certs()
    assert verify(chain, "sevsim", chip, CaCerts(AmdCert.from_bytes(ark),
                                                 AmdCert.from_bytes(ask))).product == chip
    with pytest.raises(CertificateError) as info:
        verify(chain, "amd")
    assert info.value.link == "ASK -> CEK"
    with pytest.raises(CertificateError, match="ASK -> CEK"):
        verify_chain(chain, trusted_roots(chip, "amd"))


def test_simulated_roots_are_marked_and_match_the_firmware() -> None:
    for product in PRODUCTS:
        shipped = trusted_roots(product, "sevsim")
        root = amd_root.simulated_root(product)
        assert (root.ark, root.ask) == (shipped.ark, shipped.ask)
        assert shipped.ark.key_id.startswith(b"sevsimARK-" + product.encode())
        assert shipped.ask.key_id.startswith(b"sevsimASK-" + product.encode())
        assert shipped.ark.modulus != trusted_roots(product).ark.modulus


@pytest.mark.parametrize("product", ["naples", "turin"])
def test_shipped_simulated_keys_are_derived_from_the_published_seed(product: str,
                                                                   tmp_path: Path) -> None:
    """A 2048-bit and a 4096-bit product (the derivation takes seconds for 4096 bits; the
    others use the same code with another label: `tools/derive_simulated_amd_roots.py`
    rewrites every shipped file, and git shows no change)."""
    amd_root.regenerate(tmp_path / "keys", tmp_path / "certs", (product,))
    shipped = Path(amd_root.__file__).parent / "simulated_amd" / product
    trust_store = Path(amd_root.__file__).parent.parent / "attest" / "roots" / "sevsim"
    for role in ("ark", "ask"):
        assert (tmp_path / "keys" / product / f"{role}.pem").read_bytes() == (
            shipped / f"{role}.pem").read_bytes()
        assert (tmp_path / "certs" / "sev" / product / f"{role}.cert").read_bytes() == (
            trust_store / "sev" / product / f"{role}.cert").read_bytes()
    if product in amd_root.SNP_PRODUCTS:  # the ASVK that signs VLEKs, and the X.509 roots
        assert (tmp_path / "keys" / product / "asvk.pem").read_bytes() == (
            shipped / "asvk.pem").read_bytes()
        for role in ("ark", "ask", "asvk"):
            assert (tmp_path / "certs" / "snp" / product / f"{role}.pem").read_bytes() == (
                trust_store / "snp" / product / f"{role}.pem").read_bytes()
    else:
        assert not (tmp_path / "certs" / "snp").exists()


@settings(max_examples=20, deadline=None)
@given(message=st.binary(max_size=2000))
def test_deterministic_pss_is_standard_pss(message: bytes) -> None:
    for product, digest in (("naples", hashes.SHA256()), ("rome", hashes.SHA384())):
        key = amd_root.simulated_root(product).ask_key
        signature = amd_root.pss_sign(key, message, digest.name)
        assert signature == amd_root.pss_sign(key, message, digest.name)
        key.public_key().verify(signature, message,
                                padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
