"""A19: RMPocalypse: stale cache lines written back over the RMP after SNP_INIT."""

from __future__ import annotations

from sevsim.abi.rmp import RMP_ASSIGNED, RMP_ENTRY_SIZE, rmp_entry_offset
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab

PAGE = 4096
HONEST = b"access denied"
CHANGED = b"access granted"


class RmPocalypse(Attack):
    """Before SNP_INIT, dirty the cache lines that will hold the RMP entries of the RMP's own
    frames; vulnerable firmware writes the table beneath them without flushing, so the host's
    WBINVD lands "hypervisor page" over them, unchecked. The table is then the host's to
    write: it un-assigns the victim's page for a moment and replays the page's older
    ciphertext, which SNP exists to refuse."""

    id = "A19"
    name = "RMPocalypse (RMP initialisation race)"
    actor = "malicious hypervisor"
    source = ("B. Schlüter, S. Shinde, 'RMPocalypse: How a Catch-22 Breaks AMD SEV-SNP', "
              "ACM CCS 2025; CVE-2025-0033, AMD-SB-3020")
    fixes = (Setting("snp", features=frozenset({"fixed-firmware"})),)
    flaws = frozenset({"vulnerable_rmpocalypse"})

    def not_applicable(self, setting: Setting) -> str | None:
        """Only SEV-SNP has an RMP."""
        if setting.mode != "snp":
            return f"{setting.mode} has no RMP to corrupt"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Race SNP_INIT with dirty lines, then replay into the victim through the table."""
        hv = lab.hypervisor
        base, end = hv.rmp_table()
        own = base + rmp_entry_offset(base // PAGE), base + rmp_entry_offset(end // PAGE)
        lab.trace(f"the BIOS put the RMP at SPA 0x{base:x}-0x{end:x}; the entries of its own "
                  f"frames are at 0x{own[0]:x}-0x{own[1]:x}")
        with hv.holding_cache():
            hv.wbinvd()
            hv.write_spa(own[0], bytes(own[1] - own[0]))  # all zero: "the hypervisor's page"
            lab.trace(f"before SNP_INIT: wrote zero entries there, {len(range(*own, 64))} "
                      "dirty cache lines")
            hv.firmware.snp_init()
            lab.trace(f"SNP_INIT; then WBINVD wrote back {hv.wbinvd()} dirty line(s)")
        entry = hv.rmp_entry(base)
        lab.trace(f"the RMP entry of the RMP's first frame: assigned={entry.assigned}, "
                  f"immutable={entry.immutable}")

        victim = lab.victim("lock_then_check", honest=HONEST)
        vm = victim.vm
        gpa = victim.symbol("locked")
        spa = hv.gpa_to_spa(vm, gpa)
        hv.step(vm)  # the guest kernel boots and validates its memory
        launched = hv.read_spa(spa, 16)
        lab.trace(f"`locked` (GPA 0x{gpa:x}, SPA 0x{spa:x}) before the victim locks: "
                  f"ciphertext {launched.hex()}")
        with hv.tracing_faults(vm, [gpa]) as trace:
            while not trace.faults and hv.step(vm):
                pass
        lab.trace("single-stepped the victim past its store to `locked`")
        at = base + rmp_entry_offset(spa // PAGE)
        saved = hv.read_spa(at, RMP_ENTRY_SIZE)
        low = int.from_bytes(saved[:8], "little") & ~RMP_ASSIGNED
        hv.write_spa(at, low.to_bytes(8, "little") + saved[8:])
        lab.trace(f"wrote the victim page's RMP entry at SPA 0x{at:x}: not assigned")
        hv.write_spa(spa, launched)
        hv.write_spa(at, saved)
        lab.trace("replayed the older ciphertext of `locked`, then put the entry back "
                  "(assigned, validated)")
        hv.run(vm)
        console = vm.console.strip()
        lab.trace(f"the victim answered {console!r}")
        answer = CHANGED if CHANGED.decode() in console else HONEST
        return Attempt(answer, f"the victim still answered {console!r}")
