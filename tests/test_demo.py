"""`sevsim demo`: the document its run computes (the session's `demo_document`), checked
against the mechanisms it shows: the planted secret in the host's views, the registers, the
matrix's cells, the report's measurement and chain, the vTPM's PCRs, the key broker's
decisions; then the command itself, and reproducibility from the seed."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import DEMO_SEED, fnv1a64, symbol
from sevsim.abi.snp_report import AttestationReport
from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.runner import cells
from sevsim.attest import CertBundle, verify_report_chain
from sevsim.attest.measure import guest_digest
from sevsim.attest.snp_verify import der_certificates
from sevsim.cli.main import app
from sevsim.demo import broker, scenario
from sevsim.demo import evidence as evidence_doc
from sevsim.demo.html import render_html
from sevsim.demo.scenario import PROGRAMS, failed_expectations, run_demo, secret_page
from sevsim.guest.build import build_guest
from sevsim.guest.kernel import kernel_identity
from sevsim.host.elf import parse_elf

Document = dict[str, Any]
PAGE = 4096


def page(b64: str) -> bytes:
    data = base64.b64decode(b64)
    assert len(data) == PAGE
    return data


def blocks(secret: bytes) -> list[bytes]:
    return [secret[i:i + 16] for i in range(0, len(secret), 16)]


def tenants(doc: Document) -> dict[str, Document]:
    return {t["mode"]: t for t in doc["tenants"]}


@pytest.fixture(scope="module")
def attested_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SNP tenant's program, built here from its source as a guest owner would."""
    return build_guest([PROGRAMS / "attested.c"], tmp_path_factory.mktemp("demo") / "a.elf")


def test_the_document_has_the_schemas_keys_in_order(demo_document: Document) -> None:
    assert list(demo_document) == ["schema", "seed", "chip", "platform", "secret", "tenants",
                                   "attacks", "attestation", "vtpm", "kbs", "timings"]
    assert demo_document["schema"] == "sevsim.demo/1"
    assert demo_document["seed"] == DEMO_SEED.hex() and demo_document["chip"] == "milan"
    assert [t["mode"] for t in demo_document["tenants"]] == ["none", "sev", "sev-es", "snp"]
    assert next(iter(demo_document["timings"])) == "total_s"
    json.dumps(demo_document)  # JSON as it is


def test_each_tenant_computed_over_the_planted_secret(demo_document: Document) -> None:
    secret = bytes.fromhex(demo_document["secret"])
    assert len(secret) == PAGE and secret != secret_page(0x5EC12E75EED0F00D)  # not the default
    for tenant in demo_document["tenants"]:
        first = tenant["pages"][0]
        assert first["label"] == "secret"
        assert page(first["guest"]) == secret  # what the guest's vCPU sees
        assert f"secret digest: 0x{fnv1a64(secret):016x}" in tenant["console"]


def test_the_secret_is_in_the_plain_tenants_host_view_only(demo_document: Document) -> None:
    secret = bytes.fromhex(demo_document["secret"])
    by_mode = tenants(demo_document)
    plain = by_mode["none"]["pages"][0]
    assert page(plain["host"]) == secret
    assert by_mode["none"]["secret_in_host_view"]
    # the DIMMs hold the plain tenant's plaintext unless TSME (Milan's default) encrypts them
    tsme = "tsme" in demo_document["platform"].split(",")
    assert by_mode["none"]["secret_in_dram_dump"] is not tsme
    for mode in ("sev", "sev-es", "snp"):
        tenant = by_mode[mode]
        host = b"".join(page(p["host"]) for p in tenant["pages"])
        assert not any(block in host for block in blocks(secret)), mode
        assert not tenant["secret_in_host_view"] and not tenant["secret_in_dram_dump"]
        shared = next(p for p in tenant["pages"] if p["label"] == "shared")
        assert page(shared["host"]) == page(shared["guest"])  # a shared page is plaintext
        assert page(shared["host"]).startswith(b"PUBLIC-MESSAGE-FOR-THE-HOST")
    spas = [t["pages"][0]["spa"] for t in demo_document["tenants"]]
    assert len(set(spas)) == 4  # four frames, four tenants
    assert len({t["asid"] for t in demo_document["tenants"]}) == 4


