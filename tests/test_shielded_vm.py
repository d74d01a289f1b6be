"""Issue 14's "Done when" as a user runs it: a real C guest signed with `sevsim guest sign`,
booted by `sevsim run` with a vTPM and secure boot, its vTPM state quoted by `sevsim tpm
quote`, the quote checked by tpm2_checkquote and by `sevsim tpm verify` against the boot's
event log, and `sevsim integrity` learning that boot and judging later ones. Every command is
a subprocess, every boot a real VM with a real swtpm; the boots are shared by the module."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sevsim import EventLog
from sevsim.abi.tcg_eventlog import EventType
from sevsim.abi.tpm2 import HashAlg

pytestmark = pytest.mark.skipif(
    shutil.which("swtpm") is None or shutil.which("tpm2_checkquote") is None,
    reason="needs Debian's swtpm and tpm2-tools (.ci/run installs them)")

NONCE = "5ec0f1de5ec0f1de5ec0f1de5ec0f1de"
PCRS = "sha256:0,1,2,3,4,5,6,7,8,9+sha384:0,4,7"
HELLO = "Hello from a sevsim guest!"


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done


def signer(directory: Path) -> tuple[Path, Path]:
    """A fresh RSA key and its self-signed certificate, as `openssl req -x509` makes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shielded signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "signer.key", directory / "signer.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass(frozen=True)
class Boot:
    """One `sevsim run --vtpm`: its vTPM state directory, event log and what it printed."""
    state: Path
    log: Path
    run: subprocess.CompletedProcess[str]


@dataclass(frozen=True)
class Quote:
    directory: Path
    nonce: str
    printed: str

    def verify_args(self, log: Path, nonce: str | None = None) -> list[str | Path]:
        return ["--ak", self.directory / "ak.pub", "--quote", self.directory / "quote.msg",
                "--signature", self.directory / "quote.sig", "--nonce", nonce or self.nonce,
                "--event-log", log]


@dataclass(frozen=True)
class Lab:
    root: Path
    signed: Path
    unsigned: Path
    rebuilt: Path
    boot: Callable[..., Boot]


def swtpm_using(root: Path) -> list[str]:
    """Command lines of running swtpm processes whose state or sockets are under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if argv and Path(argv[0].decode(errors="replace")).name == "swtpm" and str(root) in line:
            found.append(line)
    return found


@pytest.fixture(scope="module")
def lab(build: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The signer, the secure-boot key directory, the signed programs, and a boot runner;
    after the module no swtpm the VMs started is left running."""
    root = tmp_path_factory.mktemp("shielded")
    key, cert = signer(root)
    (root / "sb" / "db").mkdir(parents=True)
    (root / "sb" / "dbx").mkdir()
    shutil.copy(cert, root / "sb" / "db" / "signer.pem")
    unsigned = build("hello")
    # the rebuilt program keeps the file name: PCR 8's command line (the name) stays the same
    signed, rebuilt = root / "hello.signed.elf", root / "v2" / "hello.signed.elf"
    rebuilt.parent.mkdir()
    ok(sevsim("guest", "sign", unsigned, "--key", key, "--cert", cert, "-o", signed))
    ok(sevsim("guest", "sign", build("hello", "-O0"), "--key", key, "--cert", cert,
              "-o", rebuilt))

    def boot(name: str, program: Path, mode: str, secure_boot: bool = True,
             state: Path | None = None) -> Boot:
        """A VM named `name`, or a reboot of the VM whose vTPM `state` is."""
        vtpm, log = state or root / name / "vtpm", root / name / "boot.log"
        log.parent.mkdir()
        args: list[str | Path] = ["run", program, "--mode", mode, "--memory", "16M", "--vtpm",
                                  "--vtpm-state", vtpm, "--event-log", log]
        if secure_boot:
            args += ["--secure-boot", root / "sb"]
        return Boot(vtpm, log, sevsim(*args))

    yield Lab(root, signed, unsigned, rebuilt, boot)
    assert swtpm_using(root) == []


def quote(lab: Lab, boot: Boot, name: str, nonce: str = NONCE) -> Quote:
    out = lab.root / name
    done = ok(sevsim("tpm", "quote", "--state", boot.state, "--nonce", nonce, "--pcrs", PCRS,
                     "-o", out))
    return Quote(out, nonce, done.stdout.strip())


@pytest.fixture(scope="module")
def snp(lab: Lab) -> Boot:
    return lab.boot("snp", lab.signed, "snp")


