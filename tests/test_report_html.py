"""`sevsim report-html`: the pictures decode back to the bytes they show, a malformed document
gets a typed error naming the culprit, and the page built from a real run loads in headless
Chromium with no error and no request but itself, every picture drawn, every matrix cell's
trace one click away, and nothing from the document running as markup."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.attacks.catalog import ATTACKS
from sevsim.demo.html import (
    PAGE,
    SCHEMA,
    byte_image,
    entropies,
    entropy_map,
    load_document,
    render_html,
    shannon_entropy,
    validate_document,
)
from sevsim.errors import DemoDocumentError

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "images" / "report.png"


def sevsim(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)


# -- pictures ------------------------------------------------------------------------------------
def decode_png(blob: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, colour type, rows) of a PNG whose rows use filter 0, every chunk's
    CRC checked: an independent reader of what the report writes."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, []
    while offset < len(blob):
        length, kind = struct.unpack(">I4s", blob[offset:offset + 8])
        data = blob[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", blob[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks.append((kind, data))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    stride = width * (3 if colour == 2 else 1) + 1
    rows = [raw[i:i + stride] for i in range(0, len(raw), stride)]
    assert len(rows) == height and all(r[0] == 0 for r in rows)
    return width, height, colour, [r[1:] for r in rows]


def test_a_byte_image_decodes_back_to_the_page() -> None:
    page = os.urandom(PAGE)
    width, height, colour, rows = decode_png(byte_image(page))
    assert (width, height, colour) == (64, 64, 0)
    assert b"".join(rows) == page
    width, height, _, rows = decode_png(byte_image(page[:1184], 32))  # a report: 37 rows
    assert (width, height) == (32, 37) and b"".join(rows)[:1184] == page[:1184]


def test_entropy_of_zeros_text_and_random_pages() -> None:
    assert entropies(bytes(PAGE)) == [0.0] * 64
    assert shannon_entropy(bytes(range(64))) == 6.0  # every byte once: log2(64)
    text = (b"PUBLIC-MESSAGE-FOR-THE-HOST " * 200)[:PAGE]
    noise = os.urandom(PAGE)
    assert min(entropies(text)) > 3 and max(entropies(text)) < 4.5
    assert min(entropies(noise)) > 4.8 and sum(entropies(noise)) / 64 > 5.4
    _, _, colour, zeros = decode_png(entropy_map(bytes(PAGE)))
    _, _, _, random_rows = decode_png(entropy_map(noise))
    assert colour == 2 and len(zeros) == 8 and len(zeros[0]) == 8 * 3
    assert len(set(b"".join(zeros))) <= 3  # one colour, the scale's bottom
    assert b"".join(zeros) != b"".join(random_rows)


# -- the loader ----------------------------------------------------------------------------------
def _page(size: int = PAGE) -> str:
    return base64.b64encode(bytes(size)).decode()


def _tenant_doc(**page: Any) -> dict[str, Any]:
    entry = {"label": "secret", "gpa": 0, "spa": 0, "guest": _page(), "host": _page()} | page
    return {"schema": SCHEMA, "tenants": [
        {"mode": "sev", "asid": 1, "console": "", "pages": [entry],
         "secret_in_host_view": False, "secret_in_dram_dump": False}]}


@pytest.mark.parametrize(("data", "field", "words"), [
    (b"<html>", "document", "not JSON"),
    (b"\xff\xfe", "document", "not UTF-8"),
    (b"[1, 2]", "document", "not a JSON object"),
    (b'{"schema": "sevsim.demo/9"}', "document.schema", "is not 'sevsim.demo/1'"),
    (b'{"chip": "milan"}', "document", "no 'schema'"),
    (json.dumps({"schema": SCHEMA, "tenants": {}}).encode(), "document.tenants", "not a list"),
    (json.dumps(_tenant_doc(host=_page(4095))).encode(), "document.tenants[0].pages[0].host",
     "4095 bytes, not 4096"),
    (json.dumps(_tenant_doc(guest="not base64!")).encode(),
     "document.tenants[0].pages[0].guest", "not base64"),
    (json.dumps(_tenant_doc(gpa=True)).encode(), "document.tenants[0].pages[0].gpa",
     "true, not an integer"),
    (json.dumps(_tenant_doc(spa=-1)).encode(), "document.tenants[0].pages[0].spa", "negative"),
    (json.dumps({"modes": ["sev"], "cells": [{"attack": "A1"}]}).encode(),
     "document.attacks.cells[0]", "no 'mode'"),
    (json.dumps({"schema": SCHEMA, "timings": {"total_s": "fast"}}).encode(),
     "document.timings.total_s", "not a number"),
    (json.dumps({"schema": SCHEMA, "seed": "xyz"}).encode(), "document.seed", "not hex"),
])
def test_a_malformed_document_names_its_culprit(data: bytes, field: str, words: str) -> None:
    with pytest.raises(DemoDocumentError) as caught:
        load_document(data)
    assert caught.value.field == field and words in str(caught.value)


def test_a_bare_matrix_is_an_attacks_only_run(demo_document: dict[str, Any]) -> None:
    document = validate_document(demo_document["attacks"])
    assert set(document) == {"schema", "attacks"}
    page = render_html(document)
    assert 'id="attacks"' in page and 'id="tenants"' not in page
    assert "0 cells" in render_html({"modes": ["sev"], "cells": []})


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    children = (value.items() if isinstance(value, dict)
                else enumerate(value[:2]) if isinstance(value, list) else ())
    for key, child in children:
        yield from _paths(child, (*path, key))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_change_renders_or_is_refused_with_a_typed_error(
        demo_document: dict[str, Any], data: st.DataObject) -> None:
    """Whatever one value of a real document becomes, the page is drawn or the document is
    refused with DemoDocumentError: never another exception."""
    document = json.loads(json.dumps(demo_document))
    path = data.draw(st.sampled_from(list(_paths(document))[1:]))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    try:
        page = render_html(document)
    except DemoDocumentError:
        return
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")


def test_the_command_writes_the_page_and_refuses_bad_input(
        demo_document: dict[str, Any], tmp_path: Path) -> None:
    bare = tmp_path / "matrix.json"
    bare.write_text(json.dumps({k: demo_document["attacks"][k] for k in ("modes", "cells")}))
    done = sevsim("report-html", bare, "-o", tmp_path / "matrix.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "matrix.html").read_text()
    assert ATTACKS["A3"].name in page  # a bare matrix gets the catalog's names
    assert 'id="attacks"' in page and 'id="tenants"' not in page
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_tenant_doc(host=_page(100))))
    for source in (broken, tmp_path / "missing.json"):
        done = sevsim("report-html", source, "-o", tmp_path / "never.html")
        assert done.returncode == 125 and len(done.stderr.splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert "DemoDocumentError: document.tenants[0].pages[0].host: holds 100 bytes" in (
        sevsim("report-html", broken, "-o", tmp_path / "never.html").stderr)
    assert not (tmp_path / "never.html").exists()
    unwritable = sevsim("report-html", bare, "-o", tmp_path / "no" / "such" / "dir.html")
    assert unwritable.returncode == 125 and unwritable.stderr.count("\n") == 1
    assert "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr
    assert sevsim("report-html", bare).returncode == 2  # no -o: a usage error


# -- the page ------------------------------------------------------------------------------------
def test_the_page_shows_what_the_run_computed(demo_document: dict[str, Any]) -> None:
    page = render_html(demo_document)
    assert not re.search(r"(src|href)=\"(?!data:image/png;base64,|#)", page)  # nothing remote
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    pictures = [decode_png(base64.b64decode(i)) for i in images]
    assert len(pictures) == len(expected_pictures(demo_document))
    planted = bytes.fromhex(demo_document["secret"])
    mode = next(i for i, t in enumerate(demo_document["tenants"]) if t["mode"] == "sev")
    sev = demo_document["tenants"][mode]["pages"][0]
    guest, host = base64.b64decode(sev["guest"]), base64.b64decode(sev["host"])
    assert planted in guest and planted not in host  # the plaintext and the ciphertext
    first = expected_pictures(demo_document).index((mode, 0, "guest bytes"))
    assert b"".join(pictures[first][3]) == guest  # drawn where the page says
    assert b"".join(pictures[first + 2][3]) == host
    same = sum(p["guest"] == p["host"] for t in demo_document["tenants"] for p in t["pages"])
    assert same and page.count("the host reads what the guest reads") == same
    cells = demo_document["attacks"]["cells"]
    assert page.count('class="cell broken"') == sum(c["verdict"] == "✗" for c in cells)
    row = re.search(r"<tr><td><code>A16</code>.*?</tr>", page)[0]
    fixes = re.findall(r"<td>(.*?)</td>", row)[-1]  # the last column: the fix settings
    assert "alias-check" in fixes and 'class="cell stopped"' in fixes
    verified = sum(c["ok"] for c in demo_document["attestation"]["chain"]) + bool(
        demo_document.get("vtpm", {}).get("quote", {}).get("ok"))
    assert "verdict: ok" in page and page.count("verified</span>") == verified
    assert [c["ok"] for c in demo_document["attestation"]["chain"]] == [True] * 3


def expected_pictures(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The pictures a document's page draws, in page order: four per tenant page (guest
    bytes and entropy, host bytes and entropy), a tenant's VMSA, the report."""
    found: list[tuple[Any, ...]] = []
    for i, tenant in enumerate(document.get("tenants", [])):
        for j, _ in enumerate(tenant["pages"]):
            found += [(i, j, f"{who} {kind}") for who in ("guest", "host")
                      for kind in ("bytes", "entropy")]
        if tenant.get("registers", {}).get("vmsa"):
            found.append((i, "vmsa"))
    return found + ([("report",)] if "attestation" in document else [])


