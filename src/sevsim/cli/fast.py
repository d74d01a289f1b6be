"""`sevsim measure` without Typer: its options, its parser and the measuring, stdlib only.

`main` is the `sevsim` entry point. It runs `measure` itself before Typer and rich are
imported (0.2 s, five times the measuring), so that a relying party gets a digest in about
Python's start-up time, as with sev-snp-measure. Whatever this parser does not take as a
complete command line (--help, an unknown option, a usage error) goes to Typer, which says it
exactly as before; the Typer command (sevsim.cli.measure) is built from OPTIONS and forwards
to `run`, so the two can never disagree on an option.
"""


import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_GUEST_ELF,
    MAX_KERNEL,
    MAX_OVMF,
    check_range,
    read_bounded,
    run_guarded,
)
from sevsim.errors import SevsimError

if TYPE_CHECKING:
    import argparse

COMMAND = "sevsim measure"


class Option(NamedTuple):
    """One `sevsim measure` parameter: --name (or the positional ELF), its type and default."""

    name: str
    type: type
    default: Any
    help: str
    positional: bool = False


OPTIONS = (
    Option("elf", Path, None, "A sevsim guest ELF (instead of --ovmf): the digest sevsim's VMM "
           "launches.", positional=True),
    Option("mode", str, "snp", "snp | sev-es (seves) | sev | snp:ovmf-hash (the OVMF image's "
           "part of the SNP digest only) | snp:svsm (OVMF run by an SVSM)"),
    Option("ovmf", Path, None, "An OVMF image with AMD SEV metadata (e.g. "
           "/usr/share/ovmf/OVMF.fd)."),
    Option("vcpus", int, 1, "Number of vCPUs (one VMSA each)."),
    Option("vcpu_type", str, None, "OVMF: QEMU vCPU model (EPYC, EPYC-v1..v4, EPYC-Rome, "
           "EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...); needed for QEMU in SEV-ES and SNP."),
    Option("vcpu_sig", str, None, "OVMF: explicit CPUID Fn0000_0001_EAX signature, hex "
           "(instead of --vcpu-type)."),
    Option("vmm_type", str, "qemu", "OVMF: qemu | ec2 | gce"),
    Option("kernel", Path, None, "OVMF: kernel booted directly; its hashes table is measured."),
    Option("initrd", Path, None, "OVMF: initrd (with --kernel)."),
    Option("append", str, None, "OVMF: kernel command line (with --kernel)."),
    Option("guest_features", str, "0x1", "OVMF, SNP: SEV_FEATURES of every VMSA, hex (bit 0 SNP "
           "active)."),
    Option("snp_ovmf_hash", str, None, "OVMF, SNP: the image's part of the digest, hex (from "
           "--mode snp:ovmf-hash, as vendors publish it), instead of hashing its pages."),
    Option("svsm", Path, None, "snp:svsm: the SVSM image (coconut-svsm), launched below OVMF "
           "and its variable store; every vCPU starts in it at VMPL0."),
    Option("vars_size", int, None, "snp:svsm: size in bytes of OVMF's variable store (or "
           "--vars-file)."),
    Option("vars_file", Path, None, "snp:svsm: OVMF's variable store (OVMF_VARS.fd), whose "
           "size counts (or --vars-size)."),
    Option("memory", str, "64M", "ELF: guest memory, as for `sevsim run`."),
    Option("json", bool, False, "Print {\"mode\", \"digest\"} as JSON instead of the bare hex."),
)


class UsageError(SevsimError):
    """A command line to reject with Typer's usage message and exit status 2."""


class Unreadable(SevsimError):
    """An input file that could not be read (exit 125, naming the file, as read_input)."""


def main() -> None:
    """`sevsim`, its stdout guarded (sevsim.cli.common.run_guarded)."""
    run_guarded(_dispatch)


def _dispatch() -> None:
    """`measure` here; any other command, and any measure command line this parser rejects,
    through Typer (sevsim.cli.main)."""
    if sys.argv[1:2] == ["measure"]:
        try:
            status = run(**vars(_parser().parse_args(sys.argv[2:])))
        except UsageError:
            pass  # Typer parses again and reports it as for every other command
        else:
            sys.exit(status)
    from sevsim.cli.main import main as typer_main

    typer_main()


def _parser() -> "argparse.ArgumentParser":
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    parser = Parser(prog=COMMAND, add_help=False, allow_abbrev=False)
    for option in OPTIONS:
        if option.positional:
            parser.add_argument(option.name, type=option.type, nargs="?",
                                default=option.default)
        elif option.type is bool:
            parser.add_argument("--" + option.name, dest=option.name, action="store_true")
        else:
            parser.add_argument("--" + option.name.replace("_", "-"), dest=option.name,
                                type=option.type, default=option.default)
    return parser


