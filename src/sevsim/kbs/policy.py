"""The owner's two policies: which attestations a KBS accepts, and which resources it releases.

An attestation policy is a `sevsim validate` TOML file (`sevsim.attest.Policy`), evaluated on
the verified report; a refusal names every failed check by its TOML path.

A resource policy decides per resource path `repository/type/tag` from the claims of the
requester's token, default deny. Its TOML schema is closed like the attestation one's (an
unknown key, a wrong type or an empty list is a `PolicyError` naming its path), because a typo
that silently widens a rule releases secrets:

    [[rules]]
    resources = ["prod/keys/*"]       # globs, one per segment (`*` never crosses a `/`)
    allow = true                      # optional; false makes a matching path a refusal
    [rules.claims]                    # every claim equal, or one of a list
    measurement = ["5f2c...", "9a01..."]
    policy_debug = false
    [rules.at_least]                  # integer claims at or above a minimum
    reported_tcb_snp = 8

The first rule whose `resources` match the path decides: allowed when `allow` is true and
every condition holds. No rule matching is a refusal.

A resource policy may instead be a Rego module, as Trustee's KBS takes: text whose first line
that is not blank and not a `#` comment starts with `package ` is Rego (such a line is not valid
TOML), anything else is the TOML format; `parse_resource_policy` is the one place that decides.
The module must be `package policy`; the KBS asks for `data.policy.allow` and releases only when
it is exactly `true` (undefined, false, any other value or an evaluation error is a refusal).
`data` is `{"plugin": "resource", "resource-path": "/repository/type/tag", "query": {}}`, with
Trustee's leading slash, and `input` is the requester's claims, the flat dict of
`sevsim.kbs.verifier.claims_of` (not Trustee's nested token), e.g.:

    package policy
    default allow := false
    allow if {
        input.measurement == "5f2c..."
        split(data["resource-path"], "/")[1] == "prod"
    }
"""

from __future__ import annotations

import functools
import json
import re
import threading
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

import regopy

from sevsim.abi.snp_report import AttestationReport
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.errors import PolicyError

Scalar = str | int | bool


@dataclass(frozen=True)
class Decision:
    """A policy's verdict and why, in words the audit log and problem documents carry."""

    allowed: bool
    reason: str


def evaluate_attestation_policy(policy: Policy | str,
                                report: bytes | AttestationReport) -> Decision:
    """The attestation policy (a Policy, or its TOML text: PolicyError if it is bad) on a
    report whose signature was verified; a refusal names every failed check."""
    if isinstance(policy, str):
        policy = Policy.from_toml(policy)
    result = validate_report(report, policy)
    if result.ok:
        return Decision(True, f"{len(result.checks)} checks passed")
    return Decision(False, "; ".join(f"{c.name}: expected {c.expected}, report has {c.actual}"
                                     for c in result.checks if not c.passed))


@dataclass(frozen=True)
class Rule:
    """One resource rule: path globs, allow or deny, and the conditions on claims."""

    resources: tuple[str, ...]
    allow: bool
    claims: tuple[tuple[str, tuple[Scalar, ...]], ...]
    at_least: tuple[tuple[str, int], ...]

    def matches(self, path: str) -> bool:
        """Whether a glob names this path, segment by segment."""
        parts = path.split("/")
        return any(all(fnmatchcase(part, glob) for part, glob in zip(parts, pattern.split("/"),
                                                                    strict=True))
                   for pattern in self.resources)

    def unmet(self, claims: dict[str, Any]) -> list[str]:
        """The conditions these claims do not meet, in words."""
        out = []
        for name, allowed in self.claims:
            value = claims.get(name)
            # True == 1 in Python: compare types too, so `policy_debug = 1` cannot match true
            if not any(type(value) is type(want) and value == want for want in allowed):
                wanted = " | ".join(map(repr, allowed))
                out.append(f"claim {name} is {value!r}, not {wanted}")
        for name, minimum in self.at_least:
            value = claims.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                out.append(f"claim {name} is {value!r}, not >= {minimum}")
        return out


