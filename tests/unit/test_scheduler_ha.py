"""High availability: three hypervm-scheduler processes, one ZooKeeper ensemble of 3 (Debian's
zookeeper, on loopback), the Mesos master double found through ZooKeeper (``--master zk://``).
The leader is killed with SIGKILL in the middle of a scale-up: a standby leads within 15 s with
the same framework id, reconciles, launches nothing twice, and the scale-up completes; the same
with one ZooKeeper node stopped. ``DELETE /v2/leader`` (sent to a standby, which forwards it):
the leader abdicates and exits, another leads at once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesos.fixtures import master_factory  # noqa: F401
from tests.mesos.master import MasterDouble
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef
from tests.mesos.zookeeper import Ensemble, available, client_of, register_master

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150),
              pytest.mark.skipif(not available(), reason="needs Debian's zookeeper package")]
A = TenantDef("a", "token-a", cpus=4, mem=2048, instances=10, operator=True)
APP = {"id": "/web", "cmd": "exec sleep 300", "cpus": 0.1, "mem": 32, "instances": 1,
       "container": {"type": "DOCKER", "docker": {"image": "busybox:1.36"}}}


class HaScheduler(SchedulerProcess):
    """A scheduler of an HA group: ``--zk`` instead of ``--state``."""

    def __init__(self, workdir: Path, master_url: str, zk: str, *extra: str) -> None:
        super().__init__(workdir, master_url, [A], extra=["--zk", zk, *extra])

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--state")
        return cmd[:at] + cmd[at + 2:]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def leader(self) -> str | None:
        code, body = self.request("GET", "/v2/leader", "a")
        return body["leader"] if code == 200 else None


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ensemble]:
    zk = Ensemble(tmp_path_factory.mktemp("zookeeper")).start()
    try:
        yield zk
    finally:
        zk.stop()


@pytest.fixture
def zk_client(ensemble: Ensemble) -> Iterator[Any]:
    with client_of(ensemble) as client:
        yield client


Group = tuple[MasterDouble, list[HaScheduler]]


@pytest.fixture
def group_factory(tmp_path: Path, ensemble: Ensemble, zk_client: Any,
                  master_factory: Callable[..., MasterDouble]  # noqa: F811
                  ) -> Iterator[Callable[..., Group]]:
    """The master double registered in ZooKeeper, three schedulers: the first leads."""
    made: list[HaScheduler] = []

    def make(*extra: str) -> Group:
        master = master_factory()
        root = f"/test-{uuid.uuid4().hex[:8]}"
        register_master(zk_client, f"{root}/mesos", master.port)
        scheds = [HaScheduler(tmp_path / f"scheduler{i}", f"zk://{ensemble.hosts}{root}/mesos",
                              f"zk://{ensemble.hosts}{root}/hypervm", *extra) for i in range(3)]
        made.extend(scheds)
        scheds[0].start()
        master.wait_subscribed()
        for sched in scheds[1:]:
            sched.start()
        return master, scheds

    yield make
    for sched in made:
        if sched.process is not None and sched.process.poll() is None:
            os.kill(sched.process.pid, signal.SIGCONT)
        sched.stop()
        print(f"--- {sched.address}\n{sched.log_text()[-5000:]}")


@pytest.fixture
def group(group_factory: Callable[..., Group]) -> Group:
    return group_factory()


def app_running(sched: SchedulerProcess, n: int) -> Callable[[], Any]:
    def check() -> Any:
        code, body = sched.request("GET", "/v2/apps/web", "a")
        return code == 200 and body["app"]["tasksRunning"] == n and body["app"]
    return check


def no_deployment(sched: SchedulerProcess) -> Callable[[], bool]:
    return lambda: sched.request("GET", "/v2/deployments", "a") == (200, [])


def kill_leader_during_scale_up(master: MasterDouble, scheds: list[HaScheduler],
                                after_launches: int) -> float:
    """The scenario of both tests: SIGKILL once ``after_launches`` tasks were launched; returns
    the seconds from the kill to the new leader's SUBSCRIBE."""
    first, one, two = scheds
    assert one.leader() == two.leader() == first.address == first.leader()
    framework_id = master.framework_id
    assert master.subscribes[-1]["subscribe"]["framework_info"]["failover_timeout"] > 0
    code, body = one.request("POST", "/v2/apps", "a", APP)  # a standby forwards it
    assert code == 201, body
    two.wait_for(app_running(two, 1), 30, "the app running")
    two.wait_for(no_deployment(two), 30, "the app's deployment done")
    code, body = two.request("PUT", "/v2/apps/web", "a", {"instances": 4})
    assert code == 200 and body["deploymentId"], body
    master.wait_for(lambda: len(master.launched) >= after_launches, 20, "the scale-up")
    subscribes, reconciles = len(master.subscribes), len(master.calls_of("RECONCILE"))
    killed_at = time.monotonic()
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    before = len(master.launched)
    master.wait_for(lambda: len(master.subscribes) > subscribes, 20, "a standby subscribing")
    took = time.monotonic() - killed_at
    assert took < 15, f"the standby took {took:.1f} s"
    assert master.subscribes[-1]["framework_id"]["value"] == framework_id
    new = one.wait_for(lambda: one.leader() in (one.address, two.address) and one.leader(),
                       10, "a new leader named")
    assert two.leader() == new
    master.wait_for(lambda: len(master.calls_of("RECONCILE")) > reconciles, 10,
                    "the new leader reconciling")
    standby = two if new == one.address else one
    view = standby.wait_for(app_running(standby, 4), 40, "4 instances running")
    standby.wait_for(no_deployment(standby), 30, "the scale-up deployment completed")
    assert len({t["id"] for t in view["tasks"]}) == 4
    time.sleep(1.5)  # offers keep coming: nothing may be launched again
    assert len(master.launched) == 4, master.launched
    assert all(master.tasks[t].state == "TASK_RUNNING" for t in master.launched)
    assert sorted(t["id"] for t in view["tasks"]) == sorted(master.launched)
    assert master.all_violations() == []
    print(f"failover: {took:.1f} s from SIGKILL to the new leader's SUBSCRIBE; "
          f"{before} of 4 tasks launched before it")
    return took


