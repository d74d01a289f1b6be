"""`sevsim demo`: one Milan host, four tenants keeping the same secret at each protection
level, a rogue administrator's view of them, the attack matrix, and an SNP tenant that
attests (report, SNP-bound vTPM) to a real key broker and gets its key while two twins are
refused. `run_demo` returns the JSON document `sevsim report-html` renders (schema
"sevsim.demo/1"); every value in it is computed by running the mechanism.

The tenants and the attested VM run on a `Host` seeded with the demo's seed, the secrets and
nonces are drawn from it, and the attack labs get it too, so one seed gives one document
(but for "timings"). What cannot be seeded is left out: the vTPM's keys (libtpms draws them
from its own RNG) and the key broker's nonces and tokens; the document shows the checks made
on them, not their bytes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from sevsim.abi.snp_cert import SnpCertificate, common_name
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import PolicyFlags
from sevsim.abi.svsm_vtpm import VtpmEvidence
from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, EventType
from sevsim.abi.tpm2 import HashAlg
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import Outcome
from sevsim.attacks.runner import cells, matrix_document, run_matrix
from sevsim.attest.measure import guest_digest
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.attest.snp_verify import (
    CertBundle,
    VerificationResult,
    common_name_x509,
    verify_report_chain,
)
from sevsim.attest.svsm_vtpm import verify_vtpm_evidence
from sevsim.attest.tpm_boot import BootExpectation
from sevsim.errors import ConfigError, MemoryAccessError, SevsimError
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine
from sevsim.kbs.admin import generate_admin_key, issue_admin_token
from sevsim.kbs.client import KbsClient
from sevsim.kbs.service import KbsConfig, create_app
from sevsim.kbs.verifier import EvidenceConfig
from sevsim.testing import guest_cpu

SCHEMA = "sevsim.demo/1"
CHIP = "milan"
TENANT_MODES = ("none", "sev", "sev-es", "snp")
MEMORY = 16 << 20  # each VM's memory
PAGE = 4096
RESOURCE = "default/demo/key"
REGISTERS = ("rip", "rsp", "rax", "rbx", "rcx", "rdx", "cr3")
PROGRAMS = Path(__file__).resolve().parent
ONE_BYTE = (b"kbs: got", b"kbs: Got")  # the twin's one changed byte, in a console string
RESOURCE_POLICY = f"""
[[rules]]
resources = ["{RESOURCE}"]
[rules.claims]
policy_debug = false
vmpl = 0
"""
MASK64 = (1 << 64) - 1

Progress = Callable[[str, int, int], None]
"""progress(step, done, total): called as each step advances ("tenants", "attacks", "kbs")."""


def _no_progress(step: str, done: int, total: int) -> None:
    """The default: nobody is watching."""


def _draw(seed: bytes, label: str, size: int) -> bytes:
    """Bytes only the demo's seed and the label determine."""
    return hashlib.shake_256(b"sevsim demo\0" + label.encode() + b"\0" + seed).digest(size)


