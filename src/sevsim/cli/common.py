"""What every `sevsim` command shares: exit statuses, the stderr console, reading inputs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sevsim.errors import GuestTimeout

EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_ERROR = 125  # sevsim itself failed: bad input, firmware refusal, guest fault

err = Console(stderr=True, soft_wrap=True)


def fail(error: Exception, command: str = "sevsim", status: int = EXIT_ERROR) -> typer.Exit:
    """Print a typed error on stderr; the exit to raise (124 for a guest timeout)."""
    err.print(f"[bold red]{command}:[/] {type(error).__name__}: {error}", highlight=False)
    return typer.Exit(EXIT_TIMEOUT if isinstance(error, GuestTimeout) else status)


def read_input(path: Path, command: str = "sevsim") -> bytes:
    """A file's bytes, or exit 125 naming the file that could not be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        err.print(f"[bold red]{command}:[/] cannot read {path}: {error.strerror}",
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
