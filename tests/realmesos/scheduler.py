"""A small v1 HTTP scheduler for tests against the real master (JSON + RecordIO, stdlib only).

    sched = TestScheduler(master, name="t")        # SUBSCRIBEs; events are read on a thread
    offer = sched.take_offer()
    sched.accept(offer, [launch_op(task)])
    sched.wait_terminal("task-1")                   # every update is acknowledged as it comes
    sched.teardown()

Every status update is recorded (``statuses(task_id)``) and acknowledged at once, as a framework
does. A call the master refuses raises :class:`CallRefused` with the master's message.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.mesos.agent import wait_until

log = logging.getLogger(__name__)
PATH = "/api/v1/scheduler"
TERMINAL = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR",
                      "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR"})
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class CallRefused(Exception):
    def __init__(self, kind: str, status: int, body: bytes) -> None:
        super().__init__(f"{kind}: HTTP {status}: {body[:500]!r}")
        self.status, self.body = status, body


def read_record(resp: http.client.HTTPResponse) -> dict[str, Any] | None:
    """One RecordIO record (``<length>\\n<json>``); None at the end of the stream."""
    try:
        header = resp.readline(32)
        if not header.endswith(b"\n"):
            return None
        size = int(header)
        body = resp.read(size)
        if len(body) != size:
            return None
        record: dict[str, Any] = json.loads(body)
        return record
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None  # AttributeError: the response was closed under us (close())


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def resources(cpus: float, mem: float, disk: float | None = None,
              ports: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    out = [scalar("cpus", cpus), scalar("mem", mem)]
    if disk:
        out.append(scalar("disk", disk))
    if ports:
        out.append({"name": "ports", "type": "RANGES",
                    "ranges": {"range": [{"begin": p, "end": p} for p in ports]}})
    return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class TestScheduler:
    __test__ = False  # not a pytest class

    def __init__(self, master: str, name: str = "hypervm-realmesos-test", *,
                 checkpoint: bool = True, failover_timeout: float = 0.0,
                 capabilities: tuple[str, ...] = ()) -> None:
        host, port = master.rsplit(":", 1)
        self.addr = (host, int(port))
        self.info: dict[str, Any] = {
            "user": "root", "name": name, "hostname": "127.0.0.1", "checkpoint": checkpoint,
            "failover_timeout": failover_timeout,
            "capabilities": [{"type": c} for c in capabilities]}
        self.framework_id: str | None = None
        self.stream_id: str | None = None
        self.offers: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.errors: list[Any] = []
        self.subscribed_at = 0.0
        self.closed = False
        self._changed = threading.Condition()
        self._conn: http.client.HTTPConnection | None = None
        self.subscribe()

    # ---------------------------------------------------------------- the event stream

    def subscribe(self, timeout: float = 20) -> None:
        """SUBSCRIBE (again, with the framework id, after a master restart)."""
        info = dict(self.info)
        body: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
        if self.framework_id:
            info["id"] = body["framework_id"] = {"value": self.framework_id}
        with self._changed:
            self.closed, before = False, self.subscribed_at
        conn = http.client.HTTPConnection(*self.addr, timeout=10)
        conn.request("POST", PATH, json.dumps(body), HEADERS)
        resp = conn.getresponse()
        if resp.status != 200:
            raise CallRefused("SUBSCRIBE", resp.status, resp.read())
        assert conn.sock is not None
        conn.sock.settimeout(None)
        self._conn = conn
        self.stream_id = resp.getheader("Mesos-Stream-Id")
        threading.Thread(target=self._read, args=(resp,), name="scheduler-events",
                         daemon=True).start()
        self.wait(lambda: self.subscribed_at > before, timeout, "SUBSCRIBED")

    def _read(self, resp: http.client.HTTPResponse) -> None:
        while True:
            event = read_record(resp)
            if event is None:
                with self._changed:
                    self.closed = True
                    self._changed.notify_all()
                return
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - keep reading; the test sees what is missing
                log.exception("handling %s", event.get("type"))

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        with self._changed:
            if kind == "SUBSCRIBED":
                self.framework_id = event["subscribed"]["framework_id"]["value"]
                self.subscribed_at = time.monotonic()
            elif kind == "OFFERS":
                self.offers.extend(event["offers"].get("offers", []))
            elif kind == "RESCIND":
                gone = event["rescind"]["offer_id"]["value"]
                self.offers = [o for o in self.offers if o["id"]["value"] != gone]
            elif kind == "UPDATE":
                self.updates.append(event["update"]["status"])
            elif kind == "ERROR":
                self.errors.append(event)
            self._changed.notify_all()
        if kind == "UPDATE":
            status = event["update"]["status"]
            log.info("update %s %s %s", status["task_id"]["value"], status["state"],
                     status.get("message", ""))
            if "uuid" in status:
                self.call({"type": "ACKNOWLEDGE", "acknowledge": {
                    "agent_id": status["agent_id"], "task_id": status["task_id"],
                    "uuid": status["uuid"]}})

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- calls

    def call(self, body: dict[str, Any]) -> None:
        body = dict(body, framework_id={"value": self.framework_id})
        headers = dict(HEADERS, **({"Mesos-Stream-Id": self.stream_id} if self.stream_id else {}))
        conn = http.client.HTTPConnection(*self.addr, timeout=30)
        try:
            conn.request("POST", PATH, json.dumps(body), headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 202:
            raise CallRefused(body["type"], resp.status, data)

    def take_offer(self, timeout: float = 30) -> dict[str, Any]:
        def first() -> dict[str, Any] | None:
            return self.offers.pop(0) if self.offers else None
        offer: dict[str, Any] = self.wait(first, timeout, "an offer")
        return offer

    def accept(self, offer: dict[str, Any], operations: list[dict[str, Any]]) -> None:
        self.call({"type": "ACCEPT", "accept": {
            "offer_ids": [offer["id"]], "operations": operations,
            "filters": {"refuse_seconds": 0.5}}})

    def decline(self, offer: dict[str, Any]) -> None:
        self.call({"type": "DECLINE", "decline": {"offer_ids": [offer["id"]],
                                                  "filters": {"refuse_seconds": 0.1}}})

    def take_full_offer(self, cpus: float, timeout: float = 60) -> dict[str, Any]:
        """An offer with at least ``cpus`` (declining smaller ones: resources of a finished
        executor come back a little after its task ends)."""
        deadline = time.monotonic() + timeout
        while True:
            offer = self.take_offer(max(1.0, deadline - time.monotonic()))
            offered = sum(r["scalar"]["value"] for r in offer["resources"]
                          if r["name"] == "cpus")
            if offered >= cpus or time.monotonic() > deadline:
                return offer
            self.decline(offer)

    def kill(self, task_id: str, agent_id: dict[str, Any], grace_s: float | None = None) -> None:
        kill: dict[str, Any] = {"task_id": {"value": task_id}, "agent_id": agent_id}
        if grace_s is not None:
            kill["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_s * 1e9)}}
        self.call({"type": "KILL", "kill": kill})

    def reconcile(self) -> None:
        self.call({"type": "RECONCILE", "reconcile": {"tasks": []}})

    def teardown(self) -> None:
        if self.framework_id and not self.closed:
            try:
                self.call({"type": "TEARDOWN"})
            except (CallRefused, OSError) as e:
                log.warning("TEARDOWN: %s", e)
        self.close()

    # ---------------------------------------------------------------- observations

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(self._changed, predicate, timeout, lambda: (
            f"timed out after {timeout:.0f} s waiting for {what}; "
            f"updates: {self.summary()}; errors: {self.errors}"))

    def statuses(self, task_id: str) -> list[dict[str, Any]]:
        with self._changed:
            return [s for s in self.updates if s["task_id"]["value"] == task_id]

    def states(self, task_id: str) -> list[str]:
        return [s["state"] for s in self.statuses(task_id)]

    def summary(self) -> list[tuple[str, str, str]]:
        return [(s["task_id"]["value"], s["state"], s.get("message", "")[:120])
                for s in self.updates]

    def terminal(self, task_id: str) -> dict[str, Any] | None:
        return next((s for s in self.statuses(task_id) if s["state"] in TERMINAL), None)

    def wait_terminal(self, task_id: str, timeout: float) -> dict[str, Any]:
        status: dict[str, Any] = self.wait(lambda: self.terminal(task_id), timeout,
                                           f"a terminal update of {task_id}")
        return status

    def wait_state(self, task_id: str, state: str, timeout: float) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((s for s in self.statuses(task_id) if s["state"] == state), None)
        status: dict[str, Any] = self.wait(found, timeout, f"{task_id} {state}")
        return status
