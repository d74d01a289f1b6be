"""The host-provided vTPM against real swtpm processes, with tpm2-tools as the oracle: PCR
extend/read, an attestation key, quotes that sevsim and tpm2_checkquote both accept, and the
faults (swtpm missing, failing, killed) that must leave no process or socket behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi import tpm2
from sevsim.abi.tpm2 import Alg, HashAlg
from sevsim.attest.tpm_quote import ak_public_key, verify_quote
from sevsim.errors import QuoteError, TpmError, TpmFormatError, VtpmError
from sevsim.host import vtpm as vtpm_module
from sevsim.host.vtpm import Vtpm

pytestmark = pytest.mark.skipif(
    shutil.which("swtpm") is None or shutil.which("tpm2_checkquote") is None,
    reason="needs Debian's swtpm and tpm2-tools (.ci/run installs them)")

NONCE = bytes.fromhex("5eb51a7e00c0ffee5eb51a7e00c0ffee")
SELECTION = {HashAlg.SHA256: [0, 16, 23], HashAlg.SHA384: [16]}


def swtpm_children() -> set[int]:
    """Pids of swtpm processes this test process started (its children named swtpm)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        comm = stat_line[stat_line.index("(") + 1:stat_line.rindex(")")]
        ppid = int(stat_line[stat_line.rindex(")") + 2:].split()[1])
        if comm == "swtpm" and ppid == os.getpid():
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_orphan_swtpm() -> Iterator[None]:
    """Every test leaves no swtpm it started running, whether it passed or failed."""
    before = swtpm_children()
    yield
    left = swtpm_children() - before
    for pid in left:  # do not let one leak poison the rest of the run
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not left, f"swtpm processes left running: {sorted(left)}"


@pytest.fixture
def vtpm() -> Iterator[Vtpm]:
    with Vtpm() as v:
        yield v
    assert not os.path.exists(v.socket_path) and not v.runtime.exists()


def extend(v: Vtpm, pcr: int, data: bytes) -> dict[int, bytes]:
    digests = {alg: alg.hash(data) for alg in (HashAlg.SHA256, HashAlg.SHA384)}
    v.pcr_extend(pcr, digests)
    return digests


def quote(v: Vtpm, ak: tpm2.Primary, nonce: bytes = NONCE,
          selection: tpm2.PcrSelection = SELECTION) -> tuple[bytes, bytes]:
    return v.quote(ak.handle, nonce, selection)


# --- commands against swtpm -----------------------------------------------------------------

def test_extend_pcr16_and_read_back(vtpm: Vtpm) -> None:
    first = extend(vtpm, 16, b"first event")
    second = extend(vtpm, 16, b"second event")
    expected = {}
    for alg, name in ((HashAlg.SHA256, "sha256"), (HashAlg.SHA384, "sha384")):
        value = bytes(alg.digest_size)
        for digests in (first, second):
            value = hashlib.new(name, value + digests[alg]).digest()
        expected[alg] = value
    values = vtpm.pcr_read({HashAlg.SHA256: [16, 23], HashAlg.SHA384: [16]})
    assert values[HashAlg.SHA256][16] == expected[HashAlg.SHA256]
    assert values[HashAlg.SHA384][16] == expected[HashAlg.SHA384]
    assert values[HashAlg.SHA256][23] == bytes(32)  # untouched


def test_tpm2_pcrread_sees_what_sevsim_extended(vtpm: Vtpm, tmp_path: Path) -> None:
    extend(vtpm, 16, b"seen by tpm2-tools")
    out = tmp_path / "pcrs.bin"
    subprocess.run(["tpm2_pcrread", "-T", vtpm.tcti, "sha256:16+sha384:16", "-o", str(out)],
                   check=True, capture_output=True, timeout=30)
    values = vtpm.pcr_read({HashAlg.SHA256: [16], HashAlg.SHA384: [16]})
    assert out.read_bytes() == values[HashAlg.SHA256][16] + values[HashAlg.SHA384][16]
    assert values[HashAlg.SHA256][16] != bytes(32)


