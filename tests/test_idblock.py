"""`sevsim idblock`: an ID block made from the owner's PEM keys launches a sevsim SNP guest whose
reports carry its identity, and validates against a policy pinning it; a wrong measurement
does not launch; keys that are not plain P-384 PEM are refused by name."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from typer.testing import CliRunner

from sevsim.abi.snp_idblock import IdAuthInfo, IdBlock, SnpPublicKey, verify_id_block
from sevsim.abi.snp_report import AttestationReport
from sevsim.attest.idblock import load_signing_key, make_id_block
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.cli.main import app
from sevsim.errors import FirmwareError, IdBlockError
from sevsim.testing import snp_context

runner = CliRunner()


def pem(key: object, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8, encryption)


def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def launch_digest(elf: Path, tmp_path: Path) -> str:
    """The digest sevsim's firmware computes for this ELF (printed by `sevsim run`)."""
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", str(elf), "--mode", "snp",
                          "--chip", "milan", "--memory", "16M"], capture_output=True, text=True,
                         timeout=180, check=False)
    assert ran.returncode == 0, ran.stderr
    return re.search(r"SNP launch digest ([0-9a-f]{96})", ran.stderr).group(1)  # type: ignore[union-attr]


def test_an_id_block_from_the_command_launches_and_the_report_carries_it(
        build: Callable[..., Path], tmp_path: Path) -> None:
    elf = build("report")
    digest = launch_digest(elf, tmp_path)
    id_key, author = p384(), p384()
    (tmp_path / "id.pem").write_bytes(pem(id_key))
    (tmp_path / "author.pem").write_bytes(pem(author))
    made = runner.invoke(app, ["idblock", "--measurement", digest, "--id-key",
                               str(tmp_path / "id.pem"), "--author-key",
                               str(tmp_path / "author.pem"), "--family-id", "f1" * 16,
                               "--image-id", "e2" * 16, "--svn", "7", "-o",
                               str(tmp_path / "ids")])
    assert made.exit_code == 0, made.output
    block_bytes = (tmp_path / "ids" / "id_block.bin").read_bytes()
    auth_bytes = (tmp_path / "ids" / "id_auth.bin").read_bytes()
    assert (len(block_bytes), len(auth_bytes)) == (0x60, 0x1000)
    printed = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    assert base64.b64decode(printed["id-block"]) == block_bytes
    assert base64.b64decode(printed["id-auth"]) == auth_bytes
    assert printed["author-key-enabled"] == "on"
    id_digest = SnpPublicKey.from_key(id_key.public_key()).digest()
    author_digest = SnpPublicKey.from_key(author.public_key()).digest()
    assert printed["id-key-digest"] == id_digest.hex()

    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", str(elf), "--mode", "snp",
                          "--chip", "milan", "--memory", "16M", "--id-block",
                          str(tmp_path / "ids" / "id_block.bin"), "--id-auth",
                          str(tmp_path / "ids" / "id_auth.bin"), "--report-out",
                          str(tmp_path / "report.bin")],
                         capture_output=True, text=True, timeout=180, check=False)
    assert ran.returncode == 0, ran.stderr
    report = AttestationReport.from_bytes((tmp_path / "report.bin").read_bytes())
    assert (report.family_id, report.image_id, report.guest_svn) == (
        b"\xf1" * 16, b"\xe2" * 16, 7)
    assert report.measurement.hex() == digest
    assert (report.id_key_digest, report.author_key_digest) == (id_digest, author_digest)
    assert report.signer_info.author_key_en

    policy = Policy.from_toml(f"""
[guest]
measurements = ["{digest}"]
id_key_digests = ["{id_digest.hex()}"]
author_key_digests = ["{author_digest.hex()}"]
family_id = "{"f1" * 16}"
image_id = "{"e2" * 16}"
min_svn = 7
""")
    assert validate_report(report, policy).ok
    assert validate_report(report, Policy.from_toml("[guest]\nmin_svn = 8\n")).failed == (
        "guest.min_svn",)

    # the same keys, another measurement: SNP_LAUNCH_FINISH refuses the launch
    made = runner.invoke(app, ["idblock", "--measurement", "00" * 48, "--id-key",
                               str(tmp_path / "id.pem"), "-o", str(tmp_path / "wrong")])
    assert made.exit_code == 0, made.output
    refused = subprocess.run([sys.executable, "-m", "sevsim", "run", str(elf), "--mode", "snp",
                              "--chip", "milan", "--memory", "16M", "--id-block",
                              str(tmp_path / "wrong" / "id_block.bin"), "--id-auth",
                              str(tmp_path / "wrong" / "id_auth.bin")],
                             capture_output=True, text=True, timeout=180, check=False)
    assert refused.returncode == 125
    assert "BAD_MEASUREMENT" in refused.stderr