def run(elf: Path | None, mode: str, ovmf: Path | None, vcpus: int, vcpu_type: str | None,
        vcpu_sig: str | None, vmm_type: str, kernel: Path | None, initrd: Path | None,
        append: str | None, guest_features: str, snp_ovmf_hash: str | None,
        svsm: Path | None, vars_size: int | None, vars_file: Path | None, memory: str,
        json: bool = False) -> int:
    """Print the digest (0) or a typed error on stderr (125); raise UsageError."""
    if (elf is None) == (ovmf is None):
        raise UsageError("give either a guest ELF or --ovmf PATH")
    ovmf_only = (vcpu_type, vcpu_sig, kernel, initrd, append, snp_ovmf_hash)
    svsm_only = (svsm, vars_size, vars_file)
    try:
        if ovmf is not None and _is_svsm(mode):
            if svsm is None:
                raise UsageError("--mode snp:svsm needs the SVSM image: --svsm PATH")
            if (vars_size is None) == (vars_file is None):
                raise UsageError("--mode snp:svsm needs exactly one of --vars-size N and "
                                 "--vars-file PATH")
            if any(x is not None for x in (kernel, initrd, append, snp_ovmf_hash)) or (
                    vmm_type.lower() != "qemu" or guest_features != "0x1"):
                raise UsageError("--vmm-type, --kernel, --initrd, --append, --guest-features "
                                 "and --snp-ovmf-hash do not apply to --mode snp:svsm (QEMU "
                                 "launches it, with the SVSM's own VMSAs)")
            digest = _svsm(_read(ovmf, MAX_OVMF, "an OVMF image"), svsm, vars_size, vars_file,
                           vcpus, vcpu_type, vcpu_sig)
        elif ovmf is not None:
            if any(x is not None for x in svsm_only):
                raise UsageError("--svsm, --vars-size and --vars-file are for --mode snp:svsm")
            digest = _ovmf(_read(ovmf, MAX_OVMF, "an OVMF image"), mode, vcpus, vcpu_type,
                           vcpu_sig, vmm_type, kernel, initrd, append, guest_features,
                           snp_ovmf_hash)
        else:
            assert elf is not None
            if any(x is not None for x in ovmf_only + svsm_only) or vmm_type != "qemu" or (
                    guest_features != "0x1"):
                raise UsageError("--vcpu-type, --vcpu-sig, --vmm-type, --kernel, --initrd, "
                                 "--append, --guest-features, --snp-ovmf-hash, --svsm, "
                                 "--vars-size and --vars-file are for --ovmf")
            digest = _elf(_read(elf, MAX_GUEST_ELF, "a guest ELF"), mode, vcpus, memory)
    except UsageError:  # a SevsimError too, but main() hands it to Typer
        raise
    except Unreadable as error:
        return _fail(str(error))
    except SevsimError as error:
        return _fail(f"{type(error).__name__}: {error}")
    if json:
        from sevsim.cli.common import print_json

        print_json({"mode": mode, "digest": digest.hex()})
    else:
        print(digest.hex())
    return 0


def _fail(message: str) -> int:
    print(f"{COMMAND}: {message}", file=sys.stderr)
    return EXIT_ERROR


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_bounded(path, limit, what)
    except OSError as error:
        raise Unreadable(f"cannot read {path}: {error.strerror}") from None


def _hex_int(text: str, what: str, bits: int) -> int:
    """As common.hex_int, with this parser's usage error."""
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not hex") from None
    return check_range(value, what, 0, (1 << bits) - 1)


def _hex_bytes(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not hex") from None


def _ovmf(image: bytes, mode: str, vcpus: int, vcpu_type: str | None, vcpu_sig: str | None,
          vmm_type: str, kernel: Path | None, initrd: Path | None, append: str | None,
          guest_features: str, snp_ovmf_hash: str | None) -> bytes:
    from sevsim.attest.measure import ovmf_digest

    return ovmf_digest(
        mode, image, vcpus, vcpu_type,
        vcpu_sig=None if vcpu_sig is None else _hex_int(vcpu_sig, "vCPU signature", 32),
        vmm_type=vmm_type,
        kernel=None if kernel is None else _read(kernel, MAX_KERNEL, "a kernel"),
        initrd=None if initrd is None else _read(initrd, MAX_KERNEL, "an initrd"),
        append=append, guest_features=_hex_int(guest_features, "guest features", 64),
        ovmf_hash=None if snp_ovmf_hash is None else _hex_bytes(snp_ovmf_hash, "OVMF hash"))


def _is_svsm(mode: str) -> bool:
    from sevsim.attest.measure import Mode

    return Mode.parse(mode) is Mode.SNP_SVSM


def _svsm(ovmf: bytes, svsm: Path, vars_size: int | None, vars_file: Path | None,
          vcpus: int, vcpu_type: str | None, vcpu_sig: str | None) -> bytes:
    """OVMF run by an SVSM: the variable store counts only by its size, as sev-snp-measure's
    --vars-file."""
    from sevsim.attest.measure import snp_svsm_digest

    image = _read(svsm, MAX_OVMF, "an SVSM image")
    if vars_file is not None:
        vars_size = len(_read(vars_file, MAX_OVMF, "an OVMF variable store"))
    assert vars_size is not None
    return snp_svsm_digest(
        image, ovmf, vcpus, vcpu_type, vars_size=vars_size,
        vcpu_sig=None if vcpu_sig is None else _hex_int(vcpu_sig, "vCPU signature", 32))


def _elf(blob: bytes, mode: str, vcpus: int, memory: str) -> bytes:
    """A sevsim guest: the ELF is parsed as the VMM parses it (host.elf), with the guest
    kernel's identity, and measured by attest without running anything."""
    from sevsim.attest.measure import guest_digest
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.elf import parse_elf
    from sevsim.host.machine import parse_size

    return guest_digest(mode, parse_elf(blob), parse_size(memory), vcpus, kernel_identity())
