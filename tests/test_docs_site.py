"""The documentation site (mkdocs.yml): every public name has a docstring, and the built site
renders it.

The public names are the `__all__` of sevsim, sevsim.attest, sevsim.attacks and sevsim.kbs.
Classes and functions must carry a docstring of their own (not one inherited, nor the
signature a dataclass or NamedTuple makes up). Constants (`ATTACKS`, `FEATURES`,
`GUID_GCE_ENDORSEMENT`) cannot carry a runtime docstring; they are documented by an attribute
docstring (a string right after the assignment), which only the site sees: mkdocstrings
renders an attribute only when it has one (`show_if_no_docstring` stays off), so the built
API page having a heading for every public name proves each constant documented too.
`mkdocs build --strict` runs here (as in .ci/run); without mkdocs installed the build tests
skip, unless CI is set.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PUBLIC = ("sevsim", "sevsim.attest", "sevsim.attacks", "sevsim.kbs")


def public_names() -> list[tuple[str, str, object]]:
    """(module, name, object) of every name in the public modules' __all__."""
    found = []
    for module in PUBLIC:
        package = importlib.import_module(module)
        found += [(module, name, getattr(package, name)) for name in package.__all__]
    return found


def own_docstring(obj: object) -> str | None:
    """The docstring `obj` itself carries (None for one a class only inherits)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        # dataclasses and NamedTuples make up "Name(field, ...)" when a class has none
        if isinstance(doc, str) and doc.startswith(f"{obj.__name__}("):
            return None
        return doc if isinstance(doc, str) else None
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else None


def is_constant(obj: object) -> bool:
    """A value rather than a class or a function (functools wrappers count as functions)."""
    return not (inspect.isclass(obj) or callable(obj))


def test_every_public_class_and_function_has_a_docstring() -> None:
    names = public_names()
    assert len(names) >= 80, len(names)  # all four modules were read
    missing = [f"{module}.{name}" for module, name, obj in names
               if not is_constant(obj) and not (own_docstring(obj) or "").strip()]
    assert missing == []


def test_the_constants_are_few_and_known() -> None:
    """A new public constant needs an attribute docstring; this list makes it a decision."""
    constants = sorted(f"{module}.{name}" for module, name, obj in public_names()
                       if is_constant(obj))
    assert constants == ["sevsim.attacks.ATTACKS", "sevsim.attacks.FEATURES",
                         "sevsim.attest.GUID_GCE_ENDORSEMENT"]


def test_undocumented_attributes_stay_hidden() -> None:
    """The constants' check relies on mkdocstrings hiding attributes without a docstring."""
    assert "show_if_no_docstring" not in (REPO / "mkdocs.yml").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as .ci/run builds it."""
    try:
        importlib.import_module("mkdocs")
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-4000:]
    return out


def heading_ids(page: Path) -> set[str]:
    """The ids of the headings on a built page."""
    return set(re.findall(r'<h[1-6] id="([^"]+)"', page.read_text()))


def test_the_api_page_renders_every_public_name(site: Path) -> None:
    ids = heading_ids(site / "api" / "index.html")
    missing = [f"{module}.{name}" for module, name, _ in public_names()
               if f"{module}.{name}" not in ids]
    assert missing == []


def test_the_attacks_page_is_the_catalog(site: Path) -> None:
    """docs/hooks/attacks.py renders every catalog entry, with its actor and source."""
    from sevsim.attacks import ATTACKS, FEATURES

    html = (site / "attacks" / "index.html").read_text()
    ids = heading_ids(site / "attacks" / "index.html")
    for attack in ATTACKS.values():
        slug = attack.id.lower() + "-"
        assert any(i.startswith(slug) for i in ids), attack.id
    text = " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())
    for attack in ATTACKS.values():
        assert " ".join(attack.source.split()) in text, attack.id
    for feature in FEATURES:
        assert f"<code>{feature}</code>" in html, feature
