"""hypervm-scheduler as a process against the master double, executors on the fake runtime:
REST → scheduler → master → agent → hypervm-executor, every Mesos call validated."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.mesos.fake_runtime import journal
from tests.mesos.fixtures import master_factory, scheduler_factory  # noqa: F401
from tests.mesos.master import MasterDouble
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef

pytestmark = pytest.mark.timeout(120)
A, B = TenantDef("a", "token-a", cpus=2, mem=1024, instances=3), TenantDef("b", "token-b")


def container(name: str, cmd: str, cpus: float = 0.25, mem: float = 32, **extra: Any
              ) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.36", "cmd": cmd,
            "resources": {"cpus": cpus, "mem": mem}, **extra}


@pytest.fixture
def cluster(master_factory: Callable[..., MasterDouble],  # noqa: F811
            scheduler_factory: Callable[..., SchedulerProcess]  # noqa: F811
            ) -> tuple[MasterDouble, SchedulerProcess]:
    master = master_factory()
    sched = scheduler_factory(master.url, [A, B]).start()
    master.wait_subscribed()
    return master, sched


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[MasterDouble, SchedulerProcess]]:
    """One cluster for the tests that must not change it (refused input)."""
    master = MasterDouble(tmp_path_factory.mktemp("master"))
    sched = SchedulerProcess(tmp_path_factory.mktemp("scheduler"), master.url, [A, B])
    try:
        sched.start()
        master.wait_subscribed()
        yield master, sched
    finally:
        sched.stop()
        master.stop()


def pod_state(sched: SchedulerProcess, tenant: str, pod: str) -> dict[str, Any]:
    code, view = sched.request("GET", f"/v1/pods/{pod}", tenant)
    assert code == 200, view
    return view["instances"][0]


def wait_pod(sched: SchedulerProcess, pod: str, states: set[str], timeout: float = 30
             ) -> dict[str, Any]:
    return sched.wait_for(lambda: (i := pod_state(sched, "a", pod))["state"] in states and i,
                          timeout, f"pod {pod} in {states}")


def test_pod_of_two_runs_then_finishes_with_states_and_exit_codes(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    code, view = sched.request("POST", "/v1/pods", "a", {"id": "batch", "restart": "never",
                                                         "containers": [
        container("one", "sleep 1; echo one"), container("two", "sleep 1.5; exit 0")]})
    assert code == 201 and view["instances"][0]["state"] in ("PENDING", "STAGING")
    running = wait_pod(sched, "batch", {"RUNNING"})
    assert [t["state"] for t in running["tasks"]] == ["TASK_RUNNING", "TASK_RUNNING"]
    assert running["host"] == "localhost" and running["agentId"] == "agent-1"
    done = wait_pod(sched, "batch", {"FINISHED", "FAILED"})
    assert done["state"] == "FINISHED"
    assert [(t["container"], t["state"], t["exitCode"]) for t in done["tasks"]] == [
        ("one", "TASK_FINISHED", 0), ("two", "TASK_FINISHED", 0)]
    # what reached the master: one LAUNCH_GROUP on a tenant-a offer, hypervm-executor
    accepts = master.calls_of("ACCEPT")
    assert len(accepts) == 1
    op = accepts[0]["accept"]["operations"][0]
    assert op["type"] == "LAUNCH_GROUP"
    assert "hypervm-executor" in op["launch_group"]["executor"]["command"]["value"]
    roles = {r["allocation_info"]["role"] for t in op["launch_group"]["task_group"]["tasks"]
             for r in t["resources"]}
    assert roles == {"tenant-a"}
    assert master.states("a.pod.batch.0.0.one") == ["TASK_STARTING", "TASK_RUNNING",
                                                    "TASK_FINISHED"]
    master.wait_for(lambda: not master.unacked, 10, "every update acknowledged")
    assert len(master.calls_of("ACKNOWLEDGE")) == 6
    assert master.all_violations() == []


def test_a_failing_container_shows_its_exit_code_and_the_pod_restarts(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    sched.request("POST", "/v1/pods", "a", {"id": "crash", "containers": [
        container("main", "sleep 0.3; exit 7"), container("side", "exec sleep 30")]})
    first = sched.wait_for(lambda: (i := pod_state(sched, "a", "crash"))["attempt"] >= 1 and i,
                           30, "a relaunch")
    assert first["failures"] == 1
    tasks = master.tasks
    assert tasks["a.pod.crash.0.0.main"].status["message"] == "Command exited with status 7"
    assert tasks["a.pod.crash.0.0.side"].state == "TASK_KILLED"  # the group went down with it
    # the next attempt has new task ids (a task id is never launched twice)
    again = sched.wait_for(lambda: (i := pod_state(sched, "a", "crash"))["attempt"] >= 2 and i,
                           30, "a second relaunch")
    assert again["failures"] == 2
    assert len(master.launched) == len(set(master.launched))
    assert master.all_violations() == []


def test_tenant_b_cannot_see_read_or_kill_tenant_a_pods(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    assert sched.request("POST", "/v1/pods", "a", {"id": "secret", "containers": [
        container("c", "exec sleep 60")]})[0] == 201
    wait_pod(sched, "secret", {"RUNNING"})
    assert sched.request("GET", "/v1/pods", "b") == (200, {"pods": []})
    for method in ("GET", "DELETE"):
        code, body = sched.request(method, "/v1/pods/secret", "b")
        assert code == 404, body
        assert "secret not found" in body["message"]
    assert sched.request("GET", "/v1/pods/secret", token="wrong")[0] == 401
    assert sched.request("GET", "/v1/pods")[0] == 401
    assert pod_state(sched, "a", "secret")["state"] == "RUNNING"
    assert master.calls_of("KILL") == []
    # A can kill its own pod
    assert sched.request("DELETE", "/v1/pods/secret", "a")[0] == 202
    master.wait_for(lambda: master.tasks["a.pod.secret.0.0.c"].state == "TASK_KILLED", 20,
                    "the kill")
    assert sched.request("GET", "/v1/pods/secret", "a")[0] == 404
    assert master.all_violations() == []


@pytest.mark.parametrize(("pod", "quota"), [
    ({"containers": [container("c", "true", cpus=2.5)]}, "cpus"),
    ({"containers": [container("c", "true", mem=2000)]}, "mem"),
])
def test_over_quota_is_refused_naming_the_quota(
        cluster: tuple[MasterDouble, SchedulerProcess], pod: dict[str, Any], quota: str) -> None:
    _, sched = cluster
    code, body = sched.request("POST", "/v1/pods", "a", {"id": "big", **pod})
    assert code == 403, body
    assert body["quota"] == quota
    assert f"quota {quota} of tenant a exceeded" in body["message"]
    assert sched.request("GET", "/v1/pods", "a") == (200, {"pods": []})


def test_instance_quota_counts_every_workload(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    _, sched = cluster
    app = {"id": "/web", "cmd": "exec sleep 60", "cpus": 0.1, "mem": 16, "instances": 2,
           "container": {"type": "MESOS", "docker": {"image": "busybox:1.36"}}}
    assert sched.request("POST", "/v2/apps", "a", app)[0] == 201
    assert sched.request("POST", "/v1/pods", "a", {"id": "p", "containers": [
        container("c", "exec sleep 60", cpus=0.1)]})[0] == 201
    code, body = sched.request("POST", "/v1/pods", "a", {"id": "q", "containers": [
        container("c", "exec sleep 60", cpus=0.1)]})
    assert (code, body["quota"]) == (403, "instances")
    assert "1 requested + 3 in use > 3" in body["message"]
    code, body = sched.request("PUT", "/v2/apps/web", "a", {"instances": 3})
    assert (code, body["quota"]) == (403, "instances")


def test_sigkill_and_restart_reconciles_and_never_launches_twice(
        cluster: tuple[MasterDouble, SchedulerProcess],
        scheduler_factory: Callable[..., SchedulerProcess]) -> None:  # noqa: F811
    master, sched = cluster
    sched.request("POST", "/v1/pods", "a", {"id": "long", "containers": [
        container("web", "exec sleep 60"), container("side", "sleep 2")]})
    wait_pod(sched, "long", {"RUNNING"})
    framework_id = master.framework_id
    assert sched.kill(signal.SIGKILL) == -signal.SIGKILL
    master.wait_for(lambda: not master.connected, 10, "the stream to drop")
    # while it is away, one task finishes: the update waits for the new scheduler
    master.wait_for(lambda: master.tasks["a.pod.long.0.0.side"].state == "TASK_FINISHED", 20,
                    "side to finish")
    reconciles_before = len(master.calls_of("RECONCILE"))
    sched.start()
    master.wait_subscribed()
    assert master.subscribes[-1]["framework_id"]["value"] == framework_id
    master.wait_for(lambda: len(master.calls_of("RECONCILE")) > reconciles_before, 10,
                    "a reconciliation")
    explicit = [c for c in master.calls_of("RECONCILE")[reconciles_before:]
                if c["reconcile"].get("tasks")]
    assert {t["task_id"]["value"] for t in explicit[0]["reconcile"]["tasks"]} == {
        "a.pod.long.0.0.web", "a.pod.long.0.0.side"}
    inst = sched.wait_for(
        lambda: (i := pod_state(sched, "a", "long"))["tasks"][1]["state"] == "TASK_FINISHED"
        and i, 20, "the update sent while away")
    assert inst["tasks"][0]["state"] == "TASK_RUNNING"
    assert (inst["state"], inst["attempt"], inst["tasks"][1]["exitCode"]) == ("RUNNING", 0, 0)
    time.sleep(1.5)  # offers keep coming: nothing may be launched again
    assert master.launched == ["a.pod.long.0.0.web", "a.pod.long.0.0.side"]
    assert len(master.calls_of("ACCEPT")) == 1
    assert master.all_violations() == []


def test_marathon_app_runs_its_instances_and_scales(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    app = {"id": "/shop/web", "cmd": "echo $GREETING; exec sleep 60", "cpus": 0.2, "mem": 32,
           "instances": 2, "container": {"type": "DOCKER", "docker": {"image": "busybox:1.36"}},
           "env": {"GREETING": "hi"},
           "healthChecks": [{"protocol": "COMMAND", "command": {"value": "true"},
                             "gracePeriodSeconds": 5, "intervalSeconds": 1,
                             "delaySeconds": 0, "timeoutSeconds": 2,
                             "maxConsecutiveFailures": 3}],
           "portDefinitions": [{"port": 0, "name": "http", "protocol": "tcp"}]}
    code, body = sched.request("POST", "/v2/apps", "a", app)
    assert code == 201, body

    def app_view() -> dict[str, Any]:
        code, body = sched.request("GET", "/v2/apps/shop/web", "a")
        assert code == 200, body
        return body["app"]

    def running(n: int) -> Callable[[], Any]:
        return lambda: (v := app_view())["tasksRunning"] == n and len(
            [t for t in v["tasks"] if t["state"] == "TASK_RUNNING"]) == n and v

    view = sched.wait_for(running(2), 30, "2 instances running")
    assert sorted(t["id"] for t in view["tasks"]) == ["a.app.shop_web.0.0.web",
                                                      "a.app.shop_web.1.0.web"]
    ports = [t["ports"][0] for t in view["tasks"]]
    assert len(set(ports)) == 2 and all(31000 <= p <= 31099 for p in ports)
    assert all(t["host"] == "localhost" for t in view["tasks"])
    for launched in master.executors.values():
        assert launched.double is not None
        (boot,) = [e for e in journal(launched.double.sandbox) if e["event"] == "boot"]
        (box,) = boot["containers"].values()
        assert "GREETING=hi" in box["env"]
    sched.wait_for(lambda: app_view()["tasksHealthy"] == 2, 30, "both healthy")
    assert sched.request("GET", "/v2/apps", "a")[1]["apps"][0]["id"] == "/shop/web"
    # the app is locked while a deployment (here: the start) runs, as in Marathon
    sched.wait_for(lambda: app_view()["deployments"] == [], 30, "the start deployment")

    assert sched.request("PUT", "/v2/apps/shop/web", "a", {"instances": 3})[0] == 200
    sched.wait_for(running(3), 30, "3 instances running")
    sched.wait_for(lambda: app_view()["deployments"] == [], 30, "the scale deployment")
    assert sched.request("PUT", "/v2/apps/shop/web", "a", {"instances": 1})[0] == 200
    view = sched.wait_for(lambda: (v := app_view()) and len(v["tasks"]) == 1
                          and v["tasksRunning"] == 1 and v, 30, "1 instance left")
    assert view["tasks"][0]["id"] == "a.app.shop_web.0.0.web" and view["instances"] == 1
    killed = [t for t in master.tasks.values() if t.state == "TASK_KILLED"]
    assert len(killed) == 2
    assert len(master.launched) == 3
    assert master.all_violations() == []


BAD_PODS = [
    (b"{not json", 400, "(body)", "malformed JSON"),
    ({"id": "p", "containers": [container("c", "true")], "replicas": 2}, 422, "replicas",
     "unknown field"),
    ({"id": "p", "containers": [container("c", "true", cpus=-1)]}, 422,
     "containers[0].resources.cpus", "less than or equal to the minimum of 0"),
    ({"id": "p", "containers": [container("c", "true", mem=-64)]}, 422,
     "containers[0].resources.mem", "minimum"),
    ({"id": "p", "containers": [{**container("c", "true"), "image": "Not An/Image!"}]}, 422,
     "containers[0].image", "bad image name"),
    ({"id": "p", "containers": [{**container("c", "true"), "gpu": 1}]}, 422,
     "containers[0].gpu", "unknown field"),
    ({"id": "Bad_Id", "containers": [container("c", "true")]}, 422, "id", "does not match"),
]
BAD_APPS = [
    (b'{"id": "/x", ', 400, "(body)", "malformed JSON"),
    ({"id": "/x", "cmd": "true", "wibble": 1}, 422, "wibble", "unknown field"),
    ({"id": "/x", "cmd": "true", "cpus": -0.5,
      "container": {"docker": {"image": "busybox"}}}, 422, "cpus", "minimum"),
    ({"id": "/x", "cmd": "true", "constraints": [["hostname", "UNIQUE"]],
      "container": {"docker": {"image": "busybox"}}}, 422, "constraints", "not supported"),
    ({"id": "/x", "cmd": "true", "container": {"docker": {"image": "UPPER/case"}}}, 422,
     "container.docker.image", "bad image name"),
    ({"id": "/x", "cmd": "true"}, 422, "container.docker.image", "is required"),
]


@pytest.mark.parametrize(("body", "status", "field", "text"), BAD_PODS)
def test_bad_pods_are_refused_naming_the_field(
        shared: tuple[MasterDouble, SchedulerProcess], body: Any, status: int, field: str,
        text: str) -> None:
    master, sched = shared
    raw = body if isinstance(body, bytes) else None
    code, reply = sched.request("POST", "/v1/pods", "a", None if raw else body, raw=raw)
    assert code == status, reply
    assert reply["field"] == field and text in reply["message"], reply
    assert sched.request("GET", "/v1/pods", "a") == (200, {"pods": []})
    assert master.calls_of("ACCEPT") == []


@pytest.mark.parametrize(("body", "status", "field", "text"), BAD_APPS)
def test_bad_apps_are_refused_naming_the_field(
        shared: tuple[MasterDouble, SchedulerProcess], body: Any, status: int, field: str,
        text: str) -> None:
    _, sched = shared
    raw = body if isinstance(body, bytes) else None
    code, reply = sched.request("POST", "/v2/apps", "a", None if raw else body, raw=raw)
    assert code == status, reply
    assert reply["field"] == field and text in reply["message"], reply
    assert sched.request("GET", "/v2/apps", "a") == (200, {"apps": []})


def test_offers_are_declined_with_filters_suppressed_when_idle_revived_on_work(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    master.wait_for(lambda: master.calls_of("SUPPRESS"), 10, "a SUPPRESS while idle")
    declines = master.calls_of("DECLINE")
    assert declines and all(d["decline"]["filters"]["refuse_seconds"] == 1 for d in declines)
    revives = len(master.calls_of("REVIVE"))
    sched.request("POST", "/v1/pods", "b", {"id": "p", "containers": [
        container("c", "exec sleep 30")]})
    master.wait_for(lambda: len(master.calls_of("REVIVE")) > revives, 10, "a REVIVE")
    master.wait_for(lambda: master.launched, 10, "the launch")
    accept = master.calls_of("ACCEPT")[0]["accept"]
    roles = {r["allocation_info"]["role"]
             for r in accept["operations"][0]["launch_group"]["executor"]["resources"]}
    assert roles == {"tenant-b"}  # placed on an offer of B's role
    assert master.all_violations() == []


def test_openapi_document_is_served(shared: tuple[MasterDouble, SchedulerProcess]) -> None:
    _, sched = shared
    code, doc = sched.request("GET", "/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/pods", "/v1/pods/{id}", "/v2/apps", "/v2/apps/{id}"} <= set(doc["paths"])


def test_framework_info_roles_principal_secret_and_failover_timeout(
        master_factory: Callable[..., MasterDouble],  # noqa: F811
        scheduler_factory: Callable[..., SchedulerProcess],  # noqa: F811
        tmp_path: Any) -> None:
    master = master_factory(credentials={"hypervm-fw": "s3cret"}, heartbeat_s=0.3)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    sched = scheduler_factory(master.url, [A, B], extra=[
        "--principal", "hypervm-fw", "--secret-file", str(secret),
        "--failover-timeout", "3600"]).start()
    master.wait_subscribed()
    info = master.subscribes[0]["subscribe"]["framework_info"]
    assert info["roles"] == ["tenant-a", "tenant-b"] and "role" not in info
    assert {"type": "MULTI_ROLE"} in info["capabilities"]
    assert (info["principal"], info["failover_timeout"], info["checkpoint"]) == (
        "hypervm-fw", 3600, True)
    sched.request("POST", "/v1/pods", "a", {"id": "p", "containers": [
        container("c", "true")]})
    master.wait_for(lambda: master.launched, 10, "a launch with credentials")
    master.wait_for(lambda: [e for e in master.events if e["type"] == "HEARTBEAT"], 5,
                    "a heartbeat (the scheduler must live with them)")
    # SIGTERM: the framework fails over (no TEARDOWN: its tasks keep running)
    assert sched.kill(signal.SIGTERM) == 0
    assert master.calls_of("TEARDOWN") == [] and not master.removed
    assert master.all_violations() == []


def test_wrong_secret_is_refused_by_the_master(
        master_factory: Callable[..., MasterDouble],  # noqa: F811
        scheduler_factory: Callable[..., SchedulerProcess],  # noqa: F811
        tmp_path: Any) -> None:
    master = master_factory(credentials={"hypervm-fw": "s3cret"})
    secret = tmp_path / "secret"
    secret.write_text("wrong")
    sched = scheduler_factory(master.url, [A], extra=[
        "--principal", "hypervm-fw", "--secret-file", str(secret)]).start()
    master.wait_for(lambda: master.violations, 10, "the refused SUBSCRIBE")
    assert "bad credentials for principal 'hypervm-fw'" in master.violations[0]
    assert not master.connected
    assert sched.process is not None and sched.process.wait(timeout=15) == 1
    assert "exiting: the connection to the master failed" in sched.log_text()


def test_an_executor_that_dies_fails_its_tasks_and_the_pod_is_relaunched(
        cluster: tuple[MasterDouble, SchedulerProcess]) -> None:
    master, sched = cluster
    sched.request("POST", "/v1/pods", "a", {"id": "fragile", "containers": [
        container("c", "exec sleep 60")]})
    wait_pod(sched, "fragile", {"RUNNING"})
    (launched,) = master.executors.values()
    assert launched.double is not None and launched.double.process is not None
    os.killpg(launched.double.process.pid, signal.SIGKILL)
    inst = sched.wait_for(lambda: (i := pod_state(sched, "a", "fragile"))["attempt"] == 1
                          and i["state"] == "RUNNING" and i, 30, "the relaunch")
    assert master.tasks["a.pod.fragile.0.0.c"].state == "TASK_FAILED"
    assert inst["tasks"][0]["taskId"] == "a.pod.fragile.0.1.c"
    assert master.all_violations() == []


def test_away_longer_than_the_failover_timeout_the_next_start_registers_anew(
        master_factory: Callable[..., MasterDouble],  # noqa: F811
        scheduler_factory: Callable[..., SchedulerProcess]) -> None:  # noqa: F811
    master = master_factory()
    sched = scheduler_factory(master.url, [A], extra=["--failover-timeout", "1"]).start()
    master.wait_subscribed()
    sched.request("POST", "/v1/pods", "a", {"id": "p", "containers": [
        container("c", "exec sleep 60")]})
    wait_pod(sched, "p", {"RUNNING"})
    old_id = master.framework_id
    sched.kill(signal.SIGKILL)
    master.wait_for(lambda: master.removed, 10, "the framework's removal")
    master.wait_for(lambda: master.tasks["a.pod.p.0.0.c"].state == "TASK_KILLED", 20,
                    "its task killed")
    sched.start()  # refused: the id was removed
    assert sched.process is not None and sched.process.wait(timeout=15) == 1
    assert "has been removed; the next start registers a new framework" in sched.log_text()
    sched.start()
    master.wait_subscribed()
    assert master.framework_id != old_id and "framework_id" not in master.subscribes[-1]
    inst = sched.wait_for(lambda: (i := pod_state(sched, "a", "p"))["state"] == "RUNNING"
                          and i["attempt"] == 1 and i, 30, "the pod relaunched")
    assert inst["tasks"][0]["taskId"] == "a.pod.p.0.1.c"
    assert master.all_violations() == []


def test_pods_land_on_the_agent_their_size_fits(
        master_factory: Callable[..., MasterDouble],  # noqa: F811
        scheduler_factory: Callable[..., SchedulerProcess]) -> None:  # noqa: F811
    from tests.mesos.master import AgentSpec

    master = master_factory(agents=[AgentSpec("agent-small", "small", cpus=0.5, mem=256),
                                    AgentSpec("agent-big", "big", cpus=4, mem=4096)])
    sched = scheduler_factory(master.url, [A, B]).start()
    master.wait_subscribed()
    sched.request("POST", "/v1/pods", "a", {"id": "big", "containers": [
        container("c", "exec sleep 60", cpus=1)]})
    sched.request("POST", "/v1/pods", "b", {"id": "tiny", "containers": [
        container("c", "exec sleep 60", cpus=0.1)]})
    big = sched.wait_for(lambda: (i := pod_state(sched, "a", "big"))["state"] == "RUNNING"
                         and i, 20, "the big pod")
    assert (big["host"], big["agentId"]) == ("big", "agent-big")

    def tiny() -> Any:
        code, view = sched.request("GET", "/v1/pods/tiny", "b")
        return view["instances"][0]["state"] == "RUNNING" and view["instances"][0]

    assert sched.wait_for(tiny, 20, "the tiny pod")["host"] in ("small", "big")
    assert master.all_violations() == []