def secret_page(state: int) -> bytes:
    """The 4096 bytes examples/secret.c generates from SECRET_SEED `state` (xorshift64*):
    the ground truth the host views are searched for."""
    x, words = state, []
    for _ in range(PAGE // 8):
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        words.append((x * 0x2545F4914F6CDD1D) & MASK64)
    return struct.pack(f"<{PAGE // 8}Q", *words)


def contains_secret(haystack: bytes | np.ndarray, secret: bytes) -> bool:
    """Whether any 16-byte block of `secret` occurs 16-byte aligned in `haystack` (what the
    encryption engine works on: one plaintext block is enough to call it a leak)."""
    hay = np.frombuffer(haystack, dtype=np.uint8) if isinstance(haystack, bytes) else haystack
    hay = hay[: hay.size - hay.size % 16].view(np.uint64).reshape(-1, 2)
    blocks = np.frombuffer(secret, dtype=np.uint64).reshape(-1, 2)
    candidates = hay[np.isin(hay[:, 0], blocks[:, 0])]
    wanted = {tuple(b) for b in blocks.tolist()}
    return any(tuple(row) in wanted for row in candidates.tolist())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Programs:
    """The demo's guest ELFs, built from source for this run."""

    secret: Path  # examples/secret.c with the run's secret
    attested: Path  # attested.c: report, vTPM evidence, then the key broker
    secret_state: int


def build_programs(seed: bytes, out: Path) -> Programs:
    """Compile the tenants' program with a secret drawn from the seed, and the SNP tenant's."""
    state = int.from_bytes(_draw(seed, "secret", 8), "little") | 1  # xorshift needs x != 0
    secret = build_guest([PROGRAMS / "secret.c"], out / "secret.elf",
                         cflags=[f"-DSECRET_SEED=0x{state:016x}ULL"])
    attested = build_guest([PROGRAMS / "attested.c"], out / "attested.elf")
    return Programs(secret, attested, state)


def _symbol(elf: Path, name: str) -> int:
    """Where the program keeps `name` (a page-aligned buffer)."""
    with elf.open("rb") as fh:
        table = ELFFile(fh).get_section_by_name(".symtab")
        found = table.get_symbol_by_name(name) if isinstance(table, SymbolTableSection) else None
    if not found:
        raise ConfigError(f"{elf}: no symbol {name}")
    return int(found[0]["st_value"])


# -- the four tenants and the rogue administrator -------------------------------------------


def _registers(vm: VirtualMachine, host: Host) -> dict[str, Any]:
    """What the host reads of vCPU 0's state (VMCB save area, or the VMSA's DRAM bytes) next
    to the values the vCPU really holds (simulator inspection)."""
    vcpu = vm.hv.vcpus[0]
    true = guest_cpu(vcpu)
    guest = {name: f"0x{true.reg(name):x}" for name in REGISTERS}
    if vcpu.vmsa_spa is None:
        shown: dict[str, str | None] = {name: f"0x{vcpu.vmcb.read(name):x}"
                                         for name in REGISTERS}
        return {"where": "VMCB", "host": shown, "guest": guest, "vmsa": None}
    hidden: dict[str, str | None] = dict.fromkeys(REGISTERS)
    vmsa = host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE)
    return {"where": "VMSA", "host": hidden, "guest": guest, "vmsa": _b64(vmsa)}


def run_tenant(host: Host, mode: str, programs: Programs, secret: bytes
               ) -> tuple[VirtualMachine, dict[str, Any]]:
    """Launch and run secret.elf in `mode`, then look at it as the host and as the guest
    (`secret_in_dram_dump` is filled in by `search_dram`, once every tenant has run)."""
    vm = host.create_vm(mode=mode, memory=MEMORY)
    vm.load(programs.secret)
    vm.launch()
    result = vm.run(timeout=60)
    if result.exit_code != 0:
        raise SevsimError(f"the {mode} tenant exited {result.exit_code}: {result.console}")
    cpu = guest_cpu(vm.hv.vcpus[0])
    pages = []
    for label, symbol in (("secret", "secret_page"), ("shared", "shared_page")):
        gpa = _symbol(programs.secret, symbol)
        pages.append({"label": label, "gpa": gpa, "spa": host.hypervisor.gpa_to_spa(vm.hv, gpa),
                      "guest": _b64(cpu.read(gpa, PAGE)), "host": _b64(vm.read_gpa(gpa, PAGE))})
    return vm, {"mode": mode, "asid": vm.asid, "console": result.console, "pages": pages,
                "secret_in_host_view": contains_secret(vm.host_view(), secret),
                "secret_in_dram_dump": False, "registers": _registers(vm, host)}


