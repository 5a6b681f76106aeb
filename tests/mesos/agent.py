"""A Mesos agent double speaking the v1 executor HTTP API on loopback.

It serves ``POST /api/v1/executor`` like src/slave/http.cpp: SUBSCRIBE gets ``200`` and a chunked
RecordIO stream (``<len>\\n<json>``) of events starting with SUBSCRIBED; UPDATE, MESSAGE and
HEARTBEAT get ``202``; anything a real agent refuses gets its status code and message (400 bad
call, 403 not subscribed, 405, 415, 406, 503 while recovering). Every call is checked with
:class:`tests.mesos.protos.CallChecker` and every event it sends is parsed against the protos
first; ``violations`` lists everything found.

It starts ``hypervm-executor`` as an agent would: ``sh -c <ExecutorInfo.command.value>`` in its
own session, cwd = the sandbox, stdout/stderr into ``<sandbox>/stdout|stderr``, the ``MESOS_*``
environment. It acknowledges every valid update (unless ``auto_ack`` is off), counts the
unacknowledged ones, and ``restart()`` simulates an agent restart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.mesos import protos

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_RUNTIME = "tests.mesos.fake_runtime:factory"


def executor_command() -> str:
    """The command an agent would be given in ExecutorInfo.command.value."""
    script = Path(sys.executable).parent / "hypervm-executor"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m executor.mesos.main"


@dataclass
class Update:
    status: dict[str, Any]
    #: "call" (UPDATE) or "subscribe" (resent in a re-SUBSCRIBE)
    via: str

    @property
    def task_id(self) -> str:
        return self.status["task_id"]["value"]

    @property
    def state(self) -> str:
        return self.status["state"]

    @property
    def uuid(self) -> str:
        return self.status["uuid"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], agent: AgentDouble) -> None:
        self.agent = agent
        self.connections: set[socket.socket] = set()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def drop_connections(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.connections.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("agent: " + format, *args)

    def reply(self, code: int, message: str = "") -> None:
        body = message.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)
        if code >= 400:
            self.server.agent.rejected.append((code, message))

    def do_GET(self) -> None:  # noqa: N802
        self.reply(405 if self.path == "/api/v1/executor" else 404,
                   "Expecting 'POST', received 'GET'")

    def do_POST(self) -> None:  # noqa: N802
        agent = self.server.agent
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path != "/api/v1/executor":
            return self.reply(404)
        if agent.auth_token and self.headers.get("Authorization") != f"Bearer {agent.auth_token}":
            agent.checker.record("call without the executor's authentication token")
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="mesos"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            agent.rejected.append((401, "Unauthorized"))
            return None
        ctype = self.headers.get("Content-Type")
        if ctype is None:
            agent.checker.record("call without Content-Type")
            return self.reply(400, "Expecting 'Content-Type' to be present")
        if ctype.split(";")[0].strip() != "application/json":
            agent.checker.record(f"unsupported Content-Type {ctype}")
            return self.reply(415, f"Expecting 'Content-Type' of application/json, got {ctype}")
        try:
            data = json.loads(body)
        except ValueError as e:
            agent.checker.record(f"call is not JSON: {e}")
            return self.reply(400, f"Failed to parse body into JSON: {e}")
        try:
            agent.checker.check(data)
        except protos.ProtoViolation as e:
            return self.reply(400, f"Failed to validate executor::Call: {e}")
        agent.calls.append(data)
        if data["type"] == "SUBSCRIBE":
            return self.subscribe(data)
        if not agent.ever_subscribed:
            agent.checker.record(f"{data['type']} before SUBSCRIBE")
            return self.reply(403, "Executor is not subscribed")
        if data["type"] == "UPDATE":
            agent.on_update(data["update"]["status"], via="call")
        elif data["type"] == "MESSAGE":
            agent.messages.append(base64.b64decode(data["message"]["data"]))
        self.reply(202)

    def subscribe(self, data: dict[str, Any]) -> None:
        agent = self.server.agent
        accept = self.headers.get("Accept", "*/*")
        if not any(a.split(";")[0].strip() in ("application/json", "*/*", "application/*")
                   for a in accept.split(",")):
            return self.reply(406, f"Expecting 'Accept' to allow application/json, got {accept}")
        if time.monotonic() < agent.recovering_until:
            return self.reply(503, "Agent has not finished recovery")
        stream = agent.open_stream(data["subscribe"])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                event = stream.next_event()
                if event is None:
                    break
                self.wfile.write(protos.recordio_chunk(event))
                self.wfile.flush()
        except OSError:
            pass
        finally:
            agent.close_stream(stream)


class _Stream:
    def __init__(self) -> None:
        self._events: list[dict[str, Any] | None] = []
        self._cond = threading.Condition()

    def put(self, event: dict[str, Any] | None) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def next_event(self) -> dict[str, Any] | None:
        with self._cond:
            while not self._events:
                self._cond.wait()
            return self._events.pop(0)


def wait_until(changed: threading.Condition, predicate: Callable[[], Any], timeout: float,
               describe: Callable[[], str]) -> Any:
    """Wait (on ``changed``, re-checking at least every 0.1 s) until ``predicate()`` is truthy;
    AssertionError with ``describe()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with changed:
        while True:
            result = predicate()
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(describe())
            changed.wait(min(left, 0.1))


