"""What the Mesos 1.11 master checks of an ACCEPT's offers and LAUNCH_GROUP operations, with its
messages (src/master/validation.cpp, src/common/validation.cpp, Resources::validate in
src/common/resources.cpp, MIN_CPUS/MIN_MEM in src/master/constants.hpp, tag 1.11.0).

The real master answers an invalid LAUNCH_GROUP with ``TASK_ERROR`` (``SOURCE_MASTER``,
``REASON_TASK_GROUP_INVALID``, the message below) for every task of the group, and an ACCEPT of
offers that are no longer valid with ``TASK_LOST`` (``TASK_DROPPED`` for PARTITION_AWARE
frameworks, ``REASON_INVALID_OFFERS``); the call itself gets ``202``. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MIN_CPUS = 0.01
MIN_MEM_MB = 32
NAME_MAX = 255


@dataclass
class Context:
    """What the master knows when it validates one LAUNCH_GROUP."""

    framework_id: str
    agent_id: str
    role: str
    #: what is left of the offered resources (amounts of tests.mesos.master_resources)
    offered: dict[str, Any]
    #: ids of the framework's tasks that are not terminal
    active_task_ids: set[str] = field(default_factory=set)
    #: ExecutorInfo of the framework's executors on this agent, by id
    executors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the resource names in the offer's order (the master's messages list them so)
    order: tuple[str, ...] = ("ports", "cpus", "mem", "disk")


# ---------------------------------------------------------------- stringify as Mesos does

def scalar_text(value: float) -> str:
    return f"{round(value, 3):g}"


def resource_text(r: dict[str, Any]) -> str:
    out = r.get("name", "")
    if r.get("allocation_info"):
        out += f"(allocated: {r['allocation_info'].get('role', '')})"
    out += ":"
    if r.get("type") == "RANGES":
        out += "[" + ", ".join(f"{x['begin']}-{x['end']}"
                               for x in r.get("ranges", {}).get("range", [])) + "]"
    elif r.get("type") == "SET":
        out += "{" + ",".join(r.get("set", {}).get("item", [])) + "}"
    else:
        out += scalar_text(r.get("scalar", {}).get("value", 0))
    return out


def resources_text(resources: Iterable[dict[str, Any]]) -> str:
    return "; ".join(resource_text(r) for r in resources)


def merged(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``Resources`` sum: the same name and role add up (scalars; ranges are joined), in the
    order of first appearance."""
    from tests.mesos.master_resources import ranges

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in resources:
        key = (r["name"], (r.get("allocation_info") or {}).get("role", ""))
        if key not in out:
            out[key] = {**r, "scalar": dict(r.get("scalar", {}))} if r.get("type") == "SCALAR" \
                else {**r, "ranges": {"range": list(r.get("ranges", {}).get("range", []))}}
        elif r.get("type") == "SCALAR":
            out[key]["scalar"]["value"] += r["scalar"]["value"]
        else:
            out[key]["ranges"]["range"] += r.get("ranges", {}).get("range", [])
    for r in out.values():
        if r.get("type") == "RANGES":
            ports = {p for x in r["ranges"]["range"] for p in range(x["begin"], x["end"] + 1)}
            r["ranges"] = {"range": [{"begin": b, "end": e} for b, e in ranges(ports)]}
    return list(out.values())


def resources_json(resources: list[dict[str, Any]]) -> str:
    """stringify(RepeatedPtrField<Resource>): protobuf JSON, keys sorted, doubles as such."""
    import json

    def fix(r: dict[str, Any]) -> dict[str, Any]:
        if "scalar" in r:
            return {**r, "scalar": {"value": float(r["scalar"]["value"])}}
        return r
    return json.dumps([fix(r) for r in resources], sort_keys=True, separators=(",", ":"))


def bytes_text(mb: float) -> str:
    """stout's Bytes of ``Resources::mem()`` (whole megabytes): the largest unit that loses
    nothing."""
    n = int(mb) * (1 << 20)
    if n == 0:
        return "0B"
    for unit, size, bigger in (("B", 1, 1 << 10), ("KB", 1 << 10, 1 << 20),
                               ("MB", 1 << 20, 1 << 30), ("GB", 1 << 30, 1 << 40)):
        if n % bigger:
            return f"{n // size}{unit}"
    return f"{n // (1 << 40)}TB"


# ---------------------------------------------------------------- common validation

def validate_id(value: str) -> str | None:
    if not value:
        return "ID must not be empty"
    if len(value) > NAME_MAX:
        return f"ID must not be greater than {NAME_MAX} characters"
    if value in (".", ".."):
        return f"'{value}' is disallowed"
    if any(ord(c) < 32 or ord(c) == 127 or c in "/\\" for c in value):
        return f"'{value}' contains invalid characters"
    return None