def test_get_random_and_startup_twice(vtpm: Vtpm) -> None:
    a, b = vtpm.get_random(16), vtpm.get_random(16)
    assert len(a) == len(b) == 16 and a != b
    with pytest.raises(TpmError) as e:  # swtpm --flags startup-clear already started it
        tpm2.parse_startup_response(vtpm.execute(tpm2.startup_command()))
    assert (e.value.rc, e.value.name) == (0x100, "TPM_RC_INITIALIZE")
    assert "TPM2_Startup" in str(e.value)


def test_ak_template_is_what_tpm2_tools_makes(vtpm: Vtpm, tmp_path: Path) -> None:
    """The same template under the same seed gives the same key: tpm2_createprimary with
    the AK attributes derives exactly the public key sevsim's template does."""
    ak = vtpm.create_ak()
    fields = tpm2.parse_ecc_public(ak.public)
    assert fields.attributes == 0x00050072 == tpm2.AK_ATTRIBUTES
    assert (fields.scheme, fields.scheme_hash, fields.curve) == (Alg.ECDSA, HashAlg.SHA256, 3)
    assert ak.name == tpm2.object_name(ak.public)
    tpm2.parse_flush_context_response(vtpm.execute(tpm2.flush_context_command(ak.handle)))
    ctx, pub = tmp_path / "ak.ctx", tmp_path / "ak.pub"
    subprocess.run(["tpm2_createprimary", "-T", vtpm.tcti, "-C", "e", "-g", "sha256",
                    "-G", "ecc256:ecdsa-sha256:null", "-a",
                    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
                    "-c", str(ctx)], check=True, capture_output=True, timeout=30)
    subprocess.run(["tpm2_readpublic", "-T", vtpm.tcti, "-c", str(ctx), "-o", str(pub)],
                   check=True, capture_output=True, timeout=30)
    theirs = tpm2.parse_ecc_public(pub.read_bytes()[2:])  # TPM2B_PUBLIC
    assert (theirs.x, theirs.y) == (fields.x, fields.y)
    subprocess.run(["tpm2_flushcontext", "-T", vtpm.tcti, "-t"], check=True,
                   capture_output=True, timeout=30)


def test_flushed_ak_is_gone(vtpm: Vtpm) -> None:
    ak = vtpm.create_ak()
    tpm2.parse_flush_context_response(vtpm.execute(tpm2.flush_context_command(ak.handle)))
    with pytest.raises(TpmError) as e:
        vtpm.flush(ak.handle)
    assert e.value.name.startswith("TPM_RC_HANDLE"), e.value.name
    with pytest.raises(TpmError):
        quote(vtpm, ak)


def test_extend_with_wrong_password_is_refused(vtpm: Vtpm) -> None:
    command = tpm2.pcr_extend_command(16, {HashAlg.SHA256: bytes(32)}, password=b"wrong")
    with pytest.raises(TpmError) as e:
        tpm2.parse_pcr_extend_response(vtpm.execute(command))
    assert e.value.name == "TPM_RC_BAD_AUTH (session 1)", e.value.name  # PCRs are noDA


# --- quotes ---------------------------------------------------------------------------------

