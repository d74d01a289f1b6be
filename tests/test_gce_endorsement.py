"""GCE launch endorsements: Google's VMLaunchEndorsement with its real schema, signed by
sevsim's simulated Google TCB root, served in the certificate table of a GCE-style report and
checked against the report's MEASUREMENT. The schema is compared with the descriptor protoc
made of gce-tcb-verifier's endorsement.proto, the certificates with the ones Google's own
tooling made (tests/data/gce/README.md), the signatures with openssl; every tampering fails
with an EndorsementError naming the check."""

from __future__ import annotations

import datetime
import hashlib
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from typer.testing import CliRunner

from sevsim.abi import der
from sevsim.abi.gce_endorsement import (
    GCE_VMSA_COUNTS,
    GUID_GCE_ENDORSEMENT,
    GoldenMeasurement,
    LaunchEndorsement,
    file_descriptor,
)
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    AttestationReport,
    parse_cert_table,
)
from sevsim.attest.gce_endorsement import (
    endorsement_in_cert_table,
    golden_measurements,
    load_google_root,
    simulated_google_root,
    verify_endorsement,
)
from sevsim.attest.measure import snp_ovmf_digest
from sevsim.attest.snp_verify import CertBundle, verify_report_chain
from sevsim.cli.main import app
from sevsim.errors import ConfigError, EndorsementError, EndorsementFormatError
from sevsim.firmware import gce_endorser
from sevsim.firmware.amd_root import pss_sign
from sevsim.firmware.gce_endorser import Endorser, simulated_endorser
from sevsim.host.machine import Host

DATA = Path(__file__).parent / "data" / "gce"
runner = CliRunner()


@pytest.fixture(scope="module")
def ovmf(ovmf_path: Path) -> bytes:
    return ovmf_path.read_bytes()


@pytest.fixture(scope="module")
def golden(ovmf: bytes) -> dict[int, bytes]:
    return golden_measurements(ovmf)


@pytest.fixture(scope="module")
def endorsement(ovmf: bytes, golden: dict[int, bytes]) -> bytes:
    return simulated_endorser().endorse(ovmf, golden)


@pytest.fixture(scope="module")
def launched(ovmf: bytes, endorsement: bytes) -> tuple[bytes, bytes]:
    """A two-vCPU GCE launch of OVMF whose host serves the endorsement: (report, table)."""
    host = Host(chip="milan", memory="192M", seed=b"gce endorsement")
    guest = host.launch_ovmf(ovmf, 2, vmm_type="gce",
                             certificates=[(GUID_GCE_ENDORSEMENT, endorsement)])
    try:
        return guest.report(b"gce".ljust(64, b"\0"))
    finally:
        guest.destroy()


