"""The SNP-bound vTPM: libtpms at VMPL0 with its state in private guest memory, its AK bound
into an SNP report, and the relying party's verifier naming each refusal."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from sevsim.abi import tpm2
from sevsim.abi.svsm_vtpm import NONCE_MAX, VtpmEvidence, report_data
from sevsim.abi.tcg_eventlog import ConfidentialTechnology, EventLog, kernel_cmdline, replay
from sevsim.abi.tpm2 import HashAlg
from sevsim.attacks import ATTACKS, Setting, Verdict, run_attack
from sevsim.attacks.lab import VICTIMS, planted_secret
from sevsim.attest import (
    BootExpectation,
    CertBundle,
    Policy,
    ak_public_key,
    verify_quote,
    verify_vtpm_evidence,
)
from sevsim.cli.main import app
from sevsim.errors import LibtpmsError, QuoteError, SnpVerificationError, TpmFormatError
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import VTPM_GPA, GuestKernel
from sevsim.guest.libtpms import PERMANENT, VOLATILE, TpmEngine
from sevsim.guest.svsm_vtpm import NV_PAGES, GuestNvStore, SvsmVtpm
from sevsim.host.machine import Host
from sevsim.host.vmm import VirtualMachine
from sevsim.host.vtpm import Vtpm
from sevsim.testing import guest_cpu, guest_software

NONCE = hashlib.sha256(b"relying party nonce").digest()
CMDLINE = b"console=ttyS0 ro quiet"
SHA256 = HashAlg.SHA256
PAGE = 4096


class DictStore(dict[str, bytes]):
    """An NV store in a dict: the engine-level tests need no VM."""

    def load(self, name: str) -> bytes | None:
        return self.get(name)

    def store(self, name: str, data: bytes) -> None:
        self[name] = bytes(data)

    def delete(self, name: str) -> None:
        self.pop(name, None)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_guest([VICTIMS / "measured_boot.c"],
                       tmp_path_factory.mktemp("vtpm") / "measured_boot.elf")


@pytest.fixture(scope="module")
def host() -> Host:
    return Host(chip="milan", memory="128M")


def booted(host: Host, elf: Path, cmdline: bytes = CMDLINE, nonce: bytes = NONCE,
           mode: str = "snp") -> VirtualMachine:
    vm = host.create_vm(mode=mode, memory="16M")
    vm.load(elf)
    vm.launch()
    vm.host_input = nonce + cmdline
    result = vm.run(timeout=120)
    assert result.exit_code == 0, result.console
    return vm


def certs(host: Host) -> CertBundle:
    return CertBundle.from_cert_table(host.firmware.certificate_table(host.firmware.tcb))


def event_log(cmdline: bytes, guest: str = "measured_boot") -> bytes:
    """PCR 8's events: the boot's command line (the kernel measures the file's name, the
    default), then what the program measured."""
    log = EventLog()
    log.measure(kernel_cmdline(f"{guest}.elf"))
    log.measure(kernel_cmdline(cmdline.decode()))
    return log.to_bytes()


def pcr8(cmdline: bytes, guest: str = "measured_boot") -> dict[int, dict[int, bytes]]:
    return {SHA256: {8: replay(EventLog.from_bytes(event_log(cmdline, guest)))[SHA256][8]}}


@pytest.fixture(scope="module")
def evidence(host: Host, elf: Path) -> bytes:
    vm = booted(host, elf)
    assert f"vTPM evidence: {len(vm.outputs[0])} bytes" in vm.console
    return vm.outputs[0]


def test_evidence_verifies_end_to_end(host: Host, evidence: bytes) -> None:
    verified = verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim",
                                    event_log=event_log(CMDLINE), expected_pcrs=pcr8(CMDLINE))
    assert verified.report.vmpl == 0
    assert verified.report.report_data == hashlib.sha512(NONCE + verified.ak_public).digest()
    assert verified.quote.extra_data == NONCE
    assert verified.pcrs == pcr8(CMDLINE)
    fields = tpm2.parse_ecc_public(verified.ak_public)
    assert fields.attributes == tpm2.AK_ATTRIBUTES  # a restricted signing key of the TPM's


def boot_evidence(host: Host, guest: Path, cmdline: str | None = None,
                  vtpm: bool = False) -> tuple[bytes, bytes, bytes]:
    """An SNP VM running the vtpm_boot guest: its evidence over the boot PCRs, the boot's
    event log the program read, and the log the host's vTPM handed over (b"" without one)."""
    vm = host.create_vm(mode="snp", memory="16M", vtpm=vtpm)
    vm.load(guest, cmdline=cmdline)
    vm.launch()
    vm.host_input = NONCE
    result = vm.run(timeout=120)
    vm.destroy()
    assert result.exit_code == 0, result.console
    evidence, log = vm.outputs
    return evidence, log, result.event_log


