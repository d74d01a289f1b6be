"""`sevsim debug`: look inside your own debuggable VM through the firmware's DBG_DECRYPT
(SNP_DBG_DECRYPT for an SNP guest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sevsim.abi.policy import PolicyFlags
from sevsim.abi.snp_tcb import PolicyFlags as SnpPolicyFlags
from sevsim.cli.options import JsonOption
from sevsim.hw.chips import DEFAULT_CHIP, PRESETS

debug_app = typer.Typer(help="Debug your own VM: read its memory through the firmware "
                        "(DBG_DECRYPT), which the guest policy must allow.",
                        no_args_is_help=True)

# `sevsim run`'s SNP policy (SMT, reserved bit 17) with DEBUG (bit 19): 0xb0000
SNP_DEBUG_POLICY = int(SnpPolicyFlags.SMT | SnpPolicyFlags.RESERVED_MBO | SnpPolicyFlags.DEBUG)


def _number(text: str) -> int:
    """0x-prefixed hex, or decimal."""
    try:
        return int(text, 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number (use e.g. 0x404000 or 4096)") \
            from None


def hexdump(data: bytes, address: int) -> str:
    """`hexdump -C` layout, addressed by guest-physical address."""
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset:offset + 16]
        octets = " ".join(f"{b:02x}" for b in row[:8]) + "  " + " ".join(
            f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{address + offset:016x}  {octets:<48}  |{text}|")
    return "\n".join(lines)


@debug_app.command("read")
def read(
    elf: Annotated[Path, typer.Argument(help="Guest ELF built with `sevsim guest build`.")],
    gpa: Annotated[str, typer.Argument(help="Guest-physical address, e.g. 0x404000.")],
    length: Annotated[str, typer.Argument(help="Bytes to read, e.g. 64 or 0x1000.")],
    mode: Annotated[str, typer.Option(help="none | sev | sev-es | snp")] = "sev",
    policy: Annotated[str | None, typer.Option(
        help="Guest policy, hex. The default (0x0; 0x4, ES, for sev-es; 0xb0000, DEBUG, for "
             "snp) allows debugging; NODBG (bit 0) forbids it, as `sevsim run`'s default 0x1 "
             "does, and so does an SNP policy without DEBUG (bit 19), such as 0x30000.")
    ] = None,
    chip: Annotated[str, typer.Option(help=f"{' | '.join(PRESETS)}")] = DEFAULT_CHIP,
    memory: Annotated[str, typer.Option(help="Guest memory, e.g. 64M or 1G.")] = "64M",
    timeout: Annotated[float, typer.Option(help="Seconds before the VM is stopped.")] = 60.0,
    json_out: JsonOption = False,
) -> None:
    """Launch and run a guest with a debug-allowing policy, then hexdump its memory.

    The guest's console goes to stderr, the hexdump to stdout. A guest that crashes or times
    out is still read: its memory is what you want to see.
    """
    from sevsim.abi.status import SevStatus
    from sevsim.cli.common import (
        MAX_GUEST_ELF,
        check_range,
        check_seconds,
        err,
        fail,
        hex_int,
        print_json,
        read_input,
    )
    from sevsim.errors import FirmwareError, GuestFault, GuestTimeout, SevsimError
    from sevsim.host.debug import debug_read
    from sevsim.host.machine import MAX_SIZE, Host, parse_size

    address, count = _number(gpa), _number(length)
    if count <= 0:
        raise typer.BadParameter(f"length {count} must be positive")
    image = read_input(elf, "sevsim", MAX_GUEST_ELF, "a guest ELF")
    try:
        policy_value = _default_policy(mode) if policy is None else hex_int(
            policy, "policy", 64 if mode == "snp" else 32)
        check_seconds(timeout, "timeout")
        check_range(address, "GPA", 0, MAX_SIZE)
        check_range(count, "length", 1, parse_size(memory))
        host = Host(chip=chip, memory=parse_size(memory) + (64 << 20))
        vm = host.create_vm(mode=mode, memory=memory)
        vm.load(image)
        vm.launch(policy=policy_value)
        err.print(f"sevsim: mode={vm.mode} chip={host.chip.name} asid={vm.asid} "
                  f"policy=0x{policy_value:x}", highlight=False)
        try:
            vm.run(timeout=timeout)
        except (GuestFault, GuestTimeout) as error:
            err.print(f"sevsim: the guest stopped: {type(error).__name__}: {error}",
                      highlight=False)
        finally:
            sys.stderr.write(vm.console)
        data = debug_read(vm, address, count)
    except SevsimError as error:
        if isinstance(error, FirmwareError) and error.status is SevStatus.POLICY_FAILURE:
            hint = (f"lacks DEBUG (bit 19); launch with it, e.g. --policy 0x{SNP_DEBUG_POLICY:x}"
                    if mode == "snp" else
                    "forbids debugging (NODBG, bit 0); launch with a policy without it, "
                    "e.g. --policy 0")
            err.print(f"sevsim: policy 0x{policy_value:x} {hint}", highlight=False)
        raise fail(error) from None
    if json_out:
        print_json({"mode": mode, "policy": f"0x{policy_value:x}", "gpa": f"0x{address:x}",
                    "length": count, "data": data.hex()})
        return
    sys.stdout.write(hexdump(data, address) + "\n")


def _default_policy(mode: str) -> int:
    """A policy that allows debugging in `mode` and that the launch accepts."""
    if mode == "snp":
        return SNP_DEBUG_POLICY
    return int(PolicyFlags.ES) if mode == "sev-es" else 0
