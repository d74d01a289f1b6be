"""vTPM boot evidence as a relying party checks it: a real swtpm measures a GCE-style boot log,
quotes it, and sevsim.attest.verify_boot accepts exactly the evidence that is what the TPM
measured; every refusal of issue 14's "Bad input" has its own reason. `sevsim tpm quote`
writes files tpm2_checkquote accepts; `sevsim tpm verify` exits as README says. swtpm keeps
PCRs 0-15 across TPM2_Shutdown(STATE) and a resumed start."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim import ConfidentialTechnology, EventLog, Vtpm, gce_boot
from sevsim.abi import tpm2
from sevsim.abi.tcg_eventlog import EventType
from sevsim.abi.tpm2 import HashAlg
from sevsim.attest import BootExpectation, verify_boot
from sevsim.errors import PolicyError, QuoteError, VtpmError
from test_vtpm_host import no_orphan_swtpm  # noqa: F401 (autouse: no swtpm outlives a test)

pytestmark = pytest.mark.skipif(
    shutil.which("swtpm") is None or shutil.which("tpm2_checkquote") is None,
    reason="needs Debian's swtpm and tpm2-tools (.ci/run installs them)")

NONCE = bytes.fromhex("c0ffee00c0ffee00c0ffee00c0ffee00")
PROGRAM = b"\x7fELF" + bytes(range(256)) * 4
SECURE_BOOT = {"SecureBoot": b"\x01", "PK": b"pk", "KEK": b"kek", "db": b"db", "dbx": b""}
TPM_BANKS = (HashAlg.SHA256, HashAlg.SHA384)  # swtpm's active banks
ALL_LOG_PCRS = {HashAlg.SHA256: list(range(10)), HashAlg.SHA384: [0, 4, 7]}


def boot_log(technology: ConfidentialTechnology = ConfidentialTechnology.AMD_SEV_SNP,
             program: bytes = PROGRAM, secure_boot: bytes = b"\x01") -> EventLog:
    return gce_boot(technology, secure_boot={**SECURE_BOOT, "SecureBoot": secure_boot},
                    program=program, program_path="\\EFI\\sevsim\\prog.elf",
                    cmdline="console=ttyS0", files=[("/boot/initrd", b"initrd")])


def measure(tpm: Vtpm, log: EventLog) -> None:
    """What a measured boot's TPM driver does: extend each event's digests."""
    for event in log.events:
        if event.event_type != EventType.EV_NO_ACTION:  # extends nothing
            tpm.pcr_extend(event.pcr, {alg: event.digests[alg] for alg in TPM_BANKS})


@dataclasses.dataclass(frozen=True)
class Evidence:
    ak: bytes
    attest: bytes
    signature: bytes
    log: bytes
    other_ak: bytes


def quote_boot(log: EventLog, selection: tpm2.PcrSelection = ALL_LOG_PCRS,
               nonce: bytes = NONCE) -> Evidence:
    with Vtpm() as tpm:
        measure(tpm, log)
        ak = tpm.create_ak()
        attest, signature = tpm.quote(ak.handle, nonce, selection)
        other = tpm.create_ak(tpm2.TPM_RH_OWNER)
    return Evidence(ak.public, attest, signature, log.to_bytes(), other.public)


@pytest.fixture(scope="module")
def evidence() -> Evidence:
    return quote_boot(boot_log())


def refused(evidence: Evidence, nonce: bytes = NONCE, expected: BootExpectation | None = None,
            **changes: bytes) -> QuoteError:
    e = dataclasses.replace(evidence, **changes)
    with pytest.raises(QuoteError) as info:
        verify_boot(e.ak, e.attest, e.signature, nonce, e.log, expected)
    return info.value


# --- verify_boot ----------------------------------------------------------------------------

def test_evidence_verifies_and_says_what_booted(evidence: Evidence) -> None:
    log = boot_log()
    boot = verify_boot(evidence.ak, evidence.attest, evidence.signature, NONCE, evidence.log)
    assert boot.pcrs[HashAlg.SHA256] == {p: log.pcrs[HashAlg.SHA256][p] for p in range(10)}
    assert boot.pcrs[HashAlg.SHA384][7] == log.pcrs[HashAlg.SHA384][7]
    assert boot.facts.technology is ConfidentialTechnology.AMD_SEV_SNP
    assert boot.facts.secure_boot is True
    assert boot.facts.programs == (hashlib.sha256(PROGRAM).digest(),)
    assert boot.quote.extra_data == NONCE
    expected = BootExpectation(pcrs={HashAlg.SHA384: {0: log.pcrs[HashAlg.SHA384][0]}},
                               program_sha256=hashlib.sha256(PROGRAM).digest(),
                               technology=ConfidentialTechnology.AMD_SEV_SNP, secure_boot=True)
    assert verify_boot(evidence.ak, evidence.attest, evidence.signature, NONCE, evidence.log,
                       expected).facts == boot.facts


def test_corrupted_event_log(evidence: Evidence) -> None:
    log = bytearray(evidence.log)
    log[0x20] ^= 0xFF  # inside the Spec ID event's signature
    error = refused(evidence, log=bytes(log))
    assert error.reason == "event-log" and "offset 0x20" in str(error), error
    error = refused(evidence, log=evidence.log[:-3])
    assert error.reason == "event-log" and "event data" in str(error), error


def test_event_data_that_is_not_what_its_digest_covers(evidence: Evidence) -> None:
    """NonHostInfo's digest is of its data: data claiming SNP over an SEV digest is a lie the
    replay cannot see (the digests are unchanged) but verify_boot does."""
    sev = boot_log(ConfidentialTechnology.AMD_SEV)
    sev_evidence = quote_boot(sev)
    forged = EventLog()
    for event in sev.events:
        if event.event_type == EventType.EV_NONHOST_INFO:
            snp = boot_log().events[1].data
            event = dataclasses.replace(event, data=snp)
        forged.append(event)
    error = refused(sev_evidence, log=forged.to_bytes())
    assert error.reason == "event-log", error
    assert "PCR 0" in str(error) and "EV_NONHOST_INFO AMD_SEV_SNP" in str(error), error


def test_quote_over_other_pcrs(evidence: Evidence) -> None:
    partial = quote_boot(boot_log(), {HashAlg.SHA256: [0, 4, 7], HashAlg.SHA384: [0]})
    error = refused(partial)
    assert error.reason == "pcr-selection" and "PCR 1," in str(error), error
    # a relying party that requires only PCRs 0, 4 and 7 accepts it, and its facts
    boot = verify_boot(partial.ak, partial.attest, partial.signature, NONCE, partial.log,
                       required={HashAlg.SHA256: [0, 4, 7]})
    assert boot.facts.technology is ConfidentialTechnology.AMD_SEV_SNP
    error = refused(partial, log=partial.log, expected=BootExpectation(
        pcrs={HashAlg.SHA256: {9: bytes(32)}}))
    assert error.reason == "pcr-selection" and "sha256 PCR 9" in str(error), error
    other_bank = quote_boot(boot_log(), {HashAlg.SHA384: list(range(10))})
    error = refused(other_bank, expected=BootExpectation(secure_boot=True))
    assert error.reason == "pcr-selection" and "sha256 PCR 7" in str(error), error


def test_replayed_nonce(evidence: Evidence) -> None:
    error = refused(evidence, nonce=bytes(16))
    assert error.reason == "nonce" and NONCE.hex() in str(error), error


def test_wrong_ak_or_changed_quote(evidence: Evidence) -> None:
    assert refused(evidence, ak=evidence.other_ak).reason == "signature"
    attest = bytearray(evidence.attest)
    attest[-1] ^= 1  # the pcrDigest's last byte
    assert refused(evidence, attest=bytes(attest)).reason == "signature"
    assert refused(evidence, ak=b"\x00\x23").reason == "format"
    fields = tpm2.parse_ecc_public(evidence.ak)
    unrestricted = bytearray(evidence.ak)
    unrestricted[4:8] = (fields.attributes & ~tpm2.ObjectAttr.RESTRICTED).to_bytes(4, "big")
    error = refused(evidence, ak=bytes(unrestricted))
    assert error.reason == "ak" and "0x00040072" in str(error), error


def test_log_that_the_tpm_did_not_measure(evidence: Evidence) -> None:
    other = boot_log(program=PROGRAM + b"a patched program").to_bytes()
    error = refused(evidence, log=other)
    assert error.reason == "replay" and "sha256:0,1,2,3,4,5,6,7,8,9" in str(error), error


@pytest.mark.parametrize(("expected", "named"), [
    (BootExpectation(technology=ConfidentialTechnology.AMD_SEV),
     "PCR 0 EV_NONHOST_INFO: AMD_SEV_SNP, expected AMD_SEV"),
    (BootExpectation(secure_boot=False), "PCR 7 SecureBoot: on, expected off"),
    (BootExpectation(program_sha256=hashlib.sha256(b"another").digest()),
     "PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION"),
    (BootExpectation(pcrs={HashAlg.SHA256: {8: bytes(32)}}),
     "PCR 8 (sha256) is "),
])
def test_expectations_that_do_not_hold(evidence: Evidence, expected: BootExpectation,
                                       named: str) -> None:
    error = refused(evidence, expected=expected)
    assert error.reason == "expected" and named in str(error), error


def test_expectation_json() -> None:
    digest = hashlib.sha256(PROGRAM).hexdigest()
    expected = BootExpectation.from_json(json.dumps({
        "pcrs": {"sha384": {"0": "ab" * 48}}, "program_sha256": digest,
        "technology": "AMD_SEV_ES", "secure_boot": False}))
    assert expected == BootExpectation({HashAlg.SHA384: {0: b"\xab" * 48}},
                                       bytes.fromhex(digest),
                                       ConfidentialTechnology.AMD_SEV_ES, False)
    for text, key in [("[]", "$"), ('{"secureboot": true}', "secureboot"),
                      ('{"pcrs": {"md5": {}}}', "pcrs.md5"),
                      ('{"pcrs": {"sha256": {"24": "00"}}}', "pcrs.sha256.24"),
                      ('{"pcrs": {"sha256": {"\u00b2": "00"}}}', "pcrs.sha256.\u00b2"),
                      ('{"pcrs": {"sha256": {"4": "00"}}}', "pcrs.sha256.4"),
                      ('{"program_sha256": "xyz"}', "program_sha256"),
                      ('{"technology": "TDX"}', "technology"),
                      ('{"secure_boot": 1}', "secure_boot"), ("{", "$")]:
        with pytest.raises(PolicyError) as info:
            BootExpectation.from_json(text)
        assert info.value.key == key, (text, info.value)


def mutate(data: bytes, position: int, value: int, cut: int) -> bytes:
    if not data:
        return bytes([value])
    changed = bytearray(data)
    changed[position % len(data)] ^= value or 1
    return bytes(changed[:len(changed) - cut % 4])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["ak", "attest", "signature", "log"]),
       position=st.integers(0, 1 << 16), value=st.integers(0, 255), cut=st.integers(0, 3))
def test_mutated_evidence_gives_only_quote_errors(evidence: Evidence, which: str,
                                                  position: int, value: int, cut: int) -> None:
    """Any change to any byte of the evidence (or a cut) gives a QuoteError and no other
    exception; the only changes accepted are to bytes nothing signed or measured covers (the
    Spec ID header's platform fields, a boot application's load address, the AK's nameAlg),
    which leave what was verified as it was."""
    original = verify_boot(evidence.ak, evidence.attest, evidence.signature, NONCE,
                           evidence.log)
    changed = dataclasses.replace(evidence, **{which: mutate(getattr(evidence, which),
                                                             position, value, cut)})
    try:
        boot = verify_boot(changed.ak, changed.attest, changed.signature, NONCE, changed.log)
    except QuoteError:
        return
    assert which in ("log", "ak")
    assert (boot.pcrs, boot.facts, boot.quote) == (original.pcrs, original.facts,
                                                   original.quote)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_garbage_logs_are_quote_errors(data: bytes) -> None:
    with pytest.raises(QuoteError):
        verify_boot(b"", b"", b"", NONCE, data)


# --- swtpm: resuming the PCRs a TPM2_Shutdown(STATE) saved -----------------------------------

def test_pcrs_0_to_15_survive_shutdown_state_and_resume(tmp_path: Path) -> None:
    state = tmp_path / "vm0-tpm"
    log = boot_log()
    selection = {HashAlg.SHA256: [0, 4, 7, 9, 15, 16]}
    with Vtpm(state) as tpm:
        measure(tpm, log)
        tpm.pcr_extend(15, {HashAlg.SHA256: bytes(32)})
        tpm.pcr_extend(16, {HashAlg.SHA256: bytes(32)})
        before = tpm.pcr_read(selection)[HashAlg.SHA256]
        tpm.shutdown()
    with Vtpm(state, resume=True) as tpm:
        after = tpm.pcr_read(selection)[HashAlg.SHA256]
        assert {p: after[p] for p in (0, 4, 7, 9, 15)} == {
            p: before[p] for p in (0, 4, 7, 9, 15)}
        assert after[4] == log.pcrs[HashAlg.SHA256][4]
        assert before[16] != bytes(32) and after[16] == bytes(32)  # PCR 16 is not saved
        tpm.shutdown()
    with Vtpm(state) as tpm:  # an ordinary start is TPM2_Startup(CLEAR): a reboot
        assert tpm.pcr_read({HashAlg.SHA256: [4]})[HashAlg.SHA256][4] == bytes(32)
    # that start left no saved state: nothing to resume, said so, and nothing left running
    with pytest.raises(VtpmError, match=r"no state to resume in .*TPM_RC_VALUE"):
        Vtpm(state, resume=True)


# --- the command line -----------------------------------------------------------------------

def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def booted_state(tmp_path: Path) -> Path:
    """A vTPM state directory holding a boot's PCRs, shut down with TPM2_Shutdown(STATE) as
    the VMM leaves it, and the boot's event log next to it."""
    state = tmp_path / "state"
    log = boot_log()
    with Vtpm(state) as tpm:
        measure(tpm, log)
        tpm.shutdown()
    (tmp_path / "eventlog.bin").write_bytes(log.to_bytes())
    return state


def test_tpm_quote_files_are_what_tpm2_checkquote_accepts(booted_state: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "q"
    done = sevsim("tpm", "quote", "--state", booted_state, "--nonce", NONCE.hex(),
                  "--pcrs", "sha256:0,4,7+sha384:0", "-o", out)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ak.pem", "ak.pub", "pcrs",
                                                      "pcrs.serialized", "quote.msg",
                                                      "quote.sig"]
    log = boot_log()
    assert (out / "pcrs").read_bytes() == b"".join(
        log.pcrs[HashAlg.SHA256][p] for p in (0, 4, 7)) + log.pcrs[HashAlg.SHA384][0]

    def checkquote(key: str, nonce: bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tpm2_checkquote", "-u", str(out / key), "-m",
                               str(out / "quote.msg"), "-s", str(out / "quote.sig"), "-f",
                               str(out / "pcrs"), "-l", "sha256:0,4,7+sha384:0", "-g",
                               "sha256", "-q", nonce.hex()],
                              capture_output=True, text=True, timeout=30)

    for key in ("ak.pem", "ak.pub"):
        assert checkquote(key, NONCE).returncode == 0, checkquote(key, NONCE).stderr
        assert checkquote(key, NONCE[::-1]).returncode != 0
    printed = done.stdout.split()
    assert printed[0] == "tpm2_checkquote"
    assert subprocess.run(printed, capture_output=True, timeout=30).returncode == 0
    # the state was shut down again, so it can be quoted (resumed) once more
    again = sevsim("tpm", "quote", "--state", booted_state, "--nonce", "01",
                   "--pcrs", "sha256:4", "-o", tmp_path / "q2")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "q2" / "pcrs").read_bytes() == log.pcrs[HashAlg.SHA256][4]


