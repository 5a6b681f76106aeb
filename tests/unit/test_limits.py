"""Container limits in the guest (issue 15, finding 9): from a task's resources and the host's
settings to START's ``limits``, and the OOM reason of an EXIT back to the host."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from executor.guest import protocol as proto
from executor.guest.protocol import ExitStatus
from hypervm.config import DEFAULT_CONTAINER_PIDS, config_from_env
from hypervm.errors import InvalidSpec, ProtocolError
from hypervm.limits import default_limits, task_limits
from hypervm.podspec import Limits

MIB = 1024 * 1024


@dataclass(frozen=True)
class FakeTask:
    mem_mib: float = 0.0
    disk_mib: float = 0.0


def test_a_tasks_mem_and_disk_bound_its_container() -> None:
    cfg = config_from_env({})
    assert task_limits(FakeTask(mem_mib=96, disk_mib=200.5), cfg) == Limits(
        memory_mib=96, pids=DEFAULT_CONTAINER_PIDS, scratch_mib=201)
    # no mem: the VM bounds it; no disk: the host's setting; a tiny mem: init's minimum
    assert task_limits(FakeTask(), cfg) == Limits(pids=DEFAULT_CONTAINER_PIDS)
    assert task_limits(FakeTask(mem_mib=1), cfg).memory_mib == 4


def test_settings_set_pids_and_the_writable_layer() -> None:
    cfg = config_from_env({"HYPERVM_CONTAINER_PIDS": "0", "HYPERVM_WRITABLE_LAYER_MIB": "512"})
    assert default_limits(cfg) == Limits(pids=None, scratch_mib=512)
    assert task_limits(FakeTask(disk_mib=64), cfg).scratch_mib == 64
    with pytest.raises(InvalidSpec, match="HYPERVM_CONTAINER_PIDS"):
        config_from_env({"HYPERVM_CONTAINER_PIDS": "many"})


def test_limits_payload_is_bytes_and_leaves_out_what_is_unlimited() -> None:
    assert proto.limits_payload() is None
    assert proto.limits_payload(64, None, 1024) == {"memory": 64 * MIB, "scratch": 1024 * MIB}
    assert proto.limits_payload(None, 100, None) == {"pids": 100}
    with pytest.raises(ProtocolError, match="limits.memory"):
        proto.limits_payload(memory_mib=3)
    with pytest.raises(ProtocolError, match="limits.pids"):
        proto.limits_payload(pids=1)


@pytest.mark.parametrize(("limits", "field"), [
    (Limits(memory_mib=2), "containers[c].limits.memory"),
    (Limits(pids=1), "containers[c].limits.pids"),
    (Limits(scratch_mib=0), "containers[c].limits.disk"),
])
def test_podspec_names_the_bad_limit(limits: Limits, field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        limits.validate("containers[c].limits")
    assert err.value.field == field


def test_an_oom_exit_is_told_apart() -> None:
    oom = ExitStatus.from_payload({"status": None, "signal": 9, "reason": "oom"})
    assert oom.oom_killed and oom.code == 137
    assert "out of memory" in oom.describe()
    plain = ExitStatus.from_payload({"status": None, "signal": 9})
    assert not plain.oom_killed and "memory" not in plain.describe()
    # a reason this host does not know is no reason; a reason that is no string is garbage
    assert ExitStatus.from_payload({"status": 1, "signal": None, "reason": "x" * 100}).reason \
        is None
    with pytest.raises(ProtocolError):
        ExitStatus.from_payload({"status": None, "signal": 9, "reason": ["oom"] * 1000})
