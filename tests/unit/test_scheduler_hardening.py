"""Hardening of hypervm-scheduler (issue 16, part 5): hostile numbers and ids, DELETE then POST,
one bad offer, out-of-range exit statuses, failed commits and a full disk. Each test showed the
hole before its fix."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from scheduler.api import make_app
from scheduler.errors import Conflict, QuotaExceeded
from scheduler.marathon import parse_app
from scheduler.service import Workloads
from scheduler.store import open_store
from scheduler.tenants import Quota, Tenant, Tenants, hash_token
from tests.unit.test_scheduler_logic import (
    ACME,
    BETA,
    FakeDriver,
    framework,
    launch_all,
    offer,
    pod,
    status,
)

ALICE = Tenant("alice", "alice-role", hash_token("alice-token"), Quota(4, 4096, 4))
AUTH = {"Authorization": "Bearer alice-token"}


@pytest.fixture
def workloads(tmp_path: Path) -> Workloads:
    return Workloads(open_store(f"sqlite://{tmp_path}/state.db"))


@pytest.fixture
def client(workloads: Workloads) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(make_app(workloads, Tenants([ALICE])))


def app(**over: Any) -> dict[str, Any]:
    return {"id": "/web", "cmd": "sleep 60", "cpus": 0.5, "mem": 64, "instances": 1,
            "labels": {"hypervm.image": "busybox:1.36"}, **over}


def post(client: falcon.testing.TestClient, path: str, body: Any) -> falcon.testing.Result:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.simulate_post(path, body=raw, headers={**AUTH,
                                                          "Content-Type": "application/json"})


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize(("path", "text", "field"), [
    ("/v2/apps", '{"id": "/web", "cmd": "x", "cpus": NaN, "mem": 64, "labels": '
                 '{"hypervm.image": "busybox"}}', "cpus"),
    ("/v2/apps", '{"id": "/web", "cmd": "x", "cpus": 0.5, "mem": Infinity, "labels": '
                 '{"hypervm.image": "busybox"}}', "mem"),
    ("/v2/apps", '{"id": "/web", "cmd": "x", "cpus": 0.5, "mem": 64, "instances": 1, '
                 '"backoffFactor": 1e999, "labels": {"hypervm.image": "busybox"}}',
     "backoffFactor"),
    ("/v1/pods", '{"id": "web", "containers": [{"name": "a", "image": "busybox", '
                 '"resources": {"cpus": -Infinity, "mem": 64}}]}',
     "containers[0].resources.cpus"),
])
def test_non_finite_numbers_are_refused_naming_the_field(
        client: falcon.testing.TestClient, workloads: Workloads, path: str, text: str,
        field: str) -> None:
    result = post(client, path, text)
    assert result.status_code == 422, result.json
    assert result.json["field"] == field
    assert "not a finite number" in result.json["message"]
    assert workloads.store.workloads(include_deleted=True) == []


@pytest.mark.parametrize(("over", "field"), [
    ({"cpus": 1e6}, "cpus"), ({"mem": 1e12}, "mem"), ({"instances": 10**6}, "instances"),
    ({"backoffFactor": 1e300}, "backoffFactor"),
    ({"maxLaunchDelaySeconds": 10**15}, "maxLaunchDelaySeconds"),
    ({"taskKillGracePeriodSeconds": 10**12}, "taskKillGracePeriodSeconds"),
    ({"portDefinitions": [{"port": 0}] * 200}, "portDefinitions"),
])
def test_numeric_fields_are_capped(client: falcon.testing.TestClient, over: dict[str, Any],
                                   field: str) -> None:
    result = post(client, "/v2/apps", app(**over))
    assert result.status_code == 422, result.json
    assert result.json["field"] == field


def test_pod_resources_and_scaling_are_capped(client: falcon.testing.TestClient) -> None:
    body = {"id": "web", "containers": [{"name": "a", "image": "busybox",
                                         "resources": {"cpus": 0.5, "mem": 1e15}}]}
    result = post(client, "/v1/pods", body)
    assert (result.status_code, result.json["field"]) == (422, "containers[0].resources.mem")
    assert post(client, "/v2/apps", app()).status_code == 201
    result = client.simulate_put("/v2/apps/web", json={"instances": 10**9}, headers=AUTH)
    assert (result.status_code, result.json["field"]) == (422, "instances")


def test_deeply_nested_json_is_a_bad_request(client: falcon.testing.TestClient) -> None:
    result = post(client, "/v2/apps", "[" * 100000 + "]" * 100000)
    assert result.status_code == 400 and result.json["field"] == "(body)"


# ---------------------------------------------------------------- ids

@pytest.mark.parametrize("field", ["id", "dependencies"])
def test_app_ids_are_checked_in_linear_time(client: falcon.testing.TestClient,
                                            field: str) -> None:
    evil = "aaaa/" * 14 + "A"  # Marathon's pattern backtracks: seconds per request
    body = app(id=evil) if field == "id" else app(dependencies=[evil])
    start = time.monotonic()
    result = post(client, "/v2/apps", body)
    assert time.monotonic() - start < 0.5
    assert result.status_code == 422
    assert result.json["field"] == ("id" if field == "id" else "dependencies[0]")
    for i, good in enumerate(("/team/web-1", "a.b", "/x/y.z", "a/../b")):
        if field == "id":  # ".." passes the pattern, and is refused as Marathon does
            assert post(client, "/v2/apps", app(id=good)).status_code == (422 if i == 3 else 201)
        else:  # a valid path reaches the next check: dependencies are not supported
            result = post(client, "/v2/apps", app(id=f"/d{i}", dependencies=[good]))
            assert "not supported" in result.json["message"]


# ---------------------------------------------------------------- delete then create

def test_delete_then_post_conflicts_while_the_old_tasks_live_and_they_count(
        workloads: Workloads) -> None:
    small = Tenant("acme", "acme-role", hash_token("a"), Quota(2, 1024, 1))
    killed: list[str] = []
    workloads.kill = lambda task_id, agent_id: killed.append(task_id)
    workloads.create(small, "pod", pod("web"))
    old = launch_all(workloads)[0].records
    workloads.delete(small, "pod", "web")
    with pytest.raises(Conflict, match="still"):
        workloads.create(small, "pod", pod("web"))
    with pytest.raises(QuotaExceeded, match="instances"):  # the old VM still runs
        workloads.create(small, "pod", pod("other"))
    for task_id in killed:
        workloads.apply_status(status(task_id, "TASK_KILLED"))
    workloads.create(small, "pod", pod("web"))
    new = launch_all(workloads)[0].records
    # a new incarnation never reuses the old task ids (late updates cannot be confused)
    assert {r.task_id for r in new}.isdisjoint({r.task_id for r in old})


def test_deleted_instances_keep_counting_until_their_tasks_end(workloads: Workloads) -> None:
    workloads.kill = lambda task_id, agent_id: None
    workloads.create(ACME, "pod", pod("one", cpus=0.25))
    workloads.create(ACME, "pod", pod("two", cpus=0.25))
    launch_all(workloads)
    workloads.delete(ACME, "pod", "two")
    workloads.create(ACME, "pod", pod("three", cpus=0.25))
    with pytest.raises(QuotaExceeded, match="instances"):  # one, two (dying), three: 3 VMs
        workloads.create(ACME, "pod", pod("four", cpus=0.1))


def test_the_backoff_of_many_failures_is_its_cap() -> None:
    spec = parse_app(app(backoffFactor=100, maxLaunchDelaySeconds=600))
    assert spec.backoff(1) == 1 and spec.backoff(2) == 100
    assert spec.backoff(200) == spec.backoff(10**6) == 600  # 100**199 overflows a float


# ---------------------------------------------------------------- offers and updates

def test_an_error_with_one_offer_declines_that_offer_only(
        workloads: Workloads, caplog: pytest.LogCaptureFixture) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.create(ACME, "pod", pod("web"))
    workloads.create(BETA, "pod", pod("web", cpus=0.2))
    # a stored definition the scheduler cannot read any more (e.g. refused by a newer version)
    workloads.store.db.execute("UPDATE workloads SET definition='{\"id\": 1}' "
                               "WHERE tenant='acme'")
    bad, good = offer(role="acme-role"), offer(role="beta-role")
    bad["id"], good["id"] = {"value": "o-acme"}, {"value": "o-beta"}
    with caplog.at_level(logging.ERROR):
        fw.resourceOffers(driver, [bad, good])
    assert [args[0] for args in driver.named("declineOffer")] == [[{"value": "o-acme"}]]
    assert [args[0] for args in driver.named("acceptOffers")] == [[{"value": "o-beta"}]]
    assert "offer o-acme" in caplog.text


def test_exit_statuses_and_health_are_clamped_before_sqlite(workloads: Workloads) -> None:
    fw = framework(workloads)
    driver = FakeDriver()
    fw.registered(driver, {"value": "fw-1"}, {})
    workloads.create(ACME, "pod", pod("web"))
    launch_all(workloads)
    fw.statusUpdate(driver, {**status("acme.pod.web.0.0.main", "TASK_FAILED",
                                      "Command exited with status " + "1" + "0" * 20),
                             "uuid": "u1", "healthy": "yes"})
    fw.statusUpdate(driver, {**status("acme.pod.web.0.0.side", "TASK_FAILED",
                                      "Command exited with status " + "9" * 5000),
                             "uuid": "u2"})
    assert [a[0]["uuid"] for a in driver.named("acknowledgeStatusUpdate")] == ["u1", "u2"]
    rows = [workloads.store.task(f"acme.pod.web.0.0.{name}") for name in ("main", "side")]
    assert [(r["exit_code"], r["healthy"]) for r in rows] == [(255, None), (255, None)]


# ---------------------------------------------------------------- the store

def test_a_failed_commit_rolls_back_and_later_transactions_work(workloads: Workloads) -> None:
    store = workloads.store
    # a deferred foreign key fails at COMMIT, as a full disk or an I/O error can
    store.db.execute("PRAGMA foreign_keys=ON")
    store.db.execute("CREATE TABLE t (k TEXT REFERENCES meta(key) DEFERRABLE INITIALLY "
                     "DEFERRED)")
    with pytest.raises(sqlite3.Error), store.tx() as db:
        db.execute("INSERT INTO meta VALUES ('half', 'written')")
        db.execute("INSERT INTO t VALUES ('nope')")
    assert not store.db.in_transaction
    assert store.get_meta("half") is None
    store.set_meta("later", "works")
    assert store.get_meta("later") == "works"


def test_a_full_disk_answers_503_naming_the_cause_and_writes_nothing(
        client: falcon.testing.TestClient, workloads: Workloads) -> None:
    db = workloads.store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")  # SQLite answers SQLITE_FULL beyond it
    big = app(env={f"V{i}": "x" * 2000 for i in range(20)})  # needs overflow pages
    result = post(client, "/v2/apps", big)
    assert result.status_code == 503, result.json
    assert "database or disk is full" in result.json["message"]
    assert result.headers.get("Retry-After")
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
    db.execute("PRAGMA max_page_count=1073741823")
    assert post(client, "/v2/apps", big).status_code == 201
