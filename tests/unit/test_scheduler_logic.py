"""hypervm-scheduler's logic without processes: lifecycle, placement, the SQLite store and the
framework's callbacks driven by a recording fake driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scheduler import lifecycle
from scheduler.errors import ConfigError, Conflict, NotFound, QuotaExceeded
from scheduler.framework import HyperVMFramework
from scheduler.placement import Pending, offer_role, plan
from scheduler.pods import parse_pod
from scheduler.service import Workloads
from scheduler.store import InstanceKey, open_store
from scheduler.taskgroup import ExecutorConfig
from scheduler.taskgroup import task_id as make_task_id
from scheduler.tenants import Quota, Tenant, Tenants, hash_token
from tests.mesos import protos
from tests.mesos.master_resources import amounts
from tests.mesos.master_validation import Context, validate_id, validate_launch_group

CFG = ExecutorConfig("/usr/local/bin/hypervm-executor", 0.1, 32, "t1")
ACME = Tenant("acme", "acme-role", hash_token("a"), Quota(2, 1024, 3))
BETA = Tenant("beta", "beta-role", hash_token("b"), Quota(1, 512, 1))


def pod(pid: str = "web", cpus: float = 0.5, mem: float = 64, ports: int = 0,
        cmd: str = "sleep 1", **over: Any) -> dict[str, Any]:
    box = {"name": "main", "image": "busybox:1.36", "cmd": cmd,
           "resources": {"cpus": cpus, "mem": mem},
           "ports": [{"containerPort": 8000 + i} for i in range(ports)]}
    return {"id": pid, "containers": [box, {**box, "name": "side", "ports": []}], **over}


def offer(role: str = "acme-role", cpus: float = 4, mem: float = 4096,
          ports: tuple[int, int] | None = (31000, 31001), disk: float = 4096
          ) -> dict[str, Any]:
    alloc = {"role": role}
    resources = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus},
                  "allocation_info": alloc},
                 {"name": "mem", "type": "SCALAR", "scalar": {"value": mem},
                  "allocation_info": alloc}]
    if disk:
        resources.append({"name": "disk", "type": "SCALAR", "scalar": {"value": disk},
                          "allocation_info": alloc})
    if ports:
        resources.append({"name": "ports", "type": "RANGES", "allocation_info": alloc,
                          "ranges": {"range": [{"begin": ports[0], "end": ports[1]}]}})
    return {"id": {"value": "o1"}, "framework_id": {"value": "fw"},
            "agent_id": {"value": "agent-7"}, "hostname": "node7", "allocation_info": alloc,
            "resources": resources}


# ---------------------------------------------------------------- lifecycle

@pytest.mark.parametrize(("states", "summary"), [
    ([], "PENDING"),
    (["TASK_RUNNING", "TASK_RUNNING"], "RUNNING"),
    (["TASK_RUNNING", "TASK_FINISHED"], "RUNNING"),
    (["TASK_STARTING", "TASK_RUNNING"], "STARTING"),
    (["TASK_FINISHED", "TASK_FINISHED"], "FINISHED"),
    (["TASK_FINISHED", "TASK_FAILED"], "FAILED"),
    (["TASK_KILLED", "TASK_KILLED"], "KILLED"),
])
def test_instance_summary(states: list[str], summary: str) -> None:
    assert lifecycle.summary(states) == summary


@pytest.mark.parametrize(("restart", "removing", "states", "step"), [
    ("never", False, ["TASK_RUNNING", "TASK_FINISHED"], "wait"),
    ("never", False, ["TASK_FAILED", "TASK_KILLED"], "done"),
    ("on-failure", False, ["TASK_FINISHED", "TASK_FINISHED"], "done"),
    ("on-failure", False, ["TASK_FINISHED", "TASK_LOST"], "restart"),
    ("always", False, ["TASK_FINISHED"], "restart"),
    ("always", True, ["TASK_KILLED"], "remove"),
])
def test_next_step(restart: str, removing: bool, states: list[str], step: str) -> None:
    assert lifecycle.next_step(restart, removing, states) == step


def test_exit_codes() -> None:
    assert lifecycle.exit_code("TASK_FINISHED", None) == 0
    assert lifecycle.exit_code("TASK_FAILED", "Command exited with status 42") == 42
    assert lifecycle.exit_code("TASK_FAILED", "Command terminated with signal SIGKILL") is None


# ---------------------------------------------------------------- placement

def pending(pid: str, **kw: Any) -> Pending:
    return Pending(InstanceKey("acme", "pod", pid, 0), 0, parse_pod(pod(pid, **kw)))


def test_placement_builds_a_valid_launch_group_on_the_offer_role() -> None:
    launches = plan(offer(), "acme-role", [pending("web", ports=2)], CFG, "fw-1")
    assert len(launches) == 1
    launch = launches[0]
    op = protos.parse("mesos.Offer.Operation", launch.operation)  # valid against the protos
    assert op.type == protos.load()["mesos"].Offer.Operation.LAUNCH_GROUP
    group = launch.operation["launch_group"]
    assert group["executor"]["command"]["value"] == CFG.command
    assert launch.executor_id.startswith("t1-")
    tasks = group["task_group"]["tasks"]
    assert [t["task_id"]["value"] for t in tasks] == ["acme.pod.web.0.0.main",
                                                      "acme.pod.web.0.0.side"]
    assert all(r["allocation_info"]["role"] == "acme-role"
               for t in [group["executor"], *tasks] for r in t["resources"])
    assert tasks[0]["container"]["mesos"]["image"]["docker"]["name"] == "busybox:1.36"
    assert launch.records[0].ports == [{"name": "port0", "containerPort": 8000,
                                        "hostPort": 31000},
                                       {"name": "port1", "containerPort": 8001,
                                        "hostPort": 31001}]
    assert tasks[0]["discovery"]["ports"]["ports"] == [
        {"number": 8000, "name": "port0", "protocol": "tcp"},
        {"number": 8001, "name": "port1", "protocol": "tcp"}]
    assert "discovery" not in tasks[1]
    # what the real master checks (TASK_ERROR "Executor ... uses no disk" without disk)
    assert {r["name"]: r["scalar"]["value"] for r in group["executor"]["resources"]} == {
        "cpus": 0.1, "mem": 32, "disk": 32}
    ctx = Context("fw-1", "agent-7", "acme-role", amounts(offer()["resources"]))
    assert validate_launch_group(group, ctx) is None
    bare = {**group, "executor": {**group["executor"], "resources": [
        r for r in group["executor"]["resources"] if r["name"] != "disk"]}}
    assert validate_launch_group(bare, ctx) == f"Executor '{launch.executor_id}' uses no disk"


def test_no_launch_without_disk_for_the_executor_and_sane_executor_options() -> None:
    assert plan(offer(disk=0), "acme-role", [pending("web")], CFG, "fw") == []
    assert plan(offer(disk=31), "acme-role", [pending("web")], CFG, "fw") == []
    for bad in ({"cpus": 0.001}, {"mem": 16}, {"disk": 0}):
        with pytest.raises(ConfigError, match="--executor-.* the Mesos master needs"):
            ExecutorConfig(**bad)


def test_task_ids_stay_within_the_masters_limit() -> None:
    long_id = "/" + "/".join(["x" * 60] * 6)
    tid = make_task_id("acme", "app", long_id, 12, 3, "main")
    assert len(tid) <= 255 and validate_id(tid) is None and tid.endswith(".12.3.main")
    assert tid != make_task_id("acme", "app", long_id + "y", 12, 3, "main")
    assert make_task_id("acme", "pod", "web", 0, 0, "main") == "acme.pod.web.0.0.main"


def test_placement_packs_what_fits_and_skips_the_rest() -> None:
    items = [pending("a", cpus=1), pending("b", cpus=1), pending("c", cpus=0.2)]
    # 2.5 cpus: a needs 2.1 (two containers + executor), b does not fit, c (0.5) does
    launches = plan(offer(cpus=2.7), "acme-role", items, CFG, "fw")
    assert [launch.pending.key.workload for launch in launches] == ["a", "c"]
    assert plan(offer(), "acme-role", [pending("p", ports=3)], CFG, "fw") == []
    assert plan(offer(ports=None), "acme-role", [pending("p", ports=1)], CFG, "fw") == []


def test_offer_role() -> None:
    assert offer_role(offer(role="x")) == "x"
    legacy = offer()
    del legacy["allocation_info"]
    assert offer_role(legacy) == "acme-role"


# ---------------------------------------------------------------- store + service

@pytest.fixture
def workloads(tmp_path: Path) -> Workloads:
    return Workloads(open_store(f"sqlite://{tmp_path}/state.db"))


def test_admission_counts_every_instance_and_names_the_quota(workloads: Workloads) -> None:
    workloads.create(ACME, "pod", pod("one", cpus=0.4))  # 0.8 cpus
    workloads.create(ACME, "pod", pod("two", cpus=0.4))  # 1.6 cpus
    with pytest.raises(QuotaExceeded) as err:
        workloads.create(ACME, "pod", pod("three", cpus=0.4))
    assert err.value.quota == "cpus"
    assert "0.8 requested + 1.6 in use > 2" in str(err.value)
    with pytest.raises(Conflict):
        workloads.create(ACME, "pod", pod("one", cpus=0.1))
    # another tenant's usage is its own
    workloads.create(BETA, "pod", pod("one", cpus=0.4))
    assert [v["id"] for v in workloads.list_of(BETA, "pod")] == ["one"]
    with pytest.raises(NotFound):
        workloads.view(BETA, "pod", "two")


def launch_all(workloads: Workloads, tenant: Tenant = ACME) -> list[Any]:
    rows = workloads.store.pending([tenant.id], now=1e12)
    launches = plan(offer(role=tenant.role), tenant.role,
                    [Pending(InstanceKey(r["tenant"], r["kind"], r["workload"], r["idx"]),
                             r["attempt"], parse_pod(pod(r["workload"]))) for r in rows],
                    CFG, "fw")
    for launch in launches:
        workloads.store.mark_launched(launch.pending.key, launch.pending.attempt,
                                      launch.executor_id, "agent-7", "node7", launch.records)
    return launches


def status(task_id: str, state: str, message: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"task_id": {"value": task_id}, "state": state}
    if message:
        out["message"] = message
    return out


def test_a_failed_instance_is_relaunched_with_backoff_and_new_task_ids(
        workloads: Workloads) -> None:
    workloads.create(ACME, "pod", pod("web"))
    assert len(launch_all(workloads)) == 1
    assert workloads.store.pending(["acme"], now=1e12) == []  # launched: not pending again
    assert workloads.apply_status(status("acme.pod.web.0.0.main", "TASK_FAILED",
                                         "Command exited with status 3"))
    view = workloads.view(ACME, "pod", "web")["instances"][0]
    assert (view["tasks"][0]["state"], view["tasks"][0]["exitCode"]) == ("TASK_FAILED", 3)
    assert workloads.store.pending(["acme"], now=1e12) == []  # the sibling still runs
    workloads.apply_status(status("acme.pod.web.0.0.side", "TASK_KILLED"))
    view = workloads.view(ACME, "pod", "web")["instances"][0]
    assert (view["state"], view["attempt"], view["failures"]) == ("PENDING", 1, 1)
    assert view["nextLaunchAt"] > 0
    again = launch_all(workloads)
    assert again[0].records[0].task_id == "acme.pod.web.0.1.main"
    assert not workloads.apply_status(status("acme.pod.nope.0.0.main", "TASK_RUNNING"))


def test_delete_kills_live_tasks_and_forgets_the_pod_once_they_end(
        workloads: Workloads) -> None:
    killed: list[str] = []
    workloads.kill = lambda task_id, agent_id: killed.append(task_id)
    workloads.create(ACME, "pod", pod("web"))
    launch_all(workloads)
    workloads.delete(ACME, "pod", "web")
    assert killed == ["acme.pod.web.0.0.main", "acme.pod.web.0.0.side"]
    assert workloads.list_of(ACME, "pod") == []
    assert sorted(workloads.removing_tasks()) == sorted((t, "agent-7") for t in killed)
    for task_id in killed:
        workloads.apply_status(status(task_id, "TASK_KILLED"))
    assert workloads.store.workloads(include_deleted=True) == []
    assert workloads.store.live_tasks() == []


# ---------------------------------------------------------------- framework callbacks

class FakeDriver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))

    def named(self, name: str) -> list[Any]:
        return [args for n, args in self.calls if n == name]


def framework(workloads: Workloads) -> HyperVMFramework:
    fw = HyperVMFramework(workloads.store, workloads, Tenants([ACME, BETA]), CFG, 2.0)
    workloads.on_change, workloads.kill = fw.wake, fw.kill
    return fw


def test_a_crash_between_commit_and_accept_reconciles_then_relaunches_once(
        tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/state.db"
    first = Workloads(open_store(url))
    fw = framework(first)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    first.create(ACME, "pod", pod("web"))
    # the launch is committed; the process dies before its ACCEPT reaches the master
    launch_all(first)
    first.store.close()

    second = Workloads(open_store(url))
    fw2 = framework(second)
    assert fw2.framework_id == "fw-1"
    driver = FakeDriver()
    fw2.reregistered(driver, {})
    explicit, implicit = driver.named("reconcileTasks")
    assert {t["task_id"]["value"] for t in explicit[0]} == {"acme.pod.web.0.0.main",
                                                            "acme.pod.web.0.0.side"}
    assert implicit == ([],)
    # offers before the answers: nothing is launched (the instance is not pending)
    fw2.resourceOffers(driver, [offer()])
    assert driver.named("acceptOffers") == []
    assert driver.named("declineOffer")[0][1] == {"refuse_seconds": 2.0}
    # the master never heard of them: TASK_LOST → a new attempt, launched once
    for name in ("main", "side"):
        fw2.statusUpdate(driver, {**status(f"acme.pod.web.0.0.{name}", "TASK_LOST"),
                                  "reason": "REASON_RECONCILIATION"})
    second.store.db.execute("UPDATE instances SET not_before=0")
    fw2.resourceOffers(driver, [offer()])
    (accepted,) = driver.named("acceptOffers")
    tasks = accepted[1][0]["launch_group"]["task_group"]["tasks"]
    assert [t["task_id"]["value"] for t in tasks] == ["acme.pod.web.0.1.main",
                                                      "acme.pod.web.0.1.side"]
    fw2.resourceOffers(driver, [offer()])
    assert len(driver.named("acceptOffers")) == 1


def test_offers_of_a_role_without_work_are_declined_and_unknown_tasks_killed(
        workloads: Workloads) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.create(ACME, "pod", pod("web"))
    fw.resourceOffers(driver, [offer(role="beta-role")])
    assert driver.named("acceptOffers") == [] and len(driver.named("declineOffer")) == 1
    fw.resourceOffers(driver, [offer(role="someone-else")])
    assert len(driver.named("declineOffer")) == 2
    fw.resourceOffers(driver, [offer(role="acme-role")])
    assert len(driver.named("acceptOffers")) == 1
    assert driver.named("suppressOffers")  # nothing left to launch
    fw.statusUpdate(driver, status("stranger", "TASK_RUNNING"))
    assert driver.named("killTask") == [({"value": "stranger"},)]
    assert driver.named("acknowledgeStatusUpdate")[-1][0]["task_id"]["value"] == "stranger"


def test_an_update_that_cannot_be_stored_is_not_acknowledged(workloads: Workloads) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.store.close()  # every write fails now
    fw.statusUpdate(driver, {**status("acme.pod.web.0.0.main", "TASK_RUNNING"), "uuid": "x"})
    assert driver.named("acknowledgeStatusUpdate") == []


def test_tick_resends_kills_and_reconciles_now_and_then(workloads: Workloads) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.create(ACME, "pod", pod("web"))
    launch_all(workloads)
    workloads.delete(ACME, "pod", "web")
    kills = len(driver.named("killTask"))
    reconciles = len(driver.named("reconcileTasks"))
    start = fw._last_kills
    fw.tick(now=start + 1)
    assert len(driver.named("killTask")) == kills
    fw.tick(now=start + 11)
    assert len(driver.named("killTask")) == kills + 2
    assert len(driver.named("reconcileTasks")) == reconciles
    fw.tick(now=start + 601)
    assert driver.named("reconcileTasks")[-1] == ([],)


def test_tasks_staging_too_long_are_reconciled(workloads: Workloads) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.create(ACME, "pod", pod("web"))
    launch_all(workloads)  # as if the ACCEPT never reached the master
    start = fw._last_staging
    fw.tick(now=start + 31)
    assert driver.named("reconcileTasks")[-1] == ([],)  # from registered(): not yet stale
    workloads.store.db.execute("UPDATE tasks SET updated=updated-60")
    fw.tick(now=start + 62)
    assert {t["task_id"]["value"] for t in driver.named("reconcileTasks")[-1][0]} == {
        "acme.pod.web.0.0.main", "acme.pod.web.0.0.side"}
