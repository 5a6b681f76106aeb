"""The executor core's exit decision, in-process, with the driver's thread replayed by hand."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from executor.mesos.callbacks import MesosCallbacks
from executor.mesos.driver import ExecutorSettings
from executor.mesos.executor import ExecutorCore

pytestmark = pytest.mark.timeout(30)


class AbortedDriver:
    """What the loop sees of a pymesos driver that has stopped for good."""

    aborted = True

    def unacknowledged(self) -> list[Any]:
        return []


class NoPods:
    def create_pod(self, plan: Any) -> Any:
        raise AssertionError("no pod is launched here")


def core_for(tmp_path: Path, checkpoint: bool) -> ExecutorCore:
    settings = ExecutorSettings(framework_id="fw", executor_id="ex", agent_endpoint="a:1",
                                sandbox=tmp_path, checkpoint=checkpoint, shutdown_grace_s=3,
                                recovery_timeout_s=5, backoff_max_s=1)
    core = ExecutorCore(settings, NoPods())
    core.driver = AbortedDriver()
    return core


def run(core: ExecutorCore) -> None:
    loop = threading.Thread(target=core.run, daemon=True)
    loop.start()
    loop.join(10)
    assert not loop.is_alive(), "the executor loop did not finish"


def test_a_disconnection_without_checkpointing_is_a_clean_shutdown(tmp_path: Path) -> None:
    """The driver's thread posts DISCONNECTED and SHUTDOWN, then aborts: the loop may see the
    abort while SHUTDOWN is still queued. That is the shutdown Mesos asks for, not an error."""
    core = core_for(tmp_path, checkpoint=False)
    callbacks = MesosCallbacks(core)
    callbacks.disconnected(core.driver)
    callbacks.shutdown(core.driver)
    run(core)
    assert core.done and core.shutting_down_at is not None
    assert core.exit_code == 0


def test_a_driver_that_dies_unasked_is_an_error(tmp_path: Path) -> None:
    core = core_for(tmp_path, checkpoint=True)
    MesosCallbacks(core).disconnected(core.driver)
    run(core)
    assert core.done and core.exit_code == 1