@dataclass(frozen=True)
class ResourcePolicy:
    """Rules in order; the first one matching a path decides, none is a refusal."""

    rules: tuple[Rule, ...]

    @classmethod
    def from_toml(cls, text: str) -> ResourcePolicy:
        """Parse the module docstring's schema; PolicyError names the key that is wrong."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PolicyError("toml", str(error)) from None
        _known("", doc, ("rules",))
        rules = doc.get("rules", [])
        if not isinstance(rules, list):
            raise PolicyError("rules", "must be an array of tables ([[rules]])")
        return cls(tuple(_rule(f"rules[{i}]", rule) for i, rule in enumerate(rules)))

    def decide(self, path: str, claims: dict[str, Any]) -> Decision:
        """Whether a requester with these claims may have the resource at `path`."""
        if not is_resource_path(path):
            return Decision(False, f"{path!r} is not a resource path repository/type/tag")
        for index, rule in enumerate(self.rules):
            if not rule.matches(path):
                continue
            if not rule.allow:
                return Decision(False, f"rules[{index}] denies {path}")
            unmet = rule.unmet(claims)
            if unmet:
                return Decision(False, f"rules[{index}]: " + "; ".join(unmet))
            return Decision(True, f"rules[{index}] allows {path}")
        return Decision(False, f"no rule names {path} (default deny)")


class ResourceDecider(Protocol):
    """What the KBS needs of a resource policy in either language."""

    def decide(self, path: str, claims: dict[str, Any]) -> Decision:
        """Whether a requester with these claims may have the resource at `path`."""
        ...


@dataclass(frozen=True)
class RegoResourcePolicy:
    """A Trustee-style Rego module, `package policy`, deciding by `data.policy.allow`."""

    text: str

    @classmethod
    def from_rego(cls, text: str) -> RegoResourcePolicy:
        """Refuse, with PolicyError naming the line, a module that does not compile or is not
        `package policy`: Trustee would query a package it does not have and deny everything."""
        line, first = _first_line(text)
        if not re.fullmatch(r"package\s+policy\s*(#.*)?", first):
            raise PolicyError(f"rego:{line}", f"{first!r}: the module must be "
                              "`package policy` (the KBS queries data.policy.allow)")
        _compiled(text, "/repository/type/tag")
        return cls(text)

    def decide(self, path: str, claims: dict[str, Any]) -> Decision:
        """Evaluate `data.policy.allow`; only exactly `true` allows, and an evaluation error is
        a refusal, never an exception, since the request must get an answer."""
        if not is_resource_path(path):
            return Decision(False, f"{path!r} is not a resource path repository/type/tag")
        try:
            compiled = _compiled(self.text, "/" + path)
            document = regopy.Input(claims)
            with compiled.lock:
                compiled.interpreter.set_input(document)
                output = compiled.interpreter.query_bundle_entrypoint(compiled.bundle,
                                                                      _ENTRYPOINT)
                ok = output.ok()
                results = [result.expressions for result in output.results]
        except (regopy.RegoError, TypeError, ValueError) as error:
            return Decision(False, f"data.policy.allow did not evaluate: {error}")
        if not ok:
            return Decision(False, "data.policy.allow did not evaluate (a Rego evaluation "
                            "error, such as conflicting values)")
        if results in ([], [[]]):
            return Decision(False, f"data.policy.allow is undefined for {path} (default deny)")
        value = results[0][0] if len(results) == 1 and len(results[0]) == 1 else results
        if value is True:  # `is`, because 1 == True in Python
            return Decision(True, f"data.policy.allow is true for {path}")
        return Decision(False, f"data.policy.allow is {json.dumps(value)}, not true, "
                        f"for {path}")


def parse_resource_policy(text: str) -> ResourcePolicy | RegoResourcePolicy:
    """The stored text names its language itself (see the module docstring), so the policy
    table needs no column for it: Rego when its first line is a `package` clause."""
    if _first_line(text)[1].startswith("package "):
        return RegoResourcePolicy.from_rego(text)
    return ResourcePolicy.from_toml(text)


def evaluate_resource_policy(text: str, path: str, claims: dict[str, Any]) -> Decision:
    """The resource policy's text, TOML or Rego, on one request: PolicyError if it is bad."""
    return parse_resource_policy(text).decide(path, claims)


