"""F3: undeSErVed trust: the launch digest does not bind where measured pages are mapped."""

from __future__ import annotations

from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab

HONEST = b"maintenance shell: closed"


class LaunchPermutation(Attack):
    """Submit the measured pages in the expected order but map two of them at each other's
    GPA: the victim reads the attacker's arrangement of its own attested data."""

    id = "F3"
    name = "undeSErVed trust (launch measurement permutation)"
    actor = "malicious hypervisor at launch"
    source = ("L. Wilke, J. Wichelmann, F. Sieck, T. Eisenbarth, 'undeSErVed trust: Exploiting "
              "Permutation-Agnostic Remote Attestation', IEEE S&P Workshops (WOOT) 2021")

    def not_applicable(self, setting: Setting) -> str | None:
        """A plain VM has no launch measurement to fool."""
        return "a plain VM has no launch measurement" if setting.mode == "none" else None

    def attempt(self, lab: Lab) -> Attempt:
        """Swap the NPT entries of the settings page and the lookup page, launch with the
        pages submitted in the order that reproduces the expected digest, run."""
        victim = lab.victim("launch_config", honest=HONEST, launch=False)
        vm, hv = victim.vm, lab.hypervisor
        settings, table = victim.symbol("settings"), victim.symbol("crc_table")
        spa_settings, spa_table = hv.gpa_to_spa(vm, settings), hv.gpa_to_spa(vm, table)
        hv.remap(vm, settings, spa_table)
        hv.remap(vm, table, spa_settings)
        lab.trace(f"NPT: GPA 0x{settings:x} (settings) -> SPA 0x{spa_table:x}, GPA 0x{table:x} "
                  f"(lookup table) -> SPA 0x{spa_settings:x}: each page at the other's GPA")
        order = vm.measured_pages
        i, j = order.index(settings), order.index(table)
        order[i], order[j] = order[j], order[i]
        lab.trace("LAUNCH_UPDATE in the expected content order: the lookup page's GPA first "
                  "(its SPA holds the settings), then the settings page's")
        terms = lab.owner_terms(victim)
        vm.launch(terms.policy, terms.owner, id_block=terms.id_block, id_auth=terms.id_auth,
                  page_order=order)
        lab.trace("the guest owner's check of the launch digest passed; the VM runs")
        hv.run(vm)
        line = vm.console.strip().splitlines()[-1] if vm.console.strip() else ""
        lab.trace(f"the victim printed {line!r}")
        result = line.split(" (")[0].encode()
        return Attempt(result, f"the victim still printed {line!r}")
