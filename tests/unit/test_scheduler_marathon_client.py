"""hypervm-scheduler driven by the PyPI ``marathon`` client (0.13) through the master double and
hypervm-executor on the fake runtime: every call the client makes is parsed by the client's own
models (``MarathonApp.from_json`` …) without error, and does what Marathon would."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from marathon.exceptions import ConflictError, NotFoundError
from marathon.models import MarathonApp, MarathonDeployment
from marathon.models.container import MarathonContainer, MarathonDockerContainer
from marathon.models.queue import MarathonQueueItem
from marathon.models.task import MarathonTask

from tests.marathon_client import Collector, MarathonClient, settled, wait
from tests.marathon_client import web_app as _web_app
from tests.mesos.fixtures import master_factory, scheduler_factory  # noqa: F401
from tests.mesos.master import MasterDouble
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef

pytestmark = pytest.mark.timeout(300)
M = TenantDef("m", "token-m", cpus=6, mem=4096, instances=10)
B = TenantDef("b", "token-b")
APP = "/shop/web"


@pytest.fixture
def cluster(master_factory: Callable[..., MasterDouble],  # noqa: F811
            scheduler_factory: Callable[..., SchedulerProcess]  # noqa: F811
            ) -> Iterator[tuple[MasterDouble, SchedulerProcess]]:
    master = master_factory()
    sched = scheduler_factory(master.url, [M, B]).start()
    master.wait_subscribed()
    yield master, sched


def web_app() -> MarathonApp:
    return _web_app("busybox:1.36")


def live_tasks(master: MasterDouble, prefix: str) -> list[Any]:
    return [t for t in master.tasks.values() if t.task_id.startswith(prefix)
            and t.state not in ("TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST")]


def watch_capacity(master: MasterDouble, c: MarathonClient, n: int) -> tuple[int, int]:
    """While a deployment runs: (fewest tasks running, most tasks alive) seen by the master."""
    fewest, most = 10**6, 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        alive = live_tasks(master, "m.app.shop_web.")
        fewest = min(fewest, sum(t.state == "TASK_RUNNING" for t in alive))
        most = max(most, len(alive))
        if not c.list_deployments():
            return fewest, most
        time.sleep(0.05)
    raise AssertionError("the rolling upgrade did not finish")


@dataclass
class Run:
    """One scheduler under test, the clients of tenant m and of tenant b, their event streams."""
    master: MasterDouble
    sched: SchedulerProcess
    c: MarathonClient
    other: MarathonClient
    events: Collector
    others: Collector
    auth: tuple[str, str] = ("m", "token-m")


def test_the_marathon_client_drives_the_scheduler(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    c = MarathonClient(sched.url, username="m", password="token-m")
    other = MarathonClient(sched.url, username="b", password="token-b")
    assert MarathonClient(sched.url, auth_token="token-b").list_apps() == []  # DC/OS token
    assert c.ping() == b"pong"
    info = c.get_info()
    assert (info.leader, info.framework_id) == (f"127.0.0.1:{sched.port}", master.framework_id)
    assert info.marathon_config.mesos_role == "tenant-m"
    assert c.get_leader() == {"leader": f"127.0.0.1:{sched.port}"}
    run = Run(master, sched, c, other, Collector(c), Collector(other))
    for phase in (create_list_get, scale_and_rolling_upgrade, restart_and_kill_tasks,
                  versions_and_rollback, patch_put_groups_pods, queue_and_failure,
                  metrics_json_and_prometheus, delete_and_events):
        phase(run)


def create_list_get(run: Run) -> None:
    """create: a deployment that ends when both instances run and are healthy"""
    c, other = run.c, run.other
    created = c.create_app(APP, web_app())
    assert isinstance(created, MarathonApp) and created.id == APP and created.instances == 2
    assert [d.id for d in created.deployments]
    (dep,) = c.list_deployments()
    assert isinstance(dep, MarathonDeployment) and dep.affected_apps == [APP]
    settled(c)
    app = c.get_app(APP)
    assert (app.tasks_running, app.tasks_healthy, len(app.tasks)) == (2, 2, 2)
    assert app.health_checks[0].command == {"value": "true"}
    assert all(t.started_at and t.health_check_results[0].alive for t in app.tasks)
    (listed,) = c.list_apps(embed_tasks=True, embed_counts=True, embed_last_task_failure=True)
    assert listed.id == APP and len(listed.tasks) == 2 and listed.tasks_running == 2
    tasks = c.list_tasks(APP)
    assert all(isinstance(t, MarathonTask) and t.state == "TASK_RUNNING" and
               t.host == "localhost" and t.app_id == APP for t in tasks)
    assert {t.id for t in c.list_tasks()} == {t.id for t in tasks}
    assert other.list_apps() == [] and other.list_tasks() == []
    with pytest.raises(NotFoundError):
        other.get_app(APP)


def scale_and_rolling_upgrade(run: Run) -> None:
    """scale; then a full update (the definition as read, changed): a rolling upgrade that keeps
    at least ceil(3 x 0.5) = 2 instances running and never runs more than 3 x (1 + 0) at once"""
    c, master = run.c, run.master
    assert c.scale_app(APP, instances=3)["deploymentId"]
    settled(c)
    assert c.get_app(APP).tasks_running == 3
    app = c.get_app(APP)
    before = {t.id for t in app.tasks}
    app.cmd, app.env = "echo v2; exec sleep 300", {"VERSION": "2"}
    answer = c.update_app(APP, app)
    assert answer["deploymentId"] and answer["version"]
    with pytest.raises(ConflictError):  # locked while it deploys
        c.scale_app(APP, instances=4)
    fewest, most = watch_capacity(master, c, 3)
    assert fewest >= math.ceil(3 * 0.5) and most <= 3, (fewest, most)
    app = c.get_app(APP)
    assert app.cmd == "echo v2; exec sleep 300" and app.env == {"VERSION": "2"}
    assert app.tasks_healthy == 3 and not before & {t.id for t in app.tasks}
    assert all(t.version == answer["version"] for t in app.tasks)


def restart_and_kill_tasks(run: Run) -> None:
    """restart: every instance replaced, same definition; a task killed without scale is
    replaced, with scale the app shrinks"""
    c = run.c
    app = c.get_app(APP)
    before = {t.id for t in app.tasks}
    assert c.restart_app(APP)["deploymentId"]
    settled(c)
    app = c.get_app(APP)
    assert app.tasks_healthy == 3 and not before & {t.id for t in app.tasks}
    victim = app.tasks[0].id
    killed = c.kill_task(APP, victim)
    assert isinstance(killed, MarathonTask) and killed.id == victim
    wait("the replacement", lambda: (a := c.get_app(APP)).tasks_running == 3
         and victim not in {t.id for t in a.tasks})
    assert c.get_app(APP).instances == 3
    victim = c.list_tasks(APP)[0].id
    assert c.kill_task(APP, victim, scale=True)["deploymentId"]
    settled(c)
    app = c.get_app(APP)
    assert (app.instances, len(app.tasks)) == (2, 2) and victim not in {t.id for t in app.tasks}


def versions_and_rollback(run: Run) -> None:
    """versions: newest first, each one readable; a deployment that cannot finish (the new
    health check never passes), cancelled: the rollback brings the last definition back"""
    c, other = run.c, run.other
    versions = c.list_versions(APP)
    assert versions == sorted(versions, reverse=True) and len(versions) == 5
    first = c.get_version(APP, versions[-1])
    assert isinstance(first, MarathonApp) and (first.cmd, first.instances) == (
        "exec sleep 300", 2)
    assert c.rollback_app(APP, versions[0])["deploymentId"]  # the same: nothing to replace
    settled(c)
    app = c.get_app(APP)
    app.health_checks[0].command = {"value": "false"}
    stuck = c.update_app(APP, app)["deploymentId"]
    time.sleep(3)
    assert [d.id for d in c.list_deployments()] == [stuck]
    # another tenant sees none of it and can touch none of it
    assert other.list_deployments() == [] and other.list_queue() == []
    for call in (lambda: other.delete_deployment(stuck), lambda: other.list_versions(APP),
                 lambda: other.kill_task(APP, c.list_tasks(APP)[0].id),
                 lambda: other.restart_app(APP), lambda: other.delete_app(APP)):
        with pytest.raises(NotFoundError):
            call()
    rollback = c.delete_deployment(stuck)
    assert rollback["deploymentId"] != stuck
    settled(c, 90)
    app = c.get_app(APP)
    assert app.health_checks[0].command == {"value": "true"}
    assert (app.tasks_running, app.tasks_healthy) == (2, 2)


def patch_put_groups_pods(run: Run) -> None:
    """PATCH merges into the definition (a config change: a rolling restart); PUT of an app
    that does not exist creates it, as in Marathon; groups are read-only, the apps by path;
    Marathon pods and batch updates are refused, naming the alternative"""
    c, sched = run.c, run.sched
    auth = run.auth
    reply = requests.patch(f"{sched.url}/v2/apps{APP}", json={"labels": {"team": "shop"}},
                           auth=auth, timeout=10)
    assert reply.status_code == 200 and reply.json()["deploymentId"], reply.text
    settled(c)
    app = c.get_app(APP)
    assert app.labels == {"team": "shop"} and app.cmd == "echo v2; exec sleep 300"
    reply = requests.put(f"{sched.url}/v2/apps/made/by-put", auth=auth, timeout=10, json={
        "cmd": "exec sleep 300", "cpus": 0.1, "mem": 16, "instances": 0,
        "container": {"docker": {"image": "busybox:1.36"}}})
    assert reply.status_code == 201 and reply.json()["id"] == "/made/by-put", reply.text
    settled(c)
    assert {g.id for g in c.list_groups()} == {"/made", "/shop"}
    assert [a.id for a in c.get_group("/shop").apps] == [APP]
    reply = requests.post(f"{sched.url}/v2/pods", auth=auth, timeout=10, json={"id": "/p"})
    assert reply.status_code == 501 and "/v1/pods" in reply.json()["message"]
    reply = requests.put(f"{sched.url}/v2/apps", auth=auth, timeout=10, json=[{"id": "/x"}])
    assert reply.status_code == 501 and "PUT /v2/apps/{id}" in reply.json()["message"]
    assert c.delete_app("/made/by-put")["deploymentId"]


def queue_and_failure(run: Run) -> None:
    """queue: an app no agent can hold (5 cpus, the agent has 4) waits there;
    lastTaskFailure: an app whose command fails"""
    c = run.c
    big = MarathonApp(cmd="exec sleep 300", cpus=5, mem=16, instances=1,
                      container=MarathonContainer(type="MESOS", docker=MarathonDockerContainer(
                          image="busybox:1.36")))
    c.create_app("/big", big)
    (item,) = wait("a queue item", lambda: c.list_queue())
    assert isinstance(item, MarathonQueueItem) and item.app.id == "/big" and item.count == 1
    c.reset_delay("/big")  # DELETE /v2/queue/big/delay
    assert c.delete_app("/big", force=True)["deploymentId"]
    crash = MarathonApp(cmd="sleep 0.2; exit 3", cpus=0.1, mem=16, instances=1,
                        container=MarathonContainer(type="MESOS", docker=MarathonDockerContainer(
                            image="busybox:1.36")))
    c.create_app("/crash", crash)
    failure = wait("a task failure", lambda: c.get_app("/crash").last_task_failure)
    assert failure.state == "TASK_FAILED" and "status 3" in failure.message
    assert failure.app_id == "/crash" and failure.task_id.startswith("m.app.crash.")
    assert c.delete_app("/crash", force=True)["deploymentId"]


def metrics_json_and_prometheus(run: Run) -> None:
    """Dropwizard JSON and the same figures for Prometheus, this tenant's only"""
    c, sched = run.c, run.sched
    metrics = c.get_metrics()
    assert set(metrics) == {"version", "gauges", "counters", "histograms", "meters", "timers"}
    assert metrics["counters"]["hypervm.scheduler.launches.tenant.m"]["count"] >= 8
    assert metrics["counters"]["hypervm.scheduler.task.failures.tenant.m"]["count"] >= 1
    assert metrics["gauges"]["hypervm.scheduler.tenant.usage.resource.instances.tenant.m"][
        "value"] >= 2
    assert any(t["count"] > 0 for t in metrics["timers"].values())
    assert not any(".tenant.b" in name for kind in ("counters", "gauges")
                   for name in metrics[kind])
    text = requests.get(f"{sched.url}/metrics/prometheus", auth=("m", "token-m"),
                        timeout=10).text
    assert 'hypervm_scheduler_launches_total{tenant="m"}' in text
    assert 'tenant="b"' not in text
    assert "hypervm_scheduler_api_request_seconds_bucket" in text


