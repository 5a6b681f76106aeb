"""Mesos v1 JSON TaskInfo / TaskGroupInfo (+ ExecutorInfo) → the task descriptions we run.

Pure parsing and validation, no I/O: every invalid input raises
:class:`~hypervm.errors.InvalidSpec` whose field is the JSON path inside the event, e.g.
``task_group.tasks[1].resources.mem``.

Where the image comes from, in order:
1. ``container.mesos.image`` with ``type: DOCKER`` and ``docker.name`` (TaskInfo, LAUNCH and
   LAUNCH_GROUP — the only shape the master accepts in a task group);
2. ``container.docker.image`` with ``container.type: DOCKER`` (LAUNCH only);
3. the task label :data:`IMAGE_LABEL` (``hypervm.image``): Marathon puts an app's ``container``
   on the ExecutorInfo, where the agent would run the *executor* in the image, so a Marathon app
   names its image with this label instead (Marathon copies app labels onto the TaskInfo).
   Such a task has no ``command``: Marathon passes the app definition as JSON in ``data``, whose
   ``cmd``/``args``/``env``/``user`` we use (:func:`marathon_command`).

The command follows Mesos (``CommandInfo``): ``shell`` (default true) runs
``/bin/sh -c value``; ``shell: false`` with a value is ``execv(value, arguments)`` — as in Mesos,
``arguments[0]`` is argv[0], so the guest runs ``[value] + arguments[1:]``; without a value the
image's Entrypoint runs with ``arguments`` (or the image's Cmd when there are none). See
:func:`resolve_argv`, applied once the image config is known.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from executor.mesos.fields import (  # the short names this parser has always used
    duration_s as _duration_s,
)
from executor.mesos.fields import (
    labels as _labels,
)
from executor.mesos.fields import (
    mesos_id as _id,
)
from executor.mesos.fields import (
    number as _num,
)
from executor.mesos.fields import (
    obj as _obj,
)
from executor.mesos.fields import (
    seq as _list,
)
from executor.mesos.fields import (
    text as _str,
)
from executor.mesos.task_credentials import image_credentials
from executor.mesos.task_policy import check_image_source, host_path, sandbox_relative
from hypervm.config import STRICT_MESOS_POLICY, MesosPolicy
from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass
from hypervm.imageprocess import image_argv
from hypervm.podspec import MAX_CPUS, MAX_MEMORY_MIB, MIN_MEMORY_MIB

IMAGE_LABEL = "hypervm.image"
#: the kill grace period when neither the KILL event nor the task sets one (Mesos' default)
DEFAULT_KILL_GRACE_S = 3.0
#: where a task's sandbox appears inside its container (as with Mesos' containerizer)
CONTAINER_SANDBOX = "/mnt/mesos/sandbox"


@frozen_dataclass
class CommandSpec:
    """A CommandInfo, unresolved: the image's Entrypoint/Cmd may still be needed."""

    shell: bool = True
    value: str | None = None
    arguments: tuple[str, ...] = ()
    #: False when the TaskInfo has no ``command`` at all (image Entrypoint + Cmd)
    present: bool = False


@frozen_dataclass
class VolumeSpec:
    """A host directory shared into the container (source: host-absolute or sandbox-relative)."""

    container_path: str
    #: "sandbox_self" (the task's sandbox), "sandbox_parent" (the executor's) or "host"
    kind: str
    source: str
    readonly: bool
    field: str = ""  # JSON path of the source's field, for errors found on the agent


@frozen_dataclass
class HealthCheckSpec:
    type: str  # COMMAND, HTTP or TCP
    delay_s: float = 15.0
    interval_s: float = 10.0
    timeout_s: float = 20.0
    consecutive_failures: int = 3
    grace_period_s: float = 10.0
    command: CommandSpec | None = None
    command_env: tuple[str, ...] = ()
    port: int = 0
    scheme: str = "http"
    path: str = "/"
    statuses: tuple[int, ...] = ()

    def http_ok(self, status: int) -> bool:
        return status in self.statuses if self.statuses else 200 <= status < 400


