"""`sevsim verify` and attest/snp_verify.py: real reports from real Milan machines verify to
AMD's real roots, sevsim's reports only to sevsim's simulated roots, and every change to a
report or a certificate, every mismatch and every malformed input fails a named check."""

from __future__ import annotations

import datetime
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sevsim import Host
from sevsim.abi.snp_cert import PSS
from sevsim.abi.snp_report import GUID_VCEK, OFFSETS, AttestationReport, build_cert_table
from sevsim.attest.kds_client import KdsClient, vcek_path
from sevsim.attest.snp_verify import (
    CertBundle,
    ChainCache,
    VerificationResult,
    check_crl,
    load_report,
    trusted_roots,
    verify_certificate_chain,
    verify_report_chain,
)
from sevsim.errors import ConfigError, KdsFetchError, SnpFormatError, SnpVerificationError
from sevsim.firmware.amd_root import simulated_root
from sevsim.firmware.kds import KeyDistribution, make_server
from sevsim.firmware.snp_pki import ISSUED, LEAF_YEARS, snp_ca_chain, snp_vlek_ca_chain
from sevsim.inputs import MAX_CERT_FILE
from sevsim.testing import sign_report

VECTORS = Path(__file__).resolve().parent / "data" / "snp"
AMD_BUNDLES = Path(__file__).resolve().parent / "data" / "snp" / "roots"
NONCE = bytes(range(0x40, 0x80))
DER = serialization.Encoding.DER


def sevsim(*args: str | Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=None if env is None else {**os.environ, **env})


def failed(result: VerificationResult) -> set[str]:
    return {check.name for check in result.failures}


# -- real evidence ------------------------------------------------------------------------

REAL = [("milan-v2-a", "report.bin"), ("milan-v2-b", "report.hex")]


@pytest.mark.parametrize(("name", "report"), REAL)
def test_real_milan_reports_verify_to_amds_roots(name: str, report: str) -> None:
    blob = load_report((VECTORS / name / report).read_bytes())
    result = verify_report_chain(blob, CertBundle.load(VECTORS / name))
    assert result.ok, result.failures
    assert [c.name for c in result.checks] == ["report", "signing key", "product", "ARK", "ASK",
                                               "VCEK", "signature", "reported TCB", "chip id"]
    assert result.raise_for_failure().version == 2
    # and never to sevsim's simulated roots
    refused = verify_report_chain(blob, CertBundle.load(VECTORS / name), trust="sevsim")
    assert not refused.ok and failed(refused) & {"ARK", "VCEK"}


def test_cli_verifies_a_real_report_and_names_the_failure_under_the_wrong_trust() -> None:
    ran = sevsim("verify", VECTORS / "milan-v2-b" / "report.hex", "--certs",
                 VECTORS / "milan-v2-b")
    assert ran.returncode == 0, ran.stderr
    assert "verified" in ran.stdout
    ran = sevsim("verify", VECTORS / "milan-v2-b" / "report.hex", "--certs",
                 VECTORS / "milan-v2-b", "--trust", "sevsim")
    assert ran.returncode == 1
    assert "ARK:" in ran.stderr and "sevsim's simulated" in ran.stderr


def test_the_real_turin_vcek_chains_to_amds_turin_root() -> None:
    bundle = CertBundle.load(VECTORS / "turin-vcek")
    result = verify_certificate_chain(bundle, "turin")
    assert result.ok, result.failures
    assert result.leaf is not None and len(result.leaf.amd.hw_id or b"") == 8
    assert not verify_certificate_chain(bundle, "milan").ok  # wrong product's ARK
    assert not verify_certificate_chain(bundle, "turin", trust="sevsim").ok


# -- old evidence: checking as of a given time --------------------------------------------

AWS = VECTORS / "milan-v3-vlek"  # a real AWS report; its VLEK expired 2025-12-10T22:14:21Z
VLEK_WINDOW = "valid from 2024-12-10T22:14:21Z to 2025-12-10T22:14:21Z"


def _utc(*fields: int) -> datetime.datetime:
    return datetime.datetime(*fields, tzinfo=datetime.UTC)