def test_the_key_broker_and_quote_sections(demo_document: dict[str, Any]) -> None:
    """The broker's attempts as the run made them (released, or refused with the broker's own
    reason), and a quote check that failed drawn as failed."""
    document = json.loads(json.dumps(demo_document))
    attempts = document["kbs"]["attempts"]
    released = sum(a["released"] for a in attempts)
    assert released == 1 and len(attempts) == 3  # the tenant; not its two twins
    page = render_html(document)
    assert page.count(">released<") == released
    assert page.count(">refused<") == len(attempts) - released
    assert f"{released} released · {len(attempts) - released} refused" in page
    for attempt in attempts:
        assert html.escape(attempt["reason"], quote=False) in page
    assert "vTPM quote" in page and ">rejected<" not in page
    document["vtpm"]["quote"]["ok"] = False
    document["vtpm"]["quote"]["checks"][-1] |= {"ok": False, "detail": "PCR 4 differs"}
    page = render_html(document)
    assert ">rejected<" in page and "PCR 4 differs" in page
    document["kbs"]["attempts"][0]["released"] = "yes"
    with pytest.raises(DemoDocumentError, match=r"kbs.attempts\[0\].released"):
        render_html(document)


def test_document_strings_are_text_not_markup(demo_document: dict[str, Any]) -> None:
    planted = json.loads(json.dumps(demo_document))
    planted["attacks"]["cells"][0]["trace"][0] = "<script>window.pwned = 1</script>"
    planted["tenants"][0]["console"] = "<img src=x onerror=alert(1)>"
    page = render_html(planted)
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page


