"""Fuzzing every attestation-facing parser: whatever bytes come in, a parser either returns a
value (that serialises back to exactly those bytes where the format allows one encoding) or
raises one of the typed errors its target names; nothing else escapes (no IndexError,
struct.error, OverflowError, UnicodeDecodeError, TypeError...).

Inputs are real structures (AMD's reports and VCEKs from shared/data, and sevsim's own),
mutated by hypothesis — bytes changed, cut short, extended — format-aware variants (OVMF images
built from drawn sections, policies with lines rewritten, certificates mutated inside their PEM)
and arbitrary bytes. Beyond the SNP structures: OVMF images and the launch digests measured
from what parses, validation policies and the checks they configure, certificate bundles
(directory or certificate table) run through chain and report verification, GCE launch
endorsements run through their verification, the key broker's resource policies and the
decisions they make, reports run through the key broker's evidence verifier, the key
broker's JSON messages (members replaced, dropped or added), JWEs and tokens, UEFI signature
lists, and signed programs through the secure-boot check (which must return a verdict). The
default run takes 300 inputs per target; the test marked `fuzz` (`pytest -m fuzz`, run by
.ci/run) takes FUZZ_EXAMPLES inputs spread over all of them, 100,000 unless set.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovmf_images import make_ovmf
from sevsim.abi import efi_siglist, module_signature
from sevsim.abi.gce_endorsement import GoldenMeasurement, LaunchEndorsement
from sevsim.abi.kbs import (
    KBS_PROTOCOL_VERSION,
    Attestation,
    Challenge,
    EcPublicJwk,
    InitData,
    Request,
    RuntimeData,
    TeeEvidence,
    load_json,
)
from sevsim.abi.kbs_snp import snp_evidence_from_json, snp_evidence_to_json
from sevsim.abi.ovmf import (
    OvmfError,
    OvmfImage,
    SectionType,
)
from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_guest_msg import (
    KeyRequest,
    MessageHeader,
    MsgType,
    ReportRequest,
    SecretsPage,
    seal_message,
)
from sevsim.abi.snp_idblock import IdAuthInfo, IdBlock
from sevsim.abi.snp_launch import PAGE_SIZE
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    AttestationReport,
    ReportResponse,
    build_cert_table,
    parse_cert_table,
)
from sevsim.abi.snp_tcb import Generation, PlatformInfo, SnpPolicy, TcbVersion
from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, gce_boot, grub_command
from sevsim.abi.tpm2 import (
    marshal_signature,
    parse_ecc_public,
    parse_pcr_read_response,
    parse_quote_response,
    parse_signature,
)
from sevsim.attest.gce_endorsement import simulated_google_root, verify_endorsement
from sevsim.attest.integrity import IntegrityBaseline
from sevsim.attest.measure import sev_ovmf_digest, seves_ovmf_digest, snp_ovmf_digest
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.attest.snp_verify import CertBundle, verify_certificate_chain, verify_report_chain
from sevsim.attest.tpm_boot import verify_boot
from sevsim.attest.tpm_quote import verify_quote
from sevsim.errors import (
    ConfigError,
    EndorsementError,
    EndorsementFormatError,
    EventLogError,
    KbsCryptoError,
    KbsEvidenceError,
    KbsProtocolError,
    PolicyError,
    QuoteError,
    SignatureListError,
    SnpFormatError,
    SnpVerificationError,
    TpmError,
    TpmFormatError,
)
from sevsim.firmware.gce_endorser import simulated_endorser
from sevsim.guest import secure_boot
from sevsim.guest.signing import sign_program
from sevsim.host.secure_boot import SecureBootConfig
from sevsim.kbs.jose import TokenSigner, decrypt_jwe, encrypt_to_tee
from sevsim.kbs.policy import ResourcePolicy
from sevsim.kbs.verifier import EvidenceConfig, verify_snp_evidence

VECTORS = Path(__file__).resolve().parent / "data" / "snp"
EXAMPLE_POLICY = Path(__file__).resolve().parent.parent / "examples" / "policy.toml"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100000"))
TPM = Path(__file__).resolve().parent / "data" / "tpm" / "swtpm-quote"  # swtpm's own bytes
BOOT = TPM.parent / "swtpm-boot"  # a boot log and swtpm's quote of what it measured


@dataclass(frozen=True)
class Target:
    """A parser, the seeds its mutations start from, and the typed errors it may refuse
    input with: anything else escaping fails the test."""

    parse: Callable[[bytes], object]
    unparse: Callable[[object], bytes] | None  # None: not byte-exact (e.g. DER re-encoding)
    seeds: tuple[bytes, ...]
    errors: tuple[type[Exception], ...] = (SnpFormatError,)
    structured: st.SearchStrategy[bytes] | None = None  # format-aware inputs besides bytes


def _report_seeds() -> tuple[bytes, ...]:
    seeds = [(VECTORS / "milan-v2-a" / "report.bin").read_bytes(),
             bytes.fromhex((VECTORS / "milan-v2-b" / "report.hex").read_text().strip())]
    for version in (3, 5):
        seeds.append(AttestationReport(version=version, cpuid_fam_id=0x1A if version == 5
                                       else 0x19).to_bytes())
    return tuple(seeds)


def _event_log_seed() -> bytes:
    log = gce_boot(ConfidentialTechnology.AMD_SEV_SNP, secure_boot={"SecureBoot": b"\x01"},
                   program=b"\x7fELF", program_path="\\prog.elf", cmdline="quiet",
                   files=[("/boot/vmlinuz", b"kernel")])
    log.measure(grub_command("insmod tpm"))
    return log.to_bytes()


def _signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fixed ECDSA key and its self-signed certificate: the db of the secure-boot target."""
    key = ec.derive_private_key(11, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fuzz signer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(42)
            .not_valid_before(datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2035, 1, 1, tzinfo=datetime.UTC))
            .sign(key, hashes.SHA256()))
    return key, cert