def test_the_python_api_launches_a_vm_without_an_author_key(build: Callable[..., Path]) -> None:
    from sevsim.host.machine import Host

    elf = build("hello")
    probe = Host(chip="milan")
    vm = probe.create_vm(mode="snp", memory="16M")
    vm.load(elf)
    vm.launch()
    digest = snp_context(probe.firmware, vm.hv.firmware_handle).launch_digest
    bundle = make_id_block(digest, p384(), family_id=b"a" * 16, svn=2)
    assert not bundle.author_key_enabled and bundle.author_key_digest == bytes(48)
    host = Host(chip="milan")
    guest = host.create_vm(mode="snp", memory="16M")
    guest.load(elf)
    guest.launch(id_block=bundle.id_block_bytes, id_auth=bundle.id_auth_bytes)
    ctx = snp_context(host.firmware, guest.hv.firmware_handle)
    assert ctx.id_key_digest == bundle.id_key_digest
    assert ctx.id_block == bundle.id_block
    other = Host(chip="milan").create_vm(mode="snp", memory="16M")
    other.load(elf)
    with pytest.raises(FirmwareError, match=r"POLICY_FAILURE.*ID block names policy"):
        other.launch(policy=0x30000 | 1 << 20, id_block=bundle.id_block_bytes,
                     id_auth=bundle.id_auth_bytes)


def test_the_structures_round_trip_and_verify() -> None:
    id_key, author = p384(), p384()
    bundle = make_id_block(b"m" * 48, id_key, author, image_id=b"i" * 16, svn=9,
                           policy=0x30000 | 1 << 20)
    block = IdBlock.from_bytes(bundle.id_block_bytes)
    assert (block.ld, block.image_id, block.guest_svn, block.policy) == (
        b"m" * 48, b"i" * 16, 9, 0x130000)
    auth = IdAuthInfo.from_bytes(bundle.id_auth_bytes)
    digests = verify_id_block(block, auth, author_key_en=True)
    assert digests.author_key_digest == bundle.author_key_digest != bytes(48)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: pem(ec.generate_private_key(ec.SECP256R1())), "secp256r1 is not P-384"),
    (lambda: pem(rsa.generate_private_key(65537, 2048)), "not an ECDSA key"),
    (lambda: pem(ed25519.Ed25519PrivateKey.generate()), "not an ECDSA key"),
    (lambda: pem(p384(), b"pw"), "encrypted"),
    (lambda: b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
     "not a PEM private key"),
    (lambda: p384().private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()), "not a PEM file"),
])
def test_keys_that_are_not_plain_p384_pem_are_refused(make: Callable[[], bytes],
                                                      match: str) -> None:
    with pytest.raises(IdBlockError, match=match):
        load_signing_key(make())


def test_bad_inputs_to_the_command(tmp_path: Path) -> None:
    (tmp_path / "id.pem").write_bytes(pem(p384()))
    (tmp_path / "p256.pem").write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    base = ["idblock", "--id-key", str(tmp_path / "id.pem"), "-o", str(tmp_path / "o")]
    wrong_curve = runner.invoke(app, ["idblock", "--measurement", "00" * 48, "--id-key",
                                      str(tmp_path / "p256.pem"), "-o", str(tmp_path / "o")])
    assert wrong_curve.exit_code == 125 and "P-384" in wrong_curve.output
    for args in (["--measurement", "00" * 47], ["--measurement", "zz" * 48],
                 ["--measurement", "00" * 48, "--family-id", "00"],
                 ["--measurement", "00" * 48, "--policy", "0xq"]):
        ran = runner.invoke(app, [*base, *args])
        assert ran.exit_code == 2, (args, ran.output)  # a usage error, as typer reports them
    no_bit17 = runner.invoke(app, [*base, "--measurement", "00" * 48, "--policy", "0x10000"])
    assert no_bit17.exit_code == 125 and "bit 17" in no_bit17.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(IdBlockError, match="measurement is 47 bytes"):
        make_id_block(bytes(47), p384())
