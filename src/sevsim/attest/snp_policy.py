"""Validate the claims of an SNP attestation report against a relying party's policy.

`sevsim verify` decides whether a report is genuine (signature, chain); this module decides
whether a genuine report describes a VM the relying party wants to trust: the right image
(measurement, ID block identity), the right launch inputs (host data, report data), firmware
and TCB levels that are patched, a guest policy without debugging, VMPL 0, the expected chips.

The policy is a TOML file with a closed schema: unknown sections or keys, wrong types,
out-of-range numbers and malformed hex raise `PolicyError` instead of being ignored, because a
typo that silently disables a check is a hole. Every check has a stable name equal to the
TOML path of the setting that enables it (e.g. `guest.measurements`, `tcb.reported.snp`), so
a failure points straight at the line of the policy it broke.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import PlatformInfo, PolicyFlags, SigningKey, TcbVersion
from sevsim.errors import PolicyError, SnpFormatError

TCB_FIELDS = ("reported", "committed", "launch", "current")
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")

# Guest policy bits that permit something (refused unless `allow_*` is true) and bits that
# restrict something (demanded when `require_*` is true). Defaults: SMT allowed, the rest not.
PERMISSIONS: dict[str, PolicyFlags] = {
    "allow_debug": PolicyFlags.DEBUG,
    "allow_migrate_ma": PolicyFlags.MIGRATE_MA,
    "allow_smt": PolicyFlags.SMT,
    "allow_cxl": PolicyFlags.CXL_ALLOW,
}
DEFAULT_ALLOWED = PolicyFlags.SMT
NO_FLAGS = PolicyFlags(0)
RESTRICTIONS: dict[str, PolicyFlags] = {
    "require_single_socket": PolicyFlags.SINGLE_SOCKET,
    "require_aes_256_xts": PolicyFlags.MEM_AES_256_XTS,
    "require_rapl_disabled": PolicyFlags.RAPL_DIS,
    "require_ciphertext_hiding": PolicyFlags.CIPHERTEXT_HIDING,
    "require_page_swap_disabled": PolicyFlags.PAGE_SWAP_DISABLE,
}
# PLATFORM_INFO bits and the first report version that defines each (spec-formats.md §4).
PLATFORM_BITS: dict[str, tuple[PlatformInfo, int]] = {
    "smt_enabled": (PlatformInfo.SMT_EN, 2),
    "tsme_enabled": (PlatformInfo.TSME_EN, 2),
    "ecc_enabled": (PlatformInfo.ECC_EN, 2),
    "rapl_disabled": (PlatformInfo.RAPL_DIS, 2),
    "ciphertext_hiding_enabled": (PlatformInfo.CIPHERTEXT_HIDING_EN, 2),
    "alias_check_complete": (PlatformInfo.ALIAS_CHECK_COMPLETE, 3),
    "tio_enabled": (PlatformInfo.TIO_EN, 5),
}
SIGNING_KEYS = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}
KNOWN_VERSIONS = (2, 3, 4, 5)
FirmwareVersion = tuple[int, int, int]  # (major, minor, build)


# -- TOML values, strictly -------------------------------------------------------------------

_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]*)")
_FW = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


def _hex(key: str, value: object, sizes: Iterable[int]) -> bytes:
    """A hex string of one of the allowed byte lengths (optional 0x, no separators)."""
    sizes = tuple(sizes)
    if not isinstance(value, str):
        raise PolicyError(key, f"must be a hex string, not {type(value).__name__}")
    match = _HEX.fullmatch(value)
    if match is None or len(match.group(1)) % 2:
        raise PolicyError(key, f"{value!r} is not hex (an even number of hex digits)")
    raw = bytes.fromhex(match.group(1))
    if len(raw) not in sizes:
        want = " or ".join(str(s) for s in sizes) if len(sizes) < 4 else (
            f"{min(sizes)} to {max(sizes)}")
        raise PolicyError(key, f"is {len(raw)} bytes, must be {want}")
    return raw


def _list(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise PolicyError(key, f"must be a list, not {type(value).__name__}")
    if not value:
        raise PolicyError(key, "is an empty list, which nothing could match")
    return value


def _hex_list(key: str, value: object, sizes: Iterable[int]) -> tuple[bytes, ...]:
    sizes = tuple(sizes)
    return tuple(_hex(f"{key}[{i}]", item, sizes) for i, item in enumerate(_list(key, value)))


def _int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(key, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise PolicyError(key, f"{value} is outside {low}..{high}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(key, f"must be true or false, not {type(value).__name__}")
    return value


def _firmware(key: str, value: object) -> FirmwareVersion:
    if not isinstance(value, str) or (match := _FW.fullmatch(value)) is None:
        raise PolicyError(key, f"{value!r} is not a firmware version MAJOR.MINOR.BUILD "
                          "(e.g. \"1.55.29\")")
    major, minor, build = (int(g) for g in match.groups())
    for part in (major, minor, build):
        if part > 0xFF:
            raise PolicyError(key, f"{value!r}: each part is one byte (0..255)")
    return major, minor, build


def _table(key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(key, f"must be a table ([{key}]), not {type(value).__name__}")
    return value


def _keys(section: str, table: dict[str, Any], known: Iterable[str]) -> None:
    """Fail closed on anything the schema does not define."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PolicyError(where, f"unknown {'key' if section else 'section'}; "
                          f"{section or 'the policy'} knows {', '.join(sorted(known))}")


