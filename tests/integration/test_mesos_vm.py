"""hypervm-executor with real HyperVMs and a real registry, driven by the Mesos agent double."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TEST_TAG, finish_grants_of, our_domains
from tests.mesos.fixtures import vm_agents

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.usefixtures("no_leaked_domains")]
BOOT = 180.0  # TCG boots take ~10 s; leave room for a loaded CI machine
EXECUTOR_ID = f"{TEST_TAG}-mesos"


@pytest.fixture
def vm_agent() -> Iterator[Any]:
    with vm_agents("hypervm-mesos-vm-", EXECUTOR_ID, 8000) as make:
        yield make


def task(tid: str, command: str, ref: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": {"value": tid}, "name": tid,
        "container": {"type": "MESOS",
                      "mesos": {"image": {"type": "DOCKER", "docker": {"name": ref}}}},
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 96}}],
        "command": {"value": command}}
    out.update(extra)
    return out


def domains() -> set[str]:
    return our_domains(f"hypervm-{EXECUTOR_ID}")


def test_group_of_two_from_a_registry_image(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent()
    agent.launch_group([task("a", "echo out-a; echo err-a >&2", image_ref),
                        task("b", "sleep 1; echo out-b; echo b > /mnt/mesos/sandbox/made; "
                                  "ls /mnt/mesos/sandbox", image_ref)])
    for tid in ("a", "b"):
        assert agent.wait_terminal(tid, BOOT)["state"] == "TASK_FINISHED"
        assert agent.states(tid) == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.wait_executor_exit(60) == 0
    tasks = agent.sandbox / "tasks"
    assert (tasks / "a" / "stdout").read_text() == "out-a\n"
    assert (tasks / "a" / "stderr").read_text() == "err-a\n"
    # the guest writes into its sandbox (9p): the file is there on the host
    assert (tasks / "b" / "stdout").read_text().split() == ["out-b", "made", "stderr", "stdout"]
    assert (tasks / "b" / "made").read_text() == "b\n"
    assert agent.violations == []
    assert domains() == set()


def test_failing_task_kills_a_sibling_that_ignores_sigterm(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent()
    grace = {"grace_period": {"nanoseconds": 2_000_000_000}}
    agent.launch_group([task("bad", "sleep 2; exit 5", image_ref),
                        task("stubborn", "trap '' TERM; while true; do sleep 1; done", image_ref,
                             kill_policy=grace)])
    bad = agent.wait_terminal("bad", BOOT)
    assert bad["state"] == "TASK_FAILED" and "status 5" in bad["message"]
    killed_at = time.monotonic()
    stubborn = agent.wait_terminal("stubborn", 30)
    assert stubborn["state"] == "TASK_KILLED" and "SIGKILL" in stubborn["message"]
    assert time.monotonic() - killed_at >= 1.5
    assert agent.wait_executor_exit(60) == 0
    assert agent.violations == []


def test_agent_restart_keeps_the_vm_and_loses_no_update(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent(auto_ack=False)
    agent.launch_group([task("t", "sleep 8; echo done", image_ref)])
    agent.wait_state("t", "TASK_RUNNING", BOOT)
    before = set(agent.unacked)
    running = domains()
    assert len(running) == 1
    agent.restart(down_for=10)  # the task finishes while the agent is down
    agent.wait_subscribed(timeout=30)
    assert domains() == running or agent.terminal("t") is not None
    assert before <= {u["status"]["uuid"] for u in agent.subscribes[-1]["unacknowledged_updates"]}
    agent.auto_ack = True
    agent.ack_all()
    assert agent.wait_terminal("t", 60)["state"] == "TASK_FINISHED"
    assert agent.wait_executor_exit(60) == 0
    assert agent.unacked == {}
    assert agent.violations == []


def test_sigkill_of_the_executor_leaves_no_domain(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent()
    agent.launch(task("t", "sleep 600", image_ref))
    agent.wait_state("t", "TASK_RUNNING", BOOT)
    assert len(domains()) == 1
    os.killpg(agent.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while domains() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert domains() == set()
    # the sandbox's grant outlived its owner (the uid stays out of reuse) until gc finishes it
    assert finish_grants_of(f"hypervm-{EXECUTOR_ID}"), "no grant of the killed VM to finish"


def test_unknown_image_fails_without_a_vm(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent()
    missing = image_ref.rsplit("/", 1)[0] + "/no-such-image:1"
    agent.launch(task("t", "true", missing))
    status = agent.wait_terminal("t", BOOT)
    assert status["state"] == "TASK_FAILED"
    assert "no-such-image" in status["message"]
    assert agent.wait_executor_exit(60) == 0
    assert sorted(p.name for p in agent.sandbox.iterdir()) == [
        "hypervm-executor.log", "stderr", "stdout"]
    assert domains() == set()


def test_failing_command_health_check_kills_the_task(vm_agent: Any, image_ref: str) -> None:
    agent = vm_agent()
    check = {"type": "COMMAND", "command": {"value": "test -e /tmp/alive"}, "delay_seconds": 1,
             "interval_seconds": 1, "timeout_seconds": 10, "consecutive_failures": 2,
             "grace_period_seconds": 0}
    agent.launch(task("t", "touch /tmp/alive; sleep 6; rm /tmp/alive; sleep 600", image_ref,
                      health_check=check))
    status = agent.wait_terminal("t", BOOT + 60)
    assert status["state"] == "TASK_KILLED" and status["healthy"] is False
    health = [s["healthy"] for s in agent.statuses("t")
              if s.get("reason") == "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"]
    assert health[0] is True and health[-2:] == [False, False]
    assert agent.wait_executor_exit(60) == 0


def test_published_ports_reach_the_task(vm_agent: Any, image_ref: str) -> None:
    from tests.integration.registry import free_port

    agent = vm_agent()
    port = free_port()
    resources = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                 {"name": "mem", "type": "SCALAR", "scalar": {"value": 96}},
                 {"name": "ports", "type": "RANGES",
                  "ranges": {"range": [{"begin": port, "end": port}]}}]
    agent.launch(task("p", "echo port=$PORT0", image_ref, resources=resources))
    assert agent.wait_terminal("p", BOOT)["state"] == "TASK_FINISHED"
    assert (agent.sandbox / "stdout").read_text() == f"port={port}\n"
    assert agent.wait_executor_exit(60) == 0


def test_an_oom_killed_task_is_a_memory_limitation(vm_agent: Any, image_ref: str) -> None:
    """The task's mem is its container's memory.max in the guest; running past it ends the task
    TASK_FAILED with REASON_CONTAINER_LIMITATION_MEMORY naming it, and the group with it."""
    agent = vm_agent()
    small = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
             {"name": "mem", "type": "SCALAR", "scalar": {"value": 48}}]
    agent.launch_group([task("hog", "awk 'BEGIN { s = \"x\"; while (1) s = s s }'", image_ref,
                             resources=small),
                        task("peer", "cat /sys/fs/cgroup/memory.max; sleep 600", image_ref)])
    hog = agent.wait_terminal("hog", BOOT)
    assert hog["state"] == "TASK_FAILED", hog
    assert hog["reason"] == "REASON_CONTAINER_LIMITATION_MEMORY"
    assert "task hog ran out of its memory of 48 MB" in hog["message"]
    assert agent.wait_terminal("peer", 30)["state"] == "TASK_KILLED"
    assert (agent.sandbox / "tasks" / "peer" / "stdout").read_text() == f"{96 * 1024 * 1024}\n"
    assert agent.wait_executor_exit(60) == 0
    assert agent.violations == []
    assert domains() == set()


def test_what_a_task_made_in_its_shares_is_root_s_once_its_vm_ended(vm_agent: Any,
                                                                   image_ref: str) -> None:
    """While the VM runs, what its guest makes in its sandbox and in a HOST_PATH volume is its
    QEMU uid's; once it has ended, a later holder of that uid (another tenant's VM) must own
    none of it: it is handed to root (the sandbox's owner, as a real agent makes it) and to the
    host directory's owner, and no volume grant record is left."""
    import json
    import tempfile
    from pathlib import Path

    from hypervm.config import config_from_env

    host = Path(tempfile.mkdtemp(prefix="hypervm-hostpath-"))  # root's 0700: by its ACL entry
    try:
        agent = vm_agent(env={"HYPERVM_HOST_PATH_PREFIXES": str(host)})
        volume = {"container_path": "/data", "mode": "RW",
                  "source": {"type": "HOST_PATH", "host_path": {"path": str(host)}}}
        container = {**task("w", "", image_ref)["container"], "volumes": [volume]}
        agent.launch_group([task("w", "mkdir /mnt/mesos/sandbox/d; echo s > "
                                 "/mnt/mesos/sandbox/d/made; mkdir /data/d; echo h > "
                                 "/data/d/made", image_ref,
                                 container=container)])
        assert agent.wait_terminal("w", BOOT)["state"] == "TASK_FINISHED"
        assert agent.wait_executor_exit(60) == 0
        made = [agent.sandbox / "tasks" / "w" / "d", agent.sandbox / "tasks" / "w" / "d" / "made",
                host / "d", host / "d" / "made"]
        assert [(p.stat().st_uid, p.stat().st_gid, p.stat().st_mode & 0o7777) for p in made] \
            == [(0, 0, 0o700), (0, 0, 0o600), (0, 0, 0o700), (0, 0, 0o600)]
        assert "system.posix_acl_access" not in os.listxattr(host)
        records = config_from_env().state_dir / "volume-grants"
        left = [json.loads(p.read_text()) for p in records.glob("*.json")]
        assert [r for r in left if r["path"].startswith((str(host), str(agent.sandbox)))] == []
    finally:
        import shutil
        shutil.rmtree(host, ignore_errors=True)