SB_KEY, SB_CERT = _signer()
SB_VARIABLES = SecureBootConfig(db=(SB_CERT,), dbx_hashes=(bytes(32),)).variables()
SB_PROGRAM = b"\x7fELF" + bytes(range(60))


def _signed_program_seeds() -> tuple[bytes, ...]:
    """The program signed as `sevsim guest sign` signs (no attributes) and with signed
    attributes (messageDigest...), as `openssl cms -sign` signs."""
    with_attributes = (pkcs7.PKCS7SignatureBuilder().set_data(SB_PROGRAM)
                       .add_signer(SB_CERT, SB_KEY, hashes.SHA256())
                       .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                          pkcs7.PKCS7Options.Binary]))
    key_pem = SB_KEY.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return (sign_program(SB_PROGRAM, key_pem, SB_CERT.public_bytes(serialization.Encoding.PEM)),
            module_signature.append(SB_PROGRAM, with_attributes))


def _id_auth_seed() -> bytes:
    key = ec.derive_private_key(7, ec.SECP384R1())
    return IdAuthInfo.create(IdBlock(bytes(48)), key, key).to_bytes()


def _tcb(value: bytes) -> TcbVersion:
    return TcbVersion.from_int(int.from_bytes(value[:8].ljust(8, b"\0"), "little"),
                               (Generation.MILAN, Generation.TURIN)[len(value) % 2])


def _u64(parse: Callable[[int], object]) -> Callable[[bytes], object]:
    def go(blob: bytes) -> object:
        if len(blob) != 8:
            raise SnpFormatError("u64", "8 bytes")
        return parse(int.from_bytes(blob, "little"))
    return go


