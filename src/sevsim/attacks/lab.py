"""The bench an attack runs on: a host for one setting, the victims, and their ground truth.

The lab plays the guest owner and the referee: it builds each victim from C with a secret
drawn from the lab's seed (the stand-in for data a guest receives at run time, e.g. a key from
a key broker), launches it at the setting's protection level and keeps the secret and the
honest result to itself. The attack gets the lab's attacker handles (`lab.hypervisor`,
`lab.physical`) and the victims as the VMM holds them; `judge` compares its attempt with the
truth afterwards.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from sevsim.abi.bootinfo import KernelOption
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.snp_tcb import Generation
from sevsim.abi.snp_tcb import PolicyFlags as SnpPolicyFlags
from sevsim.abi.svsm_vtpm import VtpmEvidence
from sevsim.abi.tpm2 import HashAlg
from sevsim.abi.vmsa import (
    SEV_FEATURES_ALTERNATE_INJECTION,
    SEV_FEATURES_RESTRICTED_INJECTION,
    SEV_FEATURES_SNP,
    SEV_FEATURES_VMSA_REG_PROT,
)
from sevsim.attacks.framework import Attempt, Setting, Trace
from sevsim.attacks.toolkit import HypervisorAttacker, PhysicalAttacker
from sevsim.attest.idblock import make_id_block
from sevsim.attest.measure import guest_digest
from sevsim.attest.sev_owner import DEFAULT_POLICY, GuestOwner
from sevsim.attest.snp_policy import Policy, TcbMinimum, validate_report
from sevsim.attest.snp_verify import CertBundle, verify_report_chain
from sevsim.attest.svsm_vtpm import verify_vtpm_evidence
from sevsim.attest.tpm_quote import verify_quote
from sevsim.errors import AttestationError, ConfigError
from sevsim.firmware.snp_guest import DEFAULT_TCB
from sevsim.guest.build import build_guest, sdk_dir
from sevsim.host.elf import parse_elf
from sevsim.host.machine import Host
from sevsim.host.vmm import DEFAULT_SNP_POLICY, VirtualMachine
from sevsim.hw.chips import PlatformOptions, chip_preset

VICTIMS = Path(__file__).resolve().parent / "victims"
# How a feature reaches the machine: Host keywords (platform options KVM and the boot
# firmware take, in `Lab.__init__`), the SEV_FEATURES an SNP guest's VMSAs launch with, and
# guest software options.
_SNP_GUEST_FEATURES = {"vmsa-reg-prot": SEV_FEATURES_VMSA_REG_PROT,
                       "restricted-injection": SEV_FEATURES_RESTRICTED_INJECTION,
                       "alternate-injection": SEV_FEATURES_ALTERNATE_INJECTION}
# Guest software options: a C macro every victim is built with (victims that lack the
# option ignore it).
_VICTIM_MACROS = {"fail-closed-checks": "-DFAIL_CLOSED_CHECKS"}
# Guest-kernel hardening options (sevsim.h's SEV_KOPT_* bits): built into the victim as
# -DSEV_KERNEL_OPTIONS, which crt0 turns on before main, beyond the host's reach.
_KERNEL_OPTIONS = {"vc-insn-check": KernelOption.VC_INSN_CHECK,
                   "no-ia32-emulation": KernelOption.NO_IA32_EMULATION}
SECRET_BYTES = 32
# The boot the guest owner approves: the kernel command line its vTPM quote must show in PCR 8
# (its golden value, as integrity monitoring learns it), and the fresh nonces it asks for.
GOLDEN_CMDLINE = b"console=ttyS0 ro"
VTPM_PCR = 8
DEFAULT_SEED = b"sevsim attack lab"  # the lab's platform and its victims' secrets derive from it
_BUILDS = Path(tempfile.gettempdir()) / "sevsim-victims"
# The platform flaws an attack may need (`Host` keywords) and the feature that fixes each: the
# lab runs the firmware and microcode the attack was published against unless the setting has
# the fix.
FIXED_BY = {
    "vulnerable_cve_2019_9836": "fixed-firmware",
    "vulnerable_rmpocalypse": "fixed-firmware",
    "vulnerable_cachewarp": "invd-fixed-ucode",
    "vulnerable_sp_code_exec": "fixed-firmware",  # F2: Buhren et al.'s AMD-SP code execution
}


def _lab_platform(setting: Setting) -> PlatformOptions:
    """The platform the published attacks ran on: the chip's, without TSME (a cold boot of a
    plain VM reads plaintext) and without the BadRAM alias check or ciphertext hiding unless
    the setting turns them on as fixes."""
    return replace(chip_preset(setting.chip).platform, tsme=False,
                   ciphertext_hiding=setting.has("ciphertext-hiding"),
                   alias_check=setting.has("alias-check"))


@dataclass(frozen=True)
class LaunchTerms:
    """What the guest owner gives the VMM for a launch it will trust: under SEV and SEV-ES
    the owner itself (it checks LAUNCH_MEASURE against its expected digest, then sends its
    secret with LAUNCH_SECRET), under SNP an ID block signed for the expected digest, which
    SNP_LAUNCH_FINISH checks. Pass them to `victim.vm.launch(...)`."""

    owner: GuestOwner | None = None
    id_block: bytes | None = None
    id_auth: bytes | None = None
    policy: int | None = None  # SNP: the policy the ID block names (None: the VMM's default)


@dataclass(frozen=True)
class Victim:
    """A victim VM as the attacker knows it: the VMM's VM and the program's public layout
    (symbol addresses from the binary, which is no secret)."""

    vm: VirtualMachine
    symbols: dict[str, int]

    def symbol(self, name: str) -> int:
        """The GPA of a global in the victim program."""
        try:
            return self.symbols[name]
        except KeyError:
            raise ConfigError(f"the victim program has no symbol {name!r}") from None


class Lab:
    """A host for `setting`, the attacker's handles on it, and the victims' ground truth."""

    def __init__(self, setting: Setting, trace: Trace, seed: bytes = DEFAULT_SEED,
                 flaws: frozenset[str] = frozenset()) -> None:
        """`flaws`: the platform flaws the attack needs (keys of `FIXED_BY`); the host has
        each one unless the setting has the feature that fixes it."""
        self.setting = setting
        self.trace = trace
        self.seed = seed
        unknown = sorted(set(flaws) - FIXED_BY.keys())
        if unknown:
            raise ConfigError(f"unknown platform flaw {unknown[0]!r}; known: "
                              f"{', '.join(FIXED_BY)}")
        present = {flaw for flaw in flaws if not setting.has(FIXED_BY[flaw])}
        self.flaws = frozenset(present)  # the flaws this lab's platform has
        self._host = Host(chip=setting.chip, memory="256M", seed=seed,
                          vulnerable_cve_2019_9836="vulnerable_cve_2019_9836" in present,
                          vulnerable_cachewarp="vulnerable_cachewarp" in present,
                          vulnerable_rmpocalypse="vulnerable_rmpocalypse" in present,
                          vulnerable_sp_code_exec="vulnerable_sp_code_exec" in present,
                          platform=_lab_platform(setting))
        self.hypervisor = HypervisorAttacker(self._host.hypervisor)
        self.physical = PhysicalAttacker(self._host)
        self.target: Victim | None = None  # the first victim: what the attack is judged on
        self._secret = b""
        self._honest: bytes | None = None
        self._launches: dict[int, tuple[bytes, Path, int]] = {}  # id(vm): secret, ELF, size
        self._nonces = 0
        self._nonce = b""

    def victim(self, program: str, *, mode: str | None = None, vcpus: int = 1,
               memory: str = "16M", honest: bytes | None = None, cflags: tuple[str, ...] = (),
               launch: bool = True, policy: int | None = None) -> Victim:
        """Build `victims/<program>.c` with this lab's secret compiled in as SECRET_0..3
        (four 64-bit words), load and launch it at the setting's mode (or `mode`). The first
        victim is the target the attack is judged on; `honest` is what it reports when nobody
        interferes, for attacks on its result. Later ones are the attacker's own VMs. The
        setting's guest-owner features go in too: build flags (`_VICTIM_MACROS`, kernel
        hardening options `_KERNEL_OPTIONS`) and SEV_FEATURES in an SNP victim's launch
        VMSAs (`_SNP_GUEST_FEATURES`). `launch=False` only loads it: the attack's VMM
        launches it (`owner_terms`). `policy` is the guest owner's legacy SEV policy (SEV
        and SEV-ES; ES is added for SEV-ES)."""
        secret = planted_secret(program, self.seed)
        words = [int.from_bytes(secret[i:i + 8], "little") for i in range(0, SECRET_BYTES, 8)]
        macros = tuple(_VICTIM_MACROS[f] for f in sorted(self.setting.features)
                       if f in _VICTIM_MACROS)
        options = sum(bit for name, bit in _KERNEL_OPTIONS.items() if self.setting.has(name))
        flags = (*(f"-DSECRET_{i}=0x{w:016x}ULL" for i, w in enumerate(words)), *macros,
                 *((f"-DSEV_KERNEL_OPTIONS={options}",) if options else ()), *cflags)
        elf = _build(program, flags)
        vm = self._host.create_vm(mode or self.setting.mode, memory, vcpus)
        vm.load(elf)
        if launch:
            features = SEV_FEATURES_SNP
            for feature in self.setting.features:
                features |= _SNP_GUEST_FEATURES.get(feature, 0)
            if vm.mode == "snp":
                policy = self._snp_policy()
            elif policy is not None and vm.mode == "sev-es":
                policy |= PolicyFlags.ES
            vm.launch(policy=policy, guest_features=features)
        victim = Victim(vm, _symbols(elf))
        self._launches[id(vm)] = (secret, elf, vm.memory_size)
        if self.target is None:
            self.target, self._secret, self._honest = victim, secret, honest
        return victim

    def owner_terms(self, victim: Victim) -> LaunchTerms:
        """The guest owner's terms for launching `victim`: the digest it expects is computed
        from the public image and the VM's shape (sevsim.attest.measure), its secret (SEV's
        launch secret) is the victim's. A plain VM has no owner to attest to."""
        secret, elf, size = self._launches[id(victim.vm)]
        mode = victim.vm.mode
        if mode == "none":
            return LaunchTerms()
        digest = guest_digest(mode, parse_elf(elf.read_bytes()), size,
                              len(victim.vm.hv.vcpus), victim.vm.kernel_id)
        if mode == "snp":
            id_key = ec.derive_private_key(int.from_bytes(
                hashlib.sha384(self.seed + b" ID key").digest(), "big") >> 8, ec.SECP384R1())
            bundle = make_id_block(digest, id_key, policy=self._snp_policy())
            return LaunchTerms(id_block=bundle.id_block_bytes, id_auth=bundle.id_auth_bytes,
                               policy=self._snp_policy())
        policy = DEFAULT_POLICY | (PolicyFlags.ES if mode == "sev-es" else 0)
        return LaunchTerms(owner=GuestOwner(secret, digest, int(policy), trust="sevsim"))

    def release_secret(self, report: bytes, certificates: bytes) -> bytes:
        """The target's key broker, the guest owner's relying party under SNP: it releases
        the target's secret to a report that verifies with sevsim.attest (signature, the
        VCEK's chain to sevsim's AMD root, the VCEK bound to the report's TCB) and passes its
        policy: the target's expected launch digest, and at least the TCB of the firmware
        with the published fixes. SnpVerificationError or AttestationError if not."""
        if self.target is None:
            raise ConfigError("the attack launched no victim")
        vm = self.target.vm
        _, elf, size = self._launches[id(vm)]
        expected = guest_digest("snp", parse_elf(elf.read_bytes()), size, len(vm.hv.vcpus),
                                vm.kernel_id)
        verified = verify_report_chain(report, CertBundle.from_cert_table(certificates),
                                       trust="sevsim").raise_for_failure()
        result = validate_report(verified, self._owner_policy(expected))
        if not result.ok:
            raise AttestationError("the key broker refuses the report: " + "; ".join(
                f"{c.name} {c.actual}, wants {c.expected}" for c in result.checks
                if not c.passed))
        return self._secret

    def _owner_policy(self, measurement: bytes) -> Policy:
        """The target's expected launch digest, and at least the TCB of the firmware with
        the published fixes."""
        fixed = DEFAULT_TCB[Generation(self._host.chip.product)]
        return Policy(measurements=(measurement,), tcb={"reported": TcbMinimum(
            fixed.bootloader, fixed.tee, fixed.snp, fixed.microcode)})

    def vtpm_nonce(self) -> bytes:
        """A fresh nonce for a vTPM quote (drawn from the lab's seed: runs repeat exactly);
        `release_secret_to_vtpm` accepts only the last one issued."""
        self._nonces += 1
        self._nonce = hashlib.sha256(self.seed + b" vTPM nonce %d" % self._nonces).digest()
        return self._nonce

    def golden_pcrs(self) -> dict[int, dict[int, bytes]]:
        """The PCR values of the approved boot: GOLDEN_CMDLINE measured into PCR 8."""
        measured = HashAlg.SHA256.hash(bytes(32) + HashAlg.SHA256.hash(GOLDEN_CMDLINE))
        return {HashAlg.SHA256: {VTPM_PCR: measured}}

    def release_secret_to_vtpm(self, ak_public: bytes, attest: bytes, signature: bytes,
                               report: bytes = b"", certificates: bytes = b"") -> bytes:
        """The target's relying party for a vTPM quote over the last nonce and the golden
        PCRs. Under SNP it trusts only the SNP-bound vTPM: the report (chain, the target's
        launch digest, TCB) must bind the AK that signed the quote (verify_vtpm_evidence).
        Below SNP the vTPM is the platform's (swtpm on the host, its AK vouched for by the
        provider, as a cloud's shielded-VM API does): the quote must verify with the AK the
        platform presents. QuoteError or SnpVerificationError if not."""
        if self.target is None or not self._nonce:
            raise ConfigError("the attack launched no victim or asked for no nonce")
        golden = self.golden_pcrs()
        if self.target.vm.mode != "snp":
            verify_quote(ak_public, attest, signature, self._nonce, golden)
            return self._secret
        vm = self.target.vm
        _, elf, size = self._launches[id(vm)]
        expected = guest_digest("snp", parse_elf(elf.read_bytes()), size, len(vm.hv.vcpus),
                                vm.kernel_id)
        verify_vtpm_evidence(VtpmEvidence(report, ak_public, attest, signature, golden),
                             self._nonce, CertBundle.from_cert_table(certificates),
                             trust="sevsim", policy=self._owner_policy(expected),
                             expected_pcrs=golden)
        return self._secret

    def _snp_policy(self) -> int:
        """The SNP guest policy the lab's guest owners ask for: the VMM's default, plus the
        bits the setting's features turn on ("page-move-disabled": PAGE_SWAP_DISABLE)."""
        policy = DEFAULT_SNP_POLICY
        if self.setting.has("page-move-disabled"):
            policy |= SnpPolicyFlags.PAGE_SWAP_DISABLE
        return int(policy)

    def judge(self, attempt: Attempt) -> bool:
        """Whether the attempt is the target's secret, or (for a target with an honest
        result) the result the target actually reported and not the honest one."""
        if self.target is None:
            raise ConfigError("the attack launched no victim")
        if self._honest is None:
            return attempt.data == self._secret
        reported = self.target.vm.console.encode()
        return (attempt.data != self._honest and attempt.data in reported
                and self._honest not in reported)


