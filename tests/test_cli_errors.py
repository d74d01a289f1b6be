"""Bad input never gives a traceback, a hang or a wrong answer.

Each case runs `python -m sevsim` as a user would, with a timeout (a hang fails the test
instead of stalling the run), and must end in one typed line on stderr with the exit status
README.md documents: 125 for bad input, 2 for a usage error. A few API-level checks make sure
the same values are refused where the CLI just passes them on.
"""

from __future__ import annotations

import http.client
import math
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ovmf_images import AMDSEV_SECTIONS, make_ovmf
from sevsim.abi.snp_report import REPORT_SIZE
from sevsim.attest.kds_client import KdsClient
from sevsim.attest.measure import guest_digest, ovmf_digest
from sevsim.errors import ConfigError, ResourceExhausted
from sevsim.firmware.kds import KeyDistribution, make_server
from sevsim.firmware.snp_pki import SnpPki
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host, parse_size
from sevsim.hw.chips import chip_preset
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.inputs import MAX_CERT_FILE, MAX_SEV_CERT

TIMEOUT = 60  # seconds: every case here finishes in a few; more means it hangs
EXIT_ERROR = 125
ABSURD = "99999999999999999999G"  # beyond 2^64 bytes
TOO_BIG = "4000000G"  # below 2^52, beyond any machine's memory


