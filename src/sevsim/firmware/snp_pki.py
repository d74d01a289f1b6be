"""The SNP half of the platform identity: CHIP_ID, a VCEK per TCB, and the X.509 ARK → ASK of
sevsim's simulated AMD root for the chip's product (spec-formats.md §5).

AMD derives a chip's VCEK inside the chip from a chip-unique secret and the TCB, and its key
server derives the same key; sevsim does the same with its own KDF, so the same chip and TCB
always give the same VCEK and a TCB change gives another. The ARK/ASK/ASVK are the simulated
root's certificates (firmware/amd_root.py), the same bytes as the sevsim trust store ships.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sevsim.abi.sev_session import kdf
from sevsim.abi.snp_cert import AmdExtensions, CertTime, SnpCertificate, vcek_tbs
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    OFFSETS,
    SIGNED_SIZE,
    build_cert_table,
)
from sevsim.abi.snp_tcb import Generation, TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.errors import FirmwareError
from sevsim.firmware.amd_root import (
    ISSUED,
    pss_sign,
    simulated_asvk,
    simulated_root,
    simulated_x509,
)
from sevsim.firmware.amd_root import SEED as AMD_SEED
from sevsim.firmware.pki import P384_ORDER, PlatformPki

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset
    from sevsim.hw.memory import MemoryController

_HASHSTICK_AAD = b"sevsim VLEK hashstick v1"
# Leaves are issued at the CAs' instant (amd_root.ISSUED) and live 7 years, as KDS's real
# VCEKs; VLEKs get the VCEK's 7 too, because AMD's 1-year VLEK lifetime would expire a
# fixed-date certificate within a year and fail every verification after it.
LEAF_YEARS = 7
_LEAF_NOT_BEFORE = CertTime.utc(ISSUED.year, ISSUED.month, ISSUED.day)
# The RSASSA-PSS AlgorithmIdentifier of each product's real VCEK (tests/data/snp): Milan's
# (2022-23) spell out trailerField, Genoa's (2025) and Turin's (2024) leave it out.
_VCEK_PSS_TRAILER = {Generation.MILAN: True, Generation.GENOA: False, Generation.TURIN: False}


def _ca(product: str, role: str) -> x509.Certificate:
    return x509.load_der_x509_certificate(simulated_x509(product.lower())[role])


@cache
def snp_ca_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) of sevsim's simulated root for a product, X.509 as KDS serves them: the
    bytes of the sevsim trust store."""
    return _ca(product, "ask"), _ca(product, "ark")


@cache
def snp_vlek_ca_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASVK, ARK): the ASVK signs VLEKs, which KDS issues to cloud providers."""
    return _ca(product, "asvk"), _ca(product, "ark")


def _vlek_key(product: str, csp_id: str, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
    """A cloud provider's VLEK for a product and TCB: AMD's (here sevsim's simulated AMD's)
    derivation, known to KDS and to nobody else until a chip loads it."""
    material = kdf(AMD_SEED, b"sevsim VLEK", f"{product}/{csp_id}".encode() + tcb.to_bytes(), 64)
    return ec.derive_private_key(int.from_bytes(material, "big") % (P384_ORDER - 1) + 1,
                                 ec.SECP384R1())


def vlek_certificate(product: str, csp_id: str, tcb: TcbVersion) -> bytes:
    """The VLEK's X.509 certificate (serial 0, cspId instead of hwID) signed by the ASVK."""
    generation = Generation(product)
    amd = AmdExtensions(tcb, generation.value, csp_id=f"CN={csp_id}")
    tbs = vcek_tbs(_vlek_key(product, csp_id, tcb).public_key(), amd,
                   f"SEV-VLEK-{generation.value}", _LEAF_NOT_BEFORE, years=LEAF_YEARS)
    return SnpCertificate(tbs, pss_sign(simulated_asvk(product.lower()), tbs.to_der(),
                                        "sha384")).to_der()


