"""Verify a vTPM's boot evidence as a relying party: an AK, a quote over a nonce, and the TCG
event log that says what the quoted PCRs hold.

A quote alone says only that the PCRs hold some values; the event log says what was measured,
but anyone can write a log. Together they are evidence: the log's events replay to PCR values
whose digest must be the quote's pcrDigest, and only then do its events (the program in PCR4,
the NonHostInfo in PCR0, the Secure Boot state in PCR7) mean anything. go-tpm-tools' server
checks the same things in the same spirit (signature, nonce, PCR digest, then the replayed
log). Every refusal is a QuoteError whose `reason` names the check:

| reason | what |
|---|---|
| format | the AK, TPMS_ATTEST or TPMT_SIGNATURE does not parse |
| ak | the AK is not a restricted, fixedTPM signing key, so its signature proves nothing |
| event-log | the event log does not parse, or an event's data does not match its digest |
| signature | the AK did not sign this TPMS_ATTEST (another AK, a changed quote) |
| nonce | the quote is over another nonce (a replayed quote) |
| pcr-selection | the quote does not cover a PCR the log extends or an expectation names |
| replay | the log does not replay to the quote's pcrDigest: it is not what the TPM measured |
| expected | a PCR value or event differs from what the relying party expects |
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sevsim.abi import tpm2
from sevsim.abi.tcg_eventlog import (
    PCR_COUNT,
    ConfidentialTechnology,
    Event,
    EventLog,
    EventType,
    image_load_path,
    parse_nonhost_info,
    parse_uefi_variable_data,
    replay,
)
from sevsim.abi.tpm2 import HashAlg
from sevsim.attest.tpm_quote import verify_quote
from sevsim.errors import EventLogError, PolicyError, QuoteError, TpmFormatError

PROGRAM_PCR = 4  # EV_EFI_BOOT_SERVICES_APPLICATION: the boot application (PFP 3.3.4.5)
SECURE_BOOT_PCR = 7
NONHOST_INFO_PCR = 0
# PC Client PTP, PCR attributes: PCRs 17-22 (DRTM) hold all ones from TPM_Init until a dynamic
# launch resets them; the others start at zero. swtpm reads them so.
DRTM_PCRS = range(17, 23)


def reset_value(alg: HashAlg, pcr: int) -> bytes:
    """A PCR's value after TPM2_Startup(CLEAR), before anything extends it."""
    return (b"\xff" if pcr in DRTM_PCRS else b"\x00") * alg.digest_size


def parse_selection(text: str) -> dict[int, tuple[int, ...]]:
    """A PCR selection as tpm2-tools writes it ("sha256:0,4,7+sha384:0"); a PolicyError
    naming the part that is not one."""
    selection: dict[int, tuple[int, ...]] = {}
    for part in text.split("+"):
        bank, _, pcrs = part.partition(":")
        alg = bank_named(bank.strip(), part)
        if alg in selection:
            raise PolicyError(part, f"the {bank} bank is given twice")
        try:
            indices = tuple(sorted({int(p) for p in pcrs.split(",")}))
        except ValueError:
            raise PolicyError(part, "PCRs are decimal numbers separated by commas") from None
        if not all(0 <= p < PCR_COUNT for p in indices):
            raise PolicyError(part, f"a PC Client TPM has PCRs 0..{PCR_COUNT - 1}")
        selection[alg] = indices
    return selection


def show_selection(selection: Mapping[int, Sequence[int]]) -> str:
    """A selection in tpm2-tools' syntax, as parse_selection reads it."""
    return "+".join(f"{bank_name(alg)}:{','.join(map(str, pcrs))}"
                    for alg, pcrs in selection.items() if pcrs) or "nothing"


def bank_name(alg: int) -> str:
    """sha256 for SHA-256's TPM_ALG_ID; hex for one that names no hash."""
    return hash_alg.hashlib_name if (hash_alg := HashAlg.lookup(alg)) else f"0x{alg:04x}"


