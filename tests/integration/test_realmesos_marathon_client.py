"""The PyPI ``marathon`` client (0.13) drives ``hypervm-scheduler`` registered with the real
Mesos 1.11 master, whose real agent runs ``hypervm-executor`` and so real HyperVMs (issue 16,
"must show"): create, list, get, scale, a full update (a rolling restart), restart, tasks, kill
a task without and with ``scale``, versions, deployments and a rollback, the queue, the event
stream, info, leader, ping, metrics, delete. Every answer is parsed by the client's own models;
what really happened is read from the real master's ``/tasks`` and ``/state``, and from libvirt
(no VM of the test is left after the delete)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from marathon.exceptions import ConflictError, NotFoundError
from marathon.models import MarathonApp, MarathonDeployment
from marathon.models.container import MarathonContainer, MarathonDockerContainer
from marathon.models.queue import MarathonQueueItem
from marathon.models.task import MarathonTask

from tests.conftest import TEST_TAG
from tests.marathon_client import Collector, MarathonClient, settled, wait, web_app
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef
from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import real_mesos, scheduler_process, wait_no_domains  # noqa: F401

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(900)]
#: a deployment that boots VMs (TCG, a loaded 2-core box)
BOOT = 240.0
M = TenantDef("m", "token-m", cpus=8, mem=2048, instances=8, operator=True)
PREFIX = f"{TEST_TAG}-rmmara"  # executor ids, and so VM names
APP = "/shop/web"
TASKS = "m.app.shop_web."  # the Mesos task ids of the app's tasks
GONE = ("TASK_KILLED", "TASK_FINISHED", "TASK_FAILED", "TASK_LOST", "TASK_ERROR")


@pytest.fixture
def sched(real_mesos: RealMesos) -> Iterator[SchedulerProcess]:  # noqa: F811
    with scheduler_process(real_mesos, [M], PREFIX) as proc:
        yield proc


@dataclass
class Run:
    mesos: RealMesos
    sched: SchedulerProcess
    c: MarathonClient
    events: Collector
    image: str

    def master_tasks(self, prefix: str = TASKS) -> dict[str, str]:
        """Task id → state, as the real master reports them."""
        return {tid: t["state"] for tid, t in self.mesos.tasks().items()
                if tid.startswith(prefix)}

    def running(self, prefix: str = TASKS) -> set[str]:
        return {tid for tid, state in self.master_tasks(prefix).items()
                if state == "TASK_RUNNING"}

    def settled(self) -> None:
        settled(self.c, BOOT)


def test_the_marathon_client_through_the_real_master(
        real_mesos: RealMesos, sched: SchedulerProcess, image_ref: str) -> None:  # noqa: F811
    started = time.monotonic()
    c = MarathonClient(sched.url, username="m", password="token-m")
    assert c.ping() == b"pong"
    info = c.get_info()
    (framework,) = real_mesos.state()["frameworks"]
    assert (info.leader, info.framework_id) == (f"127.0.0.1:{sched.port}", framework["id"])
    assert info.marathon_config.mesos_role == "tenant-m" == framework["roles"][0]
    assert c.get_leader() == {"leader": f"127.0.0.1:{sched.port}"}
    with pytest.raises(NotFoundError, match="no leader to abdicate"):  # no --zk: no election
        c.delete_leader()
    run = Run(real_mesos, sched, c, Collector(c), image_ref)
    for phase in (create_list_get, scale_and_rolling_update, restart_and_kill_tasks,
                  versions_and_rollback, queue, metrics, delete_and_events):
        phase(run)
    print(f"the marathon client walk through the real master took "
          f"{time.monotonic() - started:.0f} s")


def create_list_get(run: Run) -> None:
    c = run.c
    created = c.create_app(APP, web_app(run.image, instances=1, mem=64, max_over=1.0))
    assert isinstance(created, MarathonApp) and created.id == APP and created.instances == 1
    (dep,) = c.list_deployments()
    assert isinstance(dep, MarathonDeployment) and dep.affected_apps == [APP]
    run.settled()
    app = c.get_app(APP)
    assert (app.tasks_running, app.tasks_healthy, len(app.tasks)) == (1, 1, 1)
    assert app.tasks[0].health_check_results[0].alive and app.tasks[0].started_at
    assert run.running() == {app.tasks[0].id}  # the real master runs it
    (agent,) = run.mesos.state()["slaves"]
    (listed,) = c.list_apps(embed_tasks=True, embed_counts=True, embed_last_task_failure=True)
    assert listed.id == APP and [t.id for t in listed.tasks] == [app.tasks[0].id]
    tasks = c.list_tasks(APP)
    assert all(isinstance(t, MarathonTask) and t.state == "TASK_RUNNING" and t.app_id == APP
               and t.slave_id == agent["id"] and t.host == agent["hostname"] for t in tasks)
    assert [t.id for t in c.list_tasks()] == [t.id for t in tasks]


def watch_capacity(run: Run) -> tuple[int, int]:
    """While the deployment runs: (fewest tasks running, most tasks alive) at the real master."""
    fewest, most = 10**6, 0
    deadline = time.monotonic() + BOOT
    while time.monotonic() < deadline:
        states = run.master_tasks().values()
        fewest = min(fewest, sum(s == "TASK_RUNNING" for s in states))
        most = max(most, sum(s not in GONE for s in states))
        if not run.c.list_deployments():
            return fewest, most
        time.sleep(0.2)
    raise AssertionError("the rolling update did not finish")


def scale_and_rolling_update(run: Run) -> None:
    """scale 1 → 2; then the definition as read, changed, PUT back: a rolling restart that
    keeps ceil(2 x 0.5) = 1 instance running and never has more than 2 x (1 + 1) alive"""
    c = run.c
    assert c.scale_app(APP, instances=2)["deploymentId"]
    run.settled()
    app = c.get_app(APP)
    before = {t.id for t in app.tasks}
    assert app.tasks_running == 2 and run.running() == before
    app.cmd, app.env = "echo v2; exec sleep 300", {"VERSION": "2"}
    answer = c.update_app(APP, app)
    assert answer["deploymentId"] and answer["version"]
    with pytest.raises(ConflictError):  # the app is locked while it deploys
        c.scale_app(APP, instances=3)
    fewest, most = watch_capacity(run)
    assert fewest >= math.ceil(2 * 0.5) and most <= 4, (fewest, most)
    app = c.get_app(APP)
    assert app.cmd == "echo v2; exec sleep 300" and app.env == {"VERSION": "2"}
    after = {t.id for t in app.tasks}
    assert app.tasks_healthy == 2 and not before & after
    assert all(t.version == answer["version"] for t in app.tasks)
    states = run.master_tasks()
    assert run.running() == after and all(states[t] == "TASK_KILLED" for t in before), states


def restart_and_kill_tasks(run: Run) -> None:
    """restart: every instance replaced; a task killed without scale is replaced, with scale
    the app shrinks"""
    c = run.c
    before = {t.id for t in c.get_app(APP).tasks}
    assert c.restart_app(APP)["deploymentId"]
    run.settled()
    app = c.get_app(APP)
    assert app.tasks_healthy == 2 and not before & {t.id for t in app.tasks}
    assert run.running() == {t.id for t in app.tasks}
    victim = app.tasks[0].id
    killed = c.kill_task(APP, victim)
    assert isinstance(killed, MarathonTask) and killed.id == victim
    wait("the replacement", lambda: (a := c.get_app(APP)).tasks_healthy == 2
         and victim not in {t.id for t in a.tasks}, BOOT, every=0.5)
    assert c.get_app(APP).instances == 2
    wait("the victim KILLED at the master", lambda: run.master_tasks()[victim] == "TASK_KILLED",
         60)
    victim = c.list_tasks(APP)[0].id
    assert c.kill_task(APP, victim, scale=True)["deploymentId"]
    run.settled()
    app = c.get_app(APP)
    assert (app.instances, len(app.tasks)) == (1, 1) and victim not in {t.id for t in app.tasks}
    wait("one task left at the master", lambda: run.running() == {app.tasks[0].id}, 60)


def versions_and_rollback(run: Run) -> None:
    """versions, newest first; a deployment whose new health check never passes (its task
    runs at the master and is reported unhealthy), cancelled: the rollback puts the definition
    back, the new version's tasks end, and the task from before the update still runs"""
    c = run.c
    versions = c.list_versions(APP)
    assert versions == sorted(versions, reverse=True) and len(versions) == 5
    first = c.get_version(APP, versions[-1])
    assert isinstance(first, MarathonApp) and (first.cmd, first.instances) == (
        "exec sleep 300", 1)
    app = c.get_app(APP)
    (old_task,) = (t.id for t in app.tasks)
    seen_before = set(run.master_tasks())
    app.health_checks[0].command = {"value": "false"}
    stuck = c.update_app(APP, app)["deploymentId"]

    def unhealthy() -> set[str]:  # the new version's tasks, failing their health check
        # (the client sets no attribute for a false value: "alive": false leaves none)
        return {e.task_id for e in run.events.events if e.event_type ==
                "health_status_changed_event" and not getattr(e, "alive", False)} - seen_before
    wait("the new version's task reported unhealthy", unhealthy, BOOT, every=0.5)
    # the deployment cannot finish: the old task runs on (minimumHealthCapacity 0.5 of 1)
    assert [d.id for d in c.list_deployments()] == [stuck] and old_task in run.running()
    rollback = c.delete_deployment(stuck)
    assert rollback["deploymentId"] != stuck
    run.settled()
    app = c.get_app(APP)
    assert app.health_checks[0].command == {"value": "true"} and app.version == c.list_versions(
        APP)[0]
    assert c.get_version(APP, app.version).health_checks[0].command == {"value": "true"}
    assert [t.id for t in app.tasks] == [old_task] and app.tasks_healthy == 1
    new = set(run.master_tasks()) - seen_before
    wait("the cancelled version's tasks ended at the master",
         lambda: all(run.master_tasks()[t] in GONE for t in new), 60)
    assert run.running() == {old_task}