@pytest.fixture(scope="module")
def sev(lab: Lab) -> Boot:
    return lab.boot("sev", lab.signed, "sev")


@pytest.fixture(scope="module")
def snp_quote(lab: Lab, snp: Boot) -> Quote:
    return quote(lab, snp, "snp-quote")


@pytest.fixture(scope="module")
def rebuilt(lab: Lab) -> Boot:
    """The same VM's configuration booting another signed program (a rebuilt hello)."""
    return lab.boot("rebuilt", lab.rebuilt, "snp")


@pytest.fixture(scope="module")
def baseline(lab: Lab, snp: Boot, snp_quote: Quote) -> Path:
    """`sevsim integrity learn` of the SNP boot, its log first checked against its quote."""
    out = lab.root / "base.json"
    done = ok(sevsim("integrity", "learn", *snp_quote.verify_args(snp.log), "-o", out))
    assert done.stderr.startswith("sevsim integrity learn: ")
    return out


def expectation(lab: Lab, technology: str) -> Path:
    path = lab.root / f"expect-{technology}.json"
    path.write_text(json.dumps({
        "program_sha256": hashlib.sha256(lab.signed.read_bytes()).hexdigest(),
        "technology": technology, "secure_boot": True}))
    return path


# --- a signed program boots, its quote verifies ------------------------------------------

@pytest.mark.parametrize(("boot_name", "technology"), [("snp", "AMD_SEV_SNP"),
                                                      ("sev", "AMD_SEV")])
def test_signed_program_boots_and_its_quote_verifies(lab: Lab, boot_name: str, technology: str,
                                                     request: pytest.FixtureRequest) -> None:
    boot: Boot = request.getfixturevalue(boot_name)
    ok(boot.run)
    assert boot.run.stdout.startswith("secure boot: ok: verified by db certificate "
                                      "CN=shielded signer\n" + HELLO)
    assert f"state in {boot.state}" in boot.run.stderr
    q = request.getfixturevalue("snp_quote") if boot_name == "snp" else quote(
        lab, boot, f"{boot_name}-quote")
    assert sorted(p.name for p in q.directory.iterdir()) == [
        "ak.pem", "ak.pub", "pcrs", "pcrs.serialized", "quote.msg", "quote.sig"]

    # tpm2_checkquote, as `tpm quote` prints it and spelled out, accepts only this nonce
    assert q.printed.split()[0] == "tpm2_checkquote"
    checked = subprocess.run(q.printed.split(), capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr

    def checkquote(nonce: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tpm2_checkquote", "-u", str(q.directory / "ak.pem"),
                               "-m", str(q.directory / "quote.msg"),
                               "-s", str(q.directory / "quote.sig"),
                               "-f", str(q.directory / "pcrs.serialized"), "-g", "sha256",
                               "-q", nonce], capture_output=True, text=True, timeout=30)

    assert checkquote(NONCE).returncode == 0
    assert checkquote(NONCE[::-1]).returncode != 0

    # the quoted PCR values are what the boot's log replays to: tpm2_checkquote's and sevsim's
    log = EventLog.from_bytes(boot.log.read_bytes())
    pcr4 = log.pcrs[HashAlg.SHA256][4]
    assert f"4 : 0x{pcr4.hex().upper()}" in checked.stdout
    assert (q.directory / "pcrs").read_bytes() == b"".join(
        [log.pcrs[HashAlg.SHA256][p] for p in range(9)] + [bytes(32)]  # PCR 9: no files yet
        + [log.pcrs[HashAlg.SHA384][p] for p in (0, 4, 7)])

    # tpm2_eventlog reads the log (secure boot's db entry included) and replays it alike
    replayed = subprocess.run(["tpm2_eventlog", str(boot.log)], capture_output=True, text=True,
                              timeout=30)
    assert replayed.returncode == 0, replayed.stderr
    assert "EV_EFI_VARIABLE_AUTHORITY" in replayed.stdout
    assert f"4  : 0x{pcr4.hex()}" in replayed.stdout.split("pcrs:")[-1]
    assert f"7  : 0x{log.pcrs[HashAlg.SHA384][7].hex()}" in replayed.stdout.split("sha384:")[-1]

    verified = ok(sevsim("tpm", "verify", *q.verify_args(boot.log), "--expect",
                         expectation(lab, technology)))
    assert f"sha256:4  {pcr4.hex()}" in verified.stdout
    assert verified.stderr.strip().endswith(
        f"technology {technology}, secure boot on, expectations met")
    if technology != "AMD_SEV_SNP":  # an SEV boot is not the SNP boot a relying party wants
        other = sevsim("tpm", "verify", *q.verify_args(boot.log), "--expect",
                       expectation(lab, "AMD_SEV_SNP"))
        assert other.returncode == 1
        assert f"FAIL expected: PCR 0 EV_NONHOST_INFO: {technology}, expected AMD_SEV_SNP" \
            in other.stderr


