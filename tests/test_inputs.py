"""sevsim.inputs: the one bounded read every layer uses for a user's file, and the one table
of limits (cli.common re-exports both, so the commands and the library cannot disagree)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sevsim import inputs
from sevsim.cli import common
from sevsim.errors import ConfigError, ImageError
from sevsim.host.machine import Host


def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(16))
    assert inputs.read_bounded(path, 16, "a blob") == bytes(16)
    with pytest.raises(ConfigError, match=rf"{path} holds more than 15 bytes, the most a blob"):
        inputs.read_bounded(path, 15, "a blob")


def test_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    link = tmp_path / "endless"
    link.symlink_to("/dev/zero")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=str(link)):
        inputs.read_bounded(link, inputs.MAX_CERT_FILE, "a certificate")
    assert time.monotonic() - start < 10


def test_the_cli_shares_the_read_and_the_limits() -> None:
    assert common.read_bounded is inputs.read_bounded
    limits = {name: value for name, value in vars(inputs).items() if name.startswith("MAX_")}
    assert limits and all(getattr(common, name) == value for name, value in limits.items())


def test_a_vm_refuses_an_endless_image_path(tmp_path: Path) -> None:
    """Vmm.load takes a path too: read bounded by the largest guest, ImageError beyond it."""
    link = tmp_path / "guest.elf"
    link.symlink_to("/dev/zero")
    vm = Host(memory="16M").create_vm(memory="8M")
    with pytest.raises(ImageError, match=rf"{link} holds more than {inputs.MAX_GUEST_ELF}"):
        vm.load(link)
