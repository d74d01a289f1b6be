"""A whole simulated EPYC host: DRAM and engine, Secure Processor, hypervisor."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sevsim.abi.cpuid import SevFeatures
from sevsim.abi.ovmf import FOUR_GIB, KernelHashes, OvmfImage, SvsmLaunch, VmmType
from sevsim.abi.vmsa import SEV_FEATURES_SNP
from sevsim.errors import ConfigError, ResourceExhausted, VmStateError
from sevsim.firmware.sev import SevFirmware
from sevsim.host.hypervisor import Hypervisor
from sevsim.host.ovmf import OvmfGuest, launch_ovmf, launch_svsm
from sevsim.host.secure_boot import SecureBootConfig, load_config
from sevsim.host.vmm import DEFAULT_SNP_POLICY, RunResult, VirtualMachine
from sevsim.hw.chips import (
    DEFAULT_CHIP,
    ChipPreset,
    GuestMode,
    PlatformOptions,
    chip_preset,
)
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.hw.quantum import DEFAULT_QUANTUM, Quantum
from sevsim.hw.trng import Trng

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_SIZE = 1 << 52  # x86-64's physical address space at its widest (MAXPHYADDR 52)


def parse_size(size: int | str) -> int:
    """'64M', '1G', '4096K' or a byte count."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", size, re.IGNORECASE)
        if not match:
            raise ConfigError(f"cannot read size {size!r}; use e.g. 64M or 1G")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 0 <= value <= MAX_SIZE:
        raise ConfigError(f"size {size!r} is outside 0..2^52 bytes (x86-64's widest "
                          "physical address space)")
    return value


def _split_asids(chip: ChipPreset, min_sev_asid: int) -> ChipPreset:
    """The chip with its ASID space split at `min_sev_asid`; a chip without SEV-ES has
    nothing to split off."""
    if SevFeatures.SEV_ES not in chip.features and min_sev_asid != 1:
        raise ConfigError(f"chip {chip.name} has no SEV-ES: its min SEV ASID is 1, "
                          f"not {min_sev_asid}")
    return chip.with_asids(chip.max_asid, min_sev_asid)


