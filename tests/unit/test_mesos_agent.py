"""The agent double itself: it answers and rejects like a real agent, validates with the protos."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.mesos import protos
from tests.mesos.agent import AGENT_API_PATH, AgentDouble, new_uuid

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def double(tmp_path: Any) -> Iterator[AgentDouble]:
    agent = AgentDouble(tmp_path, task_killing_state=False)
    yield agent
    agent.stop()


def call(kind: str, **fields: Any) -> dict[str, Any]:
    body = {"type": kind, "framework_id": {"value": "fw-hypervm"},
            "executor_id": {"value": "ex-1"}}
    body.update(fields)
    return body


def update(state: str = "TASK_RUNNING", **status: Any) -> dict[str, Any]:
    body = {"task_id": {"value": "t"}, "state": state, "uuid": new_uuid(),
            "source": "SOURCE_EXECUTOR"}
    body.update(status)
    return call("UPDATE", update={"status": body})


def post(agent: AgentDouble, body: Any, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    hdrs = {"Content-Type": "application/json"} if headers is None else headers
    conn.request(method, AGENT_API_PATH, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


class Subscription:
    def __init__(self, agent: AgentDouble, subscribe: dict[str, Any] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        body = json.dumps(call("SUBSCRIBE", subscribe=subscribe or {}))
        self.conn.request("POST", AGENT_API_PATH, body=body,
                          headers={"Content-Type": "application/json",
                                   "Accept": "application/json"})
        self.resp = self.conn.getresponse()

    def event(self) -> dict[str, Any]:
        length = b""
        while not length.endswith(b"\n"):
            length += self.resp.read(1)
        return json.loads(self.resp.read(int(length)))

    def close(self) -> None:
        self.conn.close()


def test_subscribe_streams_recordio_events(double: AgentDouble) -> None:
    sub = Subscription(double)
    try:
        assert sub.resp.status == 200
        assert sub.resp.getheader("Transfer-Encoding") == "chunked"
        subscribed = sub.event()
        assert subscribed["type"] == "SUBSCRIBED"
        protos.parse("executor.Event", subscribed)
        double.launch({"task_id": {"value": "t"}})
        assert sub.event()["type"] == "LAUNCH"
        status, _ = post(double, update())
        assert status == 202
        ack = sub.event()
        assert ack["type"] == "ACKNOWLEDGED" and ack["acknowledged"]["task_id"]["value"] == "t"
        assert double.unacked == {}
        assert double.violations == []
    finally:
        sub.close()


@pytest.mark.parametrize("body, headers, code", [
    (update(), {}, 400),                                          # no Content-Type
    (update(), {"Content-Type": "text/plain"}, 415),
    ("{not json", None, 400),
    (call("UPDATE", update={"status": {}}, bogus=1), None, 400),  # unknown field
    (call("NOPE"), None, 400),                                    # bad enum
    (update(state="TASK_SLEEPING"), None, 400),                    # bad enum inside
    (update(state="TASK_STAGING"), None, 400),
    (update(source="SOURCE_MASTER"), None, 400),
    (update(uuid="AAAA"), None, 400),                              # 3 bytes, not a UUID
    (call("UPDATE"), None, 400),                                   # no update
    (call("MESSAGE", message={"data": "aGk="}, update={"status": {
        "task_id": {"value": "t"}, "state": "TASK_RUNNING"}}), None, 400),  # two payloads
    (dict(update(), framework_id={"value": "other"}), None, 400),
    (update(executor_id={"value": "other"}), None, 400),
])
def test_bad_calls_are_rejected(double: AgentDouble, body: Any, headers: Any, code: int) -> None:
    sub = Subscription(double)
    try:
        sub.event()
        double.launch({"task_id": {"value": "t"}})
        status, message = post(double, body, headers)
        assert status == code, message
        assert message
        assert double.violations  # the executor must never do this
    finally:
        sub.close()


def test_update_before_subscribe_is_forbidden(double: AgentDouble) -> None:
    assert post(double, update())[0] == 403


def test_get_is_not_allowed(double: AgentDouble) -> None:
    assert post(double, "", method="GET")[0] == 405


def test_subscribe_must_accept_json(double: AgentDouble) -> None:
    status, _ = post(double, call("SUBSCRIBE", subscribe={}),
                     {"Content-Type": "application/json", "Accept": "text/html"})
    assert status == 406


def test_soft_violations_are_recorded_but_accepted(double: AgentDouble) -> None:
    sub = Subscription(double)
    try:
        sub.event()
        double.launch({"task_id": {"value": "t"}})
        assert post(double, update(state="TASK_KILLING"))[0] == 202
        assert post(double, update(task_id={"value": "never-launched"}))[0] == 202
        assert len(double.violations) == 2
        assert "TASK_KILLING_STATE" in double.violations[0]
    finally:
        sub.close()


def test_restart_drops_the_stream_and_refuses_connections(double: AgentDouble) -> None:
    import threading

    sub = Subscription(double)
    sub.event()
    thread = threading.Thread(target=double.restart, kwargs={"down_for": 1.0})
    thread.start()
    try:
        with pytest.raises((http.client.HTTPException, OSError, ValueError)):
            sub.event()  # the stream ends
        thread.join(0.3)
        with pytest.raises(OSError):
            post(double, update())
    finally:
        thread.join()
        sub.close()
    status, _ = post(double, update())
    assert status == 202  # back, and it knows the executor subscribed before


def test_uuid_check() -> None:
    assert protos.valid_uuid(new_uuid())
    assert not protos.valid_uuid("AAAA")
    assert not protos.valid_uuid("!!!")


def test_taskinfo_proto_rejects_unknown_fields() -> None:
    with pytest.raises(protos.ProtoViolation):
        protos.parse("mesos.TaskInfo", {"name": "x", "task_id": {"value": "t"},
                                        "agent_id": {"value": "a"}, "imagee": {}})
    with pytest.raises(protos.ProtoViolation, match="required"):
        protos.parse("mesos.TaskInfo", {"name": "x"})
