"""The API of a scheduler in an HA group: the leader answers, a standby forwards to it.

:class:`LeaderGate` is the WSGI app every scheduler started with ``--zk`` serves. ``GET
/v2/leader`` is answered by each one (``{"leader": "HOST:PORT"}``, as Marathon; a tenant token
is needed, like every call); ``DELETE /v2/leader`` goes to the leader, which abdicates, or
gets Marathon's ``404`` while there is none. Everything else goes to the local API once this
scheduler leads (``local`` is set), and is forwarded as it came (method, path, query, headers,
body) to the leader otherwise - Marathon's standbys proxy the same way. A forwarded request
carries ``X-HyperVM-Forwarded-By``; a scheduler that gets one and does not lead answers 503
instead of forwarding again (no loops while leadership moves). No leader, or one that does not
answer: 503 with ``Retry-After``.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scheduler.tenants import Tenants

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
FORWARDED = "X-HyperVM-Forwarded-By"
#: hop-by-hop headers (RFC 9110 7.6.1) are not forwarded; Host names the leader
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "host"})
TIMEOUT = 60.0


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), *(extra or [])])
    return [data]


def _unavailable(start_response: Callable[..., Any], message: str) -> list[bytes]:
    return _json(start_response, "503 Service Unavailable",
                 {"title": "Service Unavailable", "message": message}, [("Retry-After", "1")])


class LeaderGate:
    def __init__(self, leader: Callable[[], str | None], advertise: str, tenants: Tenants
                 ) -> None:
        #: HOST:PORT of the leader's API, or None
        self.leader = leader
        self.advertise, self.tenants = advertise, tenants
        #: the API of this scheduler, once it leads
        self.local: WSGIApp | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path == "/v2/leader" and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return self._leader(environ, start_response)
        local = self.local
        if local is not None:
            return local(environ, start_response)
        leader = self.leader()
        if leader is None:
            if path == "/v2/leader":  # DELETE: Marathon's 404 "There is no leader"
                return self._leader(environ, start_response)
            return _unavailable(start_response, "no leader is elected yet")
        if leader == self.advertise:
            return _unavailable(start_response, "this scheduler is becoming the leader")
        if environ.get("HTTP_" + FORWARDED.upper().replace("-", "_")):
            return _unavailable(start_response, "the leadership is moving")
        return self._forward(leader, environ, start_response)

    def _leader(self, environ: dict[str, Any], start_response: Callable[..., Any]
                ) -> list[bytes]:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or self.tenants.authenticate(token.strip()) is None:
            return _json(start_response, "401 Unauthorized", {
                "title": "Unauthorized",
                "message": "a valid 'Authorization: Bearer <token>' header is required"},
                [("WWW-Authenticate", 'Bearer realm="hypervm-scheduler"')])
        leader = self.leader()
        if leader is None:
            return _json(start_response, "404 Not Found",
                         {"title": "Not Found", "message": "There is no leader"})
        return _json(start_response, "200 OK", {"leader": leader})

    def _forward(self, leader: str, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        host, _, port = leader.rpartition(":")
        target = environ.get("PATH_INFO", "") or "/"
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        headers = {FORWARDED: self.advertise}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").title()
                if name.lower() not in _HOP:
                    headers[name] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)  # waitress bounds and buffers it
        body = environ["wsgi.input"].read(length) if length > 0 else None
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=TIMEOUT)
        try:
            conn.request(environ["REQUEST_METHOD"], target, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            log.warning("forwarding %s %s to the leader %s failed: %s",
                        environ["REQUEST_METHOD"], target, leader, e)
            return _unavailable(start_response, f"the leader {leader} does not answer")
        start_response(f"{resp.status} {resp.reason}",
                       [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP])
        return self._relay(conn, resp)

    @staticmethod
    def _relay(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse
               ) -> Iterator[bytes]:
        """The leader's body as it comes (an event stream too)."""
        try:
            while chunk := resp.read1(65536):
                yield chunk
        except OSError as e:
            log.info("the leader's answer broke off: %s", e)
        finally:
            conn.close()