def test_tpm2_checkquote_reads_the_serialized_pcrs_of_many_pcrs(booted_state: Path,
                                                                 tmp_path: Path) -> None:
    """Its "values" reader fails from 8 PCRs on (tpm2-tools 5.4, its own tpm2_quote -F values
    output too); the serialized file carries the selection and any number of PCRs."""
    out = tmp_path / "q"
    selection = "sha256:0,1,2,3,4,5,6,7,8,9+sha384:0,4,7"
    done = sevsim("tpm", "quote", "--state", booted_state, "--nonce", NONCE.hex(),
                  "--pcrs", selection, "-o", out)
    assert done.returncode == 0, done.stderr

    def checkquote(nonce: bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tpm2_checkquote", "-u", str(out / "ak.pem"), "-m",
                               str(out / "quote.msg"), "-s", str(out / "quote.sig"), "-f",
                               str(out / "pcrs.serialized"), "-g", "sha256",
                               "-q", nonce.hex()], capture_output=True, text=True, timeout=30)

    ok = checkquote(NONCE)
    assert ok.returncode == 0, ok.stderr
    assert f"9 : 0x{boot_log().pcrs[HashAlg.SHA256][9].hex().upper()}" in ok.stdout
    assert checkquote(NONCE[::-1]).returncode != 0
    verified = sevsim("tpm", "verify", "--ak", out / "ak.pub", "--quote", out / "quote.msg",
                      "--signature", out / "quote.sig", "--nonce", NONCE.hex(),
                      "--event-log", booted_state.parent / "eventlog.bin")
    assert verified.returncode == 0, verified.stderr


