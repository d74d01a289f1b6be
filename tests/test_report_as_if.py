"""Reports "as if": an OVMF image launched through the simulated SNP firmware as measured
content, and the report its guest would get. MEASUREMENT must be the firmware's own digest
of the pages the VMM launched, equal to sev-snp-measure's for the same configuration; the
report must verify against sevsim's roots only; the guest's VMPCK must never show up where
the host can read; bad input must leave the host as it was."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from ovmf_images import AMDSEV_SECTIONS, make_ovmf
from sevsim.abi.ovmf import KernelHashes
from sevsim.abi.snp_report import AttestationReport, parse_cert_table
from sevsim.abi.snp_tcb import SigningKey
from sevsim.attest.measure import snp_ovmf_digest
from sevsim.attest.snp_verify import CertBundle, verify_report_chain
from sevsim.cli.common import EXIT_ERROR
from sevsim.cli.main import app
from sevsim.errors import FirmwareError, OvmfError, VmStateError
from sevsim.host.machine import Host
from sevsim.testing import host_frames, snp_context

runner = CliRunner()


@pytest.fixture(scope="module")
def host() -> Host:
    return Host(chip="milan", memory="256M", seed=b"report as if")


def _reference(snp_measure: ModuleType, path: Path, vcpus: int, vcpu_type: str | None,
               vmm: str) -> bytes:
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS
    from sevsnpmeasure.vmm_types import VMMType

    vmm_type = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}[vmm]
    digest: bytes = snp_measure.calc_launch_digest(
        SevMode.SEV_SNP, vcpus, CPU_SIGS[vcpu_type] if vcpu_type else 0, str(path), None,
        None, None, 1, vmm_type=vmm_type)
    return digest


@pytest.mark.parametrize(("vmm", "vcpus"),
                         list(itertools.product(("qemu", "ec2", "gce"), (1, 2, 4))))
def test_the_firmware_measures_what_sev_snp_measure_predicts(
        host: Host, ovmf_path: Path, snp_measure: ModuleType, vmm: str, vcpus: int) -> None:
    vcpu_type = "EPYC-Milan" if vmm == "qemu" else None
    guest = host.launch_ovmf(ovmf_path.read_bytes(), vcpus, vcpu_type=vcpu_type, vmm_type=vmm)
    try:
        expected = _reference(snp_measure, ovmf_path, vcpus, vcpu_type, vmm)
        assert guest.measurement == expected
        report = AttestationReport.from_bytes(guest.report(bytes(range(64)))[0])
        assert report.measurement == expected
        assert report.report_data == bytes(range(64))
    finally:
        guest.destroy()


def test_vcpu_types_and_guest_features_reach_the_vmsas(host: Host, ovmf_path: Path) -> None:
    data = ovmf_path.read_bytes()
    seen = set()
    for vcpu_type, features in (("EPYC-v4", 1), ("EPYC-Genoa", 1), ("EPYC-Turin", 1),
                                ("EPYC-Milan", 0x21)):
        guest = host.launch_ovmf(data, 2, vcpu_type=vcpu_type, guest_features=features)
        try:
            assert guest.measurement == snp_ovmf_digest(data, 2, vcpu_type,
                                                        guest_features=features)
            seen.add(guest.measurement)
        finally:
            guest.destroy()
    assert len(seen) == 4


def test_a_kernel_hashes_table_is_launched_as_measured(host: Host) -> None:
    image = make_ovmf(AMDSEV_SECTIONS, hash_table_gpa=0x80F000)
    hashes = KernelHashes.of(b"kernel", b"initrd", "console=ttyS0")
    guest = host.launch_ovmf(image, 1, vcpu_type="EPYC", kernel_hashes=hashes)
    try:
        assert guest.measurement == snp_ovmf_digest(image, 1, "EPYC", kernel=b"kernel",
                                                    initrd=b"initrd", append="console=ttyS0")
        assert guest.measurement != snp_ovmf_digest(image, 1, "EPYC", kernel=b"kernel")
    finally:
        guest.destroy()


def test_the_report_verifies_against_the_simulated_roots_only(host: Host,
                                                              ovmf_path: Path) -> None:
    guest = host.launch_ovmf(ovmf_path.read_bytes(), 2, vmm_type="gce",
                             host_data=b"\x5a" * 32)
    try:
        blob, table = guest.report(b"\x01" * 64)
        again, _ = guest.report(b"\x02" * 64)  # the sequence numbers move on
    finally:
        guest.destroy()
    bundle = CertBundle.from_cert_table(table)
    report = AttestationReport.from_bytes(blob)
    assert report.host_data == b"\x5a" * 32 and report.vmpl == 0
    assert report.signer_info.signing_key is SigningKey.VCEK
    assert verify_report_chain(blob, bundle, trust="sevsim").ok
    assert AttestationReport.from_bytes(again).report_data == b"\x02" * 64
    amd = verify_report_chain(blob, bundle, trust="amd")
    assert [c.name for c in amd.failures] == ["ARK"]
    flipped = bytearray(blob)
    flipped[0x90] ^= 1  # a bit of MEASUREMENT
    tampered = verify_report_chain(bytes(flipped), bundle, trust="sevsim")
    assert [c.name for c in tampered.failures] == ["signature"]


def test_the_vmpck_never_reaches_host_visible_bytes(host: Host, ovmf_path: Path) -> None:
    guest = host.launch_ovmf(ovmf_path.read_bytes(), 1, vmm_type="gce")
    try:
        guest.report(b"\x03" * 64)
        fw = host.firmware
        keys = snp_context(fw, guest.vm.hv.firmware_handle).vmpcks
        dram = host.dram_dump().tobytes()
        shared = b"".join(guest.vm.read_gpa(gpn * 4096, 4096) for gpn in range(
            (guest.vm.memory_size >> 12) - 8, guest.vm.memory_size >> 12))
        for key in keys:
            assert key not in dram and key not in shared
        assert any(shared)  # the messages did pass through these pages, sealed
    finally:
        guest.destroy()


def test_refused_launches_leave_the_host_as_it_was(host: Host, ovmf_path: Path) -> None:
    data = ovmf_path.read_bytes()
    free = host_frames(host).free
    cases: list[tuple[bytes, dict[str, object], type[Exception], str]] = [
        (data, {"vcpus": 2}, OvmfError, "signature in RDX"),
        (data, {"vcpus": 1, "vcpu_type": "EPYC-Bogus"}, OvmfError, "unknown vCPU type"),
        (data, {"vcpus": 1, "vmm_type": "gce", "memory": "8M"}, OvmfError, "no room"),
        (data[:-4096] + bytes(4096), {"vcpus": 1, "vmm_type": "gce"}, OvmfError, "footer"),
        (make_ovmf([(0x800000, 0x1000, 1)]), {"vcpus": 1, "vmm_type": "gce"}, OvmfError,
         "SNP_SECRETS"),
        (data, {"vcpus": 1, "vmm_type": "gce", "policy": 0x20000}, FirmwareError, "SMT"),
        (data, {"vcpus": 1, "vmm_type": "gce", "id_block": bytes(0x60),
                "id_auth": bytes(0x1000)}, FirmwareError, "ID_BLOCK"),
    ]
    for image, options, error, match in cases:
        with pytest.raises(error, match=match):
            host.launch_ovmf(image, **options)  # type: ignore[arg-type]
        assert not host.hypervisor.vms
        assert host_frames(host).free == free
    guest = host.launch_ovmf(data, 1, vmm_type="gce")  # and the host still launches
    guest.destroy()


def test_a_vm_whose_address_space_ends_below_4_gib_is_refused(host: Host, ovmf_path: Path) -> None:
    from sevsim.host.ovmf import launch_ovmf

    vm = host.create_vm("snp", "16M")
    try:
        with pytest.raises(VmStateError, match="4 GiB"):
            launch_ovmf(vm, ovmf_path.read_bytes(), vmm_type="gce")
    finally:
        vm.destroy()


# -- the command ---------------------------------------------------------------------------


def test_report_command_verify_and_validate(tmp_path: Path, ovmf_path: Path) -> None:
    out, certs = tmp_path / "report.bin", tmp_path / "certs"
    made = runner.invoke(app, ["report", "--ovmf", str(ovmf_path), "--vmm-type", "gce",
                               "--vcpus", "2", "--report-data", "0xc0ffee", "-o", str(out),
                               "--certs-out", str(certs), "--host-data", "11" * 32])
    assert made.exit_code == 0, made.output
    digest = snp_ovmf_digest(ovmf_path.read_bytes(), 2, vmm_type="gce")
    assert f"MEASUREMENT {digest.hex()}" in made.output
    report = AttestationReport.from_bytes(out.read_bytes())
    assert report.measurement == digest
    assert report.report_data == b"\xc0\xff\xee" + bytes(61)
    assert sorted(p.name for p in certs.iterdir()) == [  # GCE: and the launch endorsement
        "ark.pem", "ask.pem", "endorsement.binarypb", "vcek.pem"]
    ok = runner.invoke(app, ["verify", str(out), "--certs", str(certs), "--trust", "sevsim"])
    assert ok.exit_code == 0, ok.output
    assert "ok   endorsement" in ok.output
    amd = runner.invoke(app, ["verify", str(out), "--certs", str(certs), "--trust", "amd"])
    assert amd.exit_code == 1
    policy = tmp_path / "policy.toml"
    hex_data = "11" * 32
    policy.write_text(f'[guest]\nmeasurements = ["{digest.hex()}"]\nhost_data = "{hex_data}"\n')
    good = runner.invoke(app, ["validate", str(out), "--policy", str(policy)])
    assert good.exit_code == 0, good.output
    policy.write_text(f'[guest]\nmeasurements = ["{bytes(48).hex()}"]\n')
    bad = runner.invoke(app, ["validate", str(out), "--policy", str(policy)])
    assert bad.exit_code == 1 and "measurement" in bad.output


def test_report_command_with_a_vlek_and_an_id_block(tmp_path: Path, ovmf_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "id.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    digest = snp_ovmf_digest(ovmf_path.read_bytes(), 1, "EPYC-Genoa")
    made = runner.invoke(app, ["idblock", "--measurement", digest.hex(), "--id-key", str(key),
                               "-o", str(tmp_path / "id")])
    assert made.exit_code == 0, made.output
    out, certs = tmp_path / "report.bin", tmp_path / "certs"
    ran = runner.invoke(app, ["report", "--ovmf", str(ovmf_path), "--vcpu-type", "EPYC-Genoa",
                              "--chip", "genoa", "--vlek", "sevsim-cloud", "-o", str(out),
                              "--certs-out", str(certs),
                              "--id-block", str(tmp_path / "id" / "id_block.bin"),
                              "--id-auth", str(tmp_path / "id" / "id_auth.bin")])
    assert ran.exit_code == 0, ran.output
    report = AttestationReport.from_bytes(out.read_bytes())
    assert report.signer_info.signing_key is SigningKey.VLEK and any(report.id_key_digest)
    assert sorted(p.name for p in certs.iterdir()) == ["ark.pem", "asvk.pem", "vlek.pem"]
    ok = runner.invoke(app, ["verify", str(out), "--certs", str(certs), "--trust", "sevsim",
                             "--product", "genoa"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(("args", "message"), [
    (["--ovmf", "{garbage}"], "footer"),
    (["--ovmf", "{ovmf}", "--vcpu-type", "EPYC-Nope"], "unknown vCPU type"),
    (["--ovmf", "{ovmf}", "--vmm-type", "kvm"], "unknown VMM type"),
    (["--ovmf", "{missing}"], "cannot read"),
    (["--ovmf", "{ovmf}", "--vmm-type", "gce", "--report-data", "zz"], "not hex"),
    (["--ovmf", "{ovmf}", "--vmm-type", "gce", "--report-data", "00" * 65], "at most 64"),
    (["--ovmf", "{ovmf}", "--vmm-type", "gce", "--host-data", "00"], "not 32"),
])
def test_report_command_bad_input(tmp_path: Path, ovmf_path: Path, args: list[str],
                                  message: str) -> None:
    garbage = tmp_path / "garbage.fd"
    garbage.write_bytes(bytes(8192))
    out = tmp_path / "report.bin"
    filled = [a.format(garbage=garbage, ovmf=ovmf_path, missing=tmp_path / "nope")
              for a in args]
    ran = runner.invoke(app, ["report", *filled, "-o", str(out)])
    assert ran.exit_code in (EXIT_ERROR, 2)
    assert message in ran.output
    assert not out.exists()


def test_the_certificate_table_lists_vcek_ask_ark(host: Host, ovmf_path: Path) -> None:
    guest = host.launch_ovmf(ovmf_path.read_bytes(), 1, vmm_type="ec2")
    try:
        _, table = guest.report()
    finally:
        guest.destroy()
    assert len(parse_cert_table(table)) == 3
