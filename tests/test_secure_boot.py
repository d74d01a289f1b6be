"""Secure boot for guest programs: EFI signature lists byte for byte with efitools, appended
PKCS#7 signatures that openssl verifies, the firmware's verdicts on real signed C programs in
real VMs, and the PCR 7 measurements EDK2 makes for them."""

from __future__ import annotations

import datetime
import hashlib
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim import Host, SecureBootConfig, parse_elf, sign_program
from sevsim.abi import efi_siglist, module_signature
from sevsim.abi.bootinfo import Segment
from sevsim.abi.tcg_eventlog import (
    EFI_IMAGE_SECURITY_DATABASE_GUID,
    SECURE_BOOT_VARIABLES,
    EventType,
    uefi_variable_data,
)
from sevsim.errors import (
    ImageSignatureError,
    SecureBootConfigError,
    SecureBootViolation,
    SignatureListError,
)
from sevsim.guest.secure_boot import VerdictStatus, check, loaded_mismatch, pcr7_measurements
from sevsim.host.secure_boot import SEVSIM_OWNER_GUID

OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")
HELLO = "Hello from a sevsim guest!"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Identity:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(PEM)

    def save(self, directory: Path, name: str) -> tuple[Path, Path]:
        key, cert = directory / f"{name}.key", directory / f"{name}.pem"
        key.write_bytes(self.key_pem)
        cert.write_bytes(self.cert_pem)
        return key, cert


