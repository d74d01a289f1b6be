"""The platform's identity: chip secret, CEK, PEK, PDH, OCA and their certificate chain.

Every key comes from the chip secret by sevsim's own derivation (AMD keeps its own secret):
the CEK once and for all, the PEK, self-owned OCA and PDH per generation, which PEK_GEN,
PDH_GEN and PLATFORM_RESET advance. A chip made from a seed is therefore the same platform
on every run. The CEK is certified by the simulated AMD ASK of the chip's product
(firmware/amd_root.py), never by AMD's.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.curve_a3 import raw_ecdh_x
from sevsim.abi.sev_cert import (
    SEV_CERT_SIZE,
    Algo,
    CertChain,
    EcPublicKey,
    SevCert,
    Signature,
    Usage,
    check_signature,
)
from sevsim.abi.sev_session import kdf
from sevsim.abi.status import PlatformState, SevStatus
from sevsim.errors import FirmwareError, SevCertFormatError
from sevsim.firmware.amd_root import pss_hash_name, pss_sign, simulated_root
from sevsim.firmware.core import FirmwareCore
from sevsim.hw.chips import ChipPreset
from sevsim.hw.memory import MemoryController

ID_SIZE = 64
P384_ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                 "581A0DB248B0A77AECEC196ACCC52973", 16)
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # same chip, same bytes
_BOTH = (PlatformState.INIT, PlatformState.WORKING)


class PlatformPki(FirmwareCore):
    """PEK_GEN, PEK_CSR, PEK_CERT_IMPORT, PDH_GEN, PDH_CERT_EXPORT, GET_ID, PLATFORM_RESET."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        super().__init__(chip, memory, seed=seed,
                         vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        self._chip_secret = (os.urandom(32) if seed is None else hashlib.sha256(
            b"sevsim chip secret\0" + chip.name.encode() + b"\0" + seed).digest())
        self._cek = self._derive_key("CEK")
        self._pek_generation = 0
        self._pdh_generation = 0
        self._owner_oca: SevCert | None = None  # the imported OCA; None when self-owned
        self._pek_oca_sig: Signature | None = None  # the owner's OCA signature on the PEK
        self._certs: dict[Usage, SevCert] = {}  # built on demand, dropped when keys change
        self._new_pek()

    # -- derivation ------------------------------------------------------------------------------
    def _derive_key(self, label: str) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(kdf(self._chip_secret, label.encode(), b"", 64), "big")
        return ec.derive_private_key(scalar % (P384_ORDER - 1) + 1, ec.SECP384R1())

    def _new_pek(self) -> None:
        """A new PEK and self-owned OCA (PEK_GEN, PLATFORM_RESET), hence a new PDH."""
        self._pek_generation += 1
        self._pek = self._derive_key(f"PEK {self._pek_generation}")
        self._oca = self._derive_key(f"OCA {self._pek_generation}")
        self._owner_oca = None
        self._pek_oca_sig = None
        self._forget(Usage.PEK, Usage.OCA)
        self._new_pdh()

    def _new_pdh(self) -> None:
        self._pdh_generation += 1
        self._pdh = self._derive_key(f"PDH {self._pdh_generation}")
        self._forget(Usage.PDH)

    def _forget(self, *usages: Usage) -> None:
        """Drop certificates whose keys or signers changed (the CEK's never does)."""
        for usage in usages:
            self._certs.pop(usage, None)

    # -- certificates ------------------------------------------------------------------------------
    def _unsigned(self, usage: Usage, algo: Algo, key: ec.EllipticCurvePrivateKey) -> SevCert:
        return SevCert(self.chip.api_major, self.chip.api_minor, usage, algo,
                       EcPublicKey.from_key(key.public_key()), Signature.empty(),
                       Signature.empty())

    @staticmethod
    def _ecdsa(cert: SevCert, usage: Usage, key: ec.EllipticCurvePrivateKey) -> Signature:
        return Signature.ecdsa(usage, Algo.ECDSA_SHA256, key.sign(cert.signed_bytes(), _ECDSA))

    def _cert(self, usage: Usage) -> SevCert:
        if usage not in self._certs:
            self._certs[usage] = self._build(usage)
        return self._certs[usage]

    def _build(self, usage: Usage) -> SevCert:
        if usage is Usage.CEK:  # as AMD does at manufacture: the ASK signs the CEK
            root = simulated_root(self.chip.product)
            cert = self._unsigned(Usage.CEK, Algo.ECDSA_SHA256, self._cek)
            signature = pss_sign(root.ask_key, cert.signed_bytes(),
                                 pss_hash_name(root.ask.modulus_bits))
            return SevCert(cert.api_major, cert.api_minor, cert.usage, cert.algo, cert.key,
                           Signature.rsa(Usage.ASK, root.ask.sev_algo, signature),
                           Signature.empty())
        if usage is Usage.OCA:
            if self._owner_oca is not None:
                return self._owner_oca
            cert = self._unsigned(Usage.OCA, Algo.ECDSA_SHA256, self._oca)
            return SevCert(cert.api_major, cert.api_minor, cert.usage, cert.algo, cert.key,
                           self._ecdsa(cert, Usage.OCA, self._oca), Signature.empty())
        if usage is Usage.PEK:
            cert = self._unsigned(Usage.PEK, Algo.ECDSA_SHA256, self._pek)
            by_oca = self._pek_oca_sig or self._ecdsa(cert, Usage.OCA, self._oca)
            return SevCert(cert.api_major, cert.api_minor, cert.usage, cert.algo, cert.key,
                           by_oca, self._ecdsa(cert, Usage.CEK, self._cek))
        cert = self._unsigned(Usage.PDH, Algo.ECDH_SHA256, self._pdh)
        return SevCert(cert.api_major, cert.api_minor, cert.usage, cert.algo, cert.key,
                       self._ecdsa(cert, Usage.PEK, self._pek), Signature.empty())

    @property
    def externally_owned(self) -> bool:
        """PLATFORM_STATUS owner bit: an owner's OCA signed the PEK (PEK_CERT_IMPORT)."""
        return self._owner_oca is not None

    # -- commands ----------------------------------------------------------------------------------
    def platform_reset(self) -> None:
        """PLATFORM_RESET (sevctl's "reset", sev-tool's factory_reset): new PEK and PDH, the
        OCA back to the firmware's own. The CEK, fused into the chip, stays."""
        self._require_platform(PlatformState.UNINIT, "PLATFORM_RESET")
        self._new_pek()

    def pek_gen(self) -> None:
        """A new PEK signed by a new self-owned OCA and the CEK; the PDH is regenerated."""
        self._require_platform(PlatformState.INIT, "PEK_GEN")
        self._new_pek()

    def pek_csr(self) -> SevCert:
        """The PEK's certificate with no signatures, for an owner's OCA to sign."""
        self._require_platform(PlatformState.INIT, "PEK_CSR")
        return self._unsigned(Usage.PEK, Algo.ECDSA_SHA256, self._pek)

    def pek_cert_import(self, pek_cert: bytes, oca_cert: bytes) -> None:
        """Take ownership: the owner's self-signed OCA and the PEK signed by it; the firmware
        adds the CEK's signature. Refused when owned already (PLATFORM_RESET first)."""
        self._require_platform(PlatformState.INIT, "PEK_CERT_IMPORT")
        if self.externally_owned:
            raise FirmwareError(SevStatus.ALREADY_OWNED,
                                "the platform is owned; PLATFORM_RESET before a new owner")
        pek, oca = (self._parse(pek_cert, "PEK"), self._parse(oca_cert, "OCA"))
        if oca.usage is not Usage.OCA or not (oca.algo.is_ecdsa or oca.algo.is_rsa):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                f"the OCA certificate is a {oca.usage.name} {oca.algo.name} key")
        if pek.usage is not Usage.PEK or pek.key != EcPublicKey.from_key(self._pek.public_key()):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                "the PEK certificate is not for this platform's current PEK")
        self._check(oca, Usage.OCA, oca)
        self._check(pek, Usage.OCA, oca)
        self._owner_oca = oca
        self._pek_oca_sig = next(s for s in pek.signatures if s.usage is Usage.OCA)
        self._forget(Usage.PEK, Usage.OCA)

    @staticmethod
    def _parse(blob: bytes, what: str) -> SevCert:
        if len(blob) != SEV_CERT_SIZE:
            raise FirmwareError(SevStatus.INVALID_LENGTH,
                                f"{what} certificate of {len(blob)} bytes, not {SEV_CERT_SIZE}")
        try:
            return SevCert.from_bytes(blob)
        except SevCertFormatError as err:
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, f"{what}: {err}") from None

    @staticmethod
    def _check(cert: SevCert, usage: Usage, signer: SevCert) -> None:
        slots = [s for s in cert.signatures if s.usage is usage]
        if not slots:
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                f"the {cert.usage.name} carries no {usage.name} signature")
        try:
            check_signature(cert, slots[0], signer.to_key())
        except (InvalidSignature, ValueError):
            raise FirmwareError(SevStatus.BAD_SIGNATURE,
                                f"the {usage.name} signature on the {cert.usage.name} does not "
                                "verify") from None

    def pdh_gen(self) -> None:
        """A new PDH, signed by the PEK: sessions made for the old one no longer open."""
        self._require_platform(_BOTH, "PDH_GEN")
        self._new_pdh()

    def pdh_cert_export(self) -> tuple[SevCert, CertChain]:
        """The PDH certificate and the chain a guest owner verifies: PEK, OCA, CEK."""
        self._require_platform(_BOTH, "PDH_CERT_EXPORT")
        return self._cert(Usage.PDH), CertChain(self._cert(Usage.PEK), self._cert(Usage.OCA),
                                                self._cert(Usage.CEK))

    def amd_certs(self) -> tuple[bytes, bytes]:
        """(ARK, ASK) of the chip's product as AMD would publish them: here sevsim's
        simulated ones, which the sevsim trust store of `sevsim.attest` holds."""
        root = simulated_root(self.chip.product)
        return root.ark.to_bytes(), root.ask.to_bytes()

    def get_id(self) -> tuple[bytes, bytes]:
        """GET_ID: a 64-byte ID per socket. The first is SHA-512 of the CEK's public key, so it
        names the CEK (as AMD's KDS URL /cek/id/<hex> does); one socket, the second is zero."""
        cek = EcPublicKey.from_key(self._cek.public_key())
        return hashlib.sha512(cek.to_bytes()).digest(), bytes(ID_SIZE)

    # -- the PDH's side of a launch session --------------------------------------------------------
    def _pdh_shared_x(self, godh: EcPublicKey) -> bytes:
        """ECDH(PDH private, the owner's GODH point): the shared X, big-endian.

        Fixed firmware first checks that the point lies on P-384 (INVALID_CERTIFICATE if not).
        Firmware vulnerable to CVE-2019-9836 multiplies the raw point with its own affine
        formulas, which never use the curve's b: a point of small order on another curve
        then leaks the PDH private key modulo that order."""
        if self.vulnerable_cve_2019_9836:
            return raw_ecdh_x(self._pdh.private_numbers().private_value, godh.qx, godh.qy)
        try:
            public = godh.to_key()
        except ValueError:
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE,
                                "the GODH point is not on P-384") from None
        return self._pdh.exchange(ec.ECDH(), public)
