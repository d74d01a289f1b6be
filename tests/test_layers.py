"""DESIGN.md's import direction: abi <- hw <- firmware <- host; guest uses abi and the CPU's
guest view; attest uses abi only; cli sits on top; testing sees everything and only tests and
benchmarks import it. errors is the leaf every layer may import; inputs (the bounded read of a
user's file, and the size limits) is a leaf over errors for the layers that read users' files.
Checked on the source, so a new import cannot sneak in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sevsim"

EVERYTHING = {"abi", "hw", "firmware", "guest", "host", "attest", "errors", "inputs", "cli",
              "attacks", "kbs"}

ALLOWED: dict[str, set[str]] = {
    "abi": {"abi", "errors"},
    "hw": {"abi", "hw", "errors"},
    "firmware": {"abi", "hw", "firmware", "errors"},
    "guest": {"abi", "guest", "errors", "hw.cpu"},
    # the VMM boots the guest kernel (or its stand-in) and hands its firmware the secure-boot
    # medium (variables, program file), as QEMU hands OVMF its variable store and disk
    "host": {"abi", "hw", "firmware", "host", "errors", "inputs", "guest.kernel",
             "guest.standin", "guest.secure_boot"},
    "attest": {"abi", "attest", "errors", "inputs"},
    "kbs": {"abi", "attest", "errors", "inputs", "kbs"},
    # the untrusted side: a hypervisor's and a physical attacker's handles; guest.build only
    # compiles the victims (the lab plays their owner), it gives no guest-side object
    "attacks": {"abi", "hw", "firmware", "host", "attacks", "errors", "attest", "guest.build"},
    "cli": EVERYTHING | {"demo"},  # anything but testing (the demo, which shows the guest's
    #                                 view through it, runs from here)
    "testing": EVERYTHING | {"testing"},
    "demo": EVERYTHING | {"demo", "testing"},
}


def sevsim_imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every sevsim module a file imports, as dotted names below `sevsim.` (relative imports
    resolved against the file's own package)."""
    found = set()
    package = list(path.relative_to(root).parent.parts) if path.is_relative_to(root) else []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (
                node.module and node.module.split(".")[0] == "sevsim")):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = (node.module or "").removeprefix("sevsim").lstrip(".")
            # `from sevsim import testing`: the names are the layers
            found.update([module] if module else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("sevsim.") for a in node.names
                         if a.name.startswith("sevsim."))
    return found


def allowed(imported: str, rules: set[str]) -> bool:
    return any(imported == rule or imported.startswith(rule + ".") for rule in rules)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_import_direction(layer: str) -> None:
    files = list((PACKAGE / layer).rglob("*.py"))
    assert files, f"layer {layer} is missing"  # a row for a layer that does not exist is dead
    violations = [f"{path.relative_to(PACKAGE)} imports sevsim.{name}"
                  for path in files for name in sevsim_imports(path)
                  if not allowed(name, ALLOWED[layer])]
    assert not violations, "\n".join(violations)


def test_every_module_has_a_layer() -> None:
    """A new top-level package or module needs a row (or a reason to be a leaf), or its imports
    would go unchecked."""
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert top - set(ALLOWED) == {"__init__", "__main__", "errors", "inputs"}


def test_errors_is_a_leaf() -> None:
    """Every layer, abi/ included, imports sevsim.errors; it may import nothing back."""
    assert sevsim_imports(PACKAGE / "errors.py") == set()


def test_inputs_is_a_leaf_over_errors() -> None:
    """attest/ and host/ read users' files through sevsim.inputs, so it may import nothing
    they may not: of sevsim, only errors."""
    assert sevsim_imports(PACKAGE / "inputs.py") == {"errors"}


def test_only_tests_and_benchmarks_import_testing() -> None:
    """sevsim.testing reaches inside, outside the threat model: no shipped code may use it but
    the demo, for its pictures of what the guest sees (DESIGN.md)."""
    users = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
             if path.relative_to(PACKAGE).parts[0] not in ("testing", "demo")
             and any(allowed(name, {"testing"}) for name in sevsim_imports(path))]
    assert not users, users


ABI_MAY_IMPORT = {"__future__", "collections", "dataclasses", "datetime", "enum", "functools",
                  "hashlib", "hmac", "struct", "typing", "uuid", "cryptography", "google",
                  "sevsim", "base64", "json", "rfc8785", "tomllib"}


def test_abi_imports_only_the_standard_library_and_cryptography() -> None:
    """abi/ holds AMD's formats and the protocol formulas both ends compute (KDFs, MACs); of
    sevsim it sees only errors (test_import_direction). Google's endorsement format is a
    protobuf schema, so `google` (protobuf) is allowed too; the key broker's messages are JSON
    with base64url members whose RFC 8785 canonical form both ends hash (`rfc8785`), and their
    init-data is a TOML document whose digest both ends compute (`tomllib`)."""
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
    top = tmp_path / "cli" / "bad.py"
    top.parent.mkdir()
    top.write_text("from sevsim import testing, errors\nfrom .. import testing as t\n")
    assert sevsim_imports(top, tmp_path) == {"testing", "errors"}
    assert not allowed("testing", ALLOWED["cli"]) and allowed("host.vmm", ALLOWED["cli"])


def test_attack_code_holds_only_its_actors_handles() -> None:
    """An attack's own code (attacks/catalog/) reaches the system only through the toolkit and
    the lab's victims: no guest software, no firmware or silicon internals, no host objects
    beyond what the toolkit hands out. abi/ gives it the formats, attest/ the verifier a
    forged report must fool."""
    rules = {"abi", "errors", "attest", "attacks.framework", "attacks.lab", "attacks.toolkit",
             "attacks.catalog"}
    files = list((PACKAGE / "attacks" / "catalog").rglob("*.py"))
    assert len(files) >= 2
    violations = [f"{path.relative_to(PACKAGE)} imports sevsim.{name}"
                  for path in files for name in sevsim_imports(path) if not allowed(name, rules)]
    assert not violations, "\n".join(violations)