# -- in headless Chromium ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


class Loaded:
    """A report opened in a new page, with everything the page asked for or complained of."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.url = path.as_uri()
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url, wait_until="load")


# the distinct colours of an image (a data URI or an <img>), counted on a canvas
COLOURS = """async (source) => {
  const img = typeof source === "string" ? new Image() : source;
  if (typeof source === "string") { img.src = source; await img.decode(); }
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] === 0) return -1;  // a transparent pixel: nothing was drawn there
    seen.add(pixels[i] << 16 | pixels[i + 1] << 8 | pixels[i + 2]);
  }
  return seen.size;
}"""


def write_report(document: dict[str, Any], path: Path) -> Path:
    path.write_text(render_html(document), encoding="utf-8")
    return path


def screenshot(loaded: Loaded, path: Path) -> int:
    """A full-page screenshot at `path`; how many colours it has (a blank page has one)."""
    loaded.page.screenshot(path=str(path), full_page=True)
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return int(loaded.page.evaluate(COLOURS, uri))


def test_the_report_loads_offline_and_draws_every_picture(
        browser: Any, demo_document: dict[str, Any], tmp_path: Path) -> None:
    loaded = Loaded(browser, write_report(demo_document, tmp_path / "report.html"))
    assert loaded.errors == []
    assert loaded.requests == [loaded.url], loaded.requests[:3]
    images = loaded.page.query_selector_all("img")
    assert len(images) == len(expected_pictures(demo_document)) > 0
    for image in images:
        assert image.evaluate("i => i.complete && i.naturalWidth") > 0
        assert image.bounding_box()["width"] >= 64  # drawn at a size one can see
        assert image.evaluate(COLOURS) > 1, image.get_attribute("alt")  # not blank
    shot = tmp_path / "report.png"
    assert screenshot(loaded, shot) > 100 and shot.stat().st_size > 50_000
    if os.environ.get("SEVSIM_UPDATE_SCREENSHOT"):  # docs/images/report.png, from this path
        SCREENSHOT.write_bytes(shot.read_bytes())
    assert loaded.errors == []
    loaded.page.close()


def test_a_click_on_a_matrix_cell_shows_its_trace(
        browser: Any, demo_document: dict[str, Any], tmp_path: Path) -> None:
    loaded = Loaded(browser, write_report(demo_document, tmp_path / "report.html"))
    cells = loaded.page.query_selector_all("a.cell")
    assert len(cells) == len(demo_document["attacks"]["cells"])
    for cell in (cells[0], cells[-1]):
        trace = loaded.page.locator(cell.get_attribute("href"))
        assert not trace.is_visible()
        cell.click()
        assert trace.is_visible()
    first, last = demo_document["attacks"]["cells"][0], demo_document["attacks"]["cells"][-1]
    assert not loaded.page.locator(cells[0].get_attribute("href")).is_visible()  # one at a time
    text = loaded.page.locator(cells[-1].get_attribute("href")).inner_text()
    assert last["trace"][-1] in text and last["attack"] in text  # in this run, a fix cell
    cells[0].click()
    text = loaded.page.locator(cells[0].get_attribute("href")).inner_text()
    assert first["trace"][0] in text and first["attack"] in text
    assert loaded.errors == []
    loaded.page.close()


def test_a_planted_script_shows_as_text_and_does_not_run(
        browser: Any, demo_document: dict[str, Any], tmp_path: Path) -> None:
    planted = json.loads(json.dumps(demo_document))
    payload = "<script>window.pwned = 1</script>"
    planted["attacks"]["cells"][0]["trace"][0] = payload
    loaded = Loaded(browser, write_report(planted, tmp_path / "planted.html"))
    loaded.page.query_selector("a.cell").click()
    assert payload in loaded.page.inner_text("div.trace:target")
    assert loaded.page.evaluate("() => window.pwned") is None
    assert loaded.page.evaluate("() => document.scripts.length") == 0
    loaded.page.close()
