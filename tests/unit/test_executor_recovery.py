"""Agent restarts: no lost update with checkpointing, a clean shutdown without it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.mesos.fake_runtime import journal
from tests.mesos.fixtures import agent_factory, task  # noqa: F401

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_agent_restart_loses_no_update(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(auto_ack=False)
    double.start_executor()
    double.wait_subscribed()
    double.launch_group([task("a", "sleep 1.5; echo a-done"), task("b", "sleep 9")])
    double.wait_state("a", "TASK_RUNNING")
    double.wait_state("b", "TASK_RUNNING")
    before = set(double.unacked)
    assert len(before) == 4  # STARTING and RUNNING of both, withheld by the agent

    # down while `a` finishes: its FINISHED cannot be delivered, then 503s while recovering
    # (for 3 backoff maxima, so a retry surely meets them; `b` outlives the whole outage)
    double.restart(down_for=2.5, recovering_for=3.0)
    double.wait_subscribed(timeout=20)
    assert any(code == 503 for code, _ in double.rejected)
    resubscribe = double.subscribes[-1]
    resent = {u["status"]["uuid"] for u in resubscribe["unacknowledged_updates"]}
    assert before <= resent
    assert {t["task_id"]["value"] for t in resubscribe["unacknowledged_tasks"]} == {"a", "b"}
    finished = [u for u in double.updates if u.task_id == "a" and u.state == "TASK_FINISHED"]
    assert len(finished) == 1 and finished[0].via == "subscribe"
    assert len(double.unacked) == 5

    double.auto_ack = True
    assert double.ack_all() == 5
    assert double.wait_terminal("b")["state"] == "TASK_FINISHED"
    assert double.wait_executor_exit(30) == 0
    assert double.unacked == {}
    events = [e["event"] for e in journal(double.sandbox)]
    assert events.count("boot") == 1 and events[-1] == "destroy"  # one VM, kept running
    assert (double.sandbox / "tasks" / "a" / "stdout").read_text() == "a-done\n"
    assert double.violations == []


def test_update_sent_while_down_is_delivered_after_resubscribe(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory()
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("t", "sleep 1; exit 4"))
    double.wait_state("t", "TASK_RUNNING")
    double.restart(down_for=2.5)
    status = double.wait_terminal("t", timeout=20)
    assert status["state"] == "TASK_FAILED" and "status 4" in status["message"]
    assert double.wait_executor_exit(30) == 0
    assert double.unacked == {}
    assert double.violations == []


def test_without_checkpointing_a_disconnection_shuts_down(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(checkpoint=False, shutdown_grace="3secs")
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("t", "sleep 60"))
    double.wait_state("t", "TASK_RUNNING")
    started = time.monotonic()
    double.restart(down_for=0.1)
    assert double.wait_executor_exit(10) == 0
    assert time.monotonic() - started < 6
    assert [e["event"] for e in journal(double.sandbox)][-1] == "destroy"
    assert len(double.subscribes) == 1  # it did not try to come back


def test_recovery_timeout_shuts_down(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(recovery_timeout="2secs", shutdown_grace="2secs")
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("t", "sleep 60"))
    double.wait_state("t", "TASK_RUNNING")
    double.restart(down_for=7)
    assert double.process is not None
    assert double.process.poll() == 0  # gone while the agent was down
    assert [e["event"] for e in journal(double.sandbox)][-1] == "destroy"


def test_ack_fail_safe_does_not_run_while_the_agent_is_down(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(env={"HYPERVM_EXECUTOR_ACK_TIMEOUT": "1"})
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("t", "sleep 0.5; exit 0"))
    double.wait_state("t", "TASK_RUNNING")
    double.restart(down_for=4)  # FINISHED happens while down; 4 s > the 1 s ack fail-safe
    assert double.wait_terminal("t", timeout=20)["state"] == "TASK_FINISHED"
    assert double.wait_executor_exit(20) == 0
    assert double.unacked == {}
