"""The host side reaches only what a real host reaches (DESIGN.md, "Who holds what").

Everything the untrusted side holds (a `Host`, its hypervisor and Secure Processor command
interface, its VMs, the attacker toolkit's handles) is walked attribute by attribute, skipping
underscore names, as an attacker with a Python prompt would explore it. The walk fails if it
reaches the inside: plaintext frames, the engine and its key slots, RMP storage, a Unicorn
engine, the guest's software or its view of a vCPU, firmware contexts and private keys, key
bytes, or a method that signs reports. Tests that legitimately need the inside get it from
`sevsim.testing`, outside the threat model.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from sevsim import Host
from sevsim.attacks.framework import Setting, Trace
from sevsim.attacks.lab import Lab
from sevsim.attacks.runner import attack_named
from sevsim.attacks.toolkit import HypervisorAttacker, PhysicalAttacker
from sevsim.errors import FirmwareError
from sevsim.firmware.core import GuestContext
from sevsim.firmware.snp import SnpGuestContext
from sevsim.guest.kernel import GuestKernel
from sevsim.guest.standin import ReportingGuest
from sevsim.hw.cpu import GuestCpu, VmsaSeals
from sevsim.hw.engine import EncryptionEngine, TweakFunction
from sevsim.hw.memory import MemoryController
from sevsim.hw.mmu import GuestAddressSpace
from sevsim.hw.rmp import Rmp
from sevsim.hw.trng import Trng
from sevsim.testing import memory_controller, snp_context

INSIDE_TYPES = (MemoryController, EncryptionEngine, TweakFunction, Rmp, GuestAddressSpace, Uc,
                GuestCpu, GuestKernel, ReportingGuest, VmsaSeals, Trng, GuestContext,
                SnpGuestContext, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
SIGNING = {"sign_report", "attestation_report", "snp_context"}  # never public anywhere
LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), Path, range)


def public_values(obj: object) -> Iterator[tuple[str, object]]:
    """(name, value) of obj's public attributes; a property that refuses (the VMCB save area
    of an SEV-ES vCPU) is a door that stays shut, not a path."""
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        yield name, value


def children(obj: object) -> Iterator[tuple[str, object]]:
    """Where one step from obj leads: attributes, container items, a bound method's object
    and a closure's cells (a callback is a handle on what it closes over)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for index, value in enumerate(obj):
            yield f"[{index}]", value
        return
    if isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        return
    if isinstance(obj, types.FunctionType):
        for index, cell in enumerate(obj.__closure__ or ()):
            yield f".<closure {index}>", cell.cell_contents
        return
    if isinstance(obj, types.BuiltinMethodType | np.ndarray) or inspect.isroutine(obj):
        return
    yield from ((f".{name}", value) for name, value in public_values(obj))


def walk(roots: dict[str, object], secrets: list[bytes],
         plaintext: np.ndarray) -> list[str]:
    """Every path from the roots to something inside, by breadth-first search."""
    found: list[str] = []
    seen: set[int] = set()
    queue = list(roots.items())
    while queue:
        path, obj = queue.pop(0)
        if id(obj) in seen or isinstance(obj, type | types.ModuleType):
            continue
        seen.add(id(obj))
        if isinstance(obj, INSIDE_TYPES):
            found.append(f"{path}: {type(obj).__name__}")
            continue
        if isinstance(obj, bytes | bytearray) and bytes(obj) in secrets:
            found.append(f"{path}: key bytes")
            continue
        if isinstance(obj, np.ndarray) and np.shares_memory(obj, plaintext):
            found.append(f"{path}: plaintext frames")
            continue
        if isinstance(obj, types.MethodType) and obj.__name__.lstrip("_") in SIGNING:
            found.append(f"{path}: signing method")
        if isinstance(obj, LEAVES):
            continue
        queue.extend((path + step, child) for step, child in children(obj))
    return found


@pytest.fixture(scope="module")
def running_host(build):
    """A seeded host with a VM of each mode, launched and run, plus one that is only
    created: every kind of state the host side holds."""
    host = Host(seed=b"boundary")
    image = build("hello")
    vms = {}
    for mode in ("none", "sev", "sev-es", "snp"):
        vm = host.create_vm(mode, "16M", vcpus=2 if mode == "snp" else 1)
        vm.load(image)
        vm.launch()
        vm.run(timeout=30)
        vms[mode] = vm
    vms["fresh"] = host.create_vm("snp", "16M")
    return host, vms


def inside_secrets(host: Host, vms: dict) -> list[bytes]:
    """The key bytes the firmware holds for these VMs (VEKs, VMPCKs)."""
    keys: list[bytes] = []
    for vm in vms.values():
        if vm.mode == "snp" and vm.launched:
            ctx = snp_context(host.firmware, vm.hv.firmware_handle)
            keys += [ctx.vek, *ctx.vmpcks]
    return keys


