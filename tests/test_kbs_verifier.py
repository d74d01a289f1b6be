"""kbs/verifier.py and kbs/policy.py: SNP evidence a key broker accepts or refuses, and why.

sevsim's evidence comes from the Secure Processor itself (a real SNP_GUEST_REQUEST sealed
with the guest's VMPCK, signed by the chip's VCEK); real evidence is the Milan reports in
tests/data/snp (copies of ../shared/data/vectors) with AMD's chain. Every refusal is checked
for its stable reason, and every passing case has a near twin that is refused."""

from __future__ import annotations

import base64
import datetime
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from sevsim.abi.snp_cert import PSS, SnpCertificate
from sevsim.abi.snp_guest_msg import MsgType, ReportRequest, open_message, seal_message
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    GUID_VLEK,
    OFFSETS,
    AttestationReport,
    ReportResponse,
)
from sevsim.abi.snp_tcb import PolicyFlags, SnpPolicy
from sevsim.attest import KdsClient, Policy, policy_for
from sevsim.attest.snp_verify import der_certificates, load_report
from sevsim.errors import ConfigError, KbsEvidenceError, PolicyError
from sevsim.firmware.amd_root import simulated_root
from sevsim.firmware.kds import KeyDistribution, make_server
from sevsim.firmware.snp_guest import SnpGuestRequests
from sevsim.firmware.snp_pki import snp_ca_chain
from sevsim.kbs.policy import (
    Decision,
    RegoResourcePolicy,
    ResourcePolicy,
    evaluate_attestation_policy,
    evaluate_resource_policy,
    parse_resource_policy,
)
from sevsim.kbs.verifier import REASONS, EvidenceConfig, verify_snp_evidence
from sevsim.testing import GCTX, launched_snp_guest, secure_processor, sign_report

DATA = Path(__file__).resolve().parent / "data" / "snp"
DER = serialization.Encoding.DER
SEVSIM = EvidenceConfig(trust="sevsim")
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)  # inside every real leaf's validity


# -- sevsim evidence, straight from the Secure Processor -------------------------------------


@dataclass
class Evidence:
    fw: SnpGuestRequests
    report: bytes
    certs: list[tuple[str, bytes]]
    report_data: bytes


def _evidence(chip: str = "milan", *, flags: PolicyFlags = PolicyFlags.SMT,
              measurement: bytes = bytes(range(48)), seed: bytes = b"kbs-verifier") -> Evidence:
    fw = secure_processor(chip, seed=seed)
    assert isinstance(fw, SnpGuestRequests)
    fw.snp_init()
    ctx = launched_snp_guest(fw, GCTX, measurement=measurement, policy=SnpPolicy(flags))
    report_data = os.urandom(64)
    sealed = seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, 1,
                          ReportRequest(report_data, vmpl=0).to_bytes())
    _, plain = open_message(ctx.vmpcks[0], fw.snp_guest_request(GCTX, sealed))
    response = ReportResponse.from_bytes(plain)
    assert response.status == 0
    ask, ark = snp_ca_chain(fw.generation.value)
    certs = [(str(GUID_VCEK), fw.vcek_certificate(fw.tcb)), (str(GUID_ASK), ask.public_bytes(DER)),
             (str(GUID_ARK), ark.public_bytes(DER))]
    return Evidence(fw, response.report, certs, report_data)


@pytest.fixture(scope="module")
def milan() -> Evidence:
    return _evidence("milan")


def refusal(evidence: Evidence, config: EvidenceConfig = SEVSIM, *,
            report: bytes | None = None, certs: list[tuple[str, bytes]] | None = None,
            expected: bytes | tuple[bytes, ...] | None = None) -> KbsEvidenceError:
    with pytest.raises(KbsEvidenceError) as raised:
        verify_snp_evidence(evidence.report if report is None else report,
                            evidence.certs if certs is None else certs,
                            evidence.report_data if expected is None else expected, config)
    assert raised.value.reason in REASONS
    return raised.value


