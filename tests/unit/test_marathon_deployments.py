"""Deployments through the REST API in process (Falcon's test client, a real SQLite store, no
Mesos: instances stay pending, so deployments stay in progress until the test moves them)."""

from __future__ import annotations

from typing import Any

import falcon.testing
import pytest

from scheduler import openapi
from scheduler.api import make_app
from scheduler.marathon_api.hub import MarathonHub
from scheduler.service import Workloads
from scheduler.store import Store
from scheduler.tenants import Quota, Tenant, Tenants, hash_token

A = Tenant("a", "tenant-a", hash_token("tok-a"), Quota(4, 4096, 10))
B = Tenant("b", "tenant-b", hash_token("tok-b"), Quota(4, 4096, 10))
APP = {"id": "/web", "cmd": "exec sleep 100", "cpus": 0.5, "mem": 64, "instances": 2,
       "container": {"docker": {"image": "busybox:1.36"}}}


class Api:
    def __init__(self) -> None:
        self.store = Store(":memory:")
        self.workloads = Workloads(self.store)
        self.hub = MarathonHub.for_workloads(self.workloads, Tenants([A, B]))
        self.client = falcon.testing.TestClient(make_app(self.workloads, Tenants([A, B]),
                                                         self.hub))

    def call(self, method: str, path: str, body: Any = None, token: str = "tok-a"
             ) -> tuple[int, Any]:
        result = self.client.simulate_request(method, path, json=body,
                                              headers={"Authorization": f"Bearer {token}"})
        return result.status_code, result.json if result.text else None

    def instances(self) -> list[Any]:
        with self.store.lock:
            return self.store.db.execute("SELECT * FROM instances WHERE workload='/web' "
                                         "ORDER BY idx").fetchall()

    def run_all(self) -> None:
        """As if every pending instance had launched and runs (no health check here)."""
        with self.store.tx() as db:
            for inst in db.execute("SELECT * FROM instances WHERE state='PENDING'").fetchall():
                db.execute("UPDATE instances SET state='LAUNCHED' WHERE tenant=? AND kind=? AND "
                           "workload=? AND idx=?", (inst["tenant"], inst["kind"],
                                                    inst["workload"], inst["idx"]))
                db.execute("INSERT INTO tasks (task_id, tenant, kind, workload, idx, attempt, "
                           "container, state, updated) VALUES (?, ?, ?, ?, ?, ?, 'web', "
                           "'TASK_RUNNING', 0)", (f"t{inst['idx']}.{inst['attempt']}",
                                                  inst["tenant"], inst["kind"],
                                                  inst["workload"], inst["idx"],
                                                  inst["attempt"]))
        self.hub.tick()

    def end_killed(self) -> None:
        """The tasks of instances being removed end (as their kill would make them)."""
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT t.task_id FROM tasks t JOIN instances i ON t.workload=i.workload AND "
                "t.idx=i.idx WHERE i.removing=1").fetchall()
        for row in rows:
            self.workloads.apply_status({"task_id": {"value": row["task_id"]},
                                         "state": "TASK_KILLED"})
        self.hub.tick()

    def settle(self) -> None:
        """Let every deployment finish: new instances run, killed ones end."""
        for _ in range(20):
            self.run_all()
            self.end_killed()
            if not deployments(self):
                return
        raise AssertionError(f"deployments left: {deployments(self)}")


@pytest.fixture
def api() -> Api:
    return Api()


def deployments(api: Api) -> list[dict[str, Any]]:
    code, body = api.call("GET", "/v2/deployments")
    assert code == 200
    return body


def test_a_running_deployment_locks_the_app_until_force(api: Api) -> None:
    assert api.call("POST", "/v2/apps", APP)[0] == 201
    (start,) = deployments(api)
    assert start["steps"][0]["actions"][0]["action"] == "StartApplication"
    code, body = api.call("PUT", "/v2/apps/web", {"instances": 3})
    assert code == 409 and start["id"] in body["message"] and "force=true" in body["message"]
    code, body = api.call("PUT", "/v2/apps/web?force=true", {"instances": 3})
    assert code == 200
    assert [d["id"] for d in deployments(api)] == [body["deploymentId"]]
    assert len(api.instances()) == 3