def identity(name: str, issuer: Identity | None = None, *, ca: bool = False,
             ecdsa: bool = False) -> Identity:
    """A key and its certificate, self-signed or issued by `issuer`."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if ecdsa
        else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer.key if issuer else key, hashes.SHA256()))
    return Identity(key, cert)


@pytest.fixture(scope="module")
def keys() -> dict[str, Identity]:
    ca = identity("sevsim test CA", ca=True)
    return {"signer": identity("program signer"), "other": identity("someone else"),
            "ca": ca, "leaf": identity("CA-issued signer", ca), "ec": identity("ec signer",
                                                                                  ecdsa=True)}


@pytest.fixture(scope="module")
def hello(build: Callable[..., Path]) -> bytes:
    return build("hello").read_bytes()


def tool(name: str) -> str:
    """A Debian tool CI installs (efitools, openssl): missing, the test fails."""
    found = shutil.which(name)
    assert found, f"{name}: install it with apt-get (see .ci/run)"
    return found


def variables(db: Sequence[Identity], dbx: Sequence[Identity] = (),
              dbx_hashes: tuple[bytes, ...] = ()) -> dict[str, bytes]:
    return SecureBootConfig(db=tuple(i.cert for i in db), dbx_certs=tuple(i.cert for i in dbx),
                            dbx_hashes=dbx_hashes).variables()


# -- EFI_SIGNATURE_LIST --------------------------------------------------------------------
def test_signature_list_matches_efitools_byte_for_byte(keys, tmp_path: Path) -> None:
    """cert-to-efi-sig-list writes the list sevsim writes; sig-list-to-certs reads back the
    certificates of a database sevsim built from several lists."""
    cert = tmp_path / "signer.pem"
    cert.write_bytes(keys["signer"].cert_pem)
    esl = tmp_path / "signer.esl"
    subprocess.run([tool("cert-to-efi-sig-list"), "-g", str(OWNER), str(cert), str(esl)],
                   check=True, capture_output=True, timeout=60)
    ours = efi_siglist.build([efi_siglist.x509(OWNER, keys["signer"].cert.public_bytes(DER))])
    assert esl.read_bytes() == ours
    assert efi_siglist.parse(esl.read_bytes()) == [
        efi_siglist.SignatureData(efi_siglist.EFI_CERT_X509_GUID, OWNER,
                                  keys["signer"].cert.public_bytes(DER))]

    certs = [keys[n].cert.public_bytes(DER) for n in ("signer", "other", "ca")]
    db = tmp_path / "db.esl"
    db.write_bytes(efi_siglist.build(efi_siglist.x509(OWNER, c) for c in certs))
    subprocess.run([tool("sig-list-to-certs"), str(db), str(tmp_path / "out")], check=True,
                   capture_output=True, timeout=60)
    assert [(tmp_path / f"out-{i}.der").read_bytes() for i in range(3)] == certs


def test_signature_list_layout_and_hash_lists() -> None:
    hashes_ = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    raw = efi_siglist.build(efi_siglist.sha256(OWNER, h) for h in hashes_)
    kind, size, header, sig_size = struct.unpack_from("<16sIII", raw)
    assert uuid.UUID(bytes_le=kind) == efi_siglist.EFI_CERT_SHA256_GUID
    assert (size, header, sig_size) == (28 + 3 * 48, 0, 48) and len(raw) == size
    assert raw[28:44] == OWNER.bytes_le and raw[44:76] == hashes_[0]
    assert [e.data for e in efi_siglist.parse(raw)] == hashes_
    assert efi_siglist.build([]) == b"" and efi_siglist.parse(b"") == []
    with pytest.raises(SignatureListError, match="32 bytes"):
        efi_siglist.sha256(OWNER, b"short")


def test_signature_list_parser_names_the_culprit(keys) -> None:
    one = efi_siglist.build([efi_siglist.sha256(OWNER, bytes(32))])

    def patched(offset: int, value: int) -> bytes:
        return one[:offset] + struct.pack("<I", value) + one[offset + 4:]

    cases = [
        (one[:20], 0, "EFI_SIGNATURE_LIST"),
        (patched(16, len(one) + 1), 16, "SignatureListSize"),
        (patched(16, 29), 16, "SignatureListSize"),
        (patched(24, 16), 24, "SignatureSize"),
        (patched(24, 38), 16, "SignatureListSize"),
        (patched(20, 2**32 - 1), 16, "SignatureListSize"),
        (one + one[:27], len(one), "EFI_SIGNATURE_LIST"),
    ]
    wide = efi_siglist.build([efi_siglist.SignatureData(efi_siglist.EFI_CERT_SHA256_GUID,
                                                        OWNER, bytes(33))])
    cases.append((wide, 24, "SignatureSize"))
    cert = efi_siglist.build([efi_siglist.x509(OWNER, keys["signer"].cert.public_bytes(DER))])
    with_header = cert[:16] + struct.pack("<II", len(cert) + 4, 4) + cert[24:28] + bytes(4) + \
        cert[28:]
    cases.append((with_header, 20, "SignatureHeaderSize"))
    for raw, offset, field in cases:
        with pytest.raises(SignatureListError) as caught:
            efi_siglist.parse(raw)
        assert (caught.value.offset, caught.value.field) == (offset, field), caught.value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_signature_list_parser_fuzz_raises_only_typed_errors(data: st.DataObject) -> None:
    """Random bytes and corruptions of a real database: entries or a SignatureListError."""
    valid = efi_siglist.build(
        [efi_siglist.sha256(OWNER, hashlib.sha256(b"a").digest()),
         efi_siglist.SignatureData(uuid.UUID(int=7), OWNER, b"opaque entry"),
         efi_siglist.x509(OWNER, b"\x30\x03\x02\x01\x01")])
    raw = data.draw(st.one_of(
        st.binary(max_size=200),
        st.builds(lambda cut, flips: bytes(b ^ flips.get(i, 0)
                                           for i, b in enumerate(valid[:cut])),
                  st.integers(0, len(valid)),
                  st.dictionaries(st.integers(0, len(valid) - 1), st.integers(1, 255),
                                  max_size=4))))
    try:
        entries = efi_siglist.parse(raw)
    except SignatureListError as err:
        assert err.field and (err.offset is None or 0 <= err.offset <= len(raw))
        return
    assert sum(len(e.data) + 16 for e in entries) <= len(raw)
    assert all(e.signature_type != efi_siglist.EFI_CERT_SHA256_GUID or len(e.data) == 32
               for e in entries)


# -- appended signatures -------------------------------------------------------------------
def test_signed_program_layout_and_openssl_verifies_it(keys, hello: bytes,
                                                        tmp_path: Path) -> None:
    signed = sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem)
    assert signed.startswith(hello) and signed.endswith(b"~Module signature appended~\n")
    info = signed[-28 - 12:-28]
    (sig_len,) = struct.unpack(">I", info[8:])
    assert info[:8] == bytes([0, 0, 2, 0, 0, 0, 0, 0])
    assert len(signed) == len(hello) + sig_len + 12 + 28
    parts = module_signature.split(signed)
    assert parts is not None and parts.content == hello
    assert module_signature.split(hello) is None
    assert sign_program(signed, keys["signer"].key_pem, keys["signer"].cert_pem)[
        :len(hello)] == hello  # re-signing starts again from the unsigned bytes

    sig, content, ca = tmp_path / "sig.der", tmp_path / "content", tmp_path / "signer.pem"
    sig.write_bytes(parts.pkcs7)
    ca.write_bytes(keys["signer"].cert_pem)

    def openssl_verify(data: bytes) -> subprocess.CompletedProcess[bytes]:
        content.write_bytes(data)
        return subprocess.run([tool("openssl"), "cms", "-verify", "-binary", "-inform", "DER",
                               "-in", str(sig), "-content", str(content), "-CAfile", str(ca),
                               "-purpose", "any", "-out", "/dev/null"],
                              capture_output=True, timeout=60)

    done = openssl_verify(hello)
    assert done.returncode == 0, done.stderr
    assert openssl_verify(hello[:-1] + bytes([hello[-1] ^ 1])).returncode != 0


def test_signing_and_trailer_refusals(keys, hello: bytes) -> None:
    with pytest.raises(ImageSignatureError, match="not the signing key"):
        sign_program(hello, keys["signer"].key_pem, keys["other"].cert_pem)
    with pytest.raises(ImageSignatureError, match="private key"):
        sign_program(hello, b"not a key", keys["signer"].cert_pem)
    with pytest.raises(ImageSignatureError, match="certificate"):
        sign_program(hello, keys["signer"].key_pem, b"\x30\x00")
    signed = sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem)
    info_at = len(signed) - 28 - 12
    for offset, value, field in ((2, 1, "id_type"), (0, 1, "module_signature"),
                                 (5, 9, "module_signature")):
        bad = bytearray(signed)
        bad[info_at + offset] = value
        with pytest.raises(ImageSignatureError) as caught:
            module_signature.split(bytes(bad))
        assert caught.value.field == field
    too_long = signed[:info_at + 8] + struct.pack(">I", len(signed)) + signed[-28:]
    with pytest.raises(ImageSignatureError, match="sig_len"):
        module_signature.split(too_long)
    with pytest.raises(ImageSignatureError, match="too short"):
        module_signature.split(b"~Module signature appended~\n")


# -- the firmware's verdicts ---------------------------------------------------------------
def test_verdicts(keys, hello: bytes) -> None:
    sign = {name: sign_program(hello, keys[name].key_pem, keys[name].cert_pem)
            for name in ("signer", "other", "leaf", "ec")}
    trusted = variables([keys["signer"], keys["ec"]])
    ok = check(sign["signer"], trusted)
    assert ok.status is VerdictStatus.OK and ok.signer == "CN=program signer"
    assert ok.authority == efi_siglist.x509(SEVSIM_OWNER_GUID,
                                            keys["signer"].cert.public_bytes(DER))
    assert check(sign["ec"], trusted).signer == "CN=ec signer"
    assert check(hello, trusted).status is VerdictStatus.UNSIGNED
    assert check(sign["other"], trusted).status is VerdictStatus.UNTRUSTED_SIGNER
    assert check(sign["signer"], variables([keys["other"]])).status \
        is VerdictStatus.UNTRUSTED_SIGNER
    # a CA in db vouches for the leaf certificate the signature carries, and is named
    via_ca = check(sign["leaf"], variables([keys["ca"]]))
    assert via_ca.ok and via_ca.signer == "CN=sevsim test CA"
    assert check(sign["leaf"], variables([keys["signer"]])).status \
        is VerdictStatus.UNTRUSTED_SIGNER
    # the signed bytes changed after signing (one flipped bit in .text): bad signature
    parts = module_signature.split(sign["signer"])
    assert parts is not None
    tampered = module_signature.append(hello[:0x1000] + bytes([hello[0x1000] ^ 1])
                                       + hello[0x1001:], parts.pkcs7)
    bad = check(tampered, trusted)
    assert bad.status is VerdictStatus.BAD_SIGNATURE and "does not verify" in bad.detail
    garbled = module_signature.append(hello, parts.pkcs7[:-40] + bytes(40))
    assert check(garbled, trusted).status is VerdictStatus.BAD_SIGNATURE
    # dbx: the program's hash (signed or not), the signer, the CA that issued the signer
    digest = hashlib.sha256(hello).digest()
    for program in (hello, sign["signer"]):
        revoked = check(program, variables([keys["signer"]], dbx_hashes=(digest,)))
        assert revoked.status is VerdictStatus.REVOKED and digest.hex() in revoked.detail
    by_cert = check(sign["signer"], variables([keys["signer"]], [keys["signer"]]))
    assert by_cert.status is VerdictStatus.REVOKED and "signer" in by_cert.detail
    by_ca = check(sign["leaf"], variables([keys["ca"]], [keys["ca"]]))
    assert by_ca.status is VerdictStatus.REVOKED and "db certificate" in by_ca.detail
    # a corrupt db trusts nothing
    broken = {**trusted, "db": trusted["db"][:-1]}
    assert check(sign["signer"], broken).status is VerdictStatus.UNTRUSTED_SIGNER


def test_openssl_signature_with_signed_attributes_is_accepted(keys, hello: bytes,
                                                              tmp_path: Path) -> None:
    """`openssl cms -sign` signs attributes (messageDigest); the firmware checks them too."""
    key, cert = keys["signer"].save(tmp_path, "signer")
    content, sig = tmp_path / "hello.elf", tmp_path / "sig.der"
    content.write_bytes(hello)
    subprocess.run([tool("openssl"), "cms", "-sign", "-binary", "-md", "sha256", "-outform",
                    "DER", "-in", str(content), "-signer", str(cert), "-inkey", str(key),
                    "-out", str(sig)], check=True, capture_output=True, timeout=60)
    trusted = variables([keys["signer"]])
    assert check(module_signature.append(hello, sig.read_bytes()), trusted).ok
    other = hello[:-1] + bytes([hello[-1] ^ 1])
    wrong = check(module_signature.append(other, sig.read_bytes()), trusted)
    assert wrong.status is VerdictStatus.BAD_SIGNATURE and "messageDigest" in wrong.detail


def test_loaded_program_must_be_the_signed_one(build: Callable[..., Path], hello: bytes) -> None:
    image = parse_elf(hello)
    memory = {s.gpa: s.data for s in image.segments}
    segments = [Segment(s.gpa, len(s.data), s.memsz, s.flags) for s in image.segments]

    def read(gpa: int, length: int) -> bytes:
        return memory[gpa][:length]

    assert loaded_mismatch(hello, image.entry, segments, read) == ""
    assert "entry point" in loaded_mismatch(hello, image.entry + 1, segments, read)
    first = image.segments[0]
    memory[first.gpa] = bytes([first.data[0] ^ 1]) + first.data[1:]
    assert "other bytes" in loaded_mismatch(hello, image.entry, segments, read)
    other = build("crash")
    assert loaded_mismatch(other.read_bytes(), image.entry, segments, read)


def test_pcr7_measurements_carry_the_real_variables(keys, hello: bytes) -> None:
    config = SecureBootConfig(db=(keys["signer"].cert,), pk=(keys["ca"].cert,),
                              kek=(keys["ca"].cert,), dbx_hashes=(bytes(32),))
    values = config.variables()
    assert list(values) == list(SECURE_BOOT_VARIABLES) and values["SecureBoot"] == b"\x01"
    verdict = check(sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem),
                    values)
    events = pcr7_measurements(values, verdict)
    assert [(e.pcr, e.event_type) for e in events] == (
        [(7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)] * 5
        + [(7, EventType.EV_SEPARATOR), (7, EventType.EV_EFI_VARIABLE_AUTHORITY)])
    for event, (name, guid) in zip(events, SECURE_BOOT_VARIABLES.items(), strict=False):
        assert event.data == event.measured == uefi_variable_data(guid, name, values[name])
    assert [e.data for e in efi_siglist.parse(values["db"])] == [
        keys["signer"].cert.public_bytes(DER)]
    entry = SEVSIM_OWNER_GUID.bytes_le + keys["signer"].cert.public_bytes(DER)
    assert events[-1].data == uefi_variable_data(EFI_IMAGE_SECURITY_DATABASE_GUID, "db", entry)
    refused = pcr7_measurements(values, check(hello, values))
    assert refused == events[:-1]  # nothing was authorised: no authority event


# -- in a VM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sb_dir(keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secure-boot")
    for sub in ("db", "dbx", "PK", "KEK"):
        (root / sub).mkdir()
    (root / "db" / "signer.pem").write_bytes(keys["signer"].cert_pem)
    (root / "db" / "ca.der").write_bytes(keys["ca"].cert.public_bytes(DER))
    (root / "PK" / "pk.pem").write_bytes(keys["ca"].cert_pem)
    (root / "dbx" / "revoked.pem").write_bytes(keys["leaf"].cert_pem)
    return root


def run_vm(program: bytes, secure_boot: Path | SecureBootConfig, mode: str):
    host = Host(memory="96M")
    vm = host.create_vm(mode, memory="16M", secure_boot=secure_boot)
    vm.load(program)
    vm.launch()
    try:
        return vm.run(timeout=60), None
    except SecureBootViolation as err:
        return vm.result(err), err


@pytest.mark.parametrize("mode", ["none", "sev", "sev-es", "snp"])
def test_vm_runs_a_signed_program_and_refuses_an_unsigned_one(keys, hello: bytes, sb_dir: Path,
                                                               mode: str) -> None:
    signed = sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem)
    result, error = run_vm(signed, sb_dir, mode)
    assert error is None and result.exit_code == 0
    assert result.console.startswith("secure boot: ok: verified by db certificate "
                                     "CN=program signer\n" + HELLO)
    assert result.secure_boot is not None and result.secure_boot.verdict.ok
    assert result.secure_boot.measurements[-1].event_type == EventType.EV_EFI_VARIABLE_AUTHORITY

    result, error = run_vm(hello, sb_dir, mode)
    assert isinstance(error, SecureBootViolation) and "unsigned" in str(error)
    assert result.error is error
    assert result.console == "secure boot: unsigned: no appended signature\n"  # never ran
    assert result.secure_boot is not None
    assert result.secure_boot.verdict.status is VerdictStatus.UNSIGNED


def test_vm_refuses_untrusted_revoked_and_tampered_programs(keys, hello: bytes,
                                                            sb_dir: Path) -> None:
    cases = {
        VerdictStatus.UNTRUSTED_SIGNER: sign_program(hello, keys["other"].key_pem,
                                                     keys["other"].cert_pem),
        VerdictStatus.REVOKED: sign_program(hello, keys["leaf"].key_pem, keys["leaf"].cert_pem),
    }
    good = module_signature.split(sign_program(hello, keys["signer"].key_pem,
                                               keys["signer"].cert_pem))
    assert good is not None
    text = parse_elf(hello).segments[0]
    at = hello.index(text.data[:64]) + 32  # a byte of the program's first segment
    cases[VerdictStatus.BAD_SIGNATURE] = module_signature.append(
        hello[:at] + bytes([hello[at] ^ 0x40]) + hello[at + 1:], good.pkcs7)
    for status, program in cases.items():
        result, error = run_vm(program, sb_dir, "sev-es")
        assert isinstance(error, SecureBootViolation), status
        assert result.secure_boot is not None and result.secure_boot.verdict.status is status
        assert result.console.startswith(f"secure boot: {status}: ")
        assert HELLO not in result.console


def test_vm_refuses_a_program_the_host_changed_after_loading(keys, hello: bytes,
                                                             sb_dir: Path) -> None:
    """The host patches the signed program in guest memory before the launch: the file is
    still signed, but what would run is not what was signed."""
    vm = Host(memory="96M").create_vm("sev-es", memory="16M", secure_boot=sb_dir)
    vm.load(sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem))
    assert vm.image is not None
    text = next(s for s in vm.image.segments if s.flags & 1)
    vm.write_gpa(text.gpa + 16, bytes([text.data[16] ^ 0xFF]))
    vm.launch()
    with pytest.raises(SecureBootViolation, match="not the signed file: segment at"):
        vm.run(timeout=60)
    assert vm.result().secure_boot is not None
    assert vm.result().secure_boot.verdict.status is VerdictStatus.BAD_SIGNATURE


def test_host_run_reports_the_refusal_in_the_result(keys, hello: bytes, sb_dir: Path) -> None:
    host = Host(memory="96M")
    signed_vm = host.create_vm("sev", memory="16M", secure_boot=SecureBootConfig.from_dir(sb_dir))
    signed_vm.load(sign_program(hello, keys["signer"].key_pem, keys["signer"].cert_pem))
    unsigned_vm = host.create_vm("sev", memory="16M", secure_boot=sb_dir)
    unsigned_vm.load(hello)
    plain_vm = host.create_vm("sev", memory="16M")
    plain_vm.load(hello)
    for vm in (signed_vm, unsigned_vm, plain_vm):
        vm.launch()
    results = host.run([signed_vm, unsigned_vm, plain_vm], timeout=60)
    signed, unsigned, plain = (results[vm.hv.vm_id] for vm in (signed_vm, unsigned_vm,
                                                               plain_vm))
    assert signed.error is None and signed.secure_boot and signed.secure_boot.verdict.ok
    assert isinstance(unsigned.error, SecureBootViolation)
    assert plain.error is None and plain.secure_boot is None and plain.console.startswith(HELLO)


def test_secure_boot_directory_refusals(keys, tmp_path: Path) -> None:
    with pytest.raises(SecureBootConfigError, match="db"):
        SecureBootConfig.from_dir(tmp_path)
    (tmp_path / "db").mkdir()
    (tmp_path / "dbx").mkdir()
    (tmp_path / "db" / "bundle.pem").write_bytes(keys["signer"].cert_pem + keys["ca"].cert_pem)
    digest = hashlib.sha256(b"revoked").hexdigest()
    (tmp_path / "dbx" / "bad.sha256").write_text(f"{digest}  revoked.elf\n\n{digest.upper()}\n")
    config = SecureBootConfig.from_dir(tmp_path)
    assert config.db == (keys["signer"].cert, keys["ca"].cert)
    assert config.dbx_hashes == (bytes.fromhex(digest),) * 2
    (tmp_path / "dbx" / "worse.sha256").write_text("abcd\n")
    with pytest.raises(SecureBootConfigError) as caught:
        SecureBootConfig.from_dir(tmp_path)
    assert caught.value.path.endswith("worse.sha256") and "line 1" in str(caught.value)
    (tmp_path / "dbx" / "worse.sha256").unlink()
    (tmp_path / "db" / "junk.der").write_bytes(b"\x30\x03\x02\x01")
    with pytest.raises(SecureBootConfigError) as caught:
        Host(memory="64M").create_vm("sev", secure_boot=tmp_path)
    assert caught.value.path.endswith("junk.der")


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_sign_and_run_with_secure_boot(keys, build: Callable[..., Path], sb_dir: Path,
                                           tmp_path: Path) -> None:
    key, cert = keys["signer"].save(tmp_path, "signer")
    elf = build("hello")
    signed = tmp_path / "hello.signed.elf"
    done = sevsim("guest", "sign", elf, "--key", key, "--cert", cert, "-o", signed)
    assert done.returncode == 0, done.stderr
    assert module_signature.split(signed.read_bytes()) is not None
    ran = sevsim("run", signed, "--secure-boot", sb_dir, "--memory", "16M")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("secure boot: ok: ") and HELLO in ran.stdout
    refused = sevsim("run", elf, "--secure-boot", sb_dir, "--memory", "16M")
    assert refused.returncode == 125
    assert refused.stderr.strip().splitlines()[-1] == (
        "sevsim: SecureBootViolation: secure boot refused the program: unsigned: no appended "
        "signature")
    assert refused.stdout == "secure boot: unsigned: no appended signature\n"
    mismatched = sevsim("guest", "sign", elf, "--key", key, "--cert", sb_dir / "PK" / "pk.pem")
    assert mismatched.returncode == 125 and "ImageSignatureError" in mismatched.stderr
    assert module_signature.split(elf.read_bytes()) is None  # refused: the ELF is unchanged
    in_place = tmp_path / "copy.elf"
    in_place.write_bytes(elf.read_bytes())
    assert sevsim("guest", "sign", in_place, "--key", key, "--cert", cert).returncode == 0
    assert in_place.read_bytes().startswith(elf.read_bytes())
    assert check(in_place.read_bytes(), variables([keys["signer"]])).ok
