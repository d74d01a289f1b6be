"""A key distribution server on AMD KDS's URL scheme, for sevsim's simulated chips.

AMD's KDS can issue any chip's VCEK because AMD knows every chip secret; sevsim's plays that
part for the chips it is told about (by the seed of their `Host`). Paths, as the real one:

    /vcek/v1/{Milan|Genoa|Turin}/{hwid hex}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..[&fmcSPL=..]
    /vcek/v1/{product}/cert_chain          PEM: ASK then ARK
    /vcek/v1/{product}/crl                 DER CRL signed by the ARK
    /vlek/v1/{product}/cert_chain          PEM: ASVK then ARK (VLEKs reach cloud providers
                                           as hashsticks: `SnpPki.seal_hashstick`)

A VCEK is DER (application/pkix-cert). Optional rate limiting answers HTTP 429 with
Retry-After, as AMD's does, so clients' backoff can be tested.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from sevsim.abi.snp_cert import PSS
from sevsim.abi.snp_tcb import Generation, TcbVersion
from sevsim.errors import ConfigError, SevsimError, TcbFormatError
from sevsim.firmware.amd_root import simulated_root
from sevsim.firmware.snp_pki import SnpPki, snp_ca_chain, snp_vlek_ca_chain

_SPLS = ("blSPL", "teeSPL", "snpSPL", "ucodeSPL")


class KdsError(SevsimError):
    """A request KDS answers with an HTTP error: (status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class KeyDistribution:
    """The registry and the answers, independent of HTTP."""

    chips: dict[tuple[str, str], SnpPki] = field(default_factory=dict)

    def register(self, platforms: Iterable[SnpPki]) -> None:
        """Serve these chips' certificates from now on, found by product and hardware ID as
        KDS URLs name them."""
        for platform in platforms:
            hwid = platform.chip_id()[:platform.generation.hwid_size].hex()
            self.chips[(platform.generation.value, hwid)] = platform

    def answer(self, path: str, query: str) -> tuple[str, bytes]:
        """(content type, body) for a KDS path; KdsError otherwise."""
        parts = [p for p in path.split("/") if p]
        if len(parts) != 4 or parts[0] not in ("vcek", "vlek") or parts[1] != "v1":
            raise KdsError(404, f"no such KDS path: {path}")
        try:
            generation = Generation(parts[2])
        except ValueError:
            raise KdsError(404, f"unknown product {parts[2]!r} (Milan, Genoa, Turin)") from None
        vlek = parts[0] == "vlek"
        if parts[3] == "cert_chain":
            signer, ark = (snp_vlek_ca_chain if vlek else snp_ca_chain)(generation.value)
            pem = serialization.Encoding.PEM
            return "application/x-pem-file", signer.public_bytes(pem) + ark.public_bytes(pem)
        if parts[3] == "crl":
            return "application/pkix-crl", _crl(generation.value)
        if vlek:  # VLEKs go to cloud providers as hashsticks, not over this public path
            raise KdsError(404, "VLEKs are issued to cloud providers, not fetched here")
        platform = self.chips.get((generation.value, parts[3].lower()))
        if platform is None:
            raise KdsError(404, f"no {generation.value} chip with hwID {parts[3]}")
        return "application/pkix-cert", platform.vcek_certificate(_tcb(query, generation))


def _tcb(query: str, generation: Generation) -> TcbVersion:
    params = parse_qs(query)
    names = ("fmcSPL", *_SPLS) if generation.turin_layout else _SPLS
    try:
        values = [int(params[name][0]) for name in names]
        if set(params) - set(names):
            raise KdsError(400, f"unexpected parameters {sorted(set(params) - set(names))}")
        bootloader, tee, snp, microcode = values[-4:]
        fmc = values[0] if generation.turin_layout else None
        return TcbVersion(bootloader, tee, snp, microcode, fmc=fmc)
    except (KeyError, ValueError, TcbFormatError) as err:
        raise KdsError(400, f"the TCB needs {', '.join(names)} as 0..255: {err}") from None


def _crl(product: str) -> bytes:
    """An empty CRL (no VCEK revoked) signed by the simulated ARK, issued daily: thisUpdate is
    a midnight at least an hour ago, so a verifier whose clock was read before it asked (or
    runs a little behind) never sees it as not yet valid."""
    ark_key = simulated_root(product.lower()).ark_key
    ark = snp_ca_chain(product)[1]
    issued = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).replace(
        hour=0, minute=0, second=0, microsecond=0)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ark.subject)
           .last_update(issued).next_update(issued + datetime.timedelta(days=7))
           .sign(ark_key, hashes.SHA384(), rsa_padding=PSS))
    return crl.public_bytes(serialization.Encoding.DER)


MIN_RATE = 1 / 3600  # a request an hour: Retry-After never asks for more than an hour


class _RateLimit:
    """At most `per_second` requests a second, else 429 with Retry-After."""

    def __init__(self, per_second: float) -> None:
        if not (math.isfinite(per_second) and per_second >= MIN_RATE):
            raise ConfigError(f"rate limit {per_second} is not a number of requests a second "
                              f"from {MIN_RATE:.6f} (one an hour) up")
        self.interval = 1.0 / per_second
        self.next_allowed = 0.0
        self.lock = threading.Lock()

    def wait_for(self) -> float:
        """0 if the request may go now, else the seconds to wait."""
        with self.lock:
            now = time.monotonic()
            if now >= self.next_allowed:
                self.next_allowed = now + self.interval
                return 0.0
            return self.next_allowed - now


def make_server(kds: KeyDistribution, host: str = "127.0.0.1", port: int = 0,
                rate_limit: float | None = None) -> ThreadingHTTPServer:
    """An HTTP server for `kds` (serve with `serve_forever()`; port 0 picks a free one).
    ConfigError for a port outside 0..65535 or an impossible rate limit; OSError when the
    address cannot be listened on (in use, not this machine's, no such host)."""
    if not 0 <= port <= 0xFFFF:
        raise ConfigError(f"port {port} is outside 0..65535")
    limiter = None if rate_limit is None else _RateLimit(rate_limit)

    class Handler(BaseHTTPRequestHandler):
        server_version = "sevsim-kds"

        def do_GET(self) -> None:
            wait = limiter.wait_for() if limiter else 0.0
            if wait:
                self.send_response(429, "Too Many Requests")
                self.send_header("Retry-After", str(max(1, round(wait))))
                self.end_headers()
                return
            url = urlsplit(self.path)
            try:
                content_type, body = kds.answer(url.path, url.query)
            except KdsError as err:  # the reason goes in the body: a status line is latin-1
                self.send_error(err.status, explain=str(err))  # and cannot echo any query
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args  # quiet by default: the CLI prints what it serves

    return ThreadingHTTPServer((host, port), Handler)
