"""A Mesos master double speaking the v1 scheduler HTTP API on loopback, and its agents.

``POST /api/v1/scheduler`` as src/master/http.cpp: SUBSCRIBE gets ``200``, a ``Mesos-Stream-Id``
header and a chunked RecordIO stream (SUBSCRIBED, OFFERS, UPDATE, RESCIND, HEARTBEAT, ERROR);
every other call needs that stream id and gets ``202``. Every call is parsed against the
official protos (:mod:`tests.mesos.protos`) and checked for what a master enforces (stream id,
framework id, outstanding offers, MULTI_ROLE allocation roles, resources within the offer,
unique task ids, no DOCKER containers in task groups …); ``violations`` lists what was found,
and every event the double sends is parsed against the protos first. A task group the real
master refuses after a 202 (:func:`task_group_error`: no ``framework_id``/``type``/``disk`` on its
executor, a task carrying another executor) gets its TASK_ERROR updates, in the master's words.

Offers: each agent (:class:`AgentSpec`) offers its free resources to one of the framework's
roles at a time (round robin), honouring DECLINE/ACCEPT filters and SUPPRESS/REVIVE. A
LAUNCH_GROUP starts the executor through an :class:`tests.mesos.agent.AgentDouble` (one per
executor, the scheduler's own ``ExecutorInfo``), so the executor's status updates come back to
the scheduler as UPDATE events, resent on re-subscription until ACKNOWLEDGEd. RECONCILE answers
with the latest states (TASK_LOST for unknown tasks). A framework that disconnects keeps its
tasks for ``failover_timeout``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.mesos import protos
from tests.mesos.agent import FAKE_RUNTIME, TERMINAL, AgentDouble, wait_until
from tests.mesos.master_http import EventStream, MasterServer
from tests.mesos.master_resources import amounts, ranges, subtract

log = logging.getLogger(__name__)


@dataclass
class AgentSpec:
    id: str = "agent-1"
    hostname: str = "localhost"
    cpus: float = 4.0
    mem: float = 4096.0
    ports: tuple[int, int] = (31000, 31099)
    disk: float = 4096.0


@dataclass
class Task:
    task_id: str
    agent_id: str
    executor_id: str
    info: dict[str, Any]
    state: str = "TASK_STAGING"
    status: dict[str, Any] | None = None


@dataclass
class Launched:
    """One executor the master started (resources: what it and its tasks hold)."""

    executor_id: str
    agent: AgentSpec
    info: dict[str, Any]
    role: str
    resources: dict[str, Any]
    double: ExecutorAgent | None = None
    task_ids: list[str] = field(default_factory=list)


class ExecutorAgent(AgentDouble):
    """The agent double for one executor: started with the scheduler's ExecutorInfo, and its
    executor's updates are forwarded to the master."""

    def __init__(self, master: MasterDouble, workdir: Path, info: dict[str, Any],
                 framework_info: dict[str, Any], agent: AgentSpec, **kwargs: Any) -> None:
        self.master, self.info, self.fw_info, self.agent_spec = master, info, framework_info, agent
        caps = {c.get("type") for c in framework_info.get("capabilities", [])}
        super().__init__(workdir, framework_id=info["framework_id"]["value"],
                         executor_id=info["executor_id"]["value"],
                         checkpoint=bool(framework_info.get("checkpoint", False)),
                         task_killing_state="TASK_KILLING_STATE" in caps, **kwargs)

    def executor_info(self) -> dict[str, Any]:
        return self.info

    def framework_info(self) -> dict[str, Any]:
        return self.fw_info

    def on_update(self, status: dict[str, Any], via: str) -> None:
        with self._lock:
            known = any(u.uuid == status.get("uuid") for u in self.updates)
            super().on_update(status, via)
        if not known:
            self.master.forward_update(status, self.agent_spec.id)


def task_group_error(executor: dict[str, Any], tasks: list[dict[str, Any]],
                     require_disk: bool) -> str | None:
    """What the real master (src/master/validation.cpp) says about a LAUNCH_GROUP's executor
    and tasks, in its words; None when it takes them."""
    eid = executor["executor_id"]["value"]
    if "framework_id" not in executor:
        return "'ExecutorInfo.framework_id' must be set"
    if "type" not in executor:
        return "'ExecutorInfo.type' must be set"
    for task in tasks:
        if "executor" in task and task["executor"] != executor:
            return (f"The `ExecutorInfo` of task '{task['task_id']['value']}' is different "
                    f"from executor '{eid}'")
    if require_disk and not any(r.get("name") == "disk" for r in executor.get("resources", [])):
        return f"Executor '{eid}' uses no disk"
    return None