def test_tpm_quote_over_a_running_swtpm(tmp_path: Path) -> None:
    with Vtpm() as tpm:
        measure(tpm, boot_log())
        done = sevsim("tpm", "quote", "--tcti", tpm.tcti, "--nonce", NONCE.hex(),
                      "--pcrs", "sha256:4", "-o", tmp_path)
        assert done.returncode == 0, done.stderr
        assert tpm.get_random(4)  # still running, still answering
    assert (tmp_path / "pcrs").read_bytes() == boot_log().pcrs[HashAlg.SHA256][4]


def test_tpm_quote_refusals(tmp_path: Path) -> None:
    fresh = tmp_path / "never-shut-down"
    done = sevsim("tpm", "quote", "--state", fresh, "--nonce", "00", "--pcrs", "sha256:0",
                  "-o", tmp_path / "q")
    assert done.returncode == 125 and "swtpm: no state to resume" in done.stderr
    assert "VtpmError" in done.stderr
    assert not (tmp_path / "q").exists() and not fresh.exists()
    for args in (["--pcrs", "md5:0"], ["--pcrs", "sha256:24"], ["--pcrs", "sha256:x"],
                 ["--pcrs", "sha256:0", "--tcti", "mssim:host=x"],
                 ["--pcrs", "sha256:0", "--nonce", "zz"]):
        options = {"--state": str(fresh), "--nonce": "00", **dict(zip(args[::2], args[1::2],
                                                                      strict=True))}
        if "--tcti" in options:
            del options["--state"]
        done = sevsim("tpm", "quote", *[x for kv in options.items() for x in kv], "-o",
                      tmp_path / "q")
        assert done.returncode == 2, (args, done.stderr)


