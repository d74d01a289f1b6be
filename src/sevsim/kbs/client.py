"""A client of the KBS's HTTP API (`sevsim kbs attest|admin`, tests): the standard library's
http.client on one kept-alive connection, one session cookie, and problem documents turned
back into KbsRefusal.

It also holds the names both ends of the wire agree on (the cookie, the path prefix, where
problem types live), so the server (sevsim.kbs.service) and its clients cannot drift apart.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import socket
import urllib.parse
from http.cookies import SimpleCookie
from typing import Any

from sevsim.abi.kbs import KBS_PROTOCOL_VERSION
from sevsim.errors import ConfigError, KbsRefusal

SESSION_COOKIE = "kbs-session-id"
PREFIX = "/kbs/v0"
ERRORS = "/kbs/errors/"  # a problem document's `type` is ERRORS + its reason
PROBLEM = "application/problem+json"
MAX_ANSWER = 16 << 20  # the longest answer read: an audit log page, a JWE of a large secret


class KbsClient:
    """One client session against the KBS at `url` (http://host:port), on one HTTP/1.1
    connection kept alive between requests (a new TCP connection per request would cost
    more than the request); `close` it, or use it as a context manager."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"KBS URL {url!r}: http://host[:port] expected")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.session: str | None = None  # the kbs-session-id cookie /auth set
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (the next request opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One exchange: status, headers (lower-case names) and body, whatever the status."""
        sent = dict(headers or {})
        if self.session is not None:
            sent["Cookie"] = f"{SESSION_COOKIE}={self.session}"
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            answer, data = self._exchange(method, path, body, sent)
        except (OSError, http.client.HTTPException) as error:  # refused, reset, cut short
            self.close()
            raise ConfigError(f"KBS at {self.host}:{self.port}: {error!r}") from None
        if answer.will_close or not answer.isclosed():  # not reusable: unread answer left
            self.close()
        if len(data) > MAX_ANSWER:
            raise ConfigError(f"KBS at {self.host}:{self.port}: an answer longer than "
                              f"{MAX_ANSWER} bytes")
        received = {k.lower(): v for k, v in answer.getheaders()}
        cookie = SimpleCookie(received.get("set-cookie", ""))
        if SESSION_COOKIE in cookie:
            self.session = cookie[SESSION_COOKIE].value
        return answer.status, received, data

    def _exchange(self, method: str, path: str, body: bytes | None,
                  headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        """Sends on the kept-alive connection, or a new one if the server has closed it while
        it was idle (uvicorn does after 5 s): found before sending, so no request is ever
        sent twice."""
        if self._connection is not None and closed_by_peer(self._connection.sock):
            self.close()
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port,
                                                          timeout=self.timeout)
        self._connection.request(method, path, body=body, headers=headers)
        answer = self._connection.getresponse()
        return answer, answer.read(MAX_ANSWER + 1)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        """An exchange that must succeed: the answer's JSON (None when empty); a problem
        document raises KbsRefusal with its reason."""
        status, received, data = self.request(method, PREFIX + path, body, headers)
        if status >= 400:
            raise refusal_from(status, received.get("content-type", ""), data)
        return json.loads(data) if data else None

    # -- the attestation protocol ----------------------------------------------------------

    def auth(self, tee: str = "snp") -> dict[str, Any]:
        """POST /auth: the Challenge (nonce, extra-params); keeps the session cookie."""
        request = {"version": KBS_PROTOCOL_VERSION, "tee": tee, "extra-params": {}}
        challenge: dict[str, Any] = self.call("POST", "/auth", json.dumps(request).encode())
        return challenge

    def attest(self, attestation: dict[str, Any]) -> str:
        """POST /attest with the session cookie: the attestation token."""
        answer = self.call("POST", "/attest", json.dumps(attestation).encode())
        return str(answer["token"])

    def resource(self, path: str, token: str | None = None) -> dict[str, Any]:
        """GET /resource/<path>: the JWE, by bearer token if given, else by the cookie."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        jwe: dict[str, Any] = self.call("GET", resource_url(path), headers=headers)
        return jwe

    # -- admin (each call with a fresh admin token) ----------------------------------------

    def admin(self, method: str, path: str, token: str, body: bytes | None = None,
              content_type: str = "application/json") -> Any:
        """An admin endpoint, authenticated by `token` (sevsim.kbs.admin)."""
        return self.call(method, path, body, {"Authorization": f"Bearer {token}",
                                              "Content-Type": content_type})

    def set_resource(self, token: str, path: str, secret: bytes) -> None:
        """Store (or replace) the secret at repository/type/tag."""
        self.admin("POST", resource_url(path), token, secret, "application/octet-stream")

    def delete_resource(self, token: str, path: str) -> None:
        """Delete the secret at repository/type/tag."""
        self.admin("DELETE", resource_url(path), token)

    def set_attestation_policy(self, token: str, text: str) -> None:
        """The attestation policy (`sevsim validate` TOML) every attestation must pass."""
        body = {"type": "toml", "policy_id": "default",
                "policy": base64.b64encode(text.encode()).decode()}
        self.admin("POST", "/attestation-policy", token, json.dumps(body).encode())

    def set_resource_policy(self, token: str, text: str) -> None:
        """The resource policy (sevsim.kbs.policy TOML) that decides each release."""
        body = {"policy": base64.b64encode(text.encode()).decode()}
        self.admin("POST", "/resource-policy", token, json.dumps(body).encode())

    def check_evidence(self, token: str, evidence: dict[str, Any],
                       report_data: bytes | None = None) -> dict[str, Any]:
        """The claims of SNP evidence (as /attest takes it) that verifies and passes the
        attestation policy, bound to `report_data` if given; KbsRefusal otherwise. Nothing
        is released."""
        body: dict[str, Any] = {"tee": "snp", "evidence": evidence}
        if report_data is not None:
            body["report-data"] = report_data.hex()
        answer: dict[str, Any] = self.admin("POST", "/evidence-check", token,
                                            json.dumps(body).encode())
        return dict(answer["claims"])

    def audit(self, token: str, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Audit records with ids above `after`, oldest first, at most `limit`."""
        records: list[dict[str, Any]] = self.admin(
            "GET", f"/audit?after={after}&limit={limit}", token)
        return records

    def resources(self, token: str) -> list[dict[str, Any]]:
        """The stored secrets' paths and times (never the secrets)."""
        listing: list[dict[str, Any]] = self.admin("GET", "/resources", token)
        return listing


def closed_by_peer(sock: socket.socket | None) -> bool:
    """Whether an idle connection's socket is readable: between answers the server sends
    nothing, so that is its end of the connection (or garbage, which ends it too)."""
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def resource_url(path: str) -> str:
    """The endpoint of resource `repository/type/tag`, each segment percent-encoded."""
    return "/resource/" + urllib.parse.quote(path, safe="/")


def refusal_from(status: int, content_type: str, data: bytes) -> KbsRefusal:
    """The KbsRefusal a problem document describes (any other error answer: `http-<status>`)."""
    if content_type.split(";")[0].strip() == PROBLEM:
        try:
            doc = json.loads(data)
            kind, detail = doc["type"], doc.get("detail", "")
        except (ValueError, KeyError, TypeError):
            pass
        else:
            if isinstance(kind, str) and kind.startswith(ERRORS):
                return KbsRefusal(status, kind.removeprefix(ERRORS), str(detail))
    return KbsRefusal(status, f"http-{status}", data[:200].decode(errors="replace"))
