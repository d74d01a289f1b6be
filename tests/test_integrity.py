"""Integrity monitoring as GCE's Shielded VMs do it: a baseline learned from one boot, then
early-boot and late-boot validation of later boots, each naming the PCR and event that changed
(a changed program in late boot, secure boot off or another confidential technology in early
boot), re-learning on request; end to end against a real swtpm's quote."""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim import ConfidentialTechnology, EventLog, SecureBootConfig, Vtpm, gce_boot
from sevsim.abi import efi_siglist
from sevsim.abi.tcg_eventlog import EventType
from sevsim.abi.tpm2 import HashAlg
from sevsim.attest import IntegrityBaseline, verify_boot
from sevsim.errors import PolicyError

PROGRAM = b"\x7fELF" + bytes(range(200)) * 5
SECURE_BOOT = {"SecureBoot": b"\x01", "PK": b"pk", "KEK": b"kek", "db": b"db", "dbx": b""}
NONCE = bytes.fromhex("5eb51a7e")


def boot(technology: ConfidentialTechnology = ConfidentialTechnology.AMD_SEV_SNP,
         program: bytes = PROGRAM, secure_boot: bytes = b"\x01",
         cmdline: str = "console=ttyS0") -> EventLog:
    return gce_boot(technology, secure_boot={**SECURE_BOOT, "SecureBoot": secure_boot},
                    program=program, program_path="\\EFI\\sevsim\\prog.elf", cmdline=cmdline)


BASELINE = IntegrityBaseline.learn(boot())


def test_the_same_boot_passes_both() -> None:
    report = BASELINE.check(boot())
    assert report.passed and report.early_passed and report.late_passed
    assert (report.early, report.late) == ((), ())


def test_a_changed_program_fails_late_boot_in_pcr4() -> None:
    report = BASELINE.check(boot(program=PROGRAM + b"patched"))
    assert report.early_passed and not report.late_passed
    (change,) = report.late
    assert (change.pcr, change.index) == (4, 0)
    assert "EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\sevsim\\prog.elf" in str(change)
    assert change.baseline != change.actual  # the digests in the descriptions differ


def test_secure_boot_off_fails_early_boot_in_pcr7() -> None:
    report = BASELINE.check(boot(secure_boot=b"\x00"))
    assert report.late_passed and not report.early_passed
    (change,) = report.early
    assert change.pcr == 7 and change.index == 0
    assert str(change) == ("PCR7 event 0: EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=01 became "
                           "EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=00")


def test_another_confidential_technology_fails_early_boot_in_pcr0() -> None:
    report = BASELINE.check(boot(ConfidentialTechnology.AMD_SEV))
    (change,) = report.early
    assert report.late_passed
    assert str(change) == ("PCR0 event 1: EV_NONHOST_INFO AMD_SEV_SNP became "
                           "EV_NONHOST_INFO AMD_SEV")


def test_a_changed_command_line_is_late_boot_and_missing_events_are_named() -> None:
    report = BASELINE.check(boot(cmdline="console=ttyS0 init=/bin/sh"))
    (change,) = report.late
    assert change.pcr == 8 and "init=/bin/sh" in str(change.actual)
    shorter = EventLog()
    for event in boot().events[:-1]:  # no command line event at all
        shorter.append(event)
    (missing,) = BASELINE.check(shorter).late
    assert missing.actual is None and str(missing).endswith("is missing")
    assert BASELINE.check(shorter).early_passed


def certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


def test_another_db_and_signer_are_named_apart() -> None:
    """Signature lists and their entries all start with the same GUIDs: a changed db, and
    another db entry verifying the program, are named by the values' digests."""
    def signed_boot(cert: x509.Certificate) -> EventLog:
        return gce_boot(ConfidentialTechnology.AMD_SEV_SNP,
                        secure_boot=SecureBootConfig(db=(cert,)).variables(), program=PROGRAM,
                        program_path="\\EFI\\sevsim\\prog.elf", cmdline="console=ttyS0",
                        authority=efi_siglist.x509(
                            uuid.UUID(int=1), cert.public_bytes(Encoding.DER)).to_bytes())

    old, new = signed_boot(certificate("old signer")), signed_boot(certificate("new signer"))
    report = IntegrityBaseline.learn(old).check(new)
    (db,) = report.early
    assert db.pcr == 7 and db.baseline != db.actual
    assert str(db.baseline).startswith("EV_EFI_VARIABLE_DRIVER_CONFIG db=sha256:")
    (signer,) = report.late
    assert signer.pcr == 7 and signer.baseline != signer.actual
    assert str(signer.actual).startswith("EV_EFI_VARIABLE_AUTHORITY db=sha256:")


