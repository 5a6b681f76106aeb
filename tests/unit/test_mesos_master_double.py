"""The master double refuses task groups as the real Mesos 1.11 master does (TASK_ERROR updates,
its messages), and takes a task that carries its group's executor, as the real one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.mesos.agent import executor_command
from tests.mesos.fixtures import master_factory, task  # noqa: F401
from tests.mesos.master import MasterDouble
from tests.realmesos.scheduler import TestScheduler, resources

pytestmark = pytest.mark.timeout(60)


def test_task_groups_are_validated_as_the_real_master(
        master_factory: Callable[..., MasterDouble]) -> None:  # noqa: F811
    master = master_factory()  # the double always checks disk, as the real master does
    sched = TestScheduler(master.url.removeprefix("http://"))
    try:
        def launch(tid: str, executor: dict[str, Any], with_executor: bool = False) -> None:
            offer = sched.take_offer()
            assert any(r["name"] == "disk" for r in offer["resources"])  # agents offer disk

            def res(*amounts: Any, **kw: Any) -> list[dict[str, Any]]:
                return [dict(r, allocation_info=offer["allocation_info"])
                        for r in resources(*amounts, **kw)]
            info = dict(executor, resources=res(0.1, 32, disk=executor.pop("disk", None)))
            group_task = task(tid, "echo hi", agent_id=offer["agent_id"], resources=res(0.2, 32))
            if with_executor:
                group_task["executor"] = info
            sched.accept(offer, [{"type": "LAUNCH_GROUP", "launch_group": {
                "executor": info, "task_group": {"tasks": [group_task]}}}])

        base = {"executor_id": {"value": "ex-1"}, "type": "CUSTOM",
                "command": {"value": executor_command(), "shell": True}}
        launch("no-fw", dict(base, disk=32))
        launch("no-disk", dict(base, framework_id={"value": sched.framework_id}))
        for tid, message in (("no-fw", "'ExecutorInfo.framework_id' must be set"),
                             ("no-disk", "Executor 'ex-1' uses no disk")):
            status = sched.wait_terminal(tid, 10)
            assert (status["state"], status["message"], status["reason"], status["source"]) == (
                "TASK_ERROR", message, "REASON_TASK_GROUP_INVALID", "SOURCE_MASTER")
            assert "uuid" not in status
        # the real master copies the executor into every task: a task may carry it
        launch("ok", dict(base, framework_id={"value": sched.framework_id}, disk=32),
               with_executor=True)
        assert sched.wait_terminal("ok", 30)["state"] == "TASK_FINISHED"
        # the double records the refusals it made (a scheduler of ours must never cause one)
        refused = [v for v in master.all_violations() if v.startswith("LAUNCH_GROUP refused")]
        assert len(refused) == 2, refused
        assert [v for v in master.all_violations() if v not in refused] == []
    finally:
        sched.teardown()