class MasterDouble:
    """One master, one framework at a time. Use as a context manager or call ``stop()``."""

    def __init__(self, workdir: Path, agents: list[AgentSpec] | None = None, *,
                 runtime: str | None = FAKE_RUNTIME, offer_interval: float = 0.1,
                 credentials: dict[str, str] | None = None,
                 executor_env: dict[str, str] | None = None,
                 heartbeat_s: float = 15.0, require_executor_disk: bool = False) -> None:
        self.workdir = workdir
        #: the real master answers a task group whose executor has no `disk` with TASK_ERROR
        #: "Executor '…' uses no disk"; off until hypervm-scheduler sends `disk` (issue 14)
        self.require_executor_disk = require_executor_disk
        self.agents = agents or [AgentSpec()]
        self.runtime, self.executor_env = runtime, executor_env or {}
        self.offer_interval, self.heartbeat_s = offer_interval, heartbeat_s
        self.credentials = credentials
        self.calls: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.subscribes: list[dict[str, Any]] = []
        self.tasks: dict[str, Task] = {}
        self.executors: dict[str, Launched] = {}
        #: task ids in the order they were launched (a relaunch of an id is a violation)
        self.launched: list[str] = []
        self.framework_id: str | None = None
        self.framework_info: dict[str, Any] = {}
        self.failover_timeout = 0.0
        self.disconnected_at: float | None = None
        self.removed = False
        self.suppressed: set[str] = set()
        self.filters: dict[tuple[str, str], float] = {}
        self.offers: dict[str, tuple[AgentSpec, str, dict[str, Any]]] = {}
        self.unacked: dict[str, dict[str, Any]] = {}
        self._rr: dict[str, int] = {}
        self._stream: EventStream | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._server = MasterServer(self)
        self.port = self._server.server_address[1]
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True,
                                          kwargs={"poll_interval": 0.05}, name="master"),
                         threading.Thread(target=self._allocate_loop, daemon=True,
                                          name="master-allocator")]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._stream is not None:
                self._stream.events.put(None)
        self._server.shutdown()
        self._server.server_close()
        doubles = [x.double for x in list(self.executors.values()) if x.double is not None]
        for double in doubles:  # as an agent would: SHUTDOWN, so the executor cleans up
            if double.process is not None and double.process.poll() is None:
                with contextlib.suppress(RuntimeError):
                    double.shutdown()
        for double in doubles:
            if double.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    double.process.wait(timeout=10)
            double.stop()

    def __enter__(self) -> MasterDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def executor_logs(self) -> str:
        return "\n".join(f"=== executor {eid}\n{ex.double.executor_log()[-4000:]}"
                         for eid, ex in self.executors.items() if ex.double is not None)

    # ---------------------------------------------------------------- checks

    def violation(self, text: str) -> None:
        log.warning("master double: violation: %s", text)
        with self._lock:
            self.violations.append(text)
            self._changed.notify_all()

    def authenticated(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        if not header or not header.startswith("Basic "):
            self.violation("call without credentials")
            return False
        principal, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if self.credentials.get(principal) != secret:
            self.violation(f"bad credentials for principal {principal!r}")
            return False
        return True

    # ---------------------------------------------------------------- events

    def _send(self, event: dict[str, Any]) -> None:
        protos.parse("scheduler.Event", event)  # the double's own events must be valid too
        with self._lock:
            self.events.append(event)
            if self._stream is not None:
                self._stream.events.put(event)

    # ---------------------------------------------------------------- SUBSCRIBE

    def subscribe(self, data: dict[str, Any]) -> EventStream:
        info = data["subscribe"]["framework_info"]
        with self._lock:
            given = (data.get("framework_id") or {}).get("value")
            if given and (info.get("id") or {}).get("value") != given:
                raise protos.ProtoViolation("'framework_id' differs from 'framework_info.id'")
            caps = {c.get("type") for c in info.get("capabilities", [])}
            if info.get("roles") and "MULTI_ROLE" not in caps:
                raise protos.ProtoViolation("'roles' needs the MULTI_ROLE capability")
            if info.get("roles") and info.get("role"):
                raise protos.ProtoViolation("both 'role' and 'roles' are set")
            if self.credentials is not None and info.get("principal") not in self.credentials:
                raise protos.ProtoViolation("framework_info.principal is not the authenticated "
                                            "principal")
            if self.removed and given == self.framework_id:
                self.subscribes.append(data)
                return self._removed_stream(given)
            if self.removed:  # a new framework may take the removed one's place
                self.framework_id, self.removed, self.disconnected_at = None, False, None
                self.unacked.clear()
            if self.framework_id is not None and given != self.framework_id:
                if self._stream is not None or self.disconnected_at is not None:
                    raise protos.ProtoViolation(
                        f"a second framework: {given or 'a new one'} (have {self.framework_id})")
            self.framework_id = given or self.framework_id or f"fw-{uuid.uuid4()}"
            self.framework_info = {**info, "id": {"value": self.framework_id}}
            self.failover_timeout = float(info.get("failover_timeout", 0))
            self.subscribes.append(data)
            if self._stream is not None:
                self._stream.events.put(None)
            stream = self._stream = EventStream(str(uuid.uuid4()))
            self.disconnected_at = None
            self.suppressed = set(data["subscribe"].get("suppressed_roles", []))
            self.offers.clear()
            self._send({"type": "SUBSCRIBED", "subscribed": {
                "framework_id": {"value": self.framework_id},
                "heartbeat_interval_seconds": self.heartbeat_s,
                "master_info": {"id": "master-double", "ip": 0x7F000001, "port": self.port,
                                "hostname": "localhost", "version": "1.11.0"}}})
            for status in list(self.unacked.values()):  # the status update manager retries
                self._send({"type": "UPDATE", "update": {"status": status}})
            self._changed.notify_all()
        return stream

    def _removed_stream(self, framework_id: str) -> EventStream:
        """What a master answers a removed framework: one ERROR event, then the end."""
        stream = EventStream(str(uuid.uuid4()))
        event = {"type": "ERROR", "error": {"message": f"Framework {framework_id} has been "
                                                        "removed"}}
        protos.parse("scheduler.Event", event)
        self.events.append(event)
        stream.events.put(event)
        stream.events.put(None)
        return stream

    def stream_closed(self, stream: EventStream) -> None:
        with self._lock:
            if self._stream is stream:
                self._stream = None
                self.disconnected_at = time.monotonic()
                self.offers.clear()
            self._changed.notify_all()

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._stream is not None

    # ---------------------------------------------------------------- other calls

    def handle(self, data: dict[str, Any], call: Any, stream_id: str | None) -> None:
        with self._lock:
            if self._stream is None or stream_id != self._stream.id:
                raise protos.ProtoViolation(f"{data['type']}: 'Mesos-Stream-Id' {stream_id!r} "
                                            "is not the subscribed stream's")
            if (data.get("framework_id") or {}).get("value") != self.framework_id:
                raise protos.ProtoViolation(f"{data['type']}: unknown framework id")
            kind = data["type"]
            body = data.get(kind.lower(), {})
            if kind == "ACCEPT":
                self._accept(body)
            elif kind == "DECLINE":
                self._decline(body.get("offer_ids", []), body.get("filters"))
            elif kind == "KILL":
                self._kill(body["task_id"]["value"])
            elif kind == "RECONCILE":
                self._reconcile([t["task_id"]["value"] for t in body.get("tasks", [])])
            elif kind == "ACKNOWLEDGE":
                self._acknowledge(body)
            elif kind == "SUPPRESS":
                self.suppressed |= set(body.get("roles") or self._roles())
            elif kind == "REVIVE":
                roles = set(body.get("roles") or self._roles())
                self.suppressed -= roles
                self.filters = {k: v for k, v in self.filters.items() if k[0] not in roles}
            elif kind == "TEARDOWN":
                self.removed = True
                for task_id in list(self.tasks):
                    self._kill(task_id)
            self._changed.notify_all()

    def _roles(self) -> list[str]:
        info = self.framework_info
        return list(info.get("roles") or [info.get("role", "*")])

    def _take_offers(self, offer_ids: list[dict[str, str]]
                     ) -> list[tuple[AgentSpec, str, dict[str, Any]]]:
        out = []
        for oid in offer_ids:
            offer = self.offers.pop(oid["value"], None)
            if offer is None:
                raise protos.ProtoViolation(f"Offer {oid['value']} is no longer valid")
            out.append(offer)
        return out

    def _filter(self, agent: AgentSpec, role: str, filters: dict[str, Any] | None) -> None:
        refuse = float((filters or {}).get("refuse_seconds", 5.0))
        self.filters[(role, agent.id)] = time.monotonic() + refuse

    def _decline(self, offer_ids: list[dict[str, str]], filters: dict[str, Any] | None) -> None:
        for agent, role, _ in self._take_offers(offer_ids):
            self._filter(agent, role, filters)

    def _accept(self, body: dict[str, Any]) -> None:
        taken = self._take_offers(body.get("offer_ids", []))
        if len({(a.id, r) for a, r, _ in taken}) != 1:
            raise protos.ProtoViolation("ACCEPT needs offers of one agent and one role")
        agent, role, offer = taken[0]
        left = amounts(offer["resources"])
        for op in body.get("operations", []):
            if op["type"] != "LAUNCH_GROUP":
                raise protos.ProtoViolation(f"operation {op['type']} is not supported here")
            self._launch_group(agent, role, op["launch_group"], left)
        self._filter(agent, role, body.get("filters"))

    def _launch_group(self, agent: AgentSpec, role: str, op: dict[str, Any],
                      left: dict[str, Any]) -> None:
        executor, tasks = op["executor"], op["task_group"]["tasks"]
        eid = executor["executor_id"]["value"]
        error = task_group_error(executor, tasks, self.require_executor_disk)
        if error is not None:  # the real master: 202, then TASK_ERROR for every task
            return self._task_errors(tasks, error)
        if executor.get("type") != "CUSTOM" or not executor.get("command", {}).get("value"):
            raise protos.ProtoViolation("LAUNCH_GROUP: a CUSTOM executor with a command")
        if executor.get("framework_id", {}).get("value", self.framework_id) != self.framework_id:
            raise protos.ProtoViolation("ExecutorInfo.framework_id is not the framework's")
        if eid in self.executors:
            raise protos.ProtoViolation(f"Executor {eid} was launched before")
        if not tasks:
            raise protos.ProtoViolation("Task group is empty")
        resources = list(executor.get("resources", []))
        for task in tasks:
            tid = task["task_id"]["value"]
            if tid in self.tasks or tid in self.launched:
                raise protos.ProtoViolation(f"Task {tid} is a duplicate (launched before)")
            if task["agent_id"]["value"] != agent.id:
                raise protos.ProtoViolation(f"Task {tid}: agent {task['agent_id']['value']} "
                                            f"is not the offer's agent {agent.id}")
            if task.get("container", {}).get("type") == "DOCKER":
                raise protos.ProtoViolation(f"Task {tid}: DOCKER ContainerInfo in a task group")
            resources += task.get("resources", [])
        for r in resources:
            if (r.get("allocation_info") or {}).get("role") != role:
                raise protos.ProtoViolation(f"resource {r['name']} is not allocated to role "
                                            f"{role} (allocation_info: {r.get('allocation_info')})")
        subtract(left, amounts(resources))
        launched = Launched(eid, agent, {**executor, "framework_id": {"value": self.framework_id}},
                            role, amounts(resources), task_ids=[t["task_id"]["value"]
                                                                for t in tasks])
        self.executors[eid] = launched
        for task in tasks:
            tid = task["task_id"]["value"]
            self.tasks[tid] = Task(tid, agent.id, eid, task)
            self.launched.append(tid)
        threading.Thread(target=self._start_executor, args=(launched, tasks), daemon=True,
                         name=f"launch-{eid}").start()

    def _start_executor(self, launched: Launched, tasks: list[dict[str, Any]]) -> None:
        try:
            double = ExecutorAgent(self, self.workdir / launched.agent.id / launched.executor_id,
                                   launched.info, self.framework_info, launched.agent,
                                   runtime=self.runtime, env=self.executor_env)
            launched.double = double
            if self._stop.is_set():
                return double.stop()
            process = double.start_executor()
            double.wait_subscribed(timeout=60)
            double.launch_group(tasks)
        except Exception as e:  # the agent's answer: every task fails
            log.exception("master double: launching executor %s failed", launched.executor_id)
            for task in tasks:
                self._agent_update(task["task_id"]["value"], "TASK_FAILED",
                                   f"Executor did not start: {e}", "REASON_EXECUTOR_TERMINATED")
            return
        code = process.wait()
        with self._lock:
            if self._stop.is_set():
                return
            for task_id in launched.task_ids:  # as an agent: what the executor left is lost
                if self.tasks[task_id].state not in TERMINAL:
                    self._agent_update(task_id, "TASK_FAILED", f"Executor exited ({code})",
                                       "REASON_EXECUTOR_TERMINATED")

    # ---------------------------------------------------------------- updates

    def forward_update(self, status: dict[str, Any], agent_id: str) -> None:
        status = {**status, "agent_id": {"value": agent_id}}
        with self._lock:
            task = self.tasks.get(status["task_id"]["value"])
            if task is None:
                return self.violation(f"update of unknown task {status['task_id']['value']}")
            task.state, task.status = status["state"], status
            if status["state"] in TERMINAL:
                self._maybe_release(task.executor_id)
            self.unacked[status["uuid"]] = status
            self._send({"type": "UPDATE", "update": {"status": status}})
            self._changed.notify_all()

    def _task_errors(self, tasks: list[dict[str, Any]], message: str) -> None:
        """The master's own answer to an invalid task group: TASK_ERROR, no uuid (nothing to
        acknowledge), the tasks never exist."""
        for task in tasks:
            self._send({"type": "UPDATE", "update": {"status": {
                "task_id": task["task_id"], "state": "TASK_ERROR", "message": message,
                "reason": "REASON_TASK_GROUP_INVALID", "source": "SOURCE_MASTER",
                "agent_id": task.get("agent_id", {"value": ""}), "timestamp": time.time()}}})

    def _agent_update(self, task_id: str, state: str, message: str, reason: str) -> None:
        with self._lock:
            task = self.tasks[task_id]
            status: dict[str, Any] = {
                "task_id": {"value": task_id}, "state": state, "message": message,
                "reason": reason, "source": "SOURCE_AGENT", "agent_id": {"value": task.agent_id},
                "executor_id": {"value": task.executor_id},
                "uuid": base64.b64encode(uuid.uuid4().bytes).decode(), "timestamp": time.time()}
            task.state, task.status = state, status
            self._maybe_release(task.executor_id)
            self.unacked[status["uuid"]] = status
            self._send({"type": "UPDATE", "update": {"status": status}})
            self._changed.notify_all()

    def _maybe_release(self, executor_id: str) -> None:
        launched = self.executors[executor_id]
        if all(self.tasks[t].state in TERMINAL for t in launched.task_ids):
            launched.resources = {}

    def _acknowledge(self, body: dict[str, Any]) -> None:
        uid = body["uuid"]
        status = self.unacked.pop(uid, None)
        if status is None:
            raise protos.ProtoViolation(f"ACKNOWLEDGE of an unknown update {uid}")
        if status["task_id"] != body["task_id"] or status["agent_id"] != body["agent_id"]:
            raise protos.ProtoViolation("ACKNOWLEDGE: task or agent do not match the update")

    def _kill(self, task_id: str) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            self._send({"type": "UPDATE", "update": {"status": {
                "task_id": {"value": task_id}, "state": "TASK_LOST",
                "message": "Attempted to kill an unknown task", "source": "SOURCE_MASTER",
                "reason": "REASON_RECONCILIATION", "timestamp": time.time()}}})
            return
        if task.state in TERMINAL:
            return
        launched = self.executors[task.executor_id]
        if launched.double is not None and launched.double.subscribed:
            launched.double.kill(task_id)
        else:
            self._agent_update(task_id, "TASK_KILLED", "Killed before the executor started",
                               "REASON_TASK_KILLED_DURING_LAUNCH")

    def _reconcile(self, task_ids: list[str]) -> None:
        for task_id in task_ids or [t for t, task in self.tasks.items()
                                    if task.state not in TERMINAL]:
            task = self.tasks.get(task_id)
            status: dict[str, Any] = {"task_id": {"value": task_id}, "source": "SOURCE_MASTER",
                                      "reason": "REASON_RECONCILIATION",
                                      "timestamp": time.time()}
            if task is None:
                status.update(state="TASK_LOST", message="Reconciliation: Task is unknown")
            else:
                status.update(state=task.state, agent_id={"value": task.agent_id},
                              executor_id={"value": task.executor_id})
                if task.status and task.status.get("healthy") is not None:
                    status["healthy"] = task.status["healthy"]
            self._send({"type": "UPDATE", "update": {"status": status}})

    # ---------------------------------------------------------------- allocator

    def _allocate_loop(self) -> None:
        last_heartbeat = time.monotonic()
        while not self._stop.wait(self.offer_interval):
            with self._lock:
                if self._stream is None:
                    self._expire_failover()
                    continue
                if time.monotonic() - last_heartbeat >= self.heartbeat_s:
                    last_heartbeat = time.monotonic()
                    self._send({"type": "HEARTBEAT"})
                for agent in self.agents:
                    self._offer(agent)

    def _expire_failover(self) -> None:
        if (self.disconnected_at is not None and not self.removed
                and time.monotonic() - self.disconnected_at > self.failover_timeout):
            log.info("master double: framework %s failed over too late: removed",
                     self.framework_id)
            self.removed = True
            for task_id in list(self.tasks):
                self._kill(task_id)

    def _offer(self, agent: AgentSpec) -> None:
        if any(a.id == agent.id for a, _, _ in self.offers.values()):
            return
        roles = self._roles()
        start = self._rr.get(agent.id, 0)
        now = time.monotonic()
        for i in range(len(roles)):
            role = roles[(start + i) % len(roles)]
            if role in self.suppressed or self.filters.get((role, agent.id), 0) > now:
                continue
            free = self._free(agent)
            if free["cpus"] < 0.01 or free["mem"] < 1:
                return
            self._rr[agent.id] = (start + i + 1) % len(roles)
            oid = f"offer-{uuid.uuid4()}"
            alloc = {"role": role}
            resources = [
                {"name": name, "type": "SCALAR", "scalar": {"value": round(free[name], 3)},
                 "allocation_info": alloc}
                for name in ("cpus", "mem", "disk") if free.get(name, 0) > 0]
            if free["ports"]:
                resources.append({"name": "ports", "type": "RANGES", "allocation_info": alloc,
                                  "ranges": {"range": [{"begin": b, "end": e}
                                                       for b, e in ranges(free["ports"])]}})
            offer = {"id": {"value": oid}, "framework_id": {"value": self.framework_id},
                     "agent_id": {"value": agent.id}, "hostname": agent.hostname,
                     "allocation_info": alloc, "resources": resources}
            self.offers[oid] = (agent, role, offer)
            self._send({"type": "OFFERS", "offers": {"offers": [offer]}})
            return

    def _free(self, agent: AgentSpec) -> dict[str, Any]:
        free = {"cpus": agent.cpus, "mem": agent.mem, "disk": agent.disk,
                "ports": set(range(agent.ports[0], agent.ports[1] + 1))}
        for launched in self.executors.values():
            if launched.agent.id == agent.id and launched.resources:
                subtract(free, launched.resources, check=False)
        return free

    # ---------------------------------------------------------------- observations

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(self._changed, predicate, timeout, lambda: (
            f"timed out waiting for {what}; tasks: "
            f"{[(t.task_id, t.state) for t in self.tasks.values()]}; violations: "
            f"{self.violations}\n{self.executor_logs()}"))

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        self.wait_for(lambda: self.connected, timeout, "the framework to subscribe")

    def all_violations(self) -> list[str]:
        """The master's and every executor agent double's violations."""
        out = list(self.violations)
        for eid, launched in list(self.executors.items()):
            if launched.double is not None:
                out += [f"agent of {eid}: {v}" for v in launched.double.violations]
        return out

    def states(self, task_id: str) -> list[str]:
        """Every state the scheduler was sent for ``task_id`` (reconciliation answers too)."""
        with self._lock:
            return [e["update"]["status"]["state"] for e in self.events
                    if e["type"] == "UPDATE" and e["update"]["status"]["task_id"]["value"]
                    == task_id]

    def calls_of(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in list(self.calls) if c.get("type") == kind]