@pytest.mark.parametrize(("chip", "version"), [("milan", 3), ("genoa", 3), ("turin", 5)])
def test_a_genuine_sevsim_report_passes_and_its_claims_are_what_it_says(chip: str,
                                                                        version: int) -> None:
    evidence = _evidence(chip)
    claims = verify_snp_evidence(evidence.report, evidence.certs, evidence.report_data, SEVSIM)
    report = AttestationReport.from_bytes(evidence.report)
    tcb = evidence.fw.tcb
    assert claims["tee"] == "snp" and claims["signer"] == "VCEK"
    assert claims["product"] == chip.capitalize() and claims["report_version"] == version
    assert claims["measurement"] == bytes(range(48)).hex()
    assert claims["report_data"] == evidence.report_data.hex()
    assert claims["chip_id"] == evidence.fw.chip_id().hex() == report.chip_id.hex()
    assert claims["policy"] == SnpPolicy().to_int() and claims["policy_debug"] is False
    assert claims["policy_smt"] is True and claims["vmpl"] == 0
    assert (claims["reported_tcb_snp"], claims["reported_tcb_microcode"]) == (tcb.snp,
                                                                              tcb.microcode)
    assert ("reported_tcb_fmc" in claims) == (chip == "turin")
    assert claims["platform_info"] == report.platform_info
    assert claims["current_firmware"] == (f"{report.current_major}.{report.current_minor}."
                                          f"{report.current_build}")
    # one of several expected values binds too; the claims are JSON as they stand
    other = os.urandom(64)
    assert verify_snp_evidence(evidence.report, evidence.certs, (other, evidence.report_data),
                               SEVSIM) == claims
    assert all(isinstance(v, str | int | bool) for v in claims.values())
    # never to AMD's roots, the default
    assert refusal(evidence, EvidenceConfig()).reason == "chain"


def test_report_data_that_does_not_bind_is_refused(milan: Evidence) -> None:
    wrong = bytearray(milan.report_data)
    wrong[63] ^= 1
    error = refusal(milan, expected=bytes(wrong))
    assert error.reason == "report-data"
    assert refusal(milan, expected=(os.urandom(64), bytes(wrong))).reason == "report-data"
    with pytest.raises(ConfigError):  # a caller's mistake, not the evidence's
        verify_snp_evidence(milan.report, milan.certs, milan.report_data[:48], SEVSIM)
    with pytest.raises(ConfigError):
        verify_snp_evidence(milan.report, milan.certs, (), SEVSIM)


def test_a_wrong_measurement_is_refused_by_the_attestation_policy(milan: Evidence) -> None:
    report = AttestationReport.from_bytes(milan.report)
    pinned = policy_for(report)
    assert verify_snp_evidence(milan.report, milan.certs, milan.report_data,
                               replace(SEVSIM, policy=pinned))
    other = _evidence("milan", measurement=bytes(48))  # same chip, an image one byte off
    error = refusal(other, replace(SEVSIM, policy=pinned))
    assert error.reason == "policy"
    assert f"guest.measurements: expected {bytes(range(48)).hex()}" in error.detail
    assert "report_data" in error.detail  # policy_for pinned the other nonce too


def test_a_debuggable_guest_is_refused_unless_the_policy_allows_it() -> None:
    debug = _evidence("milan", flags=PolicyFlags.SMT | PolicyFlags.DEBUG)
    error = refusal(debug)  # the default policy
    assert error.reason == "policy" and error.detail.startswith("guest_policy.allow_debug")
    allowing = Policy.from_toml("[guest_policy]\nallow_debug = true\n")
    claims = verify_snp_evidence(debug.report, debug.certs, debug.report_data,
                                 replace(SEVSIM, policy=allowing))
    assert claims["policy_debug"] is True


