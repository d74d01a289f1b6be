"""`sevsim attack list | run | matrix`: the published attacks, run against each protection level."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sevsim.attacks.framework import FEATURES
from sevsim.cli.common import err, fail, print_json, progress
from sevsim.cli.options import JsonOption
from sevsim.errors import ConfigError, SevsimError

if TYPE_CHECKING:
    from rich.table import Table

attack_app = typer.Typer(help="Run the published SEV attacks against each protection level.",
                         no_args_is_help=True)


@attack_app.command("list")
def list_attacks(json_out: JsonOption = False) -> None:
    """The catalog: id, name, actor and the fix settings each attack is also run against."""
    from rich.console import Console
    from rich.table import Table

    from sevsim.attacks.catalog import ATTACKS

    if json_out:
        print_json([{"id": a.id, "name": a.name, "actor": a.actor, "source": a.source,
                     "fixes": [s.label for s in a.fixes]} for a in ATTACKS.values()])
        return
    table = Table("id", "attack", "actor", "fixes / features", "source")
    for attack in ATTACKS.values():
        table.add_row(attack.id, attack.name, attack.actor,
                      ", ".join(s.label for s in attack.fixes), attack.source)
    Console().print(table)


@attack_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Attack id, e.g. A5 (see `sevsim attack list`).")],
    mode: Annotated[str, typer.Option(help="none | sev | sev-es | snp")] = "snp",
    chip: Annotated[str, typer.Option(help="Chip preset (`sevsim chips`).")] = "milan",
    feature: Annotated[list[str] | None, typer.Option(
        help="A fix or opt-in feature to turn on, repeatable: " + ", ".join(FEATURES))
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run one attack and narrate it: what the attacker did, saw and got."""
    from sevsim.attacks.framework import MODES, Setting
    from sevsim.attacks.runner import attack_named, run_attack

    command = "sevsim attack run"
    try:
        attack = attack_named(name)
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        unknown = sorted(set(feature or ()) - FEATURES.keys())
        if unknown:
            raise ConfigError(f"unknown feature {unknown[0]!r}; choose from "
                              f"{', '.join(FEATURES)}")
        outcome = run_attack(attack, Setting(mode, chip, frozenset(feature or ())))
    except SevsimError as error:
        raise fail(error, command) from None
    if json_out:
        print_json(outcome.to_json())
        return
    out = sys.stdout
    out.write(f"{attack.id} {attack.name} — {attack.actor} — {outcome.setting.label}\n")
    for step in outcome.trace:
        out.write(f"  · {step}\n")
    if outcome.verdict.name == "BROKEN":
        out.write(f"BROKEN ✗: the attack got {outcome.evidence}\n")
    elif outcome.verdict.name == "STOPPED":
        got = f" (it got {outcome.evidence})" if outcome.evidence else ""
        out.write(f"STOPPED ✓ by {outcome.stopped_by}{got}\n")
    else:
        out.write(f"n/a: {outcome.stopped_by}\n")


@attack_app.command("matrix")
def matrix(
    json_out: JsonOption = False,
    jobs: Annotated[int | None, typer.Option(help="Processes (default: every core).")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Just these attack ids, repeatable.")
                    ] = None,
) -> None:
    """Every attack against none, sev, sev-es and snp, and against its fixes: each cell
    computed by running the attack."""
    from sevsim.attacks.catalog import ATTACKS
    from sevsim.attacks.runner import attack_named, cells, matrix_document, run_matrix

    command = "sevsim attack matrix"
    try:
        chosen = [attack_named(n) for n in only] if only else list(ATTACKS.values())
        with progress("attack matrix", len(cells(chosen))) as advance:
            outcomes = run_matrix(chosen, jobs, lambda o: advance(
                f"{o.attack} {o.setting.label} {o.verdict.value}"))
    except SevsimError as error:
        raise fail(error, command) from None
    if json_out:
        print_json(matrix_document(outcomes))
        return
    from rich.console import Console

    Console().print(matrix_table([(a.id, a.name) for a in chosen],
                                 [o.to_json() for o in outcomes]))
    err.print(f"sevsim: {len(outcomes)} cells computed", highlight=False)


def matrix_table(attacks: list[tuple[str, str]], cells: list[dict[str, Any]]) -> Table:
    """The matrix as `sevsim attack matrix` prints it: a row per (id, name) of `attacks`, a
    column per mode on Milan, the other chips and fixes last; `cells` as `matrix --json`
    lists them (`sevsim demo` prints its document's with it)."""
    from rich.table import Table

    from sevsim.attacks.framework import MODES, Setting

    table = Table("id", "attack", *MODES, "fix / feature")
    for attack_id, name in attacks:
        mine = [c for c in cells if c["attack"] == attack_id]
        by_mode = {c["mode"]: c["verdict"] for c in mine
                   if not c["features"] and c["chip"] == "milan"}
        fixes = [f"{Setting(c['mode'], c['chip'], frozenset(c['features'])).label}: "
                 f"{c['verdict']}" for c in mine if c["features"] or c["chip"] != "milan"]
        table.add_row(attack_id, name, *(by_mode.get(m, "") for m in MODES), "; ".join(fixes))
    return table
