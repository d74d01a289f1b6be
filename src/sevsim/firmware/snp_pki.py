"""The SNP half of the platform identity: CHIP_ID, a VCEK per TCB, and the X.509 ARK → ASK of
sevsim's simulated AMD root for the chip's product (spec-formats.md §5).

AMD derives a chip's VCEK inside the chip from a chip-unique secret and the TCB, and its key
server derives the same key; sevsim does the same with its own KDF, so the same chip and TCB
always give the same VCEK and a TCB change gives another. The ARK/ASK are the simulated root's
RSA-4096 keys (firmware/amd_root.py) in AMD's X.509 form: RSASSA-PSS SHA-384, salt 48.
"""

from __future__ import annotations

import datetime
import os
from functools import cache
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

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
from sevsim.firmware.amd_root import SEED as AMD_SEED
from sevsim.firmware.amd_root import pss_sign, simulated_asvk, simulated_root
from sevsim.firmware.pki import P384_ORDER, PlatformPki

if TYPE_CHECKING:
    from sevsim.hw.chips import ChipPreset
    from sevsim.hw.memory import MemoryController

AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)  # AMD: salt 48
_SERIALS = {"Milan": (0x10000, 0x10001), "Genoa": (0x20000, 0x20002), "Turin": (0x30000, 0x30001)}
_HASHSTICK_AAD = b"sevsim VLEK hashstick v1"
_ASVK_SERIALS = {"Milan": 0x10101, "Genoa": 0x20101, "Turin": 0x30101}
# Every simulated certificate is issued at one fixed instant, so the same seed gives the same
# bytes. Lifetimes are AMD's: ARK/ASK/ASVK 25 years, VCEK 7 years from issue (KDS's real
# certificates); VLEKs get the VCEK's 7 too, because AMD's 1-year VLEK lifetime would expire
# a fixed-date certificate within a year and fail every verification after it.
ISSUED = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
CA_YEARS = 25
LEAF_YEARS = 7
_LEAF_NOT_BEFORE = CertTime.utc(ISSUED.year, ISSUED.month, ISSUED.day)
_KDS_HOST = "https://kdsintf.amd.com"


def _amd_name(common_name: str) -> x509.Name:
    """AMD's DN, in AMD's RDN order (C as PrintableString, the rest UTF8String)."""
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _ca(subject: x509.Name, issuer: x509.Name, serial: int, key: rsa.RSAPublicKey,
        crl_path: str) -> x509.CertificateBuilder:
    crl = x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(f"{_KDS_HOST}/{crl_path}")], None, None, None)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .serial_number(serial).public_key(key).not_valid_before(ISSUED)
            .not_valid_after(ISSUED.replace(year=ISSUED.year + CA_YEARS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(crl, critical=False))


def _signing_ca(builder: x509.CertificateBuilder, ark: x509.Certificate,
                ark_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """An ASK or ASVK: CA with path length 0, keyCertSign, under the ARK."""
    ark_public = ark.public_key()
    assert isinstance(ark_public, rsa.RSAPublicKey)
    return (builder
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ark_public),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False,
                                         False), critical=True)
            .sign(ark_key, hashes.SHA384(), rsa_padding=AMD_PSS))


@cache
def snp_ca_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) of sevsim's simulated root for a product, X.509 as KDS serves them."""
    root = simulated_root(product.lower())
    ark_serial, ask_serial = _SERIALS[product]
    ark_name = _amd_name(f"ARK-{product}")
    ark = (_ca(ark_name, ark_name, ark_serial, root.ark_key.public_key(),
               f"vcek/v1/{product}/crl")
           .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                        False), critical=True)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(root.ark_key, hashes.SHA384(), rsa_padding=AMD_PSS))
    ask = _signing_ca(_ca(_amd_name(f"SEV-{product}"), ark_name, ask_serial,
                          root.ask_key.public_key(), f"vcek/v1/{product}/crl"),
                      ark, root.ark_key)
    return ask, ark


@cache
def snp_vlek_ca_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASVK, ARK): the ASVK signs VLEKs, which KDS issues to cloud providers."""
    ark = snp_ca_chain(product)[1]
    asvk = _signing_ca(_ca(_amd_name(f"SEV-VLEK-{product}"), ark.subject,
                           _ASVK_SERIALS[product], simulated_asvk(product).public_key(),
                           f"vlek/v1/{product}/crl"),
                       ark, simulated_root(product.lower()).ark_key)
    return asvk, ark


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
                       _LEAF_NOT_BEFORE, years=LEAF_YEARS)
        # deterministic PSS salt: the same chip and TCB give the same bytes, as KDS serves
        ask = simulated_root(generation.value.lower()).ask_key
        return SnpCertificate(tbs, pss_sign(ask, tbs.to_der(), "sha384")).to_der()

    def certificate_table(self, tcb: TcbVersion) -> bytes:
        """What the extended guest request returns beside the report (the GUID table of
        spec-formats.md §1.3): the VCEK for `tcb`, then the ASK and ARK, DER each."""
        der = serialization.Encoding.DER
        if self._vlek is not None:  # the VLEK, its ASVK (under the ASK's GUID) and the ARK
            asvk, ark = snp_vlek_ca_chain(self.generation.value)
            return build_cert_table([(GUID_VLEK, self._vlek[1]), (GUID_ASK, asvk.public_bytes(der)),
                                     (GUID_ARK, ark.public_bytes(der))])
        ask, ark = snp_ca_chain(self.generation.value)
        return build_cert_table([(GUID_VCEK, self.vcek_certificate(tcb)),
                                 (GUID_ASK, ask.public_bytes(der)),
                                 (GUID_ARK, ark.public_bytes(der))])

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