def test_kill_9_the_leader_during_a_scale_up_a_standby_completes_it(
        group: tuple[MasterDouble, list[HaScheduler]]) -> None:
    kill_leader_during_scale_up(*group, after_launches=1)  # right after the PUT's answer


def test_the_same_with_one_zookeeper_node_stopped(
        ensemble: Ensemble, group: tuple[MasterDouble, list[HaScheduler]]) -> None:
    (leader,) = [i for i in range(ensemble.size) if ensemble.mode(i) == "leader"]
    ensemble.stop(leader)  # ZooKeeper elects another leader of its own; 2 of 3 are a quorum
    ensemble.wait_serving(30, [i for i in range(ensemble.size) if i != leader])
    try:
        kill_leader_during_scale_up(*group, after_launches=1)
    finally:
        ensemble.start(leader)


def test_a_leader_frozen_past_its_session_is_replaced_and_exits_when_it_wakes(
        group_factory: Callable[..., Group]) -> None:
    master, (first, one, two) = group_factory("--zk-session-timeout", "4")
    assert one.request("POST", "/v2/apps", "a", {**APP, "instances": 2})[0] == 201
    one.wait_for(app_running(one, 2), 30, "2 instances running")
    one.wait_for(no_deployment(one), 30, "the app's deployment done")
    subscribes = len(master.subscribes)
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGSTOP)  # alive, but silent to ZooKeeper and Mesos
    stopped_at = time.monotonic()
    master.wait_for(lambda: len(master.subscribes) > subscribes, 20, "a standby subscribing")
    took = time.monotonic() - stopped_at
    new = one.wait_for(lambda: one.leader() in (one.address, two.address) and one.leader(),
                       10, "a new leader named")
    leader = one if new == one.address else two
    assert leader.request("PUT", "/v2/apps/web", "a", {"instances": 3})[0] == 200
    leader.wait_for(app_running(leader, 3), 30, "3 instances running")
    leader.wait_for(no_deployment(leader), 30, "the scale-up deployment done")
    os.kill(first.process.pid, signal.SIGCONT)  # its session has expired: it must stop
    assert first.process.wait(timeout=20) == 1
    assert "no longer the leader" in first.log_text()
    view = leader.wait_for(app_running(leader, 3), 30, "3 instances still running")
    time.sleep(1.5)
    assert len(master.launched) == 3, master.launched
    assert sorted(t["id"] for t in view["tasks"]) == sorted(master.launched)
    assert one.leader() == two.leader() == new
    # woken, the old leader may send a call or two on its old stream before it sees its
    # session gone: the master refuses them (the stream id is Mesos' fencing), as a real one
    stale = "is not the subscribed stream's"
    assert [v for v in master.all_violations() if stale not in v] == []
    print(f"frozen leader replaced in {took:.1f} s (session timeout 4 s)")


def test_delete_v2_leader_hands_the_leadership_to_a_standby(group: Group) -> None:
    master, (first, one, two) = group
    assert one.request("POST", "/v2/apps", "a", APP)[0] == 201
    one.wait_for(app_running(one, 1), 30, "the app running")
    one.wait_for(no_deployment(one), 30, "the app's deployment done")
    subscribes = len(master.subscribes)
    asked_at = time.monotonic()
    code, body = one.request("DELETE", "/v2/leader", "a")  # forwarded to the leader
    assert (code, body) == (200, {"message": "Leadership abdicated"})
    assert first.process is not None and first.process.wait(timeout=20) == 0
    assert "leadership abdicated" in first.log_text()
    master.wait_for(lambda: len(master.subscribes) > subscribes, 20, "a standby subscribing")
    took = time.monotonic() - asked_at
    new = one.wait_for(lambda: one.leader() in (one.address, two.address) and one.leader(),
                       10, "a new leader named")
    assert two.leader() == new
    leader = one if new == one.address else two
    view = leader.wait_for(app_running(leader, 1), 30, "the app still running")
    assert len(master.launched) == 1 and [t["id"] for t in view["tasks"]] == master.launched
    assert took < 10, f"the election node is released at once, no session to expire: {took}"
    print(f"abdication: a standby subscribed {took:.1f} s after DELETE /v2/leader")
