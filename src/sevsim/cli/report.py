"""`sevsim report --ovmf`: the signed report a real SNP VM of a given configuration would
show, from sevsim's simulated platform: evidence for testing attestation services in CI.

The image (with --svsm, an SVSM and the OVMF it runs) is launched as measured content through
the simulated firmware (not executed), so MEASUREMENT equals what `sevsim measure` (and
sev-snp-measure) compute; a guest standing in for the firmware asks for the report with VMPCK0
(sevsim.guest.standin). The report verifies with `sevsim verify --trust sevsim`, never
against AMD's roots. As GCE, the host also serves a launch endorsement of the image in the
certificate table: the golden measurements for the vCPU counts Google endorses, signed by
sevsim's simulated Google signer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sevsim.cli.common import PLATFORM_HELP

COMMAND = "sevsim report"


def report(
    ovmf: Annotated[Path, typer.Option(
        help="An OVMF image with AMD SEV metadata (e.g. /usr/share/ovmf/OVMF.fd).")],
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Where to write the 0x4A0-byte report.")],
    report_data: Annotated[str | None, typer.Option(
        help="Up to 64 bytes, hex, for REPORT_DATA (zero-padded).")] = None,
    certs_out: Annotated[Path | None, typer.Option(
        help="Write the certificate table as vcek.pem (or vlek.pem), ask.pem (asvk.pem), "
             "ark.pem (and endorsement.binarypb) into this directory.")] = None,
    cert_table_out: Annotated[Path | None, typer.Option(
        help="Write the certificate table itself (the extended report's GUID table).")
    ] = None,
    endorsement_out: Annotated[Path | None, typer.Option(
        help="GCE: write the launch endorsement (VMLaunchEndorsement) to this file.")] = None,
    vcpus: Annotated[int, typer.Option(help="Number of vCPUs (one VMSA each).")] = 1,
    vcpu_type: Annotated[str | None, typer.Option(
        help="QEMU vCPU model, as for `sevsim measure` (needed for QEMU).")] = None,
    vcpu_sig: Annotated[str | None, typer.Option(
        help="Explicit CPUID signature, hex (instead of --vcpu-type).")] = None,
    vmm_type: Annotated[str, typer.Option(help="qemu | ec2 | gce")] = "qemu",
    kernel: Annotated[Path | None, typer.Option(
        help="Kernel booted directly; its hashes table is launched.")] = None,
    initrd: Annotated[Path | None, typer.Option(help="Initrd (with --kernel).")] = None,
    append: Annotated[str | None, typer.Option(help="Command line (with --kernel).")] = None,
    guest_features: Annotated[str, typer.Option(
        help="SEV_FEATURES of every VMSA, hex (bit 0 SNP active).")] = "0x1",
    policy: Annotated[str, typer.Option(help="Guest policy, hex.")] = "0x30000",
    host_data: Annotated[str | None, typer.Option(
        help="32 bytes, hex, for SNP_LAUNCH_FINISH's HOST_DATA.")] = None,
    id_block: Annotated[Path | None, typer.Option(
        help="The owner's 0x60-byte ID block (`sevsim idblock`).")] = None,
    id_auth: Annotated[Path | None, typer.Option(
        help="The 0x1000-byte ID_AUTH_INFO signing the ID block.")] = None,
    vmpl: Annotated[int, typer.Option(help="The VMPL the report names (0-3).")] = 0,
    chip: Annotated[str, typer.Option(help="milan | genoa | turin")] = "milan",
    seed: Annotated[str | None, typer.Option(
        help="Chip seed: a reproducible platform (the same VCEK and CHIP_ID each run).")
    ] = None,
    vlek: Annotated[str | None, typer.Option(
        help="Sign with a VLEK for this cloud provider name instead of the VCEK.")] = None,
    platform: Annotated[str | None, typer.Option(help=PLATFORM_HELP)] = None,
    memory: Annotated[str, typer.Option(help="Guest RAM (no effect on MEASUREMENT).")
                      ] = "64M",
    svsm: Annotated[Path | None, typer.Option(
        help="An SVSM image (coconut-svsm) launched below the OVMF image, as `sevsim measure "
             "--mode snp:svsm` measures it (QEMU only).")] = None,
    vars_size: Annotated[int | None, typer.Option(
        help="With --svsm: size in bytes of OVMF's variable store (or --vars-file).")
    ] = None,
    vars_file: Annotated[Path | None, typer.Option(
        help="With --svsm: OVMF's variable store, whose size counts (or --vars-size).")
    ] = None,
) -> None:
    """Launch an OVMF image (alone or run by an SVSM) on the simulated SNP platform and write
    the guest's report; MEASUREMENT goes to stderr."""
    from sevsim.abi.gce_endorsement import GCE_VMSA_COUNTS, GUID_GCE_ENDORSEMENT
    from sevsim.abi.ovmf import KernelHashes, OvmfImage, VmmType
    from sevsim.attest.gce_endorsement import golden_measurements
    from sevsim.cli.common import (
        MAX_ID_AUTH,
        MAX_ID_BLOCK,
        MAX_KERNEL,
        MAX_OVMF,
        err,
        fail,
        hex_bytes,
        hex_int,
        platform_option,
        read_input,
        write_cert_table,
    )
    from sevsim.errors import SevsimError
    from sevsim.firmware.gce_endorser import simulated_endorser
    from sevsim.host.machine import Host, parse_size

    options = platform_option(platform)
    data = hex_bytes(report_data, "report data", at_most=64).ljust(64, b"\0")
    launch_host_data = hex_bytes(host_data, "host data", size=32) if host_data else bytes(32)
    if (kernel is None) and (initrd is not None or append is not None):
        raise typer.BadParameter("--initrd and --append come with --kernel")
    if svsm is None and (vars_size is not None or vars_file is not None):
        raise typer.BadParameter("--vars-size and --vars-file come with --svsm")
    if svsm is not None and (vars_size is None) == (vars_file is None):
        raise typer.BadParameter("--svsm needs exactly one of --vars-size N and --vars-file "
                                 "PATH")
    if svsm is not None and (kernel is not None or vmm_type.lower() != "qemu"
                             or guest_features != "0x1"):
        raise typer.BadParameter("--kernel, --vmm-type and --guest-features do not apply "
                                 "with --svsm (QEMU launches it, with the SVSM's own VMSAs)")
    hashes = None if kernel is None else KernelHashes.of(
        read_input(kernel, COMMAND, MAX_KERNEL, "a kernel"),
        None if initrd is None else read_input(initrd, COMMAND, MAX_KERNEL, "an initrd"), append)
    image = read_input(ovmf, COMMAND, MAX_OVMF, "an OVMF image")
    svsm_image = None if svsm is None else read_input(svsm, COMMAND, MAX_OVMF, "an SVSM image")
    if vars_file is not None:
        vars_size = len(read_input(vars_file, COMMAND, MAX_OVMF, "an OVMF variable store"))
    block = None if id_block is None else read_input(id_block, COMMAND, MAX_ID_BLOCK,
                                                     "an ID block")
    auth = None if id_auth is None else read_input(id_auth, COMMAND, MAX_ID_AUTH,
                                                   "an ID_AUTH_INFO")
    gce = vmm_type.lower() == VmmType.GCE.value
    if endorsement_out is not None and not gce:
        raise typer.BadParameter("--endorsement-out comes with --vmm-type gce")
    try:
        endorsement = None
        if gce:  # Google's build pipeline measures the image, its signer endorses it
            endorsement = simulated_endorser().endorse(
                image, golden_measurements(OvmfImage.parse(image)))
            if vcpus not in GCE_VMSA_COUNTS:
                err.print(f"sevsim: note: no GCE machine type has {vcpus} vCPUs, so the "
                          "endorsement has no golden measurement for this VM", highlight=False)
        host = Host(chip=chip, memory=parse_size(memory) + (64 << 20),
                    seed=None if seed is None else seed.encode(), platform=options)
        if vlek is not None:
            fw = host.firmware
            fw.snp_vlek_load(fw.seal_hashstick(vlek, fw.tcb))
        sig = None if vcpu_sig is None else hex_int(vcpu_sig, "vCPU signature", 32)
        launch_policy = hex_int(policy, "policy", 64)
        if svsm_image is not None:
            assert vars_size is not None
            guest = host.launch_svsm(
                svsm_image, image, vars_size, vcpus, memory, vcpu_type=vcpu_type,
                vcpu_sig=sig, policy=launch_policy, host_data=launch_host_data,
                id_block=block, id_auth=auth)
        else:
            guest = host.launch_ovmf(
                image, vcpus, memory, vcpu_type=vcpu_type, vcpu_sig=sig, vmm_type=vmm_type,
                kernel_hashes=hashes,
                guest_features=hex_int(guest_features, "guest features", 64),
                policy=launch_policy, host_data=launch_host_data, id_block=block,
                id_auth=auth, certificates=[] if endorsement is None else [
                    (GUID_GCE_ENDORSEMENT, endorsement)])
        signed, table = guest.report(data, vmpl)
        err.print(f"sevsim: MEASUREMENT {guest.measurement.hex()}", highlight=False)
        output.write_bytes(signed)
        if certs_out is not None:
            write_cert_table(table, certs_out)
        if cert_table_out is not None:
            cert_table_out.write_bytes(table)
        if endorsement_out is not None and endorsement is not None:
            endorsement_out.write_bytes(endorsement)
    except (SevsimError, OSError) as error:
        raise fail(error, COMMAND) from None
