"""Options many commands share, declared once (this module imports Typer: the fast path of
`sevsim measure` must not)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")]