def delete_and_events(run: Run) -> None:
    """delete; the event stream has every kind the issue names, parsed by the client, and
    tenant b saw none of it"""
    c, master = run.c, run.master
    first, second = c.list_tasks(APP)
    assert c.kill_given_tasks([first.id]) is True  # POST /v2/tasks/delete
    killed = c.kill_tasks(APP)  # DELETE /v2/apps/{id}/tasks: every task, replaced
    assert all(isinstance(t, MarathonTask) for t in killed) and second.id in {
        t.id for t in killed}
    assert c.delete_app(APP)["deploymentId"]
    settled(c)
    with pytest.raises(NotFoundError):
        c.get_app(APP)
    wait("every task ended", lambda: not live_tasks(master, "m.app."))
    wanted = {"api_post_event", "status_update_event", "health_status_changed_event",
              "deployment_info", "deployment_success", "deployment_failed"}
    wait("every kind of event", lambda: wanted <= run.events.types(), 20)
    assert run.events.error is None and run.others.error is None
    assert run.others.types() <= {"event_stream_attached"}
    assert master.all_violations() == []


def test_a_deployment_survives_a_scheduler_crash_and_still_rolls_back(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    c = MarathonClient(sched.url, username="m", password="token-m")
    c.create_app(APP, web_app())
    settled(c)
    app = c.get_app(APP)
    first = {t.id for t in app.tasks}
    app.health_checks[0].command = {"value": "false"}  # the new version never gets healthy
    stuck = c.update_app(APP, app)["deploymentId"]
    wait("a new-version task", lambda: len(master.launched) > 2)
    assert sched.kill(signal.SIGKILL) == -signal.SIGKILL
    sched.start()
    master.wait_subscribed()
    assert [d.id for d in c.list_deployments()] == [stuck]  # read back from the database
    rollback = c.delete_deployment(stuck)["deploymentId"]
    settled(c, 90)
    app = c.get_app(APP)
    assert app.health_checks[0].command == {"value": "true"}
    assert (app.tasks_running, app.tasks_healthy) == (2, 2)
    # minimumHealthCapacity 0.5: one of the first instances kept running throughout
    assert len(first & {t.id for t in app.tasks}) == 1
    assert rollback != stuck and len(master.launched) == len(set(master.launched))
    assert master.all_violations() == []