def test_the_real_aws_vlek_report_verifies_as_of_a_time_its_vlek_was_valid() -> None:
    blob, bundle = (AWS / "report.bin").read_bytes(), CertBundle.load(AWS)
    then = verify_report_chain(blob, bundle, now=_utc(2025, 6, 1))
    assert then.ok, then.failures
    assert then.check("signing key").detail == "VLEK"
    assert then.check("chip id").detail == "zero (VLEK of CN=cc-us-east-2.amazonaws.com)"
    # today the VLEK has expired: the failure names it, its window and the time used
    today = verify_report_chain(blob, bundle)
    assert failed(today) == {"VLEK"}
    detail = today.check("VLEK").detail
    assert detail.startswith("VLEK of CN=cc-us-east-2.amazonaws.com has expired: " + VLEK_WINDOW)
    assert "checked at 20" in detail
    early = verify_report_chain(blob, bundle, now=_utc(2024, 12, 10, 22, 14, 20))
    assert early.check("VLEK").detail == (
        f"VLEK of CN=cc-us-east-2.amazonaws.com is not yet valid: {VLEK_WINDOW}, checked at "
        "2024-12-10T22:14:20Z")
    # the window's ends are inclusive; any zone names the same instant
    assert verify_report_chain(blob, bundle, now=_utc(2025, 12, 10, 22, 14, 21)).ok
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert verify_report_chain(blob, bundle, now=datetime.datetime(
        2025, 12, 10, 23, 14, 21, tzinfo=paris)).ok
    assert not verify_report_chain(blob, bundle, now=datetime.datetime(
        2025, 12, 10, 23, 14, 22, tzinfo=paris)).ok
    # the signature still has to hold whatever the time
    flipped = bytearray(blob)
    flipped[OFFSETS["measurement"][0]] ^= 1
    assert failed(verify_report_chain(bytes(flipped), bundle, now=_utc(2025, 6, 1))) == {
        "signature"}
    with pytest.raises(ConfigError, match="no time zone"):
        verify_report_chain(blob, bundle, now=datetime.datetime(2025, 6, 1))


def test_cli_verify_at_checks_old_evidence_as_of_then() -> None:
    report = AWS / "report.bin"
    ran = sevsim("verify", report, "--certs", AWS, "--at", "2025-06-01T00:00:00Z")
    assert ran.returncode == 0, ran.stderr
    assert "verified: report v3 to AMD Milan ARK" in ran.stdout
    ran = sevsim("verify", report, "--certs", AWS)
    assert ran.returncode == 1
    assert f"VLEK: VLEK of CN=cc-us-east-2.amazonaws.com has expired: {VLEK_WINDOW}" in ran.stderr
    ran = sevsim("verify", report, "--certs", AWS, "--at", "2024-06-01")  # no zone: UTC
    assert ran.returncode == 1
    assert f"is not yet valid: {VLEK_WINDOW}, checked at 2024-06-01T00:00:00Z" in ran.stderr
    ran = sevsim("verify", report, "--certs", AWS, "--at", "2025-12-10T23:14:21+01:00")
    assert ran.returncode == 0, ran.stderr
    for bad in ("yesterday", "2025-13-01", "2025-06-01T25:00", "", "0001-01-01T00:00:00+01:00"):
        ran = sevsim("verify", report, "--certs", AWS, "--at", bad)
        assert ran.returncode == 2, (bad, ran.stderr)
        assert "is not an ISO 8601 time" in ran.stderr, bad


def _reissued(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey,
              not_after: datetime.datetime) -> x509.Certificate:
    """The same certificate (subject, key, extensions) with another end of validity."""
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .serial_number(cert.serial_number).public_key(cert.public_key())
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(not_after))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)


def test_every_certificate_is_checked_at_the_time_given(milan: Evidence) -> None:
    bundle = CertBundle.from_cert_table(milan.table)
    ask, ark = snp_ca_chain("Milan")
    window = (f"valid from {ark.not_valid_before_utc:%Y-%m-%dT%H:%M:%S}Z to "
              f"{ark.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}Z")
    before = ark.not_valid_before_utc - datetime.timedelta(seconds=1)
    result = verify_report_chain(milan.report, bundle, trust="sevsim", now=before)
    assert failed(result) == {"ARK"}
    assert result.check("ARK").detail == (
        f"ARK-Milan is not yet valid: {window}, checked at {before:%Y-%m-%dT%H:%M:%S}Z")
    after = ark.not_valid_after_utc + datetime.timedelta(seconds=1)
    assert verify_report_chain(milan.report, bundle, trust="sevsim", now=after).check(
        "ARK").detail.startswith(f"ARK-Milan has expired: {window}")
    # an ASK that ends before the ARK: in date until its own end, named after it
    end = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    short = replace(bundle, ask=_reissued(ask, simulated_root("milan").ark_key, end)
                    .public_bytes(DER))
    assert verify_report_chain(milan.report, short, trust="sevsim", now=end).ok
    late = verify_report_chain(milan.report, short, trust="sevsim",
                               now=end + datetime.timedelta(seconds=1))
    assert failed(late) == {"ASK"}
    assert late.check("ASK").detail == (
        f"SEV-Milan has expired: valid from {ask.not_valid_before_utc:%Y-%m-%dT%H:%M:%S}Z to "
        "2030-01-01T00:00:00Z, checked at 2030-01-01T00:00:01Z")
    # the chain alone takes the same time
    chain = replace(short, leaf=None)
    assert verify_certificate_chain(chain, "milan", trust="sevsim", now=end).ok
    assert failed(verify_certificate_chain(chain, "milan", trust="sevsim",
                                           now=end + datetime.timedelta(seconds=1))) == {"ASK"}