@dataclass(frozen=True)
class BootFacts:
    """What a GCE-style boot log says about the boot, read from events whose digests cover
    their data (so the data is what was measured): NonHostInfo's technology, the SecureBoot
    variable, and the SHA-256 digest of each boot application. None: the log has no such
    event."""

    technology: ConfidentialTechnology | None
    secure_boot: bool | None
    programs: tuple[bytes, ...]

    @classmethod
    def of(cls, log: EventLog, pcrs: Collection[int] = range(PCR_COUNT)) -> BootFacts:
        """The facts of `log`'s events in `pcrs`; an event whose data does not hash to its
        digests, or does not parse, is a QuoteError("event-log") naming it."""
        technology = secure_boot = None
        programs = []
        for index, event in enumerate(log.events):
            if event.pcr not in pcrs:
                continue
            if event.pcr == NONHOST_INFO_PCR and event.event_type == EventType.EV_NONHOST_INFO:
                _data_is_measured(event, index)
                technology = _event_field(parse_nonhost_info, event, index)
            elif (event.pcr == SECURE_BOOT_PCR
                  and event.event_type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG):
                _data_is_measured(event, index)
                _, name, value = _event_field(parse_uefi_variable_data, event, index)
                if name == "SecureBoot":
                    secure_boot = value == b"\x01"  # UEFI 2.10 3.3: 1 enforcing, 0 not
            elif (event.pcr == PROGRAM_PCR
                  and event.event_type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION
                  and HashAlg.SHA256 in event.digests):
                programs.append(event.digests[HashAlg.SHA256])
        return cls(technology, secure_boot, tuple(programs))


def _data_is_measured(event: Event, index: int) -> None:
    for alg, digest in event.digests.items():
        if alg.hash(event.data) != digest:
            raise QuoteError("event-log", f"event {index} ({describe(event)}) in PCR "
                                          f"{event.pcr}: its data does not hash to its "
                                          f"{alg.name} digest")


def _event_field(parse: Any, event: Event, index: int) -> Any:
    try:
        return parse(event.data)
    except EventLogError as e:
        raise QuoteError("event-log", f"event {index} in PCR {event.pcr}: {e}") from None


def describe(event: Event) -> str:
    """One line saying what an event is, for messages: its type and, where the data says it,
    which variable, technology, program or string."""
    try:
        name = EventType(event.event_type).name
    except ValueError:
        name = f"event type {event.event_type:#x}"
    try:
        if event.event_type == EventType.EV_NONHOST_INFO:
            return f"{name} {parse_nonhost_info(event.data).name}"
        if event.event_type in (EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
                                EventType.EV_EFI_VARIABLE_AUTHORITY):
            _, variable, value = parse_uefi_variable_data(event.data)
            return f"{name} {variable}={_variable_value(value)}"
        if event.event_type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
            # the data does not cover the image: its digest says which program it was
            alg = HashAlg.SHA256 if HashAlg.SHA256 in event.digests else next(iter(event.digests))
            return (f"{name} {image_load_path(event.data)} "
                    f"{alg.hashlib_name}:{event.digests[alg][:8].hex()}")
    except EventLogError:
        pass  # a description, not a check: say what the type is
    if event.event_type in (EventType.EV_IPL, EventType.EV_S_CRTM_VERSION):
        text = event.data.decode("utf-16-le" if event.event_type == EventType.EV_S_CRTM_VERSION
                                 else "utf-8", "replace").rstrip("\x00")
        return f"{name} {text[:60]!r}"
    return name


def _variable_value(value: bytes) -> str:
    """A Secure Boot variable's value in a few characters that differ when it does: short
    values in hex (SecureBoot=01), longer ones by digest, since signature lists and their
    entries all start with the same GUIDs."""
    if len(value) <= 8:
        return value.hex() or "empty"
    return f"sha256:{hashlib.sha256(value).hexdigest()[:16]}"