VCEKS = tuple((VECTORS / name / "vcek.der").read_bytes()
              for name in ("milan-v2-a", "milan-v2-b", "turin-vcek"))


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few bytes changed, then perhaps cut short or extended."""
    blob = bytearray(draw(st.sampled_from(seeds)))
    poke(draw, blob, 0)
    cut = draw(st.sampled_from(("keep", "keep", "cut", "extend")))
    if cut == "cut":
        del blob[draw(st.integers(0, len(blob))):]
    elif cut == "extend":
        blob += draw(st.binary(min_size=1, max_size=64))
    return bytes(blob)


def poke(draw: st.DrawFn, blob: bytearray, start: int) -> None:
    """Change up to four bytes at or after `start` (where the structure is)."""
    for _ in range(draw(st.integers(0, 4))):
        if len(blob) > start:
            blob[draw(st.integers(start, len(blob) - 1))] = draw(st.integers(0, 255))


# -- OVMF images, and the launch digests measured from them --------------------------------------

OVMF_ERRORS = (OvmfError, ConfigError)
METADATA_AT = 0x200  # the SEV metadata sits this far before the end, below the footer table
MEASURED_LIMIT = 64 * PAGE_SIZE  # bigger sections parse but are not measured: time, no coverage
SECTIONS = ((0x800000, 0x3000, SectionType.SNP_SEC_MEM),
            (0x803000, 0x1000, SectionType.SNP_SECRETS), (0x804000, 0x1000, SectionType.CPUID),
            (0x805000, 0x1000, SectionType.SNP_KERNEL_HASHES),
            (0x806000, 0x2000, SectionType.SVSM_CAA))


def ovmf_image(sections: Sequence[tuple[int, int, int]], *, pages: int = 2,
               reset_eip: int = 0x80B004, hash_table_gpa: int = 0x805000) -> bytes:
    """A small OVMF image: metadata METADATA_AT bytes before the end, below the footer table."""
    return make_ovmf(sections, size=pages * PAGE_SIZE, metadata_at=METADATA_AT,
                     reset_eip=reset_eip, hash_table_gpa=hash_table_gpa)


_U32 = st.integers(0, 0xFFFFFFFF)
_SECTION = st.tuples(st.one_of(st.sampled_from((0, 0x800000, 0x805000, 0x805800)), _U32),
                     st.one_of(st.sampled_from((0, 0x800, 0x1000, 0x2000)), _U32),
                     st.one_of(st.sampled_from(SectionType), _U32))


@st.composite
def ovmf_inputs(draw: st.DrawFn) -> bytes:
    """An image built from drawn sections, reset block and hashes table, its footer and
    metadata then poked: byte flips over a whole image would mostly hit zero padding."""
    blob = bytearray(ovmf_image(draw(st.lists(_SECTION, max_size=8)),
                                pages=draw(st.integers(1, 4)), reset_eip=draw(_U32),
                                hash_table_gpa=draw(st.one_of(st.just(0x805000), _U32))))
    poke(draw, blob, len(blob) - METADATA_AT)
    return bytes(blob)


def measure_ovmf(blob: bytes) -> OvmfImage:
    """Parse, then measure what parses the ways a relying party would (every mode and VMM,
    with and without a kernel, one vCPU and several)."""
    image = OvmfImage.parse(blob)
    if sum(section.size for section in image.sections) > MEASURED_LIMIT:
        return image
    for digest, size in ((functools.partial(snp_ovmf_digest, image, 2, "EPYC-Milan"), 48),
                         (functools.partial(snp_ovmf_digest, image, 1, vmm_type="gce",
                                            kernel=b"kernel", append="console=ttyS0"), 48),
                         (functools.partial(snp_ovmf_digest, image, 3, vmm_type="ec2"), 48),
                         (functools.partial(seves_ovmf_digest, image, 2, "EPYC-v4",
                                            kernel=b"kernel"), 32),
                         (functools.partial(sev_ovmf_digest, image, kernel=b"kernel"), 32)):
        with contextlib.suppress(*OVMF_ERRORS):
            assert len(digest()) == size
    return image


# -- validation policies, and the checks they configure ------------------------------------------

POLICY_SEEDS = (EXAMPLE_POLICY.read_bytes(), b"""
[report]
versions = [5]
signing_keys = ["vcek", "vlek"]
vmpls = [0, 1]
chip_ids = ["0x0102030405060708"]
[guest]
id_key_digests = ["%(d48)s"]
author_key_digests = ["%(d48)s"]
family_id = "%(d16)s"
image_id = "%(d16)s"
report_data = "%(d64)s"
[guest_policy]
allow_debug = true
require_aes_256_xts = true
[platform]
alias_check_complete = true
tio_enabled = false
[tcb.launch]
fmc = 1
[tcb.current]
bootloader = 0
""" % {b"d16": b"ab" * 16, b"d48": b"cd" * 48, b"d64": b"ef" * 64})
TOML_VALUES = ("true", "0", "-1", "255", "256", "4294967296", "18446744073709551616", "1.5",
               "nan", "-inf", '""', '"0x"', '"zz"', '"00"', '"0x0"', '"1.2.3"', '"256.0.0"',
               '"1.2"', '"vcek"', '"vlek"', "[]", "[[]]", "[[1]]", "[{}]", "[1, 2]",
               '["vcek", 1]', '["ab", "cd"]', "{}", "{ snp = 1 }", "1979-05-27", "12:00:00",
               '"' + "ab" * 48 + '"', '"' + "ab" * 65 + '"')
TOML_KEYS = ("versions", "min_version", "signing_keys", "vmpls", "chip_ids", "measurements",
             "host_data", "report_data", "report_data_prefix", "min_svn", "allow_debug",
             "require_single_socket", "smt_enabled", "tio_enabled", "bootloader", "fmc",
             "min_current", "report", "tcb", "reported", "bogus", '"x.y"', "tcb.reported.snp")
TOML_SECTIONS = ("report", "guest", "guest_policy", "platform", "tcb", "tcb.reported",
                 "tcb.launch", "tcb.bogus", "tcb.reported.snp", "firmware", "bogus", "[report]")


@st.composite
def policy_inputs(draw: st.DrawFn, seeds: tuple[bytes, ...] = POLICY_SEEDS,
                  keys: tuple[str, ...] = TOML_KEYS,
                  sections: tuple[str, ...] = TOML_SECTIONS) -> bytes:
    """A seed policy with lines given other values, keys or sections, dropped or repeated: it
    stays TOML often enough to reach the schema checks, which byte flips rarely do."""
    lines = draw(st.sampled_from(seeds)).decode().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(("value", "value", "value", "key", "drop", "repeat",
                                       "section")))
        settings = [i for i, line in enumerate(lines) if "=" in line.split("#")[0]]
        i = draw(st.sampled_from(settings) if action in ("value", "key") and settings
                 else st.integers(0, len(lines) - 1))
        key, equals, value = lines[i].partition("=")
        if action == "value" and equals:
            lines[i] = f"{key}= {draw(st.sampled_from(TOML_VALUES))}"
        elif action == "key" and equals:
            lines[i] = f"{draw(st.sampled_from(keys))} ={value}"
        elif action == "drop" and len(lines) > 1:
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif action == "section":
            lines[i] = f"[{draw(st.sampled_from(sections))}]"
    return "\n".join(lines).encode()


def validate_with(blob: bytes) -> Policy:
    """Parse a policy (any bytes: undecodable ones become lone surrogates, which a str API
    can be handed) and run every check it configures on a v2 and a v5 report."""
    policy = Policy.from_toml(blob.decode("utf-8", "surrogateescape"))
    for report in (_report_seeds()[1], _report_seeds()[3]):
        validate_report(report, policy)
    return policy


# -- KBS resource policies, and the decisions they make ------------------------------------------

RESOURCE_POLICY_SEEDS = (b'''
[[rules]]
resources = ["prod/keys/*"]
allow = true
[rules.claims]
measurement = ["ab", "cd"]
policy_debug = false
[rules.at_least]
reported_tcb_snp = 8
[[rules]]
resources = ["dev/*/*"]
''',)
RESOURCE_KEYS = ("resources", "allow", "claims", "at_least", "rules", "measurement", "bogus")
RESOURCE_SECTIONS = ("[rules]", "rules", "rules.claims", "rules.at_least", "rules.bogus",
                     "bogus")


def decide_with(blob: bytes) -> ResourcePolicy:
    """Parse a resource policy (any bytes, as for validation policies) and decide paths."""
    policy = ResourcePolicy.from_toml(blob.decode("utf-8", "surrogateescape"))
    claims = {"measurement": "ab", "policy_debug": False, "reported_tcb_snp": 9}
    for path in ("prod/keys/disk", "dev/a/b", "prod/keys", "prod/../keys", ""):
        policy.decide(path, claims)
    return policy


# -- certificate bundles, through chain and report verification ----------------------------------

MILAN = VECTORS / "milan-v2-b"
MILAN_REPORT = bytes.fromhex((MILAN / "report.hex").read_text().strip())
MILAN_CHAIN = tuple(x509.load_pem_x509_certificates((MILAN / "cert_chain.pem").read_bytes()))
ASK_DER, ARK_DER = (cert.public_bytes(serialization.Encoding.DER) for cert in MILAN_CHAIN)
VERIFY_AT = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)  # inside the real VCEKs' validity
BUNDLE_ERRORS = (SnpFormatError, SnpVerificationError)
KBS_EVIDENCE = EvidenceConfig(policy=Policy(vmpls=frozenset(range(4))), now=VERIFY_AT)


def kbs_verify(blob: bytes) -> object:
    """A report through the key broker's verifier with the real Milan chain, expecting the
    REPORT_DATA it carries, so a mutation that keeps the signature reaches the policy."""
    certs = [(str(GUID_VCEK), VCEKS[1]), (str(GUID_ASK), ASK_DER), (str(GUID_ARK), ARK_DER)]
    return verify_snp_evidence(blob, certs, blob[0x50:0x90].ljust(64, b"\0"), KBS_EVIDENCE)


def pem(*ders: bytes) -> bytes:
    return b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
                    + b"-----END CERTIFICATE-----\n" for der in ders)


@functools.cache
def scratch() -> Path:
    """One directory, reused by every bundle input and removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="sevsim-fuzz-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def verify_bundle(bundle: CertBundle) -> CertBundle:
    """Verify the real Milan report and the chain alone: failures are results, and only
    raise_for_failure may raise (SnpVerificationError)."""
    verify_certificate_chain(bundle, "Milan", now=VERIFY_AT)
    verify_report_chain(MILAN_REPORT, bundle, now=VERIFY_AT).raise_for_failure()
    return bundle


