"""scheduler/marathon_api: the pure parts (rolling upgrade steps, app definitions as clients
send them, Marathon's JSON shapes as the PyPI ``marathon`` client parses them, metrics, the
event bus, authentication headers)."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from marathon.models import MarathonApp, MarathonDeployment
from marathon.models.events import EventFactory
from marathon.models.queue import MarathonQueueItem
from marathon.models.task import MarathonTask

import tests.marathon_client  # noqa: F401 - the client's Python 3.10 bug, patched
from hypervm.errors import InvalidSpec
from scheduler.api import authenticate
from scheduler.marathon import parse_app
from scheduler.marathon_api import appdef, rolling, views
from scheduler.marathon_api.apps import split
from scheduler.marathon_api.events import EventBus, TooManyStreams, event
from scheduler.marathon_api.metrics import Metrics, quantile
from scheduler.marathon_api.resources import group_tree
from scheduler.marathon_api.state import RESTART, START, Deployment
from scheduler.tenants import Quota, Tenant, Tenants, hash_token

REPO = Path(__file__).resolve().parents[2]
#: Marathon's schema (the same file as ../shared/marathon/AppDefinition.json)
SCHEMA = json.loads((REPO / "scheduler" / "schemas" / "AppDefinition.json").read_text())


# ---------------------------------------------------------------------- rolling upgrades

def simulate(target: int, m: float, o: float, n_old: int) -> list[tuple[int, int, int]]:
    """Run next_step until done: new instances get ready one step after their launch, killed
    ones end at the end of the step after their kill. Returns (up, alive, forced) per step."""
    old = [rolling.Inst(i, True) for i in range(n_old)]
    new: list[rolling.Inst] = []
    dying, seen, nxt = 0, [], 100
    for _ in range(100):
        if rolling.done(target, old, new, dying):
            return seen
        new = [rolling.Inst(i.idx, True) for i in new]  # launched last step: ready now
        step = rolling.next_step(target, m, o, old, new, dying)
        ending, dying = dying, len(step.kill)
        min_up, _ = rolling.bounds(target, m, o)
        room = max(0, len(old) + sum(i.ready for i in new) - min_up)
        forced = max(0, len(step.kill) - room)  # kills beyond what the strategy allows
        old = [i for i in old if i.idx not in step.kill]
        new += [rolling.Inst(nxt + k, False) for k in range(step.launch)]
        nxt += step.launch
        seen.append((len(old) + sum(i.ready for i in new),
                     len(old) + len(new) + dying + ending, forced))
    raise AssertionError("the rolling upgrade never finished")


@pytest.mark.parametrize(("target", "m", "o", "n_old"), [
    (3, 0.5, 0.0, 3), (3, 1.0, 1.0, 3), (2, 1.0, 0.0, 2), (4, 0.0, 0.0, 4), (3, 0.5, 0.5, 3),
    (5, 0.8, 0.2, 2), (2, 1.0, 0.5, 5), (0, 1.0, 1.0, 3)])
def test_rolling_upgrade_keeps_capacity_between_the_bounds(target: int, m: float, o: float,
                                                           n_old: int) -> None:
    min_up, max_total = rolling.bounds(target, m, o)
    steps = simulate(target, m, o, n_old)
    assert steps, "an upgrade takes at least one step"
    no_room = min_up == max_total  # e.g. m = 1, o = 0: one old instance goes first
    for up, alive, _ in steps:
        assert alive <= max(max_total, n_old), (up, alive)
        assert up >= min(min_up, n_old) - no_room, (up, alive)
    forced = [f for *_, f in steps]
    assert max(forced) <= 1 and (sum(forced) == 0 or no_room)


def test_rolling_bounds_are_marathons() -> None:
    assert rolling.bounds(3, 0.5, 0.0) == (2, 3)
    assert rolling.bounds(3, 1.0, 1.0) == (3, 6)
    assert rolling.bounds(10, 0.85, 0.15) == (math.ceil(8.5), 11)


def test_old_instances_that_are_not_ready_go_first() -> None:
    old = [rolling.Inst(0, True), rolling.Inst(1, False), rolling.Inst(2, True)]
    step = rolling.next_step(3, 0.5, 0.0, old, [], 0)
    assert step.kill == (1,) and step.launch == 0


def test_no_room_either_way_kills_one_old_instance() -> None:
    old = [rolling.Inst(0, True), rolling.Inst(1, True)]
    assert rolling.next_step(2, 1.0, 0.0, old, [], 0) == rolling.Step((1,), 0)
    # but not while a new one is not ready yet or a killed one still runs
    assert rolling.next_step(2, 1.0, 0.0, old[:1], [rolling.Inst(5, False)], 0).kill == ()
    assert rolling.next_step(2, 1.0, 0.0, old[:1], [], 1).kill == ()


# ---------------------------------------------------------------------- app definitions

def hypervm_app(**over: Any) -> dict[str, Any]:
    return {"id": "/shop/web", "cmd": "exec httpd -f -p 8080", "cpus": 0.25, "mem": 64,
            "instances": 2, "container": {"type": "DOCKER", "docker": {"image": "busybox:1.36"}},
            **over}


#: apps in the style of Marathon's documentation, with what clients add on the way
EXAMPLES_ACCEPTED = [
    {"id": "/basic-0", "cmd": "while true; do echo hi; sleep 5; done", "cpus": 0.1,
     "mem": 32, "instances": 1, "labels": {"hypervm.image": "busybox:1.36"}},
    {"id": "/nginx", "instances": 2, "cpus": 0.25, "mem": 64, "gpus": 0, "constraints": [],
     "killSelection": "YOUNGEST_FIRST", "acceptedResourceRoles": ["*"], "requirePorts": False,
     "container": {"type": "DOCKER", "volumes": [], "docker": {
         "image": "nginx:1.25", "privileged": False, "parameters": [], "forcePullImage": False},
         "portMappings": [{"containerPort": 80, "hostPort": 0, "protocol": "tcp",
                           "name": "http"}]},
     "healthChecks": [{"protocol": "MESOS_HTTP", "portIndex": 0, "path": "/",
                       "gracePeriodSeconds": 30, "intervalSeconds": 10, "timeoutSeconds": 5,
                       "maxConsecutiveFailures": 3, "ignoreHttp1xx": False}],
     "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.2}},
    {**hypervm_app(), "tasksRunning": 2, "tasks": [], "version": "2026-01-01T00:00:00.000Z",
     "versionInfo": {"lastScalingAt": "2026-01-01T00:00:00.000Z"}, "deployments": [],
     "role": "tenant-a"},
    *[json.loads(p.read_text()) for p in sorted((REPO / "examples" / "marathon").glob("*.json"))],
]
EXAMPLES_REFUSED = [
    ({"constraints": [["hostname", "UNIQUE"]]}, "constraints", "not supported"),
    ({"uris": ["http://example.org/app.tgz"]}, "uris", "not supported"),
    ({"fetch": [{"uri": "http://example.org/app.tgz"}]}, "fetch", "not supported"),
    ({"container": {"type": "DOCKER", "docker": {"image": "busybox", "privileged": True}}},
     "container.docker.privileged", "not supported"),
    ({"container": {"type": "DOCKER", "docker": {"image": "busybox"}, "volumes": [
        {"containerPath": "/data", "hostPath": "/srv", "mode": "RW"}]}},
     "container.volumes", "not supported"),
    ({"gpus": 1}, "gpus", "greater than the maximum of 0"),  # capped by the schema
    ({"killSelection": "OLDEST_FIRST"}, "killSelection", "not supported"),
    ({"role": "tenant-b"}, "role", "not this tenant's role"),
    ({"residency": {"taskLostBehavior": "WAIT_FOREVER"}}, "residency", "not supported"),
]


def marathon_valid(app: dict[str, Any]) -> None:
    """Marathon's own schema takes it (when it knows every field: ``role`` and what GET
    returns are newer or read-only)."""
    if set(app) <= set(SCHEMA["properties"]):
        jsonschema.Draft4Validator(SCHEMA).validate(app)


def accept(data: dict[str, Any]) -> Any:
    body = appdef.normalize(data, "tenant-a")
    appdef.check_id(body["id"])
    return parse_app(body)


@pytest.mark.parametrize("app", EXAMPLES_ACCEPTED, ids=lambda a: a["id"])
def test_marathon_example_apps_are_accepted(app: dict[str, Any]) -> None:
    marathon_valid(app)
    spec = accept(app)
    assert spec.id == "/" + app["id"].strip("/") and spec.containers[0].image


@pytest.mark.parametrize(("over", "field", "reason"), EXAMPLES_REFUSED,
                         ids=[f for _, f, _ in EXAMPLES_REFUSED])
def test_marathon_example_apps_are_refused_field_by_field(over: dict[str, Any], field: str,
                                                          reason: str) -> None:
    app = hypervm_app(**over)
    marathon_valid(app)  # valid Marathon, still refused
    with pytest.raises(InvalidSpec) as err:
        accept(app)
    assert err.value.field == field and reason in str(err.value), str(err.value)


@pytest.mark.parametrize("app_id", ["/shop/tasks", "/versions", "/a/restart/b"])
def test_ids_with_marathons_reserved_words_are_refused(app_id: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        accept(hypervm_app(id=app_id))
    assert err.value.field == "id" and "reserved" in str(err.value)


def test_what_get_returns_put_accepts_as_the_same_definition() -> None:
    """The client's update_app sends back what get_app read: no config change seen."""
    original = parse_app(hypervm_app(healthChecks=[{"protocol": "COMMAND",
                                                     "command": {"value": "true"}}]))
    shown = app_json(original.definition)
    client = MarathonApp.from_json(shown)
    client.version = None
    sent = json.loads(client.to_json())
    again = accept(sent)
    assert appdef.without_instances(views.definition(again.definition)) == \
        appdef.without_instances(views.definition(original.definition))
    assert "tasksRunning" in sent and "tasksRunning" not in again.definition


