"""`sevsim demo`: one Milan host, four tenants keeping the same secret at each protection
level, a rogue administrator's view of them, the attack matrix, and an SNP tenant that
attests (report, SNP-bound vTPM) to a real key broker and gets its key while two twins are
refused. `run_demo` returns the JSON document `sevsim report-html` renders (schema
"sevsim.demo/1"); every value in it is computed by running the mechanism. The evidence's
sections come from `sevsim.demo.evidence`, the key broker from `sevsim.demo.broker`.

The tenants and the attested VM run on a `Host` seeded with the demo's seed, the secrets and
nonces are drawn from it, and the attack labs get it too, so one seed gives one document
(but for "timings"). What cannot be seeded is left out: the vTPM's keys (libtpms draws them
from its own RNG) and the key broker's nonces and tokens; the document shows the checks made
on them, not their bytes.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from sevsim.abi.snp_tcb import PolicyFlags
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import Outcome
from sevsim.attacks.runner import cells, matrix_document, run_matrix
from sevsim.attest.measure import guest_digest
from sevsim.attest.snp_verify import CertBundle
from sevsim.demo.broker import MEMORY, RESOURCE, kbs_attempt, key_broker, run_attested
from sevsim.demo.evidence import attestation_document, b64, vtpm_document
from sevsim.errors import ConfigError, MemoryAccessError, SevsimError
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine
from sevsim.hw.chips import PRESETS
from sevsim.testing import guest_cpu

SCHEMA = "sevsim.demo/1"
CHIP = "milan"
TENANT_MODES = ("none", "sev", "sev-es", "snp")
PAGE = 4096
REGISTERS = ("rip", "rsp", "rax", "rbx", "rcx", "rdx", "cr3")
PROGRAMS = Path(__file__).resolve().parent
ONE_BYTE = (b"kbs: got", b"kbs: Got")  # the twin's one changed byte, in a console string
MASK64 = (1 << 64) - 1

Progress = Callable[[str, int, int], None]
"""progress(step, done, total): called as each step advances ("tenants", "attacks", "kbs")."""


def _no_progress(step: str, done: int, total: int) -> None:
    """The default: nobody is watching."""


def _draw(seed: bytes, label: str, size: int) -> bytes:
    """Bytes only the demo's seed and the label determine."""
    return hashlib.shake_256(b"sevsim demo\0" + label.encode() + b"\0" + seed).digest(size)