def test_a_cached_chain_is_served_only_inside_its_window(milan: Evidence) -> None:
    bundle = CertBundle.from_cert_table(milan.table)
    cache = ChainCache()
    assert verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache).ok
    early = ISSUED - datetime.timedelta(seconds=1)  # before the chain was issued
    result = verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache, now=early)
    assert not result.ok and cache.hits == 0
    assert "is not yet valid" in result.failures[0].detail
    assert verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache, now=ISSUED).ok
    assert cache.hits == 1

@pytest.fixture(scope="module")
def milan_a() -> tuple[bytes, CertBundle]:
    return ((VECTORS / "milan-v2-a" / "report.bin").read_bytes(),
            CertBundle.load(VECTORS / "milan-v2-a"))


def test_flipping_any_bit_of_a_real_report_fails(milan_a: tuple[bytes, CertBundle]) -> None:
    """One bit in every byte (signature, measurement, TCB, chip id, reserved, padding), with
    the chain cached so only the report changes between runs."""
    blob, bundle = milan_a
    cache = ChainCache()
    assert verify_report_chain(blob, bundle, cache=cache).ok
    for position in range(len(blob)):
        bit = (position * 3) % 8
        flipped = bytearray(blob)
        flipped[position] ^= 1 << bit
        result = verify_report_chain(bytes(flipped), bundle, cache=cache)
        assert not result.ok, f"byte 0x{position:03x} bit {bit} went unnoticed"
        assert failed(result) & {"report", "signature", "product", "signing key"}, \
            (position, result.failures)
    assert cache.hits > 300  # the flips that parse reached the signature check


@pytest.mark.parametrize("field", ["signature_r", "signature_s", "measurement",
                                   "reported_tcb", "reserved_0x330", "report_data", "policy"])