@frozen_dataclass
class TaskSpec:
    task_id: str
    name: str
    #: JSON path of this task in the event, for error messages
    where: str
    image: str
    command: CommandSpec
    env: tuple[str, ...] = ()
    #: CommandInfo.user; None: the image's user. There is no working dir in a TaskInfo: the
    #: image's WorkingDir applies, as with Mesos' containerizer.
    user: str | None = None
    volumes: tuple[VolumeSpec, ...] = ()
    #: "missing": a cached image is used as is (Mesos' Image.cached, the default); "always":
    #: the tag is looked up again (Image.cached false, DockerInfo.force_pull_image)
    pull_policy: str = "missing"
    cpus: float = 0.0
    mem_mib: float = 0.0
    #: the task's ``disk`` resource: the size of its container's writable layer
    disk_mib: float = 0.0
    kill_grace_s: float | None = None
    health_check: HealthCheckSpec | None = None
    labels: tuple[tuple[str, str], ...] = ()
    #: the task's ``ports`` resource ranges (host ports, begin/end inclusive)
    port_ranges: tuple[tuple[int, int], ...] = ()
    #: (port, protocol) the task listens on: DiscoveryInfo.ports, in order
    container_ports: tuple[tuple[int, str], ...] = ()
    #: the role the task's resources are allocated to (the tenant), if any
    role: str | None = None
    image_credentials: Any = None  #: its registry credentials: executor.mesos.task_credentials


@frozen_dataclass
class ExecutorSpec:
    executor_id: str
    framework_id: str
    cpus: float = 0.0
    mem_mib: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()


def kill_grace_s(kill_policy: Any, where: str) -> float | None:
    """The grace period of a KillPolicy (TaskInfo.kill_policy or Event.Kill.kill_policy)."""
    if kill_policy is None:
        return None
    policy = _obj(kill_policy, where)
    if "grace_period" not in policy:
        return None
    return _duration_s(policy["grace_period"], f"{where}.grace_period")


# ---------------------------------------------------------------------------- resources


def scalar_resources(value: Any, where: str) -> dict[str, float]:
    """Sum the SCALAR resources by name; cpus and mem must be positive when present."""
    totals: dict[str, float] = {}
    for i, res in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        res = _obj(res, at)
        name = _str(res.get("name"), f"{at}.name")
        if res.get("type", "SCALAR") != "SCALAR":
            continue
        amount = _num(_obj(res.get("scalar"), f"{at}.scalar").get("value"),
                      f"{at}.scalar.value")
        totals[name] = totals.get(name, 0.0) + amount
    for name in ("cpus", "mem"):
        if name in totals and totals[name] <= 0:
            raise InvalidSpec(f"{where}.{name}", f"{totals[name]:g} must be positive")
    return totals


