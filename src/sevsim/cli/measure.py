"""`sevsim measure`: the expected launch digest of an OVMF guest or of a sevsim guest ELF.

Prints the digest in hex on stdout (SNP: 48 bytes, SEV and SEV-ES: 32). Exit status 0, or
125 on bad input (not an OVMF image, no SEV metadata, unknown vCPU type, a missing file).
Imports stay inside the command so that measuring costs little more than Python's start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

COMMAND = "sevsim measure"


def measure(
    elf: Annotated[Path | None, typer.Argument(
        help="A sevsim guest ELF (instead of --ovmf): the digest sevsim's VMM launches.")
    ] = None,
    mode: Annotated[str, typer.Option(help="snp | sev-es (seves) | sev")] = "snp",
    ovmf: Annotated[Path | None, typer.Option(
        help="An OVMF image with AMD SEV metadata (e.g. /usr/share/ovmf/OVMF.fd).")] = None,
    vcpus: Annotated[int, typer.Option(help="Number of vCPUs (one VMSA each).")] = 1,
    vcpu_type: Annotated[str | None, typer.Option(
        help="OVMF: QEMU vCPU model (EPYC, EPYC-v1..v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, "
             "EPYC-Turin, ...); needed for QEMU in SEV-ES and SNP.")] = None,
    vcpu_sig: Annotated[str | None, typer.Option(
        help="OVMF: explicit CPUID Fn0000_0001_EAX signature, hex (instead of --vcpu-type).")
    ] = None,
    vmm_type: Annotated[str, typer.Option(help="OVMF: qemu | ec2 | gce")] = "qemu",
    kernel: Annotated[Path | None, typer.Option(
        help="OVMF: kernel booted directly; its hashes table is measured.")] = None,
    initrd: Annotated[Path | None, typer.Option(help="OVMF: initrd (with --kernel).")] = None,
    append: Annotated[str | None, typer.Option(
        help="OVMF: kernel command line (with --kernel).")] = None,
    guest_features: Annotated[str, typer.Option(
        help="OVMF, SNP: SEV_FEATURES of every VMSA, hex (bit 0 SNP active).")] = "0x1",
    memory: Annotated[str, typer.Option(help="ELF: guest memory, as for `sevsim run`.")
                      ] = "64M",
) -> None:
    """Print the expected launch digest: of an OVMF image (--ovmf) as QEMU, EC2 or GCE
    launch it, or of a sevsim guest ELF as `sevsim run` launches it."""
    from sevsim.abi.ovmf import OvmfError
    from sevsim.cli.common import fail, read_input
    from sevsim.errors import SevsimError

    if (elf is None) == (ovmf is None):
        raise typer.BadParameter("give either a guest ELF or --ovmf PATH")
    try:
        if ovmf is not None:
            digest = _ovmf(read_input(ovmf, COMMAND), mode, vcpus, vcpu_type, vcpu_sig,
                           vmm_type, kernel, initrd, append, guest_features)
        else:
            assert elf is not None
            ovmf_only = (vcpu_type, vcpu_sig, kernel, initrd, append)
            if any(x is not None for x in ovmf_only) or vmm_type != "qemu" or (
                    guest_features != "0x1"):
                raise typer.BadParameter("--vcpu-type, --vcpu-sig, --vmm-type, --kernel, "
                                         "--initrd, --append and --guest-features are for "
                                         "--ovmf")
            digest = _elf(read_input(elf, COMMAND), mode, vcpus, memory)
    except (SevsimError, OvmfError) as error:
        raise fail(error, COMMAND) from None
    typer.echo(digest.hex())


def _hex_int(text: str, what: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not hex") from None


def _ovmf(image: bytes, mode: str, vcpus: int, vcpu_type: str | None, vcpu_sig: str | None,
          vmm_type: str, kernel: Path | None, initrd: Path | None, append: str | None,
          guest_features: str) -> bytes:
    from sevsim.attest.measure import ovmf_digest
    from sevsim.cli.common import read_input

    return ovmf_digest(
        mode, image, vcpus, vcpu_type,
        vcpu_sig=None if vcpu_sig is None else _hex_int(vcpu_sig, "vCPU signature"),
        vmm_type=vmm_type,
        kernel=None if kernel is None else read_input(kernel, COMMAND),
        initrd=None if initrd is None else read_input(initrd, COMMAND),
        append=append, guest_features=_hex_int(guest_features, "guest features"))


def _elf(blob: bytes, mode: str, vcpus: int, memory: str) -> bytes:
    """A sevsim guest: the ELF is parsed as the VMM parses it (host.elf), with the guest
    kernel's identity, and measured by attest without running anything."""
    from sevsim.attest.measure import guest_digest
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.elf import parse_elf
    from sevsim.host.machine import parse_size

    return guest_digest(mode, parse_elf(blob), parse_size(memory), vcpus, kernel_identity())
