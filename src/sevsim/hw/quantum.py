"""Time slices that end at an exact instruction boundary.

A vCPU leaves the host CPU only where the guest could not tell: between two instructions, with
RIP on the first one not executed. Unicorn's own timeout cannot promise that (a stop landing at
the start of a chained translation block leaves a stale RIP, and the resumed guest executes
instructions twice), so slices are counted by C hooks (`sevsim.hw._quantum`): a block hook on
every engine, and a code hook while a slice is counted in instructions. Counting blocks is
exact and cheap; counting instructions costs a call per instruction, which single-stepping
needs anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TB_FLUSH, UC_HOOK_BLOCK, UC_HOOK_CODE, Uc

from sevsim.errors import ConfigError
from sevsim.hw._quantum import Budget, monotonic_ns
from sevsim.hw.unicorn_c import add_hook, delete_hook, emu_stop_address

_FOREVER = 1 << 62


@dataclass(frozen=True)
class Quantum:
    """How long a vCPU runs before the scheduler moves on: exactly one of a number of
    translation blocks (the default: deterministic and cheap), of instructions (deterministic,
    about half the speed) or of seconds (wall clock: exact but load-dependent interleaving)."""

    blocks: int | None = None
    instructions: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        given = [(name, value) for name, value in (("blocks", self.blocks),
                                                   ("instructions", self.instructions),
                                                   ("seconds", self.seconds))
                 if value is not None]
        if len(given) != 1:
            raise ConfigError("a quantum is exactly one of blocks=, instructions= or seconds=")
        name, value = given[0]
        if name == "seconds":
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"quantum seconds={value!r} must be a positive finite number")
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < _FOREVER:
            raise ConfigError(f"quantum {name}={value!r} must be a positive integer")


DEFAULT_QUANTUM = Quantum(blocks=20_000)  # about 2-3 ms of guest code: switches cost < 1 %


def now_ns() -> int:
    """The clock slice deadlines are given in (CLOCK_MONOTONIC, as the C hooks read it)."""
    return monotonic_ns()


class SliceTimer:
    """One engine's slice budget and the C hooks that spend it."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._budget = Budget(emu_stop_address())
        self._block_hook, self._code_hook, self._data = self._budget.hooks()
        add_hook(uc, UC_HOOK_BLOCK, self._block_hook, self._data)
        self._counting: int | None = None  # the code hook's handle while installed
        self._hard = False
        self._deadline_ns = 0

    def arm(self, quantum: Quantum | None, deadline_ns: int = 0, hard: bool = False) -> None:
        """Set the next slice: `quantum`, or until the deadline (None); `deadline_ns` (from
        `now_ns`, 0 for none) ends it early whatever the quantum. A `hard` deadline is the
        VM's timeout: past it, not even the guest kernel may go on (see `overdue`)."""
        self._hard = hard and deadline_ns > 0
        self._deadline_ns = deadline_ns
        budget = self._budget
        budget.expired = False
        budget.blocks_left = _FOREVER
        budget.instructions_left = _FOREVER
        budget.deadline_ns = deadline_ns
        if quantum is not None and quantum.instructions is not None:
            self._count_instructions(True)
            budget.instructions_left = quantum.instructions
            return
        self._count_instructions(False)
        if quantum is None:
            return
        if quantum.blocks is not None:
            budget.blocks_left = quantum.blocks
        elif quantum.seconds is not None:
            end = now_ns() + int(quantum.seconds * 1e9)
            budget.deadline_ns = min(end, deadline_ns) if deadline_ns else end

    def end_soon(self) -> None:
        """End the slice before the next block (or instruction) starts: from an exit handler,
        where stopping the engine directly would not leave RIP exact."""
        self._budget.blocks_left = 0
        self._budget.instructions_left = 0

    def overdue(self) -> bool:
        """The VM's timeout has passed: the hypervisor refuses to resume it at its next exit,
        which stops a guest that spends its time in system calls rather than its own code."""
        return self._hard and now_ns() >= self._deadline_ns

    def check_deadline(self) -> None:
        """Time spent outside guest code (exits, the guest kernel) counts against the slice."""
        deadline = self._budget.deadline_ns
        if deadline and now_ns() >= deadline:
            self.end_soon()

    @property
    def expired(self) -> bool:
        """The last slice ended on its budget or deadline (not on an exit or HLT)."""
        return bool(self._budget.expired)

    @property
    def instructions_left(self) -> int:
        """Instructions the slice may still start (counted only for an instruction quantum)."""
        return self._budget.instructions_left

    def _count_instructions(self, on: bool) -> None:
        """Install or remove the per-instruction hook; cached blocks were translated without
        (or with) it, so they are dropped."""
        if on == (self._counting is not None):
            return
        if on:
            self._counting = add_hook(self._uc, UC_HOOK_CODE, self._code_hook, self._data)
        elif self._counting is not None:
            delete_hook(self._uc, self._counting)
            self._counting = None
        self._uc.ctl(UC_CTL_TB_FLUSH, UC_CTL_IO_WRITE)
