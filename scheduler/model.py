"""The workload model every front end (pods, Marathon apps) is parsed into. Pure data."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hypervm.frozen import frozen_dataclass

#: restart policies: "never", "on-failure" (pods' default), "always" (Marathon apps)
RESTART_POLICIES = ("never", "on-failure", "always")


@frozen_dataclass
class PortSpec:
    name: str
    container_port: int
    #: 0: any port of the offer
    host_port: int = 0


@frozen_dataclass
class ContainerSpec:
    name: str
    image: str
    cpus: float
    mem: float
    #: a shell command (``/bin/sh -c``), or None: the image's entrypoint (+ ``args``)
    cmd: str | None = None
    args: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortSpec, ...] = ()
    #: a Mesos v1 ``HealthCheck`` JSON object, or None
    health_check: dict[str, Any] | None = None
    labels: tuple[tuple[str, str], ...] = ()


@frozen_dataclass
class WorkloadSpec:
    kind: str  # "pod" or "app"
    id: str
    containers: tuple[ContainerSpec, ...]
    instances: int = 1
    restart: str = "on-failure"
    backoff_s: float = 1.0
    backoff_factor: float = 1.15
    max_backoff_s: float = 300.0
    kill_grace_s: float | None = None
    #: the definition as the user sent it (stored; parsed again on load)
    definition: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def cpus(self) -> float:
        """Per instance."""
        return sum(c.cpus for c in self.containers)

    @property
    def mem(self) -> float:
        return sum(c.mem for c in self.containers)

    def backoff(self, failures: int) -> float:
        """Delay before the relaunch that follows ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        try:
            return min(self.max_backoff_s,
                       self.backoff_s * self.backoff_factor ** (failures - 1))
        except OverflowError:  # thousands of failures: the cap, not an exception
            return self.max_backoff_s
