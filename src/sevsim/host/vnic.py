"""The VMM's virtual NIC: the guest's shared ring pages (abi/vnic.py) bridged to one real TCP
connection to the address the VMM was configured with (`sevsim run --kbs URL`).

The device is the host's, so it sees exactly what a host sees: the ring pages (shared, in
plaintext) and the bytes on the wire, which it keeps in `sent` and `received` for anyone who
wants to look. It serves the guest only when the guest exits to it (SEVSIM_HC_NIC_*), as a
device model in QEMU's vCPU thread does, and waits for the far end at most `max_wait_ms` per
kick, so a stalled server never hangs the simulation.
"""

from __future__ import annotations

import select
import socket
from typing import Protocol
from urllib.parse import urlsplit

from sevsim.abi.svm import (
    SEVSIM_HC_NIC_CLOSE,
    SEVSIM_HC_NIC_CONNECT,
    SEVSIM_HC_NIC_KICK,
    SEVSIM_HC_NIC_SETUP,
)
from sevsim.abi.vnic import (
    NIC_PAGES,
    PAGE,
    RX_OFFSET,
    SLOT_DATA,
    SLOT_FIN,
    SLOT_SIZE,
    SLOTS,
    TX_OFFSET,
    URL_OFFSET,
    Control,
    LinkFlag,
    counter_offset,
    pack_slot,
    pack_u32,
    pack_url,
    parse_slot,
    pending,
    slot_offset,
)
from sevsim.errors import ConfigError, FormatError, MemoryAccessError

NIC_ERROR = (1 << 64) - 1  # a NIC hypercall the VMM refused
NIC_HYPERCALLS = (SEVSIM_HC_NIC_SETUP, SEVSIM_HC_NIC_CONNECT, SEVSIM_HC_NIC_KICK,
                  SEVSIM_HC_NIC_CLOSE)


class GuestPhysical(Protocol):
    """Guest memory as the hypervisor reaches it (VirtualMachine.read_gpa / write_gpa)."""

    def read_gpa(self, gpa: int, length: int) -> bytes:
        """Bytes as the host reads them (ciphertext where the guest keeps a page private)."""
        ...

    def write_gpa(self, gpa: int, data: bytes) -> None:
        """Write as the host can (faults on pages the RMP gives the guest)."""
        ...