# -- the policy ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TcbMinimum:
    """Minimum security patch levels for one TCB field; None leaves a component unchecked.
    `fmc` applies only to reports whose TCB has an FMC (Turin)."""

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None


@dataclass(frozen=True)
class Policy:
    """What a relying party accepts. None means "not checked"; the defaults are the checks
    that always apply unless the policy loosens them: VMPL 0, a VCEK or VLEK signature, and
    no debugging, migration agent or CXL in the guest policy."""

    # [report]
    versions: frozenset[int] | None = None
    min_version: int | None = None
    signing_keys: frozenset[SigningKey] = frozenset({SigningKey.VCEK, SigningKey.VLEK})
    vmpls: frozenset[int] = frozenset({0})
    chip_ids: tuple[bytes, ...] | None = None
    # [guest]
    measurements: tuple[bytes, ...] | None = None
    host_data: bytes | None = None
    report_data: bytes | None = None
    report_data_prefix: bytes | None = None
    id_key_digests: tuple[bytes, ...] | None = None
    author_key_digests: tuple[bytes, ...] | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    min_svn: int | None = None
    # [guest_policy]
    allowed_flags: PolicyFlags = DEFAULT_ALLOWED
    required_flags: PolicyFlags = NO_FLAGS
    # [platform]: bit name -> required value
    platform: dict[str, bool] = field(default_factory=dict)
    # [tcb.*]
    tcb: dict[str, TcbMinimum] = field(default_factory=dict)
    # [firmware]
    min_current_firmware: FirmwareVersion | None = None
    min_committed_firmware: FirmwareVersion | None = None

    def __post_init__(self) -> None:
        if self.report_data is not None and self.report_data_prefix is not None:
            raise PolicyError("guest.report_data_prefix", "give report_data (exact) or "
                              "report_data_prefix, not both")
        unknown = set(self.tcb) - set(TCB_FIELDS)
        if unknown:
            raise PolicyError(f"tcb.{sorted(unknown)[0]}", "is not a TCB field")
        unknown = set(self.platform) - set(PLATFORM_BITS)
        if unknown:
            raise PolicyError(f"platform.{sorted(unknown)[0]}", "is not a PLATFORM_INFO bit")

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        """Parse a policy file; PolicyError names the key that is wrong."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PolicyError("toml", str(error)) from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Policy:
        """The same schema as the TOML file, from already-parsed data."""
        _keys("", doc, ("report", "guest", "guest_policy", "platform", "tcb", "firmware"))
        kwargs: dict[str, Any] = {}
        _parse_report(_table("report", doc.get("report", {})), kwargs)
        _parse_guest(_table("guest", doc.get("guest", {})), kwargs)
        _parse_guest_policy(_table("guest_policy", doc.get("guest_policy", {})), kwargs)
        platform = _table("platform", doc.get("platform", {}))
        _keys("platform", platform, PLATFORM_BITS)
        kwargs["platform"] = {k: _bool(f"platform.{k}", v) for k, v in platform.items()}
        tcb = _table("tcb", doc.get("tcb", {}))
        _keys("tcb", tcb, TCB_FIELDS)
        kwargs["tcb"] = {name: _parse_tcb(f"tcb.{name}", _table(f"tcb.{name}", value))
                         for name, value in tcb.items()}
        firmware = _table("firmware", doc.get("firmware", {}))
        _keys("firmware", firmware, ("min_current", "min_committed"))
        if "min_current" in firmware:
            kwargs["min_current_firmware"] = _firmware("firmware.min_current",
                                                       firmware["min_current"])
        if "min_committed" in firmware:
            kwargs["min_committed_firmware"] = _firmware("firmware.min_committed",
                                                         firmware["min_committed"])
        return cls(**kwargs)


def _parse_report(table: dict[str, Any], kwargs: dict[str, Any]) -> None:
    _keys("report", table, ("versions", "min_version", "signing_keys", "vmpls", "chip_ids"))
    if "versions" in table:
        kwargs["versions"] = frozenset(
            _int(f"report.versions[{i}]", v, min(KNOWN_VERSIONS), max(KNOWN_VERSIONS))
            for i, v in enumerate(_list("report.versions", table["versions"])))
    if "min_version" in table:
        kwargs["min_version"] = _int("report.min_version", table["min_version"], 2,
                                     max(KNOWN_VERSIONS))
    if "signing_keys" in table:
        keys = set()
        for i, name in enumerate(_list("report.signing_keys", table["signing_keys"])):
            if not isinstance(name, str) or name not in SIGNING_KEYS:
                raise PolicyError(f"report.signing_keys[{i}]",
                                  f"{name!r} is not one of {', '.join(SIGNING_KEYS)}")
            keys.add(SIGNING_KEYS[name])  # type: ignore[index]
        kwargs["signing_keys"] = frozenset(keys)
    if "vmpls" in table:
        kwargs["vmpls"] = frozenset(_int(f"report.vmpls[{i}]", v, 0, 3)
                                    for i, v in enumerate(_list("report.vmpls",
                                                                table["vmpls"])))
    if "chip_ids" in table:  # 64 bytes, or Turin's 8-byte hwID (the rest of CHIP_ID is zero)
        kwargs["chip_ids"] = tuple(c.ljust(64, b"\0") for c in
                                   _hex_list("report.chip_ids", table["chip_ids"], (8, 64)))


def _parse_guest(table: dict[str, Any], kwargs: dict[str, Any]) -> None:
    _keys("guest", table, ("measurements", "host_data", "report_data", "report_data_prefix",
                           "id_key_digests", "author_key_digests", "family_id", "image_id",
                           "min_svn"))
    lists = {"measurements": 48, "id_key_digests": 48, "author_key_digests": 48}
    singles = {"host_data": (32,), "report_data": (64,), "report_data_prefix": range(1, 65),
               "family_id": (16,), "image_id": (16,)}
    for key, size in lists.items():
        if key in table:
            kwargs[key] = _hex_list(f"guest.{key}", table[key], (size,))
    for key, sizes in singles.items():
        if key in table:
            kwargs[key] = _hex(f"guest.{key}", table[key], sizes)
    if "min_svn" in table:
        kwargs["min_svn"] = _int("guest.min_svn", table["min_svn"], 0, 0xFFFFFFFF)


def _parse_guest_policy(table: dict[str, Any], kwargs: dict[str, Any]) -> None:
    _keys("guest_policy", table, (*PERMISSIONS, *RESTRICTIONS))
    allowed, required = DEFAULT_ALLOWED, PolicyFlags(0)
    for key, flag in PERMISSIONS.items():
        if key in table:
            allowed = (allowed | flag) if _bool(f"guest_policy.{key}", table[key]) else (
                allowed & ~flag)
    for key, flag in RESTRICTIONS.items():
        if key in table and _bool(f"guest_policy.{key}", table[key]):
            required |= flag
    kwargs["allowed_flags"], kwargs["required_flags"] = allowed, required


def _parse_tcb(section: str, table: dict[str, Any]) -> TcbMinimum:
    _keys(section, table, TCB_COMPONENTS)
    return TcbMinimum(**{k: _int(f"{section}.{k}", v, 0, 0xFF) for k, v in table.items()})


# -- validation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    """One named check: what the policy wanted and what the report shows."""

    name: str
    passed: bool
    expected: str
    actual: str

    def to_dict(self) -> dict[str, object]:
        """The check as JSON-ready values."""
        return {"name": self.name, "passed": self.passed, "expected": self.expected,
                "actual": self.actual}


@dataclass(frozen=True)
class ValidationResult:
    """Every check the policy configured, in a stable order; `ok` only if all passed."""

    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        """The names of the checks that failed."""
        return tuple(c.name for c in self.checks if not c.passed)

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_json(self) -> str:
        """The result as `sevsim validate --json` prints it."""
        return json.dumps({"ok": self.ok, "failed": list(self.failed),
                           "checks": [c.to_dict() for c in self.checks]}, indent=2)


def _hexes(values: Iterable[bytes]) -> str:
    return " | ".join(v.hex() for v in values)


def _fw(version: FirmwareVersion) -> str:
    return "{}.{}.{}".format(*version)


def _flag_names(flags: PolicyFlags) -> str:
    return "|".join(f.name or "" for f in PolicyFlags if f in flags) or "none"


class _Checks:
    """Collects CheckResults; `add` turns a comparison into a named pass/fail."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def add(self, name: str, passed: bool, expected: str, actual: str) -> None:
        self.results.append(CheckResult(name, passed, expected, actual))


