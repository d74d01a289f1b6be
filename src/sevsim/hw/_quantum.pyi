"""Type stub of the C extension `sevsim.hw._quantum` (see _quantum.c)."""

class Budget:
    """One vCPU's time-slice budget in C memory, read by its block and code hooks."""

    blocks_left: int
    instructions_left: int
    deadline_ns: int
    expired: bool
    @property
    def blocks(self) -> int: ...
    def __init__(self, emu_stop_address: int, /) -> None: ...
    def hooks(self) -> tuple[int, int, int]: ...

def monotonic_ns() -> int: ...
