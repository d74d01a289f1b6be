"""One exception hierarchy: every error sevsim defines derives from SevsimError, so a caller
catches one root instead of a union; names do not collide; abi/'s format errors are in it."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from functools import cache
from pathlib import Path

import pytest

import sevsim
from sevsim import errors
from sevsim.abi.snp_tcb import SnpPolicy
from sevsim.errors import SevsimError, SnpFormatError

PACKAGE = Path(sevsim.__file__).parent


@cache
def sevsim_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a sevsim module (all modules imported but
    `python -m sevsim`'s entry point, which runs the CLI)."""
    found = []
    for info in pkgutil.walk_packages([str(PACKAGE)], "sevsim."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseException) and obj.__module__ == module.__name__]
    return found


def test_every_sevsim_exception_derives_from_the_one_root() -> None:
    found = sevsim_exceptions()
    assert len(found) > 25  # the walk reached the package (errors.py alone defines more)
    outside = [f"{cls.__module__}.{cls.__qualname__}" for cls in found
               if not issubclass(cls, SevsimError)]
    assert not outside, outside


def test_exception_names_do_not_collide() -> None:
    names = [cls.__name__ for cls in sevsim_exceptions()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("name", ["ConfigError", "FormatError", "SnpFormatError",
                                  "SevCertFormatError", "SnpCertFormatError", "OvmfError",
                                  "CertificateError", "PolicyError", "IdBlockError"])
def test_bad_input_errors_stay_value_errors(name: str) -> None:
    """Callers (and `cryptography`-style code) that catch ValueError keep working."""
    assert issubclass(getattr(errors, name), ValueError)


def test_an_abi_format_error_is_caught_by_the_root() -> None:
    with pytest.raises(SevsimError) as info:
        SnpPolicy.from_int(1 << 63)  # a reserved bit
    assert isinstance(info.value, SnpFormatError) and info.value.field


def test_abi_raises_no_builtin_exception() -> None:
    """abi/ says what was malformed with a FormatError (a ValueError), never a bare
    ValueError; cryptography's InvalidSignature stays the verify functions' own signal."""
    builtin_errors = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}
    bare = []
    for path in sorted((PACKAGE / "abi").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in builtin_errors:
                    bare.append(f"{path.name}:{node.lineno}: {exc.id}")
    assert not bare, bare