def validate_environment(command: dict[str, Any]) -> str | None:
    for var in (command.get("environment") or {}).get("variables", []):
        kind = var.get("type", "VALUE")
        if kind == "VALUE" and "value" not in var:
            return f"Environment variable '{var.get('name', '')}' of type 'VALUE' must have " \
                   "a value set"
        if kind == "VALUE" and "secret" in var:
            return f"Environment variable '{var.get('name', '')}' of type 'VALUE' must not " \
                   "have a secret set"
        if kind == "SECRET" and "secret" not in var:
            return f"Environment variable '{var.get('name', '')}' of type 'SECRET' must have " \
                   "a secret set"
        if kind == "UNKNOWN":
            return "Environment variable of type 'UNKNOWN' is not allowed"
    return None


def validate_container(container: dict[str, Any]) -> str | None:
    for volume in container.get("volumes", []):
        if sum(k in volume for k in ("host_path", "image", "source")) != 1:
            return "Invalid volume: Only one of them should be set: 'host_path', 'image' and " \
                   "'source'"
    if container.get("type") == "DOCKER" and "docker" not in container:
        return "DockerInfo 'docker' is not set for DOCKER typed ContainerInfo"
    return None


def validate_health_check(hc: dict[str, Any]) -> str | None:
    kind = hc.get("type")
    if kind is None:
        return "HealthCheck must specify 'type'"
    if kind == "COMMAND":
        if "command" not in hc:
            return "Expecting 'command' to be set for COMMAND health check"
        if "value" not in hc["command"]:
            shell = hc["command"].get("shell", True)
            return "Command health check must contain " + (
                "'shell command'" if shell else "'executable path'")
        error = validate_environment(hc["command"])
        if error:
            return f"Health check's `CommandInfo` is invalid: {error}"
    elif kind == "HTTP":
        http = hc.get("http")
        if http is None:
            return "Expecting 'http' to be set for HTTP health check"
        if http.get("scheme", "http") not in ("http", "https"):
            return f"Unsupported HTTP health check scheme: '{http['scheme']}'"
        if "path" in http and not http["path"].startswith("/"):
            return f"The path '{http['path']}' of HTTP health check must start with '/'"
    elif kind == "TCP":
        if "tcp" not in hc:
            return "Expecting 'tcp' to be set for TCP health check"
    else:
        return f"'{kind}' is not a valid health check type"
    for name in ("delay_seconds", "grace_period_seconds", "interval_seconds",
                 "timeout_seconds"):
        if hc.get(name, 0) < 0:
            return f"Expecting '{name}' to be non-negative"
    return None


def validate_resource(r: dict[str, Any]) -> str | None:
    if not r.get("name"):
        return "Empty resource name"
    kind = r.get("type")
    if kind == "SCALAR":
        if "scalar" not in r or "ranges" in r or "set" in r:
            return "Invalid scalar resource"
        value = r["scalar"].get("value", 0)
        if value != 0 and round(value, 3) <= 0:
            return "Invalid scalar resource: value <= 0"
    elif kind == "RANGES":
        if "scalar" in r or "ranges" not in r or "set" in r:
            return "Invalid ranges resource"
        ranges = r["ranges"].get("range", [])
        for i, a in enumerate(ranges):
            if a["begin"] > a["end"]:
                return "Invalid ranges resource: begin > end"
            for b in ranges[i + 1:]:
                if a["begin"] <= b["begin"] <= a["end"]:
                    return "Invalid ranges resource: overlapping ranges"
    elif kind == "SET":
        items = r.get("set", {}).get("item", [])
        if "scalar" in r or "ranges" in r or "set" not in r:
            return "Invalid set resource"
        if len(items) != len(set(items)):
            return "Invalid set resource: duplicated elements"
    else:
        return "Unsupported resource type"
    if "disk" in r and r["name"] != "disk":
        return f"DiskInfo should not be set for {r['name']} resource"
    return None


def validate_resources(resources: list[dict[str, Any]]) -> str | None:
    """resource::validate + validateAllocatedToSingleRole, without the caller's prefix."""
    for r in resources:
        error = validate_resource(r)
        if error:
            return f"Invalid resources: Resource '{resource_text(r)}' is invalid: {error}"
    return None


def single_role(resources: list[dict[str, Any]]) -> str | None:
    role = None
    for r in resources:
        mine = (r.get("allocation_info") or {}).get("role")
        if mine is None:
            return "The resources are not allocated to a role"
        if role is not None and mine != role:
            return (f"The resources have multiple allocation roles ('{mine}' and '{role}') but "
                    "only one allocation role is allowed")
        role = mine
    return None


