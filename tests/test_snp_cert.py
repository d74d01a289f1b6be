"""VCEK/VLEK certificates (spec-formats.md §5.1-5.2) on AMD's real ones: AMD's extensions
parse exactly and agree with the real reports, the real VCEKs verify against AMD's real
ASKs, a certificate sevsim builds from a real VCEK's key and extensions has the real TBS byte
for byte, and OpenSSL reads what sevsim builds. All with cryptography's serial-0 warning
turned into an error (pytest's filterwarnings)."""

from __future__ import annotations

import base64
import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi import der
from sevsim.abi.snp_cert import (
    AMD_OID,
    PSS,
    PSS_WITH_TRAILER,
    PSS_WITHOUT_TRAILER,
    AmdExtensions,
    CertTime,
    Extension,
    SnpCertificate,
    TbsCertificate,
    amd_name,
    common_name,
    encode_name,
    issue,
    vcek_tbs,
)
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import Generation, TcbVersion
from sevsim.errors import SnpCertFormatError

DATA = Path(__file__).resolve().parent / "data" / "snp"
VCEKS = {"milan-v2-a": "milan", "milan-v2-b": "milan", "turin-vcek": "turin_vcek"}
MILAN_ORDER = ("1", "2", "3.1", "3.2", "3.4", "3.5", "3.6", "3.7", "3.3", "3.8", "4")
TURIN_ORDER = ("1", "2", "3.9", "3.1", "3.2", "3.3", "3.5", "3.6", "3.7", "3.8", "4")
ISSUER_KEY = rsa.generate_private_key(65537, 2048)


def raw(name: str) -> bytes:
    return (DATA / name / "vcek.der").read_bytes()


def amd_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) from AMD's bundle; these have positive serials, so cryptography loads them."""
    ask, ark = x509.load_pem_x509_certificates(
        (DATA / "roots" / f"ask_ark_{product}.pem").read_bytes())
    return ask, ark


def report(name: str) -> AttestationReport:
    path = DATA / name / "report.bin"
    blob = path.read_bytes() if path.exists() else bytes.fromhex(
        (DATA / name / "report.hex").read_text().strip())
    return AttestationReport.from_bytes(blob)


def pem(blob: bytes) -> str:
    body = base64.encodebytes(blob).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# -- real certificates --------------------------------------------------------------------------


def test_cryptography_warns_on_real_vceks_so_sevsim_parses_them_itself() -> None:
    with pytest.raises(CryptographyDeprecationWarning):
        x509.load_der_x509_certificate(raw("turin-vcek"))
    assert SnpCertificate.from_der(raw("turin-vcek")).tbs.serial == 0


@pytest.mark.parametrize("name", VCEKS)
def test_real_vcek_reencodes_byte_for_byte(name: str) -> None:
    cert = SnpCertificate.from_der(raw(name))
    assert cert.to_der() == raw(name)
    assert cert.tbs.serial == 0 and not cert.is_vlek
    assert common_name(cert.tbs.subject) == "SEV-VCEK"
    assert cert.tbs.subject == amd_name("SEV-VCEK")


@pytest.mark.parametrize("name", ["milan-v2-a", "milan-v2-b"])
def test_milan_vcek_extensions_match_the_report(name: str) -> None:
    cert, rep = SnpCertificate.from_der(raw(name)), report(name)
    assert cert.amd.hw_id == rep.chip_id and len(rep.chip_id) == 64
    assert cert.amd.tcb == rep.tcb("reported_tcb", Generation.MILAN)
    assert cert.amd.tcb.fmc is None
    assert (cert.amd.product_name, cert.amd.struct_version) == ("Milan-B0", 0)
    assert cert.tbs.pss_trailer  # 2022-23 KDS output spells out trailerField
    assert [e.oid.removeprefix(AMD_OID + ".") for e in cert.tbs.extensions] == list(MILAN_ORDER)
    assert cert.tbs.public_key().curve.name == "secp384r1"


def test_milan_vcek_values() -> None:
    """milan-v2-b's REPORTED_TCB 03 00 00 00 00 00 08 73 and the extensions that certify it."""
    cert = SnpCertificate.from_der(raw("milan-v2-b"))
    assert cert.amd.tcb == TcbVersion(bootloader=3, tee=0, snp=8, microcode=0x73)
    values = {e.oid.removeprefix(AMD_OID + "."): e.value for e in cert.tbs.extensions}
    assert values["3.8"] == bytes.fromhex("020173") and values["3.4"] == bytes.fromhex("020100")
    assert values["2"] == b"\x16\x08Milan-B0"
    assert values["4"] == report("milan-v2-b").chip_id  # raw bytes, no inner tag


