"""The guest kernel's driver of the VMM's virtual NIC (abi/vnic.py): a byte stream over the
shared rings to whatever the host connects them to.

The rings are shared, so the driver keeps its own producer and consumer counters privately
(in this object, for the one system call that uses the NIC), copies each slot out once before
it looks at it, and treats any counter or length the host could not have produced honestly
as a broken link. Nothing it carries is secret: the attestation agent above it sends public
evidence and receives a JWE only the guest can open.
"""

from __future__ import annotations

import time

from sevsim.abi.svm import (
    SEVSIM_HC_NIC_CLOSE,
    SEVSIM_HC_NIC_CONNECT,
    SEVSIM_HC_NIC_KICK,
    SEVSIM_HC_NIC_SETUP,
)
from sevsim.abi.vnic import (
    MAGIC,
    NIC_PAGES,
    PAGE,
    RX_OFFSET,
    SLOT_DATA,
    SLOT_FIN,
    SLOT_SIZE,
    SLOTS,
    TX_OFFSET,
    Control,
    LinkFlag,
    counter_offset,
    pack_slot,
    pack_u32,
    parse_slot,
    parse_url,
    pending,
    slot_offset,
)
from sevsim.errors import FormatError, KbsAgentError
from sevsim.hw.cpu import GuestCpu

KICK_WAIT_MS = 100  # how long one kick lets the host wait for the far end


class NicStream:
    """A TCP-like stream through the NIC whose rings start at `gpa` (already shared)."""

    def __init__(self, cpu: GuestCpu, gpa: int, deadline: float) -> None:
        self.cpu = cpu
        self.gpa = gpa
        self.deadline = deadline  # time.monotonic() past which the exchange gives up
        self._tx_prod = 0
        self._rx_cons = 0
        self._eof = False

    def setup(self) -> str:
        """Register the rings with the VMM; the URL it says it bridges them to."""
        self.cpu.write(self.gpa, bytes(PAGE))
        self.cpu.write(self.gpa, MAGIC)
        if self.cpu.vmmcall(SEVSIM_HC_NIC_SETUP, self.gpa, NIC_PAGES) != 0:
            raise KbsAgentError("no-device", "the VMM has no virtual NIC")
        try:
            return parse_url(self.cpu.read(self.gpa, PAGE))
        except FormatError as err:
            raise KbsAgentError("network", str(err)) from None

    def connect(self) -> None:
        """A fresh connection (the rings start empty)."""
        self._tx_prod = self._rx_cons = 0
        self._eof = False
        self._store("tx_prod", 0)
        self._store("rx_cons", 0)
        if self.cpu.vmmcall(SEVSIM_HC_NIC_CONNECT) != 0:
            raise KbsAgentError("network", "the NIC could not connect")

    def close(self) -> None:
        """End the connection (the rings stay registered)."""
        self.cpu.vmmcall(SEVSIM_HC_NIC_CLOSE)

    def send(self, data: bytes, fin: bool = False) -> None:
        """Queue `data` in TX slots, kicking the host whenever the ring is full."""
        chunks = [data[i:i + SLOT_DATA] for i in range(0, len(data), SLOT_DATA)] or [b""]
        for number, chunk in enumerate(chunks):
            while self._control_pending("tx") >= SLOTS:
                self._kick(0)
            last = number == len(chunks) - 1
            self.cpu.write(self.gpa + slot_offset(TX_OFFSET, self._tx_prod),
                           pack_slot(chunk, SLOT_FIN if fin and last else 0))
            self._tx_prod += 1
            self._store("tx_prod", self._tx_prod)
        self._kick(0)

    def recv(self) -> bytes:
        """The next bytes from the far end; b"" once it closed. KbsAgentError on a broken
        link or past the deadline."""
        while True:
            if self._control_pending("rx"):
                raw = self.cpu.read(self.gpa + slot_offset(RX_OFFSET, self._rx_cons), SLOT_SIZE)
                self._rx_cons += 1
                self._store("rx_cons", self._rx_cons)
                try:
                    data, _ = parse_slot(raw)
                except FormatError as err:
                    raise KbsAgentError("network", str(err)) from None
                if data:
                    return data
                continue
            if self._eof:
                return b""
            if time.monotonic() > self.deadline:
                raise KbsAgentError("timeout", "the key broker did not answer in time")
            link = self._kick(KICK_WAIT_MS)
            if link & LinkFlag.PEER_CLOSED:
                self._eof = True

    def _kick(self, wait_ms: int) -> LinkFlag:
        result = self.cpu.vmmcall(SEVSIM_HC_NIC_KICK, wait_ms)
        if result >> 32 or result & LinkFlag.ERROR or not result & LinkFlag.CONNECTED:
            raise KbsAgentError("network", f"the NIC's link is down (0x{result:x})")
        return LinkFlag(result)

    def _control_pending(self, ring: str) -> int:
        """Slots queued on a ring, the host's counter read once and checked."""
        try:
            control = Control.from_bytes(self.cpu.read(self.gpa, 64))
            if ring == "tx":
                return pending(self._tx_prod, control.tx_cons)
            return pending(control.rx_prod, self._rx_cons)
        except FormatError as err:
            raise KbsAgentError("network", str(err)) from None

    def _store(self, name: str, value: int) -> None:
        self.cpu.write(self.gpa + counter_offset(name), pack_u32(value))
