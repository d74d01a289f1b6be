"""`sevsim tpm quote|verify` (vTPM attestation: an AK, a quote, the event log) and `sevsim
integrity learn|check` (GCE-style integrity monitoring of a boot against a learned baseline).

Exit statuses as `sevsim verify`: 0 when the evidence verifies / the boot passes both
validations, 1 when a check fails (named on stderr), 125 on input that cannot be read or a
vTPM that cannot be reached.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console

from sevsim.abi import tpm2
from sevsim.cli.attest import CertsOption, TrustOption, load_certs
from sevsim.cli.common import (
    EXIT_ERROR,
    MAX_EVENT_LOG,
    MAX_POLICY_FILE,
    MAX_TPM_STRUCT,
    err,
    fail,
    hex_bytes,
    read_input,
    read_text,
)
from sevsim.cli.options import JsonOption
from sevsim.errors import PolicyError, QuoteError, SevsimError, SnpVerificationError

if TYPE_CHECKING:
    from sevsim.attest.tpm_boot import BootExpectation, VerifiedBoot
    from sevsim.host.vtpm import VtpmSocket

EXIT_FAILED = 1
MAX_VTPM_EVIDENCE = 16 << 10  # a report and three TPM structures, each far below 4 KiB
MAX_NONCE = 64  # qualifyingData is a TPM2B_DATA: at most the largest digest, SHA-512's
TCTI_PREFIX = "swtpm:path="
out = Console(soft_wrap=True, highlight=False)
tpm_app = typer.Typer(help="vTPM attestation: quote with an AK, verify quote and event log.",
                      no_args_is_help=True)
integrity_app = typer.Typer(help="Integrity monitoring: learn a boot's baseline, check later "
                                 "boots (early and late boot).", no_args_is_help=True)

AkOption = Annotated[Path | None, typer.Option("--ak", help="The AK's TPMT_PUBLIC (ak.pub).")]
QuoteOption = Annotated[Path | None, typer.Option(
    "--quote", help="The quote's TPMS_ATTEST (quote.msg).")]
SignatureOption = Annotated[Path | None, typer.Option(
    "--signature", help="The quote's TPMT_SIGNATURE (quote.sig).")]
NonceOption = Annotated[str | None, typer.Option(
    "--nonce", help="The nonce the quote must be over, hex.")]
LogOption = Annotated[Path, typer.Option(
    "--event-log", help="The TCG event log (binary_bios_measurements).")]


@tpm_app.command("quote")
def quote(
    nonce: Annotated[str, typer.Option(help="qualifyingData, hex (at most 64 bytes).")],
    pcrs: Annotated[str, typer.Option(
        help="PCRs to quote, as tpm2-tools writes them: sha256:0,4,7+sha384:0.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Directory for ak.pub, ak.pem, quote.msg, quote.sig, pcrs "
                                "and pcrs.serialized.")],
    state: Annotated[Path | None, typer.Option(
        help="A vTPM state directory: run swtpm on it, resuming the PCRs its last "
             "TPM2_Shutdown(STATE) saved, and shut it down that way again.")] = None,
    tcti: Annotated[str | None, typer.Option(
        help="A running swtpm: swtpm:path=SOCKET (its control socket is SOCKET.ctrl).")
    ] = None,
) -> None:
    """Quote PCRs with an attestation key created in the vTPM; write the files
    tpm2_checkquote and `sevsim tpm verify` read."""
    from cryptography.hazmat.primitives import serialization

    from sevsim.attest.tpm_boot import parse_selection
    from sevsim.attest.tpm_quote import ak_public_key
    from sevsim.host.vtpm import Vtpm, VtpmSocket

    command = "sevsim tpm quote"
    qualifying = hex_bytes(nonce, "--nonce", at_most=MAX_NONCE)
    try:
        selection = parse_selection(pcrs)
    except PolicyError as error:
        raise typer.BadParameter(f"--pcrs: {error}") from None
    if (state is None) == (tcti is None):
        raise typer.BadParameter("give exactly one of --state DIR and --tcti swtpm:path=...")
    if tcti is not None and not tcti.startswith(TCTI_PREFIX):
        raise typer.BadParameter(f"--tcti {tcti!r}: only {TCTI_PREFIX}SOCKET is spoken")
    try:
        if state is not None:
            with Vtpm(state, resume=True) as tpm:
                try:
                    ak_public, attest, signature, values = _quote(tpm, qualifying, selection)
                finally:  # the state keeps the boot's PCRs for the next quote, whatever failed
                    tpm.shutdown()
        else:
            assert tcti is not None
            ak_public, attest, signature, values = _quote(
                VtpmSocket(tcti.removeprefix(TCTI_PREFIX).split(",")[0]), qualifying,
                selection)
        pem = ak_public_key(ak_public).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        output.mkdir(parents=True, exist_ok=True)
        for name, data in (("ak.pub", ak_public), ("ak.pem", pem), ("quote.msg", attest),
                           ("quote.sig", signature),
                           ("pcrs", b"".join(values[alg][pcr] for alg, pcrs_ in
                                             selection.items() for pcr in pcrs_)),
                           ("pcrs.serialized", tpm2_tools_serialized(selection, values))):
            (output / name).write_bytes(data)
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:
        err.print(f"{command}: cannot write {error.filename}: {error.strerror}",
                  markup=False, highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    out.print(f"tpm2_checkquote -u {output / 'ak.pub'} -m {output / 'quote.msg'} "
              f"-s {output / 'quote.sig'} -f {output / 'pcrs.serialized'} -g sha256 "
              f"-q {qualifying.hex()}", markup=False)


# tpm2-tools' "serialized" PCR file (lib/pcr.c pcr_fwrite_serialized): its C structures as
# x86-64 lays them out in memory, little-endian. TPML_PCR_SELECTION is a count and 16
# TPMS_PCR_SELECTIONs (hash, sizeofSelect, 4 select bytes, 1 byte of padding); then the
# number of TPML_DIGESTs, each a count and 8 TPM2B_DIGESTs (size, 64-byte buffer), filled in
# selection order 8 at a time, as TPM2_PCR_Read returns them.
_SERIALIZED_BANKS = 16
_SERIALIZED_SELECT = 4
_SERIALIZED_DIGESTS = 8
_SERIALIZED_DIGEST_SIZE = 64


def tpm2_tools_serialized(selection: Mapping[int, Sequence[int]],
                          values: Mapping[int, Mapping[int, bytes]]) -> bytes:
    """The PCR values in the file format tpm2_quote -o writes and tpm2_checkquote -f reads
    by default; unlike its "values" format, tpm2-tools 5.4 reads it right for 8 PCRs or more."""
    header = struct.pack("<I", len(selection))
    for alg, pcrs in selection.items():
        bitmap = sum(1 << p for p in pcrs).to_bytes(_SERIALIZED_SELECT, "little")
        header += struct.pack("<HB4sx", alg, tpm2.PCR_SELECT_MIN, bitmap)
    header = header.ljust(4 + 8 * _SERIALIZED_BANKS, b"\0")
    digests = [values[alg][pcr] for alg, pcrs in selection.items() for pcr in pcrs]
    groups = [digests[i:i + _SERIALIZED_DIGESTS]
              for i in range(0, len(digests), _SERIALIZED_DIGESTS)]
    body = b"".join(
        struct.pack("<I", len(group))
        + b"".join(struct.pack("<H", len(d)) + d.ljust(_SERIALIZED_DIGEST_SIZE, b"\0")
                   for d in group).ljust(_SERIALIZED_DIGESTS * (2 + _SERIALIZED_DIGEST_SIZE),
                                         b"\0")
        for group in groups)
    return header + struct.pack("<I", len(groups)) + body


def _quote(tpm: VtpmSocket, nonce: bytes, selection: dict[int, tuple[int, ...]]
           ) -> tuple[bytes, bytes, bytes, dict[int, dict[int, bytes]]]:
    """Create the AK, quote, read the quoted values, flush the AK."""
    ak = tpm.create_ak()
    try:
        attest, signature = tpm.quote(ak.handle, nonce, selection)
        values = tpm.pcr_read(selection)
    finally:
        tpm.flush(ak.handle)
    return ak.public, attest, signature, values


def _evidence(ak: Path | None, quote_file: Path | None, signature: Path | None,
              nonce: str | None, command: str, required: bool
              ) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The AK, quote, signature and nonce, all four given or (when not `required`) none."""
    given = [x is not None for x in (ak, quote_file, signature, nonce)]
    if not any(given) and not required:
        return None
    if not all(given):
        raise typer.BadParameter("--ak, --quote, --signature and --nonce go together")
    assert ak is not None and quote_file is not None and signature is not None
    return (read_input(ak, command, MAX_TPM_STRUCT, "a TPMT_PUBLIC"),
            read_input(quote_file, command, MAX_TPM_STRUCT, "a TPMS_ATTEST"),
            read_input(signature, command, MAX_TPM_STRUCT, "a TPMT_SIGNATURE"),
            hex_bytes(nonce, "--nonce", at_most=MAX_NONCE))