class AgentDouble:
    """One agent, one framework, one executor. Use as a context manager or call ``stop()``."""

    def __init__(self, workdir: Path, *, checkpoint: bool = True, auto_ack: bool = True,
                 task_killing_state: bool = True, framework_id: str = "fw-hypervm",
                 executor_id: str = "ex-1", shutdown_grace: str = "5secs",
                 recovery_timeout: str = "15mins", backoff_max: str = "1secs",
                 runtime: str | None = FAKE_RUNTIME, env: dict[str, str] | None = None,
                 executor_resources: tuple[float, float] = (0.1, 32.0),
                 auth_token: str | None = None) -> None:
        self.workdir = workdir
        self.sandbox = workdir / "sandbox"
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.framework_id, self.executor_id = framework_id, executor_id
        self.checkpoint, self.auto_ack = checkpoint, auto_ack
        self.task_killing_state = task_killing_state
        self.checker = protos.CallChecker(framework_id, executor_id, task_killing_state)
        self.settings = dict(shutdown_grace=shutdown_grace, recovery_timeout=recovery_timeout,
                             backoff_max=backoff_max)
        self.runtime, self.extra_env = runtime, env or {}
        self.executor_resources = executor_resources
        #: with a token, calls must carry ``Authorization: Bearer <token>`` (else 401), as with
        #: the agent's --authenticate_http_executors
        self.auth_token = auth_token
        self.calls: list[dict[str, Any]] = []
        self.updates: list[Update] = []
        self.messages: list[bytes] = []
        self.rejected: list[tuple[int, str]] = []
        self.subscribes: list[dict[str, Any]] = []
        self.unacked: dict[str, Update] = {}
        self.acked_uuids: set[str] = set()
        self.ever_subscribed = False
        self.recovering_until = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stream: _Stream | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._serve()

    # ---------------------------------------------------------------- server lifecycle

    def _serve(self) -> None:
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-double",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _unserve(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            if self._stream is not None:
                self._stream.put(None)
        self._server.drop_connections()
        self._server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restart(self, down_for: float = 1.0, recovering_for: float = 0.0) -> None:
        """Drop the stream and every connection, refuse connections for ``down_for`` seconds,
        then answer 503 for ``recovering_for`` seconds before accepting a re-SUBSCRIBE."""
        self._unserve()
        time.sleep(down_for)
        self.recovering_until = time.monotonic() + recovering_for
        self._serve()

    # ---------------------------------------------------------------- executor process

    def executor_info(self) -> dict[str, Any]:
        cpus, mem = self.executor_resources
        return {
            "executor_id": {"value": self.executor_id},
            "framework_id": {"value": self.framework_id},
            "type": "CUSTOM",
            "command": {"value": executor_command(), "shell": True},
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}},
            ],
        }

    def framework_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"user": "root", "name": "hypervm-tests",
                                "id": {"value": self.framework_id},
                                "checkpoint": self.checkpoint}
        if self.task_killing_state:
            info["capabilities"] = [{"type": "TASK_KILLING_STATE"}]
        return info

    def executor_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "HOME", "TMPDIR") or k.startswith("HYPERVM_")}
        env.pop("HYPERVM_EXECUTOR_RUNTIME", None)
        env.update({
            "MESOS_FRAMEWORK_ID": self.framework_id,
            "MESOS_EXECUTOR_ID": self.executor_id,
            "MESOS_AGENT_ENDPOINT": self.endpoint,
            "MESOS_DIRECTORY": str(self.sandbox),
            "MESOS_SANDBOX": str(self.sandbox),
            "MESOS_CHECKPOINT": "1" if self.checkpoint else "0",
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": self.settings["shutdown_grace"],
            "MESOS_SLAVE_ID": "agent-1",
        })
        if self.auth_token:
            env["MESOS_EXECUTOR_AUTHENTICATION_TOKEN"] = self.auth_token
        if self.checkpoint:
            env["MESOS_RECOVERY_TIMEOUT"] = self.settings["recovery_timeout"]
            env["MESOS_SUBSCRIPTION_BACKOFF_MAX"] = self.settings["backoff_max"]
        env["PYTHONPATH"] = str(REPO_ROOT)
        if self.runtime:
            env["HYPERVM_EXECUTOR_RUNTIME"] = self.runtime
        env.update(self.extra_env)
        return env

    def start_executor(self) -> subprocess.Popen[bytes]:
        command = self.executor_info()["command"]["value"]
        with open(self.sandbox / "stdout", "ab") as out, open(self.sandbox / "stderr", "ab") as err:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", command], cwd=self.sandbox, env=self.executor_env(),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        return self.process

    def wait_executor_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._kill_fake_containers()
        self._unserve()

    def _kill_fake_containers(self) -> None:
        """The fake runtime's containers run in their own sessions: an executor that was
        killed (not shut down) leaves them behind."""
        from tests.mesos.fake_runtime import journal

        for event in journal(self.sandbox):
            if event.get("event") == "start":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(event["pid"], signal.SIGKILL)

    def __enter__(self) -> AgentDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def executor_log(self) -> str:
        parts = []
        for name in ("hypervm-executor.log", "stderr"):
            path = self.sandbox / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- stream + events

    def open_stream(self, subscribe: dict[str, Any]) -> _Stream:
        with self._lock:
            if self._stream is not None:
                self._stream.put(None)
            stream = self._stream = _Stream()
            self.subscribes.append(subscribe)
            resubscribe = self.ever_subscribed
            self.ever_subscribed = True
            for update in subscribe.get("unacknowledged_updates", []):
                self.on_update(update["status"], via="subscribe")
            if resubscribe:
                for task in subscribe.get("unacknowledged_tasks", []):
                    if task["task_id"]["value"] not in self.checker.launched_tasks:
                        self.checker.record(f"unacknowledged task {task['task_id']['value']} "
                                            "was never launched")
            self._send({"type": "SUBSCRIBED", "subscribed": {
                "executor_info": self.executor_info(),
                "framework_info": self.framework_info(),
                "agent_info": {"hostname": "localhost", "id": {"value": "agent-1"}},
                "container_id": {"value": "container-1"},
            }})
            if self.auto_ack:
                for update in list(self.unacked.values()):
                    self._ack(update)
            self._changed.notify_all()
        return stream

    def close_stream(self, stream: _Stream) -> None:
        with self._lock:
            if self._stream is stream:
                self._stream = None
            self._changed.notify_all()

    @property
    def subscribed(self) -> bool:
        with self._lock:
            return self._stream is not None

    def _send(self, event: dict[str, Any]) -> None:
        protos.parse("executor.Event", event)  # the double's own events must be valid too
        with self._lock:
            if self._stream is None:
                raise RuntimeError(f"no subscribed executor to send {event['type']} to")
            self._stream.put(event)

    def on_update(self, status: dict[str, Any], via: str) -> None:
        with self._lock:
            update = Update(status, via)
            known = any(u.uuid == update.uuid for u in self.updates)
            if not known:
                self.updates.append(update)
            elif via == "call":
                self.checker.record(f"update {update.uuid} sent twice on a live stream")
            acked = update.uuid in self.acked_uuids
            if not acked:
                self.unacked[update.uuid] = update
                if self.auto_ack and via == "call":
                    self._ack(update)
            self._changed.notify_all()

    def _ack(self, update: Update) -> None:
        if self._stream is None:
            return
        self._send({"type": "ACKNOWLEDGED", "acknowledged": {
            "task_id": {"value": update.task_id}, "uuid": update.uuid}})
        self.unacked.pop(update.uuid, None)
        self.acked_uuids.add(update.uuid)

    def ack_all(self) -> int:
        """Acknowledge every update not yet acknowledged; returns how many."""
        with self._lock:
            pending = list(self.unacked.values())
            for update in pending:
                self._ack(update)
            return len(pending)

    # ---------------------------------------------------------------- commands to the executor

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        self.wait_for(lambda: self.subscribed, timeout, "the executor to subscribe")

    def _task(self, task: dict[str, Any]) -> dict[str, Any]:
        task = dict(task)
        task.setdefault("agent_id", {"value": "agent-1"})
        task.setdefault("name", task["task_id"]["value"])
        task.setdefault("resources", [])
        self.checker.launched_tasks.add(task["task_id"]["value"])
        return task

    def launch(self, task: dict[str, Any]) -> None:
        self._send({"type": "LAUNCH", "launch": {"task": self._task(task)}})

    def launch_group(self, tasks: list[dict[str, Any]]) -> None:
        group = {"tasks": [self._task(t) for t in tasks]}
        self._send({"type": "LAUNCH_GROUP", "launch_group": {"task_group": group}})

    def kill(self, task_id: str, grace_s: float | None = None) -> None:
        kill: dict[str, Any] = {"task_id": {"value": task_id}}
        if grace_s is not None:
            kill["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_s * 1e9)}}
        self._send({"type": "KILL", "kill": kill})

    def shutdown(self) -> None:
        self._send({"type": "SHUTDOWN"})

    def heartbeat(self) -> None:
        self._send({"type": "HEARTBEAT"})

    def error(self, message: str) -> None:
        self._send({"type": "ERROR", "error": {"message": message}})

    def message(self, data: bytes) -> None:
        self._send({"type": "MESSAGE", "message": {"data": base64.b64encode(data).decode()}})

    # ---------------------------------------------------------------- observations

    @property
    def violations(self) -> list[str]:
        return list(self.checker.violations)

    def states(self, task_id: str) -> list[str]:
        with self._lock:
            return [u.state for u in self.updates if u.task_id == task_id]

    def statuses(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [u.status for u in self.updates if u.task_id == task_id]

    def terminal(self, task_id: str) -> dict[str, Any] | None:
        for status in self.statuses(task_id):
            if status["state"] in TERMINAL:
                return status
        return None

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(self._changed, predicate, timeout, lambda: (
            f"timed out waiting for {what}; updates: "
            f"{[(u.task_id, u.state) for u in self.updates]}\n{self.executor_log()[-4000:]}"))

    def wait_terminal(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_for(lambda: self.terminal(task_id), timeout,
                             f"a terminal update of {task_id}")

    def wait_state(self, task_id: str, state: str, timeout: float = 20.0) -> None:
        self.wait_for(lambda: state in self.states(task_id), timeout, f"{task_id} {state}")


TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
            "TASK_DROPPED", "TASK_GONE"}


def new_uuid() -> str:
    return base64.b64encode(uuid.uuid4().bytes).decode()