def port_ranges(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """The ranges of the RANGES resources named ``ports``."""
    out = []
    for i, res in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        res = _obj(res, at)
        if res.get("name") != "ports" or res.get("type") != "RANGES":
            continue
        ranges = _list(_obj(res.get("ranges"), f"{at}.ranges").get("range", []),
                       f"{at}.ranges.range")
        for j, rng in enumerate(ranges):
            rat = f"{at}.ranges.range[{j}]"
            rng = _obj(rng, rat)
            begin, end = (_num(rng.get(k), f"{rat}.{k}") for k in ("begin", "end"))
            if not (begin.is_integer() and end.is_integer() and 1 <= begin <= end <= 65535):
                raise InvalidSpec(rat, f"[{begin:g}-{end:g}] is not a port range",
                                  hint="use 1 <= begin <= end <= 65535")
            out.append((int(begin), int(end)))
    return tuple(out)


def resource_role(value: Any) -> str | None:
    """``allocation_info.role`` (or the legacy ``role``) of the first resource that has one."""
    for res in value if isinstance(value, list) else []:
        if not isinstance(res, Mapping):
            continue
        info = res.get("allocation_info")
        role = info.get("role") if isinstance(info, Mapping) else res.get("role")
        if isinstance(role, str) and role and role != "*":
            return role
    return None


def discovery_ports(task: Mapping[str, Any], where: str) -> tuple[tuple[int, str], ...]:
    if "discovery" not in task:
        return ()
    at = f"{where}.discovery.ports.ports"
    ports = _obj(_obj(task["discovery"], f"{where}.discovery").get("ports", {}),
                 f"{where}.discovery.ports").get("ports", [])
    out = []
    for i, port in enumerate(_list(ports, at)):
        port = _obj(port, f"{at}[{i}]")
        number = port.get("number")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            raise InvalidSpec(f"{at}[{i}].number", f"{number!r} is not a port number")
        protocol = port.get("protocol", "tcp")
        if not isinstance(protocol, str) or not protocol:
            raise InvalidSpec(f"{at}[{i}].protocol", "expected tcp, udp or both")
        out.append((number, protocol.lower()))
    return tuple(out)


def cpu_limit(tasks: Sequence[TaskSpec], executor: ExecutorSpec | None) -> float:
    """The CPU time the VM may use, in cores: the tasks' and the executor's cpus."""
    return max(0.01, sum(t.cpus for t in tasks) + (executor.cpus if executor else 0.0))


def vm_size(tasks: Sequence[TaskSpec], executor: ExecutorSpec | None) -> tuple[int, int]:
    """(vCPUs, MiB) of the VM for a task group: the overhead policy.

    The VM gets the sum of the tasks' and the executor's cpus (rounded up to whole vCPUs, at
    least 1) and mem (at least podspec.MIN_MEMORY_MIB). QEMU's own overhead is meant to be paid
    by the executor's resources (DEVELOPERS.md: give the ExecutorInfo 0.1 cpus and 64 MB).
    """
    cpus = sum(t.cpus for t in tasks) + (executor.cpus if executor else 0.0)
    mem = sum(t.mem_mib for t in tasks) + (executor.mem_mib if executor else 0.0)
    vcpus = max(1, math.ceil(cpus - 1e-9))
    mib = max(MIN_MEMORY_MIB, math.ceil(mem - 1e-9))
    if vcpus > MAX_CPUS:
        raise InvalidSpec("resources.cpus", f"{cpus:g} cpus is more than a VM can have",
                          hint=f"use at most {MAX_CPUS}")
    if mib > MAX_MEMORY_MIB:
        raise InvalidSpec("resources.mem", f"{mem:g} MB is more than a VM can have")
    return vcpus, mib


# ---------------------------------------------------------------------------- commands


def parse_command(value: Any, where: str) -> tuple[CommandSpec, tuple[str, ...], str | None]:
    """A CommandInfo → (command, env as KEY=VALUE, user)."""
    cmd = _obj(value, where)
    shell = cmd.get("shell", True)
    if not isinstance(shell, bool):
        raise InvalidSpec(f"{where}.shell", "expected true or false")
    raw_value = cmd.get("value")
    if raw_value is not None:
        raw_value = _str(raw_value, f"{where}.value", empty=True)
    arguments = tuple(_str(a, f"{where}.arguments[{i}]", empty=True)
                      for i, a in enumerate(_list(cmd.get("arguments", []), f"{where}.arguments")))
    if shell and not raw_value:
        raise InvalidSpec(f"{where}.value", "a shell command needs a value",
                          hint='set "value": "<command line>" or "shell": false')
    if cmd.get("uris"):
        raise InvalidSpec(f"{where}.uris", "fetching URIs is not supported by hypervm",
                          hint="put the files into the image")
    env = parse_environment(cmd.get("environment"), f"{where}.environment")
    user = cmd.get("user")
    if user is not None:
        user = _str(user, f"{where}.user")
    return CommandSpec(shell=shell, value=raw_value or None, arguments=arguments,
                       present=True), env, user


def parse_environment(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    env = []
    variables = _list(_obj(value, where).get("variables", []), f"{where}.variables")
    for i, var in enumerate(variables):
        at = f"{where}.variables[{i}]"
        var = _obj(var, at)
        name = _str(var.get("name"), f"{at}.name")
        if "=" in name:
            raise InvalidSpec(f"{at}.name", f"{name!r} contains '='")
        if var.get("type", "VALUE") != "VALUE":
            raise InvalidSpec(f"{at}.type", f"{var.get('type')!r} variables are not supported",
                              hint="use type VALUE")
        env.append(f"{name}={_str(var.get('value', ''), f'{at}.value', empty=True)}")
    return tuple(env)


def marathon_command(data: Any, where: str) -> tuple[CommandSpec, tuple[str, ...], str | None]:
    """The command of a Marathon app run by a custom executor.

    Marathon gives such a task no ``command``: it serializes the app definition as JSON into
    ``TaskInfo.data`` (base64). Its ``cmd`` (shell), ``args`` (argv for the image Entrypoint),
    ``env`` (plain string values) and ``user`` apply. Anything else: the image's defaults.
    """
    if not isinstance(data, str) or not data:
        return CommandSpec(), (), None
    try:
        app = json.loads(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error):
        return CommandSpec(), (), None  # not from Marathon: opaque framework data
    if not isinstance(app, dict):
        return CommandSpec(), (), None
    env = tuple(f"{k}={v}" for k, v in (app.get("env") or {}).items() if isinstance(v, str))
    user = app.get("user") if isinstance(app.get("user"), str) and app.get("user") else None
    cmd, args = app.get("cmd"), app.get("args")
    if isinstance(cmd, str) and cmd:
        return CommandSpec(shell=True, value=cmd, present=True), env, user
    if isinstance(args, list) and args:
        arguments = tuple(_str(a, f"{where}.args[{i}]", empty=True) for i, a in enumerate(args))
        return CommandSpec(shell=False, arguments=arguments, present=True), env, user
    return CommandSpec(), env, user


def command_overrides(command: CommandSpec) -> tuple[tuple[str, ...] | None,
                                                      tuple[str, ...] | None]:
    """(entrypoint, command) overrides of the image's Entrypoint/Cmd, as Mesos means them:
    ``shell`` + value runs ``/bin/sh -c value``; ``shell: false`` + value execs value with
    ``arguments[1:]`` (``arguments[0]`` is argv[0]); no value: the arguments replace Cmd."""
    if command.shell and command.value:
        return ("/bin/sh", "-c", command.value), ()
    if command.value:
        return (command.value,), tuple(command.arguments[1:])
    if command.present and command.arguments:
        return None, tuple(command.arguments)
    return None, None


def resolve_argv(command: CommandSpec, entrypoint: Sequence[str] | None,
                 cmd: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The argv the guest runs, from the task's command and the image's Entrypoint/Cmd."""
    ep, args = command_overrides(command)
    return image_argv(tuple(entrypoint or ()), tuple(cmd or ()), entrypoint=ep, command=args,
                      field=f"{where}.command", image_name="the image",
                      hint='set "command": {"value": "..."}')


# ---------------------------------------------------------------------------- container


def _image(task: Mapping[str, Any], where: str, *, group: bool) -> tuple[str, str, str]:
    """The image reference, its pull policy and the JSON path of the field naming it."""
    container = task.get("container")
    if container is not None:
        at = f"{where}.container"
        container = _obj(container, at)
        ctype = container.get("type", "MESOS")
        if ctype == "MESOS" and "mesos" in container:
            mesos = _obj(container["mesos"], f"{at}.mesos")
            if "image" in mesos:
                image = _obj(mesos["image"], f"{at}.mesos.image")
                if image.get("type") != "DOCKER":
                    raise InvalidSpec(f"{at}.mesos.image.type",
                                      f"{image.get('type')!r} images are not supported",
                                      hint="use type DOCKER")
                docker = _obj(image.get("docker"), f"{at}.mesos.image.docker")
                cached = image.get("cached", True)
                if not isinstance(cached, bool):
                    raise InvalidSpec(f"{at}.mesos.image.cached", "must be true or false")
                field = f"{at}.mesos.image.docker.name"
                return _str(docker.get("name"), field), "missing" if cached else "always", field
        elif ctype == "DOCKER":
            if group:
                raise InvalidSpec(f"{at}.type", "DOCKER containers are not allowed in a task "
                                  "group", hint="use type MESOS with mesos.image")
            docker = _obj(container.get("docker"), f"{at}.docker")
            force = docker.get("force_pull_image", False)
            if not isinstance(force, bool):
                raise InvalidSpec(f"{at}.docker.force_pull_image", "must be true or false")
            field = f"{at}.docker.image"
            return _str(docker.get("image"), field), "always" if force else "missing", field
        elif ctype != "MESOS":
            raise InvalidSpec(f"{at}.type", f"unknown container type {ctype!r}")
    for i, (key, value) in enumerate(_labels(task, where)):
        if key == IMAGE_LABEL:
            if not value:
                raise InvalidSpec(f"{where}.labels", f"label {IMAGE_LABEL} is empty")
            return value, "missing", f"{where}.labels.labels[{i}].value"
    raise InvalidSpec(f"{where}.container", "no image given",
                      hint="set container.mesos.image (type DOCKER, docker.name) or the "
                           f"{IMAGE_LABEL} label")


def _volumes(task: Mapping[str, Any], where: str, policy: MesosPolicy) -> tuple[VolumeSpec, ...]:
    container = task.get("container")
    if container is None:
        return ()
    volumes = _list(_obj(container, f"{where}.container").get("volumes", []),
                    f"{where}.container.volumes")
    out = []
    for i, vol in enumerate(volumes):
        at = f"{where}.container.volumes[{i}]"
        out.append(_volume(_obj(vol, at), at, policy))
    return tuple(out)


def _volume(vol: Mapping[str, Any], at: str, policy: MesosPolicy) -> VolumeSpec:
    mode = vol.get("mode")
    if mode not in ("RO", "RW"):
        raise InvalidSpec(f"{at}.mode", f"{mode!r} is not RO or RW")
    path = _str(vol.get("container_path"), f"{at}.container_path")
    if ".." in path.split("/"):
        raise InvalidSpec(f"{at}.container_path", "must not contain '..'")
    if not path.startswith("/"):
        path = f"{CONTAINER_SANDBOX}/{path}"
    readonly = mode == "RO"
    if "source" in vol:
        source = _obj(vol["source"], f"{at}.source")
        stype = source.get("type")
        if stype == "SANDBOX_PATH":
            sandbox = _obj(source.get("sandbox_path"), f"{at}.source.sandbox_path")
            field = f"{at}.source.sandbox_path.path"
            rel = sandbox_relative(_str(sandbox.get("path"), field), field)
            which = sandbox.get("type", "SELF")
            if which not in ("SELF", "PARENT"):
                raise InvalidSpec(f"{at}.source.sandbox_path.type", f"{which!r} is unknown")
            kind = "sandbox_self" if which == "SELF" else "sandbox_parent"
            return VolumeSpec(path, kind, rel, readonly, field)
        if stype == "HOST_PATH":
            host = _obj(source.get("host_path"), f"{at}.source.host_path")
            field = f"{at}.source.host_path.path"
            hpath = host_path(_str(host.get("path"), field), field, policy)
            return VolumeSpec(path, "host", hpath, readonly, field)
        raise InvalidSpec(f"{at}.source.type", f"{stype!r} volumes are not supported",
                          hint="use SANDBOX_PATH or HOST_PATH")
    if "host_path" in vol:  # the legacy form: absolute on the host, else in the task's sandbox
        field = f"{at}.host_path"
        hpath = _str(vol["host_path"], field)
        if hpath.startswith("/"):
            return VolumeSpec(path, "host", host_path(hpath, field, policy), readonly, field)
        return VolumeSpec(path, "sandbox_self", sandbox_relative(hpath, field), readonly, field)
    raise InvalidSpec(f"{at}.source", "is missing")


# ---------------------------------------------------------------------------- health checks


def parse_health_check(value: Any, where: str) -> HealthCheckSpec:
    hc = _obj(value, where)
    htype = hc.get("type")
    if htype is None:  # before Mesos 1.2 the type was implied by the set field
        htype = "COMMAND" if "command" in hc else "HTTP" if "http" in hc else None
    if htype not in ("COMMAND", "HTTP", "TCP"):
        raise InvalidSpec(f"{where}.type", f"{htype!r} is not COMMAND, HTTP or TCP")
    times = {}
    for key, default in (("delay_seconds", 15.0), ("interval_seconds", 10.0),
                         ("timeout_seconds", 20.0), ("grace_period_seconds", 10.0)):
        times[key] = _num(hc.get(key, default), f"{where}.{key}")
        if times[key] < 0:
            raise InvalidSpec(f"{where}.{key}", "must not be negative")
    failures = hc.get("consecutive_failures", 3)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise InvalidSpec(f"{where}.consecutive_failures", f"{failures!r} is not >= 1")
    common: dict[str, Any] = {
        "delay_s": times["delay_seconds"], "interval_s": times["interval_seconds"],
        "timeout_s": times["timeout_seconds"], "grace_period_s": times["grace_period_seconds"],
        "consecutive_failures": failures}
    if htype == "COMMAND":
        command, env, _user = parse_command(hc.get("command"), f"{where}.command")
        return HealthCheckSpec("COMMAND", command=command, command_env=env, **common)
    key = htype.lower()
    section = _obj(hc.get(key), f"{where}.{key}")
    port = section.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidSpec(f"{where}.{key}.port", f"{port!r} is not a port number")
    if htype == "TCP":
        return HealthCheckSpec("TCP", port=port, **common)
    scheme = section.get("scheme", "http")
    if scheme not in ("http", "https"):
        raise InvalidSpec(f"{where}.http.scheme", f"{scheme!r} is not http or https")
    path = section.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidSpec(f"{where}.http.path", f"{path!r} must start with '/'")
    statuses = tuple(int(_num(s, f"{where}.http.statuses[{i}]"))
                     for i, s in enumerate(_list(section.get("statuses", []),
                                                 f"{where}.http.statuses")))
    return HealthCheckSpec("HTTP", port=port, scheme=scheme, path=path, statuses=statuses,
                           **common)


# ---------------------------------------------------------------------------- tasks


def parse_task(value: Any, where: str, group: bool = False,
               policy: MesosPolicy = STRICT_MESOS_POLICY) -> TaskSpec:
    task = _obj(value, where)
    task_id = _id(task, "task_id", where)
    name = _str(task.get("name", task_id), f"{where}.name")
    image, pull_policy, image_field = _image(task, where, group=group)
    check_image_source(image, image_field, policy)
    if "command" in task:
        command, env, user = parse_command(task["command"], f"{where}.command")
    else:
        command, env, user = marathon_command(task.get("data"), f"{where}.data")
    resources = scalar_resources(task.get("resources", []), f"{where}.resources")
    if group and resources.get("cpus", 0) <= 0 and resources.get("mem", 0) <= 0:
        raise InvalidSpec(f"{where}.resources", "a task needs cpus or mem",
                          hint='add {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}')
    health = (parse_health_check(task["health_check"], f"{where}.health_check")
              if "health_check" in task else None)
    return TaskSpec(
        task_id=task_id, name=name, where=where, image=image, pull_policy=pull_policy,
        command=command, env=env, user=user, volumes=_volumes(task, where, policy),
        cpus=resources.get("cpus", 0.0), mem_mib=resources.get("mem", 0.0),
        disk_mib=max(0.0, resources.get("disk", 0.0)),
        kill_grace_s=kill_grace_s(task.get("kill_policy"), f"{where}.kill_policy"),
        health_check=health, labels=_labels(task, where),
        port_ranges=port_ranges(task.get("resources", []), f"{where}.resources"),
        container_ports=discovery_ports(task, where),
        role=resource_role(task.get("resources")),
        image_credentials=image_credentials(task, where),
    )


def parse_launch(event: Any, policy: MesosPolicy = STRICT_MESOS_POLICY) -> TaskSpec:
    """The ``launch`` part of a LAUNCH event: ``{"task": TaskInfo}``."""
    return parse_task(_obj(event, "launch").get("task"), "task", policy=policy)


def parse_task_group(value: Any, where: str = "task_group",
                     policy: MesosPolicy = STRICT_MESOS_POLICY,
                     executor_id: str | None = None) -> tuple[TaskSpec, ...]:
    """A TaskGroupInfo ``{"tasks": [...]}``: the tasks, all valid, with unique IDs.

    The master copies the group's ExecutorInfo into every task's ``executor``
    (src/master/master.cpp, LAUNCH_GROUP); Mesos' default executor ignores it. We accept it when
    it names this executor (``executor_id``), and refuse a task meant for another one."""
    group = _obj(value, where)
    tasks = _list(group.get("tasks"), f"{where}.tasks")
    if not tasks:
        raise InvalidSpec(f"{where}.tasks", "a task group needs at least one task")
    for i, task in enumerate(tasks):
        if isinstance(task, Mapping) and "executor" in task and executor_id is not None:
            named = _id(_obj(task["executor"], f"{where}.tasks[{i}].executor"), "executor_id",
                        f"{where}.tasks[{i}].executor")
            if named != executor_id:
                raise InvalidSpec(f"{where}.tasks[{i}].executor.executor_id",
                                  f"names executor {named!r}, but this is {executor_id!r}")
    specs = tuple(parse_task(t, f"{where}.tasks[{i}]", True, policy) for i, t in enumerate(tasks))
    seen: set[str] = set()
    for spec in specs:
        if spec.task_id in seen:
            raise InvalidSpec(f"{spec.where}.task_id", f"duplicate task ID {spec.task_id!r}")
        seen.add(spec.task_id)
    return specs


def task_ids(value: Any, key: str = "tasks") -> list[str]:
    """Best-effort task IDs of an (invalid) TaskInfo list, to report them FAILED."""
    out = []
    items = value.get(key, []) if isinstance(value, Mapping) else []
    for task in items if isinstance(items, list) else []:
        try:
            out.append(task["task_id"]["value"])
        except (TypeError, KeyError):
            continue
    return [t for t in out if isinstance(t, str) and t]


def parse_executor(executor_info: Any, framework_id: str) -> ExecutorSpec:
    info = _obj(executor_info, "executor_info")
    resources = scalar_resources(info.get("resources", []), "executor_info.resources")
    return ExecutorSpec(
        executor_id=_id(info, "executor_id", "executor_info"), framework_id=framework_id,
        cpus=resources.get("cpus", 0.0), mem_mib=resources.get("mem", 0.0),
        labels=_labels(info, "executor_info"),
    )