def verify_directory(**files: bytes) -> CertBundle:
    directory = scratch()
    for old in directory.iterdir():
        old.unlink()
    for name, data in files.items():
        (directory / name.replace("_", ".", 1)).write_bytes(data)
    return verify_bundle(CertBundle.from_directory(directory))


@st.composite
def leaf_pems(draw: st.DrawFn) -> bytes:
    """A VCEK mutated as DER, then PEM-encoded: flips in base64 text rarely decode."""
    return pem(draw(mutated(VCEKS)))


@st.composite
def chain_pems(draw: st.DrawFn) -> bytes:
    ask, ark = ASK_DER, ARK_DER
    if draw(st.booleans()):
        ask = draw(mutated((ASK_DER,)))
    else:
        ark = draw(mutated((ARK_DER,)))
    return pem(ask, ark)


# -- GCE launch endorsements --------------------------------------------------------------

ENDORSED = bytes(range(48))  # the MEASUREMENT the seed endorses for 2 vCPUs
ENDORSEMENT = simulated_endorser().endorse(b"uefi", {1: bytes(48), 2: ENDORSED})


def verify_gce(blob: bytes) -> object:
    return verify_endorsement(blob, ENDORSED, root=simulated_google_root(), vcpus=2)


@st.composite
def endorsement_inputs(draw: st.DrawFn) -> bytes:
    """The seed with its golden measurement, or the signer certificate inside it, mutated and
    wrapped again: the outer message parses, the inner checks run."""
    parsed = LaunchEndorsement.from_bytes(ENDORSEMENT)
    golden = parsed.serialized_uefi_golden
    if draw(st.booleans()):
        golden = draw(mutated((golden,)))
    else:
        fields = GoldenMeasurement.from_bytes(golden)
        golden = replace(fields, cert=draw(mutated((fields.cert,)))).to_bytes()
    return LaunchEndorsement(golden, parsed.signature).to_bytes()