def test_a_bad_signature_is_refused(milan: Evidence) -> None:
    for field in ("signature_r", "measurement", "report_data"):
        offset, _ = OFFSETS[field]
        forged = bytearray(milan.report)
        forged[offset] ^= 0x01
        offset, size = OFFSETS["report_data"]
        error = refusal(milan, report=bytes(forged), expected=bytes(forged[offset:offset + size]))
        assert error.reason == "signature", (field, error)
        assert "did not sign this report" in error.detail


def test_another_chips_vcek_and_a_missing_chain_are_refused(milan: Evidence) -> None:
    stranger = _evidence("milan", seed=b"another chip")
    certs = [stranger.certs[0], *milan.certs[1:]]
    assert refusal(milan, certs=certs).reason in ("signature", "chip-id")
    assert refusal(milan, certs=[]).reason == "chain"  # no VCEK, no store, no KDS
    error = refusal(milan, certs=[("not-a-guid", b"x"), *milan.certs])
    assert error.reason == "format" and "cert_chain[0]" in error.detail
    assert refusal(milan, certs=[milan.certs[0], milan.certs[0]]).reason == "format"


def test_malformed_reports_are_refused_as_format(milan: Evidence) -> None:
    assert refusal(milan, report=milan.report[:-1]).reason == "format"
    assert refusal(milan, report=b"").reason == "format"


def test_an_unknown_product_is_refused(milan: Evidence) -> None:
    """A report whose CPUID names no SNP product, validly signed: nothing to verify it to."""
    report = replace(AttestationReport.from_bytes(milan.report), cpuid_fam_id=0x17,
                     cpuid_mod_id=0x31)
    signed = sign_report(milan.fw, report.to_bytes(), milan.fw.tcb)
    error = refusal(milan, report=signed)
    assert error.reason == "product"
    assert refusal(milan, replace(SEVSIM, product="genoa")).reason == "product"
    assert refusal(milan, replace(SEVSIM, product="rome")).reason == "product"


# -- revocation, offline store and KDS ---------------------------------------------------------


def _crl(product: str, revoked: int | None, now: datetime.datetime) -> bytes:
    """A CRL signed by sevsim's simulated ARK, as KDS publishes it, revoking one serial.

    VCEKs have serial 0, which `cryptography` will not put in a CRL: the entry is made with
    serial 1 and its DER patched to 0 (same length), then the list is signed again."""
    ark, ark_key = snp_ca_chain(product)[1], simulated_root(product.lower()).ark_key
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ark.subject)
               .last_update(now - datetime.timedelta(days=1))
               .next_update(now + datetime.timedelta(days=7)))
    if revoked is not None:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
            revoked or 1).revocation_date(now).build())
    crl = builder.sign(ark_key, hashes.SHA384(), rsa_padding=PSS)
    der = crl.public_bytes(DER)
    if revoked != 0:
        return der
    tbs = crl.tbs_certlist_bytes
    entry = b"\x02\x01\x01\x17\x0d"  # serial INTEGER 1, then the UTCTime revocationDate
    assert tbs.count(entry) == 1
    patched = tbs.replace(entry, b"\x02\x01\x00\x17\x0d")
    signature = ark_key.sign(patched, PSS, hashes.SHA384())
    assert len(signature) == len(crl.signature) and der.endswith(crl.signature)
    start = der.index(tbs)
    return der[:start] + patched + der[start + len(tbs):-len(signature)] + signature