def devkeys_endorser() -> Endorser:
    """The UEFI signer of gce-tcb-verifier's testing/devkeys: Google's tooling made it."""
    key = serialization.load_pem_private_key((DATA / "devkeys" / "primarySigningKey.pem")
                                             .read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Endorser(key, (DATA / "devkeys" / "primarySigningKey.crt").read_bytes(),
                    (DATA / "devkeys" / "root.crt").read_bytes())


def measurement_of(report: bytes) -> bytes:
    return AttestationReport.from_bytes(report).measurement


def reason(endorsement: bytes, measurement: bytes, **kwargs: object) -> str:
    kwargs.setdefault("root", simulated_google_root())
    with pytest.raises(EndorsementError) as caught:
        verify_endorsement(endorsement, measurement, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


# -- the schema -------------------------------------------------------------------------------


def _protoc_descriptor() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString((DATA / "endorsement.desc").read_bytes())


def test_the_schema_is_gce_tcb_verifiers() -> None:
    """Every message, field name, number, type, label and map entry as protoc compiled them
    from the real endorsement.proto (json_name is derived, go_package is Go's)."""
    real = _protoc_descriptor()
    real.ClearField("options")

    def strip(message: descriptor_pb2.DescriptorProto) -> None:
        for item in message.field:
            item.ClearField("json_name")
        for nested in message.nested_type:
            strip(nested)

    for message in real.message_type:
        strip(message)
    assert file_descriptor() == real
    assert [m.name for m in real.message_type] == ["VMLaunchEndorsement", "VMGoldenMeasurement",
                                                   "VMSevSnp", "VMTdx"]


def test_the_real_schema_reads_what_sevsim_writes(endorsement: bytes, ovmf: bytes,
                                                  golden: dict[int, bytes]) -> None:
    """Parsed with classes made from protoc's descriptor, not sevsim's."""
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(_protoc_descriptor())

    def parse(name: str, blob: bytes) -> object:
        message = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"cloud_vmm_proto.{name}"))()
        message.ParseFromString(blob)
        return message

    outer = parse("VMLaunchEndorsement", endorsement)
    assert len(outer.signature) == 512  # type: ignore[attr-defined]  # RSA-4096, as Google's
    inner = parse("VMGoldenMeasurement", outer.serialized_uefi_golden)  # type: ignore[attr-defined]
    snp = inner.sev_snp  # type: ignore[attr-defined]
    for message in (outer, inner, snp, inner.timestamp):  # type: ignore[attr-defined]
        assert len(UnknownFieldSet(message)) == 0  # every byte is a field of the real schema
    assert dict(snp.measurements) == golden
    assert sorted(snp.measurements) == list(GCE_VMSA_COUNTS)
    assert snp.policy == 0x70000 and snp.svn == 1
    assert snp.family_id.hex() == "f73a6949e8f3473b9553e40e056fa3a2"
    assert inner.cert == simulated_endorser().cert  # type: ignore[attr-defined]
    assert inner.ca_bundle.startswith(b"-----BEGIN CERTIFICATE-----")  # type: ignore
    assert inner.digest == hashlib.sha384(ovmf).digest()  # type: ignore[attr-defined]


def test_malformed_bytes_are_a_format_error(endorsement: bytes) -> None:
    for blob in (endorsement[:100], b"\x0a\xff", b"\xff" * 8, b""):
        with pytest.raises(EndorsementFormatError):
            LaunchEndorsement.from_bytes(blob)
    parsed = LaunchEndorsement.from_bytes(endorsement)
    short = GoldenMeasurement.from_bytes(parsed.serialized_uefi_golden)
    bad = GoldenMeasurement(short.timestamp, short.cert, short.digest[:47])
    with pytest.raises(EndorsementFormatError, match="digest"):
        GoldenMeasurement.from_bytes(bad.to_bytes())


# -- the simulated Google root and signer -------------------------------------------------


def test_the_shipped_google_root_and_keys_are_derived_from_the_published_seed(
        tmp_path: Path) -> None:
    """`tools/derive_simulated_google_root.py` rewrites the same files (seconds: two RSA-4096
    prime searches); the root is fixed bytes and the trust store ships exactly them."""
    gce_endorser.regenerate(tmp_path / "keys", tmp_path / "root.pem")
    shipped = Path(gce_endorser.__file__).parent / "simulated_google"
    for role in gce_endorser.ROLES:
        assert (tmp_path / "keys" / f"{role}.pem").read_bytes() == (
            shipped / f"{role}.pem").read_bytes()
    root = (tmp_path / "root.pem").read_bytes()
    assert root == simulated_endorser().ca_bundle
    assert x509.load_pem_x509_certificate(root) == simulated_google_root()
    assert ssl.PEM_cert_to_DER_cert(root.decode()) == gce_endorser.root_certificate()


