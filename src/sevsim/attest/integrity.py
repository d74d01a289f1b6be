"""Integrity monitoring as GCE's Shielded VMs do it: learn a baseline from one boot's event log,
then validate each later boot against it, early boot and late boot separately, pass or fail.

Google's "Monitoring integrity on Shielded VMs": early boot is "from the start of the UEFI
firmware until it passes control to the bootloader", late boot "from the bootloader until
completion", the kernel included; the baseline is first learned from the VM's boot image, and
the auto-learn policy (`update_auto_learn_policy`) re-learns it from the last boot. In an event
log that boundary is the EV_SEPARATOR: firmware measures one into each of PCRs 0-7 when it is
ready to boot, just before it calls the boot loader (TCG PFP 3.3.2.2). So an event of PCR 0-7
up to and including that PCR's separator is early boot (the S-CRTM version, GCE's NonHostInfo
technology, the Secure Boot variables); any later event of PCR 0-7 (the boot application in
PCR4, a db certificate that verified it in PCR7) and every event of PCR 8 and above (GRUB's
command lines and files) is late boot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sevsim.abi.tcg_eventlog import PCR_COUNT, Event, EventLog, EventType, extend, replay
from sevsim.abi.tpm2 import HashAlg
from sevsim.attest.tpm_boot import bank_named, describe, hex_value
from sevsim.errors import PolicyError

BASELINE_VERSION = 1
PRE_OS_PCRS = range(8)  # the PCRs firmware closes with a separator before the boot loader


class Phase(StrEnum):
    """The two halves of a boot GCE validates separately."""

    EARLY = "early"
    LATE = "late"


def phases(log: EventLog) -> list[Phase]:
    """The phase of each of `log`'s events: early until its PCR's separator (included) for
    PCRs 0-7, late after it and for every other PCR."""
    closed: set[int] = set()
    out = []
    for event in log.events:
        out.append(Phase.LATE if event.pcr not in PRE_OS_PCRS or event.pcr in closed
                   else Phase.EARLY)
        if event.event_type == EventType.EV_SEPARATOR:
            closed.add(event.pcr)
    return out


@dataclass(frozen=True)
class BaselineEvent:
    """One measured event of the baseline: where it went, its digests, what it was."""

    pcr: int
    phase: Phase
    event_type: int
    digests: Mapping[HashAlg, bytes]
    description: str

    def same(self, other: BaselineEvent, banks: tuple[HashAlg, ...]) -> bool:
        """The same measurement in the banks both logs have (the description is not compared:
        the digests are what the TPM attests)."""
        return (self.pcr, self.event_type) == (other.pcr, other.event_type) and all(
            self.digests[alg] == other.digests[alg] for alg in banks)


@dataclass(frozen=True)
class Change:
    """One difference from the baseline: the PCR, the phase, the event's position among that
    PCR's events, and what the baseline had and what this boot has there (None: nothing)."""

    pcr: int
    phase: Phase
    index: int
    baseline: str | None
    actual: str | None

    def __str__(self) -> str:
        if self.actual is None:
            return f"PCR{self.pcr} event {self.index}: {self.baseline} is missing"
        if self.baseline is None:
            return f"PCR{self.pcr} event {self.index}: {self.actual} is new"
        return f"PCR{self.pcr} event {self.index}: {self.baseline} became {self.actual}"


@dataclass(frozen=True)
class IntegrityReport:
    """Early-boot and late-boot validation of one boot: each passes when none of its events
    differ from the baseline's."""

    early: tuple[Change, ...]
    late: tuple[Change, ...]

    @property
    def early_passed(self) -> bool:
        """Early-boot validation: firmware up to the boot loader is as learned."""
        return not self.early

    @property
    def late_passed(self) -> bool:
        """Late-boot validation: the boot loader and what it loaded are as learned."""
        return not self.late

    @property
    def passed(self) -> bool:
        """Both validations passed."""
        return self.early_passed and self.late_passed

    def to_json(self) -> str:
        """The report as GCE's early/late boot report events carry it: pass/fail per phase,
        with what changed."""
        def phase(changes: tuple[Change, ...]) -> dict[str, object]:
            return {"passed": not changes,
                    "changes": [{"pcr": c.pcr, "index": c.index, "baseline": c.baseline,
                                 "actual": c.actual} for c in changes]}
        return json.dumps({"early_boot": phase(self.early), "late_boot": phase(self.late),
                           "passed": self.passed}, indent=2)