# ---------------------------------------------------------------- the task group

def inject_allocation(resources: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """The master gives resources without ``allocation_info`` the offer's."""
    return [r if r.get("allocation_info") else {**r, "allocation_info": {"role": role}}
            for r in resources]


def validate_task(task: dict[str, Any], executor: dict[str, Any], ctx: Context) -> str | None:
    tid = task["task_id"]["value"]
    error = validate_id(tid)
    if error:
        return error
    if tid in ctx.active_task_ids:
        return f"Task has duplicate ID: {tid}"
    agent = task.get("agent_id", {}).get("value", "")
    if agent != ctx.agent_id:
        return f"Task uses invalid agent {agent} while agent {ctx.agent_id} is expected"
    grace = (task.get("kill_policy") or {}).get("grace_period", {}).get("nanoseconds", 0)
    if grace < 0:
        return "Task's 'kill_policy.grace_period' must be non-negative"
    if task.get("max_completion_time", {}).get("nanoseconds", 0) < 0:
        return "Task's `max_completion_time` must be non-negative"
    if "health_check" in task:
        error = validate_health_check(task["health_check"])
        if error:
            return f"Task uses invalid health check: {error}"
    resources = task.get("resources", [])
    if not resources:
        return "Task uses no resources"
    error = validate_resources(resources)
    if error:
        return f"Task uses invalid resources: {error}"
    error = single_role(resources)
    if error:
        return f"Invalid task resources: {error}"
    error = validate_environment(task.get("command") or {})
    if error:
        return f"Task's `CommandInfo` is invalid: {error}"
    container = task.get("container")
    if container:
        error = validate_container(container)
        if error:
            return f"Task's `ContainerInfo` is invalid: {error}"
    if task.get("limits"):
        return "Agent is not capable of handling task resource limits"
    # what a task group adds (the master has set TaskInfo.executor to the group's)
    if container and container.get("network_infos") and task.get("health_check", {}).get(
            "type") in ("HTTP", "TCP"):
        return "HTTP and TCP health checks are not supported for nested containers not " \
               "joining parent's network"
    if container and container.get("type") == "DOCKER":
        return "Docker ContainerInfo is not supported on the task"
    return None


def validate_executor(executor: dict[str, Any], ctx: Context) -> str | None:
    eid = executor.get("executor_id", {}).get("value", "")
    kind = executor.get("type")
    if kind == "DEFAULT" and "command" in executor:
        return "'ExecutorInfo.command' must not be set for 'DEFAULT' executor"
    if kind == "CUSTOM" and "command" not in executor:
        return "'ExecutorInfo.command' must be set for 'CUSTOM' executor"
    error = validate_id(eid)
    if error:
        return error
    if executor.get("shutdown_grace_period", {}).get("nanoseconds", 0) < 0:
        return "ExecutorInfo's 'shutdown_grace_period' must be non-negative"
    error = validate_environment(executor.get("command") or {})
    if error:
        return f"Executor's `CommandInfo` is invalid: {error}"
    if executor.get("container"):
        error = validate_container(executor["container"])
        if error:
            return f"Executor's `ContainerInfo` is invalid: {error}"
    if "framework_id" not in executor:
        return "'ExecutorInfo.framework_id' must be set"
    if executor["framework_id"].get("value") != ctx.framework_id:
        return (f"ExecutorInfo has an invalid FrameworkID (Actual: "
                f"{executor['framework_id'].get('value')} vs Expected: {ctx.framework_id})")
    resources = executor.get("resources", [])
    error = validate_resources(resources)
    if error:
        return f"Executor uses invalid resources: {error}"
    error = single_role(resources)
    if error:
        return f"Invalid executor resources: {error}"
    known = ctx.executors.get(eid)
    if known is not None and known != executor:
        return "ExecutorInfo is not compatible with existing ExecutorInfo with same ExecutorID"
    if kind is None:
        return "'ExecutorInfo.type' must be set"
    if kind == "UNKNOWN":
        return "Unknown executor type"
    if (executor.get("container") or {}).get("type") == "DOCKER":
        return "Docker ContainerInfo is not supported on the executor"
    return None


def _total(resources: list[dict[str, Any]], name: str) -> float | None:
    found = [r["scalar"]["value"] for r in resources if r.get("name") == name
             and r.get("type") == "SCALAR" and r["scalar"].get("value", 0) != 0]
    return sum(found) if found else None


def validate_group_resources(executor: dict[str, Any], tasks: list[dict[str, Any]],
                             ctx: Context) -> str | None:
    from tests.mesos.master_resources import amounts

    eid = executor["executor_id"]["value"]
    own = executor.get("resources", [])
    cpus, mem, disk = _total(own, "cpus"), _total(own, "mem"), _total(own, "disk")
    if cpus is None or cpus < MIN_CPUS:
        return (f"Executor '{eid}' uses less CPUs ({'None' if cpus is None else scalar_text(cpus)})"
                f" than the minimum required ({MIN_CPUS:g})")
    if mem is None or int(mem) < MIN_MEM_MB:  # Resources::mem() is whole megabytes
        return (f"Executor '{eid}' uses less memory "
                f"({'None' if mem is None else bytes_text(mem)}) than the minimum required "
                f"({bytes_text(MIN_MEM_MB)})")
    if disk is None:
        return f"Executor '{eid}' uses no disk"
    groups = [t.get("resources", []) for t in tasks] + [own]
    seen: set[int] = set()
    for resources in groups:
        ports = amounts(resources)["ports"]
        if ports & seen:
            tasks_text = ", ".join(resources_text(merged(t.get("resources", []))) for t in tasks)
            return ("There are overlapping resources in the task group's task resources "
                    f"[ {tasks_text} ] and/or executor resources {resources_json(own)}")
        seen |= ports
    total = [r for t in tasks for r in t.get("resources", [])]
    if eid not in ctx.executors:
        total += own
    if any((r.get("allocation_info") or {}).get("role") != ctx.role or r.get("reservations")
           or r.get("disk") for r in total) or not _contains(ctx.offered, amounts(total)):
        return (f"Total resources {resources_text(merged(total))} required by task group and "
                f"its executor are more than available {_offered_text(ctx)}")
    return None


def _contains(offered: dict[str, Any], used: dict[str, Any]) -> bool:
    for name, amount in used.items():
        if name == "ports":
            if not amount <= offered.get("ports", set()):
                return False
        elif amount > offered.get(name, 0.0) + 1e-6:
            return False
    return True


def _offered_text(ctx: Context) -> str:
    from tests.mesos.master_resources import ranges

    alloc = {"role": ctx.role}
    out = []
    names = [*ctx.order, *sorted(set(ctx.offered) - set(ctx.order))]
    for name in names:
        value = ctx.offered.get(name)
        if name == "ports" and value:
            out.append({"name": "ports", "type": "RANGES", "allocation_info": alloc, "ranges": {
                "range": [{"begin": b, "end": e} for b, e in ranges(value)]}})
        elif name != "ports" and value is not None and value > 1e-9:
            out.append({"name": name, "type": "SCALAR", "scalar": {"value": value},
                        "allocation_info": alloc})
    return resources_text(out)


def validate_launch_group(op: dict[str, Any], ctx: Context) -> str | None:
    """The master's error for this LAUNCH_GROUP (``op['launch_group']``), or None.

    Resources without ``allocation_info`` must have been given the offer's role
    (:func:`inject_allocation`) first, as the master does."""
    executor = op["executor"]
    tasks = op["task_group"].get("tasks", [])
    # validateAndUpgradeResources comes first, and its message has no prefix
    for resources in [executor.get("resources", []), *(t.get("resources", []) for t in tasks)]:
        for r in resources:
            error = validate_resource(r)
            if error:
                return f"Resource '{resource_text(r)}' is invalid: {error}"
    for task in tasks:
        if "executor" in task and task["executor"] != executor:
            return (f"The `ExecutorInfo` of task '{task['task_id']['value']}' is different from "
                    f"executor '{executor.get('executor_id', {}).get('value', '')}'")
    for task in tasks:
        error = validate_task(task, executor, ctx)
        if error:
            return f"Task '{task['task_id']['value']}' is invalid: {error}"
    return validate_executor(executor, ctx) or validate_group_resources(executor, tasks, ctx)


def validate_offers(offer_ids: list[str], offers: dict[str, tuple[str, str, str]]
                    ) -> str | None:
    """validation::offer::validate; ``offers``: id → (framework id, agent id, role)."""
    if len(set(offer_ids)) != len(offer_ids):
        dup = next(o for o in offer_ids if offer_ids.count(o) > 1)
        return f"Duplicate offer {dup} in offer list"
    for oid in offer_ids:
        if oid not in offers:
            return f"Offer {oid} is no longer valid"
    roles = {offers[o][2] for o in offer_ids}
    if len(roles) > 1:
        first, *_ = offer_ids
        other = next(o for o in offer_ids if offers[o][2] != offers[first][2])
        return (f"Aggregated offers must be allocated to the same role. Offer {other} uses role "
                f"'{offers[other][2]} but another is using role '{offers[first][2]}")
    agents = {offers[o][1] for o in offer_ids}
    if len(agents) > 1:
        first, *_ = offer_ids
        other = next(o for o in offer_ids if offers[o][1] != offers[first][1])
        return (f"Aggregated offers must belong to one single agent. Offer {other} uses agent "
                f"{offers[other][1]} and agent {offers[first][1]}")
    return None


# ---------------------------------------------------------------- SUBSCRIBE

def validate_role(role: str) -> str | None:
    """roles::validate (src/common/roles.cpp)."""
    if role == "*":
        return None
    if role.startswith("/"):
        return f"Role '{role}' cannot start with a slash"
    if role.endswith("/"):
        return f"Role '{role}' cannot end with a slash"
    if "//" in role:
        return f"Role '{role}' cannot contain two adjacent slashes"
    components = [c for c in role.split("/") if c]
    if not components:
        return "Role names cannot be the empty string"
    for component in components:
        if component in (".", "..", "*"):
            return f"Role '{role}' cannot include '{component}' as a component"
        if component.startswith("-"):
            return f"Role component '{component}' is invalid because it starts with a dash"
        if any(c in "\x08\x0b\x0c\n\r\t " for c in component):
            return (f"Role component '{component}' is invalid because it contains backspace "
                    "or whitespace")
    return None


def validate_framework(info: dict[str, Any]) -> str | None:
    """framework::validate: the roles (MULTI_ROLE or not) and the id."""
    multi = "MULTI_ROLE" in {c.get("type") for c in info.get("capabilities", [])}
    roles = info.get("roles", [])
    if multi and "role" in info:
        return "'FrameworkInfo.role' must not be set when the framework is MULTI_ROLE capable"
    if not multi and roles:
        return ("'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE "
                "capable")
    if multi:
        duplicates = sorted({r for r in roles if roles.count(r) > 1})
        if duplicates:
            return f"'FrameworkInfo.roles' contains duplicate items: {{ {', '.join(duplicates)} }}"
        for role in roles:
            error = validate_role(role)
            if error:
                return f"'FrameworkInfo.roles' contains invalid role: {error}"
    else:
        error = validate_role(info.get("role", "*"))
        if error:
            return f"'FrameworkInfo.role' is not a valid role: {error}"
    framework_id = (info.get("id") or {}).get("value")
    return validate_id(framework_id) if framework_id else None


# ---------------------------------------------------------------- every call

_BODY_OF = {"ACCEPT": "accept", "DECLINE": "decline", "KILL": "kill", "SHUTDOWN": "shutdown",
            "ACKNOWLEDGE": "acknowledge", "RECONCILE": "reconcile", "MESSAGE": "message",
            "REQUEST": "request", "ACCEPT_INVERSE_OFFERS": "accept_inverse_offers",
            "DECLINE_INVERSE_OFFERS": "decline_inverse_offers",
            "ACKNOWLEDGE_OPERATION_STATUS": "acknowledge_operation_status",
            "RECONCILE_OPERATIONS": "reconcile_operations",
            "UPDATE_FRAMEWORK": "update_framework"}


def validate_call(call: dict[str, Any], principal: str | None = None) -> str | None:
    """scheduler::call::validate: the master answers ``400 Failed to validate
    scheduler::Call: <this>``."""
    import base64
    import binascii

    kind = call.get("type")
    if kind is None:
        return "Expecting 'type' to be present"
    if kind == "SUBSCRIBE":
        if "subscribe" not in call:
            return "Expecting 'subscribe' to be present"
        info = call["subscribe"].get("framework_info", {})
        if (info.get("id") or {}).get("value", "") != (call.get("framework_id") or {}).get(
                "value", ""):
            return "'framework_id' differs from 'subscribe.framework_info.id'"
        if principal is not None and "principal" in info and info["principal"] != principal:
            return (f"Authenticated principal '{principal}' does not match principal "
                    f"'{info['principal']}' set in `FrameworkInfo`")
        return None
    if "framework_id" not in call:
        return "Expecting 'framework_id' to be present"
    body = _BODY_OF.get(kind)
    if body is not None and body not in call:
        return f"Expecting '{body}' to be present"
    if kind == "ACKNOWLEDGE":
        try:
            raw = base64.b64decode(call["acknowledge"].get("uuid", ""), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            return f"Invalid UUID: {call['acknowledge'].get('uuid', '')!r} is not 16 bytes"
    return None
