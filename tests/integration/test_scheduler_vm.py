"""The whole chain for real, once: REST → hypervm-scheduler → master double → agent double →
hypervm-executor → a HyperVM booted by libvirt/QEMU, with an image from a loopback registry."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_TAG, our_domains
from tests.mesos.master import MasterDouble
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.usefixtures("no_leaked_domains")]
BOOT = 180.0
PREFIX = f"{TEST_TAG}-sched"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[MasterDouble, SchedulerProcess]]:
    # QEMU (libvirt-qemu) opens the sandboxes over 9p: they must be traversable by it
    workdir = Path(tempfile.mkdtemp(prefix="hypervm-sched-vm-"))
    workdir.chmod(0o755)
    master = MasterDouble(workdir, runtime=None)
    sched = SchedulerProcess(tmp_path / "scheduler", master.url,
                             [TenantDef("a", "token-a"), TenantDef("b", "token-b")],
                             prefix=PREFIX)
    try:
        sched.start()
        master.wait_subscribed()
        yield master, sched
    finally:
        sched.stop()
        master.stop()
        print(sched.log_text()[-6000:])
        print(master.executor_logs()[-8000:])
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_pod_of_two_containers_runs_in_a_vm_then_finishes(
        cluster: tuple[MasterDouble, SchedulerProcess], image_ref: str) -> None:
    master, sched = cluster
    pod: dict[str, Any] = {"id": "hello", "restart": "never", "containers": [
        {"name": "one", "image": image_ref, "cmd": "sleep 2; echo one",
         "resources": {"cpus": 0.5, "mem": 64}},
        {"name": "two", "image": image_ref, "cmd": "sleep 3; test -d /mnt/mesos/sandbox",
         "resources": {"cpus": 0.5, "mem": 64}, "env": {"WHO": "two"}}]}
    assert sched.request("POST", "/v1/pods", "a", pod)[0] == 201

    def instance() -> dict[str, Any]:
        code, view = sched.request("GET", "/v1/pods/hello", "a")
        assert code == 200, view
        return view["instances"][0]

    running = sched.wait_for(lambda: (i := instance())["state"] == "RUNNING" and i, BOOT,
                             "both containers running")
    assert [t["state"] for t in running["tasks"]] == ["TASK_RUNNING", "TASK_RUNNING"]
    assert {d for d in our_domains(f"hypervm-{PREFIX}")} != set()  # a real VM runs it
    done = sched.wait_for(lambda: (i := instance())["state"] in ("FINISHED", "FAILED") and i,
                          60, "the pod to end")
    assert [(t["container"], t["state"], t["exitCode"]) for t in done["tasks"]] == [
        ("one", "TASK_FINISHED", 0), ("two", "TASK_FINISHED", 0)], done
    assert done["host"] == "localhost"
    for task_id in ("a.pod.hello.0.0.one", "a.pod.hello.0.0.two"):
        assert master.states(task_id) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert sched.request("GET", "/v1/pods/hello", "b")[0] == 404
    (executor,) = master.executors.values()
    assert executor.double is not None
    assert executor.double.wait_executor_exit(60) == 0
    assert our_domains(f"hypervm-{PREFIX}") == set()
    assert master.all_violations() == []
