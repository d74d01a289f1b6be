"""An SNP guest gets a signed report end to end: the guest kernel seals MSG_REPORT_REQ and
MSG_KEY_REQ with VMPCK0, the untrusted hypervisor carries the pages to the firmware, and
`sevsim run --mode snp` writes what a verifier needs (report, VCEK, ASK, ARK)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import blocks_found, secret_bytes
from sevsim import Host
from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_report import OFFSETS, REPORT_SIZE, AttestationReport, verify_report
from sevsim.abi.status import SevStatus
from sevsim.guest.kernel import CERTS_GPA, MSG_REQ_GPA, MSG_RSP_GPA
from sevsim.host.hypervisor import HvVm, Hypervisor
from sevsim.host.vmm import VirtualMachine
from sevsim.hw.engine import PAGE
from sevsim.testing import memory_controller, snp_context

NONCE = bytes(range(0x40, 0x80))


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def snp_vm(host: Host, elf: Path, host_input: bytes = b"") -> VirtualMachine:
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(elf)
    vm.host_input = host_input
    vm.launch()
    return vm


def launch_digest(vm: VirtualMachine) -> bytes:
    return snp_context(vm.hypervisor.firmware, vm.hv.firmware_handle).launch_digest


@pytest.mark.parametrize(("chip", "version"), [("milan", 3), ("turin", 5)])
def test_sevsim_run_writes_a_report_that_verifies(build: Callable[..., Path], tmp_path: Path,
                                                  chip: str, version: int) -> None:
    report_out, certs = tmp_path / "report.bin", tmp_path / "certs"
    ran = sevsim("run", build("report"), "--mode", "snp", "--chip", chip, "--memory", "16M",
                 "--report-data", NONCE.hex(), "--report-out", report_out,
                 "--certs-out", certs)
    assert ran.returncode == 0, ran.stderr
    blob = report_out.read_bytes()
    assert len(blob) == REPORT_SIZE
    pem = (certs / "vcek.pem").read_text()
    vcek = SnpCertificate.from_der(ssl.PEM_cert_to_DER_cert(pem))  # serial 0, as AMD's
    report = verify_report(blob, vcek.tbs.public_key())  # strict parse, ECDSA P-384
    checked = subprocess.run(["openssl", "verify", "-CAfile", certs / "ark.pem",
                              "-untrusted", certs / "ask.pem", certs / "vcek.pem"],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert report.version == version and report.vmpl == 0
    assert report.report_data == NONCE
    digest = ran.stderr.split("SNP launch digest ")[1].split()[0]
    assert report.measurement.hex() == digest
    assert f"report version {version}, VMPL 0" in ran.stdout
    assert f"measurement {digest}" in ran.stdout
    assert f"chip id     {report.chip_id[:8].hex()}" in ran.stdout


def test_every_field_sits_at_amds_offset(build: Callable[..., Path]) -> None:
    host = Host(chip="genoa")
    vm = snp_vm(host, build("report"), NONCE)
    assert vm.run(timeout=60).exit_code == 0
    blob = vm.outputs[0]
    report = AttestationReport.from_bytes(blob)
    fw = host.firmware
    expected = {"version": (3).to_bytes(4, "little"), "vmpl": bytes(4),
                "report_data": NONCE, "measurement": launch_digest(vm),
                "chip_id": fw.chip_id(), "reported_tcb": fw.tcb.to_bytes()}
    for name, value in expected.items():
        offset, size = OFFSETS[name]
        assert blob[offset:offset + size] == value, name
        assert getattr(report, name) in (value, int.from_bytes(value, "little")), name
    # the host carried sealed pages only: neither the key nor the plaintext request shows
    vmpck0 = snp_context(fw, vm.hv.firmware_handle).vmpcks[0]
    assert vmpck0 not in vm.host_view()


def test_the_hypervisor_passes_firmware_errors_and_short_buffers_back(
        build: Callable[..., Path]) -> None:
    """Spec §7.4: a firmware error in SW_EXITINFO2's low half with nothing written; too few
    certificate pages: INVALID_LEN in the high half, RBX = pages needed, no request issued."""
    host = Host()
    vm = snp_vm(host, build("report"), NONCE)
    vm.run(timeout=60)
    hv = vm.hypervisor
    vm.write_gpa(MSG_REQ_GPA, bytes(range(256)) * 16)  # not a message under any VMPCK
    vm.write_gpa(MSG_RSP_GPA, b"\xaa" * PAGE)
    answer = hv.guest_request(vm.hv, MSG_REQ_GPA, MSG_RSP_GPA)
    assert answer == {"sw_exit_info_1": 0, "sw_exit_info_2": int(SevStatus.INVALID_PARAM)}
    assert vm.read_gpa(MSG_RSP_GPA, PAGE) == b"\xaa" * PAGE
    needed = -(-len(host.firmware.certificate_table(host.firmware.tcb)) // PAGE)
    answer = hv.guest_request(vm.hv, MSG_REQ_GPA, MSG_RSP_GPA, (CERTS_GPA, needed - 1))
    assert answer == {"sw_exit_info_1": 0, "sw_exit_info_2": 1 << 32, "rbx": needed}


def test_replayed_guest_messages_are_rejected(build: Callable[..., Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypervisor that resends the first request page: the firmware refuses the stale
    sequence number, the guest gets -EIO and stops using VMPCK0 (no third request)."""
    host = Host()
    vm = snp_vm(host, build("snp_key"))
    hv = vm.hypervisor
    original = hv.guest_request
    recorded: list[bytes] = []

    def replaying(hvm: HvVm, request: int, response: int,
                  data: tuple[int, int] | None = None) -> dict[str, int]:
        if recorded:
            hv.write_gpa(hvm, request, recorded[0])
        recorded.append(hv.read_gpa(hvm, request, PAGE))
        return original(hvm, request, response, data)

    monkeypatch.setattr(hv, "guest_request", replaying)
    result = vm.run(timeout=60)
    assert result.exit_code == 0
    assert "key 0 rc 0\nkey 1 rc -5\nkey 2 rc -5\n" in result.console
    assert len(recorded) == 2
    assert vm.outputs[1] == vm.outputs[2] == bytes(32) != vm.outputs[0]