def validate_report(report: bytes | AttestationReport, policy: Policy) -> ValidationResult:
    """Check a report's claims against the policy (not its signature: `verify` does that).

    Bytes are parsed strictly first; a report that does not parse raises
    `ReportFormatError` rather than producing a result, since it has no claims to check."""
    if not isinstance(report, AttestationReport):
        report = AttestationReport.from_bytes(bytes(report))
    checks = _Checks()
    _check_report(report, policy, checks)
    _check_guest(report, policy, checks)
    _check_guest_policy(report, policy, checks)
    _check_platform(report, policy, checks)
    _check_tcb(report, policy, checks)
    _check_firmware(report, policy, checks)
    return ValidationResult(tuple(checks.results))


def _check_report(r: AttestationReport, p: Policy, c: _Checks) -> None:
    if p.versions is not None:
        c.add("report.versions", r.version in p.versions,
              " | ".join(map(str, sorted(p.versions))), str(r.version))
    if p.min_version is not None:
        c.add("report.min_version", r.version >= p.min_version, f">= {p.min_version}",
              str(r.version))
    c.add("report.signing_keys", r.signer_info.signing_key in p.signing_keys,
          " | ".join(k.name for k in sorted(p.signing_keys)), r.signer_info.signing_key.name)
    c.add("report.vmpls", r.vmpl in p.vmpls, " | ".join(map(str, sorted(p.vmpls))),
          str(r.vmpl))
    if p.chip_ids is not None:
        c.add("report.chip_ids", r.chip_id in p.chip_ids, _hexes(p.chip_ids), r.chip_id.hex())


