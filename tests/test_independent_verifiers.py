"""Third-party SNP verifiers from PyPI accept sevsim's Milan and Genoa reports with sevsim's
root supplied, and refuse them with one byte of the signed region flipped or with AMD's real
root: sevsim's evidence is what independent code, not only sevsim's own verifier, says it is.

The reports come from a guest (`examples/report.c`) under `sevsim run --mode snp --certs-out`,
with its certificate table (VCEK, ASK, ARK); VCEKs also come from `sevsim kds serve` on
127.0.0.1. The root is taken three ways: as the report's certificate table carries it, as
`sevsim kds serve` serves it (`cert_chain`), and as sevsim ships it
(`sevsim/attest/roots/sevsim/snp/<product>/`, through `trusted_roots("sevsim", ...)`).

omne-attest 0.1.0 takes the root as an argument: the caller passes the VCEK, ASK and ARK DER
and the SHA-256 it pins the ARK to. It checks the report's ECDSA P-384 signature, VCEK <- ASK
<- ARK with RSASSA-PSS (SHA-384, salt 48), the ARK against the pin, the VCEK's hwID and TCB
extensions against CHIP_ID and REPORTED_TCB, and a policy (measurement, REPORT_DATA, VMPL 0,
no debug). Nothing is patched: sevsim's ARK is the pinned root.

dk-tee-attestation 0.6.5 parses the report with virtee's `sev` crate (reserved fields
checked), names the product from the report's CPUID, fetches `cert_chain` and the VCEK (by
CHIP_ID and REPORTED_TCB) from AMD's KDS, and checks the ARK's self-signature, the ASK by the
ARK, the VCEK by the ASK, the VCEK's hwID and TCB extensions, the report's signature and
REPORT_DATA. cvm-attest 1.0.0 names the product from the CPU model (QEMU's "AMD EPYC-Milan
Processor"), fetches the same two files and checks the report's signature and the three chain
signatures (no hwID or TCB binding). Neither pins an ARK: their root is whatever answers at
AMD's KDS address, a module constant read at every request (`KDS_CERT_SITE`,
`AMD_KDS_BASE`). The tests set that one constant to a `sevsim kds serve` URL (or to a relay
in front of it whose `cert_chain` is the chosen root), which changes which server answers and
nothing the verifier checks: the refusals below (AMD's real chain, a flipped byte) show its
chain and signature checks run as they would against AMD. cvm-attest says PASS even when it
verified no signature, so its two flags are asserted, not its status.

A VCEK's serial number is 0, as AMD's are; `cryptography` warns when it loads one, and that
warning is let through here (the verifiers load the certificate themselves)."""

from __future__ import annotations

import hashlib
import re
import select
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import omne_attest as omne
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cvm_attest.models import AttestationEvidence, AttestStatus, TeeInfo, TeeType
from cvm_attest.snp import verify as cvm_verify
from dk_tee_attestation import AttestationEngineFactory, AttestationEngineType
from dk_tee_attestation import amd_sev_snp_attestation_report_verification_utils as dk_verify
from dk_tee_attestation.AttestationExceptions import CertChainError, SignatureError

from sevsim.attest.snp_verify import CertBundle, der_certificates, trusted_roots

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number which wasn't positive:"
    "cryptography.utils.CryptographyDeprecationWarning")

AMD_BUNDLES = Path(__file__).resolve().parent / "data" / "snp" / "roots"  # AMD KDS's answers
NONCE = bytes(range(0x40, 0x80))
MEASUREMENT = 0x90  # a byte of the signed region that no verifier looks up anything by
CPU_MODEL = {"Milan": "AMD EPYC-Milan Processor", "Genoa": "AMD EPYC-Genoa Processor"}


@dataclass(frozen=True)
class Evidence:
    """One chip's report, the certificate table it came with, and its KDS."""

    product: str  # as KDS spells it
    report: bytes
    measurement: bytes
    table: CertBundle
    kds: str


@dataclass(frozen=True)
class Chain:
    """ASK and ARK, DER: the root a verifier is given."""

    ask: bytes
    ark: bytes

    def pem(self) -> bytes:
        """As KDS's cert_chain: ASK, then ARK."""
        return "".join(map(ssl.DER_cert_to_PEM_cert, (self.ask, self.ark))).encode()


