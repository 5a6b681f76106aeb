"""The executor against a hostile guest, in-process: the pod talks to a scripted guest over a real
GuestChannel (a unix socket), so what the guest sends goes through the host's real parser."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor.guest import protocol as proto
from executor.guest.channel import GuestChannel, ProcessCallbacks
from executor.guest.protocol import MsgType
from executor.mesos.driver import ExecutorSettings
from executor.mesos.executor import ExecutorCore
from executor.mesos.kill import DEFAULT_LIMITS, KillLimits
from tests.mesos.fixtures import task
from tests.unit.test_guest_channel import FakeGuest, Handler

pytestmark = pytest.mark.timeout(60)


class RecordingDriver:
    aborted = False

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def sendStatusUpdate(self, status: dict[str, Any]) -> None:  # noqa: N802
        with self.cond:
            self.updates.append(status)
            self.cond.notify_all()

    def unacknowledged(self) -> list[Any]:
        return []

    def wait_terminal(self, task_id: str, timeout: float) -> dict[str, Any]:
        terminal = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED"}
        with self.cond:
            self.cond.wait_for(lambda: any(u["state"] in terminal for u in self.updates),
                               timeout)
        ends = [u for u in self.updates
                if u["task_id"]["value"] == task_id and u["state"] in terminal]
        states = [u["state"] for u in self.updates]
        assert ends, f"{task_id} never ended: {states}"
        return ends[0]


class ChannelPod:
    """A pod whose one process lives behind a real GuestChannel to a scripted guest."""

    def __init__(self, sock_path: Path, handler: Handler) -> None:
        self.sock_path, self.handler = sock_path, handler
        self.channel = GuestChannel(sock_path)
        self.destroyed = threading.Event()

    def boot(self) -> None:
        FakeGuest(self.sock_path, handler=self.handler)
        self.channel.connect(timeout=5)

    def send_start(self, task_id: str, on_stdout: Any, on_stderr: Any, on_exit: Any) -> Any:
        return lambda: self.start(task_id, on_stdout, on_stderr, on_exit)

    def start(self, task_id: str, on_stdout: Any, on_stderr: Any, on_exit: Any) -> None:
        self.channel.register_process(1, ProcessCallbacks(on_stdout, on_stderr, on_exit))
        self.channel.request(MsgType.START, {"handle": 1})

    def signal(self, task_id: str, signum: int) -> None:
        self.channel.request(MsgType.SIGNAL, {"handle": 1, "signal": signum}, timeout=30)

    def destroy(self) -> None:
        self.channel.close()
        self.destroyed.set()


class OnePodRuntime:
    def __init__(self, pod: ChannelPod) -> None:
        self.pod = pod

    def create_pod(self, plan: Any) -> ChannelPod:
        return self.pod


def run_core(tmp_path: Path, pod: ChannelPod, limits: KillLimits = DEFAULT_LIMITS
             ) -> tuple[ExecutorCore, RecordingDriver]:
    settings = ExecutorSettings(framework_id="fw", executor_id="ex", agent_endpoint="a:1",
                                sandbox=tmp_path / "sandbox", checkpoint=False,
                                shutdown_grace_s=30, recovery_timeout_s=5, backoff_max_s=1)
    settings.sandbox.mkdir()
    core = ExecutorCore(settings, OnePodRuntime(pod), kill_limits=limits)
    core.driver = driver = RecordingDriver()
    core.connected = True
    threading.Thread(target=core.run, daemon=True).start()
    core.post(core.on_launch, [task("t", "x")], False)
    return core, driver


def started_then(payload: bytes | None) -> Handler:
    """START gets its OK, then (if given) an EXIT frame carrying ``payload``; SIGNAL: silence."""
    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        if frame.type is MsgType.START:
            out = proto.encode_json(MsgType.OK, frame.id, {"pid": 7})
            if payload is not None:
                out += proto.encode(MsgType.EXIT, 1, payload)
            conn.sendall(out)
    return handler


@pytest.mark.parametrize("payload", [b"[" * 200_000 + b"]" * 200_000,
                                     b'{"status": 100000000000000000000, "signal": null}'])
def test_a_hostile_exit_ends_the_task_and_destroys_the_vm(tmp_path: Path,
                                                          payload: bytes) -> None:
    """Before: the reader thread died on the RecursionError and the task stayed RUNNING; an
    exit status of 10^20 went into the TaskStatus (and the scheduler's SQLite)."""
    pod = ChannelPod(tmp_path / "ch.sock", started_then(payload))
    core, driver = run_core(tmp_path, pod)
    try:
        status = driver.wait_terminal("t", timeout=10)
        assert status["state"] == "TASK_FAILED"
        assert status["reason"] == "REASON_CONTAINER_LIMITATION"
        assert "guest channel broke" in status["message"]
        assert "exited with status" not in status["message"]
        assert pod.destroyed.wait(5)
    finally:
        core.done = True


def test_a_guest_that_ignores_kills_loses_its_vm(tmp_path: Path) -> None:
    """Before: the kill ended at the SIGKILL request; the VM lived until executor shutdown."""
    pod = ChannelPod(tmp_path / "ch.sock", started_then(None))
    core, driver = run_core(tmp_path, pod, KillLimits(escalation_s=0.5))
    try:
        with driver.cond:
            assert driver.cond.wait_for(
                lambda: any(u["state"] == "TASK_RUNNING" for u in driver.updates), 10)
        started = time.monotonic()
        core.post(core.on_kill, "t", {"grace_period": {"nanoseconds": 300_000_000}})
        status = driver.wait_terminal("t", timeout=10)
        assert status["state"] == "TASK_KILLED"
        assert "HyperVM was destroyed" in status["message"]
        assert pod.destroyed.is_set()
        assert 0.7 <= time.monotonic() - started < 4
    finally:
        core.done = True


def test_a_framework_grace_period_is_capped(tmp_path: Path) -> None:
    """Marathon's taskKillGracePeriodSeconds has no maximum: a day of grace is capped."""
    pod = ChannelPod(tmp_path / "ch.sock", started_then(None))
    core, driver = run_core(tmp_path, pod, KillLimits(max_grace_s=0.3, escalation_s=0.3))
    try:
        with driver.cond:
            assert driver.cond.wait_for(
                lambda: any(u["state"] == "TASK_RUNNING" for u in driver.updates), 10)
        core.post(core.on_kill, "t", {"grace_period": {"nanoseconds": 86_400 * 10**9}})
        assert driver.wait_terminal("t", timeout=10)["state"] == "TASK_KILLED"
        assert pod.destroyed.is_set()
    finally:
        core.done = True


def test_kill_limits_from_env() -> None:
    from executor.mesos.kill import kill_limits_from_env
    from hypervm.errors import InvalidSpec

    assert kill_limits_from_env({}) == KillLimits(300.0, 5.0)
    assert kill_limits_from_env({"HYPERVM_MAX_KILL_GRACE": "60"}).grace(1e9) == 60
    for bad in ("x", "-1", "nan", "inf"):
        with pytest.raises(InvalidSpec, match="HYPERVM_KILL_ESCALATION"):
            kill_limits_from_env({"HYPERVM_KILL_ESCALATION": bad})