def test_turin_vcek_layout() -> None:
    cert = SnpCertificate.from_der(raw("turin-vcek"))
    assert (cert.amd.product_name, cert.amd.struct_version) == ("Turin", 1)
    assert cert.amd.hw_id == bytes.fromhex("1e550a8ee5cf9f4d")
    assert cert.amd.tcb == TcbVersion(bootloader=0, tee=0, snp=0, microcode=9, fmc=0)
    assert [e.oid.removeprefix(AMD_OID + ".") for e in cert.tbs.extensions] == list(TURIN_ORDER)
    assert not cert.tbs.pss_trailer
    assert (cert.tbs.not_before.text, cert.tbs.not_after.text) == ("241106211400Z",
                                                                  "311106211400Z")
    assert Generation.guess_from_chip_id(cert.amd.hw_id.ljust(64, b"\0")) is Generation.TURIN


@pytest.mark.parametrize("name", VCEKS)
def test_real_vcek_verifies_against_the_real_ask(name: str) -> None:
    cert = SnpCertificate.from_der(raw(name))
    ask, ark = amd_chain(VCEKS[name])
    ask_key, ark_key = ask.public_key(), ark.public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey) and isinstance(ark_key, rsa.RSAPublicKey)
    cert.verify(ask_key)
    ark_key.verify(ask.signature, ask.tbs_certificate_bytes, PSS, hashes.SHA384())
    assert encode_name(cert.tbs.issuer) == ask.subject.public_bytes()
    with pytest.raises(InvalidSignature):
        cert.verify(ark_key)


@pytest.mark.parametrize("name", VCEKS)
def test_rebuilt_tbs_equals_the_real_one(name: str) -> None:
    """From the real key and extensions, sevsim's builder gives the real TBS, field by field
    and so byte for byte; only the signature needs AMD's ASK."""
    real = SnpCertificate.from_der(raw(name))
    rebuilt = vcek_tbs(real.tbs.public_key(), real.amd, common_name(real.tbs.issuer),
                       real.tbs.not_before, pss_trailer=real.tbs.pss_trailer)
    for field in ("serial", "issuer", "subject", "not_before", "not_after", "spki",
                  "extensions", "pss_trailer"):
        assert getattr(rebuilt, field) == getattr(real.tbs, field), field
    assert rebuilt.to_der() == real.tbs.to_der()
    signed = issue(rebuilt, ISSUER_KEY)
    signed.verify(ISSUER_KEY.public_key())
    assert signed.tbs == real.tbs and signed.amd == real.amd


@settings(max_examples=200, deadline=None)
@given(position=st.integers(4, 4 + 763 - 1), flip=st.integers(1, 255))
def test_tampered_real_vcek_fails(position: int, flip: int) -> None:
    blob = bytearray(raw("milan-v2-a"))
    blob[position] ^= flip
    ask_key = amd_chain("milan")[0].public_key()
    assert isinstance(ask_key, rsa.RSAPublicKey)
    try:
        cert = SnpCertificate.from_der(bytes(blob))
    except SnpCertFormatError:
        return
    with pytest.raises(InvalidSignature):
        cert.verify(ask_key)


# -- building -----------------------------------------------------------------------------------


def build(turin: bool = False, vlek: bool = False) -> SnpCertificate:
    key = ec.derive_private_key(0xC0FFEE, ec.SECP384R1()).public_key()
    tcb = TcbVersion(3, 0, 8, 0xD9, fmc=1 if turin else None)
    amd = AmdExtensions(tcb, "Turin" if turin else "Milan",
                        None if vlek else bytes(range(8 if turin else 64)),
                        "CN=cc-us-east-2.amazonaws.com" if vlek else None, int(turin))
    return issue(vcek_tbs(key, amd, "SEV-Turin" if turin else "SEV-Milan",
                          CertTime.utc(2026, 11, 29, 7, 0, 0)), ISSUER_KEY)


@pytest.mark.parametrize(("turin", "vlek"), [(False, False), (True, False), (False, True)])
def test_built_certificates_round_trip_and_verify(turin: bool, vlek: bool) -> None:
    cert = build(turin, vlek)
    parsed = SnpCertificate.from_der(cert.to_der())
    assert parsed == cert and parsed.is_vlek == vlek
    parsed.verify(ISSUER_KEY.public_key())
    assert parsed.tbs.not_after.text == "331129070000Z"
    assert parsed.amd.tcb.microcode == 0xD9
    assert common_name(parsed.tbs.subject) == ("SEV-VLEK" if vlek else "SEV-VCEK")
    with pytest.raises(InvalidSignature):
        parsed.verify(rsa.generate_private_key(65537, 1024).public_key())