def snp_boot(guest: Path, program: bytes | None = None) -> BootExpectation:
    return BootExpectation(program_sha256=hashlib.sha256(program or guest.read_bytes()).digest(),
                           technology=ConfidentialTechnology.AMD_SEV_SNP, secure_boot=False)


def test_the_boot_is_measured_into_the_snp_bound_vtpm(host: Host,
                                                      build: Callable[..., Path]) -> None:
    guest = build("vtpm_boot")
    evidence, log, host_log = boot_evidence(host, guest)
    assert host_log == b""  # no host vTPM: the program hands the log over itself
    verified = verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim",
                                    event_log=log, expected=snp_boot(guest))
    assert verified.boot is not None
    assert verified.boot.facts.technology is ConfidentialTechnology.AMD_SEV_SNP
    assert verified.boot.facts.programs == (hashlib.sha256(guest.read_bytes()).digest(),)
    # the quoted PCRs are the replayed ones, and the boot's PCR 8 names its command line
    assert verified.pcrs[SHA256] == verified.boot.pcrs[SHA256]
    only_boot = EventLog()
    only_boot.measure(kernel_cmdline("vtpm_boot.elf"))
    assert verified.pcrs[SHA256][8] == replay(only_boot)[SHA256][8]
    # a wrong program is refused naming PCR 4; the expectation needs the log
    with pytest.raises(QuoteError, match="PCR 4") as caught:
        verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim", event_log=log,
                             expected=snp_boot(guest, b"another program"))
    assert caught.value.reason == "expected"
    with pytest.raises(QuoteError, match="PCR 0"):
        verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim", event_log=log,
                             expected=BootExpectation(
                                 technology=ConfidentialTechnology.AMD_SEV_ES))
    assert refusal(host, evidence, expected=snp_boot(guest)) == "event-log"
    # a log of another boot (another command line) does not replay to this quote
    _, other_log, _ = boot_evidence(host, guest, cmdline="init=/bin/sh")
    assert other_log != log
    assert refusal(host, evidence, event_log=other_log) == "replay"


def test_both_vtpms_measure_the_same_boot(host: Host, build: Callable[..., Path]) -> None:
    """With a host vTPM too, the one log describes both: what the host was handed is what the
    program read, and it verifies against the SNP-bound vTPM's quote."""
    guest = build("vtpm_boot")
    evidence, log, host_log = boot_evidence(host, guest, vtpm=True)
    assert log == host_log
    verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim", event_log=host_log,
                         expected=snp_boot(guest))


@pytest.mark.skipif(shutil.which("tpm2_checkquote") is None, reason="needs tpm2-tools")
def test_tpm2_checkquote_accepts_the_in_vm_quote(evidence: bytes, tmp_path: Path) -> None:
    """The oracle: tpm2-tools checks the libtpms-at-VMPL0 quote like any TPM's."""
    genuine = VtpmEvidence.from_bytes(evidence)
    (tmp_path / "ak.pem").write_bytes(ak_public_key(genuine.ak_public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "quote.msg").write_bytes(genuine.attest)
    (tmp_path / "quote.sig").write_bytes(genuine.signature)

    def checkquote(nonce: bytes, pcr: bytes) -> int:
        (tmp_path / "pcrs.bin").write_bytes(pcr)
        return subprocess.run(
            ["tpm2_checkquote", "-u", str(tmp_path / "ak.pem"), "-m",
             str(tmp_path / "quote.msg"), "-s", str(tmp_path / "quote.sig"), "-f",
             str(tmp_path / "pcrs.bin"), "-l", "sha256:8", "-g", "sha256", "-q", nonce.hex()],
            capture_output=True, timeout=30).returncode

    assert checkquote(NONCE, pcr8(CMDLINE)[SHA256][8]) == 0
    assert checkquote(NONCE[::-1], pcr8(CMDLINE)[SHA256][8]) != 0
    assert checkquote(NONCE, pcr8(b"init=/bin/sh")[SHA256][8]) != 0


def test_the_report_policy_applies(host: Host, evidence: bytes) -> None:
    report = verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim").report
    verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim",
                         policy=Policy(measurements=(report.measurement,)))
    with pytest.raises(SnpVerificationError, match="measurement"):
        verify_vtpm_evidence(evidence, NONCE, certs(host), trust="sevsim",
                             policy=Policy(measurements=(bytes(48),)))