# ---------------------------------------------------------------------- shapes

def app_json(definition: dict[str, Any]) -> dict[str, Any]:
    view = {"id": definition["id"], "definition": definition, "instances": [{"tasks": [{
        "taskId": "a.app.shop_web.0.0.web", "state": "TASK_RUNNING", "healthy": True,
        "agentId": "agent-1", "host": "localhost",
        "ports": [{"name": "http", "containerPort": 80, "hostPort": 31000}]}]}]}
    dep = Deployment("d1", "a", definition["id"], "2026-01-01T00:00:00.000Z", RESTART, (0,),
                     definition, 0.0)
    task = views.task(view["instances"][0]["tasks"][0], definition["id"],
                      {"staged_at": 1.0, "started_at": 2.0, "version": None}, "v1", "tenant-a")
    return views.app(view, version="2026-01-01T00:00:00.000Z",
                     version_info={"lastScalingAt": "2026-01-01T00:00:00.000Z",
                                   "lastConfigChangeAt": "2026-01-01T00:00:00.000Z"},
                     tasks=[task], deployments=[dep],
                     failure={"appId": definition["id"], "host": "localhost", "message": "x",
                              "state": "TASK_FAILED", "taskId": "t", "instanceId": "t",
                              "slaveId": "agent-1", "timestamp": "2026-01-01T00:00:00.000Z",
                              "version": "v1"},
                     embed={"tasks", "counts", "deployments", "lastTaskFailure"})