def test_the_program_in_pcr4_is_the_signed_file(lab: Lab, snp: Boot, snp_quote: Quote) -> None:
    """PCR 4 measures the file the VM booted, signature and all: the unsigned ELF's hash is
    another program."""
    expect = lab.root / "expect-unsigned.json"
    expect.write_text(json.dumps({
        "program_sha256": hashlib.sha256(lab.unsigned.read_bytes()).hexdigest()}))
    done = sevsim("tpm", "verify", *snp_quote.verify_args(snp.log), "--expect", expect)
    assert done.returncode == 1
    assert "FAIL expected: PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION: " \
        f"{hashlib.sha256(lab.signed.read_bytes()).hexdigest()}" in done.stderr


def test_integrity_learn_writes_the_boots_baseline(baseline: Path, snp: Boot) -> None:
    doc = json.loads(baseline.read_text())
    log = EventLog.from_bytes(snp.log.read_bytes())
    assert doc["pcrs"]["sha256"]["4"] == log.pcrs[HashAlg.SHA256][4].hex()
    same = ok(sevsim("integrity", "check", "--baseline", baseline, "--event-log", snp.log))
    assert same.stdout.splitlines() == ["pass early boot", "pass late boot"]


# --- an unsigned program is refused ------------------------------------------------------

def test_unsigned_program_is_refused_and_logged_as_never_loaded(lab: Lab) -> None:
    refused = lab.boot("unsigned", lab.unsigned, "snp")
    assert refused.run.returncode == 125
    assert refused.run.stdout == "secure boot: unsigned: no appended signature\n"
    assert refused.run.stderr.strip().splitlines()[-1].endswith(
        "SecureBootViolation: vCPU 0: guest kernel terminated the VM: secure boot refused the "
        "program: unsigned: no appended signature")
    events = EventLog.from_bytes(refused.log.read_bytes()).events
    assert [e for e in events if e.pcr == 4] == [
        e for e in events if e.pcr == 4 and e.event_type == EventType.EV_SEPARATOR]
    assert EventType.EV_EFI_VARIABLE_AUTHORITY not in {e.event_type for e in events}
    # the TPM the VMM saved holds that log's PCRs: the refusal is attested too
    q = quote(lab, refused, "unsigned-quote")
    verified = ok(sevsim("tpm", "verify", *q.verify_args(refused.log)))
    assert "secure boot on" in verified.stderr
    expected = sevsim("tpm", "verify", *q.verify_args(refused.log), "--expect",
                      expectation(lab, "AMD_SEV_SNP"))
    assert expected.returncode == 1
    assert "FAIL expected: PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION: no boot application" \
        in expected.stderr

    # the same VM rebooted with the signed program: the same vTPM (its AK), this boot's PCRs
    reboot = lab.boot("unsigned-then-signed", lab.signed, "snp", state=refused.state)
    ok(reboot.run)
    again = quote(lab, reboot, "reboot-quote")
    assert (again.directory / "ak.pub").read_bytes() == (q.directory / "ak.pub").read_bytes()
    ok(sevsim("tpm", "verify", *again.verify_args(reboot.log), "--expect",
              expectation(lab, "AMD_SEV_SNP")))
    assert sevsim("tpm", "verify", *again.verify_args(refused.log)).returncode == 1


# --- integrity monitoring of later boots --------------------------------------------------

def test_a_changed_program_fails_late_boot_in_pcr4(lab: Lab, baseline: Path,
                                                   rebuilt: Boot) -> None:
    ok(rebuilt.run)
    done = sevsim("integrity", "check", "--baseline", baseline, "--event-log", rebuilt.log)
    assert done.returncode == 1, done.stderr
    first, second, change = done.stdout.splitlines()
    assert (first, second) == ("pass early boot", "FAIL late boot")
    was, now = (f"EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\sevsim\\program.elf sha256:"
                f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}"
                for p in (lab.signed, lab.rebuilt))
    assert change.strip() == f"PCR4 event 0: {was} became {now}"