def is_resource_path(path: str) -> bool:
    """Three non-empty segments, none of them `.` or `..`: repository/type/tag."""
    parts = path.split("/")
    return len(parts) == 3 and all(part not in ("", ".", "..") for part in parts)


_ENTRYPOINT = "policy/allow"


@dataclass(frozen=True)
class _Compiled:
    """An interpreter holding the module and one path's data, and its built bundle."""

    interpreter: regopy.Interpreter
    bundle: regopy.Bundle
    lock: threading.Lock  # rego-cpp's interpreter is not thread-safe: it crashes if shared


@functools.lru_cache(maxsize=256)
def _compiled(text: str, resource_path: str) -> _Compiled:
    """Compile once per (policy, path): a fresh interpreter costs milliseconds, a query of a
    built bundle a tenth of one, and `data` holds the path, so each path has its own."""
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE  # errors become PolicyError, not stderr
    try:
        interpreter.add_module("policy", text)
        interpreter.add_data({"plugin": "resource", "resource-path": resource_path,
                              "query": {}})
        bundle = interpreter.build(None, [_ENTRYPOINT])
    except regopy.RegoError as error:
        raise PolicyError(*_rego_error(text, str(error))) from None
    return _Compiled(interpreter, bundle, threading.Lock())


def _rego_error(text: str, message: str) -> tuple[str, str]:
    """rego-cpp's first error as (`rego:LINE`, message), from its `(error N:policy|OFFSET|LEN
    (errormsg N:TEXT)` s-expression; the whole message when it has another shape."""
    found = re.search(r"\(error \d+:[^|]*\|(\d+)\|\d+\s+\(errormsg (\d+):", message)
    if found is None:
        return "rego", message.strip()
    line = text.encode()[:int(found[1])].count(b"\n") + 1
    start = found.end()
    return f"rego:{line}", message[start:start + int(found[2])]


def _first_line(text: str) -> tuple[int, str]:
    """The first line that is neither blank nor a `#` comment, and its number (0, "" if none)."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number, line.strip()
    return 0, ""


def _known(section: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PolicyError(where, f"unknown key; {section or 'the policy'} knows "
                          f"{', '.join(known)}")


def _rule(key: str, table: object) -> Rule:
    if not isinstance(table, dict):
        raise PolicyError(key, "must be a table")
    _known(key, table, ("resources", "allow", "claims", "at_least"))
    if "resources" not in table:
        raise PolicyError(f"{key}.resources", "is missing: a rule must name its resources")
    resources = _nonempty_list(f"{key}.resources", table["resources"])
    for i, glob in enumerate(resources):
        if not isinstance(glob, str) or len(glob.split("/")) != 3 or "" in glob.split("/"):
            raise PolicyError(f"{key}.resources[{i}]", f"{glob!r} is not a glob "
                              "repository/type/tag")
    allow = table.get("allow", True)
    if not isinstance(allow, bool):
        raise PolicyError(f"{key}.allow", f"must be true or false, not {type(allow).__name__}")
    claims = _table(f"{key}.claims", table.get("claims", {}))
    conditions = []
    for name, value in claims.items():
        where = f"{key}.claims.{name}"
        values = _nonempty_list(where, value) if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if not isinstance(item, str | int | bool):
                raise PolicyError(f"{where}[{i}]" if isinstance(value, list) else where,
                                  f"must be a string, integer or boolean, not "
                                  f"{type(item).__name__}")
        conditions.append((name, tuple(values)))
    minimums = []
    for name, value in _table(f"{key}.at_least", table.get("at_least", {})).items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{key}.at_least.{name}", "must be an integer, not "
                              f"{type(value).__name__}")
        minimums.append((name, value))
    return Rule(tuple(resources), allow, tuple(conditions), tuple(minimums))


def _table(key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(key, f"must be a table, not {type(value).__name__}")
    return value


def _nonempty_list(key: str, value: object) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(key, f"must be a list, not {type(value).__name__}")
    if not value:
        raise PolicyError(key, "is an empty list, which nothing could match")
    return value