def test_every_bit_of_named_fields_matters(milan_a: tuple[bytes, CertBundle],
                                           field: str) -> None:
    blob, bundle = milan_a
    cache = ChainCache()
    offset, size = OFFSETS[field]
    for index in range(min(size, 12) * 8):
        flipped = bytearray(blob)
        flipped[offset + index // 8] ^= 1 << index % 8
        assert not verify_report_chain(bytes(flipped), bundle, cache=cache).ok, (field, index)


@pytest.mark.parametrize("which", ["leaf", "ask", "ark"])
def test_flipping_bits_of_a_certificate_fails(milan_a: tuple[bytes, CertBundle],
                                              which: str) -> None:
    blob, _ = milan_a
    chain = x509.load_pem_x509_certificates((AMD_BUNDLES / "ask_ark_milan.pem").read_bytes())
    bundle = CertBundle((VECTORS / "milan-v2-a" / "vcek.der").read_bytes(),
                        chain[0].public_bytes(DER), chain[1].public_bytes(DER))
    assert verify_report_chain(blob, bundle).ok
    der = getattr(bundle, which)
    assert der is not None
    step = max(1, len(der) // 97)
    for position in range(0, len(der), step):
        flipped = bytearray(der)
        flipped[position] ^= 1 << position % 8
        result = verify_report_chain(blob, replace(bundle, **{which: bytes(flipped)}))
        assert not result.ok, f"{which} byte {position} went unnoticed"


def test_garbage_and_mismatched_certificates_are_named(milan_a: tuple[bytes, CertBundle],
                                                       tmp_path: Path) -> None:
    blob, bundle = milan_a
    for leaf in (b"garbage", b"\x30\x03\x02\x01\x00", bytes(2000)):
        result = verify_report_chain(blob, replace(bundle, leaf=leaf))
        assert failed(result) == {"VCEK"} and "SnpCertFormatError" in result.failures[0].detail
    assert failed(verify_report_chain(blob, replace(bundle, ask=b"junk"))) == {"ASK"}
    # the other Milan machine's VCEK: a valid AMD certificate, but not this chip's key
    other = (VECTORS / "milan-v2-b" / "vcek.der").read_bytes()
    result = verify_report_chain(blob, replace(bundle, leaf=other))
    assert failed(result) == {"signature", "reported TCB", "chip id"}
    with pytest.raises(SnpVerificationError) as raised:
        result.raise_for_failure()
    assert [name for name, _ in raised.value.failures] == ["signature", "reported TCB",
                                                           "chip id"]
    (tmp_path / "vcek.pem").write_text("-----BEGIN CERTIFICATE-----\n!!!\n"
                                       "-----END CERTIFICATE-----\n")
    ran = sevsim("verify", VECTORS / "milan-v2-a" / "report.bin", "--certs", tmp_path)
    assert ran.returncode == 125 and "PEM" in ran.stderr and "Traceback" not in ran.stderr


def test_malformed_reports_fail_the_report_check(milan_a: tuple[bytes, CertBundle],
                                                 tmp_path: Path) -> None:
    blob, bundle = milan_a
    unknown_version = (7).to_bytes(4, "little") + blob[4:]
    reserved = bytearray(blob)
    reserved[OFFSETS["reserved_0x208"][0] + 5] = 1
    cases = {"truncated": blob[:-1], "oversized": blob + b"\0", "empty": b"",
             "version": unknown_version, "reserved": bytes(reserved)}
    for name, bad in cases.items():
        result = verify_report_chain(bad, bundle)
        assert failed(result) == {"report"}, name
        assert "ReportFormatError" in result.check("report").detail, name
        with pytest.raises(SnpVerificationError, match="report"):
            result.raise_for_failure()
    (tmp_path / "short.bin").write_bytes(blob[:100])
    ran = sevsim("verify", tmp_path / "short.bin", "--certs", VECTORS / "milan-v2-a")
    assert ran.returncode == 1 and "report: ReportFormatError" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_wrong_product_is_refused(milan_a: tuple[bytes, CertBundle]) -> None:
    blob, bundle = milan_a
    result = verify_report_chain(blob, bundle, product="genoa")  # Genoa's ASK did not sign it
    assert failed(result) == {"VCEK"}
    ask, ark = x509.load_pem_x509_certificates((AMD_BUNDLES / "ask_ark_milan.pem").read_bytes())
    with_chain = replace(bundle, ask=ask.public_bytes(DER), ark=ark.public_bytes(DER))
    assert verify_report_chain(blob, with_chain, product="milan").ok
    assert failed(verify_report_chain(blob, with_chain, product="genoa")) == {"ARK"}
    assert not verify_report_chain(blob, bundle, product="rome").ok
    assert failed(verify_report_chain(blob, bundle, trust="intel"))  # type: ignore[arg-type]


def test_shipped_roots_are_amds_and_the_firmwares() -> None:
    for product in ("milan", "genoa", "turin"):
        vcek_name = f"ask_ark_{product}{'_vcek' if product == 'turin' else ''}.pem"
        ask, ark = x509.load_pem_x509_certificates((AMD_BUNDLES / vcek_name).read_bytes())
        asvk, _ = x509.load_pem_x509_certificates(
            (AMD_BUNDLES / f"ask_ark_{product}_vlek.pem").read_bytes())
        amd = trusted_roots("amd", product)
        assert (amd.ark, amd.ask, amd.asvk) == (ark, ask, asvk)
        sim = trusted_roots("sevsim", product)
        sim_ask, sim_ark = snp_ca_chain(product.capitalize())
        sim_asvk, _ = snp_vlek_ca_chain(product.capitalize())
        for shipped, issued in ((sim.ark, sim_ark), (sim.ask, sim_ask), (sim.asvk, sim_asvk)):
            assert shipped.subject == issued.subject
            assert shipped.serial_number == issued.serial_number
            assert shipped.public_key().public_numbers() == issued.public_key().public_numbers()
            shipped.verify_directly_issued_by(sim_ark)
        assert sim.ark.public_key().public_numbers() != amd.ark.public_key().public_numbers()


# -- sevsim's own evidence ----------------------------------------------------------------


@dataclass
class Evidence:
    host: Host
    report: bytes
    table: bytes


def _evidence(build: Callable[..., Path], chip: str, seed: bytes) -> Evidence:
    host = Host(chip=chip, seed=seed)
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = NONCE
    vm.launch()
    assert vm.run(timeout=60).exit_code == 0
    return Evidence(host, vm.outputs[0], vm.outputs[1])


@pytest.fixture(scope="module")
def milan(build: Callable[..., Path]) -> Evidence:
    return _evidence(build, "milan", b"verify-milan")


@pytest.fixture(scope="module")
def turin(build: Callable[..., Path]) -> Evidence:
    return _evidence(build, "turin", b"verify-turin")


@pytest.mark.parametrize(("chip", "version"), [("milan", 3), ("turin", 5)])
def test_sevsim_reports_verify_only_with_trust_sevsim(request: pytest.FixtureRequest,
                                                      chip: str, version: int) -> None:
    evidence: Evidence = request.getfixturevalue(chip)
    bundle = CertBundle.from_cert_table(evidence.table)
    result = verify_report_chain(evidence.report, bundle, trust="sevsim")
    assert result.ok, result.failures
    assert result.report is not None and result.report.version == version
    assert result.generation is not None and result.generation.value.lower() == chip
    refused = verify_report_chain(evidence.report, bundle)  # never implicitly
    assert failed(refused) == {"ARK"}
    # without the ARK in the bundle, the shipped AMD ASK cannot have signed sevsim's VCEK
    refused = verify_report_chain(evidence.report, replace(bundle, ark=None, ask=None))
    assert failed(refused) == {"VCEK"}


def test_cli_run_then_verify_with_both_trusts(build: Callable[..., Path],
                                              tmp_path: Path) -> None:
    report, certs = tmp_path / "report.bin", tmp_path / "certs"
    ran = sevsim("run", build("report"), "--mode", "snp", "--chip", "turin", "--memory", "16M",
                 "--report-data", NONCE.hex(), "--report-out", report, "--certs-out", certs)
    assert ran.returncode == 0, ran.stderr
    ok = sevsim("verify", report, "--certs", certs, "--trust", "sevsim", "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout and '"Turin"' in ok.stdout
    refused = sevsim("verify", report, "--certs", certs)
    assert refused.returncode == 1 and "ARK" in refused.stderr
    wrong = sevsim("verify", report, "--certs", certs, "--trust", "sevsim", "--product",
                   "milan")
    assert wrong.returncode == 1 and "product:" in wrong.stderr


def _resign(evidence: Evidence, **changes: object) -> bytes:
    """The report with fields changed and signed again by the same chip's VCEK of its TCB: a
    valid signature, so only the field checks can catch the change."""
    fw = evidence.host.firmware
    report = replace(AttestationReport.from_bytes(evidence.report), **changes)
    return sign_report(fw, report.to_bytes(), fw.tcb)


def test_chip_id_and_tcb_mismatches_are_caught(milan: Evidence, turin: Evidence) -> None:
    for evidence in (milan, turin):
        bundle = CertBundle.from_cert_table(evidence.table)
        same = _resign(evidence)
        assert verify_report_chain(same, bundle, trust="sevsim").ok
        report = AttestationReport.from_bytes(evidence.report)
        chip = bytearray(report.chip_id)
        chip[3] ^= 0x10
        result = verify_report_chain(_resign(evidence, chip_id=bytes(chip)), bundle,
                                     trust="sevsim")
        assert failed(result) == {"chip id"}
        higher = replace(report.tcb("reported_tcb"), snp=report.tcb("reported_tcb").snp + 1)
        result = verify_report_chain(_resign(evidence, reported_tcb=higher.to_int()), bundle,
                                     trust="sevsim")
        assert failed(result) == {"reported TCB"}
        assert "snpSPL" in result.check("reported TCB").detail
    # Turin: bytes past the 8-byte hwID must be zero
    report = AttestationReport.from_bytes(turin.report)
    padded = report.chip_id[:8] + b"\x01" + bytes(55)
    result = verify_report_chain(_resign(turin, chip_id=padded),
                                 CertBundle.from_cert_table(turin.table), trust="sevsim")
    assert failed(result) == {"chip id"}


def test_vlek_signed_reports(build: Callable[..., Path], tmp_path: Path) -> None:
    host = Host(chip="genoa", seed=b"verify-vlek")
    fw = host.firmware
    fw.snp_vlek_load(fw.seal_hashstick("cc-us-east-2.example", fw.tcb))
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("report"))
    vm.host_input = NONCE
    vm.launch()
    assert vm.run(timeout=60).exit_code == 0
    bundle = CertBundle.from_cert_table(vm.outputs[1])
    # as of now: a fresh VLEK-signed report verifies (the VLEK once expired a year after issue)
    result = verify_report_chain(vm.outputs[0], bundle, trust="sevsim")
    assert result.ok, result.failures
    assert result.check("signing key").detail == "VLEK"
    assert {"ASVK", "VLEK"} <= {c.name for c in result.checks}
    (tmp_path / "report.bin").write_bytes(vm.outputs[0])
    (tmp_path / "certs.bin").write_bytes(vm.outputs[1])
    ran = sevsim("verify", tmp_path / "report.bin", "--certs", tmp_path / "certs.bin",
                 "--trust", "sevsim")
    assert ran.returncode == 0, ran.stderr
    # ...and only within the VLEK's validity: from issue, for a VCEK's 7 years
    end = ISSUED.replace(year=ISSUED.year + LEAF_YEARS)
    assert verify_report_chain(vm.outputs[0], bundle, trust="sevsim", now=end).ok
    late = verify_report_chain(vm.outputs[0], bundle, trust="sevsim",
                               now=end + datetime.timedelta(seconds=1))
    assert failed(late) == {"VLEK"} and "expired" in late.check("VLEK").detail
    # the VCEK's ASK did not sign the VLEK
    ask = snp_ca_chain("Genoa")[0].public_bytes(DER)
    assert "ASVK" in failed(verify_report_chain(vm.outputs[0], replace(bundle, ask=ask),
                                                trust="sevsim"))
    # a VLEK report naming a chip is refused
    report = AttestationReport.from_bytes(vm.outputs[0])
    named = sign_report(fw, replace(report, chip_id=fw.chip_id()).to_bytes(), fw.tcb)
    assert failed(verify_report_chain(named, bundle, trust="sevsim")) == {"chip id"}


def test_chain_cache_skips_the_chain_but_not_the_report(milan: Evidence) -> None:
    bundle = CertBundle.from_cert_table(milan.table)
    cache = ChainCache()
    first = verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache)
    second = verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache)
    assert first.ok and second.ok and cache.hits == 1
    assert [c.name for c in first.checks] == [c.name for c in second.checks]
    flipped = bytearray(milan.report)
    flipped[OFFSETS["report_data"][0]] ^= 1
    assert failed(verify_report_chain(bytes(flipped), bundle, trust="sevsim", cache=cache)) \
        == {"signature"}
    # the cache is keyed by trust too
    assert not verify_report_chain(milan.report, bundle, trust="amd", cache=cache).ok
    # an expired chain is not served from the cache
    late = datetime.datetime(2070, 1, 1, tzinfo=datetime.UTC)
    assert not verify_report_chain(milan.report, bundle, trust="sevsim", cache=cache, now=late).ok


