"""The demo's HTML report: one self-contained page drawn from a run's JSON document.

A reader should see what SEV changes rather than read about it: each tenant's pages as its
vCPU sees them beside what the hypervisor reads (byte images and entropy maps), the attack
matrix coloured by verdict with each cell's trace one click away, the certificate chain and
the report's checked fields, the vTPM's event log and PCRs, the key broker's decisions.

The page works offline and from a mail attachment: every picture is a PNG data URI written
here with zlib and struct, the CSS is inline, and nothing names an external URL. Every string
from the document is HTML-escaped, since a trace or a guest's console is attacker-influenced
text. The document is validated first (`validate_document`), so a malformed one gets a
`DemoDocumentError` naming the culprit instead of a half-drawn page.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import math
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sevsim.errors import ConfigError, DemoDocumentError

SCHEMA = "sevsim.demo/1"
PAGE = 4096
REPORT_SIZE = 0x4A0  # an SNP ATTESTATION_REPORT
PAGE_WIDTH = 64  # a page drawn as 64 x 64 pixels, one byte each
ENTROPY_BLOCK = 64  # bytes per entropy cell: one row of the byte image
MODES = ("none", "sev", "sev-es", "snp")
MODE_NAMES = {"none": "plain VM", "sev": "SEV", "sev-es": "SEV-ES", "snp": "SEV-SNP"}
REGISTERS = ("rip", "rsp", "rax", "rbx", "rcx", "rdx", "cr3")
TSME_NOTE = ("TSME is on (the platform's default): the DIMMs hold every page encrypted, the "
             "plain VM's too, so a DRAM dump shows no plaintext; the hypervisor still reads "
             "the plain VM's pages in the clear through the CPU.")
VERDICTS = {"✗": ("broken", "broken"), "✓": ("stopped", "stopped"), "n/a": ("na", "n/a")}
# the entropy colour scale, evenly spaced stops (viridis-like): no entropy dark blue, the
# most a block can have yellow
RAMP = ((13, 8, 135), (84, 2, 163), (185, 50, 137), (244, 136, 73), (240, 249, 33))


# -- pictures ------------------------------------------------------------------------------------
def png(rows: Sequence[bytes], colour: bool) -> bytes:
    """A PNG of 8-bit greyscale (or RGB) `rows`, each row's pixels as bytes: the format any
    browser decodes, written without an imaging library."""
    if not rows or not rows[0]:
        raise ConfigError("a picture needs at least one pixel")
    width = len(rows[0]) // (3 if colour else 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 2 if colour else 0, 0, 0, 0)
    raw = b"".join(b"\0" + row for row in rows)  # filter type 0 (None) on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def byte_image(data: bytes, width: int = PAGE_WIDTH) -> bytes:
    """`data` as a greyscale PNG, one byte a pixel, `width` to a row (the last row padded
    with zeros): ciphertext looks like noise, code and text like texture, zeros black."""
    padded = data + bytes(-len(data) % width)
    return png([padded[i:i + width] for i in range(0, len(padded), width)], colour=False)


def shannon_entropy(block: bytes) -> float:
    """Bits per byte of `block` (0 for a constant block, at most log2(len(block)))."""
    total = len(block)
    return -sum(n / total * math.log2(n / total) for n in Counter(block).values()) + 0.0


def entropies(page: bytes, block: int = ENTROPY_BLOCK) -> list[float]:
    """The Shannon entropy of each `block`-byte block of `page`, in address order."""
    return [shannon_entropy(page[i:i + block]) for i in range(0, len(page), block)]


def ramp(fraction: float) -> tuple[int, int, int]:
    """The colour scale at `fraction` (0..1) of the most entropy a block can have."""
    position = min(max(fraction, 0.0), 1.0) * (len(RAMP) - 1)
    stop = min(int(position), len(RAMP) - 2)
    t = position - stop
    r, g, b = (round(a + (z - a) * t) for a, z in zip(RAMP[stop], RAMP[stop + 1], strict=True))
    return r, g, b


def entropy_map(page: bytes, block: int = ENTROPY_BLOCK) -> bytes:
    """An RGB PNG of `page`'s block entropies, 8 blocks to a row (a 4096-byte page of
    64-byte blocks: 8 x 8, each cell one row of the byte image)."""
    top = math.log2(block)
    colours = [ramp(h / top) for h in entropies(page, block)]
    per_row = 8
    colours += [(0, 0, 0)] * (-len(colours) % per_row)  # a last row filled with black
    return png([bytes(v for c in colours[i:i + per_row] for v in c)
                for i in range(0, len(colours), per_row)], colour=True)


def data_uri(png_bytes: bytes) -> str:
    """A PNG inline in the page: the report fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


