"""An instance → the Mesos v1 ``ExecutorInfo`` and ``TaskGroupInfo`` of its LAUNCH_GROUP. Pure."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from scheduler.model import ContainerSpec, WorkloadSpec

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ExecutorConfig:
    #: ExecutorInfo.command.value (a shell command line starting hypervm-executor)
    command: str = "hypervm-executor"
    cpus: float = 0.1
    mem: float = 64.0
    #: executor ids (and so VM names) start with it
    prefix: str = "hypervm"


def safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip("/")) or "_"


def task_id(tenant: str, kind: str, wid: str, idx: int, attempt: int, container: str) -> str:
    return f"{tenant}.{kind}.{safe(wid)}.{idx}.{attempt}.{container}"


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
            "resources": [scalar("cpus", cfg.cpus, role), scalar("mem", cfg.mem, role)]}


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
