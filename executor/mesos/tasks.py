"""The executor's bookkeeping of its task groups and tasks, and the messages of their ends
(pure values; the state machine that changes them is executor.mesos.executor.ExecutorCore)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field

from executor.guest.protocol import ExitStatus
from executor.mesos.health import HealthChecker, HealthState
from executor.mesos.logs import RotatingFile
from executor.mesos.runtime import Pod
from executor.mesos.taskinfo import DEFAULT_KILL_GRACE_S, TaskSpec

#: the states after which Mesos expects no further update for a task
TERMINAL = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR",
                      "TASK_LOST", "TASK_DROPPED", "TASK_GONE"})


@dataclass(eq=False)
class Group:
    name: str
    tasks: list[Task] = field(default_factory=list)
    pod: Pod | None = None
    booting: bool = True
    destroying: bool = False
    gone: bool = False


@dataclass(eq=False)
class Task:
    task_id: str
    group: Group
    spec: TaskSpec | None = None
    state: str | None = None
    started: bool = False
    started_at: float = 0.0
    kill_requested: bool = False
    unhealthy: bool = False
    health: HealthChecker | None = None
    health_state: HealthState | None = None
    sigkill_timer: threading.Timer | None = None
    outputs: tuple[RotatingFile, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def grace_s(self) -> float:
        if self.spec is not None and self.spec.kill_grace_s is not None:
            return self.spec.kill_grace_s
        return DEFAULT_KILL_GRACE_S


def exit_message(status: ExitStatus) -> str:
    if status.lost:
        if status.reason:
            return f"The HyperVM was destroyed before the command exited: {status.reason}"
        return "The HyperVM stopped before the command exited"
    if status.signal is not None:
        try:
            name = signal.Signals(status.signal).name
            text = signal.strsignal(status.signal) or name
        except ValueError:
            return f"Command terminated with signal {status.signal}"
        return f"Command terminated with signal {name} ({text})"
    return f"Command exited with status {status.status}"


def oom_message(task: Task, status: ExitStatus) -> str:
    mem = f" of {task.spec.mem_mib:g} MB" if task.spec is not None and task.spec.mem_mib else ""
    return (f"Memory limit exceeded: task {task.task_id} ran out of its memory{mem} and was "
            f"killed by the OOM killer ({exit_message(status)})")
