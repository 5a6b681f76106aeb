"""``hypervm-executor``: the Mesos custom executor that runs each task group in a HyperVM.

Status semantics follow Mesos' default executor (src/launcher/default_executor.cpp):
TASK_STARTING when a launch begins, TASK_RUNNING once the guest runs the process, then
TASK_FINISHED (exit 0), TASK_FAILED (exit status or signal in the message) or TASK_KILLED; never
TASK_STAGING; TASK_KILLING only when the framework has TASK_KILLING_STATE. A task of a group
that ends FAILED or KILLED kills its siblings. A kill sends SIGTERM, then SIGKILL after the grace
period (KILL event policy > task policy > 3 s).

Threading: every state change happens on one thread (:meth:`ExecutorCore.run`, the main
thread) that executes the closures posted to its queue by the pymesos IO thread, the runtime's
reader threads, timers and the workers that boot pods and signal processes.
"""

from __future__ import annotations

import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from executor.guest.protocol import EXEC_FAILURE_STATUS
from executor.mesos.driver import ExecutorSettings, describe
from executor.mesos.health import HealthChecker, HealthState, Probe
from executor.mesos.kill import DEFAULT_LIMITS, KillLimits
from executor.mesos.logs import RotatingFile
from executor.mesos.runtime import ExitStatus, PodPlan, Runtime
from executor.mesos.sandbox_files import make_dirs
from executor.mesos.taskinfo import (
    ExecutorSpec,
    cpu_limit,
    kill_grace_s,
    parse_executor,
    parse_task,
    parse_task_group,
    task_ids,
    vm_size,
)
from executor.mesos.tasks import Group, Task, exit_message, oom_message
from hypervm.config import STRICT_MESOS_POLICY, MesosPolicy
from hypervm.errors import GuestError, HyperVMError, InvalidSpec

log = logging.getLogger(__name__)