# -- the document's shape ------------------------------------------------------------------------
Check = Callable[[Any, str], None]


def _fail(path: str, message: str) -> DemoDocumentError:
    return DemoDocumentError(path, message)


def _typed(value: Any, path: str, kinds: type | tuple[type, ...], what: str) -> Any:
    # JSON's true and false are not numbers, though Python's bool is an int
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        shown = "null" if value is None else json.dumps(value) if isinstance(value, bool) \
            else type(value).__name__
        raise _fail(path, f"is {shown}, not {what}")
    return value


def _object(value: Any, path: str, required: Mapping[str, Check],
            optional: Mapping[str, Check] | None = None) -> None:
    _typed(value, path, dict, "an object")
    for key, check in required.items():
        if key not in value:
            raise _fail(path, f"has no {key!r}")
        check(value[key], f"{path}.{key}")
    for key, check in (optional or {}).items():
        if key in value:
            check(value[key], f"{path}.{key}")


def _text(value: Any, path: str) -> None:
    _typed(value, path, str, "a string")


def _flag(value: Any, path: str) -> None:
    _typed(value, path, bool, "true or false")


def _integer(value: Any, path: str) -> None:
    if _typed(value, path, int, "an integer") < 0:
        raise _fail(path, f"is {value}, a negative number")


def _seconds(value: Any, path: str) -> None:
    if not math.isfinite(_typed(value, path, (int, float), "a number")) or value < 0:
        raise _fail(path, f"is {value}, not a number of seconds")


def _hex(value: Any, path: str) -> None:
    try:
        bytes.fromhex(_typed(value, path, str, "hex"))
    except ValueError:
        raise _fail(path, "is not hex") from None


def _optional(check: Check) -> Check:
    def nullable(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)
    return nullable


def _one_of(*choices: str) -> Check:
    def member(value: Any, path: str) -> None:
        if _typed(value, path, str, "a string") not in choices:
            raise _fail(path, f"is {value!r}, not one of {', '.join(choices)}")
    return member


def _list(item: Check) -> Check:
    def each(value: Any, path: str) -> None:
        for i, element in enumerate(_typed(value, path, list, "a list")):
            item(element, f"{path}[{i}]")
    return each


def _mapping(item: Check) -> Check:
    def each(value: Any, path: str) -> None:
        for key, element in _typed(value, path, dict, "an object").items():
            item(element, f"{path}.{key}")
    return each


def _fields(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None
            ) -> Check:
    return lambda value, path: _object(value, path, required, optional)


def _b64(size: int) -> Check:
    def blob(value: Any, path: str) -> None:
        try:
            data = base64.b64decode(_typed(value, path, str, "base64"), validate=True)
        except binascii.Error:
            raise _fail(path, "is not base64") from None
        if len(data) != size:
            raise _fail(path, f"holds {len(data)} bytes, not {size}")
    return blob


_PAGE = _fields({"label": _text, "gpa": _integer, "spa": _integer,
                 "guest": _b64(PAGE), "host": _b64(PAGE)})
_REGS = _fields({name: _optional(_text) for name in REGISTERS})
_TENANT = _fields(
    {"mode": _one_of(*MODES), "asid": _integer, "console": _text, "pages": _list(_PAGE),
     "secret_in_host_view": _flag, "secret_in_dram_dump": _flag},
    {"registers": _fields({"where": _one_of("VMCB", "VMSA"), "host": _REGS, "guest": _REGS,
                           "vmsa": _optional(_b64(PAGE))})})
