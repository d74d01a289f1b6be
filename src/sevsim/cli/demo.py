"""`sevsim demo`: the scripted tour (sevsim.demo.scenario) with rich output: a progress bar
per long step, then what each step showed, and an exit status saying whether every
expectation held."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sevsim.cli.common import EXIT_ERROR, err, fail, hex_bytes
from sevsim.errors import ConfigError, SevsimError

if TYPE_CHECKING:
    from rich.console import Console

EXIT_FAILED = 1
MAX_SEED = 64
HEX_LINES = 4  # of 8 bytes, from the start of each page
LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{8,}\b")
STEPS = {"tenants": "four tenants run secret.c", "attacks": "attack matrix",
         "kbs": "SNP tenant and twins vs the key broker"}


def demo(
    seed: Annotated[str | None, typer.Option(
        help="Hex seed (1-64 bytes): the same seed gives the same document (but timings); "
             "default: a fresh one, printed.")] = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the JSON document (schema sevsim.demo/1) to this file.")
    ] = None,
    html_file: Annotated[Path | None, typer.Option(
        "--html", help="Also write the run as one self-contained HTML report (as "
                       "`sevsim report-html` makes from the JSON).")] = None,
    jobs: Annotated[int | None, typer.Option(
        help="Processes for the attack matrix (default: every core).")] = None,
) -> None:
    """A Milan host with four tenants (plain, SEV, SEV-ES, SNP) keeping the same secret, what
    a rogue administrator reads of each, the attack matrix, and an SNP tenant that attests to
    a key broker and gets its key while a one-byte-different and a debuggable twin are
    refused. Exit 0 when every expectation holds, 1 naming those that do not."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from sevsim.demo.html import render_html
    from sevsim.demo.scenario import failed_expectations, run_demo

    command = "sevsim demo"
    chosen = hex_bytes(seed, "--seed") if seed is not None else os.urandom(16)
    try:
        if not 1 <= len(chosen) <= MAX_SEED:
            raise ConfigError(f"--seed is {len(chosen)} bytes; give 1 to {MAX_SEED}")
        if jobs is not None and jobs < 1:
            raise ConfigError(f"--jobs {jobs}: need at least one")
        for flag, path in (("--json", json_file), ("--html", html_file)):
            if path is not None and (path.is_dir() or not os.access(path.parent, os.W_OK)):
                raise ConfigError(f"{flag} {path}: cannot write a file there")
        console = Console()
        console.print(f"[bold]sevsim demo[/] --seed {chosen.hex()}", highlight=False)
        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err.console,
                      disable=not err.console.is_terminal) as bars:
            tasks: dict[str, Any] = {}

            def progress(step: str, done: int, total: int) -> None:
                if step not in tasks:
                    tasks[step] = bars.add_task(STEPS.get(step, step), total=total)
                bars.update(tasks[step], completed=done, total=total)

            document = run_demo(chosen, jobs=jobs, progress=progress)
    except SevsimError as error:
        raise fail(error, command) from None
    outputs = {json_file: lambda: json.dumps(document, indent=2, ensure_ascii=False) + "\n",
               html_file: lambda: render_html(document)}
    for path, text in outputs.items():
        if path is None:
            continue
        try:
            path.write_text(text(), encoding="utf-8")
        except OSError as error:
            err.print(f"[bold red]{command}:[/] cannot write {path}: {error.strerror}",
                      highlight=False)
            raise typer.Exit(EXIT_ERROR) from None
    show(console, document)
    failed = failed_expectations(document)
    for reason in failed:
        err.print(f"[bold red]{command}:[/] {reason}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_FAILED)
    seconds = document["timings"]["total_s"]
    console.print(f"[bold green]every expectation held[/] in {seconds:.1f} s", highlight=False)


def show(console: Console, document: dict[str, Any]) -> None:
    """Each step's table, from the document."""
    def memory(console: Console, tenants: list[dict[str, Any]]) -> None:
        _memory(console, tenants, document.get("platform", ""))

    for section, render in (("tenants", memory), ("tenants", _registers),
                            ("attacks", _matrix), ("attestation", _attestation),
                            ("vtpm", _vtpm), ("kbs", _kbs)):
        if section in document:
            render(console, document[section])


def _hex_lines(page_b64: str) -> str:
    page = base64.b64decode(page_b64)
    return "\n".join(page[i:i + 8].hex() for i in range(0, 8 * HEX_LINES, 8))


def _yes(flag: bool, bad: bool) -> str:
    """A yes/no cell, red where the answer is the bad one."""
    word = "yes" if flag else "no"
    return f"[red]{word}[/]" if flag == bad else f"[green]{word}[/]"


def _memory(console: Console, tenants: list[dict[str, Any]], platform: str) -> None:
    from rich.table import Table

    from sevsim.demo.html import TSME_NOTE

    table = Table(title="The secret page: what the guest sees, what the host reads",
                  show_lines=True)
    table.add_column("")
    for tenant in tenants:
        table.add_column(f"{tenant['mode']} (ASID {tenant['asid']})")
    pages = [next(p for p in t["pages"] if p["label"] == "secret") for t in tenants]
    table.add_row("GPA / SPA", *(f"0x{p['gpa']:x} / 0x{p['spa']:x}" for p in pages))
    table.add_row("guest's vCPU", *(_hex_lines(p["guest"]) for p in pages))
    table.add_row("hypervisor read", *(_hex_lines(p["host"]) for p in pages))
    table.add_row("secret in host view", *(_yes(t["secret_in_host_view"], True)
                                           for t in tenants))
    table.add_row("secret in DRAM dump", *(_yes(t["secret_in_dram_dump"], True)
                                           for t in tenants))
    console.print(table)
    if "tsme" in platform.split(","):
        console.print(TSME_NOTE, style="dim", highlight=False)


def _registers(console: Console, tenants: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="vCPU registers: the true value / what the host reads")
    table.add_column("")
    for tenant in tenants:
        table.add_column(f"{tenant['mode']} ({tenant['registers']['where']})")
    for name in tenants[0]["registers"]["guest"]:
        row = []
        for tenant in tenants:
            regs = tenant["registers"]
            shown = regs["host"][name]
            row.append(f"{regs['guest'][name]} / " + ("[red]" + shown + "[/]" if shown
                                                      else "[green]hidden[/]"))
        table.add_row(name, *row)
    table.add_row("VMSA in DRAM", *(
        base64.b64decode(t["registers"]["vmsa"])[:16].hex() + "…" if t["registers"]["vmsa"]
        else "(no VMSA)" for t in tenants))
    console.print(table)


def _matrix(console: Console, attacks: dict[str, Any]) -> None:
    from sevsim.cli.attack import matrix_table

    table = matrix_table([(a["id"], a["name"]) for a in attacks["attacks"]], attacks["cells"])
    table.title = "The attack matrix (✗ broken, ✓ stopped)"
    console.print(table)


def _attestation(console: Console, attestation: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"The SNP tenant's report: {attestation['verdict']}")
    table.add_column("check")
    table.add_column("value", overflow="fold")
    table.add_column("ok")
    for field in attestation["fields"]:
        table.add_row(field["name"], field["value"], _yes(field["ok"], False))
    console.print(table)
    chain = Table(title="Certificate chain")
    for column in ("role", "subject", "issuer", "key", "not after", "signed by", "ok"):
        chain.add_column(column)
    for cert in attestation["chain"]:
        chain.add_row(cert["role"], cert["subject"], cert["issuer"], cert["key"],
                      cert["not_after"][:10], cert["signed_by"], _yes(cert["ok"], False))
    console.print(chain)


def _vtpm(console: Console, vtpm: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="The SNP-bound vTPM: measured boot (SHA-256 PCRs)")
    table.add_column("PCR")
    table.add_column("value")
    table.add_column("events")
    for pcr, value in vtpm["pcrs"]["sha256"].items():
        events = [e["type"] for e in vtpm["events"] if str(e["pcr"]) == pcr]
        table.add_row(pcr, value, ", ".join(events))
    console.print(table)
    checks = Table(title="vTPM evidence " + ("verified" if vtpm["quote"]["ok"] else "REFUSED"))
    for column in ("check", "ok", "detail"):
        checks.add_column(column)
    for check in vtpm["quote"]["checks"]:
        checks.add_row(check["name"], _yes(check["ok"], False), check["detail"])
    console.print(checks)


def _kbs(console: Console, kbs: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"The key broker: {kbs['resource']}", show_lines=True)
    for column in ("tenant", "measurement", "policy", "released", "the broker's reason"):
        table.add_column(column, overflow="fold")
    for attempt in kbs["attempts"]:
        released = attempt["released"] and attempt["secret_matches"]
        table.add_row(attempt["tenant"], attempt["measurement"][:24] + "…", attempt["policy"],
                      _yes(released, attempt["tenant"] != "snp"),
                      LONG_HEX.sub(r"\1…", attempt["reason"]) or "—")
    console.print(table)