def _skeleton(blob: bytes, depth: int = 0) -> list[tuple[int, int]]:
    """(depth, tag) of every DER element in order, descending into constructed ones."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < len(blob):
        tag, content, pos = der.read(blob, pos)
        out.append((depth, tag))
        if tag & 0x20:
            out += _skeleton(content, depth + 1)
    return out


def _parts(cert_der: bytes) -> dict[str, bytes]:
    tbs, algorithm, _ = der.children(der.read_one(cert_der, der.SEQUENCE, "cert"))
    fields = der.children(tbs[1])
    extensions = der.children(der.read_one(fields[7][1], der.SEQUENCE, "extensions"))
    return {"algorithm": algorithm[1], "tbs algorithm": fields[2][1], "version": fields[0][1],
            "issuer": fields[3][1], "subject": fields[5][1],
            **{f"extension {i}": der.encode(tag, value)
               for i, (tag, value) in enumerate(extensions)}}


@pytest.mark.parametrize(("ours", "googles"), [("root", "root.crt"),
                                               ("signer", "primarySigningKey.crt")])
def test_the_certificates_have_the_shape_of_googles(ours: str, googles: str) -> None:
    """Tag for tag as gce-tcb-verifier's tooling issues them (only key size, serial-free
    values, dates, key ids and signatures differ): names, RSASSA-PSS SHA-256 parameters, key
    usage and basic constraints byte for byte."""
    real_blob = (DATA / "devkeys" / googles).read_bytes()
    real = (ssl.PEM_cert_to_DER_cert(real_blob.decode()) if real_blob.startswith(b"-----")
            else real_blob)
    endorser = simulated_endorser()
    mine = gce_endorser.root_certificate() if ours == "root" else endorser.cert
    assert _skeleton(mine) == _skeleton(real)
    real_parts, my_parts = _parts(real), _parts(mine)
    key_ids = {"extension 2"}  # SKI (root) or AKI (signer): a hash of another key
    assert {k: v for k, v in my_parts.items() if k not in key_ids} == {
        k: v for k, v in real_parts.items() if k not in key_ids}


def test_openssl_accepts_the_chain_and_the_signature(endorsement: bytes,
                                                     tmp_path: Path) -> None:
    """The check Google documents: `openssl dgst -sha256 -sigopt rsa_padding_mode:pss` with
    the certificate's key over serialized_uefi_golden, and the signer under the root."""
    parsed = LaunchEndorsement.from_bytes(endorsement)
    signer = x509.load_der_x509_certificate(parsed.golden.cert)
    (tmp_path / "root.pem").write_bytes(simulated_endorser().ca_bundle)
    (tmp_path / "signer.pem").write_bytes(signer.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "golden.bin").write_bytes(parsed.serialized_uefi_golden)
    (tmp_path / "sig.bin").write_bytes(parsed.signature)
    chain = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "signer.pem"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert chain.returncode == 0, chain.stderr
    dgst = ["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt",
            "rsa_pss_saltlen:32", "-verify", "key.pem", "-signature", "sig.bin", "golden.bin"]
    assert subprocess.run(dgst, cwd=tmp_path, capture_output=True).returncode == 0
    (tmp_path / "golden.bin").write_bytes(parsed.serialized_uefi_golden + b"\0")
    assert subprocess.run(dgst, cwd=tmp_path, capture_output=True).returncode != 0


def test_the_same_image_gives_the_same_endorsement(ovmf: bytes, golden: dict[int, bytes],
                                                   endorsement: bytes) -> None:
    assert simulated_endorser().endorse(ovmf, golden) == endorsement
    with pytest.raises(ConfigError):
        simulated_endorser().endorse(ovmf, {2: bytes(47)})
    with pytest.raises(ConfigError):
        simulated_endorser().endorse(ovmf, {})


# -- verification through the API ---------------------------------------------------------


def test_a_gce_report_verifies_with_its_endorsement(
        launched: tuple[bytes, bytes], endorsement: bytes, ovmf: bytes) -> None:
    report, table = launched
    assert verify_report_chain(report, CertBundle.from_cert_table(table), trust="sevsim").ok
    assert [guid for guid, _ in parse_cert_table(table)] == [  # the VMM's after the firmware's
        GUID_VCEK, GUID_ASK, GUID_ARK, GUID_GCE_ENDORSEMENT]
    assert endorsement_in_cert_table(table) == endorsement
    measurement = measurement_of(report)
    assert measurement == snp_ovmf_digest(ovmf, 2, vmm_type="gce")
    launch = verify_endorsement(endorsement, measurement, root=simulated_google_root(),
                                vcpus=2)
    assert launch.vcpus == 2 and launch.golden.sev_snp is not None
    assert launch.golden.sev_snp.measurements[2] == measurement
    assert "GCE-uefi-signer" in launch.summary()
    # without a vCPU count, the count whose measurement it is
    assert verify_endorsement(endorsement, measurement, root=simulated_google_root()).vcpus == 2