def test_no_public_path_from_the_host_side_reaches_inside(running_host) -> None:
    host, vms = running_host
    roots = {"host": host, **{f"vm[{mode}]": vm for mode, vm in vms.items()},
             "hypervisor_attacker": HypervisorAttacker(host.hypervisor),
             "physical_attacker": PhysicalAttacker(host)}
    secrets = inside_secrets(host, vms)
    assert len(secrets) == 5  # the SNP VM's VEK and four VMPCKs: the search has targets
    found = walk(roots, secrets, memory_controller(host).cells)
    assert not found, "\n".join(found)


def test_an_attack_lab_hands_out_only_attacker_handles() -> None:
    """What an attack's code is given (the lab: its attacker handles and victims) after a
    real attack ran in it."""
    lab = Lab(Setting("snp"), Trace())
    attack_named("A0").attempt(lab)
    assert lab.target is not None and lab.target.vm.launched
    found = walk({"lab": lab}, [], np.zeros(1, dtype=np.uint8))
    assert not found, "\n".join(found)


def test_the_walk_finds_planted_leaks(running_host) -> None:
    """Each kind of leak, planted on an object the walk visits, is reported: the walk can
    fail (and once did, on host.memory.cells, vm.hv.vcpus[0].uc, host.firmware.sign_report)."""
    host, vms = running_host
    cells = memory_controller(host).cells
    secrets = inside_secrets(host, vms)

    class Leaky:
        pass

    plants = {
        "plaintext frames": cells[4096:8192],
        "MemoryController": memory_controller(host),
        "key bytes": secrets[0],
        "Uc": Uc(UC_ARCH_X86, UC_MODE_64),
    }

    class Signer:
        def sign_report(self) -> None:
            """Named as the firmware's signing method."""

    plants["signing method"] = Signer().sign_report
    for kind, leak in plants.items():
        holder = Leaky()
        holder.handle = [{"deep": leak}]  # type: ignore[attr-defined]
        found = walk({"host": host, "extra": holder}, secrets, cells)
        assert any(kind in line and line.startswith("extra.handle[0]['deep']")
                   for line in found), (kind, found)
    closure_leak = memory_controller(host)
    found = walk({"callback": lambda: closure_leak}, secrets, cells)
    assert found == ["callback.<closure 0>: MemoryController"]


# AMD's command names (SEV API 0.24 and SEV-SNP ABI 1.55, chapter "Command reference"),
# lowercased as the firmware's methods are named; GET_ID is `get_id`.
SEV_COMMANDS = {
    "init", "shutdown", "platform_reset", "platform_status", "pek_gen", "pek_csr",
    "pek_cert_import", "pdh_gen", "pdh_cert_export", "df_flush", "download_firmware", "get_id",
    "launch_start", "launch_update_data", "launch_update_vmsa", "launch_measure",
    "launch_secret", "launch_finish", "activate", "deactivate", "decommission", "guest_status",
    "dbg_decrypt", "dbg_encrypt", "send_start", "send_update_data", "send_update_vmsa",
    "send_finish", "send_cancel", "receive_start", "receive_update_data",
    "receive_update_vmsa", "receive_finish",
}
SNP_COMMANDS = {
    "snp_init", "snp_shutdown", "snp_shutdown_ex", "snp_platform_status", "snp_df_flush",
    "snp_config", "snp_commit", "snp_vlek_load", "snp_gctx_create", "snp_launch_start",
    "snp_launch_update", "snp_launch_finish", "snp_activate", "snp_decommission",
    "snp_guest_status", "snp_guest_request", "snp_dbg_decrypt", "snp_dbg_encrypt",
    "snp_page_reclaim", "snp_page_move", "snp_page_swap_out", "snp_page_swap_in",
}
# What the host knows of its platform without a command, or gets from AMD's key server
# (public certificates; a VLEK wrapped for this chip, as KDS hands it out); and the host's
# own computations.
PLATFORM_FACTS = {
    "chip", "tcb", "current_tcb", "committed_tcb", "generation", "platform", "sockets",
    "externally_owned", "snp_initialized", "vlek_loaded", "vulnerable_cve_2019_9836",
    "chip_id", "amd_certs", "vcek_certificate", "vcek_public_key", "certificate_table",
    "seal_hashstick", "measurement_mac", "install_firmware",
    "vulnerable_sp_code_exec",
}
# A firmware flaw's path (attack F2): only firmware built with the flaw answers it; the
# firmware a Host runs by default refuses it (checked below).
FLAW_PATHS = {"sp_exploit"}


def test_the_secure_processor_answers_only_commands(running_host) -> None:
    """What the host holds of the Secure Processor is its command interface: every public
    name is an AMD command or a platform fact, none signs, decrypts outside policy or
    returns a key."""
    host, _ = running_host
    public = {name for name, _ in public_values(host.firmware)}
    assert public - SEV_COMMANDS - SNP_COMMANDS - PLATFORM_FACTS - FLAW_PATHS == set()
    with pytest.raises(FirmwareError):
        host.firmware.sp_exploit()
    assert {"launch_start", "snp_launch_update", "dbg_decrypt"} <= public