def queue(run: Run) -> None:
    """an app the agent cannot hold (5 cpus; it has 2) waits in the queue"""
    c = run.c
    big = MarathonApp(cmd="exec sleep 300", cpus=5, mem=16, instances=1,
                      container=MarathonContainer(type="MESOS", docker=MarathonDockerContainer(
                          image=run.image)))
    c.create_app("/big", big)
    (item,) = wait("a queue item", lambda: c.list_queue())
    assert isinstance(item, MarathonQueueItem) and item.app.id == "/big" and item.count == 1
    c.reset_delay("/big")
    assert c.delete_app("/big", force=True)["deploymentId"]
    assert not run.master_tasks("m.app.big.")  # never launched


def metrics(run: Run) -> None:
    found = run.c.get_metrics()
    assert set(found) == {"version", "gauges", "counters", "histograms", "meters", "timers"}
    # 1 created, 1 scaled up, 2 updated, 2 restarted, 1 replaced, 1 of the stuck version
    assert found["counters"]["hypervm.scheduler.launches.tenant.m"]["count"] >= 8
    assert found["gauges"]["hypervm.scheduler.tenant.usage.resource.instances.tenant.m"][
        "value"] == 1
    assert any(t["count"] > 0 for t in found["timers"].values())


def delete_and_events(run: Run) -> None:
    """delete: no task of the app at the master, no VM in libvirt; the event stream saw every
    kind, each parsed by the client"""
    c = run.c
    assert c.delete_app(APP)["deploymentId"]
    run.settled()
    with pytest.raises(NotFoundError):
        c.get_app(APP)
    assert c.list_apps() == [] and c.list_tasks() == []
    wait("every task ended at the master",
         lambda: all(s in GONE for s in run.master_tasks("m.").values()), 120)
    left = wait_no_domains(PREFIX, 60)  # virsh list: no VM of ours
    assert not left, left
    wanted = {"api_post_event", "status_update_event", "health_status_changed_event",
              "deployment_info", "deployment_success", "deployment_failed"}
    wait("every kind of event", lambda: wanted <= run.events.types(), 30)
    assert run.events.error is None
    kinds: dict[str, Any] = {}
    for evt in run.events.events:
        kinds.setdefault(evt.event_type, evt)
    assert kinds["status_update_event"].app_id == APP