@dataclass(frozen=True)
class BootExpectation:
    """What a relying party expects of a boot, beyond a log that replays to the quote: PCR
    values (hash algorithm -> PCR -> value), the SHA-256 digest of the program in PCR4, the
    confidential technology in PCR0's NonHostInfo, the Secure Boot state in PCR7. None (or
    empty): not checked."""

    pcrs: Mapping[int, Mapping[int, bytes]] = field(default_factory=dict)
    program_sha256: bytes | None = None
    technology: ConfidentialTechnology | None = None
    secure_boot: bool | None = None

    @classmethod
    def from_json(cls, text: str) -> BootExpectation:
        """`{"pcrs": {"sha256": {"4": HEX}}, "program_sha256": HEX, "technology":
        "AMD_SEV_SNP", "secure_boot": true}`, every key optional, none other allowed: a
        PolicyError names the culprit's JSON path."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError("$", f"not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise PolicyError("$", "an object of pcrs, program_sha256, technology, secure_boot")
        if unknown := set(doc) - {"pcrs", "program_sha256", "technology", "secure_boot"}:
            raise PolicyError(sorted(unknown)[0], "unknown key")
        pcrs: dict[int, dict[int, bytes]] = {}
        banks = doc.get("pcrs", {})
        if not isinstance(banks, dict):
            raise PolicyError("pcrs", "an object of banks")
        for bank, values in banks.items():
            alg = bank_named(bank, f"pcrs.{bank}")
            if not isinstance(values, dict):
                raise PolicyError(f"pcrs.{bank}", "PCR numbers mapped to hex values")
            pcrs[alg] = {}
            for pcr, value in values.items():
                where = f"pcrs.{bank}.{pcr}"
                if not (pcr.isascii() and pcr.isdigit() and int(pcr) < PCR_COUNT):
                    raise PolicyError(where, f"a PCR number, 0..{PCR_COUNT - 1}")
                pcrs[alg][int(pcr)] = hex_value(value, where, alg.digest_size)
        program = doc.get("program_sha256")
        technology = doc.get("technology")
        if technology is not None and (
                not isinstance(technology, str)
                or technology not in ConfidentialTechnology.__members__):
            raise PolicyError("technology", f"{technology!r}: one of "
                                            f"{', '.join(ConfidentialTechnology.__members__)}")
        secure_boot = doc.get("secure_boot")
        if secure_boot is not None and not isinstance(secure_boot, bool):
            raise PolicyError("secure_boot", "true or false")
        return cls(pcrs, None if program is None else hex_value(program, "program_sha256", 32),
                   None if technology is None else ConfidentialTechnology[technology],
                   secure_boot)

    def pcrs_needed(self) -> dict[int, set[int]]:
        """The PCRs (per bank) the quote must cover for these expectations to be attested."""
        needed = {alg: set(values) for alg, values in self.pcrs.items()}
        for pcr, wanted in ((PROGRAM_PCR, self.program_sha256),
                            (NONHOST_INFO_PCR, self.technology),
                            (SECURE_BOOT_PCR, self.secure_boot)):
            if wanted is not None:
                needed.setdefault(HashAlg.SHA256, set()).add(pcr)
        return needed


def bank_named(name: object, where: str) -> HashAlg:
    """The bank a JSON document names ("sha256"); a PolicyError at `where` otherwise."""
    alg = HashAlg.__members__.get(name.upper()) if isinstance(name, str) else None
    if alg is None:
        raise PolicyError(where, f"{name!r} is not a bank (sha1, sha256, sha384, sha512)")
    return alg


def hex_value(value: object, where: str, size: int) -> bytes:
    """`size` bytes a JSON document gives as hex; a PolicyError at `where` otherwise."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise PolicyError(where, f"{size} bytes as hex")
    return raw


@dataclass(frozen=True)
class VerifiedBoot:
    """Evidence that passed: the quote, the log, the PCR values the log replays to for the
    quoted PCRs (hash algorithm -> PCR -> value), and what the log says about the boot."""

    quote: tpm2.QuoteAttest
    log: EventLog
    pcrs: dict[int, dict[int, bytes]]
    facts: BootFacts


def verify_boot(ak_public: bytes, attest: bytes, signature: bytes, nonce: bytes,
                event_log: bytes, expected: BootExpectation | None = None,
                required: Mapping[int, Sequence[int]] | None = None) -> VerifiedBoot:
    """Accept a vTPM's boot evidence or raise QuoteError naming the failed check (see the
    module's table). `ak_public` is the AK's TPMT_PUBLIC, `attest` and `signature` the
    quote's TPMS_ATTEST and TPMT_SIGNATURE, `event_log` the raw TCG log. The quote must
    cover every PCR the log extends, or only the `required` ones (hash algorithm -> PCRs) when
    given: then the facts come only from events in PCRs the quote covers."""
    try:
        quoted = tpm2.parse_attest(attest)
    except TpmFormatError as e:
        raise QuoteError("format", str(e)) from None
    try:
        log = EventLog.from_bytes(event_log)
    except EventLogError as e:
        raise QuoteError("event-log", str(e)) from None
    _check_selection(quoted.pcr_select, log, required, expected)
    replayed = replay(log)
    values = {alg: {pcr: replayed[HashAlg(alg)].get(pcr, reset_value(HashAlg(alg), pcr))
                    for pcr in pcrs}
              for alg, pcrs in quoted.pcr_select.items() if pcrs}
    try:
        verify_quote(ak_public, attest, signature, nonce, values)
    except QuoteError as e:
        if e.reason != "pcrs":
            raise
        raise QuoteError("replay", f"the event log replays {show_selection(quoted.pcr_select)}"
                                   " to values whose digest is not the quote's pcrDigest: the "
                                   "log is not what this TPM measured") from None
    attested = {pcr for pcrs in values.values() for pcr in pcrs}
    facts = BootFacts.of(log, attested)
    if expected is not None:
        _check_expected(expected, values, facts, log)
    return VerifiedBoot(quoted, log, values, facts)


