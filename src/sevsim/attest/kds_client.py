"""A client for AMD's Key Distribution Service (or `sevsim kds serve`, which speaks the same
URLs): VCEKs by chip and TCB, the ASK/ASVK + ARK chain, the CRL (spec-formats.md §5.3).

AMD rate-limits KDS and answers HTTP 429 with Retry-After, so every answer is cached on disk
(a VCEK for a chip and TCB never changes; a CRL is reused until its nextUpdate) and 429 is
retried with exponential backoff that honours Retry-After.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from sevsim.abi.snp_tcb import Generation, TcbVersion
from sevsim.errors import ConfigError, KdsFetchError
from sevsim.inputs import MAX_CERT_FILE, read_bounded, read_stream

AMD_KDS = "https://kdsintf.amd.com"


def vcek_path(generation: Generation, chip_id: bytes, tcb: TcbVersion) -> str:
    """/vcek/v1/{product}/{hwid}?...: Turin names a chip by 8 bytes and adds fmcSPL first."""
    hwid = chip_id[:generation.hwid_size].hex()
    spls = [("blSPL", tcb.bootloader), ("teeSPL", tcb.tee), ("snpSPL", tcb.snp),
            ("ucodeSPL", tcb.microcode)]
    if generation.turin_layout:
        spls.insert(0, ("fmcSPL", tcb.fmc or 0))
    query = "&".join(f"{name}={value}" for name, value in spls)
    return f"/vcek/v1/{generation.value}/{hwid}?{query}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


@dataclass
class KdsClient:
    """Fetches from `base_url` through an optional on-disk cache. `requests` counts the HTTP
    requests actually sent (429s included), so callers and tests can see the cache work;
    `on_request` hears of each one, and of each wait a 429 imposes (a command's progress)."""

    base_url: str = AMD_KDS
    cache_dir: Path | None = None
    retries: int = 6
    backoff: float = 1.0  # first wait without Retry-After; doubles each time
    max_wait: float = 60.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    on_request: Callable[[str], None] | None = None
    requests: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        """Refuse what could never fetch anything now, not at the first certificate."""
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"KDS URL {self.base_url!r} is not an http:// or https:// URL "
                              "with a host (e.g. https://kdsintf.amd.com)")
        if self.cache_dir is not None and self.cache_dir.exists() and (
                not self.cache_dir.is_dir()):
            raise ConfigError(f"KDS cache {self.cache_dir} exists and is not a directory")

    def _cache_file(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256((self.base_url.rstrip("/") + path).encode()).hexdigest()[:32]
        name = path.strip("/").split("?")[0].replace("/", "_")
        return self.cache_dir / f"{name}-{key}"

    def get(self, path: str, *, cacheable: Callable[[bytes], bool] = lambda _: True) -> bytes:
        """The body at base_url + path; from the cache when it holds an answer still good."""
        cached = self._cache_file(path)
        if cached is not None and cached.exists() and not cached.is_dir():
            body = self._read_cached(path, cached)
            if cacheable(body):
                return body
        body = self._fetch(self.base_url.rstrip("/") + path)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                # a name of its own per writer (threads, worker processes sharing the cache),
                # then an atomic rename: no reader sees half a certificate, no writer another's
                tmp = tempfile.NamedTemporaryFile(dir=cached.parent, prefix=cached.name,  # noqa: SIM115 (kept past the block for the rename)
                                                  suffix=".tmp", delete=False)
                try:
                    with tmp:
                        tmp.write(body)
                    Path(tmp.name).replace(cached)
                except OSError:
                    Path(tmp.name).unlink(missing_ok=True)
                    raise
            except OSError as error:
                raise KdsFetchError(path, f"cannot cache the answer in {cached.parent}: "
                                    f"{error.strerror}") from None
        return body

    @staticmethod
    def _read_cached(path: str, cached: Path) -> bytes:
        """The cached answer for `path`, read bounded as any certificate file: the cache
        directory is the user's, and an entry too long (a symlink to /dev/zero) or unreadable
        is a KdsFetchError naming it, not a hang or a traceback."""
        try:
            return read_bounded(cached, MAX_CERT_FILE, "a certificate or CRL")
        except ConfigError as error:
            raise KdsFetchError(path, f"the cache: {error}") from None
        except OSError as error:
            raise KdsFetchError(path, f"cannot read the cached answer {cached}: "
                                f"{error.strerror}") from None

    def _fetch(self, url: str) -> bytes:
        wait = self.backoff
        for attempt in range(self.retries + 1):
            self.requests += 1
            if self.on_request is not None:
                self.on_request(f"GET {url}")
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                    return read_stream(answer, MAX_CERT_FILE, "a certificate or CRL",
                                       "the answer")
            except ConfigError as error:  # a server that sends without end
                raise KdsFetchError(url, str(error)) from None
            except urllib.error.HTTPError as error:
                error.close()  # it holds the connection
                if error.code != 429:
                    raise KdsFetchError(url, f"HTTP {error.code} {error.reason}",
                                        error.code) from None
                if attempt == self.retries:
                    raise KdsFetchError(url, f"still rate limited (HTTP 429) after "
                                        f"{self.retries} retries", 429) from None
                delay = min(self.max_wait, max(_retry_after(error.headers.get("Retry-After"))
                                               or 0.0, wait))
                if self.on_request is not None:
                    self.on_request(f"rate limited (HTTP 429): waiting {delay:g} s")
                self.sleep(delay)
                wait = min(self.max_wait, wait * 2)
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise KdsFetchError(url, f"cannot connect: {reason}") from None
        raise AssertionError("unreachable")

    def vcek(self, generation: Generation, chip_id: bytes, tcb: TcbVersion) -> bytes:
        """The DER VCEK of a chip at a TCB."""
        return self.get(vcek_path(generation, chip_id, tcb))

    def cert_chain(self, generation: Generation, vlek: bool = False
                   ) -> tuple[x509.Certificate, x509.Certificate]:
        """(ASK, ARK), or (ASVK, ARK) for VLEKs, from the PEM bundle."""
        path = f"/{'vlek' if vlek else 'vcek'}/v1/{generation.value}/cert_chain"
        body = self.get(path)
        try:
            certs = x509.load_pem_x509_certificates(body)
        except ValueError:
            raise KdsFetchError(path, "cert_chain is not a PEM bundle") from None
        if len(certs) != 2:
            raise KdsFetchError(path, f"cert_chain holds {len(certs)} certificates, not 2")
        return certs[0], certs[1]

    def crl(self, generation: Generation, vlek: bool = False) -> bytes:
        """The DER CRL; a cached one is reused until its nextUpdate."""
        def fresh(body: bytes) -> bool:
            try:
                next_update = x509.load_der_x509_crl(body).next_update_utc
            except ValueError:
                return False
            return next_update is not None and next_update > datetime.datetime.now(
                datetime.UTC)

        return self.get(f"/{'vlek' if vlek else 'vcek'}/v1/{generation.value}/crl",
                        cacheable=fresh)