# -- CRL ----------------------------------------------------------------------------------


def _crl(product: str, revoked: list[int], key: rsa.RSAPrivateKey | None = None,
         pss: bool = True, days: int = 7, now: datetime.datetime | None = None) -> bytes:
    """A CRL issued a day before `now` (the clock's by default), next due `days` after it."""
    ark = snp_ca_chain(product)[1]
    now = now or datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ark.subject)
               .last_update(now - datetime.timedelta(days=1))
               .next_update(now + datetime.timedelta(days=days)))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    signer = key or simulated_root(product.lower()).ark_key
    return builder.sign(signer, hashes.SHA384(),
                        rsa_padding=PSS if pss else padding.PKCS1v15()).public_bytes(DER)


def test_crl_checks(milan: Evidence) -> None:
    bundle = CertBundle.from_cert_table(milan.table)
    ask_serial = snp_ca_chain("Milan")[0].serial_number
    good = verify_report_chain(milan.report, bundle, trust="sevsim", crl=_crl("Milan", [7]))
    assert good.ok and good.check("CRL").passed
    cases = {
        "revokes the ASK": _crl("Milan", [ask_serial]),
        "not signed by the ARK": _crl("Milan", [], key=simulated_root("genoa").ark_key),
        "RSASSA-PSS": _crl("Milan", [], pss=False),
        "stale": _crl("Milan", [], days=-1),
        "does not parse": b"not a crl",
    }
    for reason, crl in cases.items():
        result = verify_report_chain(milan.report, bundle, trust="sevsim", crl=crl)
        assert failed(result) == {"CRL"}, reason
        assert reason in result.check("CRL").detail
    asked = verify_report_chain(milan.report, bundle, trust="sevsim", check_revocation=True)
    assert failed(asked) == {"CRL"}  # asked for, nothing to check against: fail closed
    ark = snp_ca_chain("Milan")[1]
    assert check_crl(_crl("Milan", [5]), ark, {"VCEK": 5}, datetime.datetime.now(
        datetime.UTC)) == (False, "revokes the VCEK (serial 0x5)")