def test_openssl_reads_a_built_certificate(tmp_path: Path) -> None:
    path = tmp_path / "vcek.pem"
    path.write_text(pem(build(turin=True).to_der()))
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(path)],
                          check=True, capture_output=True, text=True).stdout
    assert "Serial Number: 0 (0x0)" in text
    assert "rsassaPss" in text and "Salt Length: 0x30" in text and "sha384" in text
    assert "CN = SEV-VCEK" in text and "CN = SEV-Turin" in text
    assert "OU = Engineering, C = US, L = Santa Clara, ST = CA" in text
    assert f"{AMD_OID}.3.9" in text and f"{AMD_OID}.4" in text
    assert "NIST CURVE: P-384" in text


def test_openssl_verifies_a_built_chain(tmp_path: Path) -> None:
    """ARK -> ASK made by cryptography's builder (positive serials, AMD's names, PSS) ->
    VCEK made by sevsim (serial 0): OpenSSL builds and accepts the chain."""
    ark_key = rsa.generate_private_key(65537, 2048)

    def name(cn: str) -> x509.Name:
        attrs = [(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
                 (NameOID.COUNTRY_NAME, "US"), (NameOID.LOCALITY_NAME, "Santa Clara"),
                 (NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                 (NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
                 (NameOID.COMMON_NAME, cn)]
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])

    def ca(subject: str, issuer: str, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey,
           serial: int) -> x509.Certificate:
        start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(start).not_valid_after(start.replace(year=2050))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(signer, hashes.SHA384(), rsa_padding=PSS))

    ark = ca("ARK-Milan", "ARK-Milan", ark_key, ark_key, 0x10000)
    ask = ca("SEV-Milan", "ARK-Milan", ISSUER_KEY, ark_key, 0x10001)
    assert ask.subject.public_bytes() == encode_name(amd_name("SEV-Milan"))
    key = ec.derive_private_key(7, ec.SECP384R1()).public_key()
    amd = AmdExtensions(TcbVersion(3, 0, 8, 0x73), "Milan", bytes(64))
    vcek = issue(vcek_tbs(key, amd, "SEV-Milan", CertTime.utc(2026, 1, 1)), ISSUER_KEY)
    for file, cert in (("ark.pem", ark), ("ask.pem", ask)):
        (tmp_path / file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "vcek.pem").write_text(pem(vcek.to_der()))
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ark.pem"),
                             "-untrusted", str(tmp_path / "ask.pem"),
                             str(tmp_path / "vcek.pem")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- bad input ----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_der_garbage_raises_only_cert_format_error(blob: bytes) -> None:
    with pytest.raises(SnpCertFormatError):
        SnpCertificate.from_der(blob)


@settings(max_examples=200)
@given(cut=st.integers(0, 1288), extra=st.binary(min_size=1, max_size=8))
def test_truncated_or_extended_real_vcek_is_refused(cut: int, extra: bytes) -> None:
    blob = raw("turin-vcek")
    for bad in (blob[:cut], blob + extra):
        with pytest.raises(SnpCertFormatError):
            SnpCertificate.from_der(bad)


def test_non_canonical_der_is_refused() -> None:
    blob = raw("milan-v2-a")
    _, content, _ = der.read(blob)
    long_form = b"\x30\x83" + len(content).to_bytes(3, "big") + content
    with pytest.raises(SnpCertFormatError):
        SnpCertificate.from_der(long_form)
    with pytest.raises(SnpCertFormatError):
        der.parse_integer(b"\x00\x05", "x")
    with pytest.raises(SnpCertFormatError):
        der.parse_oid(b"\x2b\x80\x01", "x")


def test_der_primitives_round_trip() -> None:
    for value in (0, 1, 127, 128, 255, 256, -1, -128, -129, 2**383):
        assert der.parse_integer(der.read_one(der.integer(value), der.INTEGER, "x"), "x") == value
    for dotted in (AMD_OID + ".3.8", "1.2.840.113549.1.1.10", "2.16.840.1.101.3.4.2.2"):
        assert der.parse_oid(der.read_one(der.oid(dotted), der.OID, "x"), "x") == dotted
    assert PSS_WITH_TRAILER.endswith(bytes.fromhex("a303020101"))
    assert raw("milan-v2-a").count(PSS_WITH_TRAILER) == 2  # TBS and outer AlgorithmIdentifier
    assert raw("turin-vcek").count(PSS_WITHOUT_TRAILER) == 2