def test_secure_boot_off_fails_early_boot_in_pcr7(lab: Lab, baseline: Path) -> None:
    off = lab.boot("secure-boot-off", lab.signed, "snp", secure_boot=False)
    assert HELLO in ok(off.run).stdout and "secure boot" not in off.run.stdout
    done = sevsim("integrity", "check", "--baseline", baseline, "--event-log", off.log,
                  "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert not report["early_boot"]["passed"]
    assert [c["pcr"] for c in report["early_boot"]["changes"]] == [7]
    # late boot misses the db entry that verified the program: nothing verified it
    assert [c["pcr"] for c in report["late_boot"]["changes"]] == [7]
    text = sevsim("integrity", "check", "--baseline", baseline, "--event-log", off.log)
    assert text.stdout.splitlines()[:2] == [
        "FAIL early boot", "     PCR7 event 0: EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=01 "
        "became EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot=00"]
    assert text.stdout.splitlines()[3].strip().startswith(
        "PCR7 event 0: EV_EFI_VARIABLE_AUTHORITY db=sha256:")


def test_another_mode_fails_early_boot_in_pcr0(baseline: Path, sev: Boot) -> None:
    done = sevsim("integrity", "check", "--baseline", baseline, "--event-log", sev.log)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "FAIL early boot" and lines[-1] == "pass late boot", lines
    assert lines[1].strip() == "PCR0 event 1: EV_NONHOST_INFO AMD_SEV_SNP became " \
        "EV_NONHOST_INFO AMD_SEV"


def test_relearn_makes_the_changed_program_the_baseline(lab: Lab, baseline: Path,
                                                        rebuilt: Boot) -> None:
    mine = lab.root / "relearned.json"
    shutil.copy(baseline, mine)
    done = sevsim("integrity", "check", "--baseline", mine, "--event-log", rebuilt.log,
                  "--relearn")
    assert done.returncode == 1 and "re-learned" in done.stderr, done.stderr
    again = ok(sevsim("integrity", "check", "--baseline", mine, "--event-log", rebuilt.log))
    assert again.stdout.splitlines() == ["pass early boot", "pass late boot"]
    assert sevsim("integrity", "check", "--baseline", mine, "--event-log",
                  lab.root / "snp" / "boot.log").returncode == 1  # the old program now fails


# --- evidence that is not this boot's, now ----------------------------------------------

def test_replayed_nonce_is_refused(snp: Boot, snp_quote: Quote) -> None:
    fresh = "00" * 16
    done = sevsim("tpm", "verify", *snp_quote.verify_args(snp.log, nonce=fresh))
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"sevsim tpm verify: FAIL nonce: quote is over nonce {NONCE}, expected {fresh}")


def test_log_of_another_boot_is_refused(snp_quote: Quote, rebuilt: Boot) -> None:
    done = sevsim("tpm", "verify", *snp_quote.verify_args(rebuilt.log))
    assert done.returncode == 1
    assert done.stderr.startswith("sevsim tpm verify: FAIL replay: "), done.stderr


def test_quote_from_another_vms_vtpm_is_refused(lab: Lab, snp: Boot, snp_quote: Quote,
                                                rebuilt: Boot) -> None:
    """Every vTPM state has its own endorsement seed, so its own AK: a quote the rebuilt
    VM's vTPM made, with that boot's own log, does not verify under the SNP VM's AK."""
    theirs = quote(lab, rebuilt, "rebuilt-quote")
    assert (theirs.directory / "ak.pub").read_bytes() != \
        (snp_quote.directory / "ak.pub").read_bytes()
    ok(sevsim("tpm", "verify", *theirs.verify_args(rebuilt.log)))  # under its own AK
    done = sevsim("tpm", "verify", "--ak", snp_quote.directory / "ak.pub",
                  *theirs.verify_args(rebuilt.log)[2:])
    assert done.returncode == 1
    assert done.stderr.startswith("sevsim tpm verify: FAIL signature: "), done.stderr
    # and the AK of one state is stable: quoting the SNP VM's state again gives the same AK
    again = quote(lab, snp, "snp-quote-again", nonce="01")
    assert (again.directory / "ak.pub").read_bytes() == \
        (snp_quote.directory / "ak.pub").read_bytes()
    assert os.listdir(snp.state)  # the state directory is still the VM's, kept
