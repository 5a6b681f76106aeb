"""How a pod's resources bound its VM (libvirt cputune/memtune), and the Mesos cpus → limit."""

from __future__ import annotations

import pytest

from executor.libvirt.bounds import CFS_PERIOD_US, QEMU_OVERHEAD_MIB, resource_bounds
from hypervm.errors import InvalidSpec
from hypervm.podspec import Resources


def test_fractional_cpus_get_a_cfs_quota() -> None:
    cputune, memtune = resource_bounds(Resources(cpus=1, memory_mib=256, cpu_limit=0.5))
    assert (cputune.period_us, cputune.quota_us) == (CFS_PERIOD_US, CFS_PERIOD_US // 2)
    assert memtune.soft_limit_mib == 256 + QEMU_OVERHEAD_MIB


def test_quota_is_per_vcpu() -> None:
    cputune, _ = resource_bounds(Resources(cpus=2, memory_mib=256, cpu_limit=1.5))
    assert cputune.quota_us == int(CFS_PERIOD_US * 0.75)


@pytest.mark.parametrize("limit", [None, 2.0])
def test_whole_vcpus_need_no_quota(limit: float | None) -> None:
    cputune, _ = resource_bounds(Resources(cpus=2, memory_mib=256, cpu_limit=limit))
    assert cputune.empty


@pytest.mark.parametrize("limit", [0.0, 3.0])
def test_limit_must_fit_the_vcpus(limit: float) -> None:
    with pytest.raises(InvalidSpec, match="cpus"):
        Resources(cpus=2, cpu_limit=limit).validate()


def test_mesos_cpus_become_the_limit() -> None:
    from types import SimpleNamespace

    from executor.mesos.taskinfo import cpu_limit, vm_size

    tasks = [SimpleNamespace(cpus=0.2, mem_mib=32.0), SimpleNamespace(cpus=0.2, mem_mib=32.0)]
    executor = SimpleNamespace(cpus=0.1, mem_mib=32.0)
    assert cpu_limit(tasks, executor) == pytest.approx(0.5)  # type: ignore[arg-type]
    assert vm_size(tasks, executor)[0] == 1  # type: ignore[arg-type]