def _check_selection(selection: Mapping[int, Sequence[int]], log: EventLog,
                     required: Mapping[int, Sequence[int]] | None,
                     expected: BootExpectation | None) -> None:
    """The quote covers what must be attested: the `required` PCRs, or by default, in one
    bank the log has, every PCR the log extends (else a log entry is an unattested claim);
    and every PCR an expectation reads."""
    for alg in selection:
        if selection[alg] and alg not in log.banks:
            raise QuoteError("pcr-selection", f"the quote selects the {bank_name(alg)} bank, "
                                              "which the event log has no digests for")
    needed = {alg: set(pcrs) for alg, pcrs in (required or {}).items()}
    for alg, pcrs in (expected.pcrs_needed() if expected else {}).items():
        needed.setdefault(alg, set()).update(pcrs)
    for alg, pcrs in needed.items():
        if missing := sorted(pcrs - set(selection.get(alg, ()))):
            raise QuoteError("pcr-selection", f"the quote selects {show_selection(selection)}"
                                              f"; {bank_name(alg)} PCR {missing[0]} must be "
                                              "covered")
    if required is not None:
        return
    extended = {e.pcr: e for e in log.events if e.event_type != EventType.EV_NO_ACTION}
    best = max(log.banks, key=lambda alg: len(set(selection.get(alg, ())) & set(extended)))
    if missing := sorted(set(extended) - set(selection.get(best, ()))):
        raise QuoteError("pcr-selection", f"the quote selects {show_selection(selection)}; "
                                          f"PCR {missing[0]}, which the log extends (last: "
                                          f"{describe(extended[missing[0]])}), is covered in "
                                          "no bank")


def _check_expected(expected: BootExpectation, values: Mapping[int, Mapping[int, bytes]],
                    facts: BootFacts, log: EventLog) -> None:
    for alg, wanted in expected.pcrs.items():
        for pcr, value in sorted(wanted.items()):
            if not hmac.compare_digest(values[alg][pcr], value):
                last = [describe(e) for e in log.events if e.pcr == pcr
                        and e.event_type != EventType.EV_NO_ACTION][-1:] or ["no event"]
                raise QuoteError("expected", f"PCR {pcr} ({bank_name(alg)}) is "
                                             f"{values[alg][pcr].hex()}, expected "
                                             f"{value.hex()} (last event: {last[0]})")
    if expected.technology is not None and facts.technology != expected.technology:
        got = facts.technology.name if facts.technology is not None else "no NonHostInfo event"
        raise QuoteError("expected", f"PCR {NONHOST_INFO_PCR} EV_NONHOST_INFO: {got}, "
                                     f"expected {expected.technology.name}")
    if expected.secure_boot is not None and facts.secure_boot != expected.secure_boot:
        got = {True: "on", False: "off", None: "no SecureBoot variable event"}[facts.secure_boot]
        raise QuoteError("expected", f"PCR {SECURE_BOOT_PCR} SecureBoot: {got}, expected "
                                     f"{'on' if expected.secure_boot else 'off'}")
    if expected.program_sha256 is not None and expected.program_sha256 not in facts.programs:
        got = ", ".join(p.hex() for p in facts.programs) or "no boot application"
        raise QuoteError("expected", f"PCR {PROGRAM_PCR} EV_EFI_BOOT_SERVICES_APPLICATION: "
                                     f"{got}, expected sha256 {expected.program_sha256.hex()}")
