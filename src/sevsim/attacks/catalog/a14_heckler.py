"""A14: Heckler: an injected int 0x80 overwrites the victim's RAX with a system call result."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Fault

HONEST = b"access denied"
CHANGED = b"access granted"
INT80 = 0x80
PAGE = 4096


class Heckler(Attack):
    """Trace the victim's code pages of `main` and `check_password`; when execution comes
    back to `main`'s page from the check (RAX holds its verdict, 0), inject int 0x80: the
    kernel's 32-bit system call path runs syscall EAX=0 and writes its -EINTR into RAX."""

    id = "A14"
    name = "Heckler (int 0x80 injection)"
    actor = "malicious hypervisor"
    source = ("B. Schlüter et al., 'Heckler: Breaking Confidential VMs with Malicious "
              "Interrupts', USENIX Security 2024; CVE-2024-25744, AMD-SB-3008")
    fixes = (Setting("snp", features=frozenset({"no-ia32-emulation"})),
             Setting("snp", features=frozenset({"restricted-injection"})),
             Setting("snp", features=frozenset({"alternate-injection"})))

    def not_applicable(self, setting: Setting) -> str | None:
        """Without encryption the hypervisor writes RAX in the VMCB directly (A2)."""
        if setting.mode == "none":
            return "no memory encryption: the hypervisor sets the victim's RAX directly (A2)"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Single out the return from `check_password` with page faults, inject int 0x80."""
        victim = lab.victim("auth_check", honest=HONEST)
        hv, vm = lab.hypervisor, victim.vm
        check = victim.symbol("check_password") & ~(PAGE - 1)
        caller = victim.symbol("main") & ~(PAGE - 1)
        lab.trace(f"check_password's code is on GPA page 0x{check:x}, main's on 0x{caller:x}")
        hv.step(vm)  # the guest kernel boots (and maps the program) on the first VMRUN
        pages: list[int] = []

        def at_fault(fault: Fault) -> None:
            if fault.gpa == caller and pages[-1:] == [check] and caller not in pages[1:]:
                lab.trace(f"fetch fault on 0x{caller:x} after 0x{check:x}: the check "
                          f"returned; injecting vector 0x{INT80:x}")
                hv.inject_event(vm, INT80)
            pages.append(fault.gpa)

        with hv.tracing_faults(vm, [check, caller], at_fault):
            hv.run(vm)
        console = vm.console.strip()
        lab.trace(f"the victim answered {console!r}")
        answer = CHANGED if CHANGED.decode() in console else HONEST
        return Attempt(answer, f"the victim still answered {console!r}")
