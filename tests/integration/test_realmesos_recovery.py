"""Agent (and master) restart with framework checkpointing, through the real Mesos 1.11
(``../shared/realmesos`` README, "Agent restart / recovery"): mesos-local is stopped with its
executors left running, the task finishes while the agent is down, mesos-local starts again on
the same work dir (replicated_log registry), hypervm-executor re-subscribes with the update the
agent never got, and the framework, re-subscribed with its id, receives TASK_FINISHED."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.realmesos.cluster import RealMesos
from tests.realmesos.fixtures import (  # noqa: F401
    app_task,
    domains,
    executor_logs,
    launch_op,
    new_executor_id,
    real_mesos,
    wait_no_domains,
)
from tests.realmesos.scheduler import CallRefused, TestScheduler

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600)]
BOOT = 240.0
REALMESOS_FLAGS = {
    "MESOS_REGISTRY": "replicated_log",
    # the agent waits this long for executors to re-subscribe (they get it as
    # MESOS_SUBSCRIPTION_BACKOFF_MAX); 2 s is tight for a Python executor on a loaded CI box
    "MESOS_EXECUTOR_REREGISTRATION_TIMEOUT": "10secs",
}
SCRIPT = ("echo started; while [ ! -e /mnt/mesos/sandbox/go ]; do sleep 0.2; done; "
          "echo finished")


@pytest.fixture
def failover_scheduler(real_mesos: RealMesos) -> Iterator[TestScheduler]:  # noqa: F811
    sched = TestScheduler(real_mesos.master, name="recovery", failover_timeout=300)
    yield sched
    sched.teardown()
    print(f"updates: {sched.summary()}\n{real_mesos.log_tail(60)}\n{executor_logs(real_mesos)}")


def resubscribe(sched: TestScheduler, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sched.subscribe()
            return
        except (CallRefused, OSError, AssertionError) as e:
            if time.monotonic() > deadline:
                raise
            print(f"re-SUBSCRIBE: {e}; retrying")
            time.sleep(1)


def test_agent_restart_with_checkpointing(real_mesos: RealMesos,  # noqa: F811
                                          failover_scheduler: TestScheduler,
                                          image_ref: str) -> None:
    sched = failover_scheduler
    offer = sched.take_offer()
    eid = new_executor_id("r")
    tid = f"{eid}.t"
    sched.accept(offer, [launch_op(app_task(tid, SCRIPT, image_ref, offer, eid))])
    sched.wait_state(tid, "TASK_RUNNING", BOOT)
    sandbox = real_mesos.executor_directory(eid)

    real_mesos.stop(keep_executors=True)  # master and agent go; the executor and VM stay
    sched.wait(lambda: sched.closed, 30, "the master to close the event stream")
    assert domains(eid), "the VM must survive the agent"
    (sandbox / "go").touch()  # the task finishes while the agent is down
    real_mesos.wait(lambda: "finished" in (sandbox / "stdout").read_text(), 60,
                    "the task to finish")
    time.sleep(1)  # the executor records TASK_FINISHED for its next SUBSCRIBE
    assert sched.terminal(tid) is None

    real_mesos.start(fresh=False)  # same work dir, same flags
    resubscribe(sched)
    status = sched.wait_terminal(tid, 120)
    assert status["state"] == "TASK_FINISHED", status
    assert sched.states(tid)[-1] == "TASK_FINISHED"
    real_mesos.wait(lambda: real_mesos.tasks().get(tid, {}).get("state") == "TASK_FINISHED",
                    30, f"the master to know {tid} FINISHED")
    assert not wait_no_domains(eid, 60), "the VM outlived its finished task"
    log = (sandbox / "hypervm-executor.log").read_text()
    assert "re-subscribed to the agent" in log
