"""pytest fixtures for the real-Mesos tests (import them into a test module): one mesos-local per
module (``REALMESOS_FLAGS`` in the module adds agent/master flags), a fresh framework per test,
and the leak check: no hypervm domain of the session outlives the module or the test."""

from __future__ import annotations

import contextlib
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_TAG, our_domains
from tests.mesos.scheduler_process import SchedulerProcess, TenantDef
from tests.realmesos.cluster import RealMesos, executor_command, missing
from tests.realmesos.scheduler import TestScheduler, b64, resources

#: every executor id (and so every pod / domain name) of the real-Mesos tests starts with it
PREFIX = f"{TEST_TAG}-rm"
_ids = itertools.count(1)


def new_executor_id(kind: str = "") -> str:
    return f"{PREFIX}{next(_ids)}{kind}"


def domains(prefix: str = PREFIX) -> set[str]:
    return our_domains(f"hypervm-{prefix}")


def wait_no_domains(prefix: str = PREFIX, timeout: float = 30) -> set[str]:
    """Wait until no domain of ``prefix`` is left; what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := domains(prefix)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@contextlib.contextmanager
def scheduler_process(mesos: RealMesos, tenants: list[TenantDef], prefix: str
                      ) -> Iterator[SchedulerProcess]:
    """hypervm-scheduler registered with the real master (its executor ids, and so its VMs'
    names, start with ``prefix``). At the end: its log is printed, the operator tears the
    framework down, and no VM of ``prefix`` may be left."""
    work = Path(tempfile.mkdtemp(prefix="hypervm-rmsched-"))
    proc = SchedulerProcess(work, f"http://{mesos.master}", tenants, prefix=prefix)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(proc.log_text()[-6000:])
        for framework in mesos.state()["frameworks"]:
            mesos.teardown(framework["id"])
        left = wait_no_domains(prefix, 60)
        shutil.rmtree(work, ignore_errors=True)
    assert not left, f"VMs left after the framework's teardown: {sorted(left)}"


def executor_info(executor_id: str, marathon: bool = False,
                  framework_id: str | None = None) -> dict[str, Any]:
    """A CUSTOM ExecutorInfo running hypervm-executor (as Marathon writes it, if asked). The
    master requires `disk` and `framework_id` on a task group's executor."""
    path = executor_command()
    value = (f"chmod ug+rx '{path}' && exec '{path}' " if marathon else
             f"exec {shlex.quote(path)}")
    info: dict[str, Any] = {
        "executor_id": {"value": executor_id}, "name": f"hypervm {executor_id}",
        "command": {"value": value, "shell": True}, "resources": resources(0.1, 64, disk=32)}
    if not marathon:  # Marathon sets no type (UNKNOWN: a custom executor)
        info["type"] = "CUSTOM"
    if framework_id:
        info["framework_id"] = {"value": framework_id}
    return info


def image_container(ref: str) -> dict[str, Any]:
    return {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": ref}}}}


def mesos_task(task_id: str, command: str, ref: str, offer: dict[str, Any],
               **extra: Any) -> dict[str, Any]:
    task = {"name": task_id, "task_id": {"value": task_id}, "agent_id": offer["agent_id"],
            "resources": resources(0.2, 64), "container": image_container(ref),
            "command": {"value": command, "shell": True}}
    task.update(extra)
    return task


def app_task(task_id: str, cmd: str, ref: str, offer: dict[str, Any], executor_id: str,
             **extra: Any) -> dict[str, Any]:
    """A TaskInfo for LAUNCH with our executor, the way Marathon builds it: the master refuses
    a task with both an executor and a command, so the command is the app's `cmd` in `data`
    and the image the `hypervm.image` label."""
    app = {"id": f"/{task_id}", "cmd": cmd, "instances": 1}
    task = {"name": task_id, "task_id": {"value": task_id}, "agent_id": offer["agent_id"],
            "resources": resources(0.2, 64), "executor": executor_info(executor_id, True),
            "labels": {"labels": [{"key": "hypervm.image", "value": ref}]},
            "data": b64(json.dumps(app))}
    task.update(extra)
    return task


def launch_op(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "LAUNCH", "launch": {"task_infos": list(tasks)}}


def group_op(framework_id: str, executor_id: str, *tasks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "LAUNCH_GROUP", "launch_group": {
        "executor": executor_info(executor_id, framework_id=framework_id),
        "task_group": {"tasks": list(tasks)}}}


def executor_logs(mesos: RealMesos) -> str:
    out = []
    for log in sorted(mesos.work.glob("mesos/agents/*/work/slaves/*/frameworks/*/executors/*/"
                                      "runs/*/hypervm-executor.log")):
        out.append(f"--- {log}\n{log.read_text(errors='replace')[-4000:]}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def real_mesos(request: pytest.FixtureRequest) -> Iterator[RealMesos]:
    """A mesos-local of its own (work dir, port) for the module; stopped at teardown (which
    ends leftover executors), and no domain of these tests may be left."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="hypervm-realmesos-"))
    work.chmod(0o755)  # an agent's --work_dir must be traversable by QEMU's user
    mesos = RealMesos(work / "work", getattr(request.module, "REALMESOS_FLAGS", {}))
    mesos.start()
    try:
        yield mesos
    finally:
        try:
            mesos.stop()
        finally:
            left = wait_no_domains(timeout=20)
            for name in left:
                import subprocess

                subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name],
                               capture_output=True, check=False)
            shutil.rmtree(work, ignore_errors=True)
    assert not left, f"VMs left after mesos-local stopped: {sorted(left)}"


@pytest.fixture
def scheduler(real_mesos: RealMesos, request: pytest.FixtureRequest) -> Iterator[TestScheduler]:
    """A new framework (checkpointing) for the test; torn down at the end, after which every
    executor must have destroyed its VM. Logs are printed for a failed test."""
    sched = TestScheduler(real_mesos.master, name=request.node.name)
    yield sched
    sched.teardown()
    left = wait_no_domains(timeout=60)
    if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed or left:
        print(f"updates: {sched.summary()}\n--- mesos-local.log\n{real_mesos.log_tail(80)}\n"
              f"{executor_logs(real_mesos)}", file=sys.stderr)
    assert not left, f"VMs left after the framework's teardown: {sorted(left)}"