def _refused(error: QuoteError | SnpVerificationError, command: str, as_json: bool
             ) -> typer.Exit:
    """FAIL with the reason (a QuoteError's; "report" for an SNP report that does not verify)."""
    reason = error.reason if isinstance(error, QuoteError) else "report"
    message = str(error) if isinstance(error, QuoteError) else f"report: {error}"
    if as_json:
        out.print(json.dumps({"ok": False, "reason": reason, "message": message}),
                  markup=False)
    err.print(f"{command}: FAIL {message}", markup=False, highlight=False)
    return typer.Exit(EXIT_FAILED)


def _verified(evidence: tuple[bytes, bytes, bytes, bytes], log: bytes, command: str, as_json: bool,
              expected: BootExpectation | None = None,
              required: Mapping[int, Sequence[int]] | None = None) -> VerifiedBoot:
    from sevsim.attest.tpm_boot import verify_boot

    try:
        return verify_boot(*evidence, log, expected, required)
    except QuoteError as error:
        raise _refused(error, command, as_json) from None


@tpm_app.command("verify")
def verify(
    event_log: Annotated[Path | None, typer.Option(
        "--event-log", help="The TCG event log (binary_bios_measurements); optional with "
                            "--evidence.")] = None,
    ak: AkOption = None,
    quote_file: QuoteOption = None,
    signature: SignatureOption = None,
    nonce: NonceOption = None,
    pcrs: Annotated[str | None, typer.Option(
        help="The PCRs the quote must cover, e.g. sha256:0,4,7 (default: every PCR the log "
             "extends); events of other PCRs are then not used.")] = None,
    expect: Annotated[Path | None, typer.Option(
        help="Expected values, JSON: {\"pcrs\": {\"sha256\": {\"4\": HEX}}, \"program_sha256\": "
             "HEX, \"technology\": \"AMD_SEV_SNP\", \"secure_boot\": true}, keys optional.")
    ] = None,
    as_json: JsonOption = False,
    snp_evidence: Annotated[Path | None, typer.Option(
        "--evidence", help="The SNP-bound vTPM's evidence (SNP report binding the AK, AK, "
                           "quote, PCR values), instead of --ak, --quote and --signature.")
    ] = None,
    certs: CertsOption = None,
    trust: TrustOption = "amd",
    policy: Annotated[Path | None, typer.Option(
        help="With --evidence: a validation policy (TOML, as `sevsim validate`) the SNP "
             "report must meet.")] = None,
) -> None:
    """Verify a quote and the event log together: signature, nonce, PCR selection, the log
    replayed to the quote's digest, and the expected values. With --evidence, the SNP report
    first: its chain (--certs, --trust), --policy, and its binding of the AK and nonce."""
    from sevsim.attest.tpm_boot import (
        BootExpectation,
        bank_name,
        describe,
        parse_selection,
        show_selection,
    )

    command = "sevsim tpm verify"
    try:
        required = None if pcrs is None else parse_selection(pcrs)
    except PolicyError as error:
        raise typer.BadParameter(f"--pcrs: {error}") from None
    if snp_evidence is None and (certs is not None or policy is not None):
        raise typer.BadParameter("--certs and --policy go with --evidence")
    if snp_evidence is not None and any(x is not None for x in (ak, quote_file, signature,
                                                                 pcrs)):
        raise typer.BadParameter("--evidence replaces --ak, --quote, --signature and --pcrs")
    if snp_evidence is None and event_log is None:
        raise typer.BadParameter("--event-log is needed with --ak, --quote and --signature")
    expected = None
    if expect is not None:
        text = read_text(expect, command, MAX_POLICY_FILE, "an expectation")
        try:
            expected = BootExpectation.from_json(text)
        except PolicyError as error:
            raise fail(error, command) from None
    if snp_evidence is not None:
        _verify_snp(snp_evidence, hex_bytes(nonce, "--nonce", at_most=MAX_NONCE), event_log,
                    expected, certs, trust, policy, command, as_json)
        return
    evidence = _evidence(ak, quote_file, signature, nonce, command, required=True)
    assert evidence is not None and event_log is not None
    log = read_input(event_log, command, MAX_EVENT_LOG, "an event log")
    boot = _verified(evidence, log, command, as_json, expected, required)
    facts = boot.facts
    if as_json:
        out.print(json.dumps({
            "ok": True, "nonce": boot.quote.extra_data.hex(),
            "pcrs": {bank_name(alg): {str(p): v.hex() for p, v in values.items()}
                     for alg, values in boot.pcrs.items()},
            "events": [{"pcr": e.pcr, "type": e.event_type, "description": describe(e)}
                       for e in boot.log.events],
            "technology": facts.technology.name if facts.technology is not None else None,
            "secure_boot": facts.secure_boot,
            "programs_sha256": [p.hex() for p in facts.programs]}, indent=2), markup=False)
        return
    for alg, values in boot.pcrs.items():
        for pcr, value in values.items():
            out.print(f"{bank_name(alg)}:{pcr:<2} {value.hex()}", markup=False)
    technology = facts.technology.name if facts.technology is not None else "not logged"
    secure_boot = {True: "on", False: "off", None: "not logged"}[facts.secure_boot]
    err.print(f"{command}: verified: quote over {show_selection(boot.quote.pcr_select)}, "
              f"nonce {boot.quote.extra_data.hex()}, {len(boot.log.events)} events replayed; "
              f"technology {technology}, secure boot {secure_boot}"
              f"{', expectations met' if expected else ''}", markup=False, highlight=False)