def _check_guest(r: AttestationReport, p: Policy, c: _Checks) -> None:
    allow_lists: tuple[tuple[str, tuple[bytes, ...] | None, bytes], ...] = (
        ("measurements", p.measurements, r.measurement),
        ("id_key_digests", p.id_key_digests, r.id_key_digest),
        ("author_key_digests", p.author_key_digests, r.author_key_digest),
    )
    for name, allowed, actual in allow_lists:
        if allowed is not None:
            c.add(f"guest.{name}", actual in allowed, _hexes(allowed), actual.hex())
    exact = (("host_data", p.host_data, r.host_data), ("report_data", p.report_data,
                                                       r.report_data),
             ("family_id", p.family_id, r.family_id), ("image_id", p.image_id, r.image_id))
    for name, wanted, actual in exact:
        if wanted is not None:
            c.add(f"guest.{name}", actual == wanted, wanted.hex(), actual.hex())
    if p.report_data_prefix is not None:
        c.add("guest.report_data_prefix", r.report_data.startswith(p.report_data_prefix),
              p.report_data_prefix.hex() + "…", r.report_data.hex())
    if p.min_svn is not None:
        c.add("guest.min_svn", r.guest_svn >= p.min_svn, f">= {p.min_svn}", str(r.guest_svn))


