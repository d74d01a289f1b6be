"""What every `sevsim` command shares: exit statuses, the stderr console, bounded reads of
inputs, checked numbers, and a standard output that fails with a typed error.

Importing this module costs only the standard library, sevsim.errors and sevsim.inputs (Typer
and rich load on first use), so `sevsim measure`'s fast path (sevsim.cli.fast) shares it too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from sevsim.errors import ConfigError, GuestTimeout, SevsimError
from sevsim.inputs import (  # noqa: F401 (re-exported: the commands import them from here)
    MAX_CERT_FILE,
    MAX_EVENT_LOG,
    MAX_GUEST_ELF,
    MAX_ID_AUTH,
    MAX_ID_BLOCK,
    MAX_KBS_RESOURCE,
    MAX_KERNEL,
    MAX_KEY_FILE,
    MAX_OVMF,
    MAX_POLICY_FILE,
    MAX_REPORT_FILE,
    MAX_RUN_DOCUMENT,
    MAX_SECRET,
    MAX_SESSION_FILE,
    MAX_SEV_CERT,
    MAX_TPM_STRUCT,
    read_bounded,
)

if TYPE_CHECKING:
    import typer
    from rich.console import Console

    from sevsim.hw.chips import PlatformOptions

EXIT_TIMEOUT = 124  # as timeout(1)
PLATFORM_HELP = ("The platform's settings, comma-separated, exactly these on: smt, tsme, ecc, "
                 "rapl-disabled, ciphertext-hiding (Genoa and later), alias-check (or none). "
                 "Default: the chip preset's (`sevsim chips`).")
EXIT_ERROR = 125  # sevsim itself failed: bad input, firmware refusal, guest fault


class OutputError(ConfigError):
    """Standard output cannot be written: closed (`>&-`), full (`>/dev/full`), a broken pipe.
    Nothing printed to it can be trusted to have arrived, so the command fails."""


class _Stderr:
    """The stderr console, made on first use: importing rich costs more than the whole of
    `sevsim measure`, which shares this module."""

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, soft_wrap=True)

    def print(self, *objects: Any, **options: Any) -> None:
        self.console.print(*objects, **options)


err = _Stderr()


def print_error(error: Exception, command: str = "sevsim", status: int = EXIT_ERROR) -> int:
    """Print a typed error on stderr, one line; the exit status (124 for a guest timeout)."""
    message = " ".join(str(error).split())  # one line, whatever the message holds
    print(f"{command}: {type(error).__name__}: {message}", file=sys.stderr)
    return EXIT_TIMEOUT if isinstance(error, GuestTimeout) else status


def print_json(document: object) -> None:
    """One JSON document on stdout: what scripts read of a command that reports."""
    import json

    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr while long work runs; call what it yields once per step done,
    with what the step was. Only on a terminal: pipes, logs and --json readers get nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("[dim]{task.fields[step]}")]
    with Progress(*columns, console=err.console, transient=True,
                  disable=not err.console.is_terminal) as bar:
        task = bar.add_task(description, total=total, step="")
        yield lambda step: bar.update(task, advance=1, step=step)


@contextlib.contextmanager
def until_stopped() -> Iterator[None]:
    """Run a server until SIGTERM or Ctrl-C, either a clean stop: a service manager's stop
    (SIGTERM) is no crash, so it ends as Ctrl-C does, by KeyboardInterrupt, which ends the
    block quietly (the command then exits 0). uvicorn handles both signals itself and raises
    them again once it has drained its connections, which reaches the handler here."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(error: Exception, command: str = "sevsim", status: int = EXIT_ERROR) -> typer.Exit:
    """Print a typed error on stderr; the exit to raise (124 for a guest timeout)."""
    import typer

    return typer.Exit(print_error(error, command, status))


def read_input(path: Path, command: str, limit: int, what: str) -> bytes:
    """A file's bytes (read_bounded), or exit 125 naming the file and what is wrong."""
    import typer

    try:
        return read_bounded(path, limit, what)
    except OSError as error:  # plain text: a path may hold what rich takes for markup
        print(f"{command}: cannot read {path}: {error.strerror}", file=sys.stderr)
        raise typer.Exit(EXIT_ERROR) from None
    except ConfigError as error:
        raise fail(error, command) from None