_CELL = _fields({"attack": _text, "mode": _one_of(*MODES), "chip": _text,
                 "features": _list(_text), "verdict": _one_of(*VERDICTS), "evidence": _text,
                 "stopped_by": _text, "trace": _list(_text)})
_ATTACKS = _fields({"modes": _list(_one_of(*MODES)), "cells": _list(_CELL)},
                   {"attacks": _list(_fields({"id": _text, "name": _text, "actor": _text,
                                              "source": _text}))})
_CERT = _fields({"role": _text, "subject": _text, "issuer": _text, "serial": _text,
                 "not_before": _text, "not_after": _text, "key": _text, "signed_by": _text,
                 "ok": _flag, "pem": _text})
_ATTESTATION = _fields({"report": _b64(REPORT_SIZE),
                        "fields": _list(_fields({"name": _text, "value": _text,
                                                 "check": _text, "ok": _flag})),
                        "chain": _list(_CERT), "verdict": _text})
_VTPM = _fields({"events": _list(_fields({"pcr": _integer, "type": _text, "digest": _hex,
                                          "description": _text})),
                 "pcrs": _mapping(_mapping(_hex))},
                {"quote": _fields({"ok": _flag, "checks": _list(_fields(
                    {"name": _text, "ok": _flag, "detail": _text}))})})
_KBS = _fields({"resource": _text, "attempts": _list(_fields(
    {"tenant": _text, "measurement": _hex, "policy": _text, "released": _flag,
     "reason": _text, "secret_matches": _flag}))})
_DOCUMENT = _fields({"schema": _text},
                    {"seed": _hex, "chip": _text, "platform": _text, "secret": _hex,
                     "tenants": _list(_TENANT), "attacks": _ATTACKS,
                     "attestation": _ATTESTATION, "vtpm": _VTPM, "kbs": _KBS,
                     "timings": _mapping(_seconds)})


def validate_document(document: Any) -> dict[str, Any]:
    """`document` itself if it has the demo's shape (sections may be missing); a bare
    `sevsim attack matrix --json` ({"modes", "cells"}) becomes an attacks-only run.
    DemoDocumentError naming the first culprit otherwise."""
    _typed(document, "document", dict, "a JSON object")
    if "schema" not in document and "cells" in document:
        document = {"schema": SCHEMA, "attacks": document}
    _DOCUMENT(document, "document")
    if document["schema"] != SCHEMA:
        raise _fail("document.schema", f"{document['schema']!r} is not {SCHEMA!r}")
    return document


