"""hypervm-executor under the real Mesos 1.11 master and agent (``../shared/realmesos``), with
real HyperVMs: what the master and the agent report (status updates, ``/tasks``, ``/state``,
``/files/read``) for a Marathon-style LAUNCH, task groups, kills and a killed executor. One
mesos-local serves the module; each test has its own framework (fixtures in tests/realmesos/)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import finish_grants_of
from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import (  # noqa: F401
    app_task,
    domains,
    executor_info,
    group_op,
    launch_op,
    mesos_task,
    new_executor_id,
    real_mesos,
    scheduler,
)
from tests.realmesos.scheduler import TestScheduler, b64, resources

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600)]
BOOT = 240.0  # a TCG boot takes seconds; leave room for a loaded machine


def states(mesos: RealMesos, task_id: str) -> list[str]:
    """The task's statuses as the master's /tasks lists them."""
    return [s["state"] for s in mesos.tasks()[task_id]["statuses"]]


def test_marathon_style_launch(real_mesos: RealMesos, scheduler: TestScheduler,  # noqa: F811
                               image_ref: str) -> None:
    """LAUNCH as Marathon sends it: custom executor (Marathon's command line), the image as the
    task label, the app JSON in `data`, no command."""
    offer = scheduler.take_offer()
    eid = new_executor_id("m")
    tid = f"hello.{eid}"
    app = {"id": "/hello", "cmd": "echo hello from marathon; echo task $MESOS_TASK_ID",
           "cpus": 0.2, "mem": 64, "instances": 1, "executor": executor_info(eid)["command"]}
    task = {"name": "hello", "task_id": {"value": tid}, "agent_id": offer["agent_id"],
            "resources": resources(0.2, 64), "executor": executor_info(eid, marathon=True),
            "labels": {"labels": [{"key": "hypervm.image", "value": image_ref}]},
            "data": b64(json.dumps(app))}
    scheduler.accept(offer, [launch_op(task)])
    status = scheduler.wait_terminal(tid, BOOT)
    assert status["state"] == "TASK_FINISHED", status
    assert scheduler.states(tid) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert all(s["source"] == "SOURCE_EXECUTOR" for s in scheduler.statuses(tid))
    assert states(real_mesos, tid) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert real_mesos.tasks()[tid]["state"] == "TASK_FINISHED"
    sandbox = real_mesos.executor_directory(eid)
    assert real_mesos.read_file(sandbox / "stdout") == f"hello from marathon\ntask {tid}\n"


def test_task_groups_finish_and_fail_as_the_default_executor(
        real_mesos: RealMesos, scheduler: TestScheduler, image_ref: str) -> None:  # noqa: F811
    """Two LAUNCH_GROUPs in one ACCEPT (two VMs): one of two tasks that finish, and one where a
    task exits 7 (FAILED, the status in the message) and its sibling is KILLED."""
    offer = scheduler.take_offer()
    ok, bad = new_executor_id("g"), new_executor_id("g")
    fid = scheduler.framework_id
    assert fid
    scheduler.accept(offer, [
        group_op(fid, ok, mesos_task(f"{ok}.a", "echo out-a; echo err-a >&2", image_ref, offer),
                 mesos_task(f"{ok}.b", "echo out-b > /mnt/mesos/sandbox/made; echo out-b",
                            image_ref, offer)),
        group_op(fid, bad, mesos_task(f"{bad}.exits", "sleep 1; exit 7", image_ref, offer),
                 mesos_task(f"{bad}.sibling", "sleep 600", image_ref, offer))])
    for tid in (f"{ok}.a", f"{ok}.b"):
        assert scheduler.wait_terminal(tid, BOOT)["state"] == "TASK_FINISHED"
        assert scheduler.states(tid) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        assert states(real_mesos, tid) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    failed = scheduler.wait_terminal(f"{bad}.exits", BOOT)
    assert failed["state"] == "TASK_FAILED" and "status 7" in failed["message"], failed
    sibling = scheduler.wait_terminal(f"{bad}.sibling", 60)
    assert sibling["state"] == "TASK_KILLED", sibling
    tasks = real_mesos.tasks()
    assert tasks[f"{bad}.exits"]["state"] == "TASK_FAILED"
    assert tasks[f"{bad}.sibling"]["state"] == "TASK_KILLED"
    sandbox = real_mesos.executor_directory(ok)
    assert real_mesos.read_file(sandbox / "tasks" / f"{ok}.a" / "stdout") == "out-a\n"
    assert real_mesos.read_file(sandbox / "tasks" / f"{ok}.a" / "stderr") == "err-a\n"
    assert real_mesos.read_file(sandbox / "tasks" / f"{ok}.b" / "made") == "out-b\n"
    # the agent's 0750 root:root sandbox stays as it made it
    assert (sandbox.stat().st_mode & 0o777, sandbox.stat().st_uid) == (0o750, 0)


def wait_output(mesos: RealMesos, path: Path, text: str, timeout: float = 60) -> None:
    mesos.wait(lambda: text in mesos.read_file(path), timeout, f"{text!r} in {path}")


def test_kill_with_a_grace_period(real_mesos: RealMesos, scheduler: TestScheduler,  # noqa: F811
                                  image_ref: str) -> None:
    """KILL with a kill policy: SIGTERM first (the task traps it and goes on), SIGKILL after
    the grace period, TASK_KILLED, the VM gone."""
    offer = scheduler.take_offer()
    eid = new_executor_id("k")
    tid = f"{eid}.t"
    script = 'trap "echo got-term" TERM; echo ready; while true; do sleep 0.2; done'
    scheduler.accept(offer, [launch_op(app_task(tid, script, image_ref, offer, eid))])
    scheduler.wait_state(tid, "TASK_RUNNING", BOOT)
    stdout = real_mesos.executor_directory(eid) / "stdout"
    wait_output(real_mesos, stdout, "ready")
    grace = 4.0
    started = time.monotonic()
    scheduler.kill(tid, offer["agent_id"], grace_s=grace)
    status = scheduler.wait_terminal(tid, 60)
    took = time.monotonic() - started
    assert status["state"] == "TASK_KILLED", status
    assert took >= grace, f"killed after {took:.1f} s, before the {grace} s grace period"
    assert "got-term" in real_mesos.read_file(stdout)
    assert real_mesos.tasks()[tid]["state"] == "TASK_KILLED"
    real_mesos.wait(lambda: not domains(eid), 30, f"the VM of {eid} to go")


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def executor_pid(mesos: RealMesos, executor_id: str) -> int:
    """The executor's pid: the process with its MESOS_EXECUTOR_ID in the container whose pid the
    agent's /containers reports (the posix launcher's helper, or the executor itself)."""
    (container,) = [c for c in mesos.containers() if c["executor_id"] == executor_id]
    top = int(container["status"]["executor_pid"])
    marker = f"MESOS_EXECUTOR_ID={executor_id}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            pid = int(proc.name)
            while pid > 1 and pid != top:
                pid = parent(pid)
        except OSError:
            continue
        if pid == top:
            return int(proc.name)
    raise LookupError(f"no process of executor {executor_id} under pid {top}")


def test_sigkilled_executor(real_mesos: RealMesos, scheduler: TestScheduler,  # noqa: F811
                            image_ref: str) -> None:
    """SIGKILL to the executor: the agent ends the task as Mesos does (the containerizer sees the
    executor exit), and its VM is gone within 10 s (libvirt auto-destroys it)."""
    offer = scheduler.take_offer()
    eid = new_executor_id("x")
    tid = f"{eid}.t"
    scheduler.accept(offer, [launch_op(app_task(tid, "sleep 600", image_ref, offer, eid))])
    scheduler.wait_state(tid, "TASK_RUNNING", BOOT)
    assert domains(eid)
    os.kill(executor_pid(real_mesos, eid), signal.SIGKILL)
    killed = time.monotonic()
    real_mesos.wait(lambda: not domains(eid), 10, f"the VM of {eid} to go", every=0.1)
    vm_gone = time.monotonic() - killed
    # the sandbox's grant outlived its owner (the uid stays out of reuse) until gc finishes it
    assert finish_grants_of(f"hypervm-{eid}-"), "no grant of the killed VM to finish"
    status = scheduler.wait_terminal(tid, 60)
    assert status["state"] == "TASK_FAILED", status
    assert status["source"] == "SOURCE_AGENT"
    assert status["reason"] == "REASON_EXECUTOR_TERMINATED", status
    assert real_mesos.tasks()[tid]["state"] == "TASK_FAILED"
    print(f"VM gone {vm_gone:.2f} s after the executor's SIGKILL; agent: {status}")


def offered_ports(offer: dict[str, Any], count: int) -> list[int]:
    """``count`` ports of the offer that nothing on this host listens on."""
    free = []
    for res in offer["resources"]:
        if res["name"] != "ports":
            continue
        for rng in res["ranges"]["range"]:
            for port in range(rng["begin"], rng["end"] + 1):
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                free.append(port)
                if len(free) == count:
                    return free
    raise AssertionError(f"the offer has fewer than {count} free ports: {offer['resources']}")


#: serves 8080 while the host leaves <sandbox>/up in place; then stops serving and lives on
HEALTH_SCRIPT = ("touch /mnt/mesos/sandbox/up; mkdir -p /www; echo ok > /www/index.html; "
                 "httpd -f -p 8080 -h /www & server=$!; "
                 "while [ -e /mnt/mesos/sandbox/up ]; do sleep 0.3; done; "
                 "kill $server; rm /www/index.html; exec sleep 600")
HEALTH_CHECKS = {
    "COMMAND": {"type": "COMMAND", "command": {"value": "test -e /mnt/mesos/sandbox/up"}},
    "HTTP": {"type": "HTTP", "http": {"port": 8080, "path": "/index.html"}},
    "TCP": {"type": "TCP", "tcp": {"port": 8080}},
}


def test_health_checks(real_mesos: RealMesos, scheduler: TestScheduler,  # noqa: F811
                       image_ref: str) -> None:
    """COMMAND, HTTP and TCP checks (one task group, so one VM, each): the master's /tasks shows
    healthy true; once the task stops serving, healthy false, and after the consecutive
    failures the task is killed (TASK_KILLED, healthy false)."""
    offer = scheduler.take_offer()
    fid = scheduler.framework_id
    assert fid
    tasks: dict[str, str] = {}
    operations = []
    for kind, port in zip(HEALTH_CHECKS, offered_ports(offer, len(HEALTH_CHECKS)),
                          strict=True):
        eid = new_executor_id(kind[0].lower())
        tid = tasks[kind] = f"{eid}.{kind.lower()}"
        check = dict(HEALTH_CHECKS[kind], delay_seconds=0, interval_seconds=1,
                     timeout_seconds=10, consecutive_failures=3, grace_period_seconds=120)
        task = mesos_task(tid, HEALTH_SCRIPT, image_ref, offer, health_check=check, discovery={
            "visibility": "FRAMEWORK", "name": tid,
            "ports": {"ports": [{"number": 8080, "protocol": "tcp"}]}})
        task["resources"] = resources(0.2, 64, ports=(port,))
        operations.append(group_op(fid, eid, task))
    scheduler.accept(offer, operations)

    def healthy(tid: str, value: bool) -> bool:
        return any(s.get("healthy") is value for s in scheduler.statuses(tid))

    def master_healthy(tid: str, value: bool) -> bool:
        return any(s.get("healthy") is value for s in real_mesos.tasks()[tid]["statuses"])

    for kind, tid in tasks.items():
        scheduler.wait(lambda tid=tid: healthy(tid, True), BOOT, f"{kind} check healthy")
        real_mesos.wait(lambda tid=tid: master_healthy(tid, True), 10, f"{tid} healthy: true")
    for tid in tasks.values():
        (real_mesos.executor_directory(tid.split(".")[0]) / "tasks" / tid / "up").unlink()
    for kind, tid in tasks.items():
        status = scheduler.wait_terminal(tid, 90)
        assert status["state"] == "TASK_KILLED" and status.get("healthy") is False, (kind, status)
        unhealthy = [s for s in scheduler.statuses(tid) if s.get("healthy") is False]
        assert unhealthy[0]["state"] == "TASK_RUNNING"
        assert unhealthy[0]["reason"] == "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
        assert master_healthy(tid, False)
        assert real_mesos.tasks()[tid]["state"] == "TASK_KILLED"