def sevsim(*args: str | Path, redirect: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m sevsim ARGS` (with a shell redirection of its stdout, if given)."""
    command = shlex.join([sys.executable, "-m", "sevsim", *map(str, args)])
    return subprocess.run(f"{command} {redirect}", shell=True, capture_output=not redirect,
                          stderr=subprocess.PIPE if redirect else None, text=True,
                          timeout=TIMEOUT, check=False)


def assert_typed(done: subprocess.CompletedProcess[str], *words: str,
                 status: int = EXIT_ERROR) -> None:
    """Exit `status`, no traceback, and stderr one line naming the problem."""
    output = (done.stdout or "") + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == status, output
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs the cases name: a guest, a platform's PDH and a session for it, an OVMF image,
    a report-sized file, a secret, a plain file where a directory belongs."""
    root = tmp_path_factory.mktemp("inputs")
    exported = sevsim("owner", "export", root / "chain", "--chip", "rome", "--seed", "t")
    assert exported.returncode == 0, exported.stderr
    opened = sevsim("owner", "session", root / "chain" / "pdh.cert", "--out", root / "session")
    assert opened.returncode == 0, opened.stderr
    paths = {"dir": root, "pdh": root / "chain" / "pdh.cert", "session": root / "session",
             "ovmf": root / "ovmf.fd", "report": root / "report.bin",
             "secret": root / "secret.txt", "file": root / "file"}
    paths["ovmf"].write_bytes(make_ovmf(AMDSEV_SECTIONS))
    paths["report"].write_bytes(bytes(REPORT_SIZE))
    paths["secret"].write_text("hunter2\n")
    paths["file"].write_text("not a directory\n")
    return paths


ZERO_DIGEST, ZERO_MEASURE = "00" * 32, "00" * 48

CASES = [
    # sizes and counts the machine or the formats cannot hold
    (["run", "{elf}", "--memory", TOO_BIG], ["ResourceExhausted", "host memory"]),
    (["run", "{elf}", "--memory", ABSURD], ["ConfigError", "2^52"]),
    (["debug", "read", "{elf}", "0", "16", "--memory", TOO_BIG], ["ResourceExhausted"]),
    (["debug", "read", "{elf}", "0", "0x100000000000", "--memory", "16M"],
     ["ConfigError", "length"]),
    (["report", "--ovmf", "{ovmf}", "-o", "{dir}/r.bin", "--memory", TOO_BIG],
     ["ResourceExhausted"]),
    (["measure", "{elf}", "--memory", ABSURD], ["ConfigError", "2^52"]),
    (["measure", "{elf}", "--vcpus", "-1"], ["ConfigError", "vCPU"]),
    (["measure", "{elf}", "--vcpus", "1000000000"], ["ConfigError", "at most 64"]),
    (["measure", "--ovmf", "{ovmf}", "--vcpus", "1000000000"], ["ConfigError", "at most 4096"]),
    (["owner", "measure", "{elf}", "--memory", ABSURD], ["ConfigError", "2^52"]),
    (["owner", "measure", "{elf}", "--vcpus", "-1"], ["ConfigError", "vCPU"]),
    # numbers wider than their field
    (["owner", "session", "{pdh}", "--out", "{dir}/s2", "--policy", "-1"],
     ["ConfigError", "policy"]),
    (["owner", "session", "{pdh}", "--out", "{dir}/s2", "--policy", "0x10000000000"],
     ["ConfigError", "policy"]),
    (["owner", "secret", "{session}", "--launch-measure", ZERO_MEASURE, "--secret",
      "{secret}", "--out", "{dir}/p", "--digest", ZERO_DIGEST, "--policy", "0x10000000000"],
     ["ConfigError", "policy"]),
    (["run", "{elf}", "--secret", "{secret}", "--policy", "0x10000000000"],
     ["ConfigError", "policy"]),
    (["report", "--ovmf", "{ovmf}", "-o", "{dir}/r.bin", "--policy", "0x1" + "0" * 16],
     ["ConfigError", "policy"]),
    # time limits that would mean none, or an instant one
    (["run", "{elf}", "--timeout", "nan"], ["ConfigError", "timeout"]),
    (["run", "{elf}", "--timeout", "-1"], ["ConfigError", "timeout"]),
    (["debug", "read", "{elf}", "0", "16", "--timeout", "inf"], ["ConfigError", "timeout"]),
    # the key server a verifier is pointed at
    (["verify", "{report}", "--kds", "notaurl"], ["ConfigError", "notaurl"]),
    (["verify", "{report}", "--kds", "http://127.0.0.1:9", "--cache", "{file}"],
     ["ConfigError", "not a directory"]),
    # endless inputs: refused after the largest size their format allows
    (["show", "/dev/zero"], ["ConfigError", "/dev/zero", "report"]),
    (["verify", "/dev/zero", "--kds", "http://127.0.0.1:9"], ["ConfigError", "/dev/zero"]),
    (["verify", "{report}", "--certs", "/dev/zero"], ["ConfigError", "certificate table"]),
    (["verify", "{report}", "--certs", "{dir}", "--crl-file", "/dev/zero"],
     ["ConfigError", "CRL"]),
    (["validate", "{report}", "--policy", "/dev/zero"], ["ConfigError", "policy"]),
    (["measure", "--ovmf", "/dev/zero"], ["ConfigError", "OVMF"]),
    (["measure", "/dev/zero"], ["ConfigError", "ELF"]),
    (["owner", "secret", "{session}", "--launch-measure", ZERO_MEASURE, "--secret",
      "/dev/zero", "--out", "{dir}/p", "--digest", ZERO_DIGEST], ["ConfigError", "secret"]),
    (["run", "{elf}", "--secret", "/dev/zero"], ["ConfigError", "secret"]),
    # a key server that cannot be served
    (["kds", "serve", "--seed", "a", "--chip", "bogus"], ["ConfigError", "bogus"]),
    (["kds", "serve", "--seed", "a", "--chip", "naples"], ["ConfigError", "SEV-SNP"]),
    (["kds", "serve", "--seed", "a", "--port", "-1"], ["ConfigError", "port"]),
    (["kds", "serve", "--seed", "a", "--port", "70000"], ["ConfigError", "port"]),
    (["kds", "serve", "--seed", "a", "--host", "192.0.2.1"], ["ConfigError", "192.0.2.1"]),
    (["kds", "serve", "--seed", "a", "--host", "not..a..host"], ["ConfigError", "not..a..host"]),
    *[(["kds", "serve", "--seed", "a", "--rate-limit", rate], ["ConfigError", "rate limit"])
      for rate in ("nan", "0", "-1", "1e-300", "inf")],
]


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_typed_line(build, files: dict[str, Path], args: list[str],
                                     words: list[str]) -> None:
    names = {name: str(path) for name, path in files.items()}
    elf = build("hello") if "{elf}" in args else ""
    done = sevsim(*(arg.format(elf=elf, **names) for arg in args))
    assert_typed(done, *words)


@pytest.mark.parametrize(("name", "error", "limit"),
                         [(f"{n}.cert", "SevCertFormatError", MAX_SEV_CERT)
                          for n in ("pdh", "pek", "oca", "cek")]
                         + [(f"{n}.cert", "ConfigError", MAX_CERT_FILE) for n in ("ark", "ask")])
def test_owner_verify_refuses_an_endless_certificate(files: dict[str, Path], tmp_path: Path,
                                                     name: str, error: str, limit: int) -> None:
    """Every certificate `owner verify` reads from its directory is read bounded: a symlink
    to /dev/zero is one typed line naming the file and the limit, exit 125."""
    chain = tmp_path / "chain"
    shutil.copytree(files["pdh"].parent, chain)
    (chain / name).unlink()
    (chain / name).symlink_to("/dev/zero")
    done = sevsim("owner", "verify", chain, "--trust", "sevsim")
    assert_typed(done, error, str(chain / name), f"more than {limit} bytes")


def test_a_port_in_use_is_one_typed_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = sevsim("kds", "serve", "--seed", "a", "--port", str(port))
    assert_typed(done, "ConfigError", f"127.0.0.1:{port}")


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("args", [["chips"], ["measure", "{elf}"], ["owner", "measure", "{elf}"]])
def test_stdout_closed_or_full_is_one_typed_line(build, redirect: str,
                                                 args: list[str]) -> None:
    done = sevsim(*(a.format(elf=build("hello")) for a in args), redirect=redirect)
    assert_typed(done, "OutputError", "standard output")


def test_a_bad_buffer_pointer_is_efault_and_the_program_goes_on(build) -> None:
    """tests/guests/efault.c passes each pointer-taking system call a pointer beyond its RAM
    (SNP: the guest requests too); every one returns -EFAULT (14)."""
    for mode, calls in (("sev", 6), ("snp", 11)):
        done = sevsim("run", build("efault"), "--mode", mode, "--memory", "16M")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        *results, last = done.stdout.splitlines()
        assert last == "survived"
        assert len(results) == calls + (mode == "snp"), results
        for line in results:
            name, value = line.split()
            assert value == ("0" if name == "snp_report-good" else "-14"), line


# -- the same refusals at the API ----------------------------------------------------------------


def test_the_api_refuses_what_the_cli_passes_on(build) -> None:
    image = parse_elf(build("hello").read_bytes())
    with pytest.raises(ResourceExhausted):
        Host(memory=TOO_BIG)
    host = Host(memory="16M")
    with pytest.raises(ResourceExhausted):
        host.create_vm(memory=TOO_BIG)
    with pytest.raises(ConfigError):
        host.create_vm(memory=ABSURD)
    for size in (ABSURD, 1 << 60, -1):
        with pytest.raises(ConfigError):
            parse_size(size)
    with pytest.raises(ConfigError, match="vCPU"):
        guest_digest("sev", image, 64 << 20, 10**9, kernel_identity())
    with pytest.raises(ConfigError, match="vCPU"):
        ovmf_digest("snp", make_ovmf(AMDSEV_SECTIONS), -1, "EPYC-Milan")
    with pytest.raises(ConfigError, match="memory"):
        guest_digest("snp", image, 1 << 70, 1, kernel_identity())
    for url in ("notaurl", "ftp://kds.example", "http://"):
        with pytest.raises(ConfigError):
            KdsClient(url)
    for rate in (math.nan, 0.0, -1.0, 1e-300):
        with pytest.raises(ConfigError):
            make_server(KeyDistribution(), rate_limit=rate)
    with pytest.raises(ConfigError):
        make_server(KeyDistribution(), port=70000)


@contextmanager
def serving(rate_limit: float | None = None) -> Iterator[tuple[http.client.HTTPConnection, str]]:
    """A KDS for one simulated Milan chip, as `sevsim kds serve` makes it: a connection to
    it and the chip's hwID."""
    preset = chip_preset("milan")
    chip = SnpPki(preset, MemoryController(4096, EncryptionEngine(preset.tweak)), seed=b"a")
    kds = KeyDistribution()
    kds.register([chip])
    server = make_server(kds, rate_limit=rate_limit)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10),
               chip.chip_id().hex())
    finally:
        server.shutdown()
        server.server_close()


def test_kds_never_echoes_a_query_into_its_status_line() -> None:
    """A TCB value that is not a number is refused with 400 and AMD's reason phrase; what
    was wrong goes in the body (a status line is latin-1: '%ff' broke the reply)."""
    with serving() as (connection, hwid):
        connection.request("GET", f"/vcek/v1/Milan/{hwid}?blSPL=%ff&teeSPL=0&snpSPL=0"
                           "&ucodeSPL=0")
        answer = connection.getresponse()
        body = answer.read().decode()
        assert (answer.status, answer.reason) == (400, "Bad Request")
        assert "blSPL" in body


def test_kds_rate_limit_asks_for_at_most_an_hour() -> None:
    with serving(rate_limit=1 / 3600) as (connection, _):
        connection.request("GET", "/vcek/v1/Milan/cert_chain")
        assert connection.getresponse().read()
        connection.request("GET", "/vcek/v1/Milan/cert_chain")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 429
        assert 0 < int(answer.getheader("Retry-After", "0")) <= 3600