# -- key broker messages (JSON) ------------------------------------------------------------------

KBS_KEY = ec.derive_private_key(0x4B42, ec.SECP256R1())
KBS_JWK = EcPublicJwk.from_key(KBS_KEY.public_key())
KBS_SIGNER = TokenSigner(KBS_KEY)
JSON_VALUES = (None, True, 0, -1, 255, 256, 1 << 64, 1.5, 1e308, "", "snp", "P-256", "AA",
               "\ud800", "0123abcd-0000-4000-8000-00000000beef", [], [0], [256], {},
               {"OTHER": "x"}, {"kty": "EC"})


def _json_seed(obj: object) -> bytes:
    return json.dumps(obj).encode()


def kbs_seeds() -> dict[str, tuple[bytes, ...]]:
    runtime = RuntimeData("bm9uY2U", KBS_JWK)
    attestation = Attestation(runtime, None, TeeEvidence({"x": [1]}, '{"sample": {}}'))
    evidence = snp_evidence_to_json(_report_seeds()[3], [(str(GUID_VCEK), VCEKS[0][:64])])
    return {
        "request": (_json_seed(Request(KBS_PROTOCOL_VERSION, "snp", {"supported-hash-algorithms":
                                                        ["sha384"]}).to_json()),),
        "challenge": (_json_seed(Challenge("n", {"selected-hash-algorithm": "sha512"})
                                 .to_json()),),
        "attestation": (_json_seed({**attestation.to_json(), "init-data": {
            "format": "toml", "body": "a = 1"}}),),
        "runtime": (_json_seed(runtime.to_json()),),
        "init-data": (b'version = "0.1.0"\nalgorithm = "sha384"\n\n[data]\n"aa.toml" = """\n'
                      b'[token_configs.kbs]\nurl = "http://127.0.0.1:8080"\n"""\n',),
        "snp": (*(_json_seed(snp_evidence_to_json(seed, None)) for seed in
                  _report_seeds()[:2]), _json_seed(evidence)),
        "jwe": (_json_seed(encrypt_to_tee(KBS_JWK, b"secret")),),
        "token": (KBS_SIGNER.issue({"tee": "snp"}, 3600, now=1_700_000_000).encode(),),
    }


KBS_SEEDS = kbs_seeds()


def _json_paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _json_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:8]):  # a few entries of a byte array suffice
            out += _json_paths(item, (*path, index))
    return out


