"""Every field of an SNP report by name, decoded: TCBs per generation, policy flags, platform
info, signer info, firmware versions. One dictionary feeds both `sevsim show --json` and the
human table, so the two never disagree."""

from __future__ import annotations

from typing import Any

from sevsim.abi.snp_report import OFFSETS, AttestationReport
from sevsim.abi.snp_tcb import Generation, PlatformInfo, PolicyFlags, TcbVersion
from sevsim.errors import SnpFormatError

TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")


def _tcb(value: int, generation: Generation) -> dict[str, Any]:
    out: dict[str, Any] = {"raw": f"0x{value:016x}"}
    try:
        tcb = TcbVersion.from_int(value, generation)
    except SnpFormatError as error:  # show what is there; verify/validate refuse it
        out["error"] = str(error)
        return out
    if tcb.fmc is not None:
        out["fmc"] = tcb.fmc
    out.update(bootloader=tcb.bootloader, tee=tcb.tee, snp=tcb.snp, microcode=tcb.microcode)
    return out


def report_fields(report: AttestationReport,
                  generation: Generation | None = None) -> dict[str, Any]:
    """The report as JSON-ready values, in layout order; byte strings as lowercase hex."""
    gen = generation or report.generation
    policy = report.policy_info
    platform = PlatformInfo.from_int(report.platform_info)
    out: dict[str, Any] = {"product": gen.value}
    for name in OFFSETS:
        if name.startswith("reserved_"):
            continue
        value = getattr(report, name)
        if name == "policy":
            out[name] = {"raw": f"0x{value:016x}", "abi_major": policy.abi_major,
                         "abi_minor": policy.abi_minor,
                         **{flag.name.lower(): bool(policy.flags & flag)
                            for flag in PolicyFlags
                            if flag is not PolicyFlags.RESERVED_MBO and flag.name}}
        elif name == "platform_info":
            out[name] = {"raw": f"0x{value:016x}",
                         **{flag.name.lower(): bool(platform & flag)
                            for flag in PlatformInfo if flag.name}}
        elif name == "signer_info":
            out[name] = {"author_key_en": value.author_key_en,
                         "mask_chip_key": value.mask_chip_key,
                         "signing_key": value.signing_key.name}
        elif name in TCB_FIELDS:
            out[name] = _tcb(value, gen)
        elif name in ("signature_r", "signature_s"):
            out[name] = f"{value:096x}"
        elif isinstance(value, bytes):
            out[name] = value.hex()
        else:
            out[name] = value
    out["current_version"] = (f"{report.current_major}.{report.current_minor}."
                              f"{report.current_build}")
    out["committed_version"] = (f"{report.committed_major}.{report.committed_minor}."
                                f"{report.committed_build}")
    return out


def flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, text) rows for a table."""
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".")
        else:
            rows.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return rows