@dataclass(frozen=True)
class IntegrityBaseline:
    """The integrity policy baseline: every measured event of a known-good boot, with its
    phase, and the PCR values they extend to (hash algorithm -> PCR -> value)."""

    banks: tuple[HashAlg, ...]
    events: tuple[BaselineEvent, ...]
    pcrs: Mapping[HashAlg, Mapping[int, bytes]]

    @classmethod
    def learn(cls, log: EventLog) -> IntegrityBaseline:
        """The baseline of a boot: its measured events (EV_NO_ACTION extends nothing) and
        replayed PCRs. Re-learning, as GCE's auto-learn policy, is learning the new boot."""
        events = tuple(_baseline_event(event, phase)
                       for event, phase in zip(log.events, phases(log), strict=True)
                       if event.event_type != EventType.EV_NO_ACTION)
        return cls(log.banks, events, replay(log))

    def check(self, log: EventLog) -> IntegrityReport:
        """Validate a boot against the baseline: for each phase and PCR, the events must be
        the baseline's, in order; the first that differs (changed, missing or new) is named.
        A log sharing no bank with the baseline cannot be compared: a PolicyError."""
        banks = tuple(alg for alg in self.banks if alg in log.banks)
        if not banks:
            raise PolicyError("banks", f"the baseline has {[a.name for a in self.banks]}, the "
                                       f"event log {[a.name for a in log.banks]}: none shared")
        now = IntegrityBaseline.learn(log)
        changes: dict[Phase, list[Change]] = {Phase.EARLY: [], Phase.LATE: []}
        for phase in Phase:
            for pcr in sorted({e.pcr for e in self.events + now.events}):
                was = [e for e in self.events if e.pcr == pcr and e.phase is phase]
                got = [e for e in now.events if e.pcr == pcr and e.phase is phase]
                for index in range(max(len(was), len(got))):
                    old = was[index] if index < len(was) else None
                    new = got[index] if index < len(got) else None
                    if old is None or new is None or not old.same(new, banks):
                        changes[phase].append(Change(
                            pcr, phase, index, old.description if old else None,
                            new.description if new else None))
                        break  # later events of this PCR follow from the first change
        return IntegrityReport(tuple(changes[Phase.EARLY]), tuple(changes[Phase.LATE]))

    def to_json(self) -> str:
        """The baseline as a JSON document (from_json reads it back)."""
        return json.dumps({
            "version": BASELINE_VERSION,
            "banks": [alg.hashlib_name for alg in self.banks],
            "pcrs": {alg.hashlib_name: {str(pcr): value.hex()
                                        for pcr, value in sorted(values.items())}
                     for alg, values in self.pcrs.items()},
            "events": [{"pcr": e.pcr, "phase": e.phase.value, "type": e.event_type,
                        "digests": {alg.hashlib_name: d.hex() for alg, d in e.digests.items()},
                        "description": e.description} for e in self.events],
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> IntegrityBaseline:
        """A baseline to_json wrote; anything else is a PolicyError naming the JSON path."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError("$", f"not JSON: {e}") from None
        if not isinstance(doc, dict) or set(doc) != {"version", "banks", "pcrs", "events"}:
            raise PolicyError("$", "an object of exactly version, banks, pcrs and events")
        if doc["version"] != BASELINE_VERSION:
            raise PolicyError("version", f"{doc['version']!r}, not {BASELINE_VERSION}")
        if not isinstance(doc["banks"], list) or not doc["banks"]:
            raise PolicyError("banks", "a list of one or more banks")
        banks = tuple(bank_named(name, f"banks[{i}]") for i, name in enumerate(doc["banks"]))
        if len(set(banks)) != len(banks):
            raise PolicyError("banks", "a bank listed twice")
        events = []
        if not isinstance(doc["events"], list):
            raise PolicyError("events", "a list")
        for i, item in enumerate(doc["events"]):
            where = f"events[{i}]"
            if not isinstance(item, dict) or set(item) != {"pcr", "phase", "type", "digests",
                                                           "description"}:
                raise PolicyError(where, "an object of pcr, phase, type, digests, description")
            pcr, kind, text_ = item["pcr"], item["type"], item["description"]
            if type(pcr) is not int or not 0 <= pcr < PCR_COUNT:
                raise PolicyError(f"{where}.pcr", f"a PCR number, 0..{PCR_COUNT - 1}")
            if type(kind) is not int or not 0 <= kind <= 0xFFFFFFFF:
                raise PolicyError(f"{where}.type", "an event type, a 32-bit number")
            if item["phase"] not in {p.value for p in Phase} or not isinstance(text_, str):
                raise PolicyError(where, "phase is early or late, description a string")
            digests = item["digests"]
            if not isinstance(digests, dict) or [
                    bank_named(b, f"{where}.digests") for b in digests] != list(banks):
                raise PolicyError(f"{where}.digests", "one digest per bank, in banks' order")
            events.append(BaselineEvent(pcr, Phase(item["phase"]), kind, {
                alg: hex_value(digests[alg.hashlib_name], f"{where}.digests.{alg.hashlib_name}",
                          alg.digest_size) for alg in banks}, text_))
        pcrs = doc["pcrs"]
        if not isinstance(pcrs, dict) or [bank_named(b, "pcrs") for b in pcrs] != list(banks):
            raise PolicyError("pcrs", "PCR values per bank, in banks' order")
        values: dict[HashAlg, dict[int, bytes]] = {}
        for alg in banks:
            bank = pcrs[alg.hashlib_name]
            if not isinstance(bank, dict) or not all(
                    k.isascii() and k.isdigit() and int(k) < PCR_COUNT for k in bank):
                raise PolicyError(f"pcrs.{alg.hashlib_name}", "PCR numbers to hex values")
            values[alg] = {int(k): hex_value(v, f"pcrs.{alg.hashlib_name}.{k}", alg.digest_size)
                           for k, v in bank.items()}
        baseline = cls(banks, tuple(events), values)
        if replay_baseline(baseline) != values:
            raise PolicyError("pcrs", "the values are not what the events extend to")
        return baseline


def replay_baseline(baseline: IntegrityBaseline) -> dict[HashAlg, dict[int, bytes]]:
    """The PCR values the baseline's events extend to: a baseline whose values and events
    disagree was edited by hand, and one of the two is wrong."""
    values: dict[HashAlg, dict[int, bytes]] = {alg: {} for alg in baseline.banks}
    for e in baseline.events:
        for alg in baseline.banks:
            old = values[alg].get(e.pcr, bytes(alg.digest_size))
            values[alg][e.pcr] = extend(alg, old, e.digests[alg])
    return values


def _baseline_event(event: Event, phase: Phase) -> BaselineEvent:
    return BaselineEvent(event.pcr, phase, event.event_type, dict(event.digests),
                         describe(event))