def write_evidence(directory: Path, e: Evidence) -> list[str]:
    directory.mkdir(exist_ok=True)
    for name, data in (("ak.pub", e.ak), ("quote.msg", e.attest), ("quote.sig", e.signature),
                       ("eventlog.bin", e.log)):
        (directory / name).write_bytes(data)
    return ["--ak", str(directory / "ak.pub"), "--quote", str(directory / "quote.msg"),
            "--signature", str(directory / "quote.sig"), "--event-log",
            str(directory / "eventlog.bin")]


def test_tpm_verify_exit_statuses(evidence: Evidence, tmp_path: Path) -> None:
    args = write_evidence(tmp_path, evidence)
    ok = sevsim("tpm", "verify", *args, "--nonce", NONCE.hex())
    assert ok.returncode == 0, ok.stderr
    assert "technology AMD_SEV_SNP, secure boot on" in ok.stderr
    assert f"sha256:4  {boot_log().pcrs[HashAlg.SHA256][4].hex()}" in ok.stdout
    replayed = sevsim("tpm", "verify", *args, "--nonce", "00" * 16)
    assert replayed.returncode == 1
    assert replayed.stderr.startswith("sevsim tpm verify: FAIL nonce: quote is over nonce")
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"technology": "AMD_SEV", "secure_boot": True}))
    wrong = sevsim("tpm", "verify", *args, "--nonce", NONCE.hex(), "--expect", expect,
                   "--json")
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["reason"] == "expected"
    expect.write_text(json.dumps({"technology": "AMD_SEV_SNP", "program_sha256":
                                  hashlib.sha256(PROGRAM).hexdigest()}))
    right = sevsim("tpm", "verify", *args, "--nonce", NONCE.hex(), "--expect", expect,
                   "--json")
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["technology"] == "AMD_SEV_SNP"
    expect.write_text('{"technology": "SEV"}')
    bad = sevsim("tpm", "verify", *args, "--nonce", NONCE.hex(), "--expect", expect)
    assert bad.returncode == 125 and "PolicyError: technology:" in bad.stderr
    missing = sevsim("tpm", "verify", *args[:-1], str(tmp_path / "no-such-log"),
                     "--nonce", NONCE.hex())
    assert missing.returncode == 125 and "cannot read" in missing.stderr
    endless = sevsim("tpm", "verify", *args[:-1], "/dev/zero", "--nonce", NONCE.hex())
    assert endless.returncode == 125 and "ConfigError" in endless.stderr
    endless = sevsim("tpm", "verify", "--ak", "/dev/zero", *args[2:], "--nonce", NONCE.hex())
    assert endless.returncode == 125 and "the most a TPMT_PUBLIC can be" in endless.stderr
    usage = sevsim("tpm", "verify", "--event-log", args[-1], "--nonce", NONCE.hex())
    assert usage.returncode == 2


