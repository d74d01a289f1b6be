"""Verify a legacy SEV platform's certificate chain: ARK -> ASK -> CEK -> PEK (<- OCA) -> PDH.

The trust anchors ship with the package: AMD's real ARK/ASK per product (`roots/sev/`,
copied from AMD's published legacy certificates) and sevsim's simulated ones
(`roots/sevsim/sev/`, which only sevsim's firmware chains to). A chain verifies only from
the anchor the caller names; every link is a real RSA-PSS or ECDSA check, and the error
names the link that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding

from sevsim.abi.sev_cert import (
    AmdCert,
    CertChain,
    SevCert,
    Signature,
    Usage,
    check_signature,
)
from sevsim.errors import CertificateError, ConfigError, SevCertFormatError
from sevsim.inputs import MAX_SEV_CERT, read_bounded

PRODUCTS = ("naples", "rome", "milan", "genoa", "turin")
Trust = Literal["amd", "sevsim"]
TRUSTS: tuple[Trust, ...] = ("amd", "sevsim")
CHAIN_FILES = ("pdh", "pek", "oca", "cek")  # sevctl's file names, `.cert` appended


@dataclass(frozen=True)
class CaCerts:
    """AMD's two signing keys for one product (or sevsim's stand-ins for them)."""

    ark: AmdCert
    ask: AmdCert


@dataclass(frozen=True)
class PlatformChain:
    """What PDH_CERT_EXPORT hands out: the PDH and the chain PEK, OCA, CEK."""

    pdh: SevCert
    pek: SevCert
    oca: SevCert
    cek: SevCert

    @classmethod
    def from_export(cls, pdh: bytes, cert_chain: bytes) -> PlatformChain:
        """From PDH_CERT_EXPORT's two buffers; SevCertFormatError when malformed."""
        chain = CertChain.from_bytes(cert_chain)
        return cls(SevCert.from_bytes(pdh), chain.pek, chain.oca, chain.cek)

    @classmethod
    def load(cls, directory: Path) -> PlatformChain:
        """pdh.cert, pek.cert, oca.cert and cek.cert from a directory (as sevctl exports). Each
        is read bounded by the certificate's size, so one too long (a symlink to /dev/zero) is
        a SevCertFormatError naming it, as a malformed one is; OSError when one is unreadable."""
        certs = {}
        for name in CHAIN_FILES:
            path = directory / f"{name}.cert"
            try:
                blob = read_bounded(path, MAX_SEV_CERT, "a legacy SEV certificate")
            except ConfigError as err:
                raise SevCertFormatError(str(err)) from None
            try:
                certs[name] = SevCert.from_bytes(blob)
            except SevCertFormatError as err:
                raise SevCertFormatError(f"{path}: {err}") from None
        return cls(**certs)

    def save(self, directory: Path) -> None:
        """Write the certificates to `directory` under sevtool's file names."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in CHAIN_FILES:
            (directory / f"{name}.cert").write_bytes(getattr(self, name).to_bytes())


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that verified, and the anchor it verified to."""

    chain: PlatformChain
    ca: CaCerts
    product: str
    trust: Trust


def trusted_roots(product: str, trust: Trust = "amd") -> CaCerts:
    """The ARK and ASK shipped for a product: AMD's real ones or sevsim's simulated ones."""
    if product not in PRODUCTS:
        raise CertificateError("ARK", f"no product {product!r}; one of {', '.join(PRODUCTS)}")
    if trust not in TRUSTS:
        raise CertificateError("ARK", f"no trust anchor {trust!r}; amd or sevsim")
    base = resources.files("sevsim.attest").joinpath("roots")
    folder = base.joinpath("sev", product) if trust == "amd" else base.joinpath(
        "sevsim", "sev", product)
    return CaCerts(*(AmdCert.from_bytes(folder.joinpath(f"{n}.cert").read_bytes())
                     for n in ("ark", "ask")))


# -- single signatures ------------------------------------------------------------------------


def _check_amd_signature(link: str, cert: AmdCert, signer: AmdCert) -> None:
    """RSA-PSS by an AMD key over the certificate's bytes before its signature."""
    if signer.modulus_bits != cert.modulus_bits:
        raise CertificateError(link, f"a {signer.modulus_bits}-bit key cannot have signed a "
                                     f"{cert.modulus_bits}-bit signature")
    try:
        signer.to_key().verify(cert.signature[::-1], cert.signed_bytes(),
                               padding.PSS(padding.MGF1(signer.pss_hash),
                                           signer.pss_hash.digest_size), signer.pss_hash)
    except InvalidSignature:
        raise CertificateError(link, "RSA-PSS signature does not verify") from None


def _slot(link: str, cert: SevCert, usage: Usage) -> Signature:
    for slot in cert.signatures:
        if slot.usage is usage:
            return slot
    raise CertificateError(link, f"the {cert.usage.name} carries no {usage.name} signature")


