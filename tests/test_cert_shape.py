"""sevsim's certificates have the DER shape of AMD's real ones, product by product and kind by
kind. The comparison walks both DER trees (abi/der.py `tree`) and requires, element by
element in order, the same tag and length, and the same bytes wherever the bytes are format
rather than content: OIDs, critical flags, NULLs, the version, the RSASSA-PSS parameters
(with trailerField where the real certificate has it), keyUsage (`03 02 01 04`),
basicConstraints and the CRL distribution point. Content is compared by tag and length only:
keys, signatures, key identifiers, serial numbers, dates, the text of names and the values of
AMD's extensions. sevsim's leaves are issued for the real one's TCB (and cspId), so that even
their lengths must agree.

The real certificates are in tests/data/snp (its README says where each comes from): ARK,
ASK and ASVK of Milan, Genoa and Turin; VCEKs of Milan (2022, 2023), Genoa (2025) and Turin
(2024); a Milan VLEK (AWS, 2024). No real Genoa or Turin VLEK is at hand, so sevsim's are
compared with that Milan VLEK, the nearest (same issuer and subject shape, same extension
count), and the Turin VLEK's extension OIDs with the Turin VCEK's (Turin's TCB layout:
fmcSPL first, no spl4), cspId in hwID's place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sevsim.abi import der
from sevsim.abi.snp_cert import (
    AMD_OID,
    CSP_ID,
    HW_ID,
    OID_AKI,
    OID_SKI,
    SnpCertificate,
)
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.errors import SnpCertFormatError
from sevsim.firmware.amd_root import ISSUED, simulated_root, simulated_x509
from sevsim.firmware.snp_pki import SnpPki, snp_ca_chain, snp_vlek_ca_chain, vlek_certificate
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController

DATA = Path(__file__).resolve().parent / "data" / "snp"
PRODUCTS = ("milan", "genoa", "turin")
# content: compared by tag and length only (TBS serial, issuer, validity, subject, the
# subjectPublicKey bits; the signature)
CONTENT = {"0.1", "0.3", "0.4", "0.5", "0.6.1", "2"}
VALUES_ALWAYS = {der.OID, der.BOOLEAN, der.NULL}
Shape = dict[str, tuple[int, int, bytes | None]]  # path: tag, length, bytes (None: content)


def is_content_extension(oid: str) -> bool:
    """Key identifiers and AMD's TCB/product/chip values are content; keyUsage,
    basicConstraints and the CRL distribution point are format."""
    return oid in (OID_SKI, OID_AKI) or oid.startswith(AMD_OID + ".")


def outline(cert: bytes, *, extension_oids: bool = True) -> Shape:
    """Every element of the certificate by its path (child indices from the root, so the path
    is the order): tag, length and, where the bytes are format, the bytes. Extension values
    (DER inside an OCTET STRING) are opened, except hwID, which is raw bytes."""
    rows: list[tuple[str, int, int, bytes | None]] = []

    def walk(element: der.Element, path: str, values: bool) -> None:
        values = values and path not in CONTENT
        shown = values or element.tag in VALUES_ALWAYS
        if element.children or not shown:
            rows.append((path, element.tag, len(element.content), None))
        else:
            rows.append((path, element.tag, len(element.content), element.content))
        if path.startswith("0.7.0.") and path.count(".") == 3:  # one extension
            extension(element, path, values)
            return
        for i, child in enumerate(element.children):
            walk(child, f"{path}.{i}" if path else str(i), values)

    def extension(element: der.Element, path: str, values: bool) -> None:
        oid = der.parse_oid(element.children[0].content, "extension")
        rows.append((f"{path}.0", der.OID, len(element.children[0].content),
                     element.children[0].content if extension_oids else None))
        for i, child in enumerate(element.children[1:-1], 1):  # critical
            walk(child, f"{path}.{i}", values)
        value = element.children[-1]
        last = f"{path}.{len(element.children) - 1}"
        rows.append((last, value.tag, len(value.content), None))
        if oid != HW_ID:
            walk(der.tree(value.content), f"{last}.v", values and not is_content_extension(oid))

    walk(der.tree(cert), "", True)
    return {path: (tag, length, value) for path, tag, length, value in rows}


def extension_oid_list(cert: bytes) -> list[str]:
    extensions = der.tree(cert).children[0].children[7].children[0].children
    return [der.parse_oid(e.children[0].content, "extension") for e in extensions]


def differences(ours: Shape, real: Shape) -> list[str]:
    """The paths where the two differ (an element only one has, or another tag, length or
    format bytes), in document order."""
    return sorted((p for p in ours.keys() | real.keys() if ours.get(p) != real.get(p)),
                  key=lambda p: [int(i) if i.isdigit() else -1 for i in p.split(".")])


def assert_same_shape(ours: Shape, real: Shape) -> None:
    diff = differences(ours, real)
    assert not diff, "\n".join(f"{p}: sevsim {ours.get(p)}, AMD {real.get(p)}" for p in diff[:8])


# -- the real certificates ----------------------------------------------------------------------


def real_ca(product: str, role: str) -> bytes:
    bundle = {"ark": "", "ask": "", "asvk": "_vlek"}[role]
    if product == "turin" and role != "asvk":
        bundle = "_vcek"
    signer, ark = x509.load_pem_x509_certificates(
        (DATA / "roots" / f"ask_ark_{product}{bundle}.pem").read_bytes())
    return (ark if role == "ark" else signer).public_bytes(serialization.Encoding.DER)


REAL_VCEKS = {"milan-v2-a": "milan", "milan-v2-b": "milan", "genoa-vcek": "genoa",
              "turin-vcek": "turin"}
REAL_VLEK = DATA / "milan-v3-vlek" / "vlek.der"


def real_leaf(name: str) -> bytes:
    return (DATA / name / ("vlek.der" if name.endswith("vlek") else "vcek.der")).read_bytes()


def platform(product: str) -> SnpPki:
    preset = PRESETS[product]
    return SnpPki(preset, MemoryController(4096, EncryptionEngine(preset.tweak)), seed=b"shape")


@pytest.mark.parametrize("name", [*REAL_VCEKS, "milan-v3-vlek"])
def test_the_real_leaves_are_amds(name: str) -> None:
    """The real leaves verify to AMD's real ASK (ASVK for the VLEK) of their product."""
    cert = SnpCertificate.from_der(real_leaf(name))
    product = REAL_VCEKS.get(name, "milan")
    signer = x509.load_der_x509_certificate(real_ca(product, "asvk" if cert.is_vlek else "ask"))
    key = signer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    cert.verify(key)