def secret_page(state: int) -> bytes:
    """The 4096 bytes examples/secret.c generates from SECRET_SEED `state` (xorshift64*):
    the ground truth the host views are searched for."""
    x, words = state, []
    for _ in range(PAGE // 8):
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        words.append((x * 0x2545F4914F6CDD1D) & MASK64)
    return struct.pack(f"<{PAGE // 8}Q", *words)


def contains_secret(haystack: bytes | np.ndarray, secret: bytes) -> bool:
    """Whether any 16-byte block of `secret` occurs 16-byte aligned in `haystack` (what the
    encryption engine works on: one plaintext block is enough to call it a leak)."""
    hay = np.frombuffer(haystack, dtype=np.uint8) if isinstance(haystack, bytes) else haystack
    hay = hay[: hay.size - hay.size % 16].view(np.uint64).reshape(-1, 2)
    blocks = np.frombuffer(secret, dtype=np.uint64).reshape(-1, 2)
    candidates = hay[np.isin(hay[:, 0], blocks[:, 0])]
    wanted = {tuple(b) for b in blocks.tolist()}
    return any(tuple(row) in wanted for row in candidates.tolist())


@dataclass(frozen=True)
class Programs:
    """The demo's guest ELFs, built from source for this run."""

    secret: Path  # examples/secret.c with the run's secret
    attested: Path  # attested.c: report, vTPM evidence, then the key broker
    secret_state: int


def build_programs(seed: bytes, out: Path) -> Programs:
    """Compile the tenants' program with a secret drawn from the seed, and the SNP tenant's."""
    state = int.from_bytes(_draw(seed, "secret", 8), "little") | 1  # xorshift needs x != 0
    secret = build_guest([PROGRAMS / "secret.c"], out / "secret.elf",
                         cflags=[f"-DSECRET_SEED=0x{state:016x}ULL"])
    attested = build_guest([PROGRAMS / "attested.c"], out / "attested.elf")
    return Programs(secret, attested, state)


def _symbol(elf: Path, name: str) -> int:
    """Where the program keeps `name` (a page-aligned buffer)."""
    with elf.open("rb") as fh:
        table = ELFFile(fh).get_section_by_name(".symtab")
        found = table.get_symbol_by_name(name) if isinstance(table, SymbolTableSection) else None
    if not found:
        raise ConfigError(f"{elf}: no symbol {name}")
    return int(found[0]["st_value"])


# -- the four tenants and the rogue administrator -------------------------------------------


def _registers(vm: VirtualMachine, host: Host) -> dict[str, Any]:
    """What the host reads of vCPU 0's state (VMCB save area, or the VMSA's DRAM bytes) next
    to the values the vCPU really holds (simulator inspection)."""
    vcpu = vm.hv.vcpus[0]
    true = guest_cpu(vcpu)
    guest = {name: f"0x{true.reg(name):x}" for name in REGISTERS}
    if vcpu.vmsa_spa is None:
        shown: dict[str, str | None] = {name: f"0x{vcpu.vmcb.read(name):x}"
                                         for name in REGISTERS}
        return {"where": "VMCB", "host": shown, "guest": guest, "vmsa": None}
    hidden: dict[str, str | None] = dict.fromkeys(REGISTERS)
    vmsa = host.hypervisor.read_spa(vcpu.vmsa_spa, PAGE)
    return {"where": "VMSA", "host": hidden, "guest": guest, "vmsa": b64(vmsa)}


def run_tenant(host: Host, mode: str, programs: Programs, secret: bytes
               ) -> tuple[VirtualMachine, dict[str, Any]]:
    """Launch and run secret.elf in `mode`, then look at it as the host and as the guest
    (`secret_in_dram_dump` is filled in by `search_dram`, once every tenant has run)."""
    vm = host.create_vm(mode=mode, memory=MEMORY)
    vm.load(programs.secret)
    vm.launch()
    result = vm.run(timeout=60)
    if result.exit_code != 0:
        raise SevsimError(f"the {mode} tenant exited {result.exit_code}: {result.console}")
    cpu = guest_cpu(vm.hv.vcpus[0])
    pages = []
    for label, symbol in (("secret", "secret_page"), ("shared", "shared_page")):
        gpa = _symbol(programs.secret, symbol)
        pages.append({"label": label, "gpa": gpa, "spa": host.hypervisor.gpa_to_spa(vm.hv, gpa),
                      "guest": b64(cpu.read(gpa, PAGE)), "host": b64(vm.read_gpa(gpa, PAGE))})
    return vm, {"mode": mode, "asid": vm.asid, "console": result.console, "pages": pages,
                "secret_in_host_view": contains_secret(vm.host_view(), secret),
                "secret_in_dram_dump": False, "registers": _registers(vm, host)}


def search_dram(host: Host, vms: list[VirtualMachine], secret: bytes) -> list[bool]:
    """A physical attacker's dump of the DIMMs, searched for the secret in each VM's own
    frames (the same secret is in every tenant: the plain one's must not count for the
    others)."""
    frames = host.dram_dump().reshape(-1, PAGE)
    found = []
    for vm in vms:
        spas = []
        for gpa in range(0, vm.memory_size, PAGE):
            try:
                spas.append(host.hypervisor.gpa_to_spa(vm.hv, gpa) // PAGE)
            except MemoryAccessError:
                continue  # not mapped: no frame of this VM
        found.append(contains_secret(frames[spas].reshape(-1), secret))
    return found


# -- the attack matrix ----------------------------------------------------------------------


def attacks_document(outcomes: list[Outcome]) -> dict[str, Any]:
    """What `sevsim attack matrix --json` prints, with the catalog's rows."""
    chosen = {o.attack for o in outcomes}
    return {**matrix_document(outcomes),
            "attacks": [{"id": a.id, "name": a.name, "actor": a.actor, "source": a.source}
                        for a in ATTACKS.values() if a.id in chosen]}


# -- the whole tour -------------------------------------------------------------------------


def run_demo(seed: bytes, *, jobs: int | None = None,
             progress: Progress = _no_progress) -> dict[str, Any]:
    """Run the demo and return its document (module docstring); `jobs` processes compute
    the attack matrix. SevsimError when a step cannot run at all; whether the expectations
    hold is `failed_expectations(document)`."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        now = time.perf_counter()
        timings[step] = round(now - since, 3)
        return now

    with tempfile.TemporaryDirectory(prefix="sevsim-demo-") as tmp:
        workdir = Path(tmp)
        programs = build_programs(seed, workdir)
        secret = secret_page(programs.secret_state)
        mark = lap("build", started)

        host = Host(chip=CHIP, memory="160M", seed=seed)
        vms, tenants = [], []
        progress("tenants", 0, len(TENANT_MODES))
        for done, mode in enumerate(TENANT_MODES, 1):
            vm, tenant = run_tenant(host, mode, programs, secret)
            vms.append(vm)
            tenants.append(tenant)
            progress("tenants", done, len(TENANT_MODES))
        for tenant, found in zip(tenants, search_dram(host, vms, secret), strict=True):
            tenant["secret_in_dram_dump"] = found
        mark = lap("tenants", mark)

        total = len(cells(ATTACKS.values()))
        progress("attacks", 0, total)
        count = 0

        def cell_done(outcome: Outcome) -> None:
            nonlocal count
            count += 1
            progress("attacks", count, total)

        outcomes = run_matrix(jobs=jobs, progress=cell_done, seed=seed)
        mark = lap("attacks", mark)

        image = programs.attested.read_bytes()
        twin = image.replace(*ONE_BYTE)
        if sum(a != b for a, b in zip(image, twin, strict=True)) != 1:
            raise ConfigError("attested.elf: the twin's byte to change is not there once")
        expected = guest_digest("snp", parse_elf(image), MEMORY, 1, kernel_identity())
        resource = _draw(seed, "kbs resource", 32)
        report_data = hashlib.sha512(b"sevsim demo relying party\0" + seed).digest()
        secret_gpa = _symbol(programs.attested, "secret")
        tries = (("snp", image, DEFAULT_SNP_POLICY),
                 ("one-byte twin", twin, DEFAULT_SNP_POLICY),
                 ("debuggable twin", image, DEFAULT_SNP_POLICY | PolicyFlags.DEBUG))
        runs, attempts = [], []
        progress("kbs", 0, len(tries))
        with key_broker(resource, expected, workdir) as broker:
            for done, (name, program, policy) in enumerate(tries, 1):
                before = broker.last_audit_id()
                runs.append(run_attested(host, program, broker.url, report_data, policy))
                attempts.append(kbs_attempt(name, runs[-1], program, policy, resource,
                                            secret_gpa, broker.decisions_after(before)))
                progress("kbs", done, len(tries))
        mark = lap("kbs", mark)

        genuine = runs[0]
        if len(genuine.outputs) != 4:
            raise SevsimError(f"the SNP tenant handed over {len(genuine.outputs)} of 4 "
                              f"blobs: {genuine.console}")
        report, table, evidence, event_log = genuine.outputs
        certs = CertBundle.from_cert_table(table)
        attestation = attestation_document(report, certs, expected, report_data)
        vtpm = vtpm_document(evidence, event_log, report_data[:32], certs, expected, image)
        lap("attestation", mark)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return {"schema": SCHEMA, "seed": seed.hex(), "chip": CHIP,
            "platform": str(PRESETS[CHIP].platform), "secret": secret.hex(),
            "tenants": tenants, "attacks": attacks_document(outcomes),
            "attestation": attestation, "vtpm": vtpm,
            "kbs": {"resource": RESOURCE, "attempts": attempts},
            "timings": {"total_s": timings.pop("total_s"), **timings}}


def failed_expectations(document: dict[str, Any]) -> list[str]:
    """What the demo expects, each named when it does not hold: the plain tenant leaks its
    secret, SEV hides memory but not registers, SEV-ES and SNP hide both; the SNP tenant's
    report verifies, its vTPM quote checks out, its key is released to it and to neither
    twin."""
    failed = []
    tenants = {t["mode"]: t for t in document.get("tenants", [])}

    def leaks(mode: str) -> bool | None:
        tenant = tenants.get(mode)
        return None if tenant is None else tenant["secret_in_host_view"]

    def registers_shown(mode: str) -> bool | None:
        tenant = tenants.get(mode)
        if tenant is None:
            return None
        regs = tenant["registers"]
        return regs["host"] == regs["guest"]

    if leaks("none") is not True:
        failed.append("the plain tenant's secret is not in the host's view")
    for mode in ("sev", "sev-es", "snp"):
        if leaks(mode) is not False or tenants[mode]["secret_in_dram_dump"]:
            failed.append(f"the {mode} tenant's secret is visible to the host")
    if registers_shown("sev") is not True:
        failed.append("the sev tenant's registers are not readable in its VMCB")
    for mode in ("sev-es", "snp"):
        if registers_shown(mode) is not False:
            failed.append(f"the {mode} tenant's registers are readable by the host")
    attestation = document.get("attestation")
    if attestation is not None and attestation["verdict"] != "ok":
        failed.append(f"the SNP tenant's report: {attestation['verdict']}")
    vtpm = document.get("vtpm")
    if vtpm is not None and not vtpm["quote"]["ok"]:
        failed.append("the SNP tenant's vTPM evidence does not verify")
    for attempt in document.get("kbs", {}).get("attempts", []):
        if attempt["tenant"] == "snp" and not (attempt["released"]
                                               and attempt["secret_matches"]):
            failed.append("the SNP tenant did not get the broker's secret")
        if attempt["tenant"] != "snp" and (attempt["released"] or attempt["secret_matches"]):
            failed.append(f"the broker released its secret to the {attempt['tenant']}")
    return failed