def _verify_snp(path: Path, nonce: bytes, event_log: Path | None,
                expected: BootExpectation | None, certs: Path | None, trust: str,
                policy: Path | None, command: str, as_json: bool) -> None:
    """`tpm verify --evidence`: verify_vtpm_evidence, then print as for a host's vTPM."""
    from sevsim.attest.snp_policy import Policy
    from sevsim.attest.snp_verify import TRUSTS, Trust
    from sevsim.attest.svsm_vtpm import verify_vtpm_evidence
    from sevsim.attest.tpm_boot import BootExpectation, bank_name, show_selection

    if trust not in TRUSTS:
        raise typer.BadParameter(f"--trust must be one of {', '.join(TRUSTS)}")
    if not nonce:
        raise typer.BadParameter("--evidence needs --nonce")
    blob = read_input(path, command, MAX_VTPM_EVIDENCE, "vTPM evidence")
    log = (None if event_log is None
           else read_input(event_log, command, MAX_EVENT_LOG, "an event log"))
    report_policy = None
    if policy is not None:
        text = read_text(policy, command, MAX_POLICY_FILE, "a validation policy")
        try:
            report_policy = Policy.from_toml(text)
        except SevsimError as error:
            raise fail(error, command) from None
    bundle, _ = load_certs(certs, command)
    # PCR values alone need no log; what the boot was (program, technology, Secure Boot) does
    boot_facts = (expected if expected is not None and (
        log is not None or expected != BootExpectation(pcrs=expected.pcrs)) else None)
    try:
        verified = verify_vtpm_evidence(
            blob, nonce, bundle, trust=cast(Trust, trust), policy=report_policy,
            event_log=log, expected=boot_facts,
            expected_pcrs=None if expected is None else expected.pcrs)
    except (QuoteError, SnpVerificationError) as error:
        raise _refused(error, command, as_json) from None
    report, boot = verified.report, verified.boot
    if as_json:
        out.print(json.dumps({
            "ok": True, "nonce": verified.quote.extra_data.hex(),
            "measurement": report.measurement.hex(), "vmpl": report.vmpl,
            "ak_public": verified.ak_public.hex(),
            "pcrs": {bank_name(alg): {str(p): v.hex() for p, v in values.items()}
                     for alg, values in verified.pcrs.items()},
            "events": None if boot is None else len(boot.log.events)}, indent=2),
            markup=False)
        return
    for alg, values in verified.pcrs.items():
        for pcr, value in values.items():
            out.print(f"{bank_name(alg)}:{pcr:<2} {value.hex()}", markup=False)
    replayed = "" if boot is None else f", {len(boot.log.events)} events replayed"
    err.print(f"{command}: verified: SNP report (VMPL{report.vmpl}, measurement "
              f"{report.measurement.hex()}) binds the AK and nonce; quote over "
              f"{show_selection(verified.quote.pcr_select)}, nonce "
              f"{verified.quote.extra_data.hex()}{replayed}"
              f"{', expectations met' if expected else ''}", markup=False, highlight=False)