def test_the_crl_is_checked_at_the_time_given_each_time(milan: Evidence) -> None:
    bundle = CertBundle.from_cert_table(milan.table)
    then = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
    crl = _crl("Milan", [], now=then)  # thisUpdate 2026-02-28, nextUpdate 2026-03-08
    assert verify_report_chain(milan.report, bundle, trust="sevsim", crl=crl, now=then).ok
    window = ("thisUpdate 2026-02-28T00:00:00Z, nextUpdate 2026-03-08T00:00:00Z, checked at "
              "{}")
    for now, state in ((datetime.datetime(2026, 2, 27, tzinfo=datetime.UTC), "is not yet valid"),
                       (datetime.datetime(2026, 3, 9, tzinfo=datetime.UTC), "is stale")):
        result = verify_report_chain(milan.report, bundle, trust="sevsim", crl=crl, now=now)
        assert failed(result) == {"CRL"}
        assert result.check("CRL").detail == (
            f"{state} ({window.format(f'{now:%Y-%m-%dT%H:%M:%S}Z')})")
    # a cached chain does not carry its CRL verdict over: another CRL or time is checked anew
    cache = ChainCache()
    assert verify_report_chain(milan.report, bundle, trust="sevsim", crl=crl, now=then,
                               cache=cache).ok
    revoking = _crl("Milan", [snp_ca_chain("Milan")[0].serial_number], now=then)
    result = verify_report_chain(milan.report, bundle, trust="sevsim", crl=revoking, now=then,
                                 cache=cache)
    assert cache.hits == 1 and failed(result) == {"CRL"}
    assert "revokes the ASK" in result.check("CRL").detail
    stale = verify_report_chain(milan.report, bundle, trust="sevsim", crl=crl,
                                now=then + datetime.timedelta(days=30), cache=cache)
    assert cache.hits == 2 and "is stale" in stale.check("CRL").detail


# -- KDS ----------------------------------------------------------------------------------


