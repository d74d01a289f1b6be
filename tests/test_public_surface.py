"""One public surface: no module touches another module's or object's underscore names.

A leading underscore marks what a module keeps to itself; tests, benchmarks and the CLI that
reach past it pin internals in place and see state no caller should. What they legitimately
need to look at goes through `sevsim.testing`, the one module in src/ allowed to reach inside
(outside the threat model, see its docstring). Python's unit of privacy is the module, so a
member of a class the same file defines (a class and its helper in one module) may be touched.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("src", "tests", "benchmarks")
SEAM = REPO / "src" / "sevsim" / "testing"  # the test seam reaches inside by design
ALLOWED = {
    "hashlib._Hash",  # the type of a hash object: typeshed names no public one, and with
                      # postponed annotations it is never evaluated
    "os._exit",  # the documented way out of a forked child (kbs/workers.py): it must not run
                 # the parent's cleanup nor return into the parent's stack
    "uc._uch",  # Unicorn's engine handle, for its C API (hw/unicorn_c.py only): the Python
                # binding has no public accessor and registers no C callbacks
}
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_members(tree: ast.AST) -> set[str]:
    """Members of the classes this file defines: methods, class attributes and what methods
    assign to self/cls. Another object of such a class may be touched here (a class and its
    helper in one module); a module-level `_name` does not make `other._name` the file's."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(member.name)
                elif isinstance(member, ast.AnnAssign | ast.Assign):
                    targets = member.targets if isinstance(member, ast.Assign) else [member.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
    return names


def private_module_is_local(module: str, path: Path) -> bool:
    """`from _helpers import ok` or `from sevsim.hw._xex import Key`: a private module may be
    imported by the modules next to it (its own package)."""
    parts = module.split(".")
    last_private = max(i for i, part in enumerate(parts) if is_private(part))
    return any((path.parent / f"{parts[last_private]}{suffix}").exists()
               for suffix in (".py", ".pyi", "")) and (
        last_private == 0 or path.parent.name == parts[last_private - 1])


def violations(path: Path, root: Path = REPO) -> list[str]:
    """Every touch of another module's or object's private name in one file."""
    tree = ast.parse(path.read_text(), str(path))
    own = own_members(tree)
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr not in own and ast.unparse(node) not in ALLOWED:
                flag(node, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if any(is_private(part) for part in module.split(".")) and not (
                    private_module_is_local(module, path)):
                flag(node, f"from {module} import ...")
            for alias in node.names:
                if is_private(alias.name):
                    flag(node, f"from {'.' * node.level}{module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(part) for part in alias.name.split(".")) and not (
                        private_module_is_local(alias.name, path)):
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else "")
            attr = node.args[1]
            if (name in ATTRIBUTE_FUNCTIONS and isinstance(attr, ast.Constant)
                    and isinstance(attr.value, str) and is_private(attr.value)
                    and attr.value not in own):
                flag(node, f"{name}(..., {attr.value!r})")
    return found


def scanned_files() -> list[Path]:
    return [path for top in SCANNED for path in sorted((REPO / top).rglob("*.py"))
            if not path.is_relative_to(SEAM)]


@pytest.mark.parametrize("top", SCANNED)
def test_no_module_touches_another_modules_private_names(top: str) -> None:
    files = [path for path in scanned_files() if path.is_relative_to(REPO / top)]
    assert files, f"nothing to scan in {top}/"
    found = [line for path in files for line in violations(path)]
    assert not found, "\n".join(found)


def test_the_checker_catches_planted_violations(tmp_path: Path) -> None:
    bad = tmp_path / "tests" / "test_bad.py"
    bad.parent.mkdir()
    (tmp_path / "tests" / "_helpers.py").write_text("")
    bad.write_text(
        "from sevsim.attest.snp_verify import _generation\n"
        "from sevsim.hw._xex import Key\n"
        "import sevsim.hw._xex\n"
        "from _helpers import ok\n"
        "from ._helpers import ok_too\n"
        "fw._snp_guests[0x5000] = ctx\n"
        "host.hypervisor._frame_used.sum()\n"
        "monkeypatch.setattr(engine, '_POOL', None)\n"
        "getattr(fw, '_pek')\n"
        "_POOL = None\n"
        "engine._POOL\n"
        "class Mine:\n"
        "    def __init__(self):\n"
        "        self._state = 1\n"
        "    @classmethod\n"
        "    def make(cls):\n"
        "        mine = cls()\n"
        "        mine._state += cls._other + len(mine.__dict__)\n"
        "        return mine\n"
        "hashlib._Hash\n")
    found = {line.split(": ", 1)[1] for line in violations(bad, tmp_path)}
    assert found == {
        "from sevsim.attest.snp_verify import _generation",
        "from sevsim.hw._xex import ...",
        "import sevsim.hw._xex",
        "fw._snp_guests",
        "host.hypervisor._frame_used",
        "setattr(..., '_POOL')",
        "getattr(..., '_pek')",
        "engine._POOL",
    }


def test_the_seam_is_the_only_exemption() -> None:
    """sevsim.testing exists and is what the scan leaves out; everything else is scanned."""
    assert (SEAM / "__init__.py").exists()
    everything = [p for top in SCANNED for p in (REPO / top).rglob("*.py")]
    assert set(everything) - set(scanned_files()) == set(SEAM.rglob("*.py"))


def documented_imports() -> list[tuple[str, str]]:
    """(module, name) of every sevsim import in the Python examples of README.md and of every
    page under docs/."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    blocks = [block for page in pages
              for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S)]
    found = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sevsim"):
                found += [(node.module or "", alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(alias.name, "") for alias in node.names
                          if alias.name.startswith("sevsim")]
    return found


def test_documented_examples_import_the_public_surface() -> None:
    """The README and the site show sevsim, sevsim.attest, sevsim.attacks and sevsim.kbs as
    the API: every name their examples import comes from one of them and is in its __all__
    (and so resolves)."""
    imports = documented_imports()
    assert len(imports) >= 10, imports  # the examples were found
    for module, name in imports:
        assert module in ("sevsim", "sevsim.attest", "sevsim.attacks", "sevsim.kbs"), (module,
                                                                                       name)
        package = importlib.import_module(module)
        assert name in package.__all__, (module, name)


@pytest.mark.parametrize("module", ["sevsim", "sevsim.attest", "sevsim.attacks",
                                    "sevsim.kbs", "sevsim.testing"])
def test_every_exported_name_resolves(module: str) -> None:
    package = importlib.import_module(module)
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018 (the access is the test)