def test_the_secret_search_finds_a_single_block() -> None:
    """The search the flags come from: one 16-byte block is enough, unaligned ones are not
    what the engine leaves."""
    secret = secret_page(12345)
    hay = bytes(4096) + secret[160:176] + bytes(4080)
    assert scenario.contains_secret(hay, secret)
    assert not scenario.contains_secret(bytes(8) + secret[160:176] + bytes(8), secret)
    assert not scenario.contains_secret(bytes(8192), secret)


def test_registers_readable_in_the_vmcb_hidden_in_the_vmsa(demo_document: Document) -> None:
    by_mode = tenants(demo_document)
    for mode in ("none", "sev"):
        regs = by_mode[mode]["registers"]
        assert regs["where"] == "VMCB" and regs["vmsa"] is None
        assert regs["host"] == regs["guest"]
        assert set(regs["host"]) == set(scenario.REGISTERS)
    for mode in ("sev-es", "snp"):
        regs = by_mode[mode]["registers"]
        assert regs["where"] == "VMSA"
        assert all(value is None for value in regs["host"].values())
        vmsa = page(regs["vmsa"])
        for value in regs["guest"].values():
            if int(value, 16) > 0xFFFF:  # small values could occur in any ciphertext
                assert struct.pack("<Q", int(value, 16)) not in vmsa
    assert by_mode["sev-es"]["registers"]["vmsa"] != by_mode["snp"]["registers"]["vmsa"]


def test_every_matrix_cell_is_there(demo_document: Document) -> None:
    attacks = demo_document["attacks"]
    assert attacks["modes"] == ["none", "sev", "sev-es", "snp"]
    want = [(a, s.mode, s.chip, sorted(s.features)) for a, s in cells(ATTACKS.values())]
    got = [(c["attack"], c["mode"], c["chip"], c["features"]) for c in attacks["cells"]]
    assert got == want
    assert [a["id"] for a in attacks["attacks"]] == list(ATTACKS)
    assert {c["verdict"] for c in attacks["cells"]} <= {"✗", "✓", "n/a"}
    snooping = {c["mode"]: c for c in attacks["cells"] if c["attack"] == "A0"
                and not c["features"] and c["chip"] == "milan"}
    assert snooping["none"]["verdict"] == "✗" and snooping["snp"]["verdict"] == "✓"


def test_the_report_measures_the_launched_program(demo_document: Document,
                                                  attested_elf: Path) -> None:
    attestation = demo_document["attestation"]
    report = base64.b64decode(attestation["report"])
    assert len(report) == 0x4A0
    expected = guest_digest("snp", parse_elf(attested_elf.read_bytes()), 16 << 20, 1,
                            kernel_identity())
    parsed = AttestationReport.from_bytes(report)
    assert parsed.measurement == expected
    assert parsed.report_data == hashlib.sha512(b"sevsim demo relying party\0"
                                                + DEMO_SEED).digest()
    assert attestation["verdict"] == "ok"
    fields = {f["name"]: f for f in attestation["fields"]}
    assert fields["guest.measurements"]["value"] == expected.hex()
    assert all(f["ok"] for f in attestation["fields"])


def test_the_chain_shown_verifies_the_report(demo_document: Document) -> None:
    attestation = demo_document["attestation"]
    chain = {c["role"]: c for c in attestation["chain"]}
    assert list(chain) == ["ARK", "ASK", "VCEK"]
    assert [chain[r]["signed_by"] for r in chain] == ["ARK", "ARK", "ASK"]
    assert chain["VCEK"]["key"] == "EC P-384" and chain["ARK"]["key"] == "RSA-4096"
    assert chain["VCEK"]["serial"] == "0"  # as AMD's
    der = {role: der_certificates(c["pem"].encode())[0] for role, c in chain.items()}
    bundle = CertBundle(der["VCEK"], der["ASK"], der["ARK"])
    report = base64.b64decode(attestation["report"])
    assert verify_report_chain(report, bundle, trust="sevsim").ok
    flipped = report[:0x90] + bytes([report[0x90] ^ 1]) + report[0x91:]
    assert not verify_report_chain(flipped, bundle, trust="sevsim").ok