def test_a_flipped_byte_in_the_golden_measurement_breaks_the_signature(
        launched: tuple[bytes, bytes], endorsement: bytes) -> None:
    measurement = measurement_of(launched[0])
    parsed = LaunchEndorsement.from_bytes(endorsement)
    golden = bytearray(parsed.serialized_uefi_golden)
    at = golden.index(measurement)  # the golden value for 2 vCPUs
    golden[at + 5] ^= 1
    tampered = LaunchEndorsement(bytes(golden), parsed.signature).to_bytes()
    assert reason(tampered, measurement, vcpus=2) == "signature"
    signature = bytearray(parsed.signature)
    signature[-1] ^= 1
    assert reason(LaunchEndorsement(parsed.serialized_uefi_golden, bytes(signature)).to_bytes(),
                  measurement) == "signature"
    assert reason(endorsement[:-3], measurement) == "format"


def test_another_vcpu_counts_measurement_is_refused(
        launched: tuple[bytes, bytes], endorsement: bytes, ovmf: bytes,
        golden: dict[int, bytes]) -> None:
    measurement = measurement_of(launched[0])
    with pytest.raises(EndorsementError, match="it is the one for 2 vCPUs") as caught:
        verify_endorsement(endorsement, measurement, root=simulated_google_root(), vcpus=4)
    assert caught.value.reason == "measurement"
    assert reason(endorsement, measurement, vcpus=3) == "measurement"  # no such machine type
    without_two = simulated_endorser().endorse(
        ovmf, {n: m for n, m in golden.items() if n != 2})
    assert reason(without_two, measurement) == "measurement"
    assert reason(endorsement, bytes(48)) == "measurement"


def test_a_signer_outside_the_trusted_root_is_refused(
        launched: tuple[bytes, bytes], ovmf: bytes, golden: dict[int, bytes]) -> None:
    """Signed by the UEFI signer of gce-tcb-verifier's devkeys: refused under sevsim's root,
    accepted when the caller trusts that root (a real Google root file works the same way)."""
    measurement = measurement_of(launched[0])
    foreign = devkeys_endorser().endorse(ovmf, golden)
    assert reason(foreign, measurement) == "chain"
    devkeys_root = load_google_root((DATA / "devkeys" / "root.crt").read_bytes())
    assert verify_endorsement(foreign, measurement, root=devkeys_root, vcpus=2).vcpus == 2
    assert reason(simulated_endorser().endorse(ovmf, golden), measurement,
                  root=devkeys_root) == "chain"


def test_time_provenance_and_missing_sections(launched: tuple[bytes, bytes], ovmf: bytes,
                                              golden: dict[int, bytes],
                                              endorsement: bytes) -> None:
    measurement = measurement_of(launched[0])
    late = datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(EndorsementError, match="GCE-uefi-signer is valid from 2024-01-01") as e:
        verify_endorsement(endorsement, measurement, root=simulated_google_root(), at=late)
    assert e.value.reason == "chain"
    dated = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)
    signer = simulated_endorser()
    assert reason(signer.endorse(ovmf, golden, timestamp=dated), measurement) == "provenance"
    assert verify_endorsement(signer.endorse(ovmf, golden, timestamp=dated, cl_spec=612345),
                              measurement, root=simulated_google_root()).vcpus == 2
    no_snp = GoldenMeasurement(dated, signer.cert, bytes(48), signer.ca_bundle, 1).to_bytes()
    blob = LaunchEndorsement(no_snp, pss_sign(signer.key, no_snp, "sha256")).to_bytes()
    assert reason(blob, measurement) == "sev-snp"
    no_cert = GoldenMeasurement(dated, b"", bytes(48), cl_spec=1).to_bytes()
    assert reason(LaunchEndorsement(no_cert, bytes(512)).to_bytes(), measurement) == "signer"


