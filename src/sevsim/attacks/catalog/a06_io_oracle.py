"""A6: unprotected I/O, the guest's own bounce-buffer copy turned into a decryption oracle."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Fault

SECRET_BYTES = 32


class IoOracle(Attack):
    """The victim writes its private block buffer out through a shared bounce page. Page-fault
    tracing on the buffer catches the copy as it starts; at that fault the hypervisor points
    the buffer's GPA at the secret's frame, so the guest's own copy decrypts the secret into
    the bounce page, which the host reads in the clear."""

    id = "A6"
    name = "unprotected I/O decryption oracle"
    actor = "malicious hypervisor"
    source = ("Li, Zhang, Lin, Solihin: Exploiting Unprotected I/O Operations in AMD's "
              "Secure Encrypted Virtualization, USENIX Security 2019")

    def attempt(self, lab: Lab) -> Attempt:
        """Trace the block buffer, remap it at the copy's first read, read the bounce page."""
        victim = lab.victim("bounce_io")
        vm, hv = victim.vm, lab.hypervisor
        block, bounce = victim.symbol("block"), victim.symbol("bounce")
        target = hv.gpa_to_spa(vm, victim.symbol("secret"))
        lab.trace(f"the driver copies GPA 0x{block:x} to the shared bounce page GPA "
                  f"0x{bounce:x}; the secret's page is at SPA 0x{target:x}")
        refused: list[Fault] = []

        def at_fault(fault: Fault) -> None:
            if fault.rmp:  # the remapped page was refused: leave it where it was
                refused.append(fault)
                lab.trace(f"#NPF at GPA 0x{fault.gpa:x} with the RMP bit: the guest may not "
                          f"use SPA 0x{target:x} there; mapped back")
            elif not fault.write and not refused:
                hv.remap(vm, block, target)
                lab.trace(f"#NPF: the driver reads GPA 0x{fault.gpa:x} (a write request); "
                          f"NPT now maps it to SPA 0x{target:x}")

        vm.host_input = b"W"
        hv.step(vm)  # boot: the guest kernel validates its memory before the program runs
        with hv.tracing_faults(vm, [block], at_fault):
            hv.run(vm)
        data = hv.read_gpa(vm, bounce, SECRET_BYTES)
        lab.trace(f"bounce page after the write: {data.hex()}")
        if refused:
            entry = hv.rmp_entry(target)
            why = (f"#NPF with the RMP bit at GPA 0x{refused[0].gpa:x}: the RMP entry of SPA "
                   f"0x{target:x} gives it to ASID {entry.asid} at GPA 0x{entry.gpa:x} only; "
                   f"the bounce page got the block's own data {data[:16]!r}")
        else:
            why = f"the bounce page holds {data[:16]!r}"
        return Attempt(data, why)
