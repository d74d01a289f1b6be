"""Fuzzing every attestation-facing parser: whatever bytes come in, a parser either returns a
value that serialises back to exactly those bytes or raises its own typed error; nothing else
escapes (no IndexError, struct.error, OverflowError, UnicodeDecodeError...).

Inputs are real structures (AMD's reports and VCEKs from shared/data, and sevsim's own)
mutated by hypothesis — bytes changed, cut short, extended — and arbitrary bytes. The default
run takes 300 inputs per parser; the test marked `fuzz` (`pytest -m fuzz`, run by .ci/run)
takes FUZZ_EXAMPLES inputs spread over all of them, 100,000 unless set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_errors import SnpFormatError
from sevsim.abi.snp_guest_msg import (
    KeyRequest,
    MessageHeader,
    MsgType,
    ReportRequest,
    SecretsPage,
    seal_message,
)
from sevsim.abi.snp_launch import IdAuthInfo, IdBlock
from sevsim.abi.snp_report import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    AttestationReport,
    ReportResponse,
    build_cert_table,
    parse_cert_table,
)
from sevsim.abi.snp_tcb import Generation, PlatformInfo, SnpPolicy, TcbVersion

VECTORS = Path(__file__).resolve().parent / "data" / "snp"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100000"))


@dataclass(frozen=True)
class Target:
    parse: Callable[[bytes], object]
    unparse: Callable[[object], bytes] | None  # None: not byte-exact (e.g. DER re-encoding)
    seeds: tuple[bytes, ...]


def _report_seeds() -> tuple[bytes, ...]:
    seeds = [(VECTORS / "milan-v2-a" / "report.bin").read_bytes(),
             bytes.fromhex((VECTORS / "milan-v2-b" / "report.hex").read_text().strip())]
    for version in (3, 5):
        seeds.append(AttestationReport(version=version, cpuid_fam_id=0x1A if version == 5
                                       else 0x19).to_bytes())
    return tuple(seeds)


def _id_auth_seed() -> bytes:
    key = ec.derive_private_key(7, ec.SECP384R1())
    return IdAuthInfo.create(IdBlock(bytes(48)), key, key).to_bytes()


def _tcb(value: bytes) -> TcbVersion:
    return TcbVersion.from_int(int.from_bytes(value[:8].ljust(8, b"\0"), "little"),
                               (Generation.MILAN, Generation.TURIN)[len(value) % 2])


def _u64(parse: Callable[[int], object]) -> Callable[[bytes], object]:
    def go(blob: bytes) -> object:
        if len(blob) != 8:
            raise SnpFormatError("u64", "8 bytes")
        return parse(int.from_bytes(blob, "little"))
    return go


VCEKS = tuple((VECTORS / name / "vcek.der").read_bytes()
              for name in ("milan-v2-a", "milan-v2-b", "turin-vcek"))
TARGETS: dict[str, Target] = {
    "attestation report": Target(AttestationReport.from_bytes,
                                 lambda r: r.to_bytes(),  # type: ignore[attr-defined]
                                 _report_seeds()),
    "report response": Target(ReportResponse.from_bytes, None,
                              (ReportResponse(0, _report_seeds()[0]).to_bytes(),)),
    "certificate table": Target(parse_cert_table, None, (
        build_cert_table([(GUID_VCEK, VCEKS[0]), (GUID_ASK, b"ask"), (GUID_ARK, b"ark")]),
        build_cert_table([(uuid.UUID(int=1), b"x" * 40)]))),
    "VCEK certificate": Target(SnpCertificate.from_der, None, VCEKS),
    "ID block": Target(IdBlock.from_bytes, lambda b: b.to_bytes(),  # type: ignore[attr-defined]
                       (IdBlock(bytes(range(48)), b"F" * 16, b"I" * 16, 3, 0x30000).to_bytes(),)),
    "ID auth info": Target(IdAuthInfo.from_bytes, None, (_id_auth_seed(),)),
    "guest message header": Target(MessageHeader.from_bytes, None, (seal_message(
        bytes(range(32)), MsgType.REPORT_REQ, 1, ReportRequest().to_bytes(), vmpck=1),)),
    "key request": Target(KeyRequest.from_bytes, None, (KeyRequest().to_bytes(),)),
    "secrets page": Target(SecretsPage.from_bytes, None,
                           (SecretsPage((bytes(32),) * 4).to_bytes(),)),
    "TCB version": Target(_tcb, None, (bytes(8), bytes(9))),
    "guest policy": Target(_u64(SnpPolicy.from_int), None, ((0x30000).to_bytes(8, "little"),)),
    "platform info": Target(_u64(PlatformInfo.from_int), None, ((1).to_bytes(8, "little"),)),
}


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few bytes changed, then perhaps cut short or extended."""
    blob = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        if blob:
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from(("keep", "keep", "cut", "extend")))
    if cut == "cut":
        del blob[draw(st.integers(0, len(blob))):]
    elif cut == "extend":
        blob += draw(st.binary(min_size=1, max_size=64))
    return bytes(blob)


def check(name: str, blob: bytes) -> None:
    """Parse; a typed refusal is fine, anything else escaping is a bug, and what parses must
    serialise back byte for byte where the format allows only one encoding."""
    target = TARGETS[name]
    try:
        value = target.parse(blob)
    except SnpFormatError:
        return
    if target.unparse is not None:
        assert target.unparse(value) == blob, "parsed, but does not serialise back"


@st.composite
def fuzz_inputs(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(names))
    return name, draw(st.one_of(mutated(TARGETS[name].seeds), st.binary(max_size=2048)))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parsers_fail_only_with_their_typed_errors(name: str) -> None:
    @fuzz_settings(300)
    @given(fuzz_inputs((name,)))
    def one(case: tuple[str, bytes]) -> None:
        check(*case)

    one()


@pytest.mark.fuzz
@fuzz_settings(EXAMPLES)
@given(fuzz_inputs(tuple(sorted(TARGETS))))
def test_fuzz_every_parser(case: tuple[str, bytes]) -> None:
    """FUZZ_EXAMPLES inputs (100,000 unless set), spread over every parser."""
    check(*case)


def test_the_seeds_parse() -> None:
    """Mutations start from valid structures, or the fuzzing would only test rejections."""
    for target in TARGETS.values():
        for seed in target.seeds:
            target.parse(seed)