def test_quote_verifies_and_tampering_is_refused(vtpm: Vtpm) -> None:
    extend(vtpm, 16, b"boot component")
    ak = vtpm.create_ak()
    attest, signature = quote(vtpm, ak)
    values = vtpm.pcr_read(SELECTION)
    fields = verify_quote(ak.public, attest, signature, NONCE, values)
    assert fields.extra_data == NONCE
    assert fields.pcr_select == {HashAlg.SHA256: (0, 16, 23), HashAlg.SHA384: (16,)}

    flipped = bytes([NONCE[0] ^ 1]) + NONCE[1:]
    with pytest.raises(QuoteError) as e:
        verify_quote(ak.public, attest, signature, flipped, values)
    assert e.value.reason == "nonce"

    other_value = {alg: dict(v) for alg, v in values.items()}
    other_value[HashAlg.SHA256][16] = hashlib.sha256(b"another program").digest()
    with pytest.raises(QuoteError) as e:
        verify_quote(ak.public, attest, signature, NONCE, other_value)
    assert e.value.reason == "pcrs"

    other_pcrs = vtpm.pcr_read({HashAlg.SHA256: [0, 16], HashAlg.SHA384: [16]})
    with pytest.raises(QuoteError) as e:
        verify_quote(ak.public, attest, signature, NONCE, other_pcrs)
    assert e.value.reason == "pcrs"

    sig = tpm2.parse_signature(signature)
    changed = tpm2.marshal_signature(tpm2.EcdsaSignature(
        sig.hash_alg, sig.r, (int.from_bytes(sig.s, "big") ^ 1).to_bytes(len(sig.s), "big")))
    assert tpm2.marshal_signature(sig) == signature
    with pytest.raises(QuoteError) as e:
        verify_quote(ak.public, attest, changed, NONCE, values)
    assert e.value.reason == "signature"

    other_ak = vtpm.create_ak(tpm2.TPM_RH_OWNER)
    with pytest.raises(QuoteError) as e:
        verify_quote(other_ak.public, attest, signature, NONCE, values)
    assert e.value.reason == "signature"

    # a quote over the PCR after another extend no longer matches the old values
    extend(vtpm, 16, b"late change")
    attest2, signature2 = quote(vtpm, ak)
    with pytest.raises(QuoteError) as e:
        verify_quote(ak.public, attest2, signature2, NONCE, values)
    assert e.value.reason == "pcrs"


