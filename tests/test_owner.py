"""Platform identity (PEK/PDH/OCA management, GET_ID, reset) and the guest owner's flow end
to end: the secret reaches only the guest the owner measured, and never host-visible memory."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from conftest import blocks_found
from sevsim import Host
from sevsim.abi.bootinfo import SECRET_GPA, pack_secret
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.sev_cert import Algo, EcPublicKey, SevCert, Signature, Usage
from sevsim.abi.status import GuestState, PlatformState, SevStatus
from sevsim.attest.sev_chain import PlatformChain, verify
from sevsim.attest.sev_owner import GuestOwner, expected_launch_digest
from sevsim.cli.main import app
from sevsim.errors import (
    AttestationError,
    CertificateError,
    FirmwareError,
    MeasurementError,
    VmStateError,
)
from sevsim.firmware.sev import SevFirmware
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import launch_digest, measured_spa_runs, memory_controller, platform_identity

MILAN = PRESETS["milan"]
REAL_ROME = Path(__file__).resolve().parent / "data" / "sev" / "rome"
OCA_SIG = ec.ECDSA(hashes.SHA384())


def firmware(seed: bytes | None = None) -> SevFirmware:
    return SevFirmware(MILAN, MemoryController(16 * PAGE, EncryptionEngine(MILAN.tweak)),
                       seed=seed)


def exported(fw: SevFirmware) -> PlatformChain:
    pdh, chain = fw.pdh_cert_export()
    return PlatformChain(pdh, chain.pek, chain.oca, chain.cek)


def identity(fw: SevFirmware) -> tuple[object, ...]:
    """The platform identity a refused command must leave alone."""
    keys = platform_identity(fw)
    return (fw.platform_status(), fw.get_id(), keys.owner_oca, keys.pek_oca_sig,
            tuple(k.public_key().public_numbers() for k in (keys.pek, keys.pdh, keys.oca,
                                                              keys.cek)))


def refused(fw: SevFirmware, status: SevStatus, command: object) -> None:
    before = identity(fw)
    with pytest.raises(FirmwareError) as info:
        command()  # type: ignore[operator]
    assert info.value.status is status, str(info.value)
    assert identity(fw) == before


# -- platform identity --------------------------------------------------------------------------


def test_a_seed_makes_a_reproducible_platform() -> None:
    one, two, other = firmware(b"seed"), firmware(b"seed"), firmware(b"other seed")
    for fw in (one, two, other):
        fw.init()
    assert exported(one) == exported(two) and one.get_id() == two.get_id()
    assert exported(one).cek != exported(other).cek and one.get_id() != other.get_id()
    one.pek_gen()
    two.pek_gen()
    assert exported(one) == exported(two)  # generations are derived too
    rome = SevFirmware(PRESETS["rome"], MemoryController(16 * PAGE, EncryptionEngine(
        PRESETS["rome"].tweak)), seed=b"seed")
    assert rome.get_id() != one.get_id()  # the chip is part of the derivation
    unseeded = [firmware(), firmware()]
    assert unseeded[0].get_id() != unseeded[1].get_id()


def test_get_id_names_the_cek_in_every_state() -> None:
    fw = firmware()
    first, second = fw.get_id()  # UNINIT
    fw.init()
    cek = exported(fw).cek
    assert len(first) == 64 and second == bytes(64)
    assert first == hashlib.sha512(cek.key.to_bytes()).digest()
    fw.launch_start(0)
    assert fw.get_id() == (first, second)  # WORKING


def test_pek_gen_and_pdh_gen_make_new_keys_that_still_chain() -> None:
    fw = firmware()
    fw.init()
    before = exported(fw)
    fw.pdh_gen()
    after_pdh = exported(fw)
    assert after_pdh.pdh != before.pdh and after_pdh.pek == before.pek
    fw.pek_gen()
    after_pek = exported(fw)
    assert after_pek.pek.key != before.pek.key and after_pek.oca.key != before.oca.key
    assert after_pek.pdh.key != after_pdh.pdh.key and after_pek.cek == before.cek
    for chain in (before, after_pdh, after_pek):
        assert verify(chain, "sevsim").product == "milan"


def owner_oca(key: ec.EllipticCurvePrivateKey) -> SevCert:
    cert = SevCert(0, 0, Usage.OCA, Algo.ECDSA_SHA384, EcPublicKey.from_key(key.public_key()),
                   Signature.empty(), Signature.empty())
    return replace(cert, sig1=Signature.ecdsa(Usage.OCA, Algo.ECDSA_SHA384,
                                              key.sign(cert.signed_bytes(), OCA_SIG)))


def signed_by(csr: SevCert, key: ec.EllipticCurvePrivateKey) -> SevCert:
    return replace(csr, sig1=Signature.ecdsa(Usage.OCA, Algo.ECDSA_SHA384,
                                             key.sign(csr.signed_bytes(), OCA_SIG)))


def test_an_owner_takes_the_platform_and_a_reset_gives_it_back() -> None:
    fw = firmware()
    fw.init()
    cek, ids = exported(fw).cek, fw.get_id()
    assert fw.platform_status().owner == 0
    csr = fw.pek_csr()
    assert not csr.signatures and csr.key == exported(fw).pek.key
    key = ec.generate_private_key(ec.SECP384R1())
    oca, pek = owner_oca(key), signed_by(csr, key)
    fw.pek_cert_import(pek.to_bytes(), oca.to_bytes())
    assert fw.platform_status().owner == 1
    chain = exported(fw)
    assert chain.oca == oca and chain.pek.sig1 == pek.sig1
    assert chain.pek.sig2.usage is Usage.CEK
    assert verify(chain, "sevsim").product == "milan"  # the owner's OCA now anchors the PEK
    refused(fw, SevStatus.ALREADY_OWNED,
            lambda: fw.pek_cert_import(pek.to_bytes(), oca.to_bytes()))
    fw.pdh_gen()
    assert fw.platform_status().owner == 1 and exported(fw).oca == oca
    fw.shutdown()
    fw.platform_reset()  # sevctl reset
    fw.init()
    reset = exported(fw)
    assert fw.platform_status().owner == 0 and reset.oca != oca
    assert reset.pek.key != chain.pek.key and reset.cek == cek and fw.get_id() == ids
    assert verify(reset, "sevsim").product == "milan"


def test_pek_gen_makes_the_platform_self_owned_again() -> None:
    fw = firmware()
    fw.init()
    key = ec.generate_private_key(ec.SECP384R1())
    fw.pek_cert_import(signed_by(fw.pek_csr(), key).to_bytes(), owner_oca(key).to_bytes())
    fw.pek_gen()
    assert fw.platform_status().owner == 0
    assert exported(fw).oca.sig1.usage is Usage.OCA and exported(fw).oca != owner_oca(key)


def test_bad_ownership_imports_are_refused_without_a_trace() -> None:
    fw = firmware()
    fw.init()
    key, stranger = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(
        ec.SECP384R1())
    csr = fw.pek_csr()
    oca = owner_oca(key)
    good_pek = signed_by(csr, key).to_bytes()
    forged_oca = replace(oca, sig1=owner_oca(stranger).sig1)
    ecdh_oca = replace(owner_oca(key), algo=Algo.ECDH_SHA384)
    old_pek_fw = firmware()
    old_pek_fw.init()
    cases = [
        (SevStatus.BAD_SIGNATURE, good_pek, forged_oca.to_bytes()),  # OCA not self-signed
        (SevStatus.BAD_SIGNATURE, signed_by(csr, stranger).to_bytes(), oca.to_bytes()),
        (SevStatus.INVALID_CERTIFICATE, csr.to_bytes(), oca.to_bytes()),  # unsigned PEK
        (SevStatus.INVALID_CERTIFICATE, signed_by(old_pek_fw.pek_csr(), key).to_bytes(),
         oca.to_bytes()),  # another platform's PEK
        (SevStatus.INVALID_CERTIFICATE, good_pek, replace(oca, usage=Usage.PEK).to_bytes()),
        (SevStatus.INVALID_CERTIFICATE, good_pek, ecdh_oca.to_bytes()),
        (SevStatus.INVALID_CERTIFICATE, good_pek, os.urandom(0x824)),
        (SevStatus.INVALID_LENGTH, good_pek[:-4], oca.to_bytes()),
        (SevStatus.INVALID_LENGTH, good_pek, b""),
    ]
    for status, pek, oca_blob in cases:
        refused(fw, status, lambda p=pek, o=oca_blob: fw.pek_cert_import(p, o))
    fw.pek_gen()
    refused(fw, SevStatus.INVALID_CERTIFICATE, lambda: fw.pek_cert_import(good_pek,
                                                                           oca.to_bytes()))
    assert fw.platform_status().owner == 0


PKI_COMMANDS = ("platform_reset", "pek_gen", "pek_csr", "pek_cert_import", "pdh_gen",
                "pdh_cert_export", "get_id")
ALLOWED = {  # spec-formats.md §9.2
    PlatformState.UNINIT: {"platform_reset", "get_id"},
    PlatformState.INIT: {"pek_gen", "pek_csr", "pek_cert_import", "pdh_gen", "pdh_cert_export",
                         "get_id"},
    PlatformState.WORKING: {"pdh_gen", "pdh_cert_export", "get_id"},
}


@pytest.mark.parametrize("state", list(ALLOWED))
@pytest.mark.parametrize("command", PKI_COMMANDS)
def test_pki_commands_follow_the_platform_state_machine(state: PlatformState,
                                                        command: str) -> None:
    fw = firmware()
    key = ec.generate_private_key(ec.SECP384R1())
    fw.init()
    args = {"pek_cert_import": (signed_by(fw.pek_csr(), key).to_bytes(),
                                owner_oca(key).to_bytes())}.get(command, ())
    if state is PlatformState.UNINIT:
        fw.shutdown()
    elif state is PlatformState.WORKING:
        fw.launch_start(0)
    assert fw.platform_status().state is state
    call = getattr(fw, command)
    if command in ALLOWED[state]:
        call(*args)
        assert fw.platform_status().state is state
    else:
        refused(fw, SevStatus.INVALID_PLATFORM_STATE, lambda: call(*args))


# -- the owner flow on a VM ------------------------------------------------------------------------


def launch_with_owner(build, secret: bytes, chip: str = "milan", memory: str = "16M",
                      image: bytes | None = None, mode: str = "sev", **owner_args: object):
    host = Host(chip=chip, memory="64M")
    vm = host.create_vm(mode=mode, memory=memory)
    elf = build("secret_consumer").read_bytes()
    vm.load(image or elf)
    digest = expected_launch_digest(parse_elf(elf), vm.memory_size, 1, kernel_identity(), mode)
    if mode == "sev-es":
        owner_args.setdefault("policy", int(PolicyFlags.NODBG | PolicyFlags.NOKS
                                            | PolicyFlags.ES))
    owner = GuestOwner(secret, digest, **{"trust": "sevsim", **owner_args})  # type: ignore
    return host, vm, owner


@pytest.mark.parametrize(("memory", "vcpus"), [("16M", 1), ("32M", 3)])
def test_the_expected_digest_is_what_the_firmware_measured(build, memory: str,
                                                           vcpus: int) -> None:
    host = Host(memory="128M")
    vm = host.create_vm(mode="sev", memory=memory, vcpus=vcpus)
    elf = build("secret_consumer").read_bytes()
    vm.load(elf)
    vm.launch()
    measured = launch_digest(host, vm)
    assert measured == expected_launch_digest(parse_elf(elf), vm.memory_size, vcpus,
                                              kernel_identity())
    assert measured != expected_launch_digest(parse_elf(elf), vm.memory_size, vcpus + 1,
                                              kernel_identity())


@pytest.mark.parametrize(("chip", "mode"), [("naples", "sev"), ("rome", "sev"), ("milan", "sev"),
                                           ("rome", "sev-es"), ("milan", "sev-es")])
def test_the_secret_reaches_the_measured_guest_and_never_the_host(build, chip: str,
                                                                  mode: str) -> None:
    secret = os.urandom(4092)
    host, vm, owner = launch_with_owner(build, secret, chip=chip, mode=mode)
    vm.launch(owner=owner)
    assert owner.chain is not None and owner.chain.product == chip
    result = vm.run(timeout=20)
    assert result.exit_code == 0
    assert f"secret: {len(secret)} bytes" in result.console
    assert f"secret sha256: {hashlib.sha256(secret).hexdigest()}" in result.console
    payload = pack_secret(secret)
    spa = host.hypervisor.gpa_to_spa(vm.hv, SECRET_GPA)
    cells = memory_controller(host).cells
    assert cells[spa:spa + len(payload)].tobytes() == payload  # the SoC's view
    views = {"host view": vm.host_view(), "GPA read": vm.read_gpa(SECRET_GPA, PAGE),
             "SPA read": host.hypervisor.read_spa(spa, PAGE),
             "DRAM dump": host.dram_dump().tobytes(), "console": vm.console.encode()}
    for name, view in views.items():
        assert blocks_found(view, payload) == 0, name
        for start in range(0, len(secret) - 32, 509):  # any alignment
            assert secret[start:start + 32] not in view, name
    assert blocks_found(cells, payload) == len(payload) // 16  # the search works


def test_an_image_changed_by_one_byte_gets_no_secret(build, monkeypatch) -> None:
    elf = bytearray(build("secret_consumer").read_bytes())
    offset = elf.index(b"no secret was injected")
    elf[offset] ^= 0x20  # "No secret...": still a perfectly good program
    host, vm, owner = launch_with_owner(build, b"only for the real image", image=bytes(elf))
    injected: list[int] = []
    monkeypatch.setattr(host.firmware, "launch_secret",
                        lambda *args: injected.append(1))  # would the VMM get that far?
    with pytest.raises(MeasurementError, match="does not match"):
        vm.launch(owner=owner)
    assert not injected and not vm.launched
    assert host.firmware.guest_status(vm.hv.firmware_handle).state is GuestState.LSECRET
    with pytest.raises(VmStateError):
        vm.run()


def test_the_hypervisor_can_neither_change_the_policy_nor_swap_the_pdh(build,
                                                                         monkeypatch) -> None:
    host, vm, owner = launch_with_owner(build, b"policy-bound secret")
    with pytest.raises(FirmwareError) as info:
        vm.launch(policy=owner.policy & ~int(PolicyFlags.NODBG), owner=owner)  # debuggable
    assert info.value.status is SevStatus.BAD_MEASUREMENT and "POLICY_MAC" in str(info.value)
    host, vm, owner = launch_with_owner(build, b"for this platform only")
    elsewhere = Host(memory="4M").firmware
    monkeypatch.setattr(host.firmware, "pdh_cert_export", elsewhere.pdh_cert_export)
    with pytest.raises(FirmwareError) as info:
        vm.launch(owner=owner)  # the owner verified a genuine chain, but of another chip
    assert info.value.status is SevStatus.BAD_MEASUREMENT and "WRAP_MAC" in str(info.value)
    assert host.firmware.platform_status().guest_count == 0


def test_an_owner_who_trusts_only_amd_refuses_a_simulated_platform(build) -> None:
    host, vm, owner = launch_with_owner(build, b"for real hardware", trust="amd")
    with pytest.raises(CertificateError) as info:
        vm.launch(owner=owner)
    assert info.value.link == "ASK -> CEK"
    assert host.firmware.platform_status().guest_count == 0  # refused before LAUNCH_START
    host, vm, owner = launch_with_owner(build, b"pinned to Rome", product="rome")
    with pytest.raises(CertificateError, match="ASK -> CEK"):
        vm.launch(owner=owner)  # a Milan chip


def test_owner_misuse(build) -> None:
    with pytest.raises(ValueError, match="a secret is"):
        GuestOwner(bytes(5000), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        GuestOwner(b"x", bytes(31))
    with pytest.raises(AttestationError, match="no session"):
        GuestOwner(b"x", bytes(32)).secret_packet(bytes(48), bytes(12))
    with pytest.raises(CertificateError, match="PDH_CERT_EXPORT"):
        GuestOwner(b"x", bytes(32)).start(b"junk", b"junk")
    vm = Host().create_vm(mode="none", memory="8M")
    vm.load(build("secret_consumer"))
    with pytest.raises(VmStateError, match="plain VM"):
        vm.launch(owner=GuestOwner(b"x", bytes(32)))
    assert vm.launch() is None  # without an owner it runs, with no secret
    result = vm.run(timeout=10)
    assert result.exit_code == 2 and "no secret was injected" in result.console


# -- the command line ------------------------------------------------------------------------------

runner = CliRunner()


def owner_cli(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["owner", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_owner_commands_end_to_end(build, tmp_path: Path) -> None:
    """export -> verify -> session (CLI), launch on the same seeded platform (Python), then
    secret (CLI) from the measurement, injected and read by the guest."""
    chain_dir, session_dir, packet_dir = tmp_path / "chain", tmp_path / "session", tmp_path / "p"
    assert owner_cli("export", chain_dir, "--chip", "rome", "--seed", "demo")[0] == 0
    assert sorted(p.name for p in chain_dir.iterdir()) == [
        "ark.cert", "ask.cert", "cek.cert", "oca.cert", "pdh.cert", "pek.cert"]
    code, stdout, _ = owner_cli("verify", chain_dir, "--trust", "sevsim")
    assert code == 0 and "verifies to sevsim's simulated Rome ARK" in stdout
    code, _, stderr = owner_cli("verify", chain_dir)
    assert code == 1 and "not amd's ARK" in stderr
    code, _, _ = owner_cli("session", chain_dir / "pdh.cert", "--out", session_dir,
                           "--policy", "0x1")
    assert code == 0 and (session_dir / "tek_tik.bin").stat().st_mode & 0o777 == 0o600

    elf = build("secret_consumer")
    code, stdout, _ = owner_cli("measure", elf, "--memory", "16M")
    digest = expected_launch_digest(parse_elf(elf.read_bytes()), 16 << 20, 1, kernel_identity())
    assert code == 0 and stdout.strip() == digest.hex()

    host = Host(chip="rome", memory="64M", seed=b"demo")  # the platform that was exported
    vm = host.create_vm(mode="sev", memory="16M")
    vm.load(elf)
    fw = host.firmware
    handle = fw.launch_start(0x1, (session_dir / "godh.cert").read_bytes(),
                             (session_dir / "session.bin").read_bytes())
    vm.hv.firmware_handle = handle
    fw.activate(handle, vm.asid)
    for spa, length in measured_spa_runs(vm):
        fw.launch_update_data(handle, spa, length)
    measure = fw.launch_measure(handle).to_bytes().hex()
    secret_file = tmp_path / "secret.txt"
    secret_file.write_bytes(b"cli-delivered secret\n")

    other = build("hello")
    code, _, stderr = owner_cli("secret", session_dir, "--launch-measure", measure, "--secret",
                                secret_file, "--out", packet_dir, "--elf", other, "--memory",
                                "16M", "--policy", "0x1", "--chip", "rome")
    assert code == 1 and "MeasurementError" in stderr and not packet_dir.exists()
    code, _, stderr = owner_cli("secret", session_dir, "--launch-measure", measure, "--secret",
                                secret_file, "--out", packet_dir, "--digest", digest.hex(),
                                "--policy", "0x1", "--chip", "rome")
    assert code == 0, stderr
    fw.launch_secret(handle, (packet_dir / "secret_header.bin").read_bytes(),
                     host.hypervisor.gpa_to_spa(vm.hv, SECRET_GPA),
                     (packet_dir / "secret_data.bin").read_bytes())
    fw.launch_finish(handle)
    vm.launched = True
    console = vm.run(timeout=10).console
    assert hashlib.sha256(b"cli-delivered secret\n").hexdigest() in console


def test_owner_verify_on_real_chains(tmp_path: Path) -> None:
    code, stdout, _ = owner_cli("verify", REAL_ROME)
    assert code == 0 and "verifies to AMD's Rome ARK" in stdout
    code, _, stderr = owner_cli("verify", REAL_ROME, "--product", "naples")
    assert code == 1 and "ASK -> CEK" in stderr
    tampered = tmp_path / "rome"
    tampered.mkdir()
    for cert in REAL_ROME.glob("*.cert"):
        (tampered / cert.name).write_bytes(cert.read_bytes())
    pek = bytearray((tampered / "pek.cert").read_bytes())
    pek[0x20] ^= 1
    (tampered / "pek.cert").write_bytes(bytes(pek))
    code, _, stderr = owner_cli("verify", tampered)
    assert code == 1 and "PEK" in stderr
    code, _, stderr = owner_cli("verify", tmp_path / "missing")
    assert code == 125


def test_run_with_a_secret_end_to_end(build, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(100))
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", build("secret_consumer"),
                          "--mode", "sev", "--memory", "16M", "--secret", secret, "--chip",
                          "genoa"], capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    assert f"secret sha256: {hashlib.sha256(secret.read_bytes()).hexdigest()}" in ran.stdout
    assert re.search(r"owner verified the chain to sevsim's simulated Genoa ARK", ran.stderr)
    plain = subprocess.run([sys.executable, "-m", "sevsim", "run", build("secret_consumer"),
                            "--mode", "none", "--memory", "16M", "--secret", secret],
                           capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode == 125 and "--secret is the legacy SEV owner flow" in plain.stderr
