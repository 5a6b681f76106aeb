"""The HTTP server of the REST API: waitress, bounded and with an access log.

waitress reads and writes every connection on one I/O thread and hands only *complete* requests
to a fixed pool of worker threads, so a client that connects and sends nothing (or a header a
byte at a time) holds no worker; idle connections are closed after ``channel_timeout``, at most
``connection_limit`` are open at once (more wait in the listen backlog), and a request body over
the limit gets ``413`` before it is read. waitress has no TLS: put a TLS proxy in front
(scheduler/README.md says why and how) and, if it forwards ``X-Forwarded-*``, name it with
``trusted_proxy``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from waitress.server import create_server

from hypervm.frozen import frozen_dataclass
from scheduler import jsonbody
from scheduler.errors import ConfigError

log = logging.getLogger("scheduler.access")
server_log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: the WSGI environ key the API puts the authenticated tenant's id under
TENANT_KEY = "hypervm.tenant"
LOOPBACK = ("127.", "::1", "localhost")


@frozen_dataclass
class ServerOptions:
    #: worker threads (requests handled at once); I/O is on one more thread
    threads: int = 8
    #: connections open at once
    connection_limit: int = 100
    #: seconds an idle (or silent) connection stays open
    channel_timeout: int = 30
    max_body: int = jsonbody.MAX_BODY
    max_header: int = 64 * 1024
    backlog: int = 128
    #: address of a TLS proxy whose X-Forwarded-For/-Proto/-Host/-Port headers are believed
    trusted_proxy: str | None = None

    def check(self) -> None:
        for option, value, least, most in (
                ("--api-threads", self.threads, 1, 256),
                ("--api-connection-limit", self.connection_limit, 1, 10000),
                ("--api-channel-timeout", self.channel_timeout, 1, 3600)):
            if not least <= value <= most:
                raise ConfigError(f"{option} {value}: give {least} to {most}")


class _Logged:
    """The response iterable, counting bytes; the access log line is written on close()."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self.body, self.done, self.sent = body, done, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done(self.sent)


def access_log(app: WSGIApp) -> WSGIApp:
    """WSGI middleware: one INFO line per request (client, tenant, request line, status,
    bytes, milliseconds) on the ``scheduler.access`` logger. No header is logged."""

    def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.monotonic()
        status: list[str] = ["-"]

        def start(status_line: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, *exc)

        def done(sent: int) -> None:
            query = environ.get("QUERY_STRING")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            log.info('%s %s "%s %s %s" %s %d %.1fms', environ.get("REMOTE_ADDR", "-"),
                     environ.get(TENANT_KEY, "-"), environ.get("REQUEST_METHOD", "-"),
                     path[:2048], environ.get("SERVER_PROTOCOL", "-"), status[0], sent,
                     (time.monotonic() - started) * 1000)

        try:
            body = app(environ, start)
        except BaseException:
            status[0] = "500"
            done(0)
            raise
        return _Logged(body, done)

    return logged


def parse_listen(text: str) -> dict[str, Any]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/PATH`` → waitress' address arguments."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ConfigError(f"--listen {text!r}: give unix:/ABSOLUTE/PATH")
        return {"unix_socket": path, "unix_socket_perms": "660"}
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: give HOST:PORT (e.g. 127.0.0.1:8080) or "
                          "unix:/PATH")
    return {"host": host.strip("[]"), "port": int(port)}


def make_server(app: WSGIApp, listen: str, options: ServerOptions | None = None) -> Any:
    """A waitress server bound to ``listen`` (call ``run()``; ``close()`` stops it)."""
    options = options or ServerOptions()
    options.check()
    address = parse_listen(listen)
    if "host" in address and not address["host"].startswith(LOOPBACK):
        server_log.warning("the API speaks plain HTTP on %s: bearer tokens cross the network "
                           "in clear text; put a TLS proxy in front (scheduler/README.md)",
                           listen)
    proxy: dict[str, Any] = {}
    if options.trusted_proxy:
        proxy = {"trusted_proxy": options.trusted_proxy, "trusted_proxy_headers":
                 "x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port"}
    return create_server(
        access_log(app), **address, **proxy, threads=options.threads,
        connection_limit=options.connection_limit, channel_timeout=options.channel_timeout,
        cleanup_interval=max(1, min(30, options.channel_timeout // 2)),
        max_request_body_size=options.max_body, max_request_header_size=options.max_header,
        backlog=options.backlog, ident="hypervm-scheduler", asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True, expose_tracebacks=False)


def address_of(server: Any) -> str:
    """Where a server made by :func:`make_server` listens (the port when 0 was asked)."""
    if server.adj.unix_socket:
        return f"unix:{server.adj.unix_socket}"
    return f"http://{server.effective_host}:{server.effective_port}"


def stop(server: Any, timeout: float = 5.0) -> None:
    """Stop listening, close the open connections, let the workers finish."""
    server.close()
    for channel in list(server._map.values()):
        channel.close()
    server.task_dispatcher.shutdown(timeout=timeout)
