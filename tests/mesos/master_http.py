"""The HTTP side of the master double: ``POST /api/v1/scheduler`` (SUBSCRIBE streams RecordIO
events in a chunked response with a ``Mesos-Stream-Id``; other calls get 202), ``GET /version``.
Every call is parsed against the protos before the master sees it."""

from __future__ import annotations

import base64
import json
import logging
import queue
import select
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.mesos import master_validation, protos

if TYPE_CHECKING:
    from tests.mesos.master import MasterDouble

log = logging.getLogger(__name__)


class MasterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, master: MasterDouble) -> None:
        self.master = master
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MasterServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("master: " + format, *args)

    def reply(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/version":
            return self.reply(200, json.dumps({"version": "1.11.0"}).encode(),
                              "application/json")
        if self.path == "/health":
            return self.reply(200)
        self.reply(404)

    def do_POST(self) -> None:  # noqa: N802
        master = self.server.master
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:  # the scheduler died mid-call (SIGKILL): the connection broke
            self.close_connection = True
            return
        if self.path != "/api/v1/scheduler":
            return self.reply(404)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            master.violation(f"call with Content-Type {ctype!r}")
            return self.reply(415, b"Expecting 'Content-Type' of application/json")
        if not master.authenticated(self.headers.get("Authorization")):
            return self.reply(401, b"Unauthorized")
        try:
            data = json.loads(body)
            call = protos.parse("scheduler.Call", data)
        except (ValueError, protos.ProtoViolation) as e:
            master.violation(f"invalid call: {e}")
            return self.reply(400, f"Failed to validate scheduler::Call: {e}".encode())
        master.calls.append(data)
        principal = None
        header = self.headers.get("Authorization") or ""
        if master.credentials is not None and header.startswith("Basic "):
            principal = base64.b64decode(header[6:]).decode().partition(":")[0]
        error = master_validation.validate_call(data, principal)
        if error:
            master.violation(f"invalid call: {error}")
            return self.reply(400, f"Failed to validate scheduler::Call: {error}".encode())
        if data.get("type") == "SUBSCRIBE":
            return self.subscribe(data)
        try:
            master.handle(data, call, self.headers.get("Mesos-Stream-Id"))
        except protos.ProtoViolation as e:
            master.violation(str(e))
            return self.reply(400, str(e).encode())
        self.reply(202)

    def subscribe(self, data: dict[str, Any]) -> None:
        master = self.server.master
        try:
            stream = master.subscribe(data)
        except protos.ProtoViolation as e:
            master.violation(str(e))
            return self.reply(400, str(e).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mesos-Stream-Id", stream.id)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                try:
                    event = stream.events.get(timeout=0.2)
                except queue.Empty:
                    if _peer_closed(self.connection):
                        break
                    continue
                if event is None:
                    break
                self.wfile.write(protos.recordio_chunk(event))
                self.wfile.flush()
        except OSError:
            pass
        finally:
            master.stream_closed(stream)


def _peer_closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@dataclass
class EventStream:
    id: str
    events: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