@pytest.fixture
def kds_server(milan: Evidence, request: pytest.FixtureRequest
               ) -> Iterator[http.server.ThreadingHTTPServer]:
    kds = KeyDistribution()
    kds.register([milan.host.firmware])
    rate = getattr(request, "param", None)
    server = make_server(kds, "127.0.0.1", 0, rate_limit=rate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_kds_fetch_and_cache(milan: Evidence, kds_server: http.server.ThreadingHTTPServer,
                             tmp_path: Path) -> None:
    report = AttestationReport.from_bytes(milan.report)
    assert vcek_path(report.generation, report.chip_id, report.tcb("reported_tcb")).startswith(
        f"/vcek/v1/Milan/{report.chip_id.hex()}?blSPL=")
    cache = tmp_path / "kds-cache"
    client = KdsClient(_url(kds_server), cache_dir=cache)
    result = verify_report_chain(milan.report, None, trust="sevsim", kds=client,
                                 check_revocation=True)
    assert result.ok, result.failures
    assert client.requests == 3  # VCEK, cert_chain, CRL
    kds_server.shutdown()  # nothing is served any more: a second run must use the cache
    kds_server.server_close()
    again = KdsClient(_url(kds_server), cache_dir=cache)
    result = verify_report_chain(milan.report, None, trust="sevsim", kds=again,
                                 check_revocation=True)
    assert result.ok, result.failures
    assert again.requests == 0
    # no cache, no server: a named failure, not a crash
    cold = KdsClient(_url(kds_server), retries=0)
    result = verify_report_chain(milan.report, None, trust="sevsim", kds=cold)
    assert failed(result) == {"VCEK"} and "KdsFetchError" in result.check("VCEK").detail


def test_kds_clients_sharing_a_cache_write_it_at_once(
        milan: Evidence, kds_server: http.server.ThreadingHTTPServer, tmp_path: Path) -> None:
    """Eight clients (as a KBS's worker processes would be) fetch the same VCEK into one cache
    directory at the same moment: each writes a file of its own and renames it, so every
    fetch succeeds, the entry is whole, and no temporary file is left."""
    report = AttestationReport.from_bytes(milan.report)
    path = vcek_path(report.generation, report.chip_id, report.tcb("reported_tcb"))
    cache, barrier, bodies, errors = tmp_path / "kds-cache", threading.Barrier(8), [], []

    def fetch() -> None:
        client = KdsClient(_url(kds_server), cache_dir=cache)
        barrier.wait()
        try:
            bodies.append(client.get(path))
        except KdsFetchError as error:
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(bodies)) == 1
    entries = [entry for entry in cache.rglob("*") if entry.is_file()]
    assert [entry.read_bytes() for entry in entries] == bodies[:1]
    assert not [entry for entry in entries if entry.name.endswith(".tmp")]


def test_kds_unknown_chip_is_an_http_error(kds_server: http.server.ThreadingHTTPServer,
                                           turin: Evidence) -> None:
    client = KdsClient(_url(kds_server))
    report = AttestationReport.from_bytes(turin.report)
    with pytest.raises(KdsFetchError) as raised:
        client.vcek(report.generation, report.chip_id, report.tcb("reported_tcb"))
    assert raised.value.status == 404


@pytest.mark.parametrize("kds_server", [0.5], indirect=True)
def test_kds_429_backs_off_honouring_retry_after(
        milan: Evidence, kds_server: http.server.ThreadingHTTPServer) -> None:
    import time

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    heard: list[str] = []
    client = KdsClient(_url(kds_server), sleep=sleep, backoff=0.1, on_request=heard.append)
    result = verify_report_chain(milan.report, None, trust="sevsim", kds=client)
    assert result.ok, result.failures
    assert waits, "the server rate-limits at one request every 2 s: a 429 was expected"
    assert all(wait >= 1.0 for wait in waits)  # Retry-After (>= 1 s), not the 0.1 s backoff
    assert client.requests == 2 + len(waits)
    # what a command's progress shows: every request sent, and every wait at the time it is
    assert [h for h in heard if h.startswith("GET ")] == [h for h in heard if "/vcek/" in h]
    assert len(heard) == client.requests + len(waits)
    assert [h for h in heard if h.startswith("rate limited")] == [
        f"rate limited (HTTP 429): waiting {wait:g} s" for wait in waits]
    impatient = KdsClient(_url(kds_server), retries=0)
    with pytest.raises(KdsFetchError) as raised:
        for _ in range(3):
            impatient.get("/vcek/v1/Milan/cert_chain")
    assert raised.value.status == 429


