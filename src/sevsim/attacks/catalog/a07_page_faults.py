"""A7: the page-fault controlled channel, read through the hypervisor's own NPT."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab

SECRET_BITS = 256


class PageFaultChannel(Attack):
    """Unmap the victim's bookkeeping page and its two secret-dependent pages; every change
    of page is an #NPF whose GPA the hypervisor sees. After each `tick` fault the next fault
    is on `ones` or `zeros`: one bit of the secret each."""

    id = "A7"
    name = "page-fault controlled channel"
    actor = "malicious hypervisor"
    source = ("Xu, Cui, Peinado: Controlled-Channel Attacks, IEEE S&P 2015; on SEV: Hetzelt "
              "& Buhren 2017, Werner et al. (SEVerESt) AsiaCCS 2019")

    def attempt(self, lab: Lab) -> Attempt:
        """Trace the three pages over the victim's run and decode the fault sequence."""
        victim = lab.victim("page_channel")
        vm, hv = victim.vm, lab.hypervisor
        tick, zeros, ones = (victim.symbol(name) for name in ("tick", "zeros", "ones"))
        lab.trace(f"tracing tick 0x{tick:x}, zeros 0x{zeros:x}, ones 0x{ones:x}")
        hv.step(vm)  # boot: the guest kernel validates its memory before the program runs
        with hv.tracing_faults(vm, [tick, zeros, ones]) as trace:
            hv.run(vm)
        pages = trace.pages
        lab.trace(f"{len(pages)} #NPFs; first: " + " ".join(
            {tick: "T", zeros: "0", ones: "1"}[page] for page in pages[:16]))
        bits = [pages[i + 1] == ones for i, page in enumerate(pages[:-1])
                if page == tick and pages[i + 1] in (zeros, ones)]
        value = sum(bit << i for i, bit in enumerate(bits))
        data = value.to_bytes(SECRET_BITS // 8, "little")
        return Attempt(data, f"{len(bits)} bits from {len(pages)} faults")