class Host:
    """`Host(chip="milan")`: the machine a cloud provider runs, untrusted software included."""

    def __init__(self, chip: str | ChipPreset = DEFAULT_CHIP, memory: int | str = "512M", *,
                 seed: bytes | None = None, vulnerable_cve_2019_9836: bool = False,
                 quantum: Quantum = DEFAULT_QUANTUM, min_sev_asid: int | None = None,
                 vulnerable_cachewarp: bool = False, vulnerable_rmpocalypse: bool = False,
                 platform: PlatformOptions | str | None = None,
                 vulnerable_sp_code_exec: bool = False) -> None:
        """`seed` makes the platform reproducible: the chip's secret, hence its CEK, PEK, PDH,
        VCEK and IDs, and every key and nonce the Secure Processor and the memory controller
        draw (VM keys, VMPCKs, tweaks), so the same VMs give the same dumps and reports.
        `vulnerable_cve_2019_9836` runs firmware that does not check the owner's ECDH point
        (0.17 build 11 and earlier); `vulnerable_sp_code_exec` runs firmware from before the
        fixes of Buhren et al. (CCS 2019), whose command parsing lets the host run code on the
        Secure Processor (an older firmware: under SNP, a lower TCB).
        `quantum` is what each vCPU runs before the next one when several share the host
        (a lone single-vCPU VM runs until it stops); quanta always end between two
        instructions, so they change the interleaving of vCPUs, never a program's result.
        `min_sev_asid` is the BIOS's "SEV-ES ASID Space Limit": SEV-ES and SNP guests get
        ASIDs 1..min_sev_asid-1, plain SEV guests min_sev_asid..max (CPUID 8000_001F EDX
        reports it); max + 1 gives every ASID to SEV-ES and SNP (509 SNP VMs on Milan).
        `vulnerable_cachewarp` runs Zen 3 microcode from before the CacheWarp fix
        (AMD-SB-3005): a host INVD drops dirty cache lines instead of writing them back (Zen 4
        and later never do). `vulnerable_rmpocalypse` runs firmware from before the
        RMPocalypse fix (AMD-SB-3020): SNP_INIT leaves dirty cache lines over the RMP.
        `platform` is how the machine is set up (`PlatformOptions`, or a string such as
        "smt,tsme,ecc"; default: the chip preset's, as real parts of its kind report): SMT,
        TSME, ECC memory, RAPL disabled, the BadRAM fix's DRAM alias check in the boot
        firmware (SNP_INIT then refuses modules that alias memory), and ciphertext hiding
        (Genoa and later: KVM asks SNP_INIT_EX to hide every SNP guest's ciphertext from host
        reads, kvm-amd's ciphertext_hiding_asids set to all the SEV-ES/SNP ASIDs). SNP reports
        state them in PLATFORM_INFO; an unknown option or one the chip lacks is a
        ConfigError."""
        self.chip = chip_preset(chip)
        if min_sev_asid is not None:
            self.chip = _split_asids(self.chip, min_sev_asid)
        options = self.chip.platform_options(platform)
        if options.ciphertext_hiding and self.chip.min_sev_asid == 1:
            raise ConfigError("ciphertext hiding covers SNP ASIDs, and min_sev_asid 1 "
                              "leaves none")
        size = parse_size(memory)
        entropy = Trng(seed, b"memory controller " + self.chip.name.encode())
        try:
            self._memory = MemoryController(
                size, EncryptionEngine(self.chip.tweak, entropy=entropy),
                Trng(seed, b"soc nonces " + self.chip.name.encode()))
        except MemoryError:
            raise ResourceExhausted(f"cannot allocate {size} bytes of host memory in this "
                                    "process; give the host less") from None
        # Zen 4 and later write back on INVD whatever the microcode (CacheWarp's paper)
        self._memory.cache.invd_writes_back = not vulnerable_cachewarp or self.chip.zen >= 4
        if SevFeatures.SEV_SNP in self.chip.features:
            self._memory.reserve_rmp_table()  # the BIOS sets RMP_BASE/RMP_END
        self.firmware = SevFirmware(self.chip, self._memory, seed=seed,
                                    vulnerable_cve_2019_9836=vulnerable_cve_2019_9836,
                                    vulnerable_rmpocalypse=vulnerable_rmpocalypse,
                                    platform=options,
                                    vulnerable_sp_code_exec=vulnerable_sp_code_exec)
        self.firmware.init()  # the kernel's ccp driver initialises the platform at load
        self.hypervisor = Hypervisor(self.chip, self._memory, self.firmware)
        self.hypervisor.quantum = quantum
        if options.ciphertext_hiding:
            self.hypervisor.ciphertext_hiding_asids = self.chip.min_sev_asid - 1

    def create_vm(self, mode: str | GuestMode = "sev", memory: int | str = "64M",
                  vcpus: int = 1, *,
                  secure_boot: SecureBootConfig | str | Path | None = None) -> VirtualMachine:
        """A new VM (`mode` none, sev, sev-es or snp; `memory` in bytes or as "64M"), ready to
        load and launch. `secure_boot` (a SecureBootConfig or its directory) turns secure
        boot on: the guest's firmware runs only a program db trusts and dbx does not revoke."""
        config = None if secure_boot is None else load_config(secure_boot)
        try:
            guest_mode = GuestMode(mode)
        except ValueError:
            raise ConfigError(f"unknown mode {mode!r}; choose one of "
                              f"{', '.join(m.value for m in GuestMode)}") from None
        return VirtualMachine(self.hypervisor,
                              self.hypervisor.create_vm(guest_mode, parse_size(memory), vcpus),
                              config)

    def launch_ovmf(self, ovmf: bytes | OvmfImage, vcpus: int = 1, memory: int | str = "64M", *,
                    vcpu_type: str | None = None, vcpu_sig: int | None = None,
                    vmm_type: VmmType | str = VmmType.QEMU,
                    kernel_hashes: KernelHashes | None = None,
                    guest_features: int = SEV_FEATURES_SNP, policy: int = DEFAULT_SNP_POLICY,
                    host_data: bytes = bytes(32), id_block: bytes | None = None,
                    id_auth: bytes | None = None,
                    certificates: Sequence[tuple[uuid.UUID, bytes]] = ()) -> OvmfGuest:
        """An SNP VM with `ovmf` launched as measured content (not executed), as a VMM
        would launch it; the keyword arguments are `sevsim.host.ovmf.launch_ovmf`'s. A refused
        launch leaves nothing behind."""
        vm = VirtualMachine(self.hypervisor, self.hypervisor.create_vm(
            GuestMode.SNP, parse_size(memory), vcpus, gpa_limit=FOUR_GIB))
        try:
            return launch_ovmf(vm, ovmf, vcpu_type=vcpu_type, vcpu_sig=vcpu_sig,
                               vmm_type=vmm_type, kernel_hashes=kernel_hashes,
                               guest_features=guest_features, policy=policy,
                               host_data=host_data, id_block=id_block, id_auth=id_auth,
                               certificates=certificates)
        except BaseException:
            vm.destroy()
            raise

    def launch_svsm(self, svsm: bytes, ovmf: bytes | OvmfImage, vars_size: int,
                    vcpus: int = 1, memory: int | str = "64M", *, vcpu_type: str | None = None,
                    vcpu_sig: int | None = None, policy: int = DEFAULT_SNP_POLICY,
                    host_data: bytes = bytes(32), id_block: bytes | None = None,
                    id_auth: bytes | None = None) -> OvmfGuest:
        """An SNP VM with an SVSM and the OVMF it runs launched as measured content, as
        QEMU launches them (`vars_size`: OVMF's variable store between them); the keyword
        arguments are `sevsim.host.ovmf.launch_svsm`'s. A refused launch leaves nothing
        behind."""
        launch = SvsmLaunch.parse(svsm, ovmf, vars_size)
        vm = VirtualMachine(self.hypervisor, self.hypervisor.create_vm(
            GuestMode.SNP, parse_size(memory), vcpus, gpa_limit=FOUR_GIB))
        try:
            return launch_svsm(vm, launch, vcpu_type=vcpu_type, vcpu_sig=vcpu_sig,
                               policy=policy, host_data=host_data, id_block=id_block,
                               id_auth=id_auth)
        except BaseException:
            vm.destroy()
            raise

    def run(self, vms: list[VirtualMachine], timeout: float = 60.0) -> dict[int, RunResult]:
        """Run several VMs at once, sharing the host's CPU in time quanta.

        Returns each VM's result by `vm.hv.vm_id`; a VM that faulted or timed out has its error
        as `error` in its result and the others are unaffected.
        """
        for vm in vms:
            vm.check_runnable()
        errors = self.hypervisor.run_all([vm.hv for vm in vms], timeout)
        return {vm.hv.vm_id: vm.result(errors[vm.hv.vm_id]) for vm in vms}

    def dram_dump(self) -> np.ndarray:
        """What a physical attacker reading the DIMMs gets: the cells themselves (ciphertext
        hiding is the CPU's, so a cold-boot dump sees ciphertext)."""
        return self._memory.dram_dump()

    def spd_alias(self) -> int:
        """BadRAM: a physical attacker rewrites the DIMMs' SPD to claim one more address bit,
        and the machine boots with it: from then on SPA s + the returned offset reaches the
        cells of SPA s. The SPD is read at boot, so this comes before any VM (VmStateError)."""
        if self.hypervisor.vms or self.firmware.snp_initialized:
            raise VmStateError("the SPD is read at boot: alias the modules before any VM runs")
        return self._memory.claim_extra_address_bit()