def test_app_task_deployment_and_queue_shapes_parse_in_the_marathon_client() -> None:
    definition = parse_app(hypervm_app(executorResources={"cpus": 0.1})).definition
    shown = app_json(definition)
    assert "executorResources" not in shown  # the client knows no such field
    app = MarathonApp.from_json(shown)
    assert (app.tasks_running, app.tasks_healthy, app.tasks[0].ports) == (1, 1, [31000])
    assert app.last_task_failure.state == "TASK_FAILED" and app.deployments[0].id == "d1"
    assert isinstance(app.tasks[0], MarathonTask) and app.tasks[0].started_at is not None
    dep = Deployment("d1", "a", "/shop/web", "v", START, (), None, 0.0)
    parsed = MarathonDeployment.from_json(views.deployment(dep))
    assert parsed.total_steps == 2 and parsed.current_actions[0].action == "ScaleApplication"
    item = MarathonQueueItem.from_json(views.queue_item(shown, [{"nextLaunchAt": 105.0}],
                                                        100.0, 50.0))
    assert (item.count, item.delay.time_left_seconds, item.delay.overdue) == (1, 5, False)
    for evt in (event("deployment_info", plan=views.plan(dep, definition),
                      currentStep=views.steps(dep)[0]),
                event("deployment_success", id="d1", plan=views.plan(dep, definition)),
                event("status_update_event", taskId="t", taskStatus="TASK_RUNNING"),
                event("health_status_changed_event", appId="/shop/web", alive=True)):
        assert EventFactory().process(json.loads(json.dumps(evt))).event_type == \
            evt["eventType"]