def with_serial(cert: bytes, serial: int, version: int = 2) -> bytes:
    """`cert` with its TBS serial number and version replaced (the signature no longer covers
    them)."""
    tbs, algorithm, signature = der.children(der.read_one(cert, der.SEQUENCE, "certificate"))
    fields = der.children(tbs[1])
    fields[0] = (fields[0][0], der.integer(version))
    fields[1] = (der.INTEGER, der.read_one(der.integer(serial), der.INTEGER, "serial"))
    body = b"".join(der.encode(tag, content) for tag, content in fields)
    return der.sequence(der.encode(der.SEQUENCE, body), der.encode(*algorithm),
                        der.encode(*signature))


def test_a_serial_number_rfc_5280_forbids_is_refused(launched: tuple[bytes, bytes],
                                                     ovmf: bytes, golden: dict[int, bytes]
                                                     ) -> None:
    """A zero serial (found by the fuzzer): `cryptography` only warns today; sevsim refuses
    it as a signer and as a root, with a typed error."""
    measurement = measurement_of(launched[0])
    signer = simulated_endorser()
    zero = Endorser(signer.key, with_serial(signer.cert, 0), signer.ca_bundle)
    assert reason(zero.endorse(ovmf, golden), measurement) == "signer"
    root = simulated_google_root().public_bytes(serialization.Encoding.DER)
    with pytest.raises(EndorsementFormatError, match="not a certificate"):
        load_google_root(with_serial(root, 0))
    assert load_google_root(with_serial(root, 7)).serial_number == 7


def test_an_x509_version_that_does_not_exist_is_refused(launched: tuple[bytes, bytes],
                                                        ovmf: bytes, golden: dict[int, bytes]
                                                        ) -> None:
    """Version 1 (X.509 v2, found by the fuzzer): `cryptography` raises its InvalidVersion,
    which is no ValueError; sevsim refuses it with a typed error, as signer and as root."""
    signer = simulated_endorser()
    bad = Endorser(signer.key, with_serial(signer.cert, 2, version=1), signer.ca_bundle)
    assert reason(bad.endorse(ovmf, golden), measurement_of(launched[0])) == "signer"
    root = simulated_google_root().public_bytes(serialization.Encoding.DER)
    with pytest.raises(EndorsementFormatError, match="version 1"):
        load_google_root(with_serial(root, 7, version=1))

def test_the_vmm_cannot_shadow_the_firmwares_certificates(ovmf: bytes,
                                                          endorsement: bytes) -> None:
    host = Host(chip="milan", memory="192M", seed=b"gce endorsement")
    before = len(host.hypervisor.vms)
    with pytest.raises(ConfigError, match="serves"):
        host.launch_ovmf(ovmf, 1, vmm_type="gce", certificates=[(GUID_VCEK, endorsement)])
    assert len(host.hypervisor.vms) == before


# -- through the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_outputs(ovmf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gce")
    result = runner.invoke(app, [
        "report", "--ovmf", str(ovmf_path), "--vmm-type", "gce", "--vcpus", "2",
        "--seed", "gce", "-o", str(out / "report.bin"), "--certs-out", str(out / "certs"),
        "--cert-table-out", str(out / "table.bin"),
        "--endorsement-out", str(out / "endorsement.binarypb")])
    assert result.exit_code == 0, result.output
    return out


def _verify(out: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", str(out / "report.bin"), "--trust", "sevsim",
                                 *args])
    return result.exit_code, result.output


