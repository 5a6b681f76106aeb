"""An instance → the Mesos v1 ``ExecutorInfo`` and ``TaskGroupInfo`` of its LAUNCH_GROUP. Pure."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hypervm.frozen import frozen_dataclass
from scheduler.errors import ConfigError
from scheduler.model import ContainerSpec, WorkloadSpec

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: the master's minimum executor resources; disk must be there and positive (a 0 is dropped)
MIN_CPUS, MIN_MEM, MIN_DISK = 0.01, 32.0, 0.001
#: Mesos ids are at most NAME_MAX (255) characters
MAX_ID = 255


@frozen_dataclass
class ExecutorConfig:
    #: ExecutorInfo.command.value (a shell command line starting hypervm-executor)
    command: str = "hypervm-executor"
    cpus: float = 0.1
    mem: float = 64.0
    #: executor ids (and so VM names) start with it
    prefix: str = "hypervm"
    #: MiB of disk: a real master refuses a LAUNCH_GROUP whose executor has none
    disk: float = 32.0

    def __post_init__(self) -> None:
        """What the Mesos 1.11 master requires of a task group's executor
        (src/master/validation.cpp, MIN_CPUS and MIN_MEM of src/master/constants.hpp)."""
        for option, value, least in (("--executor-cpus", self.cpus, MIN_CPUS),
                                     ("--executor-mem", self.mem, MIN_MEM),
                                     ("--executor-disk", self.disk, MIN_DISK)):
            if not least <= value <= 1e6:
                raise ConfigError(f"{option} {value:g}: the Mesos master needs at least "
                                  f"{least:g} (and we allow at most 1e6)")


def safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip("/")) or "_"


def task_id(tenant: str, kind: str, wid: str, idx: int, attempt: int, container: str) -> str:
    """Readable, and at most 255 characters (the master's limit): a long workload id is
    shortened to its start and a digest."""
    name = safe(wid)
    tail = f".{idx}.{attempt}.{container}"
    room = MAX_ID - len(tenant) - len(kind) - len(tail) - 2
    if len(name) > room:
        digest = hashlib.sha256(wid.encode()).hexdigest()[:16]
        name = f"{name[:max(room - 17, 0)]}-{digest}"
    return f"{tenant}.{kind}.{name}{tail}"


def executor_id(cfg: ExecutorConfig, tenant: str, kind: str, wid: str, idx: int,
                attempt: int) -> str:
    digest = hashlib.sha256(f"{tenant}\0{kind}\0{wid}\0{idx}\0{attempt}".encode()).hexdigest()
    return f"{cfg.prefix}-{digest[:12]}"


def scalar(name: str, value: float, role: str) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": round(value, 3)},
            "allocation_info": {"role": role}}


def port_ranges(ports: list[int], role: str) -> dict[str, Any]:
    return {"name": "ports", "type": "RANGES",
            "ranges": {"range": [{"begin": p, "end": p} for p in sorted(ports)]},
            "allocation_info": {"role": role}}


def executor_info(cfg: ExecutorConfig, eid: str, framework_id: str, role: str
                  ) -> dict[str, Any]:
    return {"executor_id": {"value": eid}, "framework_id": {"value": framework_id},
            "type": "CUSTOM", "name": "hypervm-executor",
            "command": {"value": cfg.command, "shell": True},
            "resources": [scalar("cpus", cfg.cpus, role), scalar("mem", cfg.mem, role),
                          scalar("disk", cfg.disk, role)]}


def task_info(box: ContainerSpec, tid: str, agent_id: str, role: str, host_ports: list[int],
              spec: WorkloadSpec) -> dict[str, Any]:
    resources = [scalar("cpus", box.cpus, role), scalar("mem", box.mem, role)]
    if host_ports:
        resources.append(port_ranges(host_ports, role))
    task: dict[str, Any] = {
        "name": box.name, "task_id": {"value": tid}, "agent_id": {"value": agent_id},
        "resources": resources,
        "container": {"type": "MESOS",
                      "mesos": {"image": {"type": "DOCKER", "docker": {"name": box.image}}}},
    }
    command: dict[str, Any] = {}
    if box.cmd is not None:
        command = {"value": box.cmd, "shell": True}
    elif box.args is not None:
        command = {"shell": False, "arguments": list(box.args)}
    if box.env:
        command.setdefault("shell", False)
        command["environment"] = {"variables": [{"name": k, "value": v} for k, v in box.env]}
    if host_ports:
        # hypervm-executor forwards the i-th host port (ascending) to the i-th discovery port
        # and sets PORT0..N, PORTS, PORT_<containerPort> itself
        pairs = sorted(zip(host_ports, box.ports, strict=True), key=lambda pair: pair[0])
        task["discovery"] = {"visibility": "FRAMEWORK", "name": box.name, "ports": {"ports": [
            {"number": port.container_port or host, "name": port.name, "protocol": "tcp"}
            for host, port in pairs]}}
    if command:
        task["command"] = command
    if box.health_check:
        task["health_check"] = box.health_check
    if box.labels:
        task["labels"] = {"labels": [{"key": k, "value": v} for k, v in box.labels]}
    if spec.kill_grace_s is not None:
        task["kill_policy"] = {"grace_period": {"nanoseconds": int(spec.kill_grace_s * 1e9)}}
    return task
