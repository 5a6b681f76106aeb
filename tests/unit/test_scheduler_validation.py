"""Pure validation of hypervm-scheduler input: tenants file, pods, Marathon apps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hypervm.errors import InvalidSpec
from scheduler.errors import ConfigError
from scheduler.marathon import parse_app
from scheduler.pods import parse_pod
from scheduler.tenants import hash_token, load_tenants, parse_tenants

REPO = Path(__file__).resolve().parents[2]
DIGEST = hash_token("s3cret")


def tenant(**over: Any) -> dict[str, Any]:
    return {"id": "acme", "role": "acme", "token_sha256": DIGEST,
            "quota": {"cpus": 2, "mem": 1024, "instances": 4}, **over}


def test_tenants_authenticate_by_hashed_token() -> None:
    tenants = parse_tenants({"tenants": [tenant(), tenant(id="beta", role="beta",
                                                          token_sha256=hash_token("other"))]})
    found = tenants.authenticate("s3cret")
    assert found is not None and found.id == "acme" and found.quota.instances == 4
    assert tenants.authenticate("wrong") is None
    assert tenants.roles == ["acme", "beta"]


@pytest.mark.parametrize(("over", "field"), [
    ({"token": "plain"}, "tenants[0].token"),
    ({"id": "Not Valid"}, "tenants[0].id"),
    ({"role": "a/b"}, "tenants[0].role"),
    ({"token_sha256": "abc"}, "tenants[0].token_sha256"),
    ({"quota": {"cpus": -1, "mem": 1, "instances": 1}}, "tenants[0].quota.cpus"),
    ({"quota": {"cpus": 1, "mem": 1}}, "tenants[0].quota.instances"),
    ({"quota": {"cpus": 1, "mem": 1, "instances": 1, "gpus": 1}}, "tenants[0].quota.gpus"),
    ({"colour": "red"}, "tenants[0].colour"),
])
def test_bad_tenants_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_tenants({"tenants": [tenant(**over)]})
    assert err.value.field == field


def test_two_tenants_cannot_share_a_role() -> None:
    with pytest.raises(InvalidSpec, match=r"tenants\[1\].role"):
        parse_tenants({"tenants": [tenant(), tenant(id="b", token_sha256=hash_token("x"))]})


def test_the_example_tenants_files_load(tmp_path: Path) -> None:
    for path in sorted((REPO / "examples").glob("tenants*")):
        assert load_tenants(path).all
    broken = tmp_path / "t.yaml"
    broken.write_text("tenants: [{id: x")
    with pytest.raises(ConfigError, match="cannot read the tenants file"):
        load_tenants(broken)


def pod(**over: Any) -> dict[str, Any]:
    return {"id": "web", "containers": [
        {"name": "app", "image": "registry.local:5000/team/app:1.2", "cmd": "serve",
         "resources": {"cpus": 0.5, "mem": 64}, "env": {"MODE": "prod"},
         "ports": [{"name": "http", "containerPort": 8080}],
         "healthCheck": {"httpPort": 8080, "path": "/health", "intervalSeconds": 5}},
        {"name": "side", "image": "busybox", "args": ["-c", "true"],
         "resources": {"cpus": 0.1, "mem": 16}}], **over}


def test_a_pod_becomes_a_workload() -> None:
    spec = parse_pod(pod())
    assert (spec.kind, spec.id, spec.instances, spec.restart) == ("pod", "web", 1, "on-failure")
    assert spec.cpus == pytest.approx(0.6) and spec.mem == 80
    app, side = spec.containers
    assert app.env == (("MODE", "prod"),) and app.ports[0].container_port == 8080
    assert app.health_check == {"type": "HTTP", "http": {"port": 8080, "path": "/health"},
                                "interval_seconds": 5}
    assert side.cmd is None and side.args == ("-c", "true")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda p: p["containers"][0]["resources"].update(cpus=0), "containers[0].resources.cpus"),
    (lambda p: p["containers"][1].update(name="app"), "containers[1].name"),
    (lambda p: p["containers"][0].update(image="localhost:5000/UP"), "containers[0].image"),
    (lambda p: p["containers"][0].update(image=""), "containers[0].image"),
    (lambda p: p["containers"][0].update(args=["x"]), "containers[0].args"),
    (lambda p: p["containers"][0]["env"].update({"1BAD": "x"}), "containers[0].env.1BAD"),
    (lambda p: p["containers"][0]["healthCheck"].update(command="x"),
     "containers[0].healthCheck"),
    (lambda p: p["containers"][0]["ports"][0].update(containerPort=70000),
     "containers[0].ports[0].containerPort"),
    (lambda p: p.update(containers=[]), "containers"),
    (lambda p: p.pop("id"), "(body)"),
    (lambda p: p.update(restart="always"), "restart"),
])
def test_bad_pods_name_the_field(mutate: Any, field: str) -> None:
    data = pod()
    mutate(data)
    with pytest.raises(InvalidSpec) as err:
        parse_pod(data)
    assert err.value.field == field, str(err.value)


def test_a_pod_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="is not of type 'object'"):
        parse_pod(["web"])


def test_the_marathon_example_parses() -> None:
    spec = parse_app(json.loads((REPO / "examples/marathon/hello-hypervm.json").read_text()))
    assert (spec.kind, spec.id, spec.restart, spec.kill_grace_s) == (
        "app", "/hypervm/hello", "always", 5.0)
    box = spec.containers[0]
    assert box.image == "docker.io/library/busybox:1.36"
    assert box.health_check is not None and box.health_check["type"] == "COMMAND"


def marathon(**over: Any) -> dict[str, Any]:
    return {"id": "/team/web/", "cmd": "httpd -f", "cpus": 0.5, "mem": 64, "instances": 3,
            "container": {"type": "DOCKER", "docker": {"image": "busybox:1.36"},
                          "portMappings": [{"containerPort": 80, "hostPort": 0,
                                            "name": "http"}]},
            "healthChecks": [{"protocol": "MESOS_HTTP", "portIndex": 0, "path": "/"}],
            "backoffSeconds": 2, "backoffFactor": 2, "maxLaunchDelaySeconds": 10, **over}


def test_a_marathon_app_becomes_a_workload() -> None:
    spec = parse_app(marathon())
    assert spec.id == "/team/web" and spec.instances == 3
    box = spec.containers[0]
    assert box.name == "web" and box.ports[0].container_port == 80
    assert box.health_check == {"type": "HTTP", "http": {"port": 80, "path": "/"}}
    assert [spec.backoff(n) for n in range(5)] == [0, 2, 4, 8, 10]


def test_marathon_defaults() -> None:
    spec = parse_app({"id": "x", "cmd": "true", "labels": {"hypervm.image": "busybox"}})
    assert (spec.cpus, spec.mem, spec.instances) == (1.0, 128.0, 1)


@pytest.mark.parametrize(("over", "field"), [
    ({"uris": ["http://x"]}, "uris"),
    ({"user": "nobody"}, "user"),
    ({"container": {"docker": {"image": "busybox", "privileged": True}}},
     "container.docker.privileged"),
    ({"container": {"docker": {"image": "busybox"}, "volumes": []}}, "container.volumes"),
    ({"env": {"DB": {"secret": "pw"}}}, "env.DB"),
    ({"healthChecks": [{"protocol": "COMMAND"}]}, "healthChecks[0].command.value"),
    ({"healthChecks": [{"protocol": "HTTP", "portIndex": 3}]}, "healthChecks[0].portIndex"),
    ({"disk": 100}, "disk"),
    ({"mem": 0}, "mem"),
    ({"instances": -1}, "instances"),
    ({"id": "/Team"}, "id"),
    ({"args": ["x"]}, "args"),
])
def test_bad_marathon_apps_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_app(marathon(**over))
    assert err.value.field == field, str(err.value)