def load_document(data: bytes) -> dict[str, Any]:
    """A run's JSON document from the bytes of its file, validated."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _fail("document", f"is not UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise _fail("document", f"is not JSON ({error.msg}, line {error.lineno} column "
                                f"{error.colno})") from None
    return validate_document(parsed)


# -- HTML ----------------------------------------------------------------------------------------
def esc(value: object) -> str:
    """Any value from the document as HTML text: never markup."""
    return html.escape(str(value), quote=True)


def _badge(ok: bool, good: str = "ok", bad: str = "failed") -> str:
    return f'<span class="badge {"good" if ok else "bad"}">{esc(good if ok else bad)}</span>'


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _figure(picture: bytes, caption: str, alt: str, cls: str = "") -> str:
    return (f'<figure class="{cls}"><img src="{data_uri(picture)}" alt="{esc(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _legend() -> str:
    top = int(math.log2(ENTROPY_BLOCK))
    stops = ", ".join(f"rgb{ramp(i / 10)} {i * 10}%" for i in range(11))
    return (f'<div class="legend"><span>0</span><span class="ramp" style="background: '
            f"linear-gradient(to right, {stops})\"></span><span>{top} bits/byte</span>"
            f"<small>Shannon entropy per {ENTROPY_BLOCK}-byte block: zeros are dark, text "
            f"and code in between, ciphertext and random secrets bright</small></div>")


def _page(tenant: int, page: Mapping[str, Any]) -> str:
    guest = base64.b64decode(page["guest"])
    host = base64.b64decode(page["host"])
    same = guest == host
    where = f"GPA {page['gpa']:#x} · SPA {page['spa']:#x}"
    views = []
    for who, data in (("guest", guest), ("host", host)):
        title = ("what the guest's vCPU reads" if who == "guest"
                 else "what the hypervisor / a DRAM dump reads")
        mean = sum(entropies(data)) / (PAGE // ENTROPY_BLOCK)
        views.append(
            f'<div class="view {who}"><h5>{esc(title)}</h5><div class="pics">'
            + _figure(byte_image(data), "bytes", f"{page['label']}: {who} view, bytes",
                      "bytes")
            + _figure(entropy_map(data), f"entropy, mean {mean:.2f}",
                      f"{page['label']}: {who} view, entropy", "entropy")
            + "</div></div>")
    # neutral: a page the guest shares is meant to be read; whether the secret leaked is
    # the tenant's verdict, searched in everything the host reads
    verdict = ('<span class="badge same">the host reads what the guest reads</span>' if same
               else '<span class="badge other">the host reads other bytes</span>')
    return (f'<div class="page" id="tenant-{tenant}-{esc(page["label"])}"><h4>page '
            f"<code>{esc(page['label'])}</code> <small>{esc(where)}</small> {verdict}</h4>"
            f'<div class="views">{"".join(views)}</div></div>')


def _registers(registers: Mapping[str, Any]) -> str:
    rows = []
    for name in REGISTERS:
        host, guest = registers["host"].get(name), registers["guest"].get(name)
        state = ("hidden", "good") if host is None else (
            ("leaked", "bad") if host == guest else ("not the guest's", "good"))
        rows.append([f"<code>{esc(name)}</code>",
                     "<code>—</code>" if host is None else f"<code>{esc(host)}</code>",
                     "<code>—</code>" if guest is None else f"<code>{esc(guest)}</code>",
                     f'<span class="badge {state[1]}">{state[0]}</span>'])
    vmsa = ""
    if registers.get("vmsa"):
        vmsa = _figure(byte_image(base64.b64decode(registers["vmsa"])),
                       "the VMSA page as the host reads it", "VMSA page, host view", "bytes")
    return (f'<div class="registers"><h4>vCPU registers (the host reads the '
            f'{esc(registers["where"])})</h4><div class="split">'
            + _table(["register", "host reads", "guest holds", ""], rows) + vmsa
            + "</div></div>")


def _tenants(document: Mapping[str, Any]) -> str:
    cards = []
    for i, tenant in enumerate(document["tenants"]):
        leaks = [("host view", tenant["secret_in_host_view"]),
                 ("DRAM dump", tenant["secret_in_dram_dump"])]
        flags = " ".join(
            f'<span class="badge {"bad" if found else "good"}">secret '
            f'{"found" if found else "not found"} in the {esc(name)}</span>'
            for name, found in leaks)
        pages = "".join(_page(i, page) for page in tenant["pages"])
        registers = _registers(tenant["registers"]) if "registers" in tenant else ""
        console = (f"<details><summary>guest console</summary><pre>{esc(tenant['console'])}"
                   "</pre></details>")
        cards.append(f'<article class="card tenant" id="tenant-{i}"><h3>'
                     f'<span class="mode">{esc(MODE_NAMES[tenant["mode"]])}</span> ASID '
                     f"{esc(tenant['asid'])}</h3><p>{flags}</p>{pages}{registers}{console}"
                     "</article>")
    secret = (f"<p>The planted secret begins <code>{esc(document['secret'][:32])}</code>…; "
              "each tenant keeps it in private memory.</p>" if "secret" in document else "")
    if "tsme" in document.get("platform", "").split(","):
        secret += f"<p>{esc(TSME_NOTE)}</p>"
    return _section("tenants", "Tenants: the guest's view and the host's",
                    secret + _legend() + "".join(cards))


def _cell_label(cell: Mapping[str, Any]) -> str:
    return " · ".join([cell["mode"], cell["chip"], *cell["features"]])


def _attacks(document: Mapping[str, Any]) -> str:
    attacks = document["attacks"]
    names = {a["id"]: a for a in attacks.get("attacks", [])}
    # the run's chip; a bare matrix names none: its cells' most common one
    chips = Counter(c["chip"] for c in attacks["cells"]).most_common(1)
    chip = document.get("chip") or (chips[0][0] if chips else "")
    order: list[str] = []
    for cell in attacks["cells"]:
        if cell["attack"] not in order:
            order.append(cell["attack"])
    traces, rows = [], []

    def link(index: int, cell: Mapping[str, Any], text: str) -> str:
        cls, word = VERDICTS[cell["verdict"]]
        traces.append(_trace(index, cell))
        return (f'<a class="cell {cls}" href="#trace-{index}" title="{esc(_cell_label(cell))}'
                f': {word}">{esc(cell["verdict"])} {text}</a>')

    index = 0
    for attack in order:
        mine = [c for c in attacks["cells"] if c["attack"] == attack]
        base = {c["mode"]: c for c in mine if not c["features"] and c["chip"] == chip}
        row = [f"<code>{esc(attack)}</code>",
               esc(names[attack]["name"]) if attack in names else ""]
        for mode in attacks["modes"]:
            if mode in base:
                index += 1
                row.append(link(index, base[mode], esc(VERDICTS[base[mode]["verdict"]][1])))
            else:
                row.append("")
        fixes = []
        for cell in mine:
            if cell["features"] or cell["chip"] != chip:
                index += 1
                fixes.append(link(index, cell, esc(_cell_label(cell))))
        row.append(" ".join(fixes))
        rows.append(row)
    counts = Counter(VERDICTS[c["verdict"]][1] for c in attacks["cells"])
    summary = (f"<p>{len(attacks['cells'])} cells, each computed by running the attack: "
               f"{counts['broken']} broken, {counts['stopped']} stopped, {counts['n/a']} n/a. "
               "Click a cell for what the attacker did.</p>")
    table = _table(["id", "attack", *map(esc, attacks["modes"]), "fixes / features"], rows,
                   "matrix")
    return _section("attacks", "The attack matrix", summary + table
                    + '<div class="traces">' + "".join(traces) + "</div>")


def _trace(index: int, cell: Mapping[str, Any]) -> str:
    cls, word = VERDICTS[cell["verdict"]]
    steps = "".join(f"<li>{esc(step)}</li>" for step in cell["trace"])
    outcome = (f"the attack got <code>{esc(cell['evidence'])}</code>" if cls == "broken"
               else f"stopped by <code>{esc(cell['stopped_by'])}</code>" if cls == "stopped"
               else esc(cell["stopped_by"]))
    return (f'<div class="trace {cls}" id="trace-{index}"><h4>{esc(cell["attack"])} · '
            f"{esc(_cell_label(cell))}: {word}</h4><ol>{steps}</ol><p>{outcome}</p>"
            '<a href="#attacks">close</a></div>')


def _attestation(section: Mapping[str, Any]) -> str:
    boxes = []
    for cert in section["chain"]:
        details = _table(["", ""], [[esc(k.replace("_", " ")), f"<code>{esc(cert[k])}</code>"]
                                    for k in ("subject", "issuer", "serial", "not_before",
                                              "not_after", "key", "signed_by")], "kv")
        boxes.append(f'<div class="cert {"good" if cert["ok"] else "bad"}"><h4>'
                     f"{esc(cert['role'])} {_badge(cert['ok'], 'verified', 'rejected')}</h4>"
                     f"{details}<details><summary>PEM</summary><pre>{esc(cert['pem'])}</pre>"
                     "</details></div>")
    chain = '<div class="chain">' + '<div class="arrow">→</div>'.join(boxes) + "</div>"
    rows = [[esc(f["name"]), f'<code class="wrap">{esc(f["value"])}</code>', esc(f["check"]),
             _badge(f["ok"])] for f in section["fields"]]
    ok = section["verdict"] == "ok"
    verdict = (f'<p class="verdict {"good" if ok else "bad"}">verdict: '
               f"{esc(section['verdict'])}</p>")
    report = _figure(byte_image(base64.b64decode(section["report"]), 32),
                     "the 0x4A0-byte report, 32 bytes a row", "attestation report bytes",
                     "bytes report")
    return _section("attestation", "Attestation: the SNP report and its chain",
                    verdict + "<h3>ARK → ASK → VCEK</h3>" + chain
                    + '<h3>The report\'s fields</h3><div class="split">'
                    + _table(["field", "value", "what was checked", ""], rows) + report
                    + "</div>")


def _vtpm(section: Mapping[str, Any]) -> str:
    events = [[esc(e["pcr"]), f"<code>{esc(e['type'])}</code>",
               f'<code class="wrap">{esc(e["digest"])}</code>', esc(e["description"])]
              for e in section["events"]]
    pcrs = [[esc(bank), esc(index), f'<code class="wrap">{esc(value)}</code>']
            for bank, values in section["pcrs"].items()
            for index, value in sorted(values.items(), key=lambda kv: _pcr_order(kv[0]))]
    quote = ""
    if "quote" in section:
        checks = [[esc(c["name"]), _badge(c["ok"]), esc(c["detail"])]
                  for c in section["quote"]["checks"]]
        quote = (f"<h3>Quote {_badge(section['quote']['ok'], 'verified', 'rejected')}</h3>"
                 + _table(["check", "", "detail"], checks))
    return _section("vtpm", "vTPM: measured boot",
                    f"<h3>Event log ({len(events)} events)</h3>"
                    + _table(["PCR", "type", "digest", "description"], events)
                    + "<h3>PCRs</h3>" + _table(["bank", "PCR", "value"], pcrs) + quote)


def _pcr_order(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def _kbs(section: Mapping[str, Any]) -> str:
    rows = [[esc(a["tenant"]), f'<code class="wrap">{esc(a["measurement"])}</code>',
             f"<code>{esc(a['policy'])}</code>",
             _badge(a["released"], "released", "refused"), esc(a["reason"]),
             _badge(a["secret_matches"], "matches", "no secret") if a["released"]
             else _badge(not a["secret_matches"], "nothing released", "LEAKED")]
            for a in section["attempts"]]
    return _section("kbs", "Key broker", f"<p>Resource <code>{esc(section['resource'])}</code>"
                    "</p>" + _table(["tenant", "measurement", "policy", "decision", "reason",
                                     "secret"], rows))


def _timings(timings: Mapping[str, float]) -> str:
    longest = max([*timings.values(), 1e-9])
    rows = [[esc(step), f"{seconds:.3f} s",
             f'<span class="bar" style="width: {100 * seconds / longest:.1f}%"></span>']
            for step, seconds in timings.items()]
    return _section("timings", "Timings", _table(["step", "time", ""], rows, "timings"))


def _section(anchor: str, title: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2><a href="#{anchor}">#</a> {esc(title)}</h2>'
            f"{body}</section>")


def _summary(document: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The strip under the header: (label, value, good/bad/neutral) per section present."""
    items = []
    if "tenants" in document:
        leaking = [MODE_NAMES[t["mode"]] for t in document["tenants"]
                   if t["secret_in_host_view"] or t["secret_in_dram_dump"]]
        items.append(("secret visible to the host",
                      "in the " + ", ".join(leaking) if leaking else "in no tenant",
                      "bad" if leaking else "good"))
    if "attacks" in document:
        counts = Counter(VERDICTS[c["verdict"]][1] for c in document["attacks"]["cells"])
        items.append(("attack cells", f"{counts['broken']} broken · {counts['stopped']} "
                                      f"stopped · {counts['n/a']} n/a", "neutral"))
    if "attestation" in document:
        verdict = document["attestation"]["verdict"]
        items.append(("SNP report", "verified" if verdict == "ok" else verdict,
                      "good" if verdict == "ok" else "bad"))
    if "vtpm" in document and "quote" in document["vtpm"]:
        ok = document["vtpm"]["quote"]["ok"]
        items.append(("vTPM quote", "verified" if ok else "rejected", "good" if ok else "bad"))
    if "kbs" in document:
        attempts = document["kbs"]["attempts"]
        released = sum(a["released"] for a in attempts)
        items.append(("key broker", f"{released} released · {len(attempts) - released} "
                                    "refused", "neutral"))
    if "timings" in document and "total_s" in document["timings"]:
        items.append(("run time", f"{document['timings']['total_s']:.1f} s", "neutral"))
    return items


