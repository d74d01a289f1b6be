"""MkDocs hook: render the attack catalog into docs/attacks.md from `sevsim.attacks` itself.

The page holds a marker line; at build time it is replaced by one section per attack of
`sevsim.attacks.ATTACKS` (id, name, actor, source, the settings that stop it, and the attack
module's own description) and by the table of `FEATURES`, so the page cannot drift from the
catalog the code runs.
"""

from __future__ import annotations

import inspect
from typing import Any

CATALOG_MARKER = "<!-- attack-catalog -->"
FEATURES_MARKER = "<!-- attack-features -->"


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def render_catalog() -> str:
    """One section per catalog entry, in the catalog's order."""
    from sevsim.attacks import ATTACKS

    parts: list[str] = []
    for attack in ATTACKS.values():
        module = inspect.getmodule(type(attack))
        about = inspect.cleandoc(module.__doc__ or "") if module is not None else ""
        about = about.removeprefix(f"{attack.id}: ")  # the heading already names it
        about = about[:1].upper() + about[1:]
        fixes = (", ".join(f"`{setting.label}`" for setting in attack.fixes)
                 or "no fix in the catalog")
        flaws = ", ".join(f"`{flaw}`" for flaw in sorted(attack.flaws))
        parts += [
            f"### {attack.id}: {attack.name}",
            "",
            "| | |",
            "|---|---|",
            f"| actor | {_cell(attack.actor)} |",
            f"| source | {_cell(attack.source)} |",
            f"| fixes and features that stop it | {fixes} |",
            *([f"| the lab's platform has | {flaws} |"] if flaws else []),
            f"| class | `{type(attack).__module__}.{type(attack).__name__}` |",
            "",
            about,
            "",
        ]
    return "\n".join(parts)


def render_features() -> str:
    """The table of fixes and opt-in features a setting can turn on."""
    from sevsim.attacks import FEATURES

    rows = [f"| `{name}` | {_cell(text)} |" for name, text in FEATURES.items()]
    return "\n".join(["| feature | what it turns on |", "|---|---|", *rows])


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace the markers on the attacks page with the rendered catalog."""
    if page.file.src_uri != "attacks.md":
        return markdown
    if CATALOG_MARKER not in markdown or FEATURES_MARKER not in markdown:
        raise ValueError("docs/attacks.md lost its attack-catalog or attack-features marker")
    return (markdown.replace(CATALOG_MARKER, render_catalog())
            .replace(FEATURES_MARKER, render_features()))
