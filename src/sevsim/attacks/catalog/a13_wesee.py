"""A13: WeSee: an injected #VC makes the guest's handler hand RAX to the hypervisor."""

from __future__ import annotations

from sevsim.abi.svm import ExitCode
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Fault, Vcpu, VmExit

VC = 29
PAGE = 4096
WORDS = 4


class WeSee(Attack):
    """Trace the victim's pages of `main` and `checkpoint`; each time execution returns to
    `main` (RAX holds a word of the key), inject #VC with exit code VMMCALL: the handler
    copies RAX into the GHCB for the "hypercall" and steps over three bytes."""

    id = "A13"
    name = "WeSee (#VC injection)"
    actor = "malicious hypervisor"
    source = ("B. Schlüter et al., 'WeSee: Using Malicious #VC Interrupts to Break AMD "
              "SEV-SNP', IEEE S&P 2024; CVE-2024-25742")
    fixes = (Setting("snp", features=frozenset({"vc-insn-check"})),
             Setting("snp", features=frozenset({"restricted-injection"})),
             Setting("snp", features=frozenset({"alternate-injection"})))

    def not_applicable(self, setting: Setting) -> str | None:
        """Without SEV-ES there is no #VC handler, and the registers are in the VMCB (A2)."""
        if setting.mode in ("none", "sev"):
            return "no SEV-ES: no #VC handler to abuse, the hypervisor reads registers (A2)"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Inject #VC(VMMCALL) at each return to `main`; read RAX from the GHCB's hypercall."""
        victim = lab.victim("secret_in_rax")
        hv, vm = lab.hypervisor, victim.vm
        callee = victim.symbol("checkpoint") & ~(PAGE - 1)
        caller = victim.symbol("main") & ~(PAGE - 1)
        lab.trace(f"checkpoint's code is on GPA page 0x{callee:x}, main's on 0x{caller:x}")
        hv.step(vm)  # the guest kernel boots (and maps the program) on the first VMRUN
        pages: list[int] = []
        injected: list[int] = []
        leaked: list[bytes] = []

        def at_fault(fault: Fault) -> None:
            if fault.gpa == caller and pages[-1:] == [callee] and len(injected) < WORDS:
                injected.append(fault.gpa)
                lab.trace(f"fetch fault on 0x{caller:x} after 0x{callee:x}: injecting #VC "
                          "with exit code VMMCALL")
                hv.inject_event(vm, VC, ExitCode.VMMCALL)
            pages.append(fault.gpa)

        def at_exit(vcpu: Vcpu, exit: VmExit) -> None:
            ghcb = hv.ghcb(vm, vcpu.index) if exit.code is ExitCode.VMGEXIT else None
            if ghcb is not None and ghcb.save.get("sw_exit_code") == ExitCode.VMMCALL \
                    and len(leaked) < len(injected):
                rax = ghcb.save.get("rax", 0)
                lab.trace(f"#VC injected: the guest asks for 'hypercall' RAX=0x{rax:016x}")
                leaked.append(rax.to_bytes(8, "little"))

        hv.on_exit(vm, at_exit)
        try:
            with hv.tracing_faults(vm, [callee, caller], at_fault):
                hv.run(vm)
        finally:
            hv.on_exit(vm, None)
        lab.trace(f"injected {len(injected)} #VC, {len(leaked)} reached the GHCB; the victim "
                  f"printed {vm.console.strip()!r}")
        return Attempt(b"".join(leaked), f"{len(leaked)} of {len(injected)} injected #VC "
                                         "reached the GHCB")
