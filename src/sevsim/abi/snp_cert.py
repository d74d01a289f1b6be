"""AMD's X.509 certificates as KDS issues them (spec-formats.md §5.1-5.2). VCEK and VLEK:
X.509 v3, serial number 0, RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) by the ASK or ASVK,
AMD's distinguished-name order and only AMD's own extensions, in KDS's order. ARK, ASK and
ASVK: the same names and signature algorithm, and the X.509 extensions AMD gives them, in
AMD's order and encoding (`ca_extensions`).

`cryptography` will not build a serial-0 certificate and warns when loading one, so the
certificate is encoded and decoded with sevsim's DER layer (abi/der.py), and signatures are
made and checked over the TBSCertificate bytes directly. A parse re-encodes and must give
back the input byte for byte, so what parses is exactly what sevsim can build.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sevsim.errors import SnpCertFormatError, TcbFormatError

from . import der
from .snp_tcb import TcbVersion

# -- signature algorithm ------------------------------------------------------------------

_SHA384 = der.sequence(der.oid("2.16.840.1.101.3.4.2.2"), der.encode(der.NULL, b""))
_PSS_PARAMS = (der.encode(der.context(0), _SHA384)
               + der.encode(der.context(1), der.sequence(der.oid("1.2.840.113549.1.1.8"),
                                                         _SHA384))
               + der.encode(der.context(2), der.integer(48)))
_PSS_OID = der.oid("1.2.840.113549.1.1.10")
# Older KDS output (2022-23 Milan VCEKs) spells out the default trailerField [3] INTEGER 1.
PSS_WITH_TRAILER = der.sequence(_PSS_OID, der.sequence(
    _PSS_PARAMS + der.encode(der.context(3), der.integer(1))))
PSS_WITHOUT_TRAILER = der.sequence(_PSS_OID, der.sequence(_PSS_PARAMS))
PSS = padding.PSS(padding.MGF1(hashes.SHA384()), 48)

# -- names --------------------------------------------------------------------------------

OID_OU, OID_C, OID_L, OID_ST, OID_O, OID_CN = (
    "2.5.4.11", "2.5.4.6", "2.5.4.7", "2.5.4.8", "2.5.4.10", "2.5.4.3")


@dataclass(frozen=True)
class Attribute:
    """One RDN's only attribute: OID, DER string tag and text."""

    oid: str
    tag: int
    value: str


Name = tuple[Attribute, ...]


def amd_name(common_name: str) -> Name:
    """OU=Engineering, C=US, L=Santa Clara, ST=CA, O=Advanced Micro Devices, CN=...: AMD's
    order, C a PrintableString and the rest UTF8Strings, as in every real AMD certificate."""
    utf8 = der.UTF8_STRING
    return (Attribute(OID_OU, utf8, "Engineering"),
            Attribute(OID_C, der.PRINTABLE_STRING, "US"), Attribute(OID_L, utf8, "Santa Clara"),
            Attribute(OID_ST, utf8, "CA"), Attribute(OID_O, utf8, "Advanced Micro Devices"),
            Attribute(OID_CN, utf8, common_name))


def encode_name(name: Name) -> bytes:
    """A distinguished name as DER (one attribute per RDN, as AMD's are)."""
    return der.sequence(*(der.encode(der.SET, der.sequence(der.oid(a.oid),
                                                           der.string(a.tag, a.value)))
                          for a in name))


def parse_name(content: bytes, what: str) -> Name:
    """Parse a distinguished name; SnpCertFormatError names `what` otherwise."""
    out = []
    for tag, rdn in der.children(content):
        atoms = der.children(rdn) if tag == der.SET else []
        if len(atoms) != 1 or atoms[0][0] != der.SEQUENCE:
            raise SnpCertFormatError(what, "each RDN must hold exactly one attribute")
        parts = der.children(atoms[0][1])
        if len(parts) != 2 or parts[0][0] != der.OID:
            raise SnpCertFormatError(what, "an attribute is OID and value")
        out.append(Attribute(der.parse_oid(parts[0][1], what), parts[1][0],
                             der.parse_string(parts[1][0], parts[1][1], what)))
    return tuple(out)


def common_name(name: Name) -> str:
    """The CN of a name, or "" without one."""
    for attribute in name:
        if attribute.oid == OID_CN:
            return attribute.value
    raise SnpCertFormatError("name", "has no CN")