def _check_sev_signature(link: str, cert: SevCert, signer_usage: Usage,
                         signer: SevCert | AmdCert) -> None:
    """The signature slot of `signer_usage` on `cert`, checked with the signer's key."""
    slot = _slot(link, cert, signer_usage)
    if isinstance(signer, AmdCert):
        if slot.algo is not signer.sev_algo:
            raise CertificateError(link, f"signature algorithm {slot.algo.name} does not "
                                         f"match a {signer.modulus_bits}-bit ASK")
    elif not ((signer.algo.is_ecdsa and slot.algo.is_ecdsa)
              or (signer.algo.is_rsa and slot.algo.is_rsa)):
        raise CertificateError(link, f"a {signer.algo.name} key cannot make a "
                                     f"{slot.algo.name} signature")
    try:
        check_signature(cert, slot, signer.to_key())
    except InvalidSignature:
        raise CertificateError(link, f"{slot.algo.name} signature does not verify") from None
    except ValueError as err:  # a point off its curve, an unusable RSA key
        raise CertificateError(link, f"the signer's key is unusable: {err}") from None


def _expect(link: str, cert: SevCert, usage: Usage, signers: set[Usage]) -> None:
    if cert.usage is not usage:
        raise CertificateError(link, f"certificate has usage {cert.usage.name}, "
                                     f"not {usage.name}")
    found = {s.usage for s in cert.signatures}
    if found != signers:
        raise CertificateError(link, f"the {usage.name} is signed by "
                                     f"{sorted(u.name for u in found)}, expected "
                                     f"{sorted(u.name for u in signers)}")


# -- the chain ----------------------------------------------------------------------------------


def verify_ca(ca: CaCerts) -> None:
    """ARK self-signed, ASK signed by the ARK."""
    if ca.ark.usage is not Usage.ARK or not ca.ark.self_signed:
        raise CertificateError("ARK", "not a self-signed ARK")
    _check_amd_signature("ARK", ca.ark, ca.ark)
    if ca.ask.usage is not Usage.ASK or ca.ask.certifying_id != ca.ark.key_id:
        raise CertificateError("ARK -> ASK", "the ASK does not name this ARK as its signer")
    _check_amd_signature("ARK -> ASK", ca.ask, ca.ark)


def verify_platform(chain: PlatformChain) -> None:
    """The links inside the platform: OCA self-signed, PEK by OCA and CEK, PDH by PEK."""
    _expect("OCA", chain.oca, Usage.OCA, {Usage.OCA})
    _check_sev_signature("OCA", chain.oca, Usage.OCA, chain.oca)
    _expect("PEK", chain.pek, Usage.PEK, {Usage.OCA, Usage.CEK})
    _check_sev_signature("OCA -> PEK", chain.pek, Usage.OCA, chain.oca)
    _check_sev_signature("CEK -> PEK", chain.pek, Usage.CEK, chain.cek)
    _expect("PDH", chain.pdh, Usage.PDH, {Usage.PEK})
    if not chain.pdh.algo.is_ec or chain.pdh.algo.is_ecdsa:
        raise CertificateError("PEK -> PDH", f"the PDH is a {chain.pdh.algo.name} key, not ECDH")
    _check_sev_signature("PEK -> PDH", chain.pdh, Usage.PEK, chain.pek)
    try:
        chain.pdh.to_key()
    except ValueError as err:
        raise CertificateError("PDH", f"the PDH point is unusable: {err}") from None


def verify_cek(cek: SevCert, ca: CaCerts) -> None:
    """ARK, ASK, and the CEK signed by the ASK: the chip is a genuine part of this product."""
    verify_ca(ca)
    _expect("ASK -> CEK", cek, Usage.CEK, {Usage.ASK})
    _check_sev_signature("ASK -> CEK", cek, Usage.ASK, ca.ask)


def verify_chain(chain: PlatformChain, ca: CaCerts) -> None:
    """Every link from the ARK down to the PDH; CertificateError names the first that fails."""
    verify_cek(chain.cek, ca)
    verify_platform(chain)


def verify(chain: PlatformChain, trust: Trust = "amd", product: str | None = None,
           ca: CaCerts | None = None) -> VerifiedChain:
    """Verify to the shipped anchor of `trust`. Without `product`, the product whose ASK
    signed the CEK is found. A `ca` given (e.g. files next to the chain) must be the trusted
    ARK and ASK byte for byte: a chain is only as good as its anchor."""
    products = (product,) if product else PRODUCTS
    anchors = {p: trusted_roots(p, trust) for p in products}
    if ca is not None:
        anchors = {p: a for p, a in anchors.items()
                   if a.ark.to_bytes() == ca.ark.to_bytes()}
        if not anchors:
            raise CertificateError("ARK", f"the ARK given is not {trust}'s ARK for "
                                          f"{' or '.join(products)}")
        for p, anchor in anchors.items():
            if anchor.ask.to_bytes() != ca.ask.to_bytes():
                raise CertificateError("ARK -> ASK", f"the ASK given is not {trust}'s {p} ASK")
    last: CertificateError | None = None
    for name, anchor in anchors.items():
        try:
            verify_cek(chain.cek, anchor)
        except CertificateError as err:
            last = err
            continue
        verify_platform(chain)
        return VerifiedChain(chain, anchor, name, trust)
    assert last is not None
    if len(anchors) > 1:
        raise CertificateError(last.link, f"the CEK is signed by none of {trust}'s ASKs "
                                          f"({', '.join(anchors)}); last: {last}")
    raise last