# -- ARK, ASK, ASVK ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["ark", "ask", "asvk"])
@pytest.mark.parametrize("product", PRODUCTS)
def test_ca_certificates_have_amds_shape(product: str, role: str) -> None:
    ours, real = simulated_x509(product)[role], real_ca(product, role)
    assert_same_shape(outline(ours), outline(real))
    assert extension_oid_list(ours) == extension_oid_list(real)
    assert x509.load_der_x509_certificate(ours).not_valid_before_utc == ISSUED


def test_the_comparison_sees_the_shape_cryptography_would_give() -> None:
    """What CertificateBuilder makes of the same ASK (sevsim's former one) is told apart: no
    trailerField, its own extensions; and a change of keyUsage alone to the minimal DER
    `03 02 02 04` is seen too, at keyUsage and nowhere else."""
    root = simulated_root("milan")
    ark = snp_ca_chain("Milan")[1]
    amd = outline(real_ca("milan", "ask"))
    built = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "SEV-Milan")])).issuer_name(ark.subject)
        .serial_number(0x10001).public_key(root.ask_key.public_key())
        .not_valid_before(ISSUED).not_valid_after(ISSUED.replace(year=2049))
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False,
                                     False), critical=True)
        .sign(root.ark_key, hashes.SHA384(),
              rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48)))
    diff = differences(outline(built.public_bytes(serialization.Encoding.DER)), amd)
    assert "0.2.1.3" in diff  # the TBS's trailerField is missing
    assert "0.7.0.1.0" in diff  # AMD's second extension (AKI) is not there
    ours = simulated_x509("milan")["ask"]
    minimal = ours.replace(bytes.fromhex("0404 03020104"), bytes.fromhex("0404 03020204"))
    assert minimal != ours
    assert differences(outline(minimal), amd) == ["0.7.0.3.2.v"]  # keyUsage's value


