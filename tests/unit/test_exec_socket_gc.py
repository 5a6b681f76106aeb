"""``hypervm gc`` removes the ``hypervm exec --task`` sockets a SIGKILLed executor left, and
never one a live executor serves (issue 17, part 4)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor.mesos import exec_socket
from executor.mesos.exec_socket import remove_stale_sockets, serve_task_exec, socket_path
from executor.session import SessionServer
from hypervm.config import HostConfig
from hypervm.podspec import Container, Process, Rootfs

_SERVE_AND_WAIT = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(4)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def cfg(tmp_path: Path) -> HostConfig:
    return HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                      libvirt_uri="test:///default", accel="tcg")


def _killed_executor_socket(path: Path) -> None:
    """A socket served by a process that is then SIGKILLed: the file stays, nobody listens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_AND_WAIT, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.is_socket()


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _noop(sock: socket.socket, request: dict[str, Any]) -> None:
    pass


def test_gc_removes_a_killed_executors_socket_and_keeps_a_live_one(cfg: HostConfig) -> None:
    dead, live = socket_path(cfg, "task-dead"), socket_path(cfg, "task-live")
    _killed_executor_socket(dead)
    server = SessionServer(live, _noop)
    (dead.parent / "notes.sock").write_text("not a socket")
    try:
        assert remove_stale_sockets(cfg, dry_run=True) == [dead] and dead.exists()
        assert remove_stale_sockets(cfg) == [dead]
        assert not dead.exists()
        assert live.is_socket() and _connects(live)
        assert (dead.parent / "notes.sock").exists()
        assert remove_stale_sockets(cfg) == []
    finally:
        server.close()
    assert remove_stale_sockets(cfg) == []  # a clean close leaves nothing


def test_no_tasks_directory_is_nothing_to_remove(cfg: HostConfig) -> None:
    assert remove_stale_sockets(cfg) == []


def _container() -> Container:
    return Container(name="c", rootfs=Rootfs(layers=()), process=Process(args=("true",)))


def test_an_executor_replaces_a_stale_socket_but_not_a_live_one(cfg: HostConfig) -> None:
    path = socket_path(cfg, "t1")
    _killed_executor_socket(path)
    first = serve_task_exec(cfg, "t1", object(), _container())  # type: ignore[arg-type]
    assert first is not None and _connects(path)
    try:
        assert serve_task_exec(cfg, "t1", object(), _container()) is None  # type: ignore[arg-type]
        assert remove_stale_sockets(cfg) == [] and _connects(path)
    finally:
        first.close()


def test_an_executor_binds_under_the_lock_gc_probes_under(cfg: HostConfig) -> None:
    """gc's probe and unlink cannot straddle an executor's bind: while the lock is held (as gc
    holds it between probe and unlink), no socket appears."""
    path = socket_path(cfg, "t2")
    got: list[Any] = []
    with exec_socket.locked_dir(path.parent):
        worker = threading.Thread(target=lambda: got.append(
            serve_task_exec(cfg, "t2", object(), _container())))  # type: ignore[arg-type]
        worker.start()
        time.sleep(0.3)
        assert not path.exists() and not got
    worker.join(5)
    assert got and got[0] is not None and _connects(path)
    got[0].close()
