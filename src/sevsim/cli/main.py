"""`sevsim`: build guest programs, run them in plain or SEV VMs, inspect the chip presets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sevsim.errors import GuestTimeout, SevsimError
from sevsim.hw.chips import DEFAULT_CHIP, PRESETS, GuestMode

EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_ERROR = 125  # sevsim itself failed: bad input, firmware refusal, guest fault

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
guest_app = typer.Typer(help="Guest programs: build C sources against the sevsim SDK.",
                        no_args_is_help=True)
app.add_typer(guest_app, name="guest")
err = Console(stderr=True, soft_wrap=True)


def _fail(error: SevsimError) -> typer.Exit:
    err.print(f"[bold red]sevsim:[/] {type(error).__name__}: {error}", highlight=False)
    return typer.Exit(EXIT_TIMEOUT if isinstance(error, GuestTimeout) else EXIT_ERROR)


@guest_app.command("build")
def guest_build(
    sources: Annotated[list[Path], typer.Argument(help="C source files of the program.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ELF file to write.")],
    cflag: Annotated[list[str] | None, typer.Option(
        "--cflag", help="Extra compiler flag (repeatable), e.g. --cflag=-DSCALE=2.")] = None,
) -> None:
    """Compile a freestanding x86-64 guest ELF with gcc and the SDK."""
    from sevsim.guest.build import build_guest

    try:
        built = build_guest(sources, output, cflags=cflag or [])
    except SevsimError as error:
        raise _fail(error) from None
    err.print(f"built {built}", highlight=False)


@app.command()
def run(
    elf: Annotated[Path, typer.Argument(help="Guest ELF built with `sevsim guest build`.")],
    mode: Annotated[str, typer.Option(help="none | sev")] = "sev",
    chip: Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)}")] = DEFAULT_CHIP,
    memory: Annotated[str, typer.Option(help="Guest memory, e.g. 64M or 1G.")] = "64M",
    vcpus: Annotated[int, typer.Option(help="Number of vCPUs.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds before the VM is stopped.")] = 60.0,
    dump_host_view: Annotated[Path | None, typer.Option(
        help="Write guest memory as the hypervisor reads it after the guest stops.")] = None,
) -> None:
    """Run a guest program; its console goes to stdout and its exit code becomes ours."""
    from sevsim.host.machine import Host, parse_size

    try:
        image = elf.read_bytes()
    except OSError as error:
        err.print(f"[bold red]sevsim:[/] cannot read {elf}: {error.strerror}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    try:
        host = Host(chip=chip, memory=parse_size(memory) + (64 << 20))
        vm = host.create_vm(mode=mode, memory=memory, vcpus=vcpus)
        err.print(f"sevsim: mode={vm.mode} chip={host.chip.name} asid={vm.asid}"
                  f"{'' if vm.hv.mode.encrypted else ' (unencrypted)'} memory={memory} "
                  f"vcpus={vcpus}", highlight=False)
        vm.load(image)
        measurement = vm.launch()
        if measurement is not None:
            err.print(f"sevsim: launch measurement {measurement.measure.hex()}", highlight=False)
        try:
            result = vm.run(timeout=timeout)
        finally:
            sys.stdout.write(vm.console)
            sys.stdout.flush()
            if dump_host_view is not None:
                dump_host_view.write_bytes(vm.host_view())
    except SevsimError as error:
        raise _fail(error) from None
    raise typer.Exit(result.exit_code & 0xFF)


@app.command()
def chips() -> None:
    """The chip presets: CPUID signature, Fn8000_001F, ASIDs, modes, tweak."""
    table = Table("chip", "signature", "C-bit", "max ASID", "min SEV ASID", "modes", "tweak",
                  "API")
    for preset in PRESETS.values():
        table.add_row(preset.name, f"0x{preset.signature:08X}", str(preset.c_bit),
                      str(preset.max_asid), str(preset.min_sev_asid),
                      ", ".join(m.value for m in preset.modes if m is not GuestMode.NONE),
                      preset.tweak.value, f"{preset.api_major}.{preset.api_minor}")
    Console(width=max(120, Console().width)).print(table)


def main() -> None:
    app()