def test_cli_report_serves_and_verify_checks_the_endorsement(cli_outputs: Path) -> None:
    out = cli_outputs
    blob = (out / "endorsement.binarypb").read_bytes()
    assert (out / "certs" / "endorsement.binarypb").read_bytes() == blob
    assert endorsement_in_cert_table((out / "table.bin").read_bytes()) == blob
    for args in (["--certs", str(out / "certs")], ["--certs", str(out / "table.bin")],
                 ["--certs", str(out / "certs"), "--endorsement",
                  str(out / "endorsement.binarypb"), "--vcpus", "2"]):
        status, output = _verify(out, *args)
        assert status == 0, output
        assert "ok   endorsement" in output and "endorsed for 2 vCPUs" in output
        assert "launch endorsed" in output


def test_cli_verify_fails_on_a_tampered_endorsement(cli_outputs: Path, tmp_path: Path) -> None:
    out = cli_outputs
    status, output = _verify(out, "--certs", str(out / "certs"), "--vcpus", "4")
    assert status == 1 and "FAIL endorsement   measurement:" in output
    parsed = LaunchEndorsement.from_bytes((out / "endorsement.binarypb").read_bytes())
    golden = bytearray(parsed.serialized_uefi_golden)
    golden[-10] ^= 0x40
    (tmp_path / "tampered").write_bytes(
        LaunchEndorsement(bytes(golden), parsed.signature).to_bytes())
    status, output = _verify(out, "--certs", str(out / "certs"), "--endorsement",
                             str(tmp_path / "tampered"))
    assert status == 1 and "endorsement: signature:" in output
    status, output = _verify(out, "--certs", str(out / "certs"), "--google-root",
                             str(DATA / "devkeys" / "root.crt"))
    assert status == 1 and "endorsement: chain:" in output
    (tmp_path / "junk").write_bytes(b"\xff" * 40)
    status, output = _verify(out, "--certs", str(out / "certs"), "--endorsement",
                             str(tmp_path / "junk"))
    assert status == 1 and "endorsement: format:" in output
    # --at applies to the endorsement's certificates as to AMD's
    assert _verify(out, "--certs", str(out / "certs"), "--at", "2026-01-01")[0] == 0
    status, output = _verify(out, "--certs", str(out / "certs"), "--at", "2032-06-01")
    assert status == 1 and "FAIL endorsement   chain: GCE-uefi-signer is valid from " \
        "2024-01-01T00:00:00Z to 2031-01-01T00:00:00Z, not at 2032-06-01T00:00:00Z" in output


def test_cli_usage(cli_outputs: Path, ovmf_path: Path, tmp_path: Path) -> None:
    out = cli_outputs
    result = runner.invoke(app, ["verify", str(out / "report.bin"), "--certs",
                                 str(out / "certs"), "--endorsement",
                                 str(out / "endorsement.binarypb")])
    assert result.exit_code == 2 and "--google-root" in result.output
    result = runner.invoke(app, ["verify", str(out / "report.bin"), "--certs",
                                 str(out / "certs")])  # AMD's roots: a note, no check
    assert result.exit_code == 1 and "give --google-root" in result.output
    assert "ok   endorsement" not in result.output and "FAIL endorsement" not in result.output
    result = runner.invoke(app, ["report", "--ovmf", str(ovmf_path), "-o",
                                 str(tmp_path / "r.bin"), "--endorsement-out",
                                 str(tmp_path / "e")])
    assert result.exit_code == 2 and not (tmp_path / "r.bin").exists()
    bare = tmp_path / "certs"  # the certificates alone: asked for, the endorsement is missing
    bare.mkdir()
    for name in ("vcek.pem", "ask.pem", "ark.pem"):
        (bare / name).write_bytes((out / "certs" / name).read_bytes())
    assert _verify(out, "--certs", str(bare))[0] == 0
    status, output = _verify(out, "--certs", str(bare), "--vcpus", "2")
    assert status == 1 and "endorsement: none given" in output
    (tmp_path / "root.pem").write_bytes(b"not a certificate")
    status, output = _verify(out, "--certs", str(out / "certs"), "--google-root",
                             str(tmp_path / "root.pem"))
    assert status == 125 and "root" in output