def render_html(document: Mapping[str, Any]) -> str:
    """The report page for a run's document (validated first: DemoDocumentError if it is
    not one). Sections the document lacks are left out."""
    doc = validate_document(dict(document))
    sections = [(key, render) for key, render in (
        ("tenants", lambda: _tenants(doc)), ("attacks", lambda: _attacks(doc)),
        ("attestation", lambda: _attestation(doc["attestation"])),
        ("vtpm", lambda: _vtpm(doc["vtpm"])), ("kbs", lambda: _kbs(doc["kbs"])),
        ("timings", lambda: _timings(doc["timings"]))) if key in doc]
    nav = "".join(f'<a href="#{key}">{key}</a>' for key, _ in sections)
    strip = "".join(f'<div class="stat {state}"><span>{esc(label)}</span><b>{esc(value)}</b>'
                    "</div>" for label, value, state in _summary(doc))
    facts = [f"chip <b>{esc(doc['chip'])}</b>" if "chip" in doc else "",
             f"seed <code>{esc(doc['seed'])}</code>" if "seed" in doc else "",
             f"schema <code>{esc(doc['schema'])}</code>"]
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        # no request leaves the page: no script, style, font or image from anywhere else
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>sevsim demo report</title><style>{CSS}</style></head><body>"
        f'<header><h1>sevsim <span>demo report</span></h1><p class="facts">'
        f"{' · '.join(f for f in facts if f)}</p><nav>{nav}</nav></header>"
        f'<main><div class="strip">{strip}</div>'
        + "".join(render() for _, render in sections)
        + "</main><footer>Generated by <code>sevsim report-html</code>: every value above was "
        "computed by running the mechanism, none declared.</footer></body></html>\n")