def test_the_vtpm_pcrs_replay_from_its_events(demo_document: Document) -> None:
    vtpm = demo_document["vtpm"]
    assert vtpm["quote"]["ok"] and all(c["ok"] for c in vtpm["quote"]["checks"])
    pcrs: dict[int, bytes] = {}
    for event in vtpm["events"]:
        if event["type"] == "EV_NO_ACTION":
            continue
        old = pcrs.get(event["pcr"], bytes(32))
        pcrs[event["pcr"]] = hashlib.sha256(old + bytes.fromhex(event["digest"])).digest()
    quoted = {int(p): bytes.fromhex(v) for p, v in vtpm["pcrs"]["sha256"].items()}
    assert quoted == {p: v for p, v in pcrs.items() if p in quoted}
    assert sorted(quoted) == list(range(9))
    assert any(e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION" and e["pcr"] == 4
               for e in vtpm["events"])


def test_the_broker_releases_to_the_snp_tenant_only(demo_document: Document,
                                                    attested_elf: Path) -> None:
    kbs = demo_document["kbs"]
    assert kbs["resource"] == broker.RESOURCE
    attempts = {a["tenant"]: a for a in kbs["attempts"]}
    assert list(attempts) == ["snp", "one-byte twin", "debuggable twin"]
    genuine, twin, debuggable = attempts.values()
    assert genuine["released"] and genuine["secret_matches"] and genuine["reason"] == ""
    image = attested_elf.read_bytes()
    assert genuine["measurement"] == guest_digest("snp", parse_elf(image), 16 << 20, 1,
                                                  kernel_identity()).hex()
    other = image.replace(*scenario.ONE_BYTE)
    assert twin["measurement"] == guest_digest("snp", parse_elf(other), 16 << 20, 1,
                                               kernel_identity()).hex()
    assert debuggable["measurement"] == genuine["measurement"]
    assert int(debuggable["policy"], 16) & (1 << 19)  # DEBUG
    for attempt, rule in ((twin, "guest.measurements"),
                          (debuggable, "guest_policy.allow_debug")):
        assert not attempt["released"] and not attempt["secret_matches"]
        assert attempt["reason"].startswith(f"attestation-policy: {rule}:"), attempt["reason"]


def test_checks_of_one_tenant_fail_as_they_should(tmp_path: Path, attested_elf: Path) -> None:
    """One SNP tenant against a broker, its evidence checked by the demo's code: the right
    inputs pass; another resource is no match (secret_matches compares the guest's buffer
    with the broker's resource), another nonce fails the quote, another expected
    measurement fails the report."""
    from sevsim import Host

    image = attested_elf.read_bytes()
    expected = guest_digest("snp", parse_elf(image), 16 << 20, 1, kernel_identity())
    host = Host(chip="milan", memory="64M", seed=b"match")
    with broker.key_broker(b"the broker's 32-byte secret ....", expected, tmp_path) as kbs:
        mark = kbs.last_audit_id()
        run = broker.run_attested(host, image, kbs.url, bytes(64))
        decisions = kbs.decisions_after(mark)
    assert run.exit_code == 0, run.console
    where = symbol(attested_elf, "secret")
    right = broker.kbs_attempt("snp", run, image, 0x30000,
                                 b"the broker's 32-byte secret ....", where, decisions)
    wrong = broker.kbs_attempt("snp", run, image, 0x30000,
                                 b"another 32-byte secret ..........", where, decisions)
    assert right["released"] and right["secret_matches"]
    assert not wrong["secret_matches"]
    report, table, evidence, event_log = run.outputs
    certs = CertBundle.from_cert_table(table)
    good = evidence_doc.vtpm_document(evidence, event_log, bytes(32), certs, expected, image)
    assert good["quote"]["ok"]
    assert [c["name"] for c in good["quote"]["checks"]] == [
        "report", "quote", "ak-bound", "event-log", "expected"]
    replayed = evidence_doc.vtpm_document(evidence, event_log, b"\1" * 32, certs, expected,
                                          image)
    assert not replayed["quote"]["ok"]
    assert [(c["name"], c["ok"]) for c in replayed["quote"]["checks"]] == [
        ("report", True), ("quote", False)]
    assert "nonce" in replayed["quote"]["checks"][-1]["detail"]
    other_program = evidence_doc.vtpm_document(evidence, event_log, bytes(32), certs, expected,
                                               image + b"\0")
    assert other_program["quote"]["checks"][-1]["name"] == "expected"
    assert not other_program["quote"]["checks"][-1]["ok"]
    assert evidence_doc.attestation_document(report, certs, expected, bytes(64))["verdict"] \
        == "ok"
    wrong_digest = evidence_doc.attestation_document(report, certs, bytes(48), bytes(64))
    assert wrong_digest["verdict"] == "failed: guest.measurements"