def test_phases_split_at_each_pcrs_separator() -> None:
    phases = {(e.pcr, e.event_type, e.phase.value) for e in BASELINE.events}
    assert (0, EventType.EV_NONHOST_INFO, "early") in phases
    assert (7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, "early") in phases
    assert (4, EventType.EV_SEPARATOR, "early") in phases  # closes PCR4's early boot
    assert (4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION, "late") in phases
    assert (8, EventType.EV_IPL, "late") in phases


def test_relearn_accepts_the_new_boot() -> None:
    changed = boot(program=b"new release")
    assert not BASELINE.check(changed).passed
    assert IntegrityBaseline.learn(changed).check(changed).passed


def test_baseline_json_round_trip_and_refusals() -> None:
    text = BASELINE.to_json()
    assert IntegrityBaseline.from_json(text) == BASELINE
    doc = json.loads(text)
    doc["pcrs"]["sha256"]["4"] = "00" * 32  # a value its events do not extend to
    with pytest.raises(PolicyError, match="pcrs: the values are not what the events"):
        IntegrityBaseline.from_json(json.dumps(doc))
    for change, key in [(lambda d: d.pop("events"), "$"),
                        (lambda d: d.update(version=2), "version"),
                        (lambda d: d["events"][0].update(pcr=24), "events[0].pcr"),
                        (lambda d: d["events"][1].update(phase="middle"), "events[1]"),
                        (lambda d: d["events"][0]["digests"].update(sha256="ab"),
                         "events[0].digests.sha256"),
                        (lambda d: d.update(banks=["md5"]), "banks[0]")]:
        doc = json.loads(text)
        change(doc)
        with pytest.raises(PolicyError) as info:
            IntegrityBaseline.from_json(json.dumps(doc))
        assert info.value.key == key, (key, info.value)


BASELINE_JSON = BASELINE.to_json()


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, len(BASELINE_JSON) - 1), text=st.text(max_size=3))
def test_edited_baselines_give_only_policy_errors(position: int, text: str) -> None:
    """Any edit of a baseline's text is a PolicyError or a baseline that is still
    self-consistent (its values what its events extend to), never another exception."""
    edited = BASELINE_JSON[:position] + text + BASELINE_JSON[position + 1:]
    with contextlib.suppress(PolicyError):
        baseline = IntegrityBaseline.from_json(edited)
        assert IntegrityBaseline.from_json(baseline.to_json()) == baseline


def test_no_shared_bank_cannot_be_compared() -> None:
    from sevsim.abi.tcg_eventlog import SpecIdEvent

    sha1_only = EventLog(SpecIdEvent(banks=(HashAlg.SHA1,)))
    with pytest.raises(PolicyError, match="none shared"):
        IntegrityBaseline.learn(EventLog(SpecIdEvent(banks=(HashAlg.SHA256,)))).check(sha1_only)


VECTOR = Path(__file__).resolve().parent / "data" / "tpm" / "swtpm-boot"


def test_the_recorded_boot_vector_verifies_without_swtpm() -> None:
    """tests/data/tpm/swtpm-boot (its README): the log is still what gce_boot writes, and
    swtpm's recorded quote of it verifies; the fuzzing starts from these bytes."""
    log = gce_boot(ConfidentialTechnology.AMD_SEV_SNP, secure_boot={"SecureBoot": b"\x01"},
                   program=b"sevsim test program", program_path="\\EFI\\sevsim\\prog.elf",
                   cmdline="console=ttyS0")
    assert (VECTOR / "eventlog.bin").read_bytes() == log.to_bytes()
    ak, attest, signature, nonce, raw = ((VECTOR / name).read_bytes() for name in (
        "ak.public", "quote.attest", "quote.signature", "nonce.bin", "eventlog.bin"))
    boot = verify_boot(ak, attest, signature, nonce, raw)
    assert boot.pcrs[HashAlg.SHA256][4] == log.pcrs[HashAlg.SHA256][4]
    assert IntegrityBaseline.learn(boot.log).check(log).passed


