"""The bounds of a container inside its VM (init/PROTOCOL.md START ``limits``): its cgroup's
memory.max and pids.max, and the size of its writable layer.

Pure: from a Mesos task's resources (``mem``, ``disk``) and the host's settings
(``HYPERVM_CONTAINER_PIDS``, ``HYPERVM_WRITABLE_LAYER_MIB``).
"""

from __future__ import annotations

import math

from hypervm.config import HostConfig
from hypervm.podspec import MIN_LIMIT_MEMORY_MIB, Limits

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def default_limits(cfg: HostConfig) -> Limits:
    """A container with no resources of its own (``hypervm run``): the VM's RAM bounds its
    memory (an OOM kill is still reported as one), the host's settings the rest."""
    return Limits(pids=cfg.container_pids, scratch_mib=cfg.writable_layer_mib)


def task_limits(task: Any, cfg: HostConfig) -> Limits:
    """A Mesos task's container (``task``: a taskinfo.TaskSpec): memory.max = its ``mem``, the
    writable layer = its ``disk`` (else the host's setting), as Mesos' containerizer bounds
    them; the OOM kill is the task's REASON_CONTAINER_LIMITATION_MEMORY."""
    memory = max(MIN_LIMIT_MEMORY_MIB, math.ceil(task.mem_mib)) if task.mem_mib > 0 else None
    disk = math.ceil(task.disk_mib) if task.disk_mib > 0 else cfg.writable_layer_mib
    return Limits(memory_mib=memory, pids=cfg.container_pids, scratch_mib=disk)
