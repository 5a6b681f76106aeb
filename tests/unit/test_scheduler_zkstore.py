"""The ZooKeeper state store against a real ZooKeeper (Debian's package, one node): what a
leader commits, a new leader loads row for row; a write that ZooKeeper refuses (a deposed
leader, a lost election node, a change too large) changes nothing, in SQLite either."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.errors import StorageUnavailable
from scheduler.service import Workloads
from scheduler.store import InstanceKey, LaunchRecord
from scheduler.tenants import Quota, Tenant, hash_token
from scheduler.zkstore import LeadershipLost, ZkStore
from tests.mesos.zookeeper import Ensemble, available, client_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90),
              pytest.mark.skipif(not available(), reason="needs Debian's zookeeper package")]
ACME = Tenant("acme", "acme-role", hash_token("a"), Quota(4, 4096, 10))
POD = {"id": "web", "containers": [{"name": "main", "image": "busybox:1.36", "cmd": "sleep 1",
                                    "resources": {"cpus": 0.5, "mem": 64}}]}


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ensemble]:
    zk = Ensemble(tmp_path_factory.mktemp("zookeeper"), size=1).start()
    try:
        yield zk
    finally:
        zk.stop()


@pytest.fixture
def zk(zookeeper: Ensemble) -> Iterator[Any]:
    with client_of(zookeeper) as client:
        yield client


@pytest.fixture
def root(zk: Any) -> str:
    return f"/t-{uuid.uuid4().hex[:8]}"


def leader_node(zk: Any, root: str) -> str:
    return zk.create(f"{root}/leader/n_", b"127.0.0.1:1", ephemeral=True, sequence=True,
                     makepath=True)


def dump(store: ZkStore) -> dict[str, list[dict[str, Any]]]:
    return {t: [dict(r) for r in store.db.execute(f"SELECT rowid AS _rowid, * FROM {t} "
                                                  "ORDER BY rowid")] for t in store.tables()}


def test_a_new_leader_loads_what_the_old_one_committed(zk: Any, root: str) -> None:
    store = ZkStore(zk, root, leader_node(zk, root))
    work = Workloads(store)
    store.set_meta("framework_id", "fw-1")
    work.create(ACME, "pod", POD)
    key = InstanceKey("acme", "pod", "web", 0)
    store.mark_launched(key, 0, "ex-0", "agent-1", "node1",
                        [LaunchRecord("acme.pod.web.0.0.main", "main", [])])
    for state in ("TASK_RUNNING", "TASK_RUNNING", "TASK_FAILED"):  # the same rows again
        assert work.apply_status({"task_id": {"value": "acme.pod.web.0.0.main"},
                                  "state": state, "message": "boom", "source": "SOURCE_EXECUTOR"})
    store.set_meta("framework_id", "fw-1")
    store.set_meta("framework_id", "fw-2")
    before = dump(store)
    assert before["failures"] and before["generations"] and before["tasks"]
    again = ZkStore(zk, root, leader_node(zk, root))
    assert dump(again) == before
    assert again.get_meta("framework_id") == "fw-2"
    # a deletion reaches ZooKeeper too
    work.delete(ACME, "pod", "web")
    assert dump(ZkStore(zk, root, leader_node(zk, root))) == dump(store)


def test_a_table_added_later_is_kept_too(zk: Any, root: str) -> None:
    store = ZkStore(zk, root, leader_node(zk, root))
    store.db.execute("CREATE TABLE deployments (id TEXT PRIMARY KEY, plan TEXT)")
    with store.tx() as db:
        db.execute("INSERT INTO deployments VALUES ('d1', '{}')")
    assert zk.get_children(f"{root}/state/deployments") == ["1"]
    # a new leader creates the table after loading (as the Marathon API does): it adopts it
    again = ZkStore(zk, root, leader_node(zk, root))
    again.db.execute("CREATE TABLE deployments (id TEXT PRIMARY KEY, plan TEXT)")
    again.sync_tables()
    assert [tuple(r) for r in again.db.execute("SELECT * FROM deployments")] == [("d1", "{}")]
    with again.tx() as db:
        db.execute("UPDATE deployments SET plan='[]'")
    assert zk.get(f"{root}/state/deployments/1")[0] == b'{"id":"d1","plan":"[]"}'


def test_a_deposed_leader_writes_nothing(zk: Any, root: str) -> None:
    old = ZkStore(zk, root, leader_node(zk, root))
    new = ZkStore(zk, root, leader_node(zk, root))
    new.set_meta("owner", "new")
    with pytest.raises(LeadershipLost, match="another scheduler wrote the state"):
        old.set_meta("owner", "old")
    assert old.lost and old.get_meta("owner") is None  # rolled back in SQLite as well
    assert ZkStore(zk, root, leader_node(zk, root)).get_meta("owner") == "new"


def test_without_its_election_node_a_leader_writes_nothing(zk: Any, root: str) -> None:
    node = leader_node(zk, root)
    store = ZkStore(zk, root, node)
    zk.delete(node)  # what a session expiry does
    with pytest.raises(LeadershipLost, match="election node is gone"):
        Workloads(store).create(ACME, "pod", POD)
    assert store.workloads() == [] and store.lost
    assert ZkStore(zk, root, leader_node(zk, root)).workloads() == []


def test_a_change_too_large_for_zookeeper_is_refused_whole(zk: Any, root: str) -> None:
    store = ZkStore(zk, root, leader_node(zk, root))
    with pytest.raises(StorageUnavailable, match="too large"), store.tx() as db:
        for i in range(2000):
            db.execute("INSERT INTO meta VALUES (?, ?)", (f"k{i}", "x" * 1000))
    assert store.get_meta("k1") is None and not store.lost
    store.set_meta("after", "ok")  # the store goes on
    assert ZkStore(zk, root, leader_node(zk, root)).get_meta("after") == "ok"
