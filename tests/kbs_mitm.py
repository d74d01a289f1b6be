"""The host in the middle of a VM's key broker traffic: a TCP proxy on 127.0.0.1 that can
rewrite what the guest sends, for tests of what the KBS does with a host's forgeries."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import BinaryIO

from sevsim.host.vnic import parse_kbs_url


class Mitm:
    """The host in the middle: a TCP proxy on 127.0.0.1 between the VM's NIC and the KBS that
    reads each whole HTTP/1.1 request from the guest and lets `rewrite(path, body)` replace
    the body before passing it on; responses go back untouched."""

    def __init__(self, upstream: str, rewrite: Callable[[str, bytes], bytes]) -> None:
        self.upstream = parse_kbs_url(upstream)
        self.rewrite = rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """Where the VM's NIC should connect."""
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Mitm:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                guest, _ = self._listener.accept()
            except TimeoutError:
                continue
            guest.settimeout(10)
            with guest, socket.create_connection(self.upstream, timeout=10) as kbs:
                guest_in, kbs_in = guest.makefile("rb"), kbs.makefile("rb")
                while True:
                    request = _message(guest_in)
                    if request is None:
                        break
                    head, body = request
                    path = head.split(b" ")[1].decode()
                    body = self.rewrite(path, body)
                    kbs.sendall(_with_length(head, body))
                    response = _message(kbs_in)
                    if response is None:
                        break
                    guest.sendall(_with_length(*response))


def _message(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message with a Content-Length body (or none), or None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, stream.read(length)


def _with_length(head: bytes, body: bytes) -> bytes:
    lines = [line for line in head.rstrip(b"\r\n").split(b"\r\n")
             if not line.lower().startswith(b"content-length:")]
    if body or head.split(b" ")[0] == b"POST" or head.startswith(b"HTTP/"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
