"""The test seam: what tests and benchmarks may use to look inside the simulator.

Everything here is simulator inspection, outside the threat model: it reads firmware,
hypervisor and engine state that no host-reachable object hands out (DESIGN.md, "Who holds
what"), in the spirit of go-sev-guest's `testing` package. Nothing in sevsim imports this
package (tests/test_layers.py); tests, benchmarks and the demo do. It is the only module in
src/ that touches other objects' private names (tests/test_public_surface.py), so when an
internal changes, this module follows and the tests do not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from sevsim.abi.snp_tcb import SnpPolicy
from sevsim.firmware.sev import SevFirmware
from sevsim.firmware.snp import SnpGuestContext, SnpGuestState
from sevsim.hw import engine
from sevsim.hw.chips import chip_preset
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from unicorn import Uc

    from sevsim.abi.ghcb import Ghcb
    from sevsim.abi.sev_cert import SevCert, Signature
    from sevsim.abi.snp_tcb import TcbVersion
    from sevsim.firmware.pki import PlatformPki
    from sevsim.firmware.snp import SnpFirmware
    from sevsim.host.machine import Host
    from sevsim.host.vmm import VirtualMachine
    from sevsim.hw.cpu import GuestCpu, GuestSoftware, Vcpu
    from sevsim.hw.mmu import GuestAddressSpace

__all__ = [
    "GCTX",
    "FrameCount",
    "PlatformIdentity",
    "address_space",
    "engine_on_one_core",
    "ghcb_answer",
    "guest_cpu",
    "guest_software",
    "host_frames",
    "launch_digest",
    "launched_snp_guest",
    "measured_spa_runs",
    "memory_controller",
    "platform_identity",
    "postgres_schema",
    "secure_processor",
    "sign_report",
    "snp_context",
    "vcpu_engine",
]

GCTX = 0x5000  # the guest context page launched_snp_guest uses unless told otherwise


def secure_processor(chip: str = "milan", *, seed: bytes | None = None,
                     memory: int = 1 << 20) -> SevFirmware:
    """A Secure Processor on its own, over `memory` bytes of DRAM: for firmware-level tests
    and benchmarks that need no hypervisor. With `seed` the chip secret, hence every identity
    key (CEK, PEK, PDH, VCEK), is the same on every run: a reproducible platform."""
    preset = chip_preset(chip)
    return SevFirmware(preset, MemoryController(memory, EncryptionEngine(preset.tweak)),
                       seed=seed)


def launched_snp_guest(fw: SnpFirmware, gctx: int = GCTX, *, measurement: bytes | None = None,
                       policy: SnpPolicy | None = None, asid: int = 1) -> SnpGuestContext:
    """A running SNP guest context in `fw`, as SNP_LAUNCH_FINISH leaves it, without a launch:
    random VEK and VMPCKs, `measurement` (random when None) as its launch digest. The caller
    plays the guest with the returned context's VMPCKs (SNP_GUEST_REQUEST tests)."""
    ctx = SnpGuestContext(gctx, SnpGuestState.RUNNING, policy or SnpPolicy(), os.urandom(16),
                          tuple(os.urandom(32) for _ in range(4)),
                          launch_digest=os.urandom(48) if measurement is None else measurement,
                          asid=asid)
    fw._snp_guests[gctx] = ctx
    return ctx


def launch_digest(host: Host, vm: VirtualMachine) -> bytes:
    """The SHA-256 launch digest the firmware computed for a launched SEV or SEV-ES guest
    (LAUNCH_MEASURE returns only its HMAC under the owner's TIK)."""
    return host.firmware._guests[vm.hv.firmware_handle].launch_digest.digest()


@dataclass(frozen=True)
class PlatformIdentity:
    """The legacy SEV identity keys of a firmware, private halves included, and the owner's
    OCA import: for checking that a refused command left them alone, or that an attack
    recovered what it claims. Secrets: inspection only."""

    pek: ec.EllipticCurvePrivateKey
    pdh: ec.EllipticCurvePrivateKey
    oca: ec.EllipticCurvePrivateKey
    cek: ec.EllipticCurvePrivateKey
    owner_oca: SevCert | None  # the imported OCA certificate; None while self-owned
    pek_oca_sig: Signature | None  # the owner's OCA signature on the PEK