def checkquote(tmp_path: Path, ak: tpm2.Primary, attest: bytes, signature: bytes,
               nonce: bytes, values: dict[int, dict[int, bytes]],
               selection: tpm2.PcrSelection = SELECTION) -> subprocess.CompletedProcess[str]:
    """tpm2_checkquote on sevsim's files: AK as PEM, TPMS_ATTEST, TPMT_SIGNATURE, and the PCR
    values concatenated in selection order with -l naming them."""
    (tmp_path / "ak.pem").write_bytes(ak_public_key(ak.public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "quote.msg").write_bytes(attest)
    (tmp_path / "quote.sig").write_bytes(signature)
    (tmp_path / "pcrs.bin").write_bytes(b"".join(values[alg][pcr]
                                                 for alg, pcrs in selection.items()
                                                 for pcr in pcrs))
    banks = {HashAlg.SHA256: "sha256", HashAlg.SHA384: "sha384"}
    pcr_list = "+".join(f"{banks[HashAlg(alg)]}:{','.join(map(str, pcrs))}"
                        for alg, pcrs in selection.items())
    return subprocess.run(
        ["tpm2_checkquote", "-u", str(tmp_path / "ak.pem"), "-m", str(tmp_path / "quote.msg"),
         "-s", str(tmp_path / "quote.sig"), "-f", str(tmp_path / "pcrs.bin"), "-l", pcr_list,
         "-g", "sha256", "-q", nonce.hex()], capture_output=True, text=True, timeout=30)


def test_tpm2_checkquote_accepts_sevsims_quote(vtpm: Vtpm, tmp_path: Path) -> None:
    extend(vtpm, 16, b"boot component")
    ak = vtpm.create_ak()
    attest, signature = quote(vtpm, ak)
    values = vtpm.pcr_read(SELECTION)
    ok = checkquote(tmp_path, ak, attest, signature, NONCE, values)
    assert ok.returncode == 0, ok.stderr
    # the oracle can fail: another nonce, another PCR value
    assert checkquote(tmp_path, ak, attest, signature, NONCE[::-1], values).returncode != 0
    other = {alg: dict(v) for alg, v in values.items()}
    other[HashAlg.SHA384][16] = bytes(48)
    assert checkquote(tmp_path, ak, attest, signature, NONCE, other).returncode != 0


VECTOR = Path(__file__).resolve().parent / "data" / "tpm" / "swtpm-quote"


def test_checked_in_swtpm_quote_verifies_with_both() -> None:
    """The recorded swtpm quote (tests/data/tpm/README.md): sevsim parses the responses back
    to the recorded files, and sevsim and tpm2_checkquote both accept it."""
    attest, signature = tpm2.parse_quote_response((VECTOR / "quote.response").read_bytes())
    assert attest == (VECTOR / "quote.attest").read_bytes()
    assert signature == (VECTOR / "quote.signature").read_bytes()
    values = tpm2.parse_pcr_read_response((VECTOR / "pcr_read.response").read_bytes()).values
    nonce = (VECTOR / "nonce.bin").read_bytes()
    ak = (VECTOR / "ak.public").read_bytes()
    fields = verify_quote(ak, attest, signature, nonce, values)
    assert fields.pcr_select == {HashAlg.SHA256: (0, 16, 23), HashAlg.SHA384: (16,)}
    expected16 = hashlib.sha256(bytes(32) + hashlib.sha256(b"sevsim test vector").digest())
    assert values[HashAlg.SHA256][16] == expected16.digest()
    pcrs = b"".join(values[alg][pcr] for alg, pcrs in SELECTION.items() for pcr in pcrs)
    assert pcrs == (VECTOR / "pcrs.bin").read_bytes()
    def checkquote(nonce: bytes) -> subprocess.CompletedProcess[str]:
        # -u takes the raw TPMT_PUBLIC too (tpm2-tools' "tss" public format)
        return subprocess.run(
            ["tpm2_checkquote", "-u", str(VECTOR / "ak.public"),
             "-m", str(VECTOR / "quote.attest"), "-s", str(VECTOR / "quote.signature"),
             "-f", str(VECTOR / "pcrs.bin"), "-l", "sha256:0,16,23+sha384:16", "-g", "sha256",
             "-q", nonce.hex()], capture_output=True, text=True, timeout=30)

    assert checkquote(nonce).returncode == 0, checkquote(nonce).stderr
    assert "nonce" in checkquote(nonce[::-1]).stderr


# --- the process: state, faults, cleanup ----------------------------------------------------

def test_state_dir_survives_and_sockets_do_not(tmp_path: Path) -> None:
    state = tmp_path / "vm0-tpm"
    with Vtpm(state) as v:
        ak1 = tpm2.parse_ecc_public(v.create_ak().public)
        sockets = (v.socket_path, v.ctrl_path)
        assert all(stat.S_ISSOCK(os.stat(p).st_mode) for p in sockets)
    assert v.proc.returncode == 0  # CMD_SHUTDOWN: swtpm exited by itself
    assert not any(os.path.exists(p) for p in sockets)
    assert any(state.iterdir())  # the NV state (tpm2-00.permall)
    with Vtpm(state) as again:  # same endorsement seed, so the same AK
        assert tpm2.parse_ecc_public(again.create_ak().public) == ak1


def test_swtpm_missing_from_path() -> None:
    with pytest.raises(VtpmError, match="sevsim-no-such-swtpm: not found on PATH"):
        Vtpm(swtpm="sevsim-no-such-swtpm")


def test_second_swtpm_on_a_locked_state_dir_fails_to_start(tmp_path: Path) -> None:
    """A real start failure: swtpm locks its state directory, so one VM's TPM state cannot
    be run twice."""
    with Vtpm(tmp_path / "tpm") as first:
        before = set(Path("/tmp").glob("sevsim-vtpm-*"))
        with pytest.raises(VtpmError, match=r"swtpm: exited with status 1 at start: .*lock"):
            Vtpm(tmp_path / "tpm")
        assert set(Path("/tmp").glob("sevsim-vtpm-*")) == before
        assert len(first.get_random(8)) == 8  # the first one is untouched


def test_swtpm_failing_to_start(tmp_path: Path) -> None:
    fake = tmp_path / "swtpm"
    fake.write_text("#!/bin/sh\necho 'swtpm: cannot open TPM state' >&2\nexit 3\n")
    fake.chmod(0o755)
    before = set(Path("/tmp").glob("sevsim-vtpm-*"))
    with pytest.raises(VtpmError, match=r"exited with status 3 at start: swtpm: cannot open"):
        Vtpm(swtpm=str(fake))
    assert set(Path("/tmp").glob("sevsim-vtpm-*")) == before


def test_state_dir_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    before = set(Path("/tmp").glob("sevsim-vtpm-*"))
    with pytest.raises(VtpmError, match="cannot make its state directory"):
        Vtpm(tmp_path / "a-file" / "tpm")
    assert set(Path("/tmp").glob("sevsim-vtpm-*")) == before


def test_swtpm_killed_mid_run() -> None:
    with Vtpm() as v:
        extend(v, 16, b"before the kill")
        os.kill(v.pid, signal.SIGKILL)
        v.proc.wait(5)
        with pytest.raises(VtpmError, match=rf"swtpm \(pid {v.pid}\) killed by signal 9"):
            v.execute(tpm2.get_random_command(8))
    assert not v.runtime.exists()
    with pytest.raises(VtpmError, match="already stopped"):
        v.transmit(tpm2.get_random_command(8))


HUNG_SWTPM = """#!{python}
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
paths = [a.split("path=")[1] for a in sys.argv if a.startswith("type=unixio,path=")]
listeners = []
for path in paths:
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen()
    listeners.append(s)
time.sleep(60)
"""


def test_hung_swtpm_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swtpm that ignores CMD_SHUTDOWN and SIGTERM still goes, by SIGKILL."""
    monkeypatch.setattr(vtpm_module, "STOP_TIMEOUT", 0.2)
    fake = tmp_path / "swtpm"
    fake.write_text(HUNG_SWTPM.format(python=sys.executable))
    fake.chmod(0o755)
    with Vtpm(swtpm=str(fake)) as v:
        pass
    assert v.proc.returncode == -signal.SIGKILL
    assert not v.runtime.exists()


def test_an_exception_inside_the_with_block_stops_swtpm() -> None:
    with pytest.raises(RuntimeError, match="a failing test"), Vtpm() as v:
        extend(v, 16, b"then something fails")
        raise RuntimeError("a failing test")
    assert v.pid not in swtpm_children() and v.proc.returncode == 0
    assert not v.runtime.exists()


def test_forgotten_vtpm_is_stopped_by_its_finalizer() -> None:
    v = Vtpm()
    pid, runtime = v.pid, v.runtime
    assert pid in swtpm_children()
    del v
    assert pid not in swtpm_children() and not runtime.exists()


def test_malformed_command_gets_a_response_code(vtpm: Vtpm) -> None:
    """Garbage on the data channel is the TPM's business: it answers with a code."""
    response = vtpm.transmit(b"\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x7b\xff")  # short size
    assert tpm2.response_code(response) != 0
    assert tpm2.parse_get_random_response(vtpm.execute(tpm2.get_random_command(4)))


# --- marshalling without a TPM --------------------------------------------------------------

def test_response_codes_are_named() -> None:
    assert tpm2.rc_name(0x922) == "TPM_RC_RETRY"
    assert tpm2.rc_name(0x1C4) == "TPM_RC_VALUE (parameter 1)"
    assert tpm2.rc_name(0x98E) == "TPM_RC_AUTH_FAIL (session 1)"
    assert tpm2.rc_name(0x18B) == "TPM_RC_HANDLE (handle 1)"
    assert tpm2.rc_name(0x08B) == "TPM_RC_HANDLE"
    error = TpmError(0x922, tpm2.rc_name(0x922), "TPM2_Quote")
    assert str(error) == "TPM2_Quote: TPM_RC_RETRY (0x922)"


@pytest.mark.parametrize("rc", [0x100, 0x922, 0x1C4, 0x2C4, 0x18B, 0x28B, 0x98E, 0xA8E,
                                0x9A2, 0x143, 0x184, 0x2D8])
def test_response_code_location_agrees_with_tpm2_rc_decode(rc: int) -> None:
    """tpm2_rc_decode prints descriptions, not names, but the same handle, session or
    parameter number, and the same warning/error class."""
    decoded = subprocess.run(["tpm2_rc_decode", hex(rc)], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    name = tpm2.rc_name(rc)
    for where in ("handle", "session", "parameter"):
        if f"({where} " in name:
            number = name.split(f"({where} ")[1].rstrip(")")
            assert f"tpm:{where}({number}):" in decoded, (name, decoded)
            break
    else:
        assert decoded.startswith("tpm:warn" if rc & 0x900 == 0x900 else "tpm:"), decoded
        assert "(" not in name, name


def test_command_bytes() -> None:
    """Byte for byte against Part 3's layouts."""
    assert tpm2.startup_command().hex() == "80010000000c000001440000"
    assert tpm2.get_random_command(16).hex() == "80010000000c0000017b0010"
    assert tpm2.flush_context_command(0x80000000).hex() == "80010000000e0000016580000000"
    assert tpm2.pcr_read_command({HashAlg.SHA256: [16]}).hex() == (
        "8001000000140000017e" "00000001" "000b" "03" "000001")
    assert tpm2.pcr_extend_command(16, {HashAlg.SHA256: bytes(32)}).hex() == (
        "80020000004100000182" "00000010" "00000009" "40000009" "0000" "00" "0000"
        "00000001" "000b" + "00" * 32)
    assert tpm2.ecc_ak_template().hex() == (
        "0023" "000b" "00050072" "0000" "0010" "0018" "000b" "0003" "0010" "0000" "0000")


def test_attest_parser_refuses_wrong_magic_and_type(vtpm: Vtpm) -> None:
    attest, _ = quote(vtpm, vtpm.create_ak())
    with pytest.raises(TpmFormatError, match="magic"):
        tpm2.parse_attest(b"\x00" + attest[1:])
    with pytest.raises(TpmFormatError, match="TPM_ST_ATTEST_QUOTE"):
        tpm2.parse_attest(attest[:4] + b"\x80\x17" + attest[6:])
    for cut in range(len(attest)):
        with pytest.raises(TpmFormatError):
            tpm2.parse_attest(attest[:cut])
    with pytest.raises(TpmFormatError, match="trailing"):
        tpm2.parse_attest(attest + b"\x00")


PARSERS = [tpm2.parse_attest, tpm2.parse_signature, tpm2.parse_ecc_public,
           tpm2.parse_quote_response, tpm2.parse_pcr_read_response,
           tpm2.parse_create_primary_response, tpm2.parse_get_random_response,
           tpm2.parse_pcr_extend_response, tpm2.response_code, tpm2.object_name]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), which=st.sampled_from(PARSERS))