@st.composite
def json_inputs(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed message with members replaced, dropped or added: it stays JSON, so it reaches
    the member checks, which byte flips in JSON text rarely do."""
    doc = json.loads(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_json_paths(doc)))
        if not path:
            continue
        parent = functools.reduce(lambda node, key: node[key], path[:-1], doc)
        action = draw(st.sampled_from(("replace", "replace", "drop", "add")))
        if action == "replace":
            # a fresh copy: a shared list inserted twice would be mutated through both
            parent[path[-1]] = json.loads(json.dumps(draw(st.sampled_from(JSON_VALUES))))
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(("extra", "fmc", "OTHER", "kid")))] = 0
    return json.dumps(doc).encode()


@st.composite
def jwe_header_inputs(draw: st.DrawFn) -> bytes:
    """The seed JWE with its protected header (alg, enc, epk) mutated as JSON and re-encoded:
    the header is base64url, so neither byte flips nor member swaps reach inside it."""
    message = json.loads(KBS_SEEDS["jwe"][0])
    protected = draw(json_inputs((base64.urlsafe_b64decode(message["protected"] + "=="),)))
    message["protected"] = base64.urlsafe_b64encode(protected).rstrip(b"=").decode()
    return json.dumps(message).encode()


def kbs_target(parse: Callable[[bytes], object], seeds: str,
               errors: tuple[type[Exception], ...] = (KbsProtocolError,)) -> Target:
    return Target(parse, None, KBS_SEEDS[seeds], errors, json_inputs(KBS_SEEDS[seeds]))


def snp_evidence_round_trip(blob: bytes) -> object:
    """What parses turns back into JSON that parses to the same evidence."""
    evidence = snp_evidence_from_json(blob)
    assert snp_evidence_from_json(snp_evidence_to_json(evidence.report, evidence.certs)) == \
        evidence
    return evidence


def attestation_and_bindings(blob: bytes) -> object:
    attestation = Attestation.from_json(blob)
    for name in ("sha256", "sha384", "sha512"):
        assert len(attestation.report_data(name)) == 64
    assert len(attestation.runtime_data.report_data()) == 64
    assert Attestation.from_json(attestation.to_json()) == attestation
    return attestation


TARGETS: dict[str, Target] = {
    "attestation report": Target(AttestationReport.from_bytes,
                                 lambda r: r.to_bytes(),  # type: ignore[attr-defined]
                                 _report_seeds()),
    "report response": Target(ReportResponse.from_bytes, None,
                              (ReportResponse(0, _report_seeds()[0]).to_bytes(),)),
    "certificate table": Target(parse_cert_table, None, (
        build_cert_table([(GUID_VCEK, VCEKS[0]), (GUID_ASK, b"ask"), (GUID_ARK, b"ark")]),
        build_cert_table([(uuid.UUID(int=1), b"x" * 40)]))),
    "VCEK certificate": Target(SnpCertificate.from_der, None, VCEKS),
    "ID block": Target(IdBlock.from_bytes, lambda b: b.to_bytes(),  # type: ignore[attr-defined]
                       (IdBlock(bytes(range(48)), b"F" * 16, b"I" * 16, 3, 0x30000).to_bytes(),)),
    "ID auth info": Target(IdAuthInfo.from_bytes, None, (_id_auth_seed(),)),
    "guest message header": Target(MessageHeader.from_bytes, None, (seal_message(
        bytes(range(32)), MsgType.REPORT_REQ, 1, ReportRequest().to_bytes(), vmpck=1),)),
    "key request": Target(KeyRequest.from_bytes, None, (KeyRequest().to_bytes(),)),
    "secrets page": Target(SecretsPage.from_bytes, None,
                           (SecretsPage((bytes(32),) * 4).to_bytes(),)),
    "TCB version": Target(_tcb, None, (bytes(8), bytes(9))),
    "guest policy": Target(_u64(SnpPolicy.from_int), None, ((0x30000).to_bytes(8, "little"),)),
    "platform info": Target(_u64(PlatformInfo.from_int), None, ((1).to_bytes(8, "little"),)),
    "OVMF image and digests": Target(
        measure_ovmf, None, (ovmf_image(SECTIONS), ovmf_image(SECTIONS, pages=4),
                             ovmf_image(SECTIONS[:3], pages=3, hash_table_gpa=0)),
        OVMF_ERRORS, ovmf_inputs()),
    "validation policy": Target(validate_with, None, POLICY_SEEDS, (PolicyError,),
                                policy_inputs()),
    "KBS resource policy": Target(decide_with, None, RESOURCE_POLICY_SEEDS, (PolicyError,),
                                  policy_inputs(RESOURCE_POLICY_SEEDS, RESOURCE_KEYS,
                                                RESOURCE_SECTIONS)),
    "KBS evidence": Target(kbs_verify, None, (MILAN_REPORT,), (KbsEvidenceError,)),
    "cert bundle: leaf file": Target(
        lambda blob: verify_directory(vcek_pem=blob, cert_chain_pem=pem(ASK_DER, ARK_DER)),
        None, (VCEKS[1], pem(VCEKS[1])), BUNDLE_ERRORS, leaf_pems()),
    "cert bundle: chain file": Target(
        lambda blob: verify_directory(vcek_der=VCEKS[1], cert_chain_pem=blob), None,
        ((MILAN / "cert_chain.pem").read_bytes(),), BUNDLE_ERRORS, chain_pems()),
    "cert bundle: certificate table": Target(
        lambda blob: verify_bundle(CertBundle.from_cert_table(blob)), None,
        (build_cert_table([(GUID_VCEK, VCEKS[1]), (GUID_ASK, ASK_DER), (GUID_ARK, ARK_DER)]),),
        BUNDLE_ERRORS),
    "GCE launch endorsement": Target(verify_gce, None, (ENDORSEMENT,), (EndorsementError,),
                                     endorsement_inputs()),
    "KBS request": kbs_target(Request.from_json, "request"),
    "KBS challenge": kbs_target(
        lambda blob: Challenge.from_json(blob).hash_algorithm(), "challenge"),
    "KBS attestation and REPORT_DATA": kbs_target(attestation_and_bindings, "attestation"),
    "KBS runtime data": kbs_target(lambda blob: RuntimeData.from_json(blob).report_data(),
                                   "runtime"),
    "KBS SNP evidence": kbs_target(snp_evidence_round_trip, "snp"),
    "KBS init-data digest": Target(
        lambda blob: InitData("toml", blob.decode("utf-8", "surrogateescape")).host_data(),
        None, KBS_SEEDS["init-data"], (KbsProtocolError,)),
    "KBS JWE (TEE side)": Target(lambda blob: decrypt_jwe(KBS_KEY, load_json(blob, "jwe")),
                                 None, KBS_SEEDS["jwe"], (KbsProtocolError, KbsCryptoError),
                                 st.one_of(json_inputs(KBS_SEEDS["jwe"]), jwe_header_inputs())),
    "KBS token": Target(lambda blob: KBS_SIGNER.verify(blob.decode("utf-8", "surrogateescape"),
                                                       now=1_700_000_100),
                        None, KBS_SEEDS["token"], (KbsCryptoError,)),
    "TPM quote through verify_quote": Target(
        lambda blob: verify_quote((TPM / "ak.public").read_bytes(), blob,
                                  (TPM / "quote.signature").read_bytes(),
                                  (TPM / "nonce.bin").read_bytes(),
                                  parse_pcr_read_response((TPM / "pcr_read.response")
                                                          .read_bytes()).values),
        None, ((TPM / "quote.attest").read_bytes(),), (QuoteError,)),
    "TPMT_SIGNATURE": Target(parse_signature, marshal_signature,  # type: ignore[arg-type]
                             ((TPM / "quote.signature").read_bytes(),), (TpmFormatError,)),
    "TPMT_PUBLIC (ECC)": Target(parse_ecc_public, None, ((TPM / "ak.public").read_bytes(),),
                                (TpmFormatError,)),
    "TPM2_Quote response": Target(parse_quote_response, None,
                                  ((TPM / "quote.response").read_bytes(),),
                                  (TpmFormatError, TpmError)),
    "TPM2_PCR_Read response": Target(parse_pcr_read_response, None,
                                     ((TPM / "pcr_read.response").read_bytes(),),
                                     (TpmFormatError, TpmError)),
    "GCE golden measurement": Target(
        GoldenMeasurement.from_bytes, None,
        (LaunchEndorsement.from_bytes(ENDORSEMENT).serialized_uefi_golden,),
        (EndorsementFormatError,)),
    "EFI signature list": Target(efi_siglist.parse, None,
                                 (SB_VARIABLES["db"] + SB_VARIABLES["dbx"],),
                                 (SignatureListError,)),
    # the firmware's check returns a verdict for any file: nothing may escape it
    "signed program through secure boot": Target(
        lambda blob: secure_boot.check(blob, SB_VARIABLES), None, _signed_program_seeds(), ()),
    "TCG event log": Target(EventLog.from_bytes, lambda log: log.to_bytes(),  # type: ignore[attr-defined]
                            (_event_log_seed(),), (EventLogError,)),
    "boot event log through verify_boot": Target(
        lambda blob: verify_boot((BOOT / "ak.public").read_bytes(),
                                 (BOOT / "quote.attest").read_bytes(),
                                 (BOOT / "quote.signature").read_bytes(),
                                 (BOOT / "nonce.bin").read_bytes(), blob),
        None, ((BOOT / "eventlog.bin").read_bytes(),), (QuoteError,)),
    "integrity baseline and check": Target(
        lambda blob: IntegrityBaseline.from_json(blob.decode("utf-8", "surrogateescape")).check(
            EventLog.from_bytes((BOOT / "eventlog.bin").read_bytes())),
        None, (IntegrityBaseline.learn(EventLog.from_bytes(
            (BOOT / "eventlog.bin").read_bytes())).to_json().encode(),), (PolicyError,)),
}


def _ark_subject_cn(offset: int, value: int) -> bytes:
    """The Milan certificate table with one byte of the ARK's subject CN (tag, length,
    text) changed: cryptography parses names lazily, so the damage shows only on use."""
    ark = bytearray(ARK_DER)
    ark[ark.rindex(b"\x0c\x09ARK-Milan") + offset] = value
    return build_cert_table([(GUID_VCEK, VCEKS[1]), (GUID_ASK, ASK_DER), (GUID_ARK, bytes(ark))])


def _ark_replaced(old: bytes, new: bytes) -> bytes:
    """The Milan certificate table with the first `old` in the ARK replaced by `new`."""
    ark = ARK_DER.replace(old, new, 1)
    assert ark != ARK_DER
    return build_cert_table([(GUID_VCEK, VCEKS[1]), (GUID_ASK, ASK_DER), (GUID_ARK, ark)])


# Inputs the fuzzing found escaping untyped, replayed on every run.
FOUND = (pytest.param("validation policy", b"[report]\nsigning_keys = [[1]]",
                      id="policy: a list in signing_keys (TypeError)"),
         pytest.param("cert bundle: certificate table", _ark_subject_cn(0, 0x00),
                      id="ARK subject CN with tag 0 (KeyError)"),
         pytest.param("cert bundle: certificate table", _ark_subject_cn(2, 0x80),
                      id="ARK subject CN not UTF-8 (ValueError)"),
         pytest.param("cert bundle: certificate table",
                      _ark_replaced(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x62"),
                      id="ARK version 99 (InvalidVersion)"),
         pytest.param("cert bundle: certificate table",
                      _ark_replaced(b"\x06\x03\x55\x04\x0b", b"\x06\x03\x55\x04\x06"),
                      id="ARK OU=Engineering as a country (UserWarning)"),
         pytest.param("signed program through secure boot",
                      _signed_program_seeds()[0].replace(b"\xa0\x03\x02\x01\x02",
                                                         b"\xa0\x03\x02\x01\x01", 1),
                      id="signer certificate of X.509 version 1 (InvalidVersion)"))


def check(name: str, blob: bytes) -> None:
    """Parse; a typed refusal is fine, anything else escaping is a bug, and what parses must
    serialise back byte for byte where the format allows only one encoding."""
    target = TARGETS[name]
    try:
        value = target.parse(blob)
    except target.errors:
        return
    if target.unparse is not None:
        assert target.unparse(value) == blob, "parsed, but does not serialise back"


@st.composite
def fuzz_inputs(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(names))
    target = TARGETS[name]
    sources = [mutated(target.seeds), st.binary(max_size=2048)]
    if target.structured is not None:
        sources.append(target.structured)
    return name, draw(st.one_of(sources))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parsers_fail_only_with_their_typed_errors(name: str) -> None:
    @fuzz_settings(300)
    @given(fuzz_inputs((name,)))
    def one(case: tuple[str, bytes]) -> None:
        check(*case)

    one()


@pytest.mark.fuzz
@fuzz_settings(EXAMPLES)
@given(fuzz_inputs(tuple(sorted(TARGETS))))
def test_fuzz_every_parser(case: tuple[str, bytes]) -> None:
    """FUZZ_EXAMPLES inputs (100,000 unless set), spread over every parser."""
    check(*case)


@pytest.mark.parametrize(("name", "blob"), FOUND)
def test_inputs_the_fuzzing_found(name: str, blob: bytes) -> None:
    check(name, blob)


def test_the_seeds_parse() -> None:
    """Mutations start from valid structures, or the fuzzing would only test rejections."""
    for target in TARGETS.values():
        for seed in target.seeds:
            target.parse(seed)