def planted_secret(program: str, seed: bytes = DEFAULT_SEED) -> bytes:
    """The secret a lab with `seed` compiles into the victim `program`: the ground truth an
    attack's evidence is judged against."""
    return hashlib.shake_256(seed + program.encode()).digest(SECRET_BYTES)


def _build(program: str, cflags: tuple[str, ...]) -> Path:
    """The victim's ELF, built once per program, flags and sources (its own, the victims'
    shared headers and the SDK: gcc is the slow part)."""
    source = VICTIMS / f"{program}.c"
    if not source.exists():
        raise ConfigError(f"no victim program {program!r} in {VICTIMS}")
    sdk = sdk_dir()
    sources = b"".join(path.read_bytes() for path in (
        source, *sorted(VICTIMS.glob("*.h")), sdk / "include" / "sevsim.h", sdk / "crt0.S",
        sdk / "libsev.c", sdk / "guest.ld"))
    tag = hashlib.sha256("\0".join((program, *cflags)).encode() + sources).hexdigest()[:16]
    out = _BUILDS / f"{program}-{tag}.elf"
    if not out.exists():
        partial = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        build_guest([source], partial, cflags=cflags)
        partial.replace(out)  # atomic: parallel matrix workers may build the same victim
    return out


def _symbols(elf: Path) -> dict[str, int]:
    """Global data and function symbols of the victim, by name (the binary is public)."""
    with elf.open("rb") as stream:
        table = ELFFile(stream).get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            return {}
        return {sym.name: sym["st_value"] for sym in table.iter_symbols()
                if sym.name and sym["st_info"]["type"] in ("STT_OBJECT", "STT_FUNC")}
