"""Pods: a task group (several containers in one HyperVM), as the API's JSON → WorkloadSpec.

``{"id": "web", "restart": "on-failure", "containers": [{"name": "a", "image": "busybox:1.36",
"cmd": "…", "resources": {"cpus": 0.5, "mem": 64}, "env": {…}, "ports": [{"name": "http",
"containerPort": 8080}], "healthCheck": {"command": "…"}}]}``
"""

from __future__ import annotations

from typing import Any

import jsonschema

from hypervm.errors import InvalidSpec
from scheduler import limits
from scheduler.model import ContainerSpec, PortSpec, WorkloadSpec
from scheduler.validation import check_env, check_image, validate, whole_patterns

NAME = {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"}
SECONDS = {"type": "number", "minimum": 0}
HEALTH_CHECK = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "command": {"type": "string", "minLength": 1},
        "tcpPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "httpPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string", "pattern": "^/"},
        "delaySeconds": SECONDS, "intervalSeconds": SECONDS, "timeoutSeconds": SECONDS,
        "gracePeriodSeconds": SECONDS,
        "maxConsecutiveFailures": {"type": "integer", "minimum": 0},
    },
}
CONTAINER = {
    "type": "object", "additionalProperties": False, "required": ["name", "image", "resources"],
    "properties": {
        "name": NAME,
        "image": {"type": "string", "minLength": 1},
        "cmd": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "resources": {
            "type": "object", "additionalProperties": False, "required": ["cpus", "mem"],
            "properties": {"cpus": {"type": "number", "exclusiveMinimum": 0},
                           "mem": {"type": "number", "exclusiveMinimum": 0}},
        },
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "ports": {"type": "array", "maxItems": 16, "items": {
            "type": "object", "additionalProperties": False, "required": ["containerPort"],
            "properties": {"name": NAME,
                           "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                           "hostPort": {"type": "integer", "minimum": 0, "maximum": 65535}}}},
        "healthCheck": HEALTH_CHECK,
    },
}
POD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False, "required": ["id", "containers"],
    "properties": {
        "id": NAME,
        "containers": {"type": "array", "minItems": 1, "maxItems": 16, "items": CONTAINER},
        "restart": {"enum": ["never", "on-failure"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_VALIDATOR = whole_patterns(jsonschema.Draft202012Validator)(limits.capped(POD_SCHEMA))


def parse_pod(data: Any) -> WorkloadSpec:
    """Validate a pod definition; InvalidSpec names the first wrong field and the fix."""
    validate(_VALIDATOR, data)
    names = [c["name"] for c in data["containers"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise InvalidSpec(f"containers[{i}].name", f"{name!r} is used twice in the pod")
    containers = tuple(_container(c, f"containers[{i}]")
                       for i, c in enumerate(data["containers"]))
    return WorkloadSpec(kind="pod", id=data["id"], containers=containers, instances=1,
                        restart=data.get("restart", "on-failure"), definition=data)


def _container(c: dict[str, Any], where: str) -> ContainerSpec:
    if "args" in c and "cmd" in c:
        raise InvalidSpec(f"{where}.args", "cannot be given with cmd",
                          hint="put the arguments into cmd, or use args with the image entrypoint")
    ports = tuple(PortSpec(p.get("name", f"port{j}"), p["containerPort"], p.get("hostPort", 0))
                  for j, p in enumerate(c.get("ports", [])))
    return ContainerSpec(
        name=c["name"], image=check_image(c["image"], f"{where}.image"),
        cpus=float(c["resources"]["cpus"]), mem=float(c["resources"]["mem"]),
        cmd=c.get("cmd"), args=tuple(c["args"]) if "args" in c else None,
        env=check_env(c.get("env", {}), f"{where}.env"), ports=ports,
        health_check=_health_check(c.get("healthCheck"), f"{where}.healthCheck"))


def _health_check(hc: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    if hc is None:
        return None
    kinds = [k for k in ("command", "tcpPort", "httpPort") if k in hc]
    if len(kinds) != 1:
        raise InvalidSpec(where, "needs exactly one of command, tcpPort, httpPort")
    out: dict[str, Any] = {}
    if "command" in hc:
        out = {"type": "COMMAND", "command": {"value": hc["command"]}}
    elif "tcpPort" in hc:
        out = {"type": "TCP", "tcp": {"port": hc["tcpPort"]}}
    else:
        out = {"type": "HTTP", "http": {"port": hc["httpPort"], "path": hc.get("path", "/")}}
    for src, dst in (("delaySeconds", "delay_seconds"), ("intervalSeconds", "interval_seconds"),
                     ("timeoutSeconds", "timeout_seconds"),
                     ("gracePeriodSeconds", "grace_period_seconds"),
                     ("maxConsecutiveFailures", "consecutive_failures")):
        if src in hc:
            out[dst] = hc[src]
    return out