# -- validity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertTime:
    """A validity bound as DER carries it: "YYMMDDHHMMSSZ" (UTCTime, years 1950-2049) or
    "YYYYMMDDHHMMSSZ" (GeneralizedTime), as RFC 5280 chooses by year."""

    text: str

    def __post_init__(self) -> None:
        if len(self.text) not in (13, 15) or not self.text[:-1].isdigit() \
                or self.text[-1] != "Z":
            raise SnpCertFormatError("validity", f"{self.text!r} is not a DER UTC time")
        if len(self.text) == 15 and 1950 <= int(self.text[:4]) < 2050:
            raise SnpCertFormatError("validity", f"{self.text!r}: years 1950-2049 are UTCTime")

    @classmethod
    def utc(cls, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
            second: int = 0) -> CertTime:
        """A time in UTCTime before 2050, GeneralizedTime after, as X.509 requires."""
        rest = f"{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}Z"
        return cls(f"{year % 100:02d}{rest}" if 1950 <= year < 2050 else f"{year:04d}{rest}")

    @property
    def year(self) -> int:
        """The four-digit year."""
        if len(self.text) == 15:
            return int(self.text[:4])
        short = int(self.text[:2])
        return 1900 + short if short >= 50 else 2000 + short

    def plus_years(self, years: int) -> CertTime:
        """The same instant `years` later (how KDS sets notAfter: 7 years for a VCEK)."""
        tail = self.text[-11:] if len(self.text) == 15 else self.text[2:]
        return CertTime.utc(self.year + years, int(tail[0:2]), int(tail[2:4]),
                            int(tail[4:6]), int(tail[6:8]), int(tail[8:10]))

    def to_der(self) -> bytes:
        """The DER element."""
        tag = der.UTC_TIME if len(self.text) == 13 else der.GENERALIZED_TIME
        return der.encode(tag, self.text.encode())


# -- AMD's extensions ---------------------------------------------------------------------

AMD_OID = "1.3.6.1.4.1.3704.1"
STRUCT_VERSION, PRODUCT_NAME, HW_ID, CSP_ID = (f"{AMD_OID}.{n}" for n in (1, 2, 4, 5))
BL_SPL, TEE_SPL, SNP_SPL, SPL4, SPL5, SPL6, SPL7, UCODE_SPL, FMC_SPL = (
    f"{AMD_OID}.3.{n}" for n in range(1, 10))
_SPL_ORDER_MILAN = (BL_SPL, TEE_SPL, SPL4, SPL5, SPL6, SPL7, SNP_SPL, UCODE_SPL)
_SPL_ORDER_TURIN = (FMC_SPL, BL_SPL, TEE_SPL, SNP_SPL, SPL5, SPL6, SPL7, UCODE_SPL)


@dataclass(frozen=True)
class Extension:
    """One X.509 extension: OID, critical flag, DER value."""

    oid: str
    value: bytes  # the extnValue OCTET STRING's content
    critical: bool = False

    def to_der(self) -> bytes:
        """The DER element."""
        crit = der.encode(der.BOOLEAN, b"\xff") if self.critical else b""
        return der.sequence(der.oid(self.oid), crit, der.encode(der.OCTET_STRING, self.value))


