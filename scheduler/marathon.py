"""Marathon app definitions (``/v2/apps``) → WorkloadSpec: one single-container pod per instance.

The JSON is first validated against Marathon's own AppDefinition schema (so Marathon's app JSON
is accepted as Marathon would), then against the subset hypervm-scheduler implements: a field
Marathon knows but we do not is refused with a message naming it, never silently ignored.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from hypervm.errors import InvalidSpec
from scheduler import limits
from scheduler.model import ContainerSpec, PortSpec, WorkloadSpec
from scheduler.validation import check_env, check_image, validate, whole_patterns

SCHEMA_PATH = Path(__file__).parent / "schemas" / "AppDefinition.json"
IMAGE_LABEL = "hypervm.image"
#: top-level fields we implement; ``executor``, ``upgradeStrategy``, ``version``, ``versionInfo``
#: and ``requirePorts`` are accepted for compatibility and have no effect
SUPPORTED = {"id", "cmd", "args", "cpus", "mem", "disk", "instances", "env", "labels",
             "healthChecks", "portDefinitions", "container", "executor", "executorResources",
             "taskKillGracePeriodSeconds", "backoffSeconds", "backoffFactor",
             "maxLaunchDelaySeconds", "upgradeStrategy", "version", "versionInfo", "requirePorts"}
CONTAINER_FIELDS = {"type", "docker", "portMappings"}
DOCKER_FIELDS = {"image", "forcePullImage"}
HEALTH_FIELDS = {"protocol", "command", "port", "portIndex", "path", "gracePeriodSeconds",
                 "intervalSeconds", "timeoutSeconds", "maxConsecutiveFailures",
                 "delaySeconds"}
DEFAULTS = {"cpus": 1.0, "mem": 128.0, "instances": 1}


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator: jsonschema.protocols.Validator = whole_patterns(jsonschema.Draft4Validator)(
        limits.capped(schema))
    return validator


def normalize_id(app_id: str) -> str:
    return "/" + app_id.strip("/")


def parse_app(data: Any) -> WorkloadSpec:
    """Validate a Marathon app; InvalidSpec names the first wrong or unsupported field."""
    if isinstance(data, dict) and "cmd" in data and "args" in data:
        raise InvalidSpec("args", "cannot be given with cmd (Marathon forbids both)",
                          hint="put the arguments into cmd, or drop cmd")
    limits.check_app_paths(data)  # in linear time, before the schema (which backtracks)
    validate(_validator(), data)
    _refuse_unsupported(data, SUPPORTED, "")
    app_id = normalize_id(data["id"])
    if app_id == "/" or ".." in app_id.split("/"):
        raise InvalidSpec("id", f"{data['id']!r} is not an app id", hint="e.g. /team/web")
    if float(data.get("disk", 0)) > 0:
        raise InvalidSpec("disk", "disk resources are not supported", hint="remove disk")
    container = data.get("container") or {}
    _refuse_unsupported(container, CONTAINER_FIELDS, "container.")
    _refuse_unsupported(container.get("docker") or {}, DOCKER_FIELDS, "container.docker.")
    image = (container.get("docker") or {}).get("image") or data.get("labels", {}).get(
        IMAGE_LABEL)
    if not image:
        raise InvalidSpec("container.docker.image", "is required",
                          hint=f"name the image there or in the label {IMAGE_LABEL}")
    where = "container.docker.image" if (container.get("docker") or {}).get("image") else \
        f"labels.{IMAGE_LABEL}"
    env = data.get("env", {})
    for name, value in env.items():
        if not isinstance(value, str):
            raise InvalidSpec(f"env.{name}", "secrets are not supported", hint="use a string")
    cpus = float(data.get("cpus", DEFAULTS["cpus"]))
    mem = float(data.get("mem", DEFAULTS["mem"]))
    for key, value in (("cpus", cpus), ("mem", mem)):
        if value <= 0:
            raise InvalidSpec(key, f"{value:g} must be greater than 0")
    ports = _ports(data, container)
    args = data.get("args")
    name = app_id.rsplit("/", 1)[-1][:32].strip("-.") or "app"
    box = ContainerSpec(
        name=name, image=check_image(image, where), cpus=cpus, mem=mem, cmd=data.get("cmd"),
        args=tuple(args) if args is not None else None, env=check_env(env, "env"), ports=ports,
        health_check=_health_check(data.get("healthChecks", []), ports),
        labels=tuple(sorted(data.get("labels", {}).items())))
    grace = data.get("taskKillGracePeriodSeconds")
    return WorkloadSpec(
        kind="app", id=app_id, containers=(box,),
        instances=int(data.get("instances", DEFAULTS["instances"])), restart="always",
        backoff_s=float(data.get("backoffSeconds", 1)),
        backoff_factor=float(data.get("backoffFactor", 1.15)),
        max_backoff_s=float(data.get("maxLaunchDelaySeconds", 300)),
        kill_grace_s=float(grace) if grace is not None else None,
        definition={**data, "id": app_id})


def _refuse_unsupported(data: dict[str, Any], supported: set[str], prefix: str) -> None:
    for key in sorted(data):
        if key not in supported:
            raise InvalidSpec(f"{prefix}{key}", "is not supported by hypervm-scheduler",
                              hint=f"remove it; supported here: {', '.join(sorted(supported))}")


def _ports(data: dict[str, Any], container: dict[str, Any]) -> tuple[PortSpec, ...]:
    if data.get("portDefinitions") and container.get("portMappings"):
        raise InvalidSpec("portDefinitions", "cannot be combined with container.portMappings")
    out = []
    for i, p in enumerate(container.get("portMappings") or []):
        if p.get("protocol", "tcp") != "tcp":
            raise InvalidSpec(f"container.portMappings[{i}].protocol", "only tcp is supported")
        out.append(PortSpec(p.get("name", f"port{i}"), p.get("containerPort") or 0,
                            p.get("hostPort", 0)))
    for i, p in enumerate(data.get("portDefinitions") or []):
        if p.get("protocol", "tcp") != "tcp":
            raise InvalidSpec(f"portDefinitions[{i}].protocol", "only tcp is supported")
        port = p.get("port", 0)
        out.append(PortSpec(p.get("name", f"port{i}"), port,
                            port if data.get("requirePorts") else 0))
    return tuple(out)


def _health_check(checks: list[dict[str, Any]], ports: tuple[PortSpec, ...]
                  ) -> dict[str, Any] | None:
    if not checks:
        return None
    if len(checks) > 1:
        raise InvalidSpec("healthChecks[1]", "only one health check per app is supported")
    hc = checks[0]
    _refuse_unsupported(hc, HEALTH_FIELDS, "healthChecks[0].")
    protocol = hc.get("protocol", "HTTP")
    if protocol == "COMMAND":
        value = (hc.get("command") or {}).get("value")
        if not value:
            raise InvalidSpec("healthChecks[0].command.value", "is required for COMMAND")
        out: dict[str, Any] = {"type": "COMMAND", "command": {"value": value}}
    elif protocol in ("HTTP", "MESOS_HTTP", "TCP", "MESOS_TCP"):
        port = hc.get("port")
        if port is None:
            index = hc.get("portIndex", 0)
            if index >= len(ports) or not ports[index].container_port:
                raise InvalidSpec("healthChecks[0].portIndex", f"no port with index {index}",
                                  hint="declare the port in portDefinitions or give port")
            port = ports[index].container_port
        if protocol.endswith("TCP"):
            out = {"type": "TCP", "tcp": {"port": port}}
        else:
            out = {"type": "HTTP", "http": {"port": port, "path": hc.get("path", "/")}}
    else:
        raise InvalidSpec("healthChecks[0].protocol", f"{protocol} is not supported",
                          hint="use COMMAND, HTTP, TCP, MESOS_HTTP or MESOS_TCP")
    for src, dst in (("gracePeriodSeconds", "grace_period_seconds"),
                     ("intervalSeconds", "interval_seconds"),
                     ("timeoutSeconds", "timeout_seconds"), ("delaySeconds", "delay_seconds"),
                     ("maxConsecutiveFailures", "consecutive_failures")):
        if src in hc:
            out[dst] = hc[src]
    return out