def platform_identity(fw: PlatformPki) -> PlatformIdentity:
    """`fw`'s current identity keys (they change with PEK_GEN, PDH_GEN, PLATFORM_RESET)."""
    return PlatformIdentity(fw._pek, fw._pdh, fw._oca, fw._cek, fw._owner_oca,
                            fw._pek_oca_sig)


class FrameCount(NamedTuple):
    """Host physical frames, as the hypervisor's allocator counts them."""

    used: int
    free: int


def host_frames(host: Host) -> FrameCount:
    """How many frames the hypervisor has handed out and how many are left: a refused or
    destroyed VM must give back every frame it took."""
    used = int(np.count_nonzero(host.hypervisor._frame_used))
    return FrameCount(used, host.hypervisor._frame_used.size - used)


def ghcb_answer(host: Host, vm: VirtualMachine, gpa: int,
                request: Ghcb) -> dict[str, int] | None:
    """The hypervisor's answer to a full-page GHCB `request` at `gpa` (the fields it sets), or
    None when the request stopped the VM: the protocol's host side without a running guest."""
    return host.hypervisor._ghcb_request(vm.hv, gpa, request)


def measured_spa_runs(vm: VirtualMachine) -> list[tuple[int, int]]:
    """The pages the VMM measures at launch as (SPA, length) runs in guest-physical order: what
    a test that drives LAUNCH_UPDATE_DATA itself (an owner's own session) hands the firmware."""
    return vm._spa_runs()


@contextmanager
def postgres_schema(url: str, prefix: str = "sevsim") -> Iterator[str]:
    """`url` (a PostgreSQL server) narrowed to a new schema of its own, dropped on leaving:
    key-broker tests and benchmarks share one server without seeing each other's tables."""
    import uuid

    import sqlalchemy as sa

    from sevsim.kbs.store import database_url

    schema = f"{prefix}_{uuid.uuid4().hex}"
    admin = sa.create_engine(database_url(url))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield database_url(url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@contextmanager
def engine_on_one_core() -> Iterator[None]:
    """The encryption engine without its worker pool while inside: every run on the calling
    thread, to compare the pool's results and speed with one core's."""
    pool, engine._POOL = engine._POOL, None
    try:
        yield
    finally:
        engine._POOL = pool


def memory_controller(host: Host) -> MemoryController:
    """The SoC's memory controller: the cells that hold private pages in plaintext, the
    engine's key slots and the RMP arrays, which no host-side object reaches."""
    return host._memory


def address_space(vm: VirtualMachine) -> GuestAddressSpace:
    """The VM's guest-physical memory as its vCPUs map it (C-bits, plaintext mappings)."""
    return vm.hv._space


def vcpu_engine(vcpu: Vcpu) -> Uc:
    """The Unicorn engine that is the vCPU: its registers whatever the mode."""
    return vcpu._uc


def guest_cpu(vcpu: Vcpu) -> GuestCpu:
    """The vCPU as the guest's own software sees it (plaintext memory, registers)."""
    return vcpu._view


def guest_software(vcpu: Vcpu) -> GuestSoftware | None:
    """The guest kernel (or stand-in) running on the vCPU."""
    return vcpu._guest


def snp_context(fw: SnpFirmware, gctx: int) -> SnpGuestContext:
    """The firmware's context of an SNP guest: VEK, VMPCKs, policy, launch digest."""
    return fw._snp_context(gctx)


def sign_report(fw: SevFirmware, unsigned: bytes, tcb: TcbVersion) -> bytes:
    """A report body signed with the firmware's VCEK for `tcb`, as only the firmware signs:
    for verifier tests that need reports with chosen fields."""
    return fw._sign_report(unsigned, tcb)