CSS = """
:root { --bg: #f6f7f9; --card: #fff; --ink: #1c2430; --muted: #5b6676; --line: #dde2e8;
  --good: #1a7f4b; --good-bg: #e3f5eb; --bad: #b42318; --bad-bg: #fde7e5; --na: #6b7280;
  --na-bg: #eceef1; --accent: #3b5bdb; --bar: #7c8cf0; color-scheme: light dark; }
@media (prefers-color-scheme: dark) { :root { --bg: #0f1318; --card: #171c23; --ink: #e6eaf0;
  --muted: #9aa5b4; --line: #2a323d; --good: #4ade80; --good-bg: #12301f; --bad: #f87171;
  --bad-bg: #3b1717; --na: #9ca3af; --na-bg: #242a33; --accent: #8da2fb; --bar: #5b6ee0; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 0.88em; }
code.wrap { word-break: break-all; }
pre { background: var(--bg); padding: 0.75em; border-radius: 6px; overflow-x: auto;
  white-space: pre-wrap; }
header { padding: 1.5em 2em 0.5em; background: var(--card); border-bottom: 1px solid var(--line);
  position: sticky; top: 0; z-index: 2; }
header h1 { margin: 0; font-size: 1.5em; } header h1 span { color: var(--muted);
  font-weight: 400; }
.facts { margin: 0.25em 0; color: var(--muted); word-break: break-all; }
nav { display: flex; gap: 1.2em; margin-top: 0.5em; }
nav a { color: var(--accent); text-decoration: none; font-weight: 600; }
main { max-width: 1200px; margin: 0 auto; padding: 1em 2em 3em; }
footer { text-align: center; color: var(--muted); padding: 2em; font-size: 0.9em; }
section { margin-top: 2.5em; scroll-margin-top: 8em; }
section h2 a { color: var(--muted); text-decoration: none; }
.strip { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr));
  gap: 0.75em; margin-top: 1em; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 0.75em 1em; border-top: 4px solid var(--na); }
.stat span { display: block; color: var(--muted); font-size: 0.85em; }
.stat.good { border-top-color: var(--good); } .stat.bad { border-top-color: var(--bad); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 1em 1.5em; margin: 1em 0; }
.mode { background: var(--accent); color: var(--card); border-radius: 6px;
  padding: 0.1em 0.5em; margin-right: 0.3em; }
.badge { display: inline-block; border-radius: 999px; padding: 0.05em 0.65em;
  font-size: 0.82em; font-weight: 600; }
.badge.good { color: var(--good); background: var(--good-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.badge.same, .badge.other { color: var(--na); background: var(--na-bg); }
.badge.other { color: var(--accent); }
.views { display: flex; flex-wrap: wrap; gap: 1.5em; }
.view h5 { margin: 0.3em 0; color: var(--muted); font-weight: 500; }
.pics { display: flex; gap: 0.75em; }
figure { margin: 0; text-align: center; }
figure img { width: 192px; height: 192px; image-rendering: pixelated;
  border: 1px solid var(--line); border-radius: 4px; display: block; }
figure.report img { width: 192px; height: auto; }
figcaption { font-size: 0.8em; color: var(--muted); }
.legend { display: flex; align-items: center; gap: 0.6em; flex-wrap: wrap; margin: 0.5em 0; }
.legend .ramp { width: 220px; height: 12px; border-radius: 3px; display: inline-block; }
.legend small { color: var(--muted); flex-basis: 100%; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0; background: var(--card); }
th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 0.85em; }
.split { display: flex; gap: 1.5em; align-items: flex-start; }
.split table { flex: 1; }
table.matrix td { white-space: nowrap; }
table.matrix td:last-child { white-space: normal; }
a.cell { display: inline-block; border-radius: 6px; padding: 0.15em 0.6em; margin: 0.1em;
  text-decoration: none; font-weight: 600; font-size: 0.9em; }
a.cell.broken { color: var(--bad); background: var(--bad-bg); }
a.cell.stopped { color: var(--good); background: var(--good-bg); }
a.cell.na { color: var(--na); background: var(--na-bg); }
a.cell:hover { outline: 2px solid var(--accent); }
.trace { display: none; background: var(--card); border: 1px solid var(--line);
  border-left: 5px solid var(--na); border-radius: 8px; padding: 0.5em 1.2em; margin: 1em 0;
  scroll-margin-top: 8em; }
.trace.broken { border-left-color: var(--bad); }
.trace.stopped { border-left-color: var(--good); }
.trace:target { display: block; }
.chain { display: flex; align-items: stretch; gap: 0.5em; flex-wrap: wrap; }
.cert { flex: 1; min-width: 260px; background: var(--card); border: 1px solid var(--line);
  border-top: 4px solid var(--good); border-radius: 10px; padding: 0.5em 1em; }
.cert.bad { border-top-color: var(--bad); }
.cert table { font-size: 0.85em; } .cert table thead { display: none; }
.cert td:last-child { word-break: break-all; }
.arrow { align-self: center; font-size: 2em; color: var(--muted); }
.verdict { font-size: 1.1em; font-weight: 700; }
.verdict.good { color: var(--good); } .verdict.bad { color: var(--bad); }
.bar { display: inline-block; height: 10px; background: var(--bar); border-radius: 3px;
  min-width: 2px; }
table.timings td:last-child { width: 50%; }
"""