@dataclass(frozen=True)
class AmdExtensions:
    """What a VCEK/VLEK certifies: the TCB its key was derived for, the chip (hwID, VCEK
    only) or the cloud provider (cspId, VLEK only), the product and the layout version.

    The TCB's layout (Milan/Genoa, or Turin with an FMC SPL) decides which SPL extensions
    appear and in which order, as on real certificates."""

    tcb: TcbVersion
    product_name: str
    hw_id: bytes | None = None
    csp_id: str | None = None
    struct_version: int = 0

    def to_extensions(self) -> tuple[Extension, ...]:
        """AMD's extensions in KDS's order; a VCEK has a hwID, a VLEK a cspId."""
        if (self.hw_id is None) == (self.csp_id is None):
            raise SnpCertFormatError("extensions", "a VCEK has a hwID, a VLEK a cspId: one of them")
        turin = self.tcb.fmc is not None
        if self.hw_id is not None and len(self.hw_id) != (8 if turin else 64):
            raise SnpCertFormatError("hwID", f"{len(self.hw_id)} bytes; 64 on Milan/Genoa, 8 on "
                                  "Turin")
        spl = {BL_SPL: self.tcb.bootloader, TEE_SPL: self.tcb.tee, SNP_SPL: self.tcb.snp,
               UCODE_SPL: self.tcb.microcode, FMC_SPL: self.tcb.fmc or 0}
        out = [Extension(STRUCT_VERSION, der.integer(self.struct_version)),
               Extension(PRODUCT_NAME, der.string(der.IA5_STRING, self.product_name))]
        out += [Extension(o, der.integer(spl.get(o, 0)))
                for o in (_SPL_ORDER_TURIN if turin else _SPL_ORDER_MILAN)]
        if self.hw_id is not None:
            out.append(Extension(HW_ID, self.hw_id))
        else:
            assert self.csp_id is not None
            out.append(Extension(CSP_ID, der.string(der.IA5_STRING, self.csp_id)))
        return tuple(out)

    @classmethod
    def from_extensions(cls, extensions: tuple[Extension, ...]) -> AmdExtensions:
        """Strict: only AMD's OIDs, none critical, none twice, reserved SPLs zero. The order
        is checked by SnpCertificate.from_der."""
        values: dict[str, bytes] = {}
        for ext in extensions:
            if not ext.oid.startswith(AMD_OID + ".") or ext.critical:
                raise SnpCertFormatError(ext.oid, "not a non-critical AMD extension")
            if ext.oid in values:
                raise SnpCertFormatError(ext.oid, "appears twice")
            values[ext.oid] = ext.value

        def number(oid: str, required: bool = True) -> int | None:
            if oid not in values:
                if required:
                    raise SnpCertFormatError(oid, "missing")
                return None
            return der.parse_integer(der.read_one(values[oid], der.INTEGER, oid), oid)

        def text(oid: str) -> str | None:
            if oid not in values:
                return None
            return der.parse_string(der.IA5_STRING,
                                    der.read_one(values[oid], der.IA5_STRING, oid), oid)

        for oid in (SPL4, SPL5, SPL6, SPL7):
            if number(oid, required=False):
                raise SnpCertFormatError(oid, "a reserved SPL must be zero")
        product = text(PRODUCT_NAME)
        if product is None:
            raise SnpCertFormatError(PRODUCT_NAME, "missing")
        bl, tee, snp, ucode = (number(o) or 0 for o in (BL_SPL, TEE_SPL, SNP_SPL, UCODE_SPL))
        try:
            tcb = TcbVersion(bl, tee, snp, ucode, fmc=number(FMC_SPL, required=False))
        except TcbFormatError as err:
            raise SnpCertFormatError("TCB", str(err)) from None
        known = {STRUCT_VERSION, PRODUCT_NAME, HW_ID, CSP_ID, *_SPL_ORDER_MILAN, FMC_SPL}
        for oid in values.keys() - known:
            raise SnpCertFormatError(oid, "is not an extension AMD defines for a VCEK/VLEK")
        version = number(STRUCT_VERSION)
        assert version is not None
        return cls(tcb, product, values.get(HW_ID), text(CSP_ID), version)


# -- the CA certificates' extensions (ARK, ASK, ASVK) ------------------------------------

OID_SKI, OID_KEY_USAGE, OID_BASIC_CONSTRAINTS, OID_CRL_DP, OID_AKI = (
    "2.5.29.14", "2.5.29.15", "2.5.29.19", "2.5.29.31", "2.5.29.35")
# keyUsage as AMD encodes it: always one unused bit, so keyCertSign alone is 03 02 01 04 (the
# minimal DER, 03 02 02 04, is what other CAs write); the ARK adds cRLSign: 03 02 01 06.
KEY_USAGE_ARK = der.encode(der.BIT_STRING, b"\x01\x06")
KEY_USAGE_SIGNER = der.encode(der.BIT_STRING, b"\x01\x04")
_TRUE = der.encode(der.BOOLEAN, b"\xff")
_URI = 0x86  # GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String


def key_identifier(spki: bytes) -> bytes:
    """RFC 5280 §4.2.1.2 method 1, as AMD's SKI and AKI: SHA-1 of the subjectPublicKey bits."""
    parts = der.children(der.read_one(spki, der.SEQUENCE, "subjectPublicKeyInfo"))
    if len(parts) != 2 or parts[1][0] != der.BIT_STRING or not parts[1][1] or parts[1][1][0]:
        raise SnpCertFormatError("subjectPublicKeyInfo", "is not algorithm and key bits")
    return hashlib.sha1(parts[1][1][1:]).digest()


