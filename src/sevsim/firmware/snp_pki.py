"""The SNP half of the platform identity: CHIP_ID, a VCEK per TCB, and the X.509 ARK → ASK of
sevsim's simulated AMD root for the chip's product (spec-formats.md §5).

AMD derives a chip's VCEK inside the chip from a chip-unique secret and the TCB, and its key
server derives the same key; sevsim does the same with its own KDF, so the same chip and TCB
always give the same VCEK and a TCB change gives another. The ARK/ASK are the simulated root's
RSA-4096 keys (firmware/amd_root.py) in AMD's X.509 form: RSASSA-PSS SHA-384, salt 48.
"""

from __future__ import annotations

import datetime
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sevsim.abi.sev_session import kdf
from sevsim.abi.snp_cert import AmdExtensions, CertTime, SnpCertificate, vcek_tbs
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    OFFSETS,
    SIGNED_SIZE,
    build_cert_table,
)
from sevsim.abi.snp_tcb import Generation, TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.errors import FirmwareError
from sevsim.firmware.amd_root import pss_sign, simulated_root
from sevsim.firmware.pki import P384_ORDER, PlatformPki

AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)  # AMD: salt 48
_SERIALS = {"Milan": (0x10000, 0x10001), "Genoa": (0x20000, 0x20002), "Turin": (0x30000, 0x30001)}
_NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
_KDS = "https://kdsintf.amd.com/vcek/v1"


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


@cache
def snp_ca_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) of sevsim's simulated root for a product, X.509 as KDS serves them."""
    root = simulated_root(product.lower())
    ark_serial, ask_serial = _SERIALS[product]
    ark_name, ask_name = _amd_name(f"ARK-{product}"), _amd_name(f"SEV-{product}")
    crl = x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(f"{_KDS}/{product}/crl")], None, None, None)])

    def builder(subject: x509.Name, issuer: x509.Name, serial: int,
                key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .serial_number(serial).public_key(key).not_valid_before(_NOT_BEFORE)
                .not_valid_after(_NOT_BEFORE.replace(year=_NOT_BEFORE.year + 25))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False))

    ark_public = root.ark_key.public_key()
    ark = (builder(ark_name, ark_name, ark_serial, ark_public)
           .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                        False), critical=True)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(crl, critical=False)
           .sign(root.ark_key, hashes.SHA384(), rsa_padding=AMD_PSS))
    ask = (builder(ask_name, ark_name, ask_serial, root.ask_key.public_key())
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ark_public),
                          critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False,
                                        False), critical=True)
           .add_extension(crl, critical=False)
           .sign(root.ark_key, hashes.SHA384(), rsa_padding=AMD_PSS))
    return ask, ark


class SnpPki(PlatformPki):
    """CHIP_ID, the VCEK for a TCB and its certificate, and signing reports with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vceks: dict[TcbVersion, ec.EllipticCurvePrivateKey] = {}
        self._chip_id: bytes | None = None

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

    def vcek_key(self, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
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
        tbs = vcek_tbs(self.vcek_key(tcb).public_key(), amd, f"SEV-{generation.value}",
                       CertTime.utc(2024, 1, 1))
        # deterministic PSS salt: the same chip and TCB give the same bytes, as KDS serves
        ask = simulated_root(generation.value.lower()).ask_key
        return SnpCertificate(tbs, pss_sign(ask, tbs.to_der(), "sha384")).to_der()

    def certificate_table(self, tcb: TcbVersion) -> bytes:
        """What the extended guest request returns beside the report (the GUID table of
        spec-formats.md §1.3): the VCEK for `tcb`, then the ASK and ARK, DER each."""
        ask, ark = snp_ca_chain(self.generation.value)
        der = serialization.Encoding.DER
        return build_cert_table([(GUID_VCEK, self.vcek_certificate(tcb)),
                                 (GUID_ASK, ask.public_bytes(der)),
                                 (GUID_ARK, ark.public_bytes(der))])

    def sign_report(self, unsigned: bytes | bytearray, tcb: TcbVersion) -> bytes:
        """A report's 0x4A0 bytes signed with the VCEK of `tcb`: ECDSA P-384 over SHA-384 of
        bytes 0x000-0x29F, R and S little-endian in their 72-byte fields."""
        blob = bytearray(unsigned)
        der = self.vcek_key(tcb).sign(bytes(blob[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        for value, name in zip(decode_dss_signature(der), ("signature_r", "signature_s"),
                               strict=True):
            offset, size = OFFSETS[name]
            blob[offset:offset + size] = value.to_bytes(size, "little")
        return bytes(blob)