class Refused(Exception):
    """A verifier's refusal, by the check that refused: "signature" or "chain"."""


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def kds_serve(chip: str, seed: str) -> Iterator[str]:
    """`sevsim kds serve` for one chip on a free loopback port; its URL."""
    server = subprocess.Popen([sys.executable, "-m", "sevsim", "kds", "serve", "--chip", chip,
                               "--seed", seed, "--host", "127.0.0.1", "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    try:
        ready, _, _ = select.select([server.stderr], [], [], 60)
        line = server.stderr.readline() if ready else "(nothing in 60 s)"
        listening = re.match(r"sevsim kds: (http://127\.0\.0\.1:\d+)/", line)
        assert listening, line
        yield listening[1]
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stderr.close()


@contextmanager
def kds_with_chain(kds: str, product: str, chain: Chain) -> Iterator[str]:
    """A loopback relay to `kds` whose cert_chain is `chain`: what a verifier that takes its
    root from KDS sees when it is given that root. Every other request goes to `kds`."""
    chain_path = f"/vcek/v1/{product}/cert_chain"

    class Relay(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = 200, chain.pem()
            if self.path != chain_path:
                try:
                    with urllib.request.urlopen(kds + self.path, timeout=10) as answer:
                        body = answer.read()
                except urllib.error.HTTPError as refusal:
                    status, body = refusal.code, refusal.read()
                    refusal.close()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    relay = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{relay.server_address[1]}"
    finally:
        relay.shutdown()
        relay.server_close()
        thread.join()


@pytest.fixture(scope="module", params=["milan", "genoa"])
def evidence(request: pytest.FixtureRequest, build: Callable[..., Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    chip: str = request.param
    seed = f"independent verifiers {chip}"
    out = tmp_path_factory.mktemp(chip)
    ran = sevsim("run", build("report"), "--mode", "snp", "--chip", chip, "--seed", seed,
                 "--memory", "16M", "--report-data", NONCE.hex(),
                 "--report-out", out / "report.bin", "--certs-out", out / "certs")
    assert ran.returncode == 0, ran.stderr
    digest = ran.stderr.split("SNP launch digest ")[1].split()[0]
    with kds_serve(chip, seed) as kds:
        yield Evidence(chip.capitalize(), (out / "report.bin").read_bytes(),
                       bytes.fromhex(digest), CertBundle.load(out / "certs"), kds)


def chain_from(evidence: Evidence, source: str) -> Chain:
    """The root as the certificate table carries it, as `sevsim kds serve` serves it, as
    sevsim ships it, or AMD's real one (what AMD's KDS serves)."""
    if source == "table":
        assert evidence.table.ask is not None and evidence.table.ark is not None
        return Chain(evidence.table.ask, evidence.table.ark)
    if source == "shipped":
        roots = trusted_roots("sevsim", evidence.product)
        return Chain(roots.ask.public_bytes(Encoding.DER), roots.ark.public_bytes(Encoding.DER))
    if source == "kds":
        with urllib.request.urlopen(f"{evidence.kds}/vcek/v1/{evidence.product}/cert_chain",
                                    timeout=10) as answer:
            pem = answer.read()
    else:
        assert source == "amd"
        pem = (AMD_BUNDLES / f"ask_ark_{evidence.product.lower()}.pem").read_bytes()
    ask, ark = der_certificates(pem)
    return Chain(ask, ark)


# -- each verifier: returns if it accepts, raises Refused if it refuses ---------------------
# `chain` is the root it is given; None: as `sevsim kds serve` serves it.


def omne_attest(evidence: Evidence, report: bytes, chain: Chain | None, *,
                pin: bytes | None = None) -> None:
    """The chain and the pin (by default the given ARK's SHA-256) passed as arguments; the
    VCEK from the certificate table."""
    chain = chain or chain_from(evidence, "kds")
    assert evidence.table.leaf is not None
    policy = omne.Policy(measurement=evidence.measurement, report_data=NONCE)
    try:
        omne.verify(report, evidence.table.leaf, chain.ask, chain.ark,
                    pin or hashlib.sha256(chain.ark).digest(), policy)
    except omne.Fail as failure:
        kinds = {omne.FailKind.REPORT_SIGNATURE: "signature",
                 omne.FailKind.CHAIN_SIGNATURE: "chain", omne.FailKind.ARK_NOT_PINNED: "chain"}
        if failure.kind not in kinds:
            raise
        raise Refused(kinds[failure.kind]) from failure


@contextmanager
def kds_at(evidence: Evidence, chain: Chain | None, module: ModuleType,
           constant: str) -> Iterator[None]:
    """`module.constant`, the verifier's KDS address, set to `sevsim kds serve` (or to a
    relay in front of it serving `chain` as cert_chain) for the time of the block."""
    with (nullcontext(evidence.kds) if chain is None
          else kds_with_chain(evidence.kds, evidence.product, chain)) as kds, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, constant, kds)
        yield


def dk_tee_attestation(evidence: Evidence, report: bytes, chain: Chain | None) -> None:
    """Everything from KDS at `KDS_CERT_SITE`."""
    engine = AttestationEngineFactory.get(AttestationEngineType.AMD_SEV_SNP)
    with kds_at(evidence, chain, dk_verify, "KDS_CERT_SITE"):
        try:
            engine.verify_report(report, NONCE)
        except SignatureError as failure:
            raise Refused("signature") from failure
        except CertChainError as failure:
            raise Refused("chain") from failure


def cvm_attest(evidence: Evidence, report: bytes, chain: Chain | None) -> None:
    """Everything from KDS at `AMD_KDS_BASE`; the product from the CPU model name."""
    with kds_at(evidence, chain, cvm_verify, "AMD_KDS_BASE"):
        result = cvm_verify.verify_evidence(
            AttestationEvidence(TeeType.SNP, raw_quote=report, report_data=NONCE),
            TeeInfo(TeeType.SNP, cpu_model=CPU_MODEL[evidence.product]))
    assert not result.errors and not result.warnings, (result.errors, result.warnings)
    if result.report_signature_valid is False:
        raise Refused("signature")
    if result.cert_chain_valid is False:
        raise Refused("chain")
    assert result.report_signature_valid and result.cert_chain_valid  # checked, not skipped
    assert result.status == AttestStatus.PASS


Verifier = Callable[[Evidence, bytes, Chain | None], None]
VERIFIERS = [omne_attest, dk_tee_attestation, cvm_attest]


@pytest.mark.parametrize("source", ["kds", "table", "shipped"])
@pytest.mark.parametrize("verify", VERIFIERS)
def test_each_verifier_accepts_sevsim_reports_under_sevsims_root(
        evidence: Evidence, verify: Verifier, source: str) -> None:
    """The root as `sevsim kds serve` serves it, as the certificate table carries it and as
    sevsim ships it: three encodings of one ARK and ASK key, which sign the same VCEK."""
    verify(evidence, evidence.report, None if source == "kds" else chain_from(evidence, source))


def test_omne_attest_accepts_the_certificate_tables_root_pinned_to_the_shipped_ark(
        evidence: Evidence) -> None:
    """The pin a relying party writes down, the SHA-256 of the ARK file sevsim ships, holds
    for the ARK the report's certificate table carries."""
    table, shipped = chain_from(evidence, "table"), chain_from(evidence, "shipped")
    assert table.ark == shipped.ark
    omne_attest(evidence, evidence.report, table, pin=hashlib.sha256(shipped.ark).digest())


@pytest.mark.parametrize("verify", VERIFIERS)
def test_a_flipped_byte_in_the_signed_region_is_refused(evidence: Evidence,
                                                        verify: Verifier) -> None:
    tampered = bytearray(evidence.report)
    tampered[MEASUREMENT] ^= 0x01
    with pytest.raises(Refused, match="signature"):
        verify(evidence, bytes(tampered), None)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_amds_real_root_is_refused(evidence: Evidence, verify: Verifier) -> None:
    with pytest.raises(Refused, match="chain"):
        verify(evidence, evidence.report, chain_from(evidence, "amd"))
