"""`sevsim`: build guest programs, run them in plain or SEV VMs, inspect the chip presets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from sevsim.abi.policy import PolicyFlags
from sevsim.abi.tpm_channel import MAX_BOOT_FILE_SIZE, MAX_BOOT_FILES
from sevsim.cli.attack import attack_app
from sevsim.cli.attest import show as attest_show
from sevsim.cli.attest import verify as attest_verify
from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_CERT_FILE,
    MAX_GUEST_ELF,
    MAX_ID_AUTH,
    MAX_ID_BLOCK,
    MAX_KEY_FILE,
    MAX_SECRET,
    PLATFORM_HELP,
    check_seconds,
    err,
    fail,
    hex_bytes,
    hex_int,
    platform_option,
    print_json,
    read_input,
    write_cert_table,
)
from sevsim.cli.debug import debug_app
from sevsim.cli.demo import demo as demo_command
from sevsim.cli.kbs import kbs_app
from sevsim.cli.kds import kds_app
from sevsim.cli.measure import measure as measure_command
from sevsim.cli.owner import owner_app
from sevsim.cli.report import report as report_command
from sevsim.cli.report_html import report_html as report_html_command
from sevsim.cli.tpm import integrity_app, tpm_app
from sevsim.cli.validate import idblock as idblock_command
from sevsim.cli.validate import validate as validate_command
from sevsim.errors import ConfigError, SevsimError, VmStateError
from sevsim.hw.chips import DEFAULT_CHIP, PRESETS, GuestMode

if TYPE_CHECKING:
    from sevsim.attest.sev_owner import GuestOwner
    from sevsim.host.vmm import RunResult, VirtualMachine

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
guest_app = typer.Typer(help="Guest programs: build C sources against the sevsim SDK, sign "
                             "them for secure boot.",
                        no_args_is_help=True)
app.add_typer(guest_app, name="guest")
app.add_typer(debug_app, name="debug")
app.add_typer(owner_app, name="owner")
app.add_typer(kds_app, name="kds")
app.add_typer(kbs_app, name="kbs")
app.add_typer(attack_app, name="attack")
app.add_typer(tpm_app, name="tpm")
app.add_typer(integrity_app, name="integrity")
app.command("show")(attest_show)
app.command("verify")(attest_verify)
app.command("measure")(measure_command)
app.command("report")(report_command)
app.command("report-html")(report_html_command)
app.command("validate")(validate_command)
app.command("idblock")(idblock_command)
app.command("demo")(demo_command)


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
        raise fail(error) from None
    err.print(f"built {built}", highlight=False)


@guest_app.command("sign")
def guest_sign(
    elf: Annotated[Path, typer.Argument(help="Guest ELF to sign.")],
    key: Annotated[Path, typer.Option(help="Signing key: an RSA or ECDSA private key, PEM.")],
    cert: Annotated[Path, typer.Option(help="The key's X.509 certificate, PEM or DER.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Signed ELF to write (default: sign ELF in place).")] = None,
) -> None:
    """Append a PKCS#7 signature to a guest ELF, as Linux signs kernel modules."""
    from sevsim.guest.signing import sign_program

    command = "sevsim guest sign"
    program = read_input(elf, command, MAX_GUEST_ELF, "a guest ELF")
    key_pem = read_input(key, command, MAX_KEY_FILE, "a private key")
    cert_bytes = read_input(cert, command, MAX_CERT_FILE, "a certificate")
    try:
        signed = sign_program(program, key_pem, cert_bytes)
    except SevsimError as error:
        raise fail(error, command) from None
    target = output or elf
    try:
        target.write_bytes(signed)
    except OSError as error:
        err.print(f"[bold red]{command}:[/] cannot write {target}: {error.strerror}",
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    err.print(f"signed {target}", highlight=False)


@app.command()
def run(
    elf: Annotated[Path, typer.Argument(help="Guest ELF built with `sevsim guest build`.")],
    mode: Annotated[str, typer.Option(help="none | sev | sev-es | snp")] = "sev",
    chip: Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)}")] = DEFAULT_CHIP,
    memory: Annotated[str, typer.Option(help="Guest memory, e.g. 64M or 1G.")] = "64M",
    vcpus: Annotated[int, typer.Option(help="Number of vCPUs.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds before the VM is stopped.")] = 60.0,
    dump_host_view: Annotated[Path | None, typer.Option(
        help="Write guest memory as the hypervisor reads it after the guest stops.")] = None,
    secret: Annotated[Path | None, typer.Option(
        help="SEV: a guest owner verifies the platform and the launch measurement, then "
             "injects this file's bytes with LAUNCH_SECRET (the guest reads sev_secret()).")
    ] = None,
    policy: Annotated[str | None, typer.Option(
        help="Guest policy, hex (default 0x1, NODBG; with --secret the owner's 0x3).")] = None,
    seed: Annotated[str | None, typer.Option(
        help="Chip seed: a reproducible platform identity (CEK, PEK, PDH, IDs).")] = None,
    min_sev_asid: Annotated[int | None, typer.Option(
        help="The BIOS's SEV-ES ASID Space Limit: SEV-ES/SNP guests get ASIDs below it, SEV "
             "guests from it (CPUID 8000_001F EDX; default: the chip preset's).")] = None,
    platform: Annotated[str | None, typer.Option(help=PLATFORM_HELP)] = None,
    report_data: Annotated[str | None, typer.Option(
        help="SNP: up to 64 bytes, hex, offered to the guest as host input "
             "(sev_host_input(); examples/report.c puts them in REPORT_DATA).")] = None,
    report_out: Annotated[Path | None, typer.Option(
        help="SNP: write the guest's first host-output blob (its 0x4A0-byte attestation "
             "report) here.")] = None,
    certs_out: Annotated[Path | None, typer.Option(
        help="SNP: write the certificate table the guest output second as vcek.pem, "
             "ask.pem and ark.pem into this directory.")] = None,
    host_data: Annotated[str | None, typer.Option(
        help="SNP: 32 bytes, hex, for SNP_LAUNCH_FINISH's HOST_DATA (reports carry them).")
    ] = None,
    id_block: Annotated[Path | None, typer.Option(
        help="SNP: the owner's 0x60-byte ID block for SNP_LAUNCH_FINISH.")] = None,
    id_auth: Annotated[Path | None, typer.Option(
        help="SNP: the 0x1000-byte ID_AUTH_INFO signing the ID block.")] = None,
    kbs: Annotated[str | None, typer.Option(
        help="Give the guest a virtual NIC bridged to this key broker (http://HOST:PORT); "
             "sev_kbs_get_resource() attests to it (examples/kbs_client.c).")] = None,
    secure_boot: Annotated[Path | None, typer.Option(
        help="Secure boot with the keys in this directory (db/, dbx/, optional PK/, KEK/): "
             "the guest's firmware refuses a program db does not trust or dbx revokes.")
    ] = None,
    vtpm: Annotated[bool, typer.Option(
        "--vtpm", help="Give the guest a TPM (one swtpm, stopped with the VM); the guest "
                       "kernel measures the boot into it.")] = False,
    vtpm_state: Annotated[Path | None, typer.Option(
        help="With --vtpm: keep the TPM's state in this directory (default: temporary).")
    ] = None,
    event_log: Annotated[Path | None, typer.Option(
        help="With --vtpm: write the measured boot's TCG event log here.")] = None,
    boot_file: Annotated[list[str] | None, typer.Option(
        "--boot-file", metavar="[NAME=]PATH",
        help="A boot data file (repeatable, in order; named by its file name or NAME): the "
             "guest kernel reads it as GRUB an initrd, measures it into PCR 9 with --vtpm and "
             f"gives it to the program (sev_boot_file). At most {MAX_BOOT_FILES}, of "
             f"{MAX_BOOT_FILE_SIZE >> 20} MiB each.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the run as JSON on stdout (console, exit code, measurements, "
                       "secure-boot verdict, error) instead of the console.")] = False,
) -> None:
    """Run a guest program; its console goes to stdout and its exit code becomes ours."""
    from sevsim.attest.measure import guest_digest
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.boot_disk import boot_files
    from sevsim.host.machine import Host, parse_size

    command = "sevsim"
    image = read_input(elf, command, MAX_GUEST_ELF, "a guest ELF")
    secret_bytes = (read_input(secret, command, MAX_SECRET, "a launch secret")
                    if secret is not None else None)
    try:  # a legacy SEV policy is 32 bits, an SNP policy 64
        launch_policy = None if policy is None else hex_int(
            policy, "policy", 64 if mode == "snp" else 32)
        check_seconds(timeout, "timeout")
    except ConfigError as error:
        raise fail(error, command) from None
    host_input = hex_bytes(report_data, "report data", at_most=64)
    launch_host_data = hex_bytes(host_data, "host data", size=32) if host_data else bytes(32)
    snp_inputs = (host_data, id_block, id_auth)
    if mode != "snp" and any(x is not None for x in snp_inputs):
        raise typer.BadParameter("--host-data, --id-block and --id-auth need --mode snp")
    block = read_input(id_block, command, MAX_ID_BLOCK, "an ID block") if id_block else None
    auth = read_input(id_auth, command, MAX_ID_AUTH, "an ID_AUTH_INFO") if id_auth else None
    if not vtpm and (vtpm_state is not None or event_log is not None):
        raise typer.BadParameter("--vtpm-state and --event-log need --vtpm")
    options = platform_option(platform)
    named = [spec.split("=", 1) if "=" in spec else (Path(spec).name, spec)
             for spec in boot_file or ()]
    try:
        files = boot_files([(name, read_input(Path(path), command, MAX_BOOT_FILE_SIZE,
                                              "a boot file")) for name, path in named])
        host = Host(chip=chip, memory=parse_size(memory) + (64 << 20),
                    seed=None if seed is None else seed.encode(), min_sev_asid=min_sev_asid,
                    platform=options)
        vm = host.create_vm(mode=mode, memory=memory, vcpus=vcpus, secure_boot=secure_boot,
                            vtpm=vtpm, vtpm_state=vtpm_state)
        err.print(f"sevsim: mode={vm.mode} chip={host.chip.name} asid={vm.asid}"
                  f"{'' if vm.hv.mode.encrypted else ' (unencrypted)'} memory={memory} "
                  f"vcpus={vcpus}", highlight=False)
        if vm.vtpm is not None:
            err.print(f"sevsim: vTPM {vm.vtpm.tpm.program} (pid {vm.vtpm.tpm.pid}), state in "
                      f"{vm.vtpm.state_dir}", highlight=False)
        if kbs is not None:
            vm.attach_nic(kbs)
            err.print(f"sevsim: virtual NIC bridged to {kbs}", highlight=False)
        vm.load(image, cmdline=elf.name, files=files)
        vm.host_input = host_input.ljust(64, b"\0") if host_input else b""
        owner = None if secret_bytes is None else _owner(vm, image, secret_bytes, launch_policy)
        measurement = vm.launch(policy=launch_policy, owner=owner, host_data=launch_host_data,
                                id_block=block, id_auth=auth)
        if measurement is not None:
            err.print(f"sevsim: launch measurement {measurement.measure.hex()}", highlight=False)
        digest = None
        if vm.hv.mode is GuestMode.SNP:
            # the host has no command that returns an SNP digest; it computes what the firmware
            # did from what it launched (tests/test_measure.py checks the two agree)
            assert vm.image is not None  # loaded above
            digest = guest_digest("snp", vm.image, vm.memory_size, vcpus, kernel_identity())
            err.print(f"sevsim: SNP launch digest {digest.hex()}", highlight=False)
        summary = {"mode": vm.mode, "chip": host.chip.name, "asid": vm.asid,
                   "encrypted": vm.hv.mode.encrypted, "memory": memory, "vcpus": vcpus,
                   "launch_measurement": None if measurement is None else
                   measurement.measure.hex(),
                   "snp_launch_digest": None if digest is None else digest.hex()}
        if owner is not None and owner.chain is not None:
            err.print(f"sevsim: owner verified the chain to sevsim's simulated "
                      f"{owner.chain.product.capitalize()} ARK and the measurement against "
                      f"{owner.expected_digest.hex()}; injected a {len(secret_bytes or b'')}-byte "
                      "secret", highlight=False)
        try:
            result = vm.run(timeout=timeout)
        except SevsimError as error:
            if json_out:
                print_json(_run_json(summary, vm, None, error))
            raise
        finally:
            if not json_out:
                sys.stdout.write(vm.console)
                sys.stdout.flush()
            if dump_host_view is not None:
                dump_host_view.write_bytes(vm.host_view())
            if event_log is not None and vm.vtpm is not None:
                event_log.write_bytes(vm.vtpm.event_log)
        _write_outputs(vm.outputs, report_out, certs_out)
        if json_out:
            print_json(_run_json(summary, vm, result, None))
    except SevsimError as error:
        raise fail(error) from None
    except OSError as error:
        err.print(f"[bold red]sevsim:[/] cannot write {error.filename}: {error.strerror}",
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(result.exit_code & 0xFF)


def _run_json(summary: dict[str, object], vm: VirtualMachine, result: RunResult | None,
              error: SevsimError | None) -> dict[str, object]:
    """`sevsim run --json`: the launch, then how the run ended, whether or not it faulted."""
    outcome = vm.secure_boot_outcome
    return {**summary,
            "exit_code": None if result is None else result.exit_code,
            "console": vm.console,
            "secure_boot": None if outcome is None else {
                "status": outcome.verdict.status.value,
                "signer": outcome.verdict.signer},
            "error": None if error is None else {"type": type(error).__name__,
                                                 "message": str(error)}}


def _write_outputs(outputs: list[bytes], report_out: Path | None,
                   certs_out: Path | None) -> None:
    """The report (first blob) and the certificate table (second) as snpguest names the
    files; only the table's framing is checked here, the verifier checks the chain."""
    from sevsim.errors import SnpFormatError

    wanted = 2 if certs_out is not None else int(report_out is not None)
    if len(outputs) < wanted:
        raise VmStateError(f"the guest handed over {len(outputs)} blob(s) through host output; "
                           "a report (and a certificate table) were expected")
    if report_out is not None:
        report_out.write_bytes(outputs[0])
    if certs_out is None:
        return
    try:
        write_cert_table(outputs[1], certs_out)
    except SnpFormatError as error:
        raise VmStateError(f"the guest's second output is not a certificate table: {error}"
                           ) from None


def _owner(vm: VirtualMachine, image: bytes, secret: bytes, policy: int | None) -> GuestOwner:
    """A guest owner in this process, who computed the launch digest from the ELF itself and
    trusts only sevsim's simulated AMD root for this chip's product."""
    from sevsim.attest.sev_owner import DEFAULT_POLICY, GuestOwner, expected_launch_digest
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.elf import parse_elf

    if vm.mode not in ("sev", "sev-es"):
        raise ConfigError(f"--secret is the legacy SEV owner flow: --mode sev or sev-es, "
                          f"not {vm.mode}")
    if policy is None:
        policy = DEFAULT_POLICY | (int(PolicyFlags.ES) if vm.mode == "sev-es" else 0)
    try:
        expected = expected_launch_digest(parse_elf(image), vm.memory_size, len(vm.hv.vcpus),
                                          kernel_identity(), vm.mode)
        return GuestOwner(secret, expected, policy, trust="sevsim",
                          product=vm.hypervisor.chip.product.lower())
    except ValueError as error:
        raise ConfigError(str(error)) from None


@app.command()
def chips(json_out: Annotated[bool, typer.Option("--json", help="The presets as JSON.")
                              ] = False) -> None:
    """The chip presets: CPUID signature, Fn8000_001F, ASIDs, modes, tweak, platform."""
    if json_out:
        print_json([{"chip": p.name, "signature": f"0x{p.signature:08X}", "c_bit": p.c_bit,
                     "max_asid": p.max_asid, "min_sev_asid": p.min_sev_asid,
                     "modes": [m.value for m in p.modes if m is not GuestMode.NONE],
                     "tweak": p.tweak.value, "api": f"{p.api_major}.{p.api_minor}",
                     "platform": str(p.platform)} for p in PRESETS.values()])
        return
    table = Table("chip", "signature", "C-bit", "max ASID", "min SEV ASID", "modes", "tweak",
                  "API", "platform (default)")
    for preset in PRESETS.values():
        table.add_row(preset.name, f"0x{preset.signature:08X}", str(preset.c_bit),
                      str(preset.max_asid), str(preset.min_sev_asid),
                      ", ".join(m.value for m in preset.modes if m is not GuestMode.NONE),
                      preset.tweak.value, f"{preset.api_major}.{preset.api_minor}",
                      str(preset.platform))
    Console(width=max(140, Console().width)).print(table)


def main() -> None:
    """The Typer commands; `sevsim` itself is sevsim.cli.fast.main, which guards stdout."""
    app()