def test_cli_kds_cache_and_crl(milan: Evidence, kds_server: http.server.ThreadingHTTPServer,
                               tmp_path: Path) -> None:
    (tmp_path / "report.bin").write_bytes(milan.report)
    args = ("verify", tmp_path / "report.bin", "--kds", _url(kds_server), "--cache",
            tmp_path / "cache", "--trust", "sevsim", "--crl")
    # stderr as a terminal: the bar shows the fetches (at least the last), stdout as always
    ran = sevsim(*args, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert ran.returncode == 0, ran.stderr
    assert "CRL" in ran.stdout
    assert f"KDS {_url(kds_server)}" in ran.stderr
    assert f"GET {_url(kds_server)}/vcek/v1/Milan/" in ran.stderr
    kds_server.shutdown()
    kds_server.server_close()
    assert sevsim(*args).returncode == 0  # from the cache alone
    assert sevsim(*args[:-5], "--trust", "sevsim", "--crl").returncode == 1  # no cache


def test_cert_table_file_and_bundle_directory(milan: Evidence, tmp_path: Path) -> None:
    (tmp_path / "report.bin").write_bytes(milan.report)
    (tmp_path / "certs.bin").write_bytes(milan.table)
    ran = sevsim("verify", tmp_path / "report.bin", "--certs", tmp_path / "certs.bin",
                 "--trust", "sevsim")
    assert ran.returncode == 0, ran.stderr
    entries = CertBundle.from_cert_table(milan.table)
    assert entries.leaf is not None and entries.ask is not None and entries.ark is not None
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "vcek.der").write_bytes(entries.leaf)
    ask, ark = (x509.load_der_x509_certificate(d) for d in (entries.ask, entries.ark))
    (directory / "cert_chain.pem").write_bytes(ask.public_bytes(serialization.Encoding.PEM)
                                               + ark.public_bytes(serialization.Encoding.PEM))
    assert verify_report_chain(milan.report, CertBundle.load(directory), trust="sevsim").ok
    # a certificate table whose VCEK entry is garbage
    bad = build_cert_table([(GUID_VCEK, b"\x01\x02")])
    result = verify_report_chain(milan.report, CertBundle.from_cert_table(bad), trust="sevsim")
    assert failed(result) == {"VCEK"}


# -- endless inputs: every file read bounded -----------------------------------------------


def endless(path: Path) -> None:
    """Make `path` a symlink to /dev/zero, in place of whatever was there."""
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("name", ["vcek.pem", "vlek.der", "ask.pem", "asvk.der", "ark.der",
                                  "cert_chain.pem"])
def test_an_endless_file_in_a_bundle_directory_is_refused(tmp_path: Path, name: str) -> None:
    """A file given in a bundle directory is read bounded, not skipped for not being a regular
    file: a symlink to /dev/zero is an SnpFormatError naming it and the limit."""
    endless(tmp_path / name)
    with pytest.raises(SnpFormatError, match=rf"{tmp_path / name} holds more than "
                       rf"{MAX_CERT_FILE} bytes"):
        CertBundle.load(tmp_path)
    with pytest.raises(SnpFormatError, match=rf"{tmp_path / name} holds more than"):
        CertBundle.load(tmp_path / name)  # as an extended report's certificate table


def test_cli_refuses_an_endless_certificate_file(milan: Evidence, tmp_path: Path) -> None:
    (tmp_path / "report.bin").write_bytes(milan.report)
    certs = tmp_path / "certs"
    certs.mkdir()
    endless(certs / "vcek.pem")
    done = sevsim("verify", tmp_path / "report.bin", "--certs", certs, "--trust", "sevsim")
    assert done.returncode == 125 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        f"sevsim verify: SnpFormatError: size: {certs / 'vcek.pem'} holds more than "
        f"{MAX_CERT_FILE} bytes, the most a certificate file can be"]


def test_an_endless_kds_cache_entry_is_a_named_failure(
        milan: Evidence, kds_server: http.server.ThreadingHTTPServer, tmp_path: Path) -> None:
    """The cache directory is the user's: an entry replaced by a symlink to /dev/zero is a
    KdsFetchError naming the entry and the limit (a failed VCEK check, exit 1 from the CLI),
    not a read without end."""
    cache = tmp_path / "cache"
    filled = KdsClient(_url(kds_server), cache_dir=cache)
    assert verify_report_chain(milan.report, None, trust="sevsim", kds=filled).ok
    entries = sorted(cache.iterdir())
    assert entries
    for entry in entries:
        endless(entry)
    client = KdsClient(_url(kds_server), cache_dir=cache)
    report = AttestationReport.from_bytes(milan.report)
    with pytest.raises(KdsFetchError, match=rf"{cache}/.* holds more than {MAX_CERT_FILE}"):
        client.vcek(report.generation, report.chip_id, report.tcb("reported_tcb"))
    result = verify_report_chain(milan.report, None, trust="sevsim", kds=client)
    assert "VCEK" in failed(result) and "holds more than" in result.check("VCEK").detail
    assert client.requests == 0
    (tmp_path / "report.bin").write_bytes(milan.report)
    done = sevsim("verify", tmp_path / "report.bin", "--kds", _url(kds_server), "--cache",
                  cache, "--trust", "sevsim")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"holds more than {MAX_CERT_FILE} bytes" in done.stderr


class _Endless(http.server.BaseHTTPRequestHandler):
    """A key server that answers every request with zeros until the client hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:  # the client read enough and closed the connection
            pass

    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test's stderr."""


def test_an_endless_kds_answer_is_refused() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = KdsClient(_url(server), retries=0)
        with pytest.raises(KdsFetchError, match=rf"the answer holds more than {MAX_CERT_FILE}"):
            client.get("/vcek/v1/Milan/cert_chain")
    finally:
        server.shutdown()
        server.server_close()
