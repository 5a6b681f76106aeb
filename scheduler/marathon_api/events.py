"""Marathon's event bus, scoped by tenant, and ``GET /v2/events`` as server-sent events.

Events are published from the Mesos callbacks, the deployment loop and the API without ever
blocking: each stream has a bounded queue, and a stream that falls that far behind is closed
(as Marathon drops slow consumers). The number of open streams is capped, in all and per
tenant, since each holds a server thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import falcon

from scheduler.errors import SchedulerError
from scheduler.marathon_api.state import timestamp

log = logging.getLogger(__name__)
QUEUE_SIZE = 1000
HEARTBEAT_S = 15.0


class TooManyStreams(SchedulerError):
    status = 503


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"eventType": event_type, "timestamp": timestamp(), **fields}


class _Stream:
    def __init__(self, tenant: str, types: frozenset[str]) -> None:
        self.tenant, self.types = tenant, types
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self.dropped = False


class EventBus:
    def __init__(self, max_streams: int = 16, max_per_tenant: int = 4) -> None:
        self.max_streams, self.max_per_tenant = max_streams, max_per_tenant
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()

    def publish(self, tenant: str, evt: dict[str, Any]) -> None:
        with self._lock:
            streams = [s for s in self._streams if s.tenant == tenant]
        for stream in streams:
            if stream.types and evt["eventType"] not in stream.types:
                continue
            try:
                stream.queue.put_nowait(evt)
            except queue.Full:
                stream.dropped = True

    def open(self, tenant: str, types: frozenset[str]) -> _Stream:
        with self._lock:
            if len(self._streams) >= self.max_streams or sum(
                    s.tenant == tenant for s in self._streams) >= self.max_per_tenant:
                raise TooManyStreams("too many open event streams",
                                     hint="close one; at most "
                                          f"{self.max_per_tenant} per tenant")
            stream = _Stream(tenant, types)
            self._streams.append(stream)
        return stream

    def close(self, stream: _Stream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    def close_all(self) -> None:
        """End every stream (at shutdown: each holds a server thread the server waits for)."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.queue.put_nowait(None)
            except queue.Full:
                stream.dropped = True

    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def sse(self, stream: _Stream, remote: str, heartbeat_s: float = HEARTBEAT_S
            ) -> Iterator[bytes]:
        """The stream's events as ``event: <type>`` / ``data: <json>`` blocks."""
        try:
            yield _frame(event("event_stream_attached", remoteAddress=remote))
            while not stream.dropped:
                try:
                    evt = stream.queue.get(timeout=heartbeat_s)
                except queue.Empty:
                    yield b":\n\n"  # a comment: keeps proxies and the client's socket alive
                    continue
                if evt is None:
                    break
                yield _frame(evt)
            if stream.dropped:
                log.info("event stream of tenant %s fell behind: closed", stream.tenant)
        finally:
            self.close(stream)


def _frame(evt: dict[str, Any]) -> bytes:
    return f"event: {evt['eventType']}\ndata: {json.dumps(evt)}\n\n".encode()


class Events:
    """``GET /v2/events[?event_type=…]``: ``text/event-stream``."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        types = frozenset(req.get_param_as_list("event_type") or [])
        stream = self.bus.open(req.context.tenant.id, types)
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.stream = self.bus.sse(stream, req.remote_addr or "")
