"""The SNP firmware: platform init, guest contexts, policy checks, SNP_LAUNCH_UPDATE and its
launch digest, the secrets page, decommission and reclaim."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import blocks_found, secret_bytes
from sevsim import Host
from sevsim.abi.bootinfo import SNP_CPUID_GPA, SNP_SECRETS_GPA, Segment, boot_info_for, launch_image
from sevsim.abi.cpuid import SevFeatures
from sevsim.abi.snp_idblock import IdAuthInfo, IdBlock, SnpPublicKey
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.status import SevStatus
from sevsim.abi.vmsa import reset_state
from sevsim.errors import FirmwareError, RmpViolation, VmStateError
from sevsim.guest.kernel import kernel_identity
from sevsim.host.debug import debug_read
from sevsim.host.elf import parse_elf
from sevsim.host.hypervisor import HvVm
from sevsim.host.migration import migrate
from sevsim.hw.cpu import GuestCpu
from sevsim.hw.engine import PAGE
from sevsim.testing import memory_controller, snp_context

POLICY = 0x30000  # SMT + reserved bit 17


def independent_digest(pages: list[tuple[int, int, bytes | None]]) -> bytes:
    """SHA-384 chained over PAGE_INFO (spec-formats.md §6.1), written out here on its own:
    (type, gpa, contents or None for a zero CONTENTS field)."""
    digest = bytes(48)
    for page_type, gpa, data in pages:
        contents = hashlib.sha384(data).digest() if data is not None else bytes(48)
        info = digest + contents + (0x70).to_bytes(2, "little") + bytes([page_type, 0, 0, 0,
                                                                         0, 0])
        info += gpa.to_bytes(8, "little")
        assert len(info) == 0x70
        digest = hashlib.sha384(info).digest()
    return digest


def snp_host(chip: str = "milan", platform: str | None = None) -> tuple[Host, int]:
    """A host with SNP initialised and one fresh guest context; returns its GCTX address."""
    host = Host(chip=chip, memory="64M", platform=platform)
    host.firmware.snp_init()
    gctx = int(host.hypervisor.allocate_host_pages(1)[0]) * PAGE
    host.firmware.snp_gctx_create(gctx)
    return host, gctx


def guest_page(host: Host, asid: int, gpn: int, data: bytes = b"") -> int:
    """A host page with `data`, assigned (RMPUPDATE) to `asid` at guest page `gpn`."""
    frame = int(host.hypervisor.allocate_host_pages(1)[0])
    host.hypervisor.write_spa(frame * PAGE, data.ljust(PAGE, b"\0"))
    memory_controller(host).rmp.rmpupdate(np.array([frame]), asid, np.array([gpn]))
    return frame * PAGE


def cpuid_page(*entries: tuple[int, int] | tuple[int, int, int]) -> bytes:
    """An SNP CPUID page with (leaf, EAX) or (leaf, EAX, EBX) entries."""
    body = b"".join(struct.pack("<IIQQIIII8x", leaf, 0, 0, 0, *regs, *(0,) * (4 - len(regs)))
                    for leaf, *regs in entries)
    return struct.pack("<II8x", len(entries), 0) + body


def test_the_launch_digest_is_the_page_info_chain() -> None:
    host, gctx = snp_host()
    fw = host.firmware
    fw.snp_launch_start(gctx, POLICY)
    fw.snp_activate(gctx, 1)
    code, data = b"\x90" * 100 + b"\xf4", b"some data".ljust(PAGE, b"\x01")
    vmsa = reset_state()
    vmsa.regs["sev_features"] = 1
    cpuid = cpuid_page((1, host.chip.signature),
                       (0x8000_001F, int(SevFeatures.SEV), host.chip.leaf_8000001f().ebx))
    plan = [(1, 0x1000, code), (1, 0x2000, data), (3, 0x3000, b"junk"), (4, 0x4000, b"x"),
            (5, 0x5000, b""), (6, 0x6000, cpuid)]
    for page_type, gpa, content in plan:
        fw.snp_launch_update(gctx, guest_page(host, 1, gpa // PAGE, content), page_type)
    vmsa_spa = guest_page(host, 1, 0xFFFF_FFFF_F, vmsa.to_bytes())
    fw.snp_launch_update(gctx, vmsa_spa, 2)
    expected = independent_digest(
        [(1, 0x1000, code.ljust(PAGE, b"\0")), (1, 0x2000, data), (3, 0x3000, None),
         (4, 0x4000, None), (5, 0x5000, None), (6, 0x6000, None),
         (2, 0xFFFF_FFFF_F000, vmsa.to_bytes())])
    assert snp_context(fw, gctx).launch_digest == expected
    rmp = memory_controller(host).rmp
    assert rmp.validated[vmsa_spa // PAGE] and rmp.vmsa[vmsa_spa // PAGE]
    assert rmp.immutable[vmsa_spa // PAGE]
    fw.snp_launch_finish(gctx)
    assert fw.snp_guest_status(gctx).state == 2 and fw.snp_guest_status(gctx).asid == 1


def test_the_vmm_launch_digest_covers_image_secrets_and_vmsas(build) -> None:
    elf: Path = build("hello")
    host = Host()
    vm = host.create_vm(mode="snp", memory="16M", vcpus=2)
    vm.load(elf)
    vm.launch()
    parsed = parse_elf(elf.read_bytes())
    boot = boot_info_for(parsed.entry, [Segment(s.gpa, len(s.data), s.memsz, s.flags)
                                        for s in parsed.segments], 16 << 20, 2, "snp",
                         kernel_identity())
    vmsa = reset_state()
    vmsa.regs["sev_features"] = 1
    pages = [(1, gpn * PAGE, page) for gpn, page in
             launch_image(boot, [s.data for s in parsed.segments])]
    pages += [(5, SNP_SECRETS_GPA, None), (6, SNP_CPUID_GPA, None)]
    pages += [(2, 0xFFFF_FFFF_F000, vmsa.to_bytes())] * 2
    fw = host.firmware
    assert snp_context(fw, vm.hv.firmware_handle).launch_digest == independent_digest(pages)
    assert vm.run(timeout=10).exit_code == 0


def test_the_secrets_page_holds_fresh_vmpcks_only_the_guest_reads(build) -> None:
    host = Host()
    pages = []
    for _ in range(2):
        vm = host.create_vm(mode="snp", memory="16M")
        vm.load(build("hello"))
        vm.launch()
        vm.run(timeout=10)
        page = GuestCpu(vm.hv.vcpus[0]).read(SNP_SECRETS_GPA, PAGE)
        version, _, fms = struct.unpack_from("<III", page)
        assert (version, fms) == (2, host.chip.signature)
        vmpcks = [page[0x20 + 32 * i:0x40 + 32 * i] for i in range(4)]
        assert len(set(vmpcks)) == 4 and bytes(32) not in vmpcks
        assert not any(key in vm.host_view() for key in vmpcks)
        with pytest.raises(RmpViolation):
            vm.write_gpa(SNP_SECRETS_GPA, bytes(32))
        pages.append(page)
    assert pages[0][0x20:0xA0] != pages[1][0x20:0xA0]


@pytest.mark.parametrize(("policy", "chip", "status", "message"), [
    (0x10000, "milan", SevStatus.INVALID_PARAM, "bit 17"),
    (POLICY | 1 << 26, "milan", SevStatus.INVALID_PARAM, "63:26"),
    (POLICY | 2 << 8, "milan", SevStatus.POLICY_FAILURE, "ABI 2.0"),
    (0x20000, "milan", SevStatus.POLICY_FAILURE, "SMT"),
    (POLICY | 1 << 22, "milan", SevStatus.POLICY_FAILURE, "AES-256-XTS"),
    (POLICY | 1 << 23, "genoa", SevStatus.POLICY_FAILURE, "RAPL"),
    (POLICY | 1 << 24, "genoa", SevStatus.POLICY_FAILURE, "ciphertext hiding"),
])
def test_launch_start_refuses_policies_the_platform_cannot_honour(
        policy: int, chip: str, status: SevStatus, message: str) -> None:
    host, gctx = snp_host(chip)
    with pytest.raises(FirmwareError, match=message) as err:
        host.firmware.snp_launch_start(gctx, policy)
    assert err.value.status is status
    assert host.firmware.snp_guest_status(gctx).state == 0  # still INIT: nothing changed
    host.firmware.snp_launch_start(gctx, POLICY)


def test_platform_facts_the_policy_checks() -> None:
    host, gctx = snp_host("genoa", platform="ecc,rapl-disabled")
    fw = host.firmware
    fw.sockets = 2
    with pytest.raises(FirmwareError, match="single socket"):
        fw.snp_launch_start(gctx, POLICY | 1 << 20)
    with pytest.raises(FirmwareError, match="migration agent") as err:
        fw.snp_launch_start(gctx, POLICY, migration_agent=gctx)
    assert err.value.status is SevStatus.POLICY_FAILURE
    # SMT off and RAPL disabled: a policy without SMT, with RAPL_DIS (and XTS, debug) fits
    policy = 0x20000 | 1 << 23 | 1 << 22 | 1 << 19
    fw.snp_launch_start(gctx, policy)
    assert fw.snp_guest_status(gctx).policy == policy


def test_snp_commands_check_platform_guest_and_page_state() -> None:
    host = Host(chip="rome")
    with pytest.raises(FirmwareError, match="UNSUPPORTED"):
        host.firmware.snp_init()
    host = Host()
    fw = host.firmware
    with pytest.raises(FirmwareError, match="INVALID_PLATFORM_STATE"):
        fw.snp_gctx_create(0x100000)
    fw.snp_init()
    with pytest.raises(FirmwareError, match="INVALID_PLATFORM_STATE"):
        fw.snp_init()
    assert fw.snp_platform_status().rmp_initialized
    assert len(fw.snp_platform_status().to_bytes()) == 0x20
    gctx = int(host.hypervisor.allocate_host_pages(1)[0]) * PAGE
    with pytest.raises(FirmwareError, match="INVALID_ADDRESS"):
        fw.snp_gctx_create(gctx + 8)
    fw.snp_gctx_create(gctx)
    with pytest.raises(FirmwareError, match="INVALID_PAGE_STATE"):
        fw.snp_gctx_create(gctx)  # now a firmware page
    with pytest.raises(FirmwareError, match=r"INVALID_GUEST \(0x10\)"):
        fw.snp_launch_start(gctx + PAGE, POLICY)
    with pytest.raises(FirmwareError, match="INVALID_GUEST_STATE"):
        fw.snp_activate(gctx, 1)
    fw.snp_launch_start(gctx, POLICY)
    page = guest_page(host, 1, 0x10, b"code")
    with pytest.raises(FirmwareError, match="INACTIVE"):
        fw.snp_launch_update(gctx, page, 1)
    with pytest.raises(FirmwareError, match="INVALID_ASID"):
        fw.snp_activate(gctx, host.chip.min_sev_asid)  # a plain-SEV ASID
    fw.snp_activate(gctx, 1)
    with pytest.raises(FirmwareError, match="ACTIVE"):
        fw.snp_activate(gctx, 2)
    digest = snp_context(fw, gctx).launch_digest
    with pytest.raises(FirmwareError, match="INVALID_PARAM"):
        fw.snp_launch_update(gctx, page, 7)
    other = guest_page(host, 2, 0x11)  # assigned to another ASID
    hypervisor_page = int(host.hypervisor.allocate_host_pages(1)[0]) * PAGE
    for bad in (other, hypervisor_page):
        with pytest.raises(FirmwareError, match="INVALID_PAGE_STATE"):
            fw.snp_launch_update(gctx, bad, 1)
    with pytest.raises(FirmwareError, match="INVALID_PARAM"):  # a VMSA without SNP enabled
        fw.snp_launch_update(gctx, guest_page(host, 1, 0x12, reset_state().to_bytes()), 2)
    assert snp_context(fw, gctx).launch_digest == digest
    fw.snp_launch_update(gctx, page, 1)
    with pytest.raises(FirmwareError, match="INVALID_PAGE_STATE"):
        fw.snp_launch_update(gctx, page, 1)  # validated already
    fw.snp_launch_finish(gctx)
    with pytest.raises(FirmwareError, match="INVALID_GUEST_STATE"):
        fw.snp_launch_update(gctx, guest_page(host, 1, 0x13), 1)


def test_a_cpuid_page_claiming_what_the_chip_lacks_is_refused() -> None:
    host, gctx = snp_host("milan")
    fw = host.firmware
    fw.snp_launch_start(gctx, POLICY)
    fw.snp_activate(gctx, 1)
    ebx = host.chip.leaf_8000001f().ebx
    lies = [cpuid_page((0x8000_001F, int(SevFeatures.SEV | SevFeatures.SECURE_TSC), ebx)),
            cpuid_page((0x8000_001F, int(SevFeatures.SEV), ebx & ~0x3F | 47)),  # the C-bit
            cpuid_page((1, host.chip.signature + 1)),
            struct.pack("<II8x", 65, 0)]
    for lie in lies:
        spa = guest_page(host, 1, 0x20, lie)
        with pytest.raises(FirmwareError, match="INVALID_PARAM"):
            fw.snp_launch_update(gctx, spa, 6)
        assert not memory_controller(host).rmp.validated[spa // PAGE]
        assert host.hypervisor.read_spa(spa, len(lie)) == lie  # still plaintext: untouched
    assert snp_context(fw, gctx).launch_digest == bytes(48)
    honest = cpuid_page((0x8000_001F, int(host.chip.features), ebx))
    fw.snp_launch_update(gctx, guest_page(host, 1, 0x21, honest), 6)


def test_decommission_and_reclaim() -> None:
    host, gctx = snp_host()
    fw = host.firmware
    fw.snp_launch_start(gctx, POLICY)
    fw.snp_activate(gctx, 1)
    vmsa = reset_state()
    vmsa.regs["sev_features"] = 1
    vmsa_spa = guest_page(host, 1, 0xFFFF_FFFF_F, vmsa.to_bytes())
    fw.snp_launch_update(gctx, vmsa_spa, 2)
    assert fw.snp_platform_status().guest_count == 1
    for page in (gctx, vmsa_spa):
        with pytest.raises(FirmwareError, match="INVALID_PAGE_STATE"):
            fw.snp_page_reclaim(page)
    with pytest.raises(RmpViolation):
        host.hypervisor.write_spa(vmsa_spa, bytes(16))
    fw.snp_decommission(gctx)
    assert fw.snp_platform_status().guest_count == 0
    with pytest.raises(FirmwareError, match="INVALID_GUEST"):
        fw.snp_guest_status(gctx)
    for page in (gctx, vmsa_spa):
        fw.snp_page_reclaim(page)
        host.hypervisor.write_spa(page, bytes(16))  # the hypervisor's again
    with pytest.raises(FirmwareError, match="INVALID_PAGE_STATE"):
        fw.snp_page_reclaim(gctx)
    gctx2 = int(host.hypervisor.allocate_host_pages(1)[0]) * PAGE
    fw.snp_gctx_create(gctx2)
    fw.snp_launch_start(gctx2, POLICY)
    with pytest.raises(FirmwareError, match="DF_FLUSH_REQUIRED"):
        fw.snp_activate(gctx2, 1)
    fw.df_flush()
    fw.snp_activate(gctx2, 1)


def test_sevsim_run_mode_snp(build, tmp_path: Path) -> None:
    def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                              capture_output=True, text=True, timeout=120, check=False)

    for name in ("hello", "secret"):
        outputs = {}
        for mode in ("sev-es", "snp"):
            dump = tmp_path / f"{name}-{mode}.bin"
            ran = sevsim("run", build(name), "--mode", mode, "--chip", "genoa", "--memory",
                         "16M", "--dump-host-view", dump)
            assert ran.returncode == 0, ran.stderr
            assert f"mode={mode} chip=genoa" in ran.stderr
            assert blocks_found(dump.read_bytes(), secret_bytes()) == 0
            outputs[mode] = ran.stdout
        assert outputs["snp"] == outputs["sev-es"].replace(
            "SEV_STATUS=0x3 sev=1 es=1 snp=0", "SEV_STATUS=0x7 sev=1 es=1 snp=1").replace(
            "eax=0x0000000a", "eax=0x0000001a")


def test_what_snp_does_not_model_yet_says_so(build) -> None:
    host = Host()
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("hello"))
    with pytest.raises(VmStateError, match="legacy owner flow"):
        vm.launch(owner=object())  # type: ignore[arg-type]
    vm.launch()
    with pytest.raises(FirmwareError, match="POLICY_FAILURE"):  # the default has no DEBUG
        debug_read(vm, 0x1000, 16)
    with pytest.raises(VmStateError, match="SNP migration"):
        migrate(vm, Host())


def test_launch_finish_checks_the_id_block_and_its_signatures() -> None:
    host, gctx = snp_host()
    fw = host.firmware
    fw.snp_launch_start(gctx, POLICY)
    fw.snp_activate(gctx, 1)
    fw.snp_launch_update(gctx, guest_page(host, 1, 1, b"image"), 1)
    digest = snp_context(fw, gctx).launch_digest
    id_key, author = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(
        ec.SECP384R1())
    block = IdBlock(digest, b"F" * 16, b"I" * 16, guest_svn=7, policy=POLICY)
    auth = IdAuthInfo.create(block, id_key, author)
    forged = IdAuthInfo.create(block, ec.generate_private_key(ec.SECP384R1()), author)
    refusals = [
        (IdBlock(bytes(48), policy=POLICY), auth, "BAD_MEASUREMENT"),
        (IdBlock(digest, policy=POLICY | 1 << 19), auth, "POLICY_FAILURE"),
        (IdBlock(digest, b"X" * 16, b"I" * 16, 7, POLICY), auth, "BAD_SIGNATURE"),
        (block, IdAuthInfo(forged.id_block_sig, auth.id_key, auth.id_key_sig, auth.author_key),
         "BAD_SIGNATURE"),
        (block, IdAuthInfo(auth.id_block_sig, auth.id_key, forged.id_key_sig,
                           SnpPublicKey.from_key(ec.generate_private_key(
                               ec.SECP384R1()).public_key())), "BAD_SIGNATURE"),
    ]
    for bad_block, bad_auth, status in refusals:
        with pytest.raises(FirmwareError, match=status):
            fw.snp_launch_finish(gctx, id_block=bad_block.to_bytes(),
                                 id_auth=bad_auth.to_bytes(), author_key_en=True)
        assert fw.snp_guest_status(gctx).state == 1  # still launching
    with pytest.raises(FirmwareError, match="INVALID_PARAM"):
        fw.snp_launch_finish(gctx, id_block=block.to_bytes())
    with pytest.raises(FirmwareError, match="BAD_SIGNATURE"):  # AUTHOR_KEY_EN, no author key
        fw.snp_launch_finish(gctx, id_block=block.to_bytes(),
                             id_auth=IdAuthInfo.create(block, id_key).to_bytes(),
                             author_key_en=True)
    fw.snp_launch_finish(gctx, host_data=b"h" * 32, id_block=block.to_bytes(),
                         id_auth=auth.to_bytes(), author_key_en=True)
    ctx = snp_context(fw, gctx)
    assert ctx.id_block == block and ctx.host_data == b"h" * 32
    assert ctx.id_key_digest == SnpPublicKey.from_key(id_key.public_key()).digest()
    assert ctx.author_key_digest == SnpPublicKey.from_key(author.public_key()).digest()


def test_a_refused_vmm_launch_can_be_torn_down(build) -> None:
    host = Host(chip="milan")
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("hello"))
    with pytest.raises(FirmwareError, match="AES-256-XTS"):
        vm.launch(policy=POLICY | 1 << 22)
    gctx = vm.hv.gctx_frame
    vm.destroy()
    assert not memory_controller(host).rmp.assigned[gctx]
    assert host.firmware.snp_platform_status().guest_count == 0


def test_an_snp_guest_takes_cpuid_from_the_checked_page_not_the_hypervisor(build) -> None:
    host = Host()
    honest = host.hypervisor.cpuid

    def lying(vm: HvVm, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        regs = honest(vm, leaf, subleaf)
        return (0x2, *regs[1:]) if leaf == 0x8000_001F else regs  # "SEV only"

    consoles = {}
    for mode in ("sev-es", "snp"):
        vm = host.create_vm(mode=mode, memory="16M")
        vm.load(build("hello"))
        vm.launch()
        host.hypervisor.cpuid = lying  # type: ignore[method-assign]
        consoles[mode] = vm.run(timeout=10).console
        host.hypervisor.cpuid = honest  # type: ignore[method-assign]
    assert "cpuid 8000001f: eax=0x00000002" in consoles["sev-es"]
    assert "cpuid 8000001f: eax=0x0000001a" in consoles["snp"]


def test_a_vmm_with_a_lying_cpuid_table_cannot_launch(build) -> None:
    host = Host(chip="milan")
    honest = host.hypervisor.cpuid
    host.hypervisor.cpuid = (  # type: ignore[method-assign]
        lambda vm, leaf, sub: (int(SevFeatures.SEV_SNP | SevFeatures.SECURE_TSC), 0, 0, 0)
        if leaf == 0x8000_001F else honest(vm, leaf, sub))
    vm = host.create_vm(mode="snp", memory="16M")
    vm.load(build("hello"))
    with pytest.raises(FirmwareError, match=r"INVALID_PARAM.*Fn8000_001F"):
        vm.launch()


def test_the_vmm_passes_the_owners_id_block_and_host_data(build, tmp_path: Path) -> None:
    """The owner signs an ID block for the digest it expects; reports then carry its family
    and image IDs, SVN, key digests and the VMM's HOST_DATA. Another digest: no launch."""
    elf = build("report")
    probe = Host(chip="milan")
    vm = probe.create_vm(mode="snp", memory="16M")
    vm.load(elf)
    vm.launch()
    digest = snp_context(probe.firmware, vm.hv.firmware_handle).launch_digest
    id_key, author = (ec.generate_private_key(ec.SECP384R1()) for _ in range(2))
    block = IdBlock(digest, b"F" * 16, b"I" * 16, guest_svn=3, policy=POLICY)
    auth = IdAuthInfo.create(block, id_key, author).to_bytes()
    (tmp_path / "id_block.bin").write_bytes(block.to_bytes())
    (tmp_path / "id_auth.bin").write_bytes(auth)
    ran = subprocess.run([sys.executable, "-m", "sevsim", "run", elf, "--mode", "snp",
                          "--chip", "milan", "--memory", "16M", "--host-data", "ab" * 32,
                          "--id-block", tmp_path / "id_block.bin", "--id-auth",
                          tmp_path / "id_auth.bin", "--report-out", tmp_path / "report.bin"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    report = AttestationReport.from_bytes((tmp_path / "report.bin").read_bytes())
    assert (report.family_id, report.image_id, report.guest_svn) == (b"F" * 16, b"I" * 16, 3)
    assert report.host_data == b"\xab" * 32 and report.measurement == digest
    assert report.id_key_digest == SnpPublicKey.from_key(id_key.public_key()).digest()
    assert report.author_key_digest == SnpPublicKey.from_key(author.public_key()).digest()
    assert report.signer_info.author_key_en
    other = Host(chip="milan").create_vm(mode="snp", memory="16M")
    other.load(build("hello"))  # another image, another digest: the ID block does not fit
    with pytest.raises(FirmwareError, match="BAD_MEASUREMENT"):
        other.launch(id_block=block.to_bytes(), id_auth=auth)
    other.destroy()