def read_text(path: Path, command: str, limit: int, what: str) -> str:
    """A UTF-8 text file (a policy, an expectation, a baseline), or exit 125 naming it."""
    data = read_input(path, command, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise fail(ValueError(f"{path}: not UTF-8 text ({error.reason})"), command) from None


def hex_bytes(text: str | None, what: str, size: int | None = None,
              at_most: int | None = None) -> bytes:
    """A hex option's bytes ('0x' allowed; none given: b''), exactly `size` or at most
    `at_most` long."""
    import typer

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


def hex_int(text: str, what: str, bits: int) -> int:
    """A hex option's number ('0x' allowed): text that is not hex is a usage error (exit 2),
    a number that does not fit the field's `bits` a ConfigError (exit 125)."""
    import typer

    try:
        value = int(text, 16)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not hex (e.g. 0x3)") from None
    return check_range(value, what, 0, (1 << bits) - 1)


def platform_option(text: str | None) -> PlatformOptions | None:
    """`--platform`: the options named (None: the chip's defaults); an unknown name is a usage
    error (exit 2). Whether the chip has them is the Host's to say (ConfigError, 125)."""
    import typer

    from sevsim.hw.chips import PlatformOptions

    if text is None:
        return None
    try:
        return PlatformOptions.parse(text)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from None


def check_range(value: int, what: str, low: int, high: int) -> int:
    """`value` if low <= value <= high; a ConfigError naming the range otherwise."""
    if not low <= value <= high:
        raise ConfigError(f"{what} {value:#x} is outside {low:#x}..{high:#x}"
                          if high > 0xFFFF else f"{what} {value} is outside {low}..{high}")
    return value


def check_seconds(value: float, what: str) -> float:
    """A time limit: positive and finite (nan would mean none at all, -1 an instant one)."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{what} {value} is not a positive number of seconds")
    return value


class _GuardedStdout(io.TextIOBase):
    """sys.stdout that raises OutputError where the real one would raise OSError (full,
    broken pipe) or nothing at all (closed: Python's print() then drops every line)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def _broken(self, error: OSError | None) -> OutputError:
        if self._stream is not None:  # at exit Python flushes again: let it find /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            with contextlib.suppress(OSError, ValueError):  # no descriptor: nothing to flush
                os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self._stream = None
        reason = "it is closed" if error is None else os.strerror(error.errno or errno.EIO)
        return OutputError(f"cannot write to standard output: {reason}")

    def write(self, text: str) -> int:
        if self._stream is None:
            raise self._broken(None)
        try:
            return self._stream.write(text)
        except OSError as error:
            raise self._broken(error) from None

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OSError as error:
            raise self._broken(error) from None

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def fileno(self) -> int:
        if self._stream is None:
            raise OSError(errno.EBADF, "standard output is closed")
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"


def guard_stdout() -> None:
    """Make writes to a closed or failing standard output raise OutputError. A closed fd 1
    gets /dev/null, so that no file the command opens later lands on it."""
    stream = sys.stdout
    if stream is None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != 1:  # not fd 1: leave the descriptors as they were
            os.close(devnull)
    sys.stdout = cast(TextIO, _GuardedStdout(stream))


def run_guarded(entry: Callable[[], object]) -> NoReturn:
    """Run a command line with a guarded stdout, flushed before exiting (a full disk is an
    OutputError, not a warning at exit), and a last net for typed errors: whatever a command
    did not catch is printed on one line and exits 125 (124 for a timeout), never as a
    traceback."""
    guard_stdout()
    try:
        try:
            entry()
        finally:
            sys.stdout.flush()
    except SevsimError as error:
        sys.exit(print_error(error))
    sys.exit(0)


ENDORSEMENT_FILE = "endorsement.binarypb"  # gcetcbendorsement extract's name for it


def write_cert_table(table: bytes, directory: Path) -> None:
    """The certificates of an extended report's GUID table as PEM files named as snpguest
    and `sevsim verify --certs` expect (vcek/vlek, ask or asvk, ark), and a GCE launch
    endorsement as ENDORSEMENT_FILE."""
    import ssl

    from sevsim.abi.gce_endorsement import GUID_GCE_ENDORSEMENT
    from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, parse_cert_table

    entries = dict(parse_cert_table(table))
    names = [(GUID_VCEK, "vcek.pem"), (GUID_VLEK, "vlek.pem"),
             (GUID_ASK, "asvk.pem" if GUID_VLEK in entries else "ask.pem"), (GUID_ARK, "ark.pem")]
    directory.mkdir(parents=True, exist_ok=True)
    for guid, name in names:
        if guid in entries:
            (directory / name).write_text(ssl.DER_cert_to_PEM_cert(entries[guid]))
    if GUID_GCE_ENDORSEMENT in entries:
        (directory / ENDORSEMENT_FILE).write_bytes(entries[GUID_GCE_ENDORSEMENT])
