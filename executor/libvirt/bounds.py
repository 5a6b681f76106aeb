"""How a VM is bounded on the host by its pod's resources (pure): the libvirt tuning for them."""

from __future__ import annotations

from executor.libvirt.domain import CpuTune, MemTune
from hypervm.podspec import Resources

CFS_PERIOD_US = 100_000
#: what QEMU itself needs besides guest RAM (measured idle RSS overhead under TCG, with room)
QEMU_OVERHEAD_MIB = 128


def resource_bounds(resources: Resources) -> tuple[CpuTune, MemTune]:
    """libvirt tuning that bounds a VM by its resources: a CFS quota per vCPU when the CPU
    limit is below the vCPU count; a memory soft limit of guest RAM plus QEMU's overhead
    allowance (a hard limit needs RLIMIT_MEMLOCK changes some hosts forbid: guest RAM is the
    hard bound of what the task can use)."""
    cputune = CpuTune()
    limit = resources.cpu_limit
    if limit is not None and limit < resources.cpus:
        quota = max(1000, int(CFS_PERIOD_US * limit / resources.cpus))
        cputune = CpuTune(period_us=CFS_PERIOD_US, quota_us=quota)
    return cputune, MemTune(soft_limit_mib=resources.memory_mib + QEMU_OVERHEAD_MIB)