def test_cancelling_a_start_removes_the_app_and_a_stop_cannot_be_cancelled(api: Api) -> None:
    api.call("POST", "/v2/apps", APP)
    (start,) = deployments(api)
    code, body = api.call("DELETE", f"/v2/deployments/{start['id']}")
    assert code == 200 and body["deploymentId"] != start["id"]
    assert api.call("GET", "/v2/apps/web")[0] == 404
    stops = deployments(api)
    assert [d["currentActions"][0]["action"] for d in stops] in ([], ["StopApplication"])
    api.call("POST", "/v2/apps", {**APP, "id": "/other"})
    api.run_all()
    code, body = api.call("DELETE", "/v2/apps/other")
    assert code == 200
    code, body = api.call("DELETE", f"/v2/deployments/{body['deploymentId']}")
    assert code == 409 and "cannot be rolled back" in body["message"]


def test_a_new_definition_replaces_instances_and_a_cancel_rolls_it_back(api: Api) -> None:
    api.call("POST", "/v2/apps", {**APP, "upgradeStrategy": {
        "minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}})
    api.run_all()
    assert deployments(api) == []
    first = [i["idx"] for i in api.instances()]
    code, body = api.call("PATCH", "/v2/apps/web", {"cmd": "exec sleep 200"})
    assert code == 200
    api.hub.tick()  # min 1 of 2 up, at most 2 at once: one old instance goes first
    assert [i["removing"] for i in api.instances()] == [0, 1]
    api.end_killed()  # then one new instance
    assert [i["idx"] for i in api.instances()] == [first[0], 2]
    code, body = api.call("DELETE", f"/v2/deployments/{body['deploymentId']}")
    assert code == 200
    code, app = api.call("GET", "/v2/apps/web")
    assert app["app"]["cmd"] == "exec sleep 100"  # the definition before the cancelled one
    api.hub.tick()  # the new-version instance (not ready) goes, an old-version one comes
    api.end_killed()
    api.run_all()
    assert deployments(api) == []
    assert [i["idx"] for i in api.instances()] == [first[0], 3]
    code, versions = api.call("GET", "/v2/apps/web/versions")
    assert len(versions["versions"]) == 3


def test_rollback_to_a_version_and_unknown_versions(api: Api) -> None:
    api.call("POST", "/v2/apps", APP)
    api.run_all()
    (v1,) = api.call("GET", "/v2/apps/web/versions")[1]["versions"]
    api.call("PUT", "/v2/apps/web", {"cmd": "exec sleep 300"})
    api.settle()
    code, body = api.call("PUT", "/v2/apps/web", {"version": v1})
    assert code == 200
    assert api.call("GET", "/v2/apps/web")[1]["app"]["cmd"] == "exec sleep 100"
    assert api.call("GET", "/v2/apps/web/versions/2000-01-01T00:00:00.000Z")[0] == 404
    assert api.call("PUT", "/v2/apps/web?force=true", {"version": "nope"})[0] == 404


def test_an_upgrade_that_the_quota_cannot_hold_at_its_peak_is_refused(api: Api) -> None:
    api.call("POST", "/v2/apps", {**APP, "instances": 4, "cpus": 0.6})  # 2.4 cpus of 4
    api.run_all()
    code, body = api.call("PATCH", "/v2/apps/web", {"cmd": "exec sleep 1"})  # peak 8 x 0.6
    assert code == 403 and body["quota"] == "cpus" and "maximumOverCapacity" in body["message"]
    code, body = api.call("PATCH", "/v2/apps/web", {"cmd": "exec sleep 1", "upgradeStrategy": {
        "minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}})
    assert code == 200  # peak 4 x 0.6


def test_another_tenant_reaches_nothing(api: Api) -> None:
    api.call("POST", "/v2/apps", APP)
    (dep,) = deployments(api)
    for method, path in (("GET", "/v2/apps/web"), ("GET", "/v2/apps/web/tasks"),
                         ("GET", "/v2/apps/web/versions"), ("POST", "/v2/apps/web/restart"),
                         ("PATCH", "/v2/apps/web"), ("DELETE", "/v2/apps/web"),
                         ("DELETE", f"/v2/deployments/{dep['id']}"),
                         ("DELETE", "/v2/queue/web/delay")):
        code, _ = api.call(method, path, {} if method == "PATCH" else None, token="tok-b")
        assert code == 404, (method, path)
    assert api.call("GET", "/v2/deployments", token="tok-b") == (200, [])
    assert api.call("GET", "/v2/queue", token="tok-b") == (200, {"queue": []})
    assert api.call("GET", "/v2/apps", token="tok-b") == (200, {"apps": []})
    assert len(deployments(api)) == 1 and len(api.instances()) == 2


def test_the_openapi_document_names_the_marathon_calls() -> None:
    paths = set(openapi.document()["paths"])
    assert {"/ping", "/v2/apps/{id}/restart", "/v2/apps/{id}/tasks/{taskId}",
            "/v2/deployments/{id}", "/v2/events", "/metrics/prometheus"} <= paths
