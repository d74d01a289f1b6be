"""`sevsim measure` as a Typer command: listed by `sevsim --help`, documented by `sevsim
measure --help`, and what sevsim.cli.main.app runs.

The options and the measuring live in sevsim.cli.fast (stdlib only), which `sevsim` runs
before importing Typer; this command's parameters are built from fast.OPTIONS and it forwards
to fast.run, so both paths accept, print and fail alike. Prints the digest in hex on stdout
(SNP: 48 bytes, SEV and SEV-ES: 32). Exit status 0, or 125 on bad input (not an OVMF image,
no SEV metadata, unknown vCPU type, a missing file).
"""

from __future__ import annotations

import inspect
from typing import Any

import typer

from sevsim.cli import fast


def measure(**options: Any) -> None:
    """Print the expected launch digest: of an OVMF image (--ovmf) as QEMU, EC2 or GCE
    launch it, alone or run by an SVSM (--mode snp:svsm --svsm), or of a sevsim guest ELF as
    `sevsim run` launches it."""
    try:
        status = fast.run(**options)
    except fast.UsageError as error:
        raise typer.BadParameter(str(error)) from None
    if status:
        raise typer.Exit(status)


def _parameter(option: fast.Option) -> inspect.Parameter:
    if option.positional:
        default = typer.Argument(option.default, help=option.help)
    elif option.type is bool:  # a flag: --json, not --json/--no-json
        default = typer.Option(option.default, f"--{option.name}", help=option.help)
    else:
        default = typer.Option(option.default, help=option.help)
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=default,
        annotation=option.type if option.default is not None else option.type | None)


measure.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_parameter(option) for option in fast.OPTIONS])