#: how long to wait for the acknowledgements of terminal updates before exiting anyway
#: (HYPERVM_EXECUTOR_ACK_TIMEOUT, seconds, overrides it)
ACK_TIMEOUT_S = 60.0
class ExecutorCore:
    def __init__(self, settings: ExecutorSettings, runtime: Runtime,
                 rotation: tuple[int, int] = (10 * 1024 * 1024, 5),
                 policy: MesosPolicy = STRICT_MESOS_POLICY,
                 kill_limits: KillLimits = DEFAULT_LIMITS) -> None:
        self.settings, self.runtime, self.rotation = settings, runtime, rotation
        self.policy = policy
        self.kill_limits = kill_limits
        self.driver: Any = None
        self.tasks: dict[str, Task] = {}
        self.groups: list[Group] = []
        self.executor: ExecutorSpec | None = None
        self.task_killing_state = False
        self.connected = False
        self.launched = False
        self.shutting_down_at: float | None = None
        self.all_done_at: float | None = None
        self.recovery_timer: threading.Timer | None = None
        self.exit_code = 0
        self.done = False
        self.shutdown_asked = False  # set by the driver's thread, before it posts on_shutdown
        self.ack_timeout_s = ACK_TIMEOUT_S
        self._queue: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._sigterm = False

    # ---------------------------------------------------------------- the event loop

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.put((fn, args))

    def on_sigterm(self, *_: object) -> None:
        """The SIGTERM handler. It runs on the main thread between two bytecodes, maybe while
        that thread holds the queue's lock, so it only sets a flag: posting would deadlock."""
        self._sigterm = True

    def run(self) -> None:
        while not self.done:
            try:
                fn, args = self._queue.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                try:
                    fn(*args)
                except Exception:
                    log.exception("handling %s failed", getattr(fn, "__name__", fn))
            if self._sigterm:
                self._sigterm = False
                self.on_shutdown()
            self._check_done()

    def _worker(self, name: str, fn: Callable[[], None]) -> None:
        def body() -> None:
            try:
                fn()
            except Exception:
                log.exception("%s failed", name)

        threading.Thread(target=body, name=name, daemon=True).start()

    def _check_done(self) -> None:
        now = time.monotonic()
        if self.driver is not None and self.driver.aborted and not self.done:
            # Without checkpointing the driver asks for a shutdown and then aborts: that
            # shutdown may still be queued, and it is not an error.
            if self.shutting_down_at is None and not self.shutdown_asked:
                log.error("the connection to the agent is gone for good: shutting down")
                self.exit_code = 1
                self.on_shutdown()
        if self.shutting_down_at is not None:
            if now - self.shutting_down_at > self.settings.shutdown_grace_s * 0.8:
                log.warning("shutdown grace period over: destroying what is left")
                self.emergency_stop()
                self.done = True
                return
        if not (self.launched or self.shutting_down_at is not None):
            return
        if any(not t.terminal for t in self.tasks.values()) or any(
                not g.gone for g in self.groups):
            self.all_done_at = None
            return
        if not self.connected:  # the ack fail-safe runs only while the agent can ack;
            self.all_done_at = None  # the recovery timeout bounds a disconnection
        self.all_done_at = self.all_done_at or now
        pending = self.driver.unacknowledged() if self.driver is not None else []
        if not pending:
            log.info("every task is terminal and acknowledged: exiting")
            self.done = True
        elif not self.connected and not self.settings.checkpoint:
            log.info("not connected and not checkpointing: %d updates are lost", len(pending))
            self.done = True
        elif self.shutting_down_at is None and now - self.all_done_at > self.ack_timeout_s:
            log.warning("%d updates still unacknowledged after %.0f s: exiting",
                        len(pending), self.ack_timeout_s)
            self.done = True

    # ---------------------------------------------------------------- driver events

    def on_registered(self, executor_info: dict[str, Any], framework_info: dict[str, Any]) -> None:
        self.connected = True
        caps = {c.get("type") for c in framework_info.get("capabilities", [])}
        self.task_killing_state = "TASK_KILLING_STATE" in caps
        try:
            self.executor = parse_executor(executor_info, self.settings.framework_id)
        except InvalidSpec as e:
            log.warning("ignoring the ExecutorInfo resources: %s", e)
        log.info("subscribed (TASK_KILLING_STATE: %s, checkpoint: %s)", self.task_killing_state,
                 self.settings.checkpoint)

    def on_reregistered(self) -> None:
        self.connected = True
        if self.recovery_timer is not None:
            self.recovery_timer.cancel()
            self.recovery_timer = None
        log.info("re-subscribed to the agent")

    def on_disconnected(self) -> None:
        self.connected = False
        if not self.settings.checkpoint or self.recovery_timer is not None:
            return
        log.warning("disconnected from the agent: waiting up to %.0f s for it to recover",
                    self.settings.recovery_timeout_s)
        timer = threading.Timer(self.settings.recovery_timeout_s, self.post,
                                args=(self.on_recovery_timeout,))
        timer.daemon = True
        timer.start()
        self.recovery_timer = timer

    def on_recovery_timeout(self) -> None:
        if self.connected:
            return
        log.error("the agent did not come back within %.0f s: shutting down",
                  self.settings.recovery_timeout_s)
        self.on_shutdown()

    def on_launch(self, infos: list[dict[str, Any]], is_group: bool) -> None:
        self.launched = True
        name = f"{self.settings.executor_id}-{len(self.groups)}"
        group = Group(name=name)
        self.groups.append(group)
        try:
            if is_group:
                specs = parse_task_group({"tasks": infos}, policy=self.policy,
                                         executor_id=self.settings.executor_id)
            else:
                specs = (parse_task(infos[0], "task", policy=self.policy),)
            for spec in specs:
                if spec.task_id in self.tasks:
                    raise InvalidSpec(f"{spec.where}.task_id",
                                      f"task {spec.task_id!r} was already launched")
            vcpus, mib = vm_size(specs, self.executor)
            if self.shutting_down_at is not None:
                raise InvalidSpec("launch", "the executor is shutting down")
        except InvalidSpec as e:
            return self._reject(group, infos, is_group, e)
        for spec in specs:
            task = Task(spec.task_id, group, spec)
            group.tasks.append(task)
            self.tasks[spec.task_id] = task
        try:
            sandboxes = self._open_sandboxes(group, is_group)
        except (HyperVMError, OSError) as e:
            self._send_starting(group)
            group.booting = False
            return self._launch_failed(group, e)
        plan = PodPlan(name=_pod_name(name), tasks=specs, vcpus=vcpus, memory_mib=mib,
                       cpu_limit=min(float(vcpus), cpu_limit(specs, self.executor)),
                       sandbox=self.settings.sandbox, task_sandboxes=sandboxes,
                       host_path_prefixes=self.policy.host_path_prefixes,
                       labels=(("mesos.framework_id", self.settings.framework_id),
                               ("mesos.executor_id", self.settings.executor_id),
                               ("mesos.task_ids", ",".join(s.task_id for s in specs))))
        try:
            group.pod = self.runtime.create_pod(plan)
        except HyperVMError as e:
            self._send_starting(group)
            group.booting = False
            return self._launch_failed(group, e)
        # boot first: each update is an HTTP round trip to the agent (a warm boot takes a few
        # times that); every later update is sent from this thread, so STARTING stays first
        self._worker(f"boot-{name}", lambda: self._boot(group))
        self._send_starting(group)

    def _open_sandboxes(self, group: Group, is_group: bool) -> dict[str, Path]:
        """Each task's sandbox dir and output files. The sandbox is shared with guests: below
        the agent's directory nothing is resolved by name (executor.mesos.sandbox_files)."""
        root, sandboxes = self.settings.sandbox, {}
        for task in group.tasks:
            relative = PurePosixPath("tasks", task.task_id) if is_group else PurePosixPath()
            sandboxes[task.task_id] = sandbox = make_dirs(root, relative)
            task.outputs = tuple(RotatingFile(sandbox / n, *self.rotation, root=root)
                                 for n in ("stdout", "stderr"))
        return sandboxes

    def _send_starting(self, group: Group) -> None:
        for task in group.tasks:
            self._send(task, "TASK_STARTING")

    def _reject(self, group: Group, infos: list[dict[str, Any]], is_group: bool,
                error: InvalidSpec) -> None:
        log.error("invalid launch: %s", error)
        group.booting, group.gone = False, True
        reason = "REASON_TASK_GROUP_INVALID" if is_group else "REASON_TASK_INVALID"
        for task_id in task_ids({"tasks": infos}):
            if task_id in self.tasks:
                continue
            task = Task(task_id, group)
            group.tasks.append(task)
            self.tasks[task_id] = task
            self._send(task, "TASK_FAILED", message=f"Invalid task: {error}", reason=reason)

    def _boot(self, group: Group) -> None:
        assert group.pod is not None
        try:
            group.pod.boot()
        except Exception as e:  # noqa: BLE001 - any boot failure fails the tasks, with its cause
            self.post(self.on_boot_failed, group, e)
            return
        self.post(self.on_booted, group)
        sent = []  # every START sent before any reply is awaited: a group's go back to back
        for task in group.tasks:
            if task.terminal:
                continue
            if task.kill_requested:
                self.post(self.on_not_started, task)
                continue
            try:
                sent.append((task, group.pod.send_start(
                    task.task_id, task.outputs[0].write, task.outputs[1].write,
                    functools.partial(self.post, self.on_exit, task))))
            except Exception as e:  # noqa: BLE001
                self.post(self.on_start_failed, task, e)
        for task, wait in sent:
            try:
                wait()
            except Exception as e:  # noqa: BLE001
                self.post(self.on_start_failed, task, e)
            else:
                self.post(self.on_started, task)

    def on_not_started(self, task: Task) -> None:
        if not task.terminal:
            self._finish(task, "TASK_KILLED", "Task killed while it was launching",
                         reason="REASON_TASK_KILLED_DURING_LAUNCH")

    def on_booted(self, group: Group) -> None:
        group.booting = False
        self._maybe_destroy(group)

    def on_boot_failed(self, group: Group, error: Exception) -> None:
        group.booting = False
        self._launch_failed(group, error)

    def _launch_failed(self, group: Group, error: Exception) -> None:
        log.error("the pod %s did not start: %s", group.name, error)
        for task in group.tasks:
            if task.terminal:
                continue
            if task.kill_requested:
                self._finish(task, "TASK_KILLED", "Task killed while it was launching",
                             reason="REASON_TASK_KILLED_DURING_LAUNCH")
            else:
                self._finish(task, "TASK_FAILED", f"Failed to launch the task's HyperVM: {error}",
                             reason="REASON_CONTAINER_LAUNCH_FAILED", propagate=False)
        self._maybe_destroy(group)

    def on_started(self, task: Task) -> None:
        if task.terminal or task.started:
            return
        self._mark_running(task)
        if task.kill_requested:  # killed while its start was in flight
            if self.task_killing_state:
                self._send(task, "TASK_KILLING")
            self._signal(task, signal.SIGTERM)
            self._arm_sigkill(task, task.grace_s)

    def _mark_running(self, task: Task) -> None:
        task.started, task.started_at = True, time.monotonic()
        self._send(task, "TASK_RUNNING")
        spec = task.spec.health_check if task.spec else None
        if spec is None or task.group.pod is None or task.kill_requested:
            return
        task.health_state = HealthState(spec)
        task.health = HealthChecker(
            spec, Probe(task.group.pod, task.task_id, spec),
            functools.partial(self.post, self.on_health, task), task.task_id)
        task.health.start()

    def on_start_failed(self, task: Task, error: Exception) -> None:
        if task.terminal:
            return
        if isinstance(error, GuestError) and error.code in EXEC_FAILURE_STATUS:
            code = EXEC_FAILURE_STATUS[error.code]
            self._finish(task, "TASK_FAILED", f"Command exited with status {code} ({error})")
        else:
            self._finish(task, "TASK_FAILED", f"Failed to start the task: {error}",
                         reason="REASON_CONTAINER_LAUNCH_FAILED")

    def on_exit(self, task: Task, status: ExitStatus) -> None:
        if task.terminal:
            return
        if not task.started and not task.kill_requested:
            self._mark_running(task)  # the EXIT overtook the start reply: it did run
        message = exit_message(status)
        if task.kill_requested:
            self._finish(task, "TASK_KILLED", message,
                         healthy=False if task.unhealthy else None)
        elif status.oom_killed:
            self._finish(task, "TASK_FAILED", oom_message(task, status),
                         reason="REASON_CONTAINER_LIMITATION_MEMORY")
        elif status.code == 0:
            self._finish(task, "TASK_FINISHED", message)
        elif status.lost and status.reason:  # the host cut the guest off (its channel broke)
            self._finish(task, "TASK_FAILED", message, reason="REASON_CONTAINER_LIMITATION")
        else:
            self._finish(task, "TASK_FAILED", message)

    def on_health(self, task: Task, ok: bool, why: str) -> None:
        if task.terminal or task.kill_requested or task.health_state is None:
            return
        verdict = task.health_state.on_result(ok, time.monotonic() - task.started_at)
        if verdict.report:
            log.info("task %s is %s: %s", task.task_id,
                     "healthy" if verdict.healthy else "unhealthy", why)
            self._send(task, "TASK_RUNNING", reason="REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
                       healthy=verdict.healthy, message=why)
        if verdict.kill:
            task.unhealthy = True
            log.warning("killing %s after %d failed health checks", task.task_id,
                        task.health_state.failures)
            self._kill(task, task.grace_s)

    def on_kill(self, task_id: str, kill_policy: Any) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            log.warning("KILL for unknown task %s ignored", task_id)
            return
        try:
            grace = kill_grace_s(kill_policy, "kill.kill_policy")
        except InvalidSpec as e:
            log.warning("ignoring the KILL's kill policy: %s", e)
            grace = None
        self._kill(task, task.grace_s if grace is None else grace)

    def on_shutdown(self) -> None:
        if self.shutting_down_at is not None:
            return
        self.shutting_down_at = time.monotonic()
        budget = max(0.1, self.settings.shutdown_grace_s * 0.5)
        alive = [t for t in self.tasks.values() if not t.terminal]
        log.info("shutting down: killing %d tasks", len(alive))
        for task in list(self.tasks.values()):
            self._kill(task, min(task.grace_s, budget))

    def on_message(self, data: str) -> None:
        log.info("framework message ignored (%d bytes)", len(data))

    # ---------------------------------------------------------------- kill, finish, teardown

    def _kill(self, task: Task, grace: float) -> None:
        if task.terminal:
            return
        if task.kill_requested:
            return
        task.kill_requested = True
        if task.health is not None:
            task.health.stop()
        if not task.started:
            if task.group.booting or task.group.pod is None:
                self._finish(task, "TASK_KILLED", "Task killed while it was launching",
                             reason="REASON_TASK_KILLED_DURING_LAUNCH")
            return  # booted but the start reply is pending: on_started signals it
        if self.task_killing_state:
            self._send(task, "TASK_KILLING")
        self._signal(task, signal.SIGTERM)
        self._arm_sigkill(task, grace)

    def _arm_sigkill(self, task: Task, grace: float) -> None:
        capped = self.kill_limits.grace(grace)
        if capped < grace:
            log.info("grace period of %s capped at %.0f s", task.task_id, capped)
        self._arm(task, capped, self._sigkill)

    def _arm(self, task: Task, delay: float, then: Callable[[Task], None]) -> None:
        timer = threading.Timer(delay, self.post, args=(then, task))
        timer.daemon = True
        timer.start()
        task.sigkill_timer = timer

    def _sigkill(self, task: Task) -> None:
        if not task.terminal:
            log.info("grace period of %s over: SIGKILL", task.task_id)
            self._signal(task, signal.SIGKILL)
            self._arm(task, self.kill_limits.escalation_s, self._escalate)

    def _escalate(self, task: Task) -> None:
        """The guest did not report the SIGKILLed process gone: destroy its VM, then report
        every task still in it TASK_KILLED."""
        group = task.group
        if task.terminal or group.destroying:
            return
        log.warning("%s did not exit %.0f s after SIGKILL: destroying its VM %s", task.task_id,
                    self.kill_limits.escalation_s, group.name)
        group.destroying = True
        pod = group.pod

        def destroy() -> None:
            try:
                if pod is not None:
                    pod.destroy()
            finally:
                self.post(self._escalated, group)

        self._worker(f"destroy-{group.name}", destroy)

    def _escalated(self, group: Group) -> None:
        self._gone(group)
        for task in group.tasks:
            if not task.terminal:
                self._finish(task, "TASK_KILLED",
                             f"The guest did not end the task {self.kill_limits.escalation_s:g} "
                             "s after SIGKILL: its HyperVM was destroyed",
                             healthy=False if task.unhealthy else None, propagate=False)

    def _signal(self, task: Task, signum: int) -> None:
        pod = task.group.pod
        if pod is None:
            return

        def deliver() -> None:
            try:
                pod.signal(task.task_id, signum)
            except HyperVMError as e:  # it may have exited meanwhile
                log.debug("signal %d to %s: %s", signum, task.task_id, e)

        self._worker(f"signal-{task.task_id}", deliver)

    def _finish(self, task: Task, state: str, message: str, *, reason: str | None = None,
                healthy: bool | None = None, propagate: bool = True) -> None:
        if task.sigkill_timer is not None:
            task.sigkill_timer.cancel()
        if task.health is not None:
            task.health.stop()
        self._send(task, state, message=message, reason=reason, healthy=healthy)
        for output in task.outputs:
            output.close()
        if propagate and state in ("TASK_FAILED", "TASK_KILLED"):
            for sibling in task.group.tasks:
                self._kill(sibling, sibling.grace_s)
        self._maybe_destroy(task.group)

    def _maybe_destroy(self, group: Group) -> None:
        if group.booting or group.destroying or any(not t.terminal for t in group.tasks):
            return
        group.destroying = True
        pod = group.pod
        if pod is None:
            group.gone = True
            return

        def destroy() -> None:
            try:
                pod.destroy()
            finally:
                self.post(self._gone, group)

        self._worker(f"destroy-{group.name}", destroy)

    def _gone(self, group: Group) -> None:
        group.gone = True
        log.info("pod %s destroyed", group.name)

    def emergency_stop(self) -> None:
        """Destroy every pod now, from any thread (the fail-safes)."""
        for group in list(self.groups):
            if group.pod is not None:
                try:
                    group.pod.destroy()
                except Exception:
                    log.exception("destroying %s failed", group.name)

    def _send(self, task: Task, state: str, *, message: str | None = None,
              reason: str | None = None, healthy: bool | None = None) -> None:
        assert state != "TASK_STAGING", "an executor never sends TASK_STAGING"
        assert state != "TASK_KILLING" or self.task_killing_state
        status: dict[str, Any] = {"task_id": {"value": task.task_id}, "state": state,
                                  "executor_id": {"value": self.settings.executor_id}}
        if message:
            status["message"] = message
        if reason:
            status["reason"] = reason
        if healthy is not None:
            status["healthy"] = healthy
        if state != "TASK_KILLING":
            task.state = state
        log.info("update %s", describe(status))
        self.driver.sendStatusUpdate(status)


def _pod_name(name: str) -> str:
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)
    return clean[-64:] or "pod"