def ca_extensions(spki: bytes, crl_url: str, issuer_spki: bytes | None = None
                  ) -> tuple[Extension, ...]:
    """The extensions of AMD's ARK (`issuer_spki` None: self-signed) or of an ASK/ASVK under
    the ARK whose key is `issuer_spki`, in the order and encoding of AMD's real ones: ARK
    keyUsage, SKI, basicConstraints (CA), CRL distribution point; ASK/ASVK SKI, AKI,
    basicConstraints (CA, pathLen 0), keyUsage, CRL distribution point."""
    ski = Extension(OID_SKI, der.encode(der.OCTET_STRING, key_identifier(spki)))
    uri = der.encode(_URI, crl_url.encode("ascii"))
    crl = Extension(OID_CRL_DP, der.sequence(der.sequence(
        der.encode(der.context(0), der.encode(der.context(0), uri)))))
    if issuer_spki is None:
        return (Extension(OID_KEY_USAGE, KEY_USAGE_ARK, critical=True), ski,
                Extension(OID_BASIC_CONSTRAINTS, der.sequence(_TRUE), critical=True), crl)
    aki = Extension(OID_AKI, der.sequence(der.encode(der.context(0, constructed=False),
                                                     key_identifier(issuer_spki))))
    return (ski, aki,
            Extension(OID_BASIC_CONSTRAINTS, der.sequence(_TRUE, der.integer(0)), critical=True),
            Extension(OID_KEY_USAGE, KEY_USAGE_SIGNER, critical=True), crl)


# -- the certificate ----------------------------------------------------------------------