def test_split_takes_the_sub_resource_off_the_app_id() -> None:
    assert split("shop/web") == ("/shop/web", None, None)
    assert split("shop/web/tasks") == ("/shop/web", "tasks", None)
    assert split("shop/web/tasks/a.app.x.0.0.c") == ("/shop/web", "tasks", "a.app.x.0.0.c")
    assert split("web/versions/2026-01-01T00:00:00.000Z") == (
        "/web", "versions", "2026-01-01T00:00:00.000Z")
    assert split("web/restart") == ("/web", "restart", None)


def test_groups_nest_apps_by_path() -> None:
    root = group_tree([{"id": "/a"}, {"id": "/shop/web"}, {"id": "/shop/db/main"}])
    assert [a["id"] for a in root["apps"]] == ["/a"]
    (shop,) = root["groups"]
    assert shop["id"] == "/shop" and [a["id"] for a in shop["apps"]] == ["/shop/web"]
    assert shop["groups"][0]["id"] == "/shop/db"


# ---------------------------------------------------------------------- metrics

def test_metrics_show_a_tenant_its_own_samples_in_both_formats() -> None:
    metrics = Metrics()
    metrics.launches.labels("a").inc(3)
    metrics.launches.labels("b").inc(5)
    metrics.offers.inc(7)
    metrics.api_latency.labels("GET", "200").observe(0.02)
    doc = metrics.dropwizard("a")
    assert set(doc) == {"version", "gauges", "counters", "histograms", "meters", "timers"}
    assert doc["counters"]["hypervm.scheduler.launches.tenant.a"] == {"count": 3}
    assert doc["counters"]["hypervm.scheduler.offers"] == {"count": 7}
    assert not any("tenant.b" in name for name in doc["counters"])
    (timer,) = doc["timers"].values()
    assert timer["count"] == 1 and 0.02 <= timer["p50"] <= 0.025
    text = metrics.prometheus("a").decode()
    assert 'hypervm_scheduler_launches_total{tenant="a"} 3.0' in text
    assert 'tenant="b"' not in text and "hypervm_scheduler_offers_total 7.0" in text


def test_quantile_from_cumulative_buckets() -> None:
    buckets = [(0.1, 5.0), (0.5, 9.0), (1.0, 10.0), (float("inf"), 10.0)]
    assert (quantile(buckets, 0.5), quantile(buckets, 0.9), quantile(buckets, 1.0)) == (
        0.1, 0.5, 1.0)
    assert quantile([], 0.5) == 0.0