# -- VCEK, VLEK ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REAL_VCEKS))
def test_vceks_have_the_shape_of_the_real_vcek_of_their_product(name: str) -> None:
    product = REAL_VCEKS[name]
    real = real_leaf(name)
    fw = platform(product)
    ours = fw.vcek_certificate(SnpCertificate.from_der(real).amd.tcb)
    assert_same_shape(outline(ours), outline(real))
    ask = snp_ca_chain(product.capitalize())[0].public_key()
    assert isinstance(ask, rsa.RSAPublicKey)
    SnpCertificate.from_der(ours).verify(ask)


@pytest.mark.parametrize("product", PRODUCTS)
def test_vleks_have_the_shape_of_amds_vlek(product: str) -> None:
    """Milan against AWS's Milan VLEK; Genoa and Turin against it too, the nearest real VLEK
    (no real Genoa or Turin VLEK is at hand); Turin's extension OIDs against the Turin
    VCEK's, cspId in hwID's place."""
    real = REAL_VLEK.read_bytes()
    amd = SnpCertificate.from_der(real).amd
    assert amd.csp_id is not None
    tcb = amd.tcb if product != "turin" else TcbVersion(
        amd.tcb.bootloader, amd.tcb.tee, amd.tcb.snp, amd.tcb.microcode, fmc=1)
    ours = vlek_certificate(product.capitalize(), amd.csp_id.removeprefix("CN="), tcb)
    turin = product == "turin"
    assert_same_shape(outline(ours, extension_oids=not turin),
                      outline(real, extension_oids=not turin))
    if turin:
        vcek_oids = extension_oid_list(real_leaf("turin-vcek"))
        assert extension_oid_list(ours) == [CSP_ID if o == HW_ID else o for o in vcek_oids]
    asvk = snp_vlek_ca_chain(product.capitalize())[0].public_key()
    assert isinstance(asvk, rsa.RSAPublicKey)
    SnpCertificate.from_der(ours).verify(asvk)


def test_each_products_vcek_follows_its_real_trailer_field() -> None:
    """Milan's real VCEKs spell out trailerField, Genoa's and Turin's do not; sevsim's follow,
    and the shape tells the two spellings apart."""
    for name, product in REAL_VCEKS.items():
        real = SnpCertificate.from_der(real_leaf(name))
        ours = SnpCertificate.from_der(platform(product).vcek_certificate(real.amd.tcb))
        assert ours.tbs.pss_trailer == real.tbs.pss_trailer == (product == "milan")
    tcb = SnpCertificate.from_der(real_leaf("milan-v2-b")).amd.tcb
    genoa = platform("genoa").vcek_certificate(tcb)  # a Genoa VCEK: no trailerField
    diff = differences(outline(genoa), outline(real_leaf("milan-v2-b")))
    assert "0.2.1.3" in diff and "1.1.3" in diff  # in the TBS and outside it


def test_the_tree_is_the_whole_input_and_nothing_else() -> None:
    real = real_leaf("turin-vcek")
    top = der.tree(real)
    assert top.tag == der.SEQUENCE and der.encode(top.tag, top.content) == real
    assert [child.tag for child in top.children] == [der.SEQUENCE, der.SEQUENCE, der.BIT_STRING]
    for bad in (real + b"\0", real[:-1]):
        with pytest.raises(SnpCertFormatError):
            der.tree(bad)
