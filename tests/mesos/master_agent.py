"""The agent double of one executor the master double started (tests.mesos.master)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.mesos.agent import AgentDouble

if TYPE_CHECKING:
    from tests.mesos.master import AgentSpec, MasterDouble


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