# ---------------------------------------------------------------------- events

def test_events_reach_only_the_tenants_own_streams() -> None:
    bus = EventBus()
    mine, theirs = bus.open("a", frozenset()), bus.open("b", frozenset())
    only = bus.open("a", frozenset({"deployment_success"}))
    bus.publish("a", event("status_update_event", taskId="t"))
    bus.publish("a", event("deployment_success", id="d"))
    assert [mine.queue.get_nowait()["eventType"] for _ in range(2)] == [
        "status_update_event", "deployment_success"]
    assert theirs.queue.empty()
    assert only.queue.get_nowait()["eventType"] == "deployment_success" and only.queue.empty()


def test_streams_are_capped_and_slow_ones_dropped() -> None:
    bus = EventBus(max_streams=3, max_per_tenant=2)
    first = bus.open("a", frozenset())
    bus.open("a", frozenset())
    with pytest.raises(TooManyStreams):
        bus.open("a", frozenset())
    bus.open("b", frozenset())
    with pytest.raises(TooManyStreams):
        bus.open("c", frozenset())
    for i in range(first.queue.maxsize + 1):
        bus.publish("a", event("status_update_event", n=i))
    assert first.dropped
    frames = list(bus.sse(first, "127.0.0.1", heartbeat_s=0.01))
    assert frames[0].startswith(b"event: event_stream_attached\ndata: ")
    assert bus.streams() == 2  # the dropped stream closed itself


# ---------------------------------------------------------------------- authentication

def test_tokens_are_accepted_as_marathon_clients_send_them() -> None:
    tenants = Tenants([Tenant("a", "tenant-a", hash_token("tok-a"), Quota(1, 1, 1))])

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert authenticate(tenants, "Bearer tok-a").id == "a"
    assert authenticate(tenants, "token=tok-a").id == "a"
    assert authenticate(tenants, basic("a", "tok-a")).id == "a"
    for header in (basic("b", "tok-a"), basic("a", "wrong"), "Basic !!!", "token=wrong",
                   "Bearer wrong", "tok-a", ""):
        assert authenticate(tenants, header) is None, header


def test_api_latency_labels_come_from_a_fixed_set() -> None:
    """A client sending made-up methods must not mint new time series."""
    import falcon
    import falcon.testing

    from scheduler.marathon_api.metrics import LatencyMiddleware

    class Ok:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {}

    metrics = Metrics()
    app = falcon.App(middleware=[LatencyMiddleware(metrics)])
    app.add_route("/x", Ok())
    for method in ("GET", "FROB", "X-" + "A" * 50, "GET"):
        falcon.testing.simulate_request(app, method=method, path="/x")
    series = {tuple(sorted(s.labels.items())) for m in metrics.registry.collect()
              for s in m.samples if s.name.endswith("_count")}
    assert {labels[0] for labels in series} == {("method", "GET"), ("method", "OTHER")}
    assert len(series) == 2


def test_an_apps_history_is_bounded() -> None:
    from scheduler.marathon_api import state
    from scheduler.store import Store

    store = Store(":memory:")
    state.install(store)
    with store.tx() as db:
        for i in range(state.MAX_VERSIONS + 10):
            last = state.add_version(db, "a", "/web", {"id": "/web", "instances": i}, True)
        kept = state.versions(db, "a", "/web")
    assert len(kept) == state.MAX_VERSIONS and kept[0] == last
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept)


def test_closing_the_bus_ends_every_stream() -> None:
    """At shutdown: a stream waiting for events would hold a server thread for its heartbeat."""
    bus = EventBus()
    stream = bus.open("a", frozenset())
    frames = bus.sse(stream, "127.0.0.1", heartbeat_s=60)
    assert next(frames).startswith(b"event: event_stream_attached")
    bus.close_all()
    assert list(frames) == [] and bus.streams() == 0
