"""A8: CrossLine, the attacker's VM runs with the victim's ASID and so with its key."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab, Victim
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.errors import MemoryAccessError

REQUEST = b"GET /   "  # the victim service reads 8-byte requests
SECRET_BYTES = 32
PAGE = 4096
MAX_STEPS = 100_000
# the register state of a plain-SEV vCPU in its VMCB save area, which the hypervisor copies
SAVE_AREA = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags")


class CrossLine(Attack):
    """CrossLine V2: the victim's instructions as a decryption oracle, run in the attacker's
    VM. The victim, a service (A5's), answers one request and is paused; the attacker's own
    VM gets the victim's ASID in its VMCB, the victim's vCPU state (the save area under SEV,
    the VMSA pointer under SEV-ES) and an NPT onto the victim's frames in which the response
    page is the secret's. Running the victim's code there sends the secret out of the
    attacker's VM; the victim itself never runs with the bad mapping, so it never crashes."""

    id = "A8"
    name = "CrossLine (ASID swap)"
    actor = "malicious hypervisor with its own VM"
    source = ("Li, Zhang, Lin: CrossLine: Breaking 'Security-by-Crash' based Memory Isolation "
              "in AMD SEV, ACM CCS 2021")

    def not_applicable(self, setting: Setting) -> str | None:
        """No SEV: no key or ASID-tagged memory to impersonate."""
        if setting.mode == "none":
            return "no memory encryption: there is no key an ASID could select"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Pause the victim after an answer, adopt its vCPU in the attacker's VM, run it."""
        victim = lab.victim("response_service")
        vm, hv = victim.vm, lab.hypervisor
        vm.host_input = REQUEST
        steps = 0
        while not vm.outputs and steps < MAX_STEPS and hv.step(vm):
            steps += 1
        if not vm.outputs:
            return Attempt(b"", f"the victim gave no answer in {steps} instructions")
        lab.trace(f"the victim (ASID {vm.asid}) answered {vm.outputs[0][:15]!r}... after "
                  f"{steps} instructions; paused there")
        own = lab.victim("crossline_attacker")
        mine = own.vm
        steps = 0
        while not mine.outputs and steps < MAX_STEPS and hv.step(mine):
            steps += 1  # it boots as an ordinary guest of its own and reports ready
        ready = len(mine.outputs)
        mirror(hv, victim, own)
        target = hv.gpa_to_spa(vm, victim.symbol("secret"))
        hv.remap(mine, victim.symbol("response"), target)
        lab.trace(f"attacker VM (ASID {mine.asid}): NPT onto the victim's frames, response "
                  f"page GPA 0x{victim.symbol('response'):x} onto the secret's SPA "
                  f"0x{target:x}")
        hv.set_asid(mine, vm.asid)
        try:
            pointer: int | None = hv.vmsa_spa(vm)
        except MemoryAccessError:  # plain SEV: no VMSA, the registers are in the save area
            pointer = None
        if pointer is None:
            theirs, ours = hv.vmcb(vm), hv.vmcb(mine)
            for name in SAVE_AREA:
                ours.write(name, theirs.read(name))
            lab.trace(f"VMCB.ASID := {vm.asid}; the victim's save area copied (RIP "
                      f"0x{theirs.read('rip'):x})")
        else:
            hv.set_vmsa_pointer(mine, pointer)
            lab.trace(f"VMCB.ASID := {vm.asid}; VMSA pointer := the victim's VMSA at SPA "
                      f"0x{pointer:x}")
        mine.host_input = REQUEST
        hv.run(mine)
        answers = mine.outputs[ready:]
        got = answers[0][:SECRET_BYTES] if answers else b""
        lab.trace(f"the attacker's VM sent out {got.hex()}")
        return Attempt(got, f"the attacker's VM answered {answers[:1]!r}")


def mirror(hv: HypervisorAttacker, victim: Victim, own: Victim) -> None:
    """Map the attacker VM's guest pages onto the victim's frames, a run of frames at a time."""
    vm, mine = victim.vm, own.vm
    pages = min(vm.memory_size, mine.memory_size) // PAGE
    first = 0
    for gpn in range(1, pages + 1):
        if gpn == pages or hv.gpa_to_spa(vm, gpn * PAGE) != hv.gpa_to_spa(vm, first * PAGE) + (
                gpn - first) * PAGE:
            hv.remap(mine, first * PAGE, hv.gpa_to_spa(vm, first * PAGE), gpn - first)
            first = gpn
