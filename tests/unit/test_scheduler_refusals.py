"""A launch the Mesos master refuses (TASK_ERROR from the master) is reported on the app as
Marathon does (``lastTaskFailure``) and relaunched with a backoff that grows up to its cap."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scheduler.service import Workloads
from scheduler.store import open_store
from tests.mesos.fixtures import master_factory, scheduler_factory  # noqa: F401
from tests.mesos.master import MasterDouble
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef
from tests.unit.test_scheduler_logic import ACME, launch_all, pod

pytestmark = pytest.mark.timeout(120)
A = TenantDef("a", "token-a", cpus=2, mem=1024, instances=3)


def test_a_refused_launch_is_reported_and_backs_off_up_to_its_cap(
        master_factory: Callable[..., MasterDouble],  # noqa: F811
        scheduler_factory: Callable[..., SchedulerProcess]) -> None:  # noqa: F811
    # an authorizer that refuses every launch: the real master answers TASK_ERROR
    # (REASON_TASK_GROUP_UNAUTHORIZED) for every task of the group
    master = master_factory(authorize=lambda task, framework: False)
    sched = scheduler_factory(master.url, [A]).start()
    master.wait_subscribed()
    app: dict[str, Any] = {"id": "/web", "cmd": "sleep 60", "cpus": 0.25, "mem": 32,
                           "instances": 1, "labels": {"hypervm.image": "busybox:1.36"},
                           "backoffSeconds": 1, "backoffFactor": 2, "maxLaunchDelaySeconds": 3}
    assert sched.request("POST", "/v2/apps", "a", app)[0] == 201
    master.wait_for(lambda: len(master.refused) >= 5, 40, "five refused launches")
    refused = list(master.refused)
    assert {r["state"] for r in refused} == {"TASK_ERROR"}
    assert len({r["task_id"] for r in refused}) == len(refused)  # new task ids each time
    gaps = [b["at"] - a["at"] for a, b in zip(refused, refused[1:], strict=False)]
    # 1 s, then 2 s, then the cap of 3 s (plus offer and tick latency on a loaded machine);
    # without the cap the fourth gap would be 8 s
    assert 1 <= gaps[0] < 3 and 2 <= gaps[1] < 4 and 3 <= gaps[2] < 5, gaps
    assert 3 <= gaps[3] < 5, gaps
    code, body = sched.request("GET", "/v2/apps/web", "a")
    assert code == 200
    failure = body["app"]["lastTaskFailure"]
    assert failure["state"] == "TASK_ERROR" and failure["appId"] == "/web"
    assert failure["taskId"].startswith("a.app.web.0.")
    assert "is not authorized to launch" in failure["message"]
    assert set(failure) == {"appId", "host", "message", "state", "taskId", "timestamp",
                            "version", "slaveId"}
    assert "WARNING" in sched.log_text() and "the master refused task" in sched.log_text()
    assert master.all_violations() == []


def test_a_launch_with_offers_no_longer_valid_is_a_failure_and_relaunched(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    workloads = Workloads(open_store(f"sqlite://{tmp_path}/state.db"))
    workloads.create(ACME, "pod", pod("web"))
    launch_all(workloads)
    with caplog.at_level(logging.WARNING):
        for name in ("main", "side"):  # what the master answers (not PARTITION_AWARE)
            assert workloads.apply_status({
                "task_id": {"value": f"acme.pod.web.0.0.{name}"}, "state": "TASK_LOST",
                "source": "SOURCE_MASTER", "reason": "REASON_INVALID_OFFERS",
                "message": "Task launched with invalid offers: Offer o1 is no longer valid"})
    view = workloads.view(ACME, "pod", "web")
    assert (view["instances"][0]["state"], view["instances"][0]["attempt"]) == ("PENDING", 1)
    failure = view["lastTaskFailure"]
    assert failure["state"] == "TASK_LOST" and "no longer valid" in failure["message"]
    assert failure["host"] == "node7" and failure["slaveId"] == "agent-7"
    assert "the master refused task acme.pod.web.0.0.main" in caplog.text
    # a deleted workload forgets its failures with it
    workloads.delete(ACME, "pod", "web")
    assert workloads.store.db.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