def test_expectations_name_what_failed(demo_document: Document) -> None:
    assert failed_expectations(demo_document) == []
    doc = copy.deepcopy(demo_document)
    tenants(doc)["none"]["secret_in_host_view"] = False
    tenants(doc)["sev"]["secret_in_dram_dump"] = True
    tenants(doc)["snp"]["registers"]["host"] = tenants(doc)["snp"]["registers"]["guest"]
    doc["kbs"]["attempts"][2]["released"] = True
    assert failed_expectations(doc) == [
        "the plain tenant's secret is not in the host's view",
        "the sev tenant's secret is visible to the host",
        "the snp tenant's registers are readable by the host",
        "the broker released its secret to the debuggable twin"]


def test_sevsim_demo_exit_1_names_the_failed_expectation(demo_document: Document,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    doc = copy.deepcopy(demo_document)
    doc["attestation"]["verdict"] = "failed: signature"
    monkeypatch.setattr(scenario, "run_demo", lambda seed, jobs, progress: doc)
    result = CliRunner().invoke(app, ["demo", "--seed", "01"])
    assert result.exit_code == 1
    assert "the SNP tenant's report: failed: signature" in result.stderr


@pytest.mark.parametrize(("args", "status", "words"), [
    (["--seed", ""], 125, "ConfigError"),
    (["--seed", "00" * 65], 125, "ConfigError"),
    (["--seed", "xyz"], 2, "not hex"),
    (["--jobs", "0"], 125, "--jobs 0"),
    (["--jobs", "two"], 2, "--jobs"),
    (["--json", "/nonexistent/demo.json"], 125, "cannot write a file there"),
    (["--json", "/"], 125, "cannot write a file there"),
    (["--html", "/nonexistent/report.html"], 125, "cannot write a file there"),
])
def test_bad_flags(args: list[str], status: int, words: str) -> None:
    result = CliRunner().invoke(app, ["demo", *args])
    assert result.exit_code == status, result.output
    assert words in result.stderr


def test_sevsim_demo_reproduces_the_document(demo_document: Document, tmp_path: Path) -> None:
    """The command, as a user runs it, with the fixture's seed: exit 0, its --json file is
    the fixture's document but for the timings, and its --html file the report of that file."""
    out, report = tmp_path / "demo.json", tmp_path / "report.html"
    ran = subprocess.run([sys.executable, "-m", "sevsim", "demo", "--seed", DEMO_SEED.hex(),
                          "--jobs", "2", "--json", str(out), "--html", str(report)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, ran.stderr
    assert "every expectation held" in ran.stdout
    for shown in ("Certificate chain", "one-byte twin", "debuggable twin", "A20"):
        assert shown in ran.stdout
    again = json.loads(out.read_text(encoding="utf-8"))
    assert report.read_text(encoding="utf-8") == render_html(again)
    assert list(again) == list(demo_document)
    assert set(again.pop("timings")) == set(demo_document["timings"])
    assert again == {k: v for k, v in demo_document.items() if k != "timings"}


def test_another_seed_gives_another_document(demo_document: Document) -> None:
    seen: dict[str, tuple[int, int]] = {}
    other = run_demo(b"another seed", jobs=2,
                     progress=lambda step, done, total: seen.__setitem__(step, (done, total)))
    assert seen == {"tenants": (4, 4), "attacks": (len(cells(ATTACKS.values())),) * 2,
                    "kbs": (3, 3)}  # every bar ends full
    assert failed_expectations(other) == []
    assert other["secret"] != demo_document["secret"]
    assert other["attestation"]["report"] != demo_document["attestation"]["report"]
    differ = [k for k in other if k not in ("seed", "timings") and other[k] != demo_document[k]]
    # the programs are the same, so are their measurements, PCRs and the broker's decisions
    assert set(differ) == {"secret", "tenants", "attacks", "attestation"}
