"""Offers → LAUNCH_GROUP operations. Pure: no driver, no database.

An offer is allocated to one role (``allocation_info.role``); only the instances of the tenant
owning that role are placed on it, first come first served, as long as cpus, mem and ports last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypervm.frozen import frozen_dataclass
from scheduler.model import WorkloadSpec
from scheduler.store import InstanceKey, LaunchRecord
from scheduler.taskgroup import ExecutorConfig, executor_id, executor_info, task_id, task_info


@dataclass
class OfferedResources:
    cpus: float = 0.0
    mem: float = 0.0
    disk: float = 0.0
    ports: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, offer: dict[str, Any]) -> OfferedResources:
        out = cls()
        for r in offer.get("resources", []):
            if r["name"] == "cpus":
                out.cpus += r["scalar"]["value"]
            elif r["name"] == "mem":
                out.mem += r["scalar"]["value"]
            elif r["name"] == "disk" and not r.get("disk"):  # plain disk, no volume
                out.disk += r["scalar"]["value"]
            elif r["name"] == "ports":
                for rng in r.get("ranges", {}).get("range", []):
                    out.ports.extend(range(int(rng["begin"]), int(rng["end"]) + 1))
        return out


@frozen_dataclass
class Pending:
    key: InstanceKey
    attempt: int
    spec: WorkloadSpec


@frozen_dataclass
class Launch:
    pending: Pending
    executor_id: str
    records: list[LaunchRecord]
    operation: dict[str, Any]


def offer_role(offer: dict[str, Any]) -> str | None:
    info = offer.get("allocation_info") or {}
    if "role" in info:
        return info["role"]
    for r in offer.get("resources", []):
        if "role" in (r.get("allocation_info") or {}):
            return r["allocation_info"]["role"]
    return None


def plan(offer: dict[str, Any], role: str, pending: list[Pending], cfg: ExecutorConfig,
         framework_id: str) -> list[Launch]:
    """The launches that fit ``offer``, in ``pending`` order (one LAUNCH_GROUP each)."""
    free = OfferedResources.of(offer)
    agent_id = offer["agent_id"]["value"]
    launches = []
    for item in pending:
        spec = item.spec
        need_cpus = spec.cpus + cfg.cpus
        need_mem = spec.mem + cfg.mem
        if (need_cpus > free.cpus + 1e-9 or need_mem > free.mem + 1e-9
                or cfg.disk > free.disk + 1e-9):
            continue
        ports = _pick_ports(spec, free.ports)
        if ports is None:
            continue
        free.cpus -= need_cpus
        free.mem -= need_mem
        free.disk -= cfg.disk
        free.ports = [p for p in free.ports if p not in {p for ps in ports for p in ps}]
        launches.append(_launch(item, agent_id, role, ports, cfg, framework_id))
    return launches


def _pick_ports(spec: WorkloadSpec, available: list[int]) -> list[list[int]] | None:
    left = list(available)
    out: list[list[int]] = []
    for box in spec.containers:
        mine = []
        for port in box.ports:
            if port.host_port:
                if port.host_port not in left:
                    return None
                chosen = port.host_port
            elif left:
                chosen = left[0]
            else:
                return None
            left.remove(chosen)
            mine.append(chosen)
        out.append(mine)
    return out


def _launch(item: Pending, agent_id: str, role: str, ports: list[list[int]],
            cfg: ExecutorConfig, framework_id: str) -> Launch:
    key, spec = item.key, item.spec
    eid = executor_id(cfg, key.tenant, key.kind, key.workload, key.idx, item.attempt)
    tasks, records = [], []
    for box, host_ports in zip(spec.containers, ports, strict=True):
        tid = task_id(key.tenant, key.kind, key.workload, key.idx, item.attempt, box.name)
        tasks.append(task_info(box, tid, agent_id, role, host_ports, spec))
        records.append(LaunchRecord(tid, box.name, [
            {"name": p.name, "containerPort": p.container_port, "hostPort": h}
            for p, h in zip(box.ports, host_ports, strict=True)]))
    operation = {"type": "LAUNCH_GROUP", "launch_group": {
        "executor": executor_info(cfg, eid, framework_id, role),
        "task_group": {"tasks": tasks}}}
    return Launch(item, eid, records, operation)