@integrity_app.command("learn")
def learn(
    event_log: LogOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="The baseline to write, JSON.")],
    ak: AkOption = None,
    quote_file: QuoteOption = None,
    signature: SignatureOption = None,
    nonce: NonceOption = None,
) -> None:
    """Learn an integrity policy baseline from a boot's event log (verified against a quote
    first when --ak, --quote, --signature and --nonce are given)."""
    from sevsim.abi.tcg_eventlog import EventLog
    from sevsim.attest.integrity import IntegrityBaseline

    command = "sevsim integrity learn"
    evidence = _evidence(ak, quote_file, signature, nonce, command, required=False)
    raw = read_input(event_log, command, MAX_EVENT_LOG, "an event log")
    try:
        log = (_verified(evidence, raw, command, False).log if evidence is not None
               else EventLog.from_bytes(raw))
        baseline = IntegrityBaseline.learn(log)
        output.write_text(baseline.to_json() + "\n")
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:
        err.print(f"{command}: cannot write {error.filename}: {error.strerror}", markup=False,
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    err.print(f"{command}: {len(baseline.events)} events of PCRs "
              f"{','.join(map(str, sorted({e.pcr for e in baseline.events})))} "
              f"written to {output}", markup=False, highlight=False)


@integrity_app.command("check")
def check(
    baseline: Annotated[Path, typer.Option(help="The baseline `integrity learn` wrote.")],
    event_log: LogOption,
    ak: AkOption = None,
    quote_file: QuoteOption = None,
    signature: SignatureOption = None,
    nonce: NonceOption = None,
    relearn: Annotated[bool, typer.Option(
        help="Then make this boot the baseline (GCE's auto-learn), whatever the result.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Validate a boot against the baseline: early boot (firmware, PCRs 0-7 up to their
    separators) and late boot (boot loader onwards), each pass or fail, naming what changed."""
    from sevsim.abi.tcg_eventlog import EventLog
    from sevsim.attest.integrity import IntegrityBaseline

    command = "sevsim integrity check"
    evidence = _evidence(ak, quote_file, signature, nonce, command, required=False)
    text = read_text(baseline, command, MAX_POLICY_FILE, "a baseline")
    raw = read_input(event_log, command, MAX_EVENT_LOG, "an event log")
    try:
        learned = IntegrityBaseline.from_json(text)
        log = (_verified(evidence, raw, command, as_json).log if evidence is not None
               else EventLog.from_bytes(raw))
        report = learned.check(log)
        if relearn:
            baseline.write_text(IntegrityBaseline.learn(log).to_json() + "\n")
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:
        err.print(f"{command}: cannot write {error.filename}: {error.strerror}", markup=False,
                  highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        out.print(report.to_json(), markup=False)
    else:
        for name, changes in (("early boot", report.early), ("late boot", report.late)):
            out.print(f"{'pass' if not changes else 'FAIL'} {name}", markup=False)
            for change in changes:
                out.print(f"     {change}", markup=False)
    if relearn:
        err.print(f"{command}: baseline {baseline} re-learned from this boot", markup=False,
                  highlight=False)
    raise typer.Exit(0 if report.passed else EXIT_FAILED)