def _check_guest_policy(r: AttestationReport, p: Policy, c: _Checks) -> None:
    flags = PolicyFlags(r.policy & ~PolicyFlags.RESERVED_MBO & 0x3FF0000)
    shown = f"0x{r.policy:x} ({_flag_names(flags)})"
    for key, flag in PERMISSIONS.items():
        if flag not in p.allowed_flags:
            c.add(f"guest_policy.{key}", flag not in flags, f"{flag.name} clear", shown)
    for key, flag in RESTRICTIONS.items():
        if flag in p.required_flags:
            c.add(f"guest_policy.{key}", flag in flags, f"{flag.name} set", shown)


def _check_platform(r: AttestationReport, p: Policy, c: _Checks) -> None:
    info = PlatformInfo(r.platform_info)
    for key, wanted in p.platform.items():
        bit, since = PLATFORM_BITS[key]
        name = f"platform.{key}"
        if r.version < since:  # the report cannot say either way: fail closed
            c.add(name, False, f"{bit.name}={int(wanted)}",
                  f"not reported before version {since} (report is v{r.version})")
        else:
            actual = bit in info
            c.add(name, actual == wanted, f"{bit.name}={int(wanted)}",
                  f"{bit.name}={int(actual)} (0x{r.platform_info:x})")


def _check_tcb(r: AttestationReport, p: Policy, c: _Checks) -> None:
    for name in TCB_FIELDS:
        minimum = p.tcb.get(name)
        if minimum is None:
            continue
        try:
            tcb: TcbVersion | None = r.tcb(f"{name}_tcb")
        except SnpFormatError as error:  # reserved bytes set, unknown CPUID: fail closed
            tcb, why = None, str(error)
        for component in TCB_COMPONENTS:
            wanted: int | None = getattr(minimum, component)
            if wanted is None:
                continue
            check = f"tcb.{name}.{component}"
            if tcb is None:
                c.add(check, False, f">= {wanted}", f"undecodable: {why}")
                continue
            actual: int | None = getattr(tcb, component)
            if actual is None:  # fmc on a Milan/Genoa TCB, which has none
                continue
            c.add(check, actual >= wanted, f">= {wanted}", str(actual))


def _check_firmware(r: AttestationReport, p: Policy, c: _Checks) -> None:
    pairs: tuple[tuple[str, FirmwareVersion | None, FirmwareVersion], ...] = (
        ("firmware.min_current", p.min_current_firmware,
         (r.current_major, r.current_minor, r.current_build)),
        ("firmware.min_committed", p.min_committed_firmware,
         (r.committed_major, r.committed_minor, r.committed_build)),
    )
    for name, wanted, actual in pairs:
        if wanted is not None:
            c.add(name, actual >= wanted, f">= {_fw(wanted)}", _fw(actual))


def policy_for(report: AttestationReport) -> Policy:
    """A policy that pins everything this report claims: a starting point for writing one
    (and what the tests mutate against)."""
    flags = PolicyFlags(report.policy & ~PolicyFlags.RESERVED_MBO & 0x3FF0000)
    tcbs = {}
    for name in TCB_FIELDS:
        t = report.tcb(f"{name}_tcb")
        tcbs[name] = TcbMinimum(t.bootloader, t.tee, t.snp, t.microcode, t.fmc)
    platform = {k: bit in PlatformInfo(report.platform_info)
                for k, (bit, since) in PLATFORM_BITS.items() if report.version >= since}
    return Policy(
        versions=frozenset({report.version}), min_version=report.version,
        signing_keys=frozenset({report.signer_info.signing_key}),
        vmpls=frozenset({report.vmpl}), chip_ids=(report.chip_id,),
        measurements=(report.measurement,), host_data=report.host_data,
        report_data=report.report_data, id_key_digests=(report.id_key_digest,),
        author_key_digests=(report.author_key_digest,), family_id=report.family_id,
        image_id=report.image_id, min_svn=report.guest_svn,
        allowed_flags=flags & PolicyFlags(sum(PERMISSIONS.values())),
        required_flags=flags & PolicyFlags(sum(RESTRICTIONS.values())),
        platform=platform, tcb=tcbs,
        min_current_firmware=(report.current_major, report.current_minor,
                              report.current_build),
        min_committed_firmware=(report.committed_major, report.committed_minor,
                                report.committed_build))

