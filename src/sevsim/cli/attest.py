"""`sevsim show` and `sevsim verify`: read and verify SNP attestation reports, from real AMD
machines or from sevsim's simulated platform.

Exit status: 0 when shown / when every check holds; 1 when a verification check fails (each
one named on stderr); 125 on input that cannot be read at all.
"""

from __future__ import annotations

import datetime
import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from sevsim.cli.common import (
    ENDORSEMENT_FILE,
    EXIT_ERROR,
    MAX_CERT_FILE,
    MAX_REPORT_FILE,
    err,
    fail,
    progress,
    read_bounded,
    read_input,
)
from sevsim.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

    from sevsim.attest.snp_verify import CertBundle, Check

EXIT_UNVERIFIED = 1
out = Console(soft_wrap=True)
CertsOption = Annotated[Path | None, typer.Option(
    help="A directory (vcek.pem/vcek.der or vlek.*, ask.pem/asvk.pem, ark.pem, "
         "cert_chain.pem) or an extended report's certificate table file.")]
TrustOption = Annotated[str, typer.Option(
    help="amd: AMD's real roots (default). sevsim: sevsim's simulated roots, for reports "
         "from sevsim's platform.")]


def show(
    report: Annotated[Path, typer.Argument(help="The report: 0x4A0 bytes, or hex text.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                       ] = False,
    product: Annotated[str | None, typer.Option(
        help="milan | genoa | turin: how to decode TCBs (default: the report's CPUID; a v2 "
             "report is taken as Milan/Genoa unless its chip id is Turin's 8 bytes).")] = None,
) -> None:
    """Print every field of an SNP attestation report (v2, v3, v5), decoded."""
    from sevsim.abi.snp_report import AttestationReport
    from sevsim.attest.snp_show import flatten, report_fields
    from sevsim.attest.snp_verify import load_report, product_generation
    from sevsim.errors import SnpFormatError

    blob = load_report(read_input(report, "sevsim show", MAX_REPORT_FILE, "a report"))
    try:
        parsed = AttestationReport.from_bytes(blob)
        fields = report_fields(parsed, None if product is None else product_generation(product))
    except (SnpFormatError, ValueError) as error:
        raise fail(error, "sevsim show") from None
    if as_json:
        print(json.dumps(fields, indent=2))
        return
    table = Table("field", "value", title=f"SNP attestation report v{parsed.version} "
                  f"({fields['product']})")
    for name, value in flatten(fields):
        table.add_row(name, value)
    Console(width=max(140, out.width)).print(table)


def verify(
    report: Annotated[Path, typer.Argument(help="The report: 0x4A0 bytes, or hex text.")],
    certs: CertsOption = None,
    product: Annotated[str | None, typer.Option(
        help="milan | genoa | turin (default: from the report's CPUID; needed for some v2 "
             "reports).")] = None,
    trust: TrustOption = "amd",
    kds: Annotated[str | None, typer.Option(
        help="KDS base URL to fetch missing certificates and the CRL from, e.g. "
             "https://kdsintf.amd.com or a `sevsim kds serve` URL.")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Directory caching KDS answers (a second run makes no request).")] = None,
    crl: Annotated[bool, typer.Option(
        "--crl", help="Check the CRL (from --crl-file, or fetched from --kds).")] = False,
    crl_file: Annotated[Path | None, typer.Option(
        help="A CRL (DER or PEM) to check against; implies --crl.")] = None,
    at: Annotated[str | None, typer.Option(
        help="Check every certificate and the CRL as of this time, ISO 8601 (e.g. "
             "2025-06-01T00:00:00Z; no zone means UTC), not now: old evidence as of when it "
             "was produced.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")
                       ] = False,
    endorsement: Annotated[Path | None, typer.Option(
        help="A GCE launch endorsement (VMLaunchEndorsement) to check against MEASUREMENT "
             "(default: the one in --certs, if any).")] = None,
    vcpus: Annotated[int | None, typer.Option(
        help="The VM's vCPU count: the endorsement's golden measurement for it must be "
             "MEASUREMENT (default: any count it endorses).")] = None,
    google_root: Annotated[Path | None, typer.Option(
        help="Google's GCE TCB root (GCE-cc-tcb-root_1.crt) to check the endorsement's "
             "signer against (default with --trust sevsim: sevsim's simulated one).")] = None,
) -> None:
    """Verify an SNP report: signature, VCEK/VLEK -> ASK/ASVK -> ARK, TCB, chip id, CRL, and
    a GCE launch endorsement when there is one."""
    from sevsim.attest.gce_endorsement import load_google_root, simulated_google_root
    from sevsim.attest.kds_client import KdsClient
    from sevsim.attest.snp_verify import TRUSTS, Trust, load_report, verify_report_chain
    from sevsim.errors import EndorsementFormatError

    if trust not in TRUSTS:
        raise typer.BadParameter(f"--trust must be one of {', '.join(TRUSTS)}")
    if certs is None and kds is None:
        raise typer.BadParameter("give --certs DIR|FILE, --kds URL, or both")
    if endorsement is not None and google_root is None and trust != "sevsim":
        raise typer.BadParameter("sevsim does not ship Google's GCE TCB root: give "
                                 "--google-root GCE-cc-tcb-root_1.crt (or --trust sevsim)")
    now = None if at is None else _instant(at)
    command = "sevsim verify"
    blob = load_report(read_input(report, command, MAX_REPORT_FILE, "a report"))
    given = (None if endorsement is None
             else read_input(endorsement, command, MAX_CERT_FILE, "an endorsement"))
    crl_bytes = (read_input(crl_file, command, MAX_CERT_FILE, "a CRL")
                 if crl_file is not None else None)
    bundle, found = load_certs(certs, command)
    fetching = progress(f"KDS {kds}", None) if kds is not None else nullcontext(None)
    with fetching as fetched:
        try:
            client = None if kds is None else KdsClient(kds, cache_dir=cache,
                                                        on_request=fetched)
            root = (None if google_root is None else load_google_root(
                read_input(google_root, command, MAX_CERT_FILE, "a root certificate")))
        except (ConfigError, EndorsementFormatError) as error:
            raise fail(error, command) from None
        result = verify_report_chain(blob, bundle, trust=cast(Trust, trust), product=product,
                                     kds=client, crl=crl_bytes, check_revocation=crl, now=now)
    endorsed = given if given is not None else found
    if root is None and trust == "sevsim":
        root = simulated_google_root()
    if endorsed is not None and root is None:
        err.print("sevsim verify: note: the certificates hold a GCE launch endorsement; give "
                  "--google-root to check it", highlight=False)
    elif result.report is not None and (endorsed is not None or vcpus is not None
                                        or google_root is not None):
        result = replace(result, checks=(*result.checks, _endorsement_check(
            endorsed, result.report.measurement, root, vcpus, now)))
    if as_json:
        print(json.dumps({"ok": result.ok, "trust": result.trust,
                          "product": result.generation.value if result.generation else None,
                          "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail}
                                     for c in result.checks]}, indent=2))
    else:
        for check in result.checks:
            mark = "[green]ok[/]  " if check.passed else "[red]FAIL[/]"
            out.print(f"{mark} {check.name:<13} {check.detail}", highlight=False)
    for check in result.failures:
        err.print(f"[bold red]sevsim verify:[/] {check.name}: {check.detail}", highlight=False)
    if not result.ok:
        raise typer.Exit(EXIT_UNVERIFIED)
    if not as_json:
        endorsed_by = (", launch endorsed" if any(c.name == "endorsement" for c in result.checks)
                       else "")
        out.print(f"verified: report v{result.report.version if result.report else '?'} "
                  f"to {'AMD' if trust == 'amd' else 'sevsim simulated'} "
                  f"{result.generation.value if result.generation else ''} ARK{endorsed_by}",
                  highlight=False)


def load_certs(certs: Path | None, command: str) -> tuple[CertBundle, bytes | None]:
    """`--certs` as a bundle (none given: an empty one) and the GCE launch endorsement beside
    the certificates, if any; exit 125 naming what cannot be read."""
    from sevsim.attest.gce_endorsement import endorsement_in_cert_table
    from sevsim.attest.snp_verify import CertBundle
    from sevsim.errors import EndorsementFormatError, SnpFormatError

    try:
        if certs is None:
            return CertBundle(), None
        if certs.is_dir():
            found = (read_bounded(certs / ENDORSEMENT_FILE, MAX_CERT_FILE, "an endorsement")
                     if (certs / ENDORSEMENT_FILE).is_file() else None)
            return CertBundle.from_directory(certs), found
        table = read_bounded(certs, MAX_CERT_FILE, "a certificate table")
        return CertBundle.from_cert_table(table, str(certs)), endorsement_in_cert_table(table)
    except (SnpFormatError, ConfigError, EndorsementFormatError) as error:
        raise fail(error, command) from None
    except OSError as error:
        err.print(f"[bold red]{command}:[/] cannot read {error.filename or certs}: "
                  f"{error.strerror}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None


def _instant(text: str) -> datetime.datetime:
    """`--at`: an ISO 8601 date or time; without a zone, UTC (the certificates' own zone)."""
    try:
        when = datetime.datetime.fromisoformat(text)
        return (when.replace(tzinfo=datetime.UTC) if when.tzinfo is None
                else when.astimezone(datetime.UTC))
    except (ValueError, OverflowError):
        raise typer.BadParameter(f"--at {text!r} is not an ISO 8601 time in years 1-9999, "
                                 "e.g. 2025-06-01T00:00:00Z") from None


def _endorsement_check(endorsement: bytes | None, measurement: bytes,
                       root: x509.Certificate | None, vcpus: int | None,
                       now: datetime.datetime | None) -> Check:
    """The GCE launch endorsement as one more named check of `sevsim verify`."""
    from sevsim.attest.gce_endorsement import verify_endorsement
    from sevsim.attest.snp_verify import Check
    from sevsim.errors import EndorsementError

    if endorsement is None:
        return Check("endorsement", False, "none given (--endorsement) and none among the "
                     "certificates")
    assert root is not None  # verify asks for --google-root unless it has sevsim's
    try:
        launch = verify_endorsement(endorsement, measurement, root=root, vcpus=vcpus, at=now)
    except EndorsementError as error:
        return Check("endorsement", False, str(error))
    return Check("endorsement", True, launch.summary())