def refusal(host: Host, evidence: bytes | VtpmEvidence, nonce: bytes = NONCE,
            **kwargs: object) -> str:
    with pytest.raises(QuoteError) as caught:
        verify_vtpm_evidence(evidence, nonce, certs(host), trust="sevsim",
                             **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def swtpm_quote(nonce: bytes, cmdline: bytes) -> tuple[bytes, bytes, bytes]:
    """A host's swtpm with PCR 8's events replayed into it (the boot's, then `cmdline`): AK
    public, attest, signature."""
    with Vtpm() as forged:
        for event in EventLog.from_bytes(event_log(cmdline)).events:
            forged.pcr_extend(8, {SHA256: event.digests[SHA256]})
        ak = forged.create_ak()
        attest, signature = forged.quote(ak.handle, nonce, {SHA256: [8]})
    return ak.public, attest, signature


def test_each_refusal_is_named(host: Host, evidence: bytes) -> None:
    genuine = VtpmEvidence.from_bytes(evidence)
    # a replay: the evidence is over another nonce
    assert refusal(host, evidence, hashlib.sha256(b"fresh").digest()) == "nonce"
    # a host's swtpm quote with its own AK, next to the genuine report
    ak, attest, signature = swtpm_quote(NONCE, CMDLINE)
    forged = VtpmEvidence(genuine.report, ak, attest, signature, pcr8(CMDLINE))
    assert refusal(host, forged) == "ak-not-bound"
    # the same quote presented as if the bound AK had signed it
    assert refusal(host, VtpmEvidence(genuine.report, genuine.ak_public, attest, signature,
                                      pcr8(CMDLINE))) == "signature"
    # claimed PCR values that are not the quoted ones; quoted ones that are not expected
    assert refusal(host, VtpmEvidence(genuine.report, genuine.ak_public, genuine.attest,
                                      genuine.signature, pcr8(b"init=/bin/sh"))) == "pcrs"
    assert refusal(host, evidence, expected_pcrs=pcr8(b"init=/bin/sh")) == "pcrs"
    assert refusal(host, evidence, expected_pcrs={SHA256: {7: bytes(32)}}) == "pcrs"
    # an event log of another boot, and one that does not parse
    assert refusal(host, evidence, event_log=event_log(b"init=/bin/sh")) == "replay"
    assert refusal(host, evidence, event_log=event_log(CMDLINE)[:-3]) == "event-log"
    # evidence that does not parse
    assert refusal(host, evidence[:-1]) == "format"
    assert refusal(host, evidence + b"\0") == "format"


def test_a_report_that_does_not_verify_is_refused(host: Host, evidence: bytes) -> None:
    tampered = bytearray(evidence)
    tampered[0x50] ^= 1  # REPORT_DATA: the signature no longer covers it
    with pytest.raises(SnpVerificationError, match="signature"):
        verify_vtpm_evidence(bytes(tampered), NONCE, certs(host), trust="sevsim")
    with pytest.raises(SnpVerificationError):  # a real AMD root does not sign sevsim's VCEK
        verify_vtpm_evidence(evidence, NONCE, certs(host), trust="amd")


def test_nv_state_lives_only_in_private_guest_memory(host: Host, elf: Path) -> None:
    vm = booted(host, elf)
    cpu = guest_cpu(vm.hv.vcpus[0])
    kernel = guest_software(vm.hv.vcpus[0])
    assert isinstance(kernel, GuestKernel) and kernel.vtpm is not None
    nv = GuestNvStore(cpu, VTPM_GPA)
    blobs = {name: nv.load(name) for name in (PERMANENT, VOLATILE)}
    assert all(blobs.values())
    assert cpu.is_private(VTPM_GPA, NV_PAGES * PAGE)
    # the TPM's seeds are random 64-byte runs: every high-entropy window of the state is a
    # secret the host must not see (checked against the guest's own view first)
    windows = [blob[i:i + 32] for blob in blobs.values() if blob
               for i in range(0, len(blob) - 32, 16) if len(set(blob[i:i + 32])) >= 28]
    assert len(windows) > 8
    plain = cpu.read(VTPM_GPA, NV_PAGES * PAGE)
    assert all(w in plain for w in windows)
    visible = [host.dram_dump().tobytes(), vm.host_view(),
               *(vm.read_gpa(gpa, PAGE) for gpa in vm.shared_pages())]
    assert not any(w in seen for w in windows for seen in visible)
    # a new kernel's TPM (after a migration) resumes from that memory alone: PCR 8 as the
    # program measured it, the same AK
    resumed = SvsmVtpm(cpu, VTPM_GPA)
    assert resumed.pcr_read(cpu, {SHA256: [8]}) == pcr8(CMDLINE)
    again = tpm2.parse_create_primary_response(resumed.execute(cpu, tpm2.create_primary_command(
        tpm2.ecc_ak_template())))
    assert again.public == VtpmEvidence.from_bytes(vm.outputs[0]).ak_public


def test_two_vms_keep_separate_tpms(host: Host, elf: Path) -> None:
    first = booted(host, elf, b"first")
    second = booted(host, elf, b"second")
    a, b = (VtpmEvidence.from_bytes(vm.outputs[0]) for vm in (first, second))
    assert a.pcrs == pcr8(b"first") and b.pcrs == pcr8(b"second")
    assert a.ak_public != b.ak_public  # each TPM was manufactured with its own seeds
    # interleaved: each command swaps the library's state; neither sees the other's PCRs
    ka, kb = (guest_software(vm.hv.vcpus[0]) for vm in (first, second))
    assert isinstance(ka, GuestKernel) and isinstance(kb, GuestKernel)
    assert ka.vtpm is not None and kb.vtpm is not None
    ca, cb = (guest_cpu(vm.hv.vcpus[0]) for vm in (first, second))
    ka.vtpm.extend(ca, 9, {SHA256: bytes(32)})
    assert kb.vtpm.pcr_read(cb, {SHA256: [8, 9]})[SHA256] == {**pcr8(b"second")[SHA256],
                                                              9: bytes(32)}
    assert ka.vtpm.pcr_read(ca, {SHA256: [9]})[SHA256][9] == SHA256.hash(bytes(64))


def test_engines_swap_the_one_library_and_keep_loaded_objects() -> None:
    a, b = DictStore(), DictStore()
    ea, eb = TpmEngine(a), TpmEngine(b)
    ak = tpm2.parse_create_primary_response(ea.execute(tpm2.create_primary_command(
        tpm2.ecc_ak_template())))
    tpm2.parse_pcr_extend_response(eb.execute(tpm2.pcr_extend_command(
        0, {SHA256: b"\1" * 32})))
    assert VOLATILE in a and VOLATILE in b  # each command's state is in its own store
    attest, signature = tpm2.parse_quote_response(ea.execute(tpm2.quote_command(
        ak.handle, NONCE, {SHA256: [0]})))  # a's AK handle survived the swap
    quoted = tpm2.parse_attest(attest)
    verify_quote(ak.public, attest, signature, NONCE, {SHA256: {0: bytes(32)}})
    assert quoted.extra_data == NONCE
    # a malformed command gets a TPM response code, not an exception
    response = ea.execute(b"\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x44\xff\xff")
    assert tpm2.response_code(response) != 0


class FailingStore(DictStore):
    """A store whose volatile-state writes fail (memory the TPM can no longer write)."""

    def store(self, name: str, data: bytes) -> None:
        if name == VOLATILE:
            raise TpmFormatError("libtpms blob", "refused")
        super().store(name, data)


def test_a_tpm_whose_state_cannot_be_saved_stops_for_good() -> None:
    """No resuming later from an older volatile state (a PCR rollback): the TPM is lost, and
    the library goes on serving the others."""
    doomed, other = TpmEngine(FailingStore()), TpmEngine(DictStore())
    for _ in range(2):
        with pytest.raises(LibtpmsError, match="could not be saved") as caught:
            doomed.execute(tpm2.pcr_extend_command(0, {SHA256: b"\1" * 32}))
        assert caught.value.call == "TPMLIB_VolatileAll_Store"
    read = tpm2.parse_pcr_read_response(other.execute(tpm2.pcr_read_command({SHA256: [0]})))
    assert read.values == {SHA256: {0: bytes(32)}}


def test_missing_libtpms_is_a_typed_error(tmp_path: Path) -> None:
    script = ("import ctypes.util\n"
              "ctypes.util.find_library = lambda name: '/nonexistent/libtpms.so.0'\n"
              "from sevsim.errors import LibtpmsError\n"
              "from sevsim.guest.libtpms import TpmEngine\n"
              "try:\n    TpmEngine(None)\nexcept LibtpmsError as e:\n"
              "    print('refused', e.call, e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("refused dlopen dlopen: /nonexistent/libtpms.so.0: cannot open")


def test_system_calls_refuse_bad_arguments_and_lower_vmpls(host: Host,
                                                           build: Callable[..., Path]) -> None:
    vm = host.create_vm(mode="snp", memory="16M", vcpus=2)
    vm.load(build("vtpm_calls"))
    vm.launch()
    vm.host_input = NONCE
    result = vm.run(timeout=120)
    assert result.exit_code == 0, result.console
    lines = dict(line.rsplit(" ", 1) for line in result.console.splitlines())
    assert lines == {"extend pcr 24": "-22", "extend bad pointer": "-14", "no nonce": "-22",
                     "long nonce": "-22", "no pcrs": "-22", "pcr 24": "-22",
                     "small buffer": "-34", "extend": "0",
                     "evidence": str(len(vm.outputs[0])), "vmpl1 extend": "-1",
                     "log small buffer": "-28", "vmpl1 log": "-1"}
    # the refused calls changed nothing: PCR 8 holds the one good extend, PCR 9 nothing
    got = verify_vtpm_evidence(vm.outputs[0], NONCE, certs(host), trust="sevsim").pcrs
    assert got == {SHA256: {8: pcr8(b"x", "vtpm_calls")[SHA256][8], 9: bytes(32)}}


def test_outside_snp_there_is_no_svsm_vtpm(host: Host, elf: Path) -> None:
    vm = booted(host, elf, mode="sev-es")
    assert "no SNP-bound vTPM" in vm.console and not vm.outputs


@given(st.binary(max_size=1400))
def test_evidence_parser_refuses_or_round_trips(blob: bytes) -> None:
    try:
        parsed = VtpmEvidence.from_bytes(blob)
    except TpmFormatError:
        return
    assert parsed.to_bytes() == blob


def test_nonce_limits() -> None:
    assert len(report_data(b"n", b"ak")) == 64
    with pytest.raises(TpmFormatError):
        VtpmEvidence(bytes(10), b"", b"", b"", {}).to_bytes()
    assert NONCE_MAX == 64


def test_store_refuses_oversized_blobs(host: Host, elf: Path) -> None:
    vm = booted(host, elf)
    nv = GuestNvStore(guest_cpu(vm.hv.vcpus[0]), VTPM_GPA)
    before = nv.load(PERMANENT)
    with pytest.raises(TpmFormatError):
        nv.store(PERMANENT, bytes(NV_PAGES * PAGE))
    with pytest.raises(TpmFormatError):
        nv.load("savestate")
    assert nv.load(PERMANENT) == before  # the refused write changed nothing



@pytest.fixture(scope="module")
def boot_files(build: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two vtpm_boot VMs' evidence and event logs, the certificates and an expectation, as
    files: evidence and boot.log of the first, other.* of one booted with another command
    line. A host of their own: the module's is full of the other tests' VMs."""
    host, guest = Host(chip="milan", memory="64M"), build("vtpm_boot")
    out = tmp_path_factory.mktemp("tpm-verify")
    for name, cmdline in (("", None), ("other.", "init=/bin/sh")):
        evidence, log, _ = boot_evidence(host, guest, cmdline)
        (out / f"{name}evidence").write_bytes(evidence)
        (out / f"{name}boot.log").write_bytes(log)
    (out / "certs").write_bytes(host.firmware.certificate_table(host.firmware.tcb))
    (out / "expect.json").write_text(json.dumps({
        "program_sha256": hashlib.sha256(guest.read_bytes()).hexdigest(),
        "technology": "AMD_SEV_SNP", "secure_boot": False}))
    return out


def tpm_verify(files: Path, *args: str | Path, evidence: str = "evidence",
               nonce: bytes = NONCE) -> Result:
    return CliRunner().invoke(app, ["tpm", "verify", "--evidence", str(files / evidence),
                                    "--nonce", nonce.hex(), "--certs", str(files / "certs"),
                                    "--trust", "sevsim", *map(str, args)])


def test_tpm_verify_checks_snp_bound_evidence(boot_files: Path) -> None:
    """`sevsim tpm verify --evidence`: issue 14's refusals, each with its reason."""
    log, expect = boot_files / "boot.log", boot_files / "expect.json"
    done = tpm_verify(boot_files, "--event-log", log, "--expect", expect)
    assert done.exit_code == 0, done.output
    genuine = VtpmEvidence.from_bytes((boot_files / "evidence").read_bytes())
    assert f"sha256:8  {genuine.pcrs[SHA256][8].hex()}" in done.stdout
    assert "binds the AK and nonce" in done.stderr and "expectations met" in done.stderr
    as_json = json.loads(tpm_verify(boot_files, "--json").stdout)
    assert as_json["ok"] and as_json["vmpl"] == 0 and as_json["nonce"] == NONCE.hex()
    assert as_json["ak_public"] == genuine.ak_public.hex()

    def reason(*args: str | Path, **kwargs: str | bytes) -> str:
        refused = tpm_verify(boot_files, "--json", *args, **kwargs)  # type: ignore[arg-type]
        assert refused.exit_code == 1, refused.output
        result = json.loads(refused.stdout)
        assert f"FAIL {result['message']}" in refused.stderr
        return str(result["reason"])

    assert reason(nonce=hashlib.sha256(b"fresh").digest()) == "nonce"  # a replayed nonce
    # another VM's report, for the same nonce but its own AK, beside this quote
    other = VtpmEvidence.from_bytes((boot_files / "other.evidence").read_bytes())
    (boot_files / "swapped").write_bytes(VtpmEvidence(
        other.report, genuine.ak_public, genuine.attest, genuine.signature,
        genuine.pcrs).to_bytes())
    assert reason(evidence="swapped") == "ak-not-bound"
    (boot_files / "corrupt.log").write_bytes(log.read_bytes()[:-3])
    assert reason("--event-log", boot_files / "corrupt.log") == "event-log"
    assert reason("--event-log", boot_files / "other.boot.log") == "replay"
    assert reason("--expect", expect) == "event-log"  # the expected boot needs its log
    (boot_files / "policy.toml").write_text(f'[guest]\nmeasurements = ["{"00" * 48}"]\n')
    assert reason("--policy", boot_files / "policy.toml") == "report"
    assert tpm_verify(boot_files, "--trust", "amd").exit_code == 1
    # input that cannot be read is no verdict: 125; options that do not go together: 2
    (boot_files / "short").write_bytes(genuine.report)
    assert reason(evidence="short") == "format"
    assert tpm_verify(boot_files, evidence="missing").exit_code == 125
    assert tpm_verify(boot_files, "--certs", boot_files / "boot.log").exit_code == 125
    assert tpm_verify(boot_files, "--ak", boot_files / "evidence").exit_code == 2


def test_forged_pcrs_fool_only_the_host_provided_vtpm() -> None:
    """A20's two SNP refusals: the forged quote beside the victim's report (ak-not-bound),
    then passed off as the bound AK's (signature); below SNP the owner's secret is released."""
    attack = ATTACKS["A20"]
    broken = run_attack(attack, Setting("sev-es"))
    assert broken.verdict is Verdict.BROKEN
    assert broken.evidence == planted_secret("measured_boot").hex()
    stopped = run_attack(attack, Setting("snp"))
    assert stopped.verdict is Verdict.STOPPED
    assert stopped.stopped_by.startswith("QuoteError: signature:")
    assert any("ak-not-bound" in step for step in stopped.trace)
    assert any("'vTPM evidence: " in step for step in stopped.trace)
