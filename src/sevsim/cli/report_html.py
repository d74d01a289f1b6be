"""`sevsim report-html`: a run's JSON document (`sevsim demo --json`, or the bare output of
`sevsim attack matrix --json`) as one self-contained HTML page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sevsim.cli.common import EXIT_ERROR, MAX_RUN_DOCUMENT, err, fail, read_input
from sevsim.errors import SevsimError


def report_html(
    run: Annotated[Path, typer.Argument(
        metavar="RUN.json",
        help="The run's JSON document: `sevsim demo --json`, or `sevsim attack matrix "
             "--json` for an attacks-only page.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="The HTML file to write (one file: open it in any browser, "
                               "offline).")],
) -> None:
    """Render a run as one HTML page: each tenant's pages as the guest and the host see them,
    the attack matrix with every trace, the attestation chain and checks, the vTPM log."""
    from sevsim.demo.html import load_document, render_html

    command = "sevsim report-html"
    data = read_input(run, command, MAX_RUN_DOCUMENT, "a run's JSON document")
    try:
        document = load_document(data)
        if "attacks" in document and "attacks" not in document["attacks"]:
            document["attacks"]["attacks"] = _catalog_rows(document["attacks"]["cells"])
        page = render_html(document)
    except SevsimError as error:
        raise fail(error, command) from None
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as error:  # plain text: a path may hold what rich takes for markup
        print(f"{command}: cannot write {output}: {error.strerror}", file=sys.stderr)
        raise typer.Exit(EXIT_ERROR) from None
    err.print(f"{command}: wrote {output} ({len(page.encode()) >> 10} KiB)", highlight=False,
              markup=False)


def _catalog_rows(cells: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The catalog's name, actor and source of each attack in a bare matrix, which names
    attacks by id only (an id the catalog lacks stays unnamed)."""
    from sevsim.attacks.catalog import ATTACKS

    ids = dict.fromkeys(cell["attack"] for cell in cells)
    return [{"id": a.id, "name": a.name, "actor": a.actor, "source": a.source}
            for a in (ATTACKS[i] for i in ids if i in ATTACKS)]
