"""A2: the hypervisor reads (and tampers with) guest registers in the VMCB save area."""

from __future__ import annotations

from sevsim.abi.svm import ExitCode, ioio_decode
from sevsim.abi.vmsa import OFFSETS
from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab, Victim
from sevsim.attacks.toolkit import HypervisorAttacker, Vcpu, VmExit
from sevsim.errors import VmStateError

POST_PORT = 0x80
_SECRET_REGISTERS = ("r12", "r13", "r14", "r15")


class VmcbRegisters(Attack):
    """At the victim's OUT to port 0x80 (its registers hold the secret then), read R12-R15
    from the save area; where the save area is the encrypted VMSA, tamper with the VMSA
    instead and let VMRUN judge it."""

    id = "A2"
    name = "VMCB register read/tamper"
    actor = "malicious hypervisor"
    source = ("F. Hetzelt, R. Buhren, 'Security Analysis of Encrypted Virtual Machines', "
              "ACM VEE 2017")

    def attempt(self, lab: Lab) -> Attempt:
        """Watch the victim's exits; at the POST-port write, read the registers."""
        victim = lab.victim("secret_in_registers")
        hv, vm = lab.hypervisor, victim.vm
        words: list[bytes] = []

        def at_exit(vcpu: Vcpu, exit: VmExit) -> None:
            if words or _post_port(hv, victim, exit) is None:
                return
            lab.trace(f"#VMEXIT {exit.code.name}: the victim writes to port 0x{POST_PORT:x}")
            vmcb = hv.vmcb(vm, vcpu.index)
            try:
                values = [vmcb.read(name) for name in _SECRET_REGISTERS]
            except VmStateError as err:
                lab.trace(f"the save area is out of reach ({err}); flipping a bit of R12 in "
                          "the VMSA's ciphertext instead")
                words.append(b"")
                _tamper_vmsa(hv, victim, vcpu.index)
                return
            lab.trace("VMCB save area: " + ", ".join(
                f"{name}=0x{value:016x}" for name, value in zip(_SECRET_REGISTERS, values,
                                                                  strict=True)))
            words.extend(value.to_bytes(8, "little") for value in values)

        hv.on_exit(vm, at_exit)
        try:
            hv.run(vm)
        finally:
            hv.on_exit(vm, None)
        lab.trace(f"the victim printed {vm.console.strip()!r}")
        return Attempt(b"".join(words), "no register reached the hypervisor")


def _post_port(hv: HypervisorAttacker, victim: Victim, exit: VmExit) -> int | None:
    """The port of an OUT to the POST port this exit is about (an IOIO intercept, or under
    SEV-ES the IOIO request in the GHCB of a VMGEXIT), else None."""
    if exit.code is ExitCode.IOIO:
        info = exit.info1
    elif exit.code is ExitCode.VMGEXIT:
        ghcb = hv.ghcb(victim.vm)
        if ghcb is None or ghcb.save.get("sw_exit_code") != ExitCode.IOIO:
            return None
        info = ghcb.save.get("sw_exit_info_1", 0)
    else:
        return None
    port, _, is_in = ioio_decode(info)
    return port if port == POST_PORT and not is_in else None


def _tamper_vmsa(hv: HypervisorAttacker, victim: Victim, vcpu: int) -> None:
    """Flip one ciphertext bit of the VMSA's R12: the register would decrypt to garbage,
    so a hardware check must refuse the page (VMRUN's integrity check, or the RMP)."""
    spa = hv.vmsa_spa(victim.vm, vcpu) + OFFSETS["r12"][0]
    block = bytearray(hv.read_spa(spa, 8))
    block[0] ^= 1
    hv.write_spa(spa, bytes(block))