def parse_kbs_url(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL; ConfigError for anything else."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1 or parts.query \
            or parts.fragment or parts.username:
        raise ConfigError(f"KBS URL {url!r}: use http://HOST[:PORT][/PATH]")
    try:
        pack_url(url)
    except (FormatError, UnicodeEncodeError):
        raise ConfigError(f"KBS URL {url!r}: too long or not ASCII") from None
    return parts.hostname, port or 80


class VirtualNic:
    """One NIC of one VM, bridged to `url`'s host and port over TCP."""

    def __init__(self, url: str, *, connect_timeout: float = 5.0,
                 max_wait_ms: int = 1000) -> None:
        self.url = url
        self.address = parse_kbs_url(url)
        self.connect_timeout = connect_timeout
        self.max_wait_ms = max_wait_ms
        self.ring_gpa: int | None = None
        self.sent = bytearray()  # every byte the guest put on the wire, in order
        self.received = bytearray()  # every byte that came back
        self.connections = 0
        self._sock: socket.socket | None = None
        self._link = LinkFlag(0)

    def hypercall(self, mem: GuestPhysical, nr: int, args: tuple[int, ...]) -> int:
        """Serve one SEVSIM_HC_NIC_* exit; NIC_ERROR for what the device refuses."""
        try:
            if nr == SEVSIM_HC_NIC_SETUP:
                return self._setup(mem, args[0], args[1])
            if self.ring_gpa is None:
                return NIC_ERROR
            if nr == SEVSIM_HC_NIC_CONNECT:
                return self._connect(mem)
            if nr == SEVSIM_HC_NIC_KICK:
                return int(self._kick(mem, args[0]))
            self.close()
            self._set_link(mem, LinkFlag(0))
            return 0
        except (MemoryAccessError, FormatError):  # pages the host may not touch, bad rings
            self._fail(mem)
            return NIC_ERROR

    def close(self) -> None:
        """Close the TCP connection, if any."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _setup(self, mem: GuestPhysical, gpa: int, npages: int) -> int:
        if gpa % PAGE or npages != NIC_PAGES:
            return NIC_ERROR
        self.close()
        mem.write_gpa(gpa + URL_OFFSET - 2, pack_url(self.url))
        self.ring_gpa = gpa
        self._set_link(mem, LinkFlag(0))
        return 0

    def _control(self, mem: GuestPhysical) -> Control:
        assert self.ring_gpa is not None  # checked by hypercall()
        return Control.from_bytes(mem.read_gpa(self.ring_gpa, 64))

    def _store(self, mem: GuestPhysical, name: str, value: int) -> None:
        assert self.ring_gpa is not None
        mem.write_gpa(self.ring_gpa + counter_offset(name), pack_u32(value))

    def _set_link(self, mem: GuestPhysical, link: LinkFlag) -> None:
        self._link = link
        self._store(mem, "link", int(link))

    def _fail(self, mem: GuestPhysical) -> None:
        self.close()
        if self.ring_gpa is not None:
            try:
                self._set_link(mem, LinkFlag.ERROR)
            except MemoryAccessError:
                self._link = LinkFlag.ERROR

    def _connect(self, mem: GuestPhysical) -> int:
        """A fresh connection; stale slots of an earlier one are dropped."""
        self.close()
        control = self._control(mem)
        self._store(mem, "tx_cons", control.tx_prod)
        self._store(mem, "rx_prod", control.rx_cons)
        try:
            self._sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        except OSError:
            self._set_link(mem, LinkFlag.ERROR)
            return NIC_ERROR
        self._sock.setblocking(False)
        self.connections += 1
        self._set_link(mem, LinkFlag.CONNECTED)
        return 0

    def _kick(self, mem: GuestPhysical, wait_ms: int) -> LinkFlag:
        """Send what the guest queued, then receive into free RX slots (waiting up to
        `wait_ms`, capped, when the guest has nothing to read yet)."""
        if self._sock is None:
            return self._link
        assert self.ring_gpa is not None
        control = self._control(mem)
        tx_cons = control.tx_cons
        for _ in range(pending(control.tx_prod, tx_cons)):
            data, flags = parse_slot(mem.read_gpa(
                self.ring_gpa + slot_offset(TX_OFFSET, tx_cons), SLOT_SIZE))
            tx_cons += 1
            try:
                self._send(data)
                if flags & SLOT_FIN:
                    self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._store(mem, "tx_cons", tx_cons)
                self._fail(mem)
                return self._link
        self._store(mem, "tx_cons", tx_cons)
        if self._link & LinkFlag.PEER_CLOSED:
            return self._link
        rx_prod = control.rx_prod
        queued = pending(rx_prod, control.rx_cons)
        wait = 0.0 if queued else min(wait_ms, self.max_wait_ms) / 1000
        link = self._link
        while queued < SLOTS:
            readable, _, _ = select.select([self._sock], [], [], wait)
            if not readable:
                break
            wait = 0.0
            try:
                data = self._sock.recv(SLOT_DATA)
            except BlockingIOError:
                break
            except OSError:
                link = LinkFlag.ERROR
                break
            if not data:
                link |= LinkFlag.PEER_CLOSED
                break
            self.received += data
            mem.write_gpa(self.ring_gpa + slot_offset(RX_OFFSET, rx_prod), pack_slot(data))
            rx_prod += 1
            queued += 1
        self._store(mem, "rx_prod", rx_prod)
        if link & LinkFlag.ERROR:
            self._fail(mem)
        else:
            self._set_link(mem, link)
        return self._link

    def _send(self, data: bytes) -> None:
        """All of `data` on the non-blocking socket, waiting for room at most the connect
        timeout per chunk."""
        assert self._sock is not None
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self._sock], [], self.connect_timeout)
            if not writable:
                raise TimeoutError("the KBS connection does not drain")
            sent = self._sock.send(view)
            self.sent += view[:sent]
            view = view[sent:]