def test_tpm_verify_of_a_quote_over_some_pcrs(tmp_path: Path) -> None:
    partial = quote_boot(boot_log(), {HashAlg.SHA256: [0, 4, 7], HashAlg.SHA384: [0]})
    args = [*write_evidence(tmp_path, partial), "--nonce", NONCE.hex()]
    everything = sevsim("tpm", "verify", *args)
    assert everything.returncode == 1
    assert "FAIL pcr-selection:" in everything.stderr and "PCR 1," in everything.stderr
    some = sevsim("tpm", "verify", *args, "--pcrs", "sha256:0,4,7")
    assert some.returncode == 0, some.stderr
    assert "technology AMD_SEV_SNP, secure boot on" in some.stderr
    more = sevsim("tpm", "verify", *args, "--pcrs", "sha256:0,4,7,8")
    assert more.returncode == 1 and "sha256 PCR 8 must be covered" in more.stderr
    assert sevsim("tpm", "verify", *args, "--pcrs", "sha256:0-7").returncode == 2


def test_tpm_quote_to_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    done = sevsim("tpm", "quote", "--tcti", f"swtpm:path={tmp_path / 'none.sock'}",
                  "--nonce", "00", "--pcrs", "sha256:0", "-o", tmp_path / "q")
    assert done.returncode == 125, done.stderr
    assert f"VtpmError: swtpm:path={tmp_path / 'none.sock'}: TPM channel failed" in done.stderr
    assert not (tmp_path / "q").exists()