def test_a_revoked_vcek_is_refused(milan: Evidence) -> None:
    now = datetime.datetime.now(datetime.UTC)
    vcek_serial = SnpCertificate.from_der(milan.certs[0][1]).tbs.serial
    assert vcek_serial == 0  # as AMD issues them
    for clean in (None, 7):
        assert verify_snp_evidence(milan.report, milan.certs, milan.report_data,
                                   replace(SEVSIM, crl=_crl("Milan", clean, now)))
    error = refusal(milan, replace(SEVSIM, crl=_crl("Milan", vcek_serial, now)))
    assert error.reason == "revoked" and "revokes the VCEK (serial 0x0)" in error.detail
    # how AMD revokes in practice: the ASK, and with it every VCEK it signed
    ask_serial = snp_ca_chain("Milan")[0].serial_number
    error = refusal(milan, replace(SEVSIM, crl=_crl("Milan", ask_serial, now)))
    assert error.reason == "revoked" and "revokes the ASK" in error.detail
    # a CRL that is no longer current is refused, and so is asking with nothing to ask
    stale = replace(SEVSIM, crl=_crl("Milan", None, now - datetime.timedelta(days=30)))
    assert refusal(milan, stale).reason == "crl"
    assert refusal(milan, replace(SEVSIM, check_revocation=True)).reason == "crl"


