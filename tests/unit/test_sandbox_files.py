"""Root writes task output into a sandbox the guest writes too: what a guest plants there
(symlinks, FIFOs, its own files) is never followed, opened or appended to."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor.mesos.logs import RotatingFile, RotatingLogHandler
from executor.mesos.sandbox_files import make_dirs
from hypervm.errors import HostError
from tests.mesos.fixtures import agent, agent_factory  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the sandbox that a guest would like root to append to (/etc/cron.d/x)."""
    path = tmp_path / "etc-cron.d-x"
    path.write_bytes(b"precious\n")
    return path


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    path = tmp_path / "sandbox"
    path.mkdir()
    return path


def test_a_planted_symlink_is_replaced_not_followed(sandbox: Path, victim: Path) -> None:
    (sandbox / "stdout").symlink_to(victim)
    out = RotatingFile(sandbox / "stdout", root=sandbox)
    out.write(b"task output\n")
    out.close()
    assert victim.read_bytes() == b"precious\n"
    assert not (sandbox / "stdout").is_symlink()
    assert (sandbox / "stdout").read_bytes() == b"task output\n"


def test_a_planted_task_directory_symlink_is_refused(sandbox: Path, tmp_path: Path,
                                                     victim: Path) -> None:
    """The guest plants tasks/<next id> -> a host directory before the group launches."""
    (sandbox / "tasks").mkdir()
    (sandbox / "tasks" / "next").symlink_to(victim.parent)
    with pytest.raises(HostError, match="symlink"):
        make_dirs(sandbox, "tasks/next")
    with pytest.raises(HostError):
        RotatingFile(sandbox / "tasks" / "next" / "stdout", root=sandbox)
    assert not (tmp_path / "stdout").exists()
    (sandbox / "tasks").rename(sandbox / "t2")
    (sandbox / "tasks").symlink_to(victim.parent)  # a component higher up
    with pytest.raises(HostError):
        make_dirs(sandbox, "tasks/other")
    assert not (tmp_path / "other").exists()


def test_a_planted_fifo_neither_blocks_nor_is_written(sandbox: Path) -> None:
    os.mkfifo(sandbox / "stderr")
    done = threading.Event()

    def open_it() -> None:
        out = RotatingFile(sandbox / "stderr", root=sandbox)
        out.write(b"x")
        out.close()
        done.set()

    threading.Thread(target=open_it, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked the executor"
    assert (sandbox / "stderr").is_file() and (sandbox / "stderr").read_bytes() == b"x"


def test_a_file_someone_else_made_is_not_appended(sandbox: Path, victim: Path) -> None:
    """A hard link to a file we own (nlink 2) is replaced, not appended to."""
    os.link(victim, sandbox / "stdout")
    out = RotatingFile(sandbox / "stdout", root=sandbox)
    out.write(b"new")
    out.close()
    assert victim.read_bytes() == b"precious\n"
    assert (sandbox / "stdout").read_bytes() == b"new"


def test_symlinks_raced_in_during_rotation_are_not_followed(sandbox: Path, victim: Path) -> None:
    out = RotatingFile(sandbox / "stdout", max_bytes=10, backups=2, root=sandbox)
    out.write(b"aaaaaaaa")
    # the guest plants links where rotation renames to and where the new file will be made
    (sandbox / "stdout.1").symlink_to(victim)
    (sandbox / "stdout.2").symlink_to(victim)
    out.write(b"bbbbbbbb")  # rotation: stdout.1 -> stdout.2, stdout -> stdout.1, new stdout
    (sandbox / "stdout.1").rename(sandbox / "moved")
    (sandbox / "stdout.1").symlink_to(victim)
    out.write(b"cccccccc")
    out.close()
    assert victim.read_bytes() == b"precious\n"
    assert (sandbox / "stdout").read_bytes() == b"cccccccc"
    assert (sandbox / "stdout.1").read_bytes() == b"bbbbbbbb"


def test_the_executor_log_rotates_and_refuses_links(sandbox: Path, victim: Path) -> None:
    (sandbox / "hypervm-executor.log").symlink_to(victim)
    handler = RotatingLogHandler(sandbox / "hypervm-executor.log", max_bytes=200, backups=2)
    logger = logging.getLogger("test.sandbox_files")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(50):
            logger.warning("line %d of the executor's log", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert victim.read_bytes() == b"precious\n"
    assert (sandbox / "hypervm-executor.log").stat().st_size <= 200
    assert "line 49" in (sandbox / "hypervm-executor.log").read_text()
    assert (sandbox / "hypervm-executor.log.2").exists()
    assert not (sandbox / "hypervm-executor.log.3").exists()


def test_a_guest_planted_task_sandbox_fails_the_launch_not_the_host(
        agent: Any, tmp_path: Path) -> None:  # noqa: F811
    """A lone task (its sandbox is the executor's, shared with its guest) plants
    tasks/<next id> -> a host directory; the next task group must not write or chown there."""
    from tests.mesos.fixtures import task

    victim = tmp_path / "etc-cron.d"
    victim.mkdir()
    agent.launch(task("plant", f"mkdir -p tasks && ln -s {victim} tasks/next && sleep 30"))
    agent.wait_state("plant", "TASK_RUNNING")
    deadline = time.monotonic() + 10
    while not (agent.sandbox / "tasks" / "next").is_symlink() and time.monotonic() < deadline:
        time.sleep(0.1)
    agent.launch_group([task("next", "echo owned")])
    status = agent.wait_terminal("next")
    assert status["state"] == "TASK_FAILED"
    assert "symlink" in status["message"]
    assert list(victim.iterdir()) == [] and victim.stat().st_uid == os.geteuid()
