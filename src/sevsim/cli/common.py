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


def hex_bytes(text: str | None, what: str, size: int | None = None,
              at_most: int | None = None) -> bytes:
    """A hex option's bytes ('0x' allowed; none given: b''), exactly `size` or at most
    `at_most` long."""
    if text is None:
        return b""
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not hex") from None
    if size is not None and len(value) != size:
        raise typer.BadParameter(f"{what} is {len(value)} bytes, not {size}")
    if at_most is not None and len(value) > at_most:
        raise typer.BadParameter(f"{what} is {len(value)} bytes; at most {at_most}")
    return value


def hex_int(text: str, what: str) -> int:
    """A hex option's number ('0x' allowed)."""
    try:
        return int(text, 16)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not hex (e.g. 0x3)") from None


def write_cert_table(table: bytes, directory: Path) -> None:
    """The certificates of an extended report's GUID table as PEM files named as snpguest
    and `sevsim verify --certs` expect (vcek/vlek, ask or asvk, ark)."""
    import ssl

    from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, parse_cert_table

    entries = dict(parse_cert_table(table))
    names = [(GUID_VCEK, "vcek.pem"), (GUID_VLEK, "vlek.pem"),
             (GUID_ASK, "asvk.pem" if GUID_VLEK in entries else "ask.pem"), (GUID_ARK, "ark.pem")]
    directory.mkdir(parents=True, exist_ok=True)
    for guid, name in names:
        if guid in entries:
            (directory / name).write_text(ssl.DER_cert_to_PEM_cert(entries[guid]))
