"""``hypervm-scheduler`` against the real Mesos 1.11 master (issue 14, scenario 7), with real
HyperVMs: two tenants (two roles, MULTI_ROLE), an app and a pod each, a quota refusal, scale up
and down, a scheduler restart with reconciliation, and the end of every workload. The real
master validates every call (a task group whose executor has no `disk`, for one, ends
``TASK_ERROR "Executor '…' uses no disk"``: hypervm-scheduler sends it)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TEST_TAG
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef
from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import real_mesos, scheduler_process, wait_no_domains  # noqa: F401

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(900)]
BOOT = 240.0
A = TenantDef("a", "token-a", cpus=1.0, mem=1024, instances=3)
B = TenantDef("b", "token-b", cpus=1.0, mem=1024, instances=3)
PREFIX = f"{TEST_TAG}-rmsched"  # executor ids, and so VM names (hypervm-<id>-N-…)


@pytest.fixture
def sched(real_mesos: RealMesos) -> Iterator[SchedulerProcess]:  # noqa: F811
    with scheduler_process(real_mesos, [A, B], PREFIX) as proc:
        yield proc


def app(image: str, instances: int = 1) -> dict[str, Any]:
    return {"id": "/web", "cmd": "exec sleep 600", "cpus": 0.1, "mem": 32,
            "instances": instances, "container": {"type": "MESOS", "docker": {"image": image}}}


def pod(image: str) -> dict[str, Any]:
    return {"id": "p", "containers": [
        {"name": c, "image": image, "cmd": "exec sleep 600", "resources": {"cpus": 0.1,
                                                                            "mem": 32}}
        for c in ("one", "two")]}


def refused(sched: SchedulerProcess) -> list[str]:
    """What the master refused (TASK_ERROR never reaches its /tasks), as the scheduler saw it."""
    out = []
    for tenant in ("a", "b"):
        code, view = sched.request("GET", "/v1/pods/p", tenant)
        for inst in view.get("instances", []) if code == 200 else []:
            out += [t["message"] for t in inst["tasks"] if t["state"] == "TASK_ERROR"]
    return out


def running_tasks(mesos: RealMesos, role: str, sched: SchedulerProcess) -> dict[str, Any]:
    """The role's running tasks; AssertionError at once if the master refused one."""
    errors = refused(sched)
    assert not errors, f"the master refused task groups: {errors}"
    return {tid: t for tid, t in mesos.tasks().items()
            if t["state"] == "TASK_RUNNING" and t.get("role") == role}


def no_deployment(sched: SchedulerProcess, tenant: str) -> bool:
    """The tenant's deployments are over (an app is locked while one runs, as in Marathon)."""
    code, deployments = sched.request("GET", "/v2/deployments", tenant)
    return code == 200 and deployments == []


def test_two_tenants_through_the_real_master(real_mesos: RealMesos,  # noqa: F811
                                             sched: SchedulerProcess, image_ref: str) -> None:
    for tenant in ("a", "b"):
        assert sched.request("POST", "/v2/apps", tenant, app(image_ref))[0] == 201
        assert sched.request("POST", "/v1/pods", tenant, pod(image_ref))[0] == 201
    for role in ("tenant-a", "tenant-b"):  # 1 app task + 2 pod tasks each, in its own role
        real_mesos.wait(lambda role=role: len(running_tasks(real_mesos, role, sched)) == 3,
                        BOOT, f"3 tasks of {role} running")
    (framework,) = real_mesos.state()["frameworks"]
    assert sorted(framework["roles"]) == ["tenant-a", "tenant-b"]
    assert "MULTI_ROLE" in framework["capabilities"]

    code, body = sched.request("POST", "/v1/pods", "a", {"id": "big", "containers": [
        {"name": "c", "image": image_ref, "cmd": "true", "resources": {"cpus": 4, "mem": 32}}]})
    assert (code, body["quota"]) == (403, "cpus")

    sched.wait_for(lambda: no_deployment(sched, "b"), 60, "tenant-b's deployments to end")
    assert sched.request("PUT", "/v2/apps/web", "b", {"instances": 2})[0] == 200
    real_mesos.wait(lambda: len(running_tasks(real_mesos, "tenant-b", sched)) == 4, BOOT,
                    "tenant-b's second app instance")
    sched.wait_for(lambda: no_deployment(sched, "b"), 60, "the scale-up deployment to end")
    assert sched.request("PUT", "/v2/apps/web", "b", {"instances": 1})[0] == 200
    real_mesos.wait(lambda: len(running_tasks(real_mesos, "tenant-b", sched)) == 3, 120,
                    "tenant-b scaled down")
    real_mesos.wait(lambda: [t["state"] for t in real_mesos.tasks().values()
                             if t["state"] not in ("TASK_RUNNING", "TASK_STARTING")]
                    == ["TASK_KILLED"], 60, "the scaled-down instance KILLED")

    launched = set(real_mesos.tasks())
    assert sched.kill(signal.SIGKILL) == -signal.SIGKILL
    sched.start()  # same state: re-subscribes with its framework id and reconciles
    sched.wait_for(lambda: "reconcil" in sched.log_text().lower(), 30, "a reconciliation")
    (again,) = real_mesos.state()["frameworks"]
    assert again["id"] == framework["id"]
    code, view = sched.request("GET", "/v1/pods/p", "a")
    assert code == 200 and view["instances"][0]["state"] == "RUNNING", view
    assert set(real_mesos.tasks()) == launched  # nothing launched twice

    for tenant in ("a", "b"):
        sched.wait_for(lambda tenant=tenant: no_deployment(sched, tenant), 120,
                       f"tenant-{tenant}'s deployments to end after the restart")
        assert sched.request("DELETE", "/v2/apps/web", tenant)[0] in (200, 202, 204)
        assert sched.request("DELETE", "/v1/pods/p", tenant)[0] in (200, 202, 204)
    real_mesos.wait(lambda: not any(t["state"] == "TASK_RUNNING"
                                    for t in real_mesos.tasks().values()), 120,
                    "every task to end")
    assert not wait_no_domains(PREFIX, 60)