def search_dram(host: Host, vms: list[VirtualMachine], secret: bytes) -> list[bool]:
    """A physical attacker's dump of the DIMMs, searched for the secret in each VM's own
    frames (the same secret is in every tenant: the plain one's must not count for the
    others)."""
    frames = host.dram_dump().reshape(-1, PAGE)
    found = []
    for vm in vms:
        spas = []
        for gpa in range(0, vm.memory_size, PAGE):
            try:
                spas.append(host.hypervisor.gpa_to_spa(vm.hv, gpa) // PAGE)
            except MemoryAccessError:
                continue  # not mapped: no frame of this VM
        found.append(contains_secret(frames[spas].reshape(-1), secret))
    return found


# -- the attack matrix ----------------------------------------------------------------------


def attacks_document(outcomes: list[Outcome]) -> dict[str, Any]:
    """What `sevsim attack matrix --json` prints, with the catalog's rows."""
    chosen = {o.attack for o in outcomes}
    return {**matrix_document(outcomes),
            "attacks": [{"id": a.id, "name": a.name, "actor": a.actor, "source": a.source}
                        for a in ATTACKS.values() if a.id in chosen]}


# -- attestation ----------------------------------------------------------------------------


def _key_name(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {'P-384' if key.curve.name == 'secp384r1' else key.curve.name}"
    return type(key).__name__


def _chain(certs: CertBundle, result: VerificationResult) -> list[dict[str, Any]]:
    """The ARK, ASK and VCEK the report was checked against, each with whether the checks
    about it passed."""
    def ok(*names: str) -> bool:
        mine = [c for c in result.checks if c.name in names]
        return len(mine) == len(names) and all(c.passed for c in mine)

    rows = []
    for role, der, signer in (("ARK", certs.ark, "ARK"), ("ASK", certs.ask, "ARK")):
        if der is None:
            continue
        cert = x509.load_der_x509_certificate(der)
        rows.append({"role": role, "subject": common_name_x509(cert),
                     "issuer": _issuer_cn(cert), "serial": str(cert.serial_number),
                     "not_before": cert.not_valid_before_utc.isoformat(),
                     "not_after": cert.not_valid_after_utc.isoformat(),
                     "key": _key_name(cert.public_key()), "signed_by": signer,
                     "ok": ok(role), "pem": cert.public_bytes(Encoding.PEM).decode()})
    if certs.leaf is not None:
        leaf = SnpCertificate.from_der(certs.leaf)
        tbs = leaf.tbs
        rows.append({"role": "VCEK", "subject": common_name(tbs.subject),
                     "issuer": common_name(tbs.issuer), "serial": str(tbs.serial),
                     "not_before": _cert_time(tbs.not_before.text),
                     "not_after": _cert_time(tbs.not_after.text),
                     "key": _key_name(load_der_public_key(tbs.spki)), "signed_by": "ASK",
                     "ok": ok("VCEK", "signature"), "pem": _pem(certs.leaf)})
    return rows


def _issuer_cn(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _cert_time(text: str) -> str:
    """DER UTCTime or GeneralizedTime as ISO 8601."""
    full = text if len(text) == 15 else ("19" if int(text[:2]) >= 50 else "20") + text
    return datetime.datetime.strptime(full, "%Y%m%d%H%M%SZ").replace(
        tzinfo=datetime.UTC).isoformat()


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def attestation_document(report: bytes, certs: CertBundle, expected: bytes,
                         report_data: bytes) -> dict[str, Any]:
    """Verify the SNP tenant's report (signature, VCEK chain to sevsim's simulated ARK) and
    check its claims as the relying party would: its measurement, REPORT_DATA and policy."""
    result = verify_report_chain(report, certs, trust="sevsim")
    parsed = AttestationReport.from_bytes(report)
    policy = Policy(measurements=(expected,), report_data=report_data)
    claims = validate_report(parsed, policy)
    fields = [{"name": c.name, "value": c.actual, "check": f"wants {c.expected}",
               "ok": c.passed} for c in claims.checks]
    fields += [{"name": c.name, "value": c.detail, "check": "verified", "ok": c.passed}
               for c in result.checks]
    failures = [c.name for c in result.failures] + [c.name for c in claims.checks
                                                    if not c.passed]
    return {"report": _b64(report), "fields": fields, "chain": _chain(certs, result),
            "verdict": "ok" if not failures else "failed: " + ", ".join(failures)}


def vtpm_document(evidence: bytes, event_log: bytes, nonce: bytes, certs: CertBundle,
                  expected_measurement: bytes, program: bytes) -> dict[str, Any]:
    """The SNP-bound vTPM's boot, checked with `verify_vtpm_evidence`: the report binds the
    AK, the AK signed the quote over the nonce, the log replays to the quoted PCRs, and PCR 4
    holds the program. Only what the seed determines is kept (the events and PCR values,
    the checks), not the AK or the signature, which libtpms draws."""
    log = EventLog.from_bytes(event_log)
    events = [{"pcr": e.pcr, "type": _event_type(e.event_type),
               "digest": e.digests[HashAlg.SHA256].hex(),
               "description": _describe(e.data)} for e in log.events]
    checks: list[dict[str, Any]] = []
    try:
        verified = verify_vtpm_evidence(
            evidence, nonce, certs, trust="sevsim",
            policy=Policy(measurements=(expected_measurement,)), event_log=event_log,
            expected=BootExpectation(program_sha256=hashlib.sha256(program).digest(),
                                     technology=ConfidentialTechnology.AMD_SEV_SNP,
                                     secure_boot=False))
    except SevsimError as error:
        checks.append({"name": getattr(error, "reason", type(error).__name__), "ok": False,
                       "detail": str(error)})
        pcrs = VtpmEvidence.from_bytes(evidence).pcrs
    else:
        checks += [{"name": "report", "ok": True, "detail": "VCEK signature and chain, "
                    "measurement as expected"},
                   {"name": "quote", "ok": True, "detail": "signed by the AK, over the nonce"},
                   {"name": "ak-bound", "ok": True,
                    "detail": "REPORT_DATA = SHA-512(nonce || AK TPMT_PUBLIC), VMPL0"},
                   {"name": "event-log", "ok": True,
                    "detail": f"{len(log.events)} events replay to the quoted PCRs"},
                   {"name": "expected", "ok": True, "detail": "PCR 4: the program's SHA-256, "
                    "PCR 0: AMD SEV-SNP, PCR 7: secure boot off"}]
        pcrs = verified.pcrs
    sha256 = pcrs[HashAlg.SHA256]
    return {"events": events,
            "pcrs": {"sha256": {str(pcr): value.hex() for pcr, value in sorted(sha256.items())}},
            "quote": {"ok": all(c["ok"] for c in checks), "checks": checks}}


def _event_type(value: int) -> str:
    try:
        return EventType(value).name
    except ValueError:
        return f"0x{value:08x}"


def _describe(data: bytes) -> str:
    """An event's data as text where it is text, else its size."""
    text = data.rstrip(b"\0").decode("ascii", "replace")
    if data and text.isprintable():
        return text
    return f"{len(data)} bytes"


# -- the key broker -------------------------------------------------------------------------


@dataclass
class Broker:
    """sevsim's KBS serving on 127.0.0.1 from a temporary SQLite file, and its admin."""

    url: str
    client: KbsClient
    token: str

    def last_audit_id(self) -> int:
        """The newest decision's id, to read only what comes after it."""
        return max((r["id"] for r in self.client.audit(self.token, limit=10_000)), default=0)

    def decisions_after(self, mark: int) -> list[dict[str, Any]]:
        """The protocol's decisions (auth, attest, get-resource) after audit id `mark`."""
        return [r for r in self.client.audit(self.token, after=mark, limit=10_000)
                if r["action"] in ("auth", "attest", "get-resource")]


@contextmanager
def key_broker(secret: bytes, measurement: bytes, workdir: Path) -> Iterator[Broker]:
    """A real uvicorn server on a free port of 127.0.0.1: `secret` at RESOURCE, released
    only to SNP guests with `measurement`, not debuggable, at VMPL0."""
    import uvicorn

    admin = generate_admin_key()
    config = KbsConfig(db_url=f"sqlite:///{workdir / 'kbs.db'}", secret_key=os.urandom(32),
                       admin_key=admin.public_key(), evidence=EvidenceConfig(trust="sevsim"))
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise ConfigError("the key broker did not start")
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with KbsClient(url) as client:
            token = issue_admin_token(admin)
            client.set_resource(token, RESOURCE, secret)
            client.set_resource_policy(token, RESOURCE_POLICY)
            client.set_attestation_policy(
                token, f'[guest]\nmeasurements = ["{measurement.hex()}"]\n')
            yield Broker(url, client, token)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass(frozen=True)
class Attested:
    """What the SNP tenant handed over (sev_host_output) and its console."""

    vm: VirtualMachine
    console: str
    exit_code: int
    outputs: list[bytes]


def run_attested(host: Host, image: bytes, url: str, report_data: bytes,
                 policy: int = DEFAULT_SNP_POLICY) -> Attested:
    """Launch `image` (attested.elf or a twin) under SNP with a NIC to the broker and run it."""
    vm = host.create_vm(mode="snp", memory=MEMORY)
    vm.attach_nic(url)
    vm.load(image)
    vm.launch(policy=policy)
    vm.host_input = report_data
    result = vm.run(timeout=120)
    return Attested(vm, result.console, result.exit_code, list(vm.outputs))


def kbs_attempt(name: str, run: Attested, image: bytes, policy: int, secret: bytes,
                secret_gpa: int, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """One tenant's try: its measurement (what a relying party computes from the image), its
    policy, whether the broker released the resource and why not, and whether the secret in
    the guest's private buffer (simulator inspection) is the broker's."""
    released = any(d["action"] == "get-resource" and d["decision"] == "allowed"
                   for d in decisions)
    reasons = [d["reason"] or "" for d in decisions if d["decision"] == "refused"]
    held = guest_cpu(run.vm.hv.vcpus[0]).read(secret_gpa, len(secret))
    measurement = guest_digest("snp", parse_elf(image), run.vm.memory_size, 1,
                               run.vm.kernel_id)
    return {"tenant": name, "measurement": measurement.hex(), "policy": f"0x{policy:x}",
            "released": released, "reason": "; ".join(reasons),
            "secret_matches": held == secret}


# -- the whole tour -------------------------------------------------------------------------


def run_demo(seed: bytes, *, jobs: int | None = None,
             progress: Progress = _no_progress) -> dict[str, Any]:
    """Run the demo and return its document (module docstring); `jobs` processes compute
    the attack matrix. SevsimError when a step cannot run at all; whether the expectations
    hold is `failed_expectations(document)`."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        timings[step] = round(now - since, 3)
        return now

    with tempfile.TemporaryDirectory(prefix="sevsim-demo-") as tmp:
        workdir = Path(tmp)
        programs = build_programs(seed, workdir)
        secret = secret_page(programs.secret_state)
        mark = lap("build", started)

        host = Host(chip=CHIP, memory="160M", seed=seed)
        vms, tenants = [], []
        progress("tenants", 0, len(TENANT_MODES))
        for done, mode in enumerate(TENANT_MODES, 1):
            vm, tenant = run_tenant(host, mode, programs, secret)
            vms.append(vm)
            tenants.append(tenant)
            progress("tenants", done, len(TENANT_MODES))
        for tenant, found in zip(tenants, search_dram(host, vms, secret), strict=True):
            tenant["secret_in_dram_dump"] = found
        mark = lap("tenants", mark)

        total = len(cells(ATTACKS.values()))
        progress("attacks", 0, total)
        count = 0

        def cell_done(outcome: Outcome) -> None:
            nonlocal count
            count += 1
            progress("attacks", count, total)

        outcomes = run_matrix(jobs=jobs, progress=cell_done, seed=seed)
        mark = lap("attacks", mark)

        image = programs.attested.read_bytes()
        twin = image.replace(*ONE_BYTE)
        if sum(a != b for a, b in zip(image, twin, strict=True)) != 1:
            raise ConfigError("attested.elf: the twin's byte to change is not there once")
        expected = guest_digest("snp", parse_elf(image), MEMORY, 1, kernel_identity())
        resource = _draw(seed, "kbs resource", 32)
        report_data = hashlib.sha512(b"sevsim demo relying party\0" + seed).digest()
        secret_gpa = _symbol(programs.attested, "secret")
        progress("kbs", 0, 3)
        with key_broker(resource, expected, workdir) as broker:
            attempts = []
            tries = (("snp", image, DEFAULT_SNP_POLICY),
                     ("one-byte twin", twin, DEFAULT_SNP_POLICY),
                     ("debuggable twin", image, DEFAULT_SNP_POLICY | PolicyFlags.DEBUG))
            genuine: Attested | None = None
            for done, (name, program, policy) in enumerate(tries, 1):
                before = broker.last_audit_id()
                run = run_attested(host, program, broker.url, report_data, policy)
                genuine = genuine or run
                attempts.append(kbs_attempt(name, run, program, policy, resource, secret_gpa,
                                            broker.decisions_after(before)))
                progress("kbs", done, len(tries))
        assert genuine is not None
        mark = lap("kbs", mark)

        if len(genuine.outputs) != 4:
            raise SevsimError(f"the SNP tenant handed over {len(genuine.outputs)} of 4 "
                              f"blobs: {genuine.console}")
        report, table, evidence, event_log = genuine.outputs
        certs = CertBundle.from_cert_table(table)
        attestation = attestation_document(report, certs, expected, report_data)
        vtpm = vtpm_document(evidence, event_log, report_data[:32], certs, expected, image)
        lap("attestation", mark)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return {"schema": SCHEMA, "seed": seed.hex(), "chip": CHIP, "secret": secret.hex(),
            "tenants": tenants, "attacks": attacks_document(outcomes),
            "attestation": attestation, "vtpm": vtpm,
            "kbs": {"resource": RESOURCE, "attempts": attempts},
            "timings": {"total_s": timings.pop("total_s"), **timings}}


def failed_expectations(document: dict[str, Any]) -> list[str]:
    """What the demo expects, each named when it does not hold: the plain tenant leaks its
    secret, SEV hides memory but not registers, SEV-ES and SNP hide both; the SNP tenant's
    report verifies, its vTPM quote checks out, its key is released to it and to neither
    twin."""
    failed = []
    tenants = {t["mode"]: t for t in document.get("tenants", [])}

    def leaks(mode: str) -> bool | None:
        tenant = tenants.get(mode)
        return None if tenant is None else tenant["secret_in_host_view"]

    def registers_shown(mode: str) -> bool | None:
        tenant = tenants.get(mode)
        if tenant is None:
            return None
        regs = tenant["registers"]
        return regs["host"] == regs["guest"]

    if leaks("none") is not True:
        failed.append("the plain tenant's secret is not in the host's view")
    for mode in ("sev", "sev-es", "snp"):
        if leaks(mode) is not False or tenants[mode]["secret_in_dram_dump"]:
            failed.append(f"the {mode} tenant's secret is visible to the host")
    if registers_shown("sev") is not True:
        failed.append("the sev tenant's registers are not readable in its VMCB")
    for mode in ("sev-es", "snp"):
        if registers_shown(mode) is not False:
            failed.append(f"the {mode} tenant's registers are readable by the host")
    attestation = document.get("attestation")
    if attestation is not None and attestation["verdict"] != "ok":
        failed.append(f"the SNP tenant's report: {attestation['verdict']}")
    vtpm = document.get("vtpm")
    if vtpm is not None and not vtpm["quote"]["ok"]:
        failed.append("the SNP tenant's vTPM evidence does not verify")
    for attempt in document.get("kbs", {}).get("attempts", []):
        if attempt["tenant"] == "snp" and not (attempt["released"]
                                               and attempt["secret_matches"]):
            failed.append("the SNP tenant did not get the broker's secret")
        if attempt["tenant"] != "snp" and (attempt["released"] or attempt["secret_matches"]):
            failed.append(f"the broker released its secret to the {attempt['tenant']}")
    return failed
