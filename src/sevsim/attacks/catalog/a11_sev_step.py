"""A11: SEV-Step, single-stepping a guest to count instructions between page faults."""

from __future__ import annotations

from itertools import pairwise

from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import Fault

SECRET_BITS = 256
MAX_STEPS = 200_000  # the victim retires a few thousand instructions


class SevStep(Attack):
    """The victim's secret-dependent branch stays on one code page and touches the same data
    pages either way, so its page-fault trace is the same for every bit. Single-stepping the
    vCPU (APIC timer one instruction ahead) while tracing the two data pages counts the
    instructions between the `start` and `result` faults: the multiply path is longer."""

    id = "A11"
    name = "SEV-Step single-stepping"
    actor = "malicious hypervisor"
    source = ("Wilke, Wichelmann, Rabich, Eisenbarth: SEV-Step: A Single-Stepping Framework "
              "for AMD-SEV, TCHES 2024")

    def attempt(self, lab: Lab) -> Attempt:
        """Step through the key's loop, timestamp each fault in retired instructions, decode
        the two path lengths into bits; let the rest of the run go unstepped."""
        victim = lab.victim("step_channel")
        vm, hv = victim.vm, lab.hypervisor
        start, result = victim.symbol("start"), victim.symbol("result")
        retired = [hv.step(vm)]  # boot: the kernel validates its memory before tracing
        stamps: list[tuple[int, int]] = []  # (page, instruction count at the fault)
        bits_seen = [0]  # `result` faults so far: one per bit

        def at_fault(fault: Fault) -> None:
            stamps.append((fault.gpa, retired[0]))
            bits_seen[0] += fault.gpa == result

        with hv.tracing_faults(vm, [start, result], at_fault) as trace:
            # step until every bit of the (public) key length went by, then let it finish
            while retired[0] < MAX_STEPS and bits_seen[0] < SECRET_BITS:
                ran = hv.step(vm)
                if not ran:
                    break
                retired[0] += ran
            hv.run(vm)
        lab.trace(f"stepped {retired[0]} instructions one by one; {len(trace.faults)} #NPFs "
                  "alternate start/result for every bit, whatever its value")
        gaps = [b[1] - a[1] for a, b in pairwise(stamps)
                if a[0] == start and b[0] == result]
        lengths = sorted(set(gaps))
        lab.trace(f"instructions from start to result: {lengths} over {len(gaps)} bits")
        if len(lengths) != 2:  # one path length only: nothing secret-dependent to see
            return Attempt(b"", f"path lengths {lengths}: no two-way branch seen")
        value = sum((gap == lengths[1]) << i for i, gap in enumerate(gaps))
        return Attempt(value.to_bytes(SECRET_BITS // 8, "little"),
                       f"{len(gaps)} bits from path lengths {lengths}")
