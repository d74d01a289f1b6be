"""Build freestanding guest programs against the sevsim C SDK.

Guest programs run with no libc and no loader: the guest kernel copies the
PT_LOAD segments of a static, non-PIE ELF to their link addresses and jumps
to ``_start``.  This module owns the exact compiler invocation that produces
such an image so every caller (CLI, tests, examples) gets the same one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sevsim.errors import SevsimError

__all__ = ["BASE_CFLAGS", "GuestBuildError", "build_guest", "sdk_dir"]

log = logging.getLogger(__name__)


class GuestBuildError(SevsimError):
    """The guest program could not be compiled or linked (carries the compiler's stderr)."""


#: Compiler flags for every guest image, each needed by the bare-metal environment:
BASE_CFLAGS: tuple[str, ...] = (
    "-ffreestanding",  # no hosted libc assumptions (no main() semantics, no builtins)
    "-nostdlib",  # neither libc nor crt*.o: crt0.S and libsev.c replace them
    "-nostartfiles",
    "-static",  # nothing to resolve at load time: the kernel has no dynamic loader
    "-fno-pie",  # absolute addressing; the image lives at its link address
    "-no-pie",  # ... and is linked as ET_EXEC, not ET_DYN
    "-fno-stack-protector",  # the canary lives at %fs:0x28 and there is no TLS here
    "-fno-asynchronous-unwind-tables",  # no unwinder, so no .eh_frame to carry
    "-fcf-protection=none",  # some distros default to CET: no endbr64 or CET notes
    "-mno-red-zone",  # an exception handler (#VC under SEV-ES) may push on our stack
    # Baseline x86-64 (SSE2) whatever the distro default: Unicorn's CPU model lacks AVX/BMI2,
    # so code built for x86-64-v3 dies with an invalid-instruction error.
    "-march=x86-64",
    "-mtune=generic",
    "-O2",
    "-Wall",
    "-Wl,--build-id=none",  # deterministic bytes: the image is measured at launch
    "-Wl,-z,max-page-size=4096",  # 4 KiB segment alignment, not 2 MiB padding
    "-Wl,-z,noexecstack",
)


def sdk_dir() -> Path:
    """Directory holding ``include/sevsim.h``, ``crt0.S``, ``libsev.c`` and ``guest.ld``.

    Resolved next to this module so it works from a checkout and an installed wheel alike.
    """
    return Path(__file__).resolve().parent / "sdk"


def _sdk_files() -> tuple[Path, Path, Path, Path]:
    """Return the SDK's include dir, linker script, crt0 and runtime, checking they exist."""
    root = sdk_dir()
    files = (root / "include", root / "guest.ld", root / "crt0.S", root / "libsev.c")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise GuestBuildError(f"sevsim guest SDK is incomplete, missing: {', '.join(missing)}")
    return files


def build_guest(
    sources: list[Path],
    output: Path,
    *,
    cflags: Sequence[str] = (),
    cc: str = "gcc",
) -> Path:
    """Compile and link ``sources`` with the SDK runtime into a static ET_EXEC guest ELF.

    ``cflags`` come after the SDK's own flags so callers can override them (``-O0``,
    ``-DBENCH_SCALE=1``).  Returns ``output``.
    """
    if not sources:
        raise GuestBuildError("build_guest needs at least one C source file")
    for src in sources:
        if not Path(src).is_file():
            raise GuestBuildError(f"guest source not found: {src}")
    compiler = shutil.which(cc)
    if compiler is None:
        raise GuestBuildError(
            f"C compiler {cc!r} not found on PATH; install gcc (x86-64) to build guest programs"
        )

    include, linker_script, crt0, libsev = _sdk_files()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        compiler,
        *BASE_CFLAGS,
        f"-T{linker_script}",
        f"-I{include}",
        *cflags,
        "-o",
        str(output),
        str(crt0),
        str(libsev),
        *(str(s) for s in sources),
        "-lgcc",  # helpers such as __udivti3 for 128-bit division; static, self-contained
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GuestBuildError(f"could not run C compiler {cc!r}: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise GuestBuildError(
            f"building {output.name} failed ({cc} exited with {proc.returncode}):\n{detail}"
        )
    if proc.stderr.strip():
        log.warning("building %s: compiler warnings:\n%s", output.name, proc.stderr.strip())
    return output
