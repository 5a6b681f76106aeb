"""The pymesos Executor interface, each callback posted to the executor's one state thread
(:class:`executor.mesos.executor.ExecutorCore`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: executor.py imports this module
    from executor.mesos.executor import ExecutorCore

log = logging.getLogger("executor.mesos.executor")


class MesosCallbacks:
    """The pymesos Executor interface: every callback is posted to the core's thread."""

    def __init__(self, core: ExecutorCore) -> None:
        self.core = core

    def registered(self, driver: Any, executor_info: Any, framework_info: Any,
                   agent_info: Any) -> None:
        self.core.post(self.core.on_registered, executor_info, framework_info)

    def reregistered(self, driver: Any, agent_info: Any) -> None:
        self.core.post(self.core.on_reregistered)

    def disconnected(self, driver: Any) -> None:
        self.core.post(self.core.on_disconnected)

    def launchTask(self, driver: Any, task: Any) -> None:  # noqa: N802
        self.core.post(self.core.on_launch, [task], False)

    def launchTaskGroup(self, driver: Any, task_infos: Any) -> None:  # noqa: N802
        self.core.post(self.core.on_launch, list(task_infos), True)

    def killTask(self, driver: Any, task_id: Any) -> None:  # noqa: N802
        self.core.post(self.core.on_kill, task_id["value"], None)

    def killTaskWithPolicy(self, driver: Any, task_id: Any, policy: Any) -> None:  # noqa: N802
        self.core.post(self.core.on_kill, task_id["value"], policy)

    def acknowledged(self, driver: Any, task_id: str, uuid: str) -> None:
        self.core.post(lambda: None)  # wake the loop: it may be time to exit

    def frameworkMessage(self, driver: Any, message: Any) -> None:  # noqa: N802
        self.core.post(self.core.on_message, message)

    def shutdown(self, driver: Any) -> None:
        self.core.shutdown_asked = True
        self.core.post(self.core.on_shutdown)

    def error(self, driver: Any, message: str) -> None:
        log.error("the agent reported an error: %s", message)