# --- the command line, end to end with a real swtpm -----------------------------------------

def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def quoted_boot(directory: Path, log: EventLog) -> list[str]:
    """Measure `log` into a real swtpm, quote every PCR it extends, write the evidence."""
    directory.mkdir()
    with Vtpm() as tpm:
        for event in log.events:
            if event.event_type != EventType.EV_NO_ACTION:
                tpm.pcr_extend(event.pcr, {alg: event.digests[alg]
                                           for alg in (HashAlg.SHA256, HashAlg.SHA384)})
        ak = tpm.create_ak()
        attest, signature = tpm.quote(ak.handle, NONCE, {HashAlg.SHA256: list(range(9))})
    for name, data in (("ak.pub", ak.public), ("quote.msg", attest), ("quote.sig", signature),
                       ("eventlog.bin", log.to_bytes())):
        (directory / name).write_bytes(data)
    return ["--ak", str(directory / "ak.pub"), "--quote", str(directory / "quote.msg"),
            "--signature", str(directory / "quote.sig"), "--nonce", NONCE.hex(),
            "--event-log", str(directory / "eventlog.bin")]


@pytest.mark.skipif(shutil.which("swtpm") is None, reason="needs Debian's swtpm")
def test_learn_then_check_quoted_boots(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    first = quoted_boot(tmp_path / "boot1", boot())
    done = sevsim("integrity", "learn", *first, "-o", baseline)
    assert done.returncode == 0, done.stderr
    assert IntegrityBaseline.from_json(baseline.read_text()) == BASELINE

    same = sevsim("integrity", "check", "--baseline", baseline, *first)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == ["pass early boot", "pass late boot"]

    changed = quoted_boot(tmp_path / "boot2", boot(program=b"another program"))
    failed = sevsim("integrity", "check", "--baseline", baseline, *changed, "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["early_boot"]["passed"] and not report["late_boot"]["passed"]
    assert report["late_boot"]["changes"][0]["pcr"] == 4

    # evidence that does not verify is refused before anything is compared or re-learned
    learned = baseline.read_text()
    forged = [*first[:-1], changed[-1]]  # boot 1's quote, boot 2's log
    refused = sevsim("integrity", "check", "--baseline", baseline, *forged, "--relearn")
    assert refused.returncode == 1 and "FAIL replay:" in refused.stderr
    assert baseline.read_text() == learned

    relearned = sevsim("integrity", "check", "--baseline", baseline, *changed, "--relearn")
    assert relearned.returncode == 1 and "re-learned" in relearned.stderr
    assert sevsim("integrity", "check", "--baseline", baseline, *changed).returncode == 0


def test_check_without_a_quote_and_bad_input(tmp_path: Path) -> None:
    baseline, log = tmp_path / "baseline.json", tmp_path / "eventlog.bin"
    log.write_bytes(boot(secure_boot=b"\x00").to_bytes())
    baseline.write_text(BASELINE.to_json())
    failed = sevsim("integrity", "check", "--baseline", baseline, "--event-log", log)
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[0] == "FAIL early boot"
    assert "PCR7 event 0: EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=01" in failed.stdout
    log.write_bytes(boot().to_bytes()[:-1])
    broken = sevsim("integrity", "check", "--baseline", baseline, "--event-log", log,
                    "--relearn")
    assert broken.returncode == 125 and "EventLogError: event log offset" in broken.stderr
    assert baseline.read_text() == BASELINE.to_json()  # not re-learned from a broken log
    baseline.write_text("{}")
    bad = sevsim("integrity", "check", "--baseline", baseline, "--event-log", log)
    assert bad.returncode == 125 and "PolicyError" in bad.stderr
    usage = sevsim("integrity", "learn", "--event-log", log, "--ak", log, "-o", baseline)
    assert usage.returncode == 2 and baseline.read_text() == "{}"
