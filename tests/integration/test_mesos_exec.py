"""Issue 17, part 4: ``hypervm exec --task`` reaches a Mesos task's container in its HyperVM
through the executor's root-only socket (the agent double, the real VM runtime)."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from executor.mesos.exec_socket import socket_path
from hypervm.config import config_from_env
from tests.conftest import TEST_TAG, run_hypervm
from tests.integration.test_mesos_vm import BOOT, domains, task, vm_agent  # noqa: F401
from tests.integration.test_tty_cli import Terminal

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.usefixtures("no_leaked_domains")]


def test_exec_task_runs_in_the_tasks_container(vm_agent: Any, image_ref: str) -> None:  # noqa: F811
    agent = vm_agent()
    tid = f"{TEST_TAG}-exec"
    agent.launch(task(tid, "echo started; sleep 600", image_ref))
    agent.wait_state(tid, "TASK_RUNNING", BOOT)

    path = socket_path(config_from_env(), tid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    result = run_hypervm("exec", "--task", tid, "--", "sh", "-c",
                         'echo "$MESOS_TASK_ID"; ps; exit 6')
    assert result.returncode == 6, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == tid
    assert any("sleep 600" in line for line in lines[1:])  # the task's own: the same container
    piped = run_hypervm("exec", "-i", "--task", tid, "--", "cat", input=b"into the VM\n")
    assert piped.stdout == b"into the VM\n"

    term = Terminal("exec", "-it", "--task", tid, "--", "sh", rows=22, cols=77)
    try:
        term.expect(r"# ")
        term.type("stty size\r")
        term.expect(r"22 77\r\n")
        term.type("exit 2\r")
    finally:
        code = term.close()
    assert code == 2

    missing = run_hypervm("exec", "--task", "no-such-task", "--", "true")
    assert missing.returncode != 0 and b"no running task" in missing.stderr

    agent.kill(tid)
    assert agent.wait_terminal(tid, 60)["state"] == "TASK_KILLED"
    assert agent.wait_executor_exit(60) == 0
    assert not path.exists()
    assert domains() == set()