@dataclass(frozen=True)
class TbsCertificate:
    """The signed part. `spki` is the DER SubjectPublicKeyInfo; `pss_trailer` selects the
    older AlgorithmIdentifier spelling with an explicit trailerField."""

    issuer: Name
    subject: Name
    not_before: CertTime
    not_after: CertTime
    spki: bytes
    extensions: tuple[Extension, ...]
    serial: int = 0
    pss_trailer: bool = False

    @property
    def signature_algorithm(self) -> bytes:
        """The RSASSA-PSS AlgorithmIdentifier, with or without trailerField."""
        return PSS_WITH_TRAILER if self.pss_trailer else PSS_WITHOUT_TRAILER

    def to_der(self) -> bytes:
        """The DER the ASK (or ASVK) signs."""
        return der.sequence(
            der.encode(der.context(0), der.integer(2)), der.integer(self.serial),
            self.signature_algorithm, encode_name(self.issuer),
            der.sequence(self.not_before.to_der(), self.not_after.to_der()),
            encode_name(self.subject), self.spki,
            der.encode(der.context(3), der.sequence(*(e.to_der() for e in self.extensions))))

    @classmethod
    def from_der(cls, blob: bytes) -> TbsCertificate:
        """Parse the to-be-signed part strictly, as AMD issues it."""
        parts = der.children(der.read_one(blob, der.SEQUENCE, "TBSCertificate"))
        tags = tuple(tag for tag, _ in parts)
        if tags != (der.context(0), der.INTEGER, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE,
                    der.SEQUENCE, der.SEQUENCE, der.context(3)):
            raise SnpCertFormatError("TBSCertificate", "fields are not those of an AMD VCEK/VLEK")
        if parts[0][1] != der.integer(2):
            raise SnpCertFormatError("version", "must be v3")
        algorithm = der.encode(der.SEQUENCE, parts[2][1])
        if algorithm not in (PSS_WITH_TRAILER, PSS_WITHOUT_TRAILER):
            raise SnpCertFormatError("signature", "not RSASSA-PSS SHA-384/MGF1-SHA-384/salt 48")
        times = der.children(parts[4][1])
        if len(times) != 2 or any(t not in (der.UTC_TIME, der.GENERALIZED_TIME)
                                  for t, _ in times):
            raise SnpCertFormatError("validity", "must be two times")
        try:
            bounds = [CertTime(value.decode("ascii")) for _, value in times]
        except UnicodeDecodeError:
            raise SnpCertFormatError("validity", "times must be ASCII") from None
        extensions = []
        for tag, ext in der.children(der.read_one(parts[7][1], der.SEQUENCE, "extensions")):
            items = der.children(ext) if tag == der.SEQUENCE else []
            if not 2 <= len(items) <= 3 or items[0][0] != der.OID \
                    or items[-1][0] != der.OCTET_STRING:
                raise SnpCertFormatError("extensions", "malformed extension")
            critical = len(items) == 3
            if critical and items[1] != (der.BOOLEAN, b"\xff"):
                raise SnpCertFormatError("extensions", "critical must be an explicit TRUE")
            extensions.append(Extension(der.parse_oid(items[0][1], "extension"), items[-1][1],
                                        critical))
        return cls(parse_name(parts[3][1], "issuer"), parse_name(parts[5][1], "subject"),
                   bounds[0], bounds[1], der.encode(der.SEQUENCE, parts[6][1]),
                   tuple(extensions), der.parse_integer(parts[1][1], "serialNumber"),
                   algorithm == PSS_WITH_TRAILER)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The certified P-384 key. SnpCertFormatError for any other key."""
        try:
            key = serialization.load_der_public_key(self.spki)
        except ValueError:
            raise SnpCertFormatError("subjectPublicKeyInfo", "does not parse") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise SnpCertFormatError("subjectPublicKeyInfo", "a VCEK/VLEK key is ECDSA P-384")
        return key


@dataclass(frozen=True)
class SnpCertificate:
    """A VCEK or VLEK: the TBSCertificate, AMD's extensions decoded, and the signature."""

    tbs: TbsCertificate
    signature: bytes
    amd: AmdExtensions = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amd", AmdExtensions.from_extensions(self.tbs.extensions))

    @property
    def is_vlek(self) -> bool:
        """Whether the certificate is a VLEK (it carries a cspId)."""
        return self.amd.csp_id is not None

    def to_der(self) -> bytes:
        """The certificate's DER."""
        return encode_certificate(self.tbs, self.signature)

    @classmethod
    def from_der(cls, blob: bytes) -> SnpCertificate:
        """Strict: the input must be exactly the DER sevsim would produce for it."""
        parts = der.children(der.read_one(blob, der.SEQUENCE, "Certificate"))
        if [tag for tag, _ in parts] != [der.SEQUENCE, der.SEQUENCE, der.BIT_STRING]:
            raise SnpCertFormatError("Certificate", "is not TBS, algorithm, signature")
        tbs = TbsCertificate.from_der(der.encode(der.SEQUENCE, parts[0][1]))
        if der.encode(der.SEQUENCE, parts[1][1]) != tbs.signature_algorithm:
            raise SnpCertFormatError("signatureAlgorithm", "differs from the TBS's")
        bits = parts[2][1]
        if not bits or bits[0]:
            raise SnpCertFormatError("signatureValue", "must be whole bytes")
        cert = cls(tbs, bits[1:])
        if cert.to_der() != bytes(blob):
            raise SnpCertFormatError("Certificate", "is not in canonical DER")
        # A VCEK's extensions must be exactly what KDS writes (order and encoding, verified on
        # real Milan and Turin VCEKs). The VLEK order sevsim writes is a guess (cspId where a
        # VCEK has hwID), so a real VLEK is not held to it.
        if not cert.is_vlek and tbs.extensions != cert.amd.to_extensions():
            raise SnpCertFormatError("extensions", "not in the order and encoding KDS uses")
        return cert

    def verify(self, issuer: rsa.RSAPublicKey) -> None:
        """RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) over the TBS bytes by the ASK/ASVK;
        cryptography's InvalidSignature when it fails."""
        if not isinstance(issuer, rsa.RSAPublicKey):
            raise InvalidSignature("an AMD issuer key is RSA")
        issuer.verify(self.signature, self.tbs.to_der(), PSS, hashes.SHA384())


def encode_certificate(tbs: TbsCertificate, signature: bytes) -> bytes:
    """A certificate's DER: the TBS, its signature algorithm again, the signature."""
    return der.sequence(tbs.to_der(), tbs.signature_algorithm,
                        der.encode(der.BIT_STRING, b"\0" + signature))


def issue(tbs: TbsCertificate, signer: rsa.RSAPrivateKey) -> SnpCertificate:
    """Sign the TBS with the issuer's RSA key as KDS does."""
    return SnpCertificate(tbs, signer.sign(tbs.to_der(), PSS, hashes.SHA384()))


def vcek_tbs(public_key: ec.EllipticCurvePublicKey, amd: AmdExtensions, issuer_cn: str,
             not_before: CertTime, years: int = 7, pss_trailer: bool = False) -> TbsCertificate:
    """The TBS of a VCEK (subject SEV-VCEK) or, with a cspId, a VLEK (SEV-VLEK)."""
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    subject = "SEV-VLEK" if amd.csp_id is not None else "SEV-VCEK"
    return TbsCertificate(amd_name(issuer_cn), amd_name(subject), not_before,
                          not_before.plus_years(years), spki, amd.to_extensions(),
                          pss_trailer=pss_trailer)
