"""`sevsim owner`: the guest owner's tools for legacy SEV, in the spirit of sevctl.

export (a simulated platform's certificates) -> verify (the chain, to AMD's or sevsim's
root) -> session (GODH certificate, session buffer, TEK/TIK) -> measure (the expected launch
digest of an image) -> secret (a LAUNCH_SECRET packet, only for the expected measurement).
Exit status: 0 when done (verify: the chain holds), 1 when a chain or a measurement does not
verify, 125 on bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console

from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_CERT_FILE,
    MAX_GUEST_ELF,
    MAX_SECRET,
    MAX_SESSION_FILE,
    MAX_SEV_CERT,
    err,
    fail,
    hex_bytes,
    hex_int,
    print_json,
    read_bounded,
    read_input,
)
from sevsim.cli.options import JsonOption
from sevsim.errors import AttestationError, SevsimError
from sevsim.hw.chips import DEFAULT_CHIP, PRESETS

EXIT_UNTRUSTED = 1
TEK_TIK_FILE = "tek_tik.bin"  # TEK (16 bytes) || TIK (16 bytes); keep it to yourself

owner_app = typer.Typer(help="The guest owner's side: verify a platform, open a launch "
                        "session, compute the expected measurement, package a secret.",
                        no_args_is_help=True)
out = Console(soft_wrap=True)


def _fail(error: Exception) -> typer.Exit:
    """A chain or measurement that does not verify exits 1, anything else 125."""
    return fail(error, "sevsim owner",
                EXIT_UNTRUSTED if isinstance(error, AttestationError) else EXIT_ERROR)


def _read(path: Path, limit: int, what: str) -> bytes:
    return read_input(path, "sevsim owner", limit, what)


PolicyOption = Annotated[str, typer.Option(
    help="Guest policy, hex (bit 0 NODBG, 1 NOKS, 2 ES, 3 NOSEND, 4 DOMAIN, 5 SEV).")]


@owner_app.command()
def export(
    directory: Annotated[Path, typer.Argument(help="Directory to write the certificates to.")],
    chip: Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)}")] = DEFAULT_CHIP,
    seed: Annotated[str | None, typer.Option(
        help="Chip seed: the same seed gives the same platform (keys, IDs, certificates).")
    ] = None,
) -> None:
    """Write a simulated platform's chain: pdh, pek, oca, cek, and the product's (simulated)
    ask and ark, as <name>.cert (sevctl export --full)."""
    from sevsim.attest.sev_chain import PlatformChain
    from sevsim.host.machine import Host

    try:
        host = Host(chip=chip, memory="2M", seed=None if seed is None else seed.encode())
        pdh, chain = host.firmware.pdh_cert_export()
        ark, ask = host.firmware.amd_certs()
        PlatformChain(pdh, chain.pek, chain.oca, chain.cek).save(directory)
        (directory / "ask.cert").write_bytes(ask)
        (directory / "ark.cert").write_bytes(ark)
        cek_id = host.firmware.get_id()[0]
    except (SevsimError, OSError) as error:
        raise _fail(error) from None
    err.print(f"exported the {host.chip.name} platform's chain to {directory} "
              f"(GET_ID {cek_id.hex()[:16]}…)", highlight=False)


@owner_app.command()
def verify(
    directory: Annotated[Path, typer.Argument(
        help="Directory with pdh.cert, pek.cert, oca.cert, cek.cert (and optionally ask.cert, "
             "ark.cert, which must then be the trusted ones).")],
    product: Annotated[str | None, typer.Option(
        help="naples | rome | milan | genoa | turin; found from the CEK when omitted.")] = None,
    trust: Annotated[str, typer.Option(
        help="amd: AMD's real roots; sevsim: sevsim's simulated ones.")] = "amd",
    json_out: JsonOption = False,
) -> None:
    """Verify ARK -> ASK -> CEK -> PEK (also signed by the OCA) -> PDH to a trusted root."""
    from sevsim.abi.sev_cert import AmdCert
    from sevsim.attest.sev_chain import TRUSTS, CaCerts, PlatformChain, Trust
    from sevsim.attest.sev_chain import verify as verify_chain

    if trust not in TRUSTS:
        raise typer.BadParameter(f"trust is one of {', '.join(TRUSTS)}")
    try:
        chain = PlatformChain.load(directory)
        given = [directory / "ark.cert", directory / "ask.cert"]
        ca = (CaCerts(*(AmdCert.from_bytes(read_bounded(p, MAX_CERT_FILE, "a certificate"))
                        for p in given))
              if all(p.exists() for p in given) else None)
        verified = verify_chain(chain, cast(Trust, trust), product, ca)
    except (SevsimError, OSError) as error:
        raise _fail(error) from None
    links = ("ARK (self-signed)", "ARK -> ASK", "ASK -> CEK", "OCA (self-signed)",
             "OCA -> PEK", "CEK -> PEK", "PEK -> PDH")
    if json_out:  # a chain that fails to verify exits 125 above: every link here is ok
        print_json({"ok": True, "trust": verified.trust, "product": verified.product,
                    "links": list(links)})
        return
    anchor = "AMD's" if verified.trust == "amd" else "sevsim's simulated"
    for link in links:
        out.print(f"ok  {link}", highlight=False)
    out.print(f"the chain verifies to {anchor} {verified.product.capitalize()} ARK",
              highlight=False)


@owner_app.command()
def session(
    pdh: Annotated[Path, typer.Argument(help="The platform's pdh.cert (verify it first).")],
    directory: Annotated[Path, typer.Option("--out", help="Directory for the session files.")],
    policy: PolicyOption = "0x3",
) -> None:
    """Open a launch session with a PDH: writes godh.cert and session.bin (for LAUNCH_START)
    and tek_tik.bin (the transport keys: yours only)."""
    from sevsim.abi.sev_cert import SevCert
    from sevsim.attest.sev_owner import make_session

    try:
        made = make_session(SevCert.from_bytes(_read(pdh, MAX_SEV_CERT, "a PDH certificate")),
                            hex_int(policy, "policy", 32))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "godh.cert").write_bytes(made.godh_cert.to_bytes())
        (directory / "session.bin").write_bytes(made.session.to_bytes())
        fd = os.open(directory / TEK_TIK_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as keys:
            keys.write(made.keys.tek + made.keys.tik)
    except (SevsimError, OSError) as error:
        raise _fail(error) from None
    err.print(f"session for policy 0x{made.policy:x} written to {directory}", highlight=False)


@owner_app.command()
def measure(
    elf: Annotated[Path, typer.Argument(help="Guest ELF built with `sevsim guest build`.")],
    memory: Annotated[str, typer.Option(help="Guest memory of the VM, e.g. 64M.")] = "64M",
    vcpus: Annotated[int, typer.Option(help="vCPUs of the VM.")] = 1,
    json_out: JsonOption = False,
) -> None:
    """Print the expected launch digest (hex) of an SEV guest: SHA-256 over what the VMM
    will pass to LAUNCH_UPDATE_DATA, computed without running anything."""
    digest = _digest(elf, memory, vcpus).hex()
    if json_out:
        print_json({"mode": "sev", "memory": memory, "vcpus": vcpus, "digest": digest})
        return
    print(digest)


def _digest(elf: Path, memory: str, vcpus: int) -> bytes:
    from sevsim.attest.measure import Mode, guest_digest
    from sevsim.guest.kernel import kernel_identity
    from sevsim.host.elf import parse_elf
    from sevsim.host.machine import parse_size

    image = _read(elf, MAX_GUEST_ELF, "a guest ELF")
    try:
        return guest_digest(Mode.SEV, parse_elf(image), parse_size(memory), vcpus,
                            kernel_identity())
    except (SevsimError, ValueError) as error:
        raise _fail(error) from None


@owner_app.command()
def secret(
    session_dir: Annotated[Path, typer.Argument(help="Directory written by `owner session`.")],
    launch_measure: Annotated[str, typer.Option(
        help="LAUNCH_MEASURE from the platform: MEASURE || MNONCE, 96 hex digits.")],
    secret_file: Annotated[Path, typer.Option("--secret", help="The secret (1..4092 bytes).")],
    directory: Annotated[Path, typer.Option("--out", help="Directory for the packet files.")],
    elf: Annotated[Path | None, typer.Option(help="Expected guest ELF (or give --digest).")
                   ] = None,
    digest: Annotated[str | None, typer.Option(help="Expected launch digest, hex.")] = None,
    memory: Annotated[str, typer.Option(help="With --elf: guest memory.")] = "64M",
    vcpus: Annotated[int, typer.Option(help="With --elf: vCPUs.")] = 1,
    policy: PolicyOption = "0x3",
    chip: Annotated[str, typer.Option(help="Platform whose API version and build to assume."
                                      )] = DEFAULT_CHIP,
    api: Annotated[str | None, typer.Option(help="Platform API version, e.g. 1.55 "
                                            "(PLATFORM_STATUS); overrides --chip.")] = None,
    build: Annotated[int | None, typer.Option(help="Platform build; overrides --chip.")
                     ] = None,
) -> None:
    """Check LAUNCH_MEASURE against the expected launch and, only if it matches, write the
    LAUNCH_SECRET packet: secret_header.bin (52 bytes) and secret_data.bin."""
    from sevsim.abi.sev_cert import SevCert
    from sevsim.abi.sev_session import Session, TransportKeys
    from sevsim.abi.status import PlatformState, PlatformStatus
    from sevsim.attest.sev_owner import LaunchSession, verify_measurement

    if (elf is None) == (digest is None):
        raise typer.BadParameter("give exactly one of --elf and --digest")
    payload = _read(secret_file, MAX_SECRET, "a launch secret")  # every input read up front
    expected = _digest(elf, memory, vcpus) if elf else hex_bytes(digest or "", "--digest", size=32)
    preset = PRESETS.get(chip)
    if preset is None:
        raise typer.BadParameter(f"chip is one of {', '.join(PRESETS)}")
    major, minor = preset.api_major, preset.api_minor
    if api is not None:
        try:
            major, minor = (int(part) for part in api.split("."))
        except ValueError:
            raise typer.BadParameter(f"API version {api!r} is not MAJOR.MINOR") from None
    status = PlatformStatus(major, minor, PlatformState.WORKING, 0, 0,
                            preset.build if build is None else build, 0)
    try:
        keys = _read(session_dir / TEK_TIK_FILE, MAX_SESSION_FILE, "a key file")
        if len(keys) != 32:
            raise ValueError(f"{TEK_TIK_FILE} is {len(keys)} bytes, not 32")
        launch = LaunchSession(
            SevCert.from_bytes(_read(session_dir / "godh.cert", MAX_SEV_CERT, "a certificate")),
            Session.from_bytes(_read(session_dir / "session.bin", MAX_SESSION_FILE,
                                     "a session")),
            hex_int(policy, "policy", 32), TransportKeys(keys[:16], keys[16:]))
        measured = hex_bytes(launch_measure, "--launch-measure", size=48)
        verified = verify_measurement(launch, measured, status, expected)
        header, data = verified.seal_secret(payload)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "secret_header.bin").write_bytes(header.to_bytes())
        (directory / "secret_data.bin").write_bytes(data)
    except (SevsimError, ValueError, OSError) as error:
        raise _fail(error) from None
    err.print(f"measurement matches {expected.hex()}; LAUNCH_SECRET packet written to "
              f"{directory}", highlight=False)

