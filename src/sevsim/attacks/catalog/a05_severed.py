"""A5: SEVered, the hypervisor remaps a service's response page onto a secret page."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Vcpu, VmExit

REQUEST = b"GET /   "  # the service reads 8-byte requests
SECRET_BYTES = 32


class Severed(Attack):
    """Let the service answer once, point the NPT entry of its response page at the SPA of
    the secret's page, ask again: the guest decrypts the secret's frame with its own key (the
    tweak is that frame's SPA, so the plaintext is right) and sends it out as the answer."""

    id = "A5"
    name = "SEVered page remapping"
    actor = "malicious hypervisor (with a remote client of the service)"
    source = ("Morbitzer, Huber, Horsch, Wessel: SEVered: Subverting AMD's Virtual Machine "
              "Encryption, EuroSec 2018")

    def attempt(self, lab: Lab) -> Attempt:
        """Serve one request honestly, remap at the next exit, read the second answer."""
        victim = lab.victim("response_service")
        vm, hv = victim.vm, lab.hypervisor
        response, secret = victim.symbol("response"), victim.symbol("secret")
        target = hv.gpa_to_spa(vm, secret)
        lab.trace(f"the service answers from GPA 0x{response:x}; the secret's page GPA "
                  f"0x{secret:x} sits at SPA 0x{target:x}")
        vm.host_input = REQUEST * 2
        remapped: list[bool] = []

        def after_first_answer(vcpu: Vcpu, exit: VmExit) -> None:
            del vcpu, exit
            if vm.outputs and not remapped:
                hv.remap(vm, response, target)
                remapped.append(True)
                lab.trace(f"first answer seen ({vm.outputs[0][:15]!r}...): NPT now maps GPA "
                          f"0x{response:x} to SPA 0x{target:x}")

        hv.on_exit(vm, after_first_answer)
        try:
            hv.run(vm)  # under SEV-SNP the guest's copy faults here: the RMP check
        finally:
            hv.on_exit(vm, None)
        if len(vm.outputs) < 2:
            return Attempt(b"", f"the service gave {len(vm.outputs)} answer(s)")
        answer = vm.outputs[1][:SECRET_BYTES]
        lab.trace(f"second answer starts {answer.hex()}")
        return Attempt(answer, "the second answer is not the secret's page: "
                               f"{vm.outputs[1][:16]!r}")
