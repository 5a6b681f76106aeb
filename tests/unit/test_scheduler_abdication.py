"""``DELETE /v2/leader`` (Marathon: the leader abdicates, ``{"message": "Leadership
abdicated"}``; ``404 "There is no leader"`` when there is none): the resource, alone and in an
HA group, the operator-only rule, a standby's gate, the delay before leaving the election, and
the tenants file's ``operator``. The handover itself, with ZooKeeper, is in
``test_scheduler_ha.py``."""

from __future__ import annotations

import time

import falcon.testing
import pytest

from hypervm.errors import InvalidSpec
from scheduler import ha
from scheduler.api import make_app
from scheduler.leader_proxy import LeaderGate
from scheduler.marathon_api.hub import MarathonHub
from scheduler.marathon_api.resources import ServerInfo
from scheduler.service import Workloads
from scheduler.store import Store
from scheduler.tenants import Quota, Tenant, Tenants, hash_token, parse_tenants

OPS = Tenant("ops", "ops", hash_token("tok-ops"), Quota(1, 64, 1), operator=True)
A = Tenant("a", "tenant-a", hash_token("tok-a"), Quota(1, 64, 1))
TENANTS = Tenants([OPS, A])


def api(abdicate: object = None) -> falcon.testing.TestClient:
    store = Store(":memory:")
    workloads = Workloads(store)
    hub = MarathonHub(store, TENANTS, ServerInfo("hypervm-scheduler", "127.0.0.1:8080", "", 0,
                                                 "hypervm-executor", "root"),
                      workloads=workloads, abdicate=abdicate)  # type: ignore[arg-type]
    return falcon.testing.TestClient(make_app(workloads, TENANTS, hub))


def delete_leader(client: falcon.testing.TestClient, token: str | None) -> falcon.testing.Result:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.simulate_delete("/v2/leader", headers=headers)


def test_the_leader_of_a_group_abdicates_as_marathon_answers() -> None:
    calls: list[bool] = []
    client = api(lambda: calls.append(True))
    resp = delete_leader(client, "tok-ops")
    assert (resp.status_code, resp.json) == (200, {"message": "Leadership abdicated"})
    assert calls == [True]
    assert client.simulate_get("/v2/leader", headers={"Authorization": "Bearer tok-a"}
                               ).json == {"leader": "127.0.0.1:8080"}


def test_only_an_operator_tenant_may_make_the_leader_abdicate() -> None:
    calls: list[bool] = []
    client = api(lambda: calls.append(True))
    assert delete_leader(client, None).status_code == 401
    resp = delete_leader(client, "tok-a")  # it would move every tenant's API and framework
    assert resp.status_code == 403 and "operator: true" in resp.json["message"]
    assert calls == []


def test_a_scheduler_without_an_election_has_no_leader_to_abdicate() -> None:
    resp = delete_leader(api(None), "tok-ops")
    assert resp.status_code == 404 and resp.json["message"].startswith(
        "There is no leader to abdicate")


def test_a_standby_without_a_leader_answers_404_and_forwards_to_one() -> None:
    gate = LeaderGate(lambda: None, "127.0.0.1:1", TENANTS)
    client = falcon.testing.TestClient(gate)  # type: ignore[arg-type]
    assert delete_leader(client, None).status_code == 401
    resp = delete_leader(client, "tok-a")
    assert (resp.status_code, resp.json["message"]) == (404, "There is no leader")
    # with a leader, DELETE goes there (it is the leader that abdicates): here it is down
    gate = LeaderGate(lambda: "127.0.0.1:1", "127.0.0.1:2", TENANTS)
    resp = delete_leader(falcon.testing.TestClient(gate), "tok-ops")  # type: ignore[arg-type]
    assert resp.status_code == 503 and "127.0.0.1:1 does not answer" in resp.json["message"]


def test_the_group_leaves_the_election_after_the_answer_went_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ha, "ABDICATION_DELAY", 0.3)
    group = ha.Group(ha.parse_zk("zk://127.0.0.1:1/x"), "127.0.0.1:2", 10)  # not started
    assert not group.abdicated
    group.abdicate()
    assert not group.abdicated  # not at once: the 200 must reach the client first
    time.sleep(0.35)
    group.abdicate()  # a second request does not push it back
    assert group.abdicated
    group.leadership.client.close()


def test_the_tenants_file_names_operators() -> None:
    base = {"id": "ops", "token_sha256": hash_token("t"),
            "quota": {"cpus": 1, "mem": 1, "instances": 1}}
    assert parse_tenants({"tenants": [{**base, "operator": True}]}).all[0].operator
    assert not parse_tenants({"tenants": [base]}).all[0].operator
    with pytest.raises(InvalidSpec, match=r"tenants\[0\]\.operator"):
        parse_tenants({"tenants": [{**base, "operator": "yes"}]})