def test_a_replayed_response_is_rejected(build: Callable[..., Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypervisor that answers the second request with the first response: it opens
    under VMPCK0, but its sequence number is stale."""
    host = Host()
    vm = snp_vm(host, build("snp_key"))
    hv: Hypervisor = vm.hypervisor
    original = hv.guest_request
    responses: list[bytes] = []

    def replaying(hvm: HvVm, request: int, response: int,
                  data: tuple[int, int] | None = None) -> dict[str, int]:
        answer = original(hvm, request, response, data)
        if responses:
            hv.write_gpa(hvm, response, responses[0])
        responses.append(hv.read_gpa(hvm, response, PAGE))
        return answer

    monkeypatch.setattr(hv, "guest_request", replaying)
    result = vm.run(timeout=60)
    assert result.exit_code == 0
    assert "key 0 rc 0\nkey 1 rc -5\nkey 2 rc -5\n" in result.console
    assert len(responses) == 2


def test_derived_keys_follow_the_measurement(build: Callable[..., Path]) -> None:
    host = Host()
    keys = []
    for elf in (build("snp_key"), build("snp_key"), build("snp_key", "-DVARIANT=1")):
        vm = snp_vm(host, elf)
        assert vm.run(timeout=60).exit_code == 0
        assert "key 0 rc 0\nkey 1 rc 0\nkey 2 rc 0\n" in vm.console
        assert len(set(vm.outputs)) == 1 and vm.outputs[0] != bytes(32)
        keys.append(vm.outputs[0])
    assert keys[0] == keys[1] != keys[2]


def test_guest_requests_are_for_snp_only(build: Callable[..., Path]) -> None:
    host = Host()
    vm = host.create_vm(mode="sev-es", memory="16M")
    vm.load(build("report"))
    vm.launch()
    result = vm.run(timeout=60)
    assert result.exit_code == 2
    assert "extended report failed: -19" in result.console


def test_too_small_a_certificate_buffer_gets_enospc(build: Callable[..., Path]) -> None:
    vm = snp_vm(Host(), build("report", "-DCERTS_SIZE=4096"))
    result = vm.run(timeout=60)
    assert result.exit_code == 2
    assert "extended report failed: -28 (cert table needs 8192 bytes)" in result.console


def test_the_planted_secret_stays_private_under_snp(build: Callable[..., Path],
                                                    tmp_path: Path) -> None:
    dump = tmp_path / "host-view.bin"
    ran = sevsim("run", build("secret"), "--mode", "snp", "--memory", "16M",
                 "--dump-host-view", dump)
    assert ran.returncode == 0, ran.stderr
    assert blocks_found(dump.read_bytes(), secret_bytes()) == 0
    host = Host()
    vm = snp_vm(host, build("secret"))
    vm.run(timeout=60)
    assert blocks_found(vm.host_view(), secret_bytes()) == 0
    assert blocks_found(memory_controller(host).dram_dump(), secret_bytes()) == 0