def test_parsers_raise_only_typed_errors(data: bytes, which: object) -> None:
    with contextlib.suppress(TpmFormatError, TpmError):
        which(data)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(number=st.integers(-2**40, 2**40), which=st.sampled_from([
    tpm2.startup_command, tpm2.get_random_command, tpm2.flush_context_command,
    lambda n: tpm2.pcr_extend_command(n, {HashAlg.SHA256: bytes(32)}),
    lambda n: tpm2.pcr_read_command({n: [0]}), lambda n: tpm2.pcr_read_command({HashAlg.SHA1: [n]}),
    lambda n: tpm2.quote_command(n, b"", {}),
    lambda n: tpm2.create_primary_command(tpm2.ecc_ak_template(), n)]))
def test_builders_refuse_numbers_out_of_range_typed(number: int, which: object) -> None:
    try:
        command = which(number)  # type: ignore[operator]
    except TpmFormatError:
        return
    assert int.from_bytes(command[2:6], "big") == len(command)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_verify_quote_on_garbage_is_a_quote_error(data: bytes) -> None:
    public = tpm2.ecc_ak_template()[:-4] + b"\x00\x01\x01\x00\x01\x01"  # not on the curve
    with pytest.raises(QuoteError):
        verify_quote(public, data, data, NONCE, {})
