"""VMPod.send_start makes the task's ``hypervm exec --task`` socket while the guest starts the
process, so TASK_RUNNING does not wait for it, and only once the START is sent, so the START
does not wait for it either; a failed start leaves no socket served."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from executor.mesos.exec_socket import socket_path
from executor.mesos.runtime import PodPlan, VMPod
from hypervm.config import config_from_env
from hypervm.errors import GuestError
from hypervm.podspec import Container, Process, Rootfs


class SlowStartVM:
    """A VM whose START's reply takes until the task's exec socket exists (2 s at most)
    (HyperVM.send_start, then wait_started)."""

    def __init__(self, path: Path, fail: bool = False) -> None:
        self.path, self.fail = path, fail
        self.socket_during_start: bool | None = None
        self.socket_before_send: bool | None = None

    def send_start(self, container: Container, **_: Any) -> str:
        self.socket_before_send = self.path.exists()
        return "sent"  # the START is on its way

    def wait_started(self, sent: str, meanwhile: Any = None) -> str:
        if meanwhile is not None:
            meanwhile()  # as HyperVM.wait_started: before the reply is awaited
        deadline = time.monotonic() + 2
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.socket_during_start = self.path.exists()
        if self.fail:
            raise GuestError("ENOENT", "process.args[0]: cannot execute nope")
        return "handle"

    def destroy(self) -> None:
        pass


def _pod(tmp_path: Path, fail: bool = False) -> tuple[VMPod, SlowStartVM, Path]:
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                           "HYPERVM_RUN_DIR": str(tmp_path / "run"), "HYPERVM_POOL": "off"})
    plan = PodPlan("p", (), 1, 128, tmp_path, {})
    pod = VMPod(cfg, plan)
    path = socket_path(cfg, "t1")
    vm = SlowStartVM(path, fail)
    pod.vm = vm
    pod._containers["t1"] = Container("c", Rootfs(layers=(tmp_path / "l",)),
                                      Process(args=("true",)))
    return pod, vm, path


def test_the_exec_socket_is_made_while_the_process_starts(tmp_path: Path) -> None:
    pod, vm, path = _pod(tmp_path)
    try:
        pod.send_start("t1", print, print, print)()
        assert vm.socket_during_start is True
        assert vm.socket_before_send is False  # its thread does not hold up the START
        assert pod._handles["t1"] == "handle" and len(pod._exec_servers) == 1
    finally:
        pod.destroy()
    assert not path.exists()


def test_a_failed_start_serves_no_exec_socket(tmp_path: Path) -> None:
    pod, _, path = _pod(tmp_path, fail=True)
    with pytest.raises(GuestError, match="cannot execute"):
        pod.send_start("t1", print, print, print)()
    assert pod._exec_servers == [] and not path.exists()
