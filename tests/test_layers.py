"""DESIGN.md's import direction: abi <- hw <- firmware <- host; guest uses abi and the CPU's
guest view; attest uses abi only. Checked on the source, so a new import cannot sneak in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sevsim"

ALLOWED: dict[str, set[str]] = {
    "abi": {"abi"},
    "hw": {"abi", "hw", "errors"},
    "firmware": {"abi", "hw", "firmware", "errors"},
    "guest": {"abi", "guest", "errors", "hw.cpu"},
    "host": {"abi", "hw", "firmware", "host", "errors", "guest.kernel", "guest.standin"},
    "attest": {"abi", "attest", "errors"},
    "kbs": {"abi", "attest", "kbs", "errors"},
}


def sevsim_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every sevsim module a file imports, as dotted names below `sevsim.` (relative imports
    resolved against the file's own package)."""
    found = set()
    package = list(path.relative_to(root).parent.parts) if path.is_relative_to(root) else []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            found.add(".".join([*base, *([node.module] if node.module else [])]))
        elif (isinstance(node, ast.ImportFrom) and node.module
              and node.module.startswith("sevsim")):
            found.add(node.module.removeprefix("sevsim").lstrip("."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("sevsim.") for a in node.names
                         if a.name.startswith("sevsim."))
    return found


def allowed(imported: str, rules: set[str]) -> bool:
    return any(imported == rule or imported.startswith(rule + ".") for rule in rules)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_import_direction(layer: str) -> None:
    files = list((PACKAGE / layer).rglob("*.py"))
    if layer in ("abi", "hw", "firmware", "guest", "host"):
        assert files, f"layer {layer} is missing"
    violations = [f"{path.relative_to(PACKAGE)} imports sevsim.{name}"
                  for path in files for name in sevsim_imports(path)
                  if not allowed(name, ALLOWED[layer])]
    assert not violations, "\n".join(violations)


ABI_MAY_IMPORT = {"__future__", "collections", "dataclasses", "enum", "hashlib", "hmac",
                  "struct", "typing", "uuid", "cryptography"}


def test_abi_imports_only_the_standard_library_and_cryptography() -> None:
    """abi/ holds AMD's formats and the protocol formulas both ends compute (KDFs, MACs)."""
    for path in (PACKAGE / "abi").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert name.split(".")[0] in ABI_MAY_IMPORT, (path, name)


def test_the_rule_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "guest" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from sevsim.host.hypervisor import Hypervisor\nimport sevsim.firmware.sev\n"
                   "from ..host import vmm\nfrom .kernel import GuestKernel\n")
    found = sevsim_imports(bad, tmp_path)
    assert found == {"host.hypervisor", "firmware.sev", "host", "guest.kernel"}
    assert not allowed("host.hypervisor", ALLOWED["guest"])
    assert allowed("hw.cpu", ALLOWED["guest"]) and not allowed("hw.memory", ALLOWED["guest"])