def test_the_vcek_comes_from_an_offline_store(milan: Evidence, tmp_path: Path) -> None:
    store = tmp_path / "vceks"
    (store / "milan").mkdir(parents=True)
    config = replace(SEVSIM, vcek_store=store)
    assert refusal(milan, config, certs=[]).reason == "chain"  # empty store
    stranger = _evidence("milan", seed=b"another chip")
    (store / "milan" / "other.der").write_bytes(stranger.certs[0][1])
    (store / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n")
    (store / "notes.txt").write_bytes(milan.certs[0][1])  # not a certificate file name
    assert refusal(milan, config, certs=[]).reason == "chain"
    body = base64.encodebytes(milan.certs[0][1]).decode()  # PEM is read too
    (store / "milan" / "this.pem").write_text(
        f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n")
    claims = verify_snp_evidence(milan.report, [], milan.report_data, config)
    assert claims["chip_id"] == milan.fw.chip_id().hex()
    # each file parsed once (notes.txt never): a second attestation reads the index
    assert len(config.store_index) == 3
    assert verify_snp_evidence(milan.report, [], bytearray(milan.report_data), config) == claims
    assert len(config.store_index) == 3
    with pytest.raises(ConfigError):
        verify_snp_evidence(milan.report, [], milan.report_data,
                            replace(SEVSIM, vcek_store=tmp_path / "absent"))


@pytest.fixture
def kds_server(milan: Evidence) -> Iterator[http.server.ThreadingHTTPServer]:
    kds = KeyDistribution()
    kds.register([milan.fw])
    server = make_server(kds, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_vcek_comes_from_a_kds_through_its_cache(
        milan: Evidence, kds_server: http.server.ThreadingHTTPServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{kds_server.server_address[1]}"
    client = KdsClient(url, cache_dir=tmp_path / "kds")
    config = replace(SEVSIM, kds=client, check_revocation=True)
    claims = verify_snp_evidence(milan.report, [], milan.report_data, config)
    assert claims["signer"] == "VCEK" and client.requests == 3  # VCEK, chain, CRL
    # a second KBS process with the same cache sends nothing, even with the server gone
    kds_server.shutdown()
    kds_server.server_close()
    again = KdsClient(url, cache_dir=tmp_path / "kds", retries=0)
    assert verify_snp_evidence(milan.report, [], milan.report_data,
                               replace(config, kds=again)) == claims
    assert again.requests == 0
    cold = KdsClient(url, retries=0, timeout=5)
    assert refusal(milan, replace(SEVSIM, kds=cold), certs=[]).reason == "kds"


# -- real evidence, AMD's chain ------------------------------------------------------------------


def _real(name: str, report: str, leaf: str, guid: str) -> Evidence:
    blob = load_report((DATA / name / report).read_bytes())
    return Evidence(None, blob, [(guid, (DATA / name / leaf).read_bytes())],  # type: ignore
                    AttestationReport.from_bytes(blob).report_data)


def _amd_chain(bundle: str) -> list[tuple[str, bytes]]:
    ask, ark = der_certificates((DATA / "roots" / bundle).read_bytes())
    return [(str(GUID_ASK), ask), (str(GUID_ARK), ark)]


def test_a_real_milan_report_passes_a_matching_policy_with_amds_chain() -> None:
    real = _real("milan-v2-b", "report.hex", "vcek.der", str(GUID_VCEK))
    policy = Policy.from_toml((Path(__file__).resolve().parent.parent / "examples" /
                               "policy.toml").read_text())
    config = EvidenceConfig(policy=policy, now=AT)
    for certs in (real.certs, real.certs + _amd_chain("ask_ark_milan.pem")):
        claims = verify_snp_evidence(real.report, certs, real.report_data, config)
        assert claims["product"] == "Milan" and claims["report_version"] == 2
        assert claims["policy_debug"] is False
    # sevsim's roots never accept it; a pinned measurement of another image refuses it
    assert refusal(real, replace(config, trust="sevsim")).reason == "chain"
    other = replace(policy, measurements=(bytes(48),))
    assert refusal(real, replace(config, policy=other)).reason == "policy"
    # the same report, from an offline store of real VCEKs
    assert verify_snp_evidence(real.report, [], real.report_data,
                               replace(config, vcek_store=DATA))["chip_id"] == \
        AttestationReport.from_bytes(real.report).chip_id.hex()


def test_a_real_debuggable_milan_report_is_refused_by_default() -> None:
    real = _real("milan-v2-a", "report.bin", "vcek.der", str(GUID_VCEK))
    error = refusal(real, EvidenceConfig(now=AT))
    assert error.reason == "policy" and error.detail.startswith("guest_policy.allow_debug")
    pinned = policy_for(AttestationReport.from_bytes(real.report))
    assert verify_snp_evidence(real.report, real.certs, real.report_data,
                               EvidenceConfig(policy=pinned, now=AT))["policy_debug"] is True


def test_a_real_vlek_report_passes_only_inside_the_vleks_validity() -> None:
    real = _real("milan-v3-vlek", "report.bin", "vlek.der", str(GUID_VLEK))
    certs = real.certs + _amd_chain("ask_ark_milan_vlek.pem")
    # the guest asked at VMPL 1 (under an SVSM): the default policy wants VMPL 0
    error = refusal(real, EvidenceConfig(now=AT), certs=certs)
    assert error.reason == "policy" and error.detail.startswith("report.vmpls: expected 0")
    vmpl1 = Policy.from_toml("[report]\nvmpls = [1]\nsigning_keys = ['vlek']\n")
    claims = verify_snp_evidence(real.report, certs, real.report_data,
                                 EvidenceConfig(policy=vmpl1, now=AT))
    assert claims["signer"] == "VLEK" and claims["report_version"] == 3
    assert claims["chip_id"] == "00" * 64 and claims["vmpl"] == 1
    late = EvidenceConfig(policy=vmpl1,
                          now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    error = refusal(real, late, certs=certs)
    assert error.reason == "chain" and "has expired" in error.detail


# -- resource policies ------------------------------------------------------------------------

RESOURCE_POLICY = """
[[rules]]
resources = ["prod/keys/*"]
[rules.claims]
measurement = ["aa", "bb"]
policy_debug = false
[rules.at_least]
reported_tcb_snp = 8

[[rules]]
resources = ["prod/*/banned"]
allow = false

[[rules]]
resources = ["dev/*/*"]
"""
CLAIMS = {"measurement": "bb", "policy_debug": False, "reported_tcb_snp": 8}


def test_resource_policy_rules_decide_per_path_default_deny() -> None:
    def decide(path: str, **changes: object) -> Decision:
        return evaluate_resource_policy(RESOURCE_POLICY, path, {**CLAIMS, **changes})

    assert decide("prod/keys/disk") == Decision(True, "rules[0] allows prod/keys/disk")
    assert decide("dev/anything/at-all").allowed
    refused = {
        "measurement": decide("prod/keys/disk", measurement="cc"),
        "policy_debug": decide("prod/keys/disk", policy_debug=True),
        "reported_tcb_snp": decide("prod/keys/disk", reported_tcb_snp=7),
        "0": decide("prod/keys/disk", policy_debug=0),  # 0 is not false
        "default deny": decide("prod/certs/web"),
        "denies": decide("prod/other/banned"),
        "not a resource path": decide("prod/keys/a/b"),
    }
    for word, decision in refused.items():
        assert not decision.allowed and word in decision.reason, (word, decision)
    missing = evaluate_resource_policy(RESOURCE_POLICY, "prod/keys/disk", {})
    assert not missing.allowed and "None" in missing.reason
    assert not decide("prod/keys/..").allowed and not decide("prod//disk").allowed
    assert not evaluate_resource_policy("", "dev/a/b", CLAIMS).allowed  # no rules: deny all
    # `*` stays inside its segment
    assert not evaluate_resource_policy('[[rules]]\nresources = ["*/*/*"]\n',
                                        "a/b/c/d", CLAIMS).allowed


def test_resource_policy_works_on_verified_claims(milan: Evidence) -> None:
    claims = verify_snp_evidence(milan.report, milan.certs, milan.report_data, SEVSIM)
    text = (f'[[rules]]\nresources = ["repo/key/*"]\n[rules.claims]\n'
            f'measurement = "{claims["measurement"]}"\nsigner = "VCEK"\npolicy_debug = false\n')
    assert ResourcePolicy.from_toml(text).decide("repo/key/1", claims).allowed
    assert not ResourcePolicy.from_toml(text.replace(claims["measurement"], "00" * 48)).decide(
        "repo/key/1", claims).allowed


@pytest.mark.parametrize(("text", "key"), [
    ("rules = 1", "rules"),
    ("[[rules]]\nresource = ['a/b/c']", "rules[0].resource"),
    ("[[rules]]\nallow = true", "rules[0].resources"),
    ("[[rules]]\nresources = []", "rules[0].resources"),
    ("[[rules]]\nresources = ['a/b']", "rules[0].resources[0]"),
    ("[[rules]]\nresources = ['a//c']", "rules[0].resources[0]"),
    ("[[rules]]\nresources = [1]", "rules[0].resources[0]"),
    ("[[rules]]\nresources = ['a/b/c']\nallow = 'yes'", "rules[0].allow"),
    ("[[rules]]\nresources = ['a/b/c']\nclaims = 1", "rules[0].claims"),
    ("[[rules]]\nresources = ['a/b/c']\n[rules.claims]\nx = []", "rules[0].claims.x"),
    ("[[rules]]\nresources = ['a/b/c']\n[rules.claims]\nx = 1.5", "rules[0].claims.x"),
    ("[[rules]]\nresources = ['a/b/c']\n[rules.claims]\nx = [1, {a = 1}]",
     "rules[0].claims.x[1]"),
    ("[[rules]]\nresources = ['a/b/c']\n[rules.at_least]\nx = true", "rules[0].at_least.x"),
    ("[[rules]]\nresources = ['a/b/c']\n[rules.at_least]\nx = '8'", "rules[0].at_least.x"),
    ("[rules]\nresources = ['a/b/c']", "rules"),
    ("[other]", "other"),
    ("not toml =", "toml"),
])
def test_a_bad_resource_policy_is_a_policy_error(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as raised:
        evaluate_resource_policy(text, "a/b/c", CLAIMS)
    assert raised.value.key == key


REGO_POLICY = """# release prod keys to one measurement, anything under dev/ to any TEE
package policy

default allow := false

allow if {
    split(data["resource-path"], "/")[1] == "prod"
    input.measurement == "bb"
    input.policy_debug == false
}

allow if {
    split(data["resource-path"], "/")[1] == "dev"
    data.plugin == "resource"
}
"""
# Trustee's default, as its words say: the resource plugin, for any requester but the sample TEE
TRUSTEE_DEFAULT = """package policy
default allow := false
allow if {
    data.plugin == "resource"
    input.tee != "sample"
}
"""


def test_a_rego_resource_policy_decides_by_claims_and_path() -> None:
    assert isinstance(parse_resource_policy(REGO_POLICY), RegoResourcePolicy)
    assert isinstance(parse_resource_policy(RESOURCE_POLICY), ResourcePolicy)

    def decide(path: str, **changes: object) -> Decision:
        return evaluate_resource_policy(REGO_POLICY, path, {**CLAIMS, **changes})

    assert decide("prod/keys/disk") == Decision(True, "data.policy.allow is true for "
                                                "prod/keys/disk")
    assert decide("dev/a/b", measurement="cc").allowed
    for refused in (decide("prod/keys/disk", measurement="cc"),
                    decide("prod/keys/disk", policy_debug=True),
                    decide("prod/keys/disk", policy_debug=0),  # Rego too: 0 is not false
                    decide("other/keys/disk")):
        assert refused == Decision(False, "data.policy.allow is false, not true, for "
                                   + refused.reason.rsplit(" ", 1)[-1]), refused
    assert "not a resource path" in decide("prod/keys/a/b").reason
    assert not decide("prod/keys/..").allowed


def test_trustee_shaped_rego_policies_decide_on_verified_claims(milan: Evidence) -> None:
    claims = verify_snp_evidence(milan.report, milan.certs, milan.report_data, SEVSIM)
    assert evaluate_resource_policy(TRUSTEE_DEFAULT, "default/key/1", claims).allowed
    assert not evaluate_resource_policy(TRUSTEE_DEFAULT, "default/key/1",
                                        {**claims, "tee": "sample"}).allowed
    # Trustee's tests' style: a path segment compared with a claim (here the tag names the
    # measurement a key belongs to); the data document's path has Trustee's leading slash
    by_tag = ('package policy\nallow if {\n  data["resource-path"] == concat("/", '
              '["", "repo", "key", input.measurement])\n}\n')
    policy = RegoResourcePolicy.from_rego(by_tag)
    assert policy.decide(f"repo/key/{claims['measurement']}", claims).allowed
    undefined = policy.decide(f"repo/key/{'00' * 48}", claims)
    assert not undefined.allowed and "undefined" in undefined.reason


@pytest.mark.parametrize(("text", "key", "words"), [
    ("package policy\n\nallow if {\n  input.tee != \n", "rego:3", "unclosed"),
    ("# a comment\n\npackage other\nallow := true\n", "rego:3", "package policy"),
    ("package policy.sub\nallow := true\n", "rego:1", "package policy"),
])
def test_a_bad_rego_policy_is_a_policy_error(text: str, key: str, words: str) -> None:
    with pytest.raises(PolicyError) as raised:
        evaluate_resource_policy(text, "a/b/c", CLAIMS)
    assert raised.value.key == key and words in str(raised.value), raised.value


@pytest.mark.parametrize(("body", "words"), [
    ('allow := "yes"', 'data.policy.allow is "yes", not true'),
    ("allow := 1", "data.policy.allow is 1, not true"),  # 1 == True in Python: not here
    ("allow := true\nallow := false", "did not evaluate"),  # conflicting values
    ("allow if { 1 / 0 }", "undefined"),
    ("deny := true", "undefined"),
])
def test_a_rego_allow_that_is_not_true_is_a_refusal(body: str, words: str) -> None:
    decision = evaluate_resource_policy(f"package policy\n{body}\n", "a/b/c", CLAIMS)
    assert not decision.allowed and words in decision.reason, decision


def test_attestation_policy_text_is_checked_strictly(milan: Evidence) -> None:
    assert evaluate_attestation_policy("", milan.report).allowed
    with pytest.raises(PolicyError) as raised:
        evaluate_attestation_policy("[guest]\nmeasurement = 'aa'\n", milan.report)
    assert raised.value.key == "guest.measurement"
    decision = evaluate_attestation_policy("[report]\nvmpls = [1]\n", milan.report)
    assert not decision.allowed and decision.reason.startswith("report.vmpls: expected 1")