class SnpPki(PlatformPki):
    """CHIP_ID, the VCEK for a TCB and its certificate, and signing reports with it."""

    def __init__(self, chip: ChipPreset, memory: MemoryController, *, seed: bytes | None = None,
                 vulnerable_cve_2019_9836: bool = False) -> None:
        super().__init__(chip, memory, seed=seed, vulnerable_cve_2019_9836=vulnerable_cve_2019_9836)
        self._vceks: dict[TcbVersion, ec.EllipticCurvePrivateKey] = {}
        self._chip_id: bytes | None = None
        self._vlek: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None  # key, certificate

    # -- VLEK: a cloud provider's key, loaded into each of its chips ------------------------------
    def _hashstick_key(self) -> AESGCM:
        return AESGCM(kdf(self._chip_secret, b"sevsim VLEK hashstick", b"", 32))

    def seal_hashstick(self, csp_id: str, tcb: TcbVersion) -> bytes:
        """KDS's side: the cloud provider's VLEK wrapped so only this chip can load it."""
        product = self.generation.value
        scalar = _vlek_key(product, csp_id, tcb).private_numbers().private_value
        nonce = os.urandom(12)
        plain = scalar.to_bytes(48, "big") + tcb.to_bytes() + csp_id.encode()
        return nonce + self._hashstick_key().encrypt(nonce, plain, _HASHSTICK_AAD)

    def snp_vlek_load(self, hashstick: bytes) -> None:
        """SNP_VLEK_LOAD: from now on reports are signed with the VLEK (SIGNING_KEY 1)."""
        try:
            plain = self._hashstick_key().decrypt(hashstick[:12], hashstick[12:], _HASHSTICK_AAD)
        except (InvalidTag, ValueError):
            raise FirmwareError(SevStatus.BAD_SIGNATURE,
                                "SNP_VLEK_LOAD: the hashstick is not for this chip or was "
                                "altered") from None
        tcb = TcbVersion.from_int(int.from_bytes(plain[48:56], "little"), self.generation)
        csp_id = plain[56:].decode()
        key = ec.derive_private_key(int.from_bytes(plain[:48], "big"), ec.SECP384R1())
        self._vlek = (key, vlek_certificate(self.generation.value, csp_id, tcb))

    @property
    def vlek_loaded(self) -> bool:
        """Whether a hashstick loaded a VLEK (reports are then signed with it)."""
        return self._vlek is not None

    @property
    def generation(self) -> Generation:
        """The SNP generation; chips before Milan have no SNP identity."""
        try:
            return Generation(self.chip.product)
        except ValueError:
            raise FirmwareError(SevStatus.UNSUPPORTED,
                                f"{self.chip.product} has no SEV-SNP (no VCEK)") from None

    def chip_id(self) -> bytes:
        """The 64-byte CHIP_ID; Turin identifies a chip with its first 8 bytes only."""
        if self._chip_id is None:
            unique = kdf(self._chip_secret, b"sevsim CHIP_ID", b"", 64)
            size = self.generation.hwid_size
            self._chip_id = unique[:size] + bytes(64 - size)
        return self._chip_id

    def vcek_public_key(self, tcb: TcbVersion) -> ec.EllipticCurvePublicKey:
        """The VCEK's public half (its private half never leaves the firmware)."""
        return self._vcek_key(tcb).public_key()

    def _vcek_key(self, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
        """The VCEK for a TCB: a deterministic function of the chip secret and the TCB (kept
        once derived, as the chip keeps the VCEK of its reported TCB)."""
        if tcb not in self._vceks:
            scalar = int.from_bytes(kdf(self._chip_secret, b"sevsim VCEK", tcb.to_bytes(), 64),
                                    "big")
            self._vceks[tcb] = ec.derive_private_key(scalar % (P384_ORDER - 1) + 1,
                                                     ec.SECP384R1())
        return self._vceks[tcb]

    def vcek_certificate(self, tcb: TcbVersion) -> bytes:
        """The VCEK's X.509 certificate (DER, serial 0) signed by the simulated ASK, with AMD's
        extensions: the TCB, the product and hwID = CHIP_ID (8 bytes on Turin)."""
        generation = self.generation
        product_name = ("Milan-B0" if generation is Generation.MILAN
                        else generation.value)  # as real VCEKs name them
        amd = AmdExtensions(tcb, product_name, hw_id=self.chip_id()[:generation.hwid_size],
                            struct_version=1 if generation.turin_layout else 0)
        tbs = vcek_tbs(self.vcek_public_key(tcb), amd, f"SEV-{generation.value}",
                       _LEAF_NOT_BEFORE, years=LEAF_YEARS,
                       pss_trailer=_VCEK_PSS_TRAILER[generation])
        # deterministic PSS salt: the same chip and TCB give the same bytes, as KDS serves
        ask = simulated_root(generation.value.lower()).ask_key
        return SnpCertificate(tbs, pss_sign(ask, tbs.to_der(), "sha384")).to_der()

    def certificate_table(self, tcb: TcbVersion) -> bytes:
        """What the extended guest request returns beside the report (the GUID table of
        spec-formats.md §1.3): the VCEK for `tcb`, then the ASK and ARK, DER each."""
        ca = simulated_x509(self.generation.value.lower())
        if self._vlek is not None:  # the VLEK, its ASVK (under the ASK's GUID) and the ARK
            return build_cert_table([(GUID_VLEK, self._vlek[1]), (GUID_ASK, ca["asvk"]),
                                     (GUID_ARK, ca["ark"])])
        return build_cert_table([(GUID_VCEK, self.vcek_certificate(tcb)),
                                 (GUID_ASK, ca["ask"]), (GUID_ARK, ca["ark"])])

    def _sign_report(self, unsigned: bytes | bytearray, tcb: TcbVersion) -> bytes:
        """A report's 0x4A0 bytes signed with the VLEK once one is loaded, else the VCEK of
        `tcb`: ECDSA P-384 over SHA-384 of bytes 0x000-0x29F, R and S little-endian in their
        72-byte fields."""
        blob = bytearray(unsigned)
        key = self._vlek[0] if self._vlek is not None else self._vcek_key(tcb)
        # RFC 6979: a seeded host signs the same report with the same bytes
        der = key.sign(bytes(blob[:SIGNED_SIZE]),
                       ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
        for value, name in zip(decode_dss_signature(der), ("signature_r", "signature_s"),
                               strict=True):
            offset, size = OFFSETS[name]
            blob[offset:offset + size] = value.to_bytes(size, "little")
        return bytes(blob)