def amd_extensions(*replace: tuple[str, Extension | None]) -> tuple[Extension, ...]:
    exts = {e.oid: e for e in SnpCertificate.from_der(raw("milan-v2-a")).tbs.extensions}
    for oid, ext in replace:
        if ext is None:
            del exts[oid]
        else:
            exts[oid] = ext
    return tuple(exts.values())


@pytest.mark.parametrize("extensions", [
    amd_extensions((AMD_OID + ".3.4", Extension(AMD_OID + ".3.4", der.integer(1)))),
    amd_extensions((AMD_OID + ".3.1", None)),
    amd_extensions((AMD_OID + ".2", None)),
    amd_extensions((AMD_OID + ".3.1", Extension(AMD_OID + ".3.1", der.integer(256)))),
    amd_extensions((AMD_OID + ".1", Extension(AMD_OID + ".1", der.integer(0), True))),
    amd_extensions((AMD_OID + ".9", Extension(AMD_OID + ".9", der.integer(0)))),
    amd_extensions(("2.5.29.19", Extension("2.5.29.19", der.sequence()))),
    amd_extensions((AMD_OID + ".2", Extension(AMD_OID + ".2", der.integer(0)))),
    (*amd_extensions(), amd_extensions()[0])])
def test_bad_amd_extensions_are_refused(extensions: tuple[Extension, ...]) -> None:
    with pytest.raises(SnpCertFormatError):
        AmdExtensions.from_extensions(extensions)


def test_extensions_out_of_kds_order_are_refused() -> None:
    real = SnpCertificate.from_der(raw("milan-v2-a"))
    tbs = real.tbs
    swapped = TbsCertificate(tbs.issuer, tbs.subject, tbs.not_before, tbs.not_after, tbs.spki,
                             tuple(reversed(tbs.extensions)), pss_trailer=True)
    with pytest.raises(SnpCertFormatError):
        SnpCertificate.from_der(SnpCertificate(swapped, real.signature).to_der())


@pytest.mark.parametrize("amd", [
    AmdExtensions(TcbVersion(0, 0, 0, 0), "Milan", bytes(8)),
    AmdExtensions(TcbVersion(0, 0, 0, 0, fmc=0), "Turin", bytes(64)),
    AmdExtensions(TcbVersion(0, 0, 0, 0), "Milan", bytes(64), "CN=x"),
    AmdExtensions(TcbVersion(0, 0, 0, 0), "Milan")])
def test_building_inconsistent_extensions_is_refused(amd: AmdExtensions) -> None:
    with pytest.raises(SnpCertFormatError):
        amd.to_extensions()


def test_cert_times() -> None:
    assert CertTime.utc(2029, 9, 24, 0, 55, 28).text == "290924005528Z"
    assert CertTime.utc(2050, 1, 2).text == "20500102000000Z"
    assert CertTime("220924005528Z").plus_years(7).text == "290924005528Z"
    assert CertTime.utc(2045, 5, 15).plus_years(7).text == "20520515000000Z"
    assert CertTime("491231235959Z").year == 2049 and CertTime("500101000000Z").year == 1950
    for bad in ("2209240055Z", "220924005528", "20290924005528Z", "22O924005528Z"):
        with pytest.raises(SnpCertFormatError):
            CertTime(bad)


@settings(max_examples=100)
@given(year=st.integers(1950, 2200), month=st.integers(1, 12), day=st.integers(1, 28),
       years=st.integers(0, 30))
def test_cert_time_round_trips(year: int, month: int, day: int, years: int) -> None:
    time = CertTime.utc(year, month, day, 12, 34, 56)
    assert time.year == year
    assert CertTime(time.text) == time
    assert time.plus_years(years) == CertTime.utc(year + years, month, day, 12, 34, 56)


@settings(max_examples=100)
@given(bl=st.integers(0, 255), tee=st.integers(0, 255), snp=st.integers(0, 255),
       uc=st.integers(0, 255), fmc=st.none() | st.integers(0, 255),
       product=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
def test_amd_extensions_round_trip(bl: int, tee: int, snp: int, uc: int, fmc: int | None,
                                   product: str) -> None:
    amd = AmdExtensions(TcbVersion(bl, tee, snp, uc, fmc), product,
                        bytes(range(8 if fmc is not None else 64)))
    assert AmdExtensions.from_extensions(amd.to_extensions()) == amd
