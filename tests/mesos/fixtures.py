"""pytest fixtures for the Mesos tests (import them into a test module: no conftest here)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesos.agent import AgentDouble


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentDouble]]:
    """Make agent doubles (each with its own sandbox); all are stopped at teardown, their
    executor killed, and the executor log printed for failed tests."""
    made: list[AgentDouble] = []

    def make(**kwargs: Any) -> AgentDouble:
        agent = AgentDouble(tmp_path / f"agent{len(made)}", **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        print(agent.executor_log()[-6000:])


@contextlib.contextmanager
def vm_agents(prefix: str, executor_prefix: str, log_tail: int = 8000
              ) -> Iterator[Callable[..., AgentDouble]]:
    """Agent doubles whose executors boot real HyperVMs. QEMU opens the sandbox for 9p:
    pytest's 0700 tmp dirs will not do, just as a Mesos agent's work_dir must be traversable.
    Each executor's log tail is printed at the end (a failed test shows it)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    made: list[AgentDouble] = []

    def make(**kwargs: Any) -> AgentDouble:
        kwargs.setdefault("executor_id", f"{executor_prefix}{len(made)}")
        double = AgentDouble(workdir / f"agent{len(made)}", runtime=None, **kwargs)
        made.append(double)
        double.start_executor()
        double.wait_subscribed(timeout=30)
        return double

    try:
        yield make
    finally:
        for double in made:
            double.stop()
            print(double.executor_log()[-log_tail:])
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def agent(agent_factory: Callable[..., AgentDouble]) -> AgentDouble:
    """An agent double whose executor has subscribed."""
    double = agent_factory()
    double.start_executor()
    double.wait_subscribed()
    return double


def image(name: str = "busybox:1.36") -> dict[str, Any]:
    return {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": name}}}}


def task(tid: str, cmd: str | None, img: str = "busybox:1.36", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": {"value": tid}, "name": tid, "container": image(img),
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 96}}]}
    if cmd is not None:
        out["command"] = {"value": cmd}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


@pytest.fixture
def master_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Make Mesos master doubles (tests/mesos/master.py); all are stopped at teardown (their
    executors killed), their executor logs printed for failed tests."""
    from tests.mesos.master import MasterDouble

    made: list[MasterDouble] = []

    def make(**kwargs: Any) -> MasterDouble:
        master = MasterDouble(tmp_path / f"master{len(made)}", **kwargs)
        made.append(master)
        return master

    yield make
    for master in made:
        master.stop()
        print(master.executor_logs()[-6000:])


@pytest.fixture
def scheduler_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Make ``hypervm-scheduler`` processes (tests/mesos/scheduler_process.py); stopped at
    teardown, their logs printed for failed tests."""
    from tests.mesos.scheduler_process import SchedulerProcess

    made: list[SchedulerProcess] = []

    def make(master_url: str, tenants: list[Any], **kwargs: Any) -> SchedulerProcess:
        proc = SchedulerProcess(tmp_path / f"scheduler{len(made)}", master_url, tenants,
                                **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()
        print(proc.log_text()[-8000:])
