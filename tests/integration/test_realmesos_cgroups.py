"""The real Mesos agent with the linux launcher and cgroups isolation (cgroup v1): the executor
runs in its container's cgroups with the limits Mesos set; where its VM's QEMU runs, and what
the agent's resource statistics therefore show (DEVELOPERS.md, "Real Mesos vs our doubles")."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import (  # noqa: F401
    app_task,
    launch_op,
    new_executor_id,
    real_mesos,
    scheduler,
)
from tests.realmesos.scheduler import TestScheduler

CGROUPS_ROOT = f"hypervm-test-{os.getpid()}"
REALMESOS_FLAGS = {
    "MESOS_LAUNCHER": "linux",
    "MESOS_ISOLATION": "filesystem/linux,namespaces/pid,cgroups/cpu,cgroups/mem",
    "MESOS_CGROUPS_ROOT": CGROUPS_ROOT,
}
pytestmark = [
    pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
    pytest.mark.skipif(not Path("/sys/fs/cgroup/memory").is_dir()
                       or not Path("/sys/fs/cgroup/cpu").is_dir(),
                       reason="Mesos 1.11's cgroups isolators need cgroup v1 cpu and memory"),
]
BOOT = 240.0


def cgroups(pid: int) -> dict[str, str]:
    """controller -> cgroup path of a process (cgroup v1)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            out[controller] = path
    return out


def qemu_pid(domain_prefix: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"guest={domain_prefix}"], capture_output=True,
                         text=True, check=False).stdout.split()
    assert out, f"no QEMU for {domain_prefix}"
    return int(out[0])


@pytest.fixture
def running(real_mesos: RealMesos, scheduler: TestScheduler,  # noqa: F811
            image_ref: str) -> tuple[str, dict[str, object]]:
    offer = scheduler.take_offer()
    eid = new_executor_id("c")
    tid = f"{eid}.t"
    scheduler.accept(offer, [launch_op(app_task(tid, "echo up; exec sleep 600", image_ref,
                                                offer, eid))])
    scheduler.wait_state(tid, "TASK_RUNNING", BOOT)
    (container,) = [c for c in real_mesos.containers() if c["executor_id"] == eid]
    return eid, container


def test_executor_runs_in_its_container_cgroups(running: tuple[str, dict]) -> None:
    eid, container = running
    cid = container["container_id"]
    pid = container["status"]["executor_pid"]
    groups = cgroups(pid)
    assert groups["cpu"] == groups["memory"] == f"/{CGROUPS_ROOT}/{cid}"
    stats = container["statistics"]
    # the container's limits: the executor's resources + the task's (0.1 + 0.2 cpus,
    # 64 + 64 MB); the VM gets the same (vCPUs rounded up, guest RAM = the sum)
    assert stats["cpus_soft_limit"] == pytest.approx(0.3)
    assert stats["mem_limit_bytes"] == 128 << 20
    limit = Path(f"/sys/fs/cgroup/memory/{CGROUPS_ROOT}/{cid}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 128 << 20


@pytest.mark.xfail(strict=True, reason="libvirt puts QEMU in its own cgroup (/machine/...): "
                   "the agent neither accounts nor bounds the VM (DEVELOPERS.md)")
def test_qemu_is_accounted_to_the_container(running: tuple[str, dict]) -> None:
    eid, container = running
    qemu = cgroups(qemu_pid(f"hypervm-{eid}"))
    print(f"QEMU cgroups: {qemu}; agent statistics: {container['statistics']}")
    assert qemu["cpu"].startswith(f"/{CGROUPS_ROOT}/{container['container_id']}")
    assert qemu["memory"].startswith(f"/{CGROUPS_ROOT}/{container['container_id']}")
