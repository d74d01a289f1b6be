"""`sevsim validate` (a report's claims against a TOML policy) and `sevsim idblock` (the guest
author's signed ID block and ID_AUTH_INFO).

validate exits 0 when every configured check passes, 1 when one fails (each failing check is
printed on its own line, by its stable name), 125 on bad input: a report that does not parse,
a policy with an unknown key, a wrong type or malformed hex.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sevsim.abi.snp_report import REPORT_SIZE
from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_KEY_FILE,
    MAX_POLICY_FILE,
    MAX_REPORT_FILE,
    err,
    fail,
    hex_bytes,
    hex_int,
    print_json,
    read_input,
    read_text,
)
from sevsim.cli.options import JsonOption
from sevsim.errors import SevsimError

EXIT_UNTRUSTED = 1
out = Console(soft_wrap=True, highlight=False)


def read_report(path: Path, command: str) -> bytes:
    """A report file: the raw 0x4A0 bytes, or the same as hex text (as some tools save it)."""
    blob = read_input(path, command, MAX_REPORT_FILE, "a report")
    if len(blob) == REPORT_SIZE:
        return blob
    try:
        decoded = bytes.fromhex(blob.decode("ascii").strip().removeprefix("0x"))
    except (UnicodeDecodeError, ValueError):
        return blob  # let the strict parser say what is wrong with the bytes
    return decoded if len(decoded) == REPORT_SIZE else blob


def validate(
    report: Annotated[Path, typer.Argument(help="The attestation report (0x4A0 bytes or hex).")],
    policy: Annotated[Path, typer.Option("--policy", "-p",
                                         help="The validation policy (TOML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Every check as JSON on stdout.")
                       ] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Print passing checks too.")
                        ] = False,
) -> None:
    """Check a report's claims (measurement, identity, TCB, firmware, guest policy, platform,
    chip, version, signing key) against a policy. The signature is `sevsim verify`'s job."""
    from sevsim.attest.snp_policy import Policy, validate_report

    command = "sevsim validate"
    blob = read_report(report, command)
    text = read_text(policy, command, MAX_POLICY_FILE, "a validation policy")
    try:
        result = validate_report(blob, Policy.from_toml(text))
    except SevsimError as error:
        raise fail(error, command) from None
    if as_json:
        out.print(result.to_json(), markup=False)
    else:
        for check in result.checks:
            if not check.passed:
                out.print(f"FAIL {check.name}: expected {check.expected}; report has "
                          f"{check.actual}", markup=False)
            elif show_all:
                out.print(f"pass {check.name}: {check.actual}", markup=False)
        if result.ok:
            err.print(f"{command}: all {len(result.checks)} checks passed", highlight=False)
        else:
            err.print(f"{command}: {len(result.failed)} of {len(result.checks)} checks "
                      "failed", highlight=False)
    raise typer.Exit(0 if result.ok else EXIT_UNTRUSTED)


def idblock(
    measurement: Annotated[str, typer.Option(help="The expected launch digest, 48 bytes hex.")],
    id_key: Annotated[Path, typer.Option(help="ID key: plain PEM ECDSA P-384 private key.")],
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="Directory for id_block.bin and id_auth.bin.")],
    author_key: Annotated[Path | None, typer.Option(
        help="Author key (PEM ECDSA P-384): signs the ID key; reports then carry its "
             "digest and AUTHOR_KEY_EN.")] = None,
    family_id: Annotated[str, typer.Option(help="FAMILY_ID, 16 bytes hex.")] = "00" * 16,
    image_id: Annotated[str, typer.Option(help="IMAGE_ID, 16 bytes hex.")] = "00" * 16,
    svn: Annotated[int, typer.Option(help="GUEST_SVN.", min=0, max=0xFFFFFFFF)] = 0,
    policy: Annotated[str, typer.Option(help="The guest policy the launch must use, hex.")
                      ] = "0x30000",
    json_out: JsonOption = False,
) -> None:
    """Sign an ID block and ID_AUTH_INFO for SNP_LAUNCH_FINISH; print them as base64 for
    QEMU's sev-snp-guest id-block/id-auth properties."""
    from sevsim.attest.idblock import load_signing_key, make_id_block

    command = "sevsim idblock"
    digest = hex_bytes(measurement, "--measurement", size=48)
    family = hex_bytes(family_id, "--family-id", size=16)
    image = hex_bytes(image_id, "--image-id", size=16)
    try:
        guest_policy = hex_int(policy, "--policy", 64)
        key = load_signing_key(read_input(id_key, command, MAX_KEY_FILE, "a key"), "ID key")
        author = (load_signing_key(read_input(author_key, command, MAX_KEY_FILE, "a key"),
                                   "author key")
                  if author_key is not None else None)
        bundle = make_id_block(digest, key, author, family_id=family, image_id=image, svn=svn,
                               policy=guest_policy)
        output.mkdir(parents=True, exist_ok=True)
        (output / "id_block.bin").write_bytes(bundle.id_block_bytes)
        (output / "id_auth.bin").write_bytes(bundle.id_auth_bytes)
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:
        err.print(f"[bold red]{command}:[/] cannot write {error.filename}: {error.strerror}",
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    printed = {"id-block": bundle.id_block_b64, "id-auth": bundle.id_auth_b64,
               "author-key-enabled": "on" if bundle.author_key_enabled else "off",
               "id-key-digest": bundle.id_key_digest.hex(),
               "author-key-digest": bundle.author_key_digest.hex()}
    if json_out:
        print_json(printed)
    else:
        for name, value in printed.items():
            out.print(f"{name}: {value}", markup=False)
    err.print(f"{command}: wrote {output / 'id_block.bin'} and {output / 'id_auth.bin'}",
              highlight=False)

