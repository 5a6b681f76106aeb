"""Kill policies, SHUTDOWN, SIGTERM of the executor: through the agent double, fake runtime."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.mesos.agent import AgentDouble
from tests.mesos.fake_runtime import journal
from tests.mesos.fixtures import agent, agent_factory, task  # noqa: F401

pytestmark = pytest.mark.timeout(90)
STUBBORN = "trap 'echo got-term' TERM; while true; do sleep 0.1; done"


def grace(seconds: float) -> dict[str, Any]:
    return {"grace_period": {"nanoseconds": int(seconds * 1e9)}}


def killed_after(double: AgentDouble, tid: str) -> float:
    double.wait_state(tid, "TASK_RUNNING")
    time.sleep(0.3)  # let the shell install its trap
    started = time.monotonic()
    return started


def test_sigterm_ignored_killed_after_task_grace(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("stub", STUBBORN, kill_policy=grace(1.5)))
    started = killed_after(agent, "stub")
    agent.kill("stub")
    status = agent.wait_terminal("stub", timeout=15)
    took = time.monotonic() - started
    assert status["state"] == "TASK_KILLED"
    assert "SIGKILL" in status["message"]
    assert 1.4 <= took < 5, took
    assert "got-term" in (agent.sandbox / "stdout").read_text()
    signals = [e["signal"] for e in journal(agent.sandbox) if e["event"] == "signal"]
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert agent.wait_executor_exit(30) == 0
    assert agent.violations == []


def test_kill_event_policy_wins_over_task_policy(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("stub", STUBBORN, kill_policy=grace(30)))
    started = killed_after(agent, "stub")
    agent.kill("stub", grace_s=0.5)
    assert agent.wait_terminal("stub", timeout=10)["state"] == "TASK_KILLED"
    assert time.monotonic() - started < 4


def test_default_grace_is_three_seconds(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("stub", STUBBORN))
    started = killed_after(agent, "stub")
    agent.kill("stub")
    agent.wait_terminal("stub", timeout=15)
    assert 2.9 <= time.monotonic() - started < 7


def test_polite_task_ends_killed_on_sigterm(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("polite", "sleep 60"), task("sib", "sleep 60")])
    agent.wait_state("polite", "TASK_RUNNING")
    agent.wait_state("sib", "TASK_RUNNING")
    agent.kill("polite")
    status = agent.wait_terminal("polite")
    assert status["state"] == "TASK_KILLED" and "SIGTERM" in status["message"]
    assert agent.wait_terminal("sib")["state"] == "TASK_KILLED"  # group semantics
    assert agent.wait_executor_exit(30) == 0


def test_kill_during_launch(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("early", "sleep 60", img="fake/slow-boot"), task("other", "true")])
    agent.wait_state("early", "TASK_STARTING")
    agent.kill("early")
    early = agent.wait_terminal("early")
    assert early["state"] == "TASK_KILLED"
    assert early["reason"] == "REASON_TASK_KILLED_DURING_LAUNCH"
    assert agent.wait_terminal("other")["state"] == "TASK_KILLED"
    assert "TASK_RUNNING" not in agent.states("early")
    assert agent.wait_executor_exit(30) == 0
    assert [e["event"] for e in journal(agent.sandbox)][-1] == "destroy"


def test_kill_of_unknown_task_is_ignored(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("t", "sleep 1"))
    agent.kill("nope")
    assert agent.wait_terminal("t")["state"] == "TASK_FINISHED"
    assert agent.states("nope") == []


def test_shutdown_kills_everything_within_the_grace_period(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(shutdown_grace="4secs")
    double.start_executor()
    double.wait_subscribed()
    double.launch_group([task("a", STUBBORN, kill_policy=grace(60)), task("b", "sleep 60")])
    double.wait_state("a", "TASK_RUNNING")
    double.wait_state("b", "TASK_RUNNING")
    started = time.monotonic()
    double.shutdown()
    assert double.wait_executor_exit(10) == 0
    assert time.monotonic() - started < 4
    assert double.terminal("a")["state"] == "TASK_KILLED"
    assert double.terminal("b")["state"] == "TASK_KILLED"
    assert [e["event"] for e in journal(double.sandbox)][-1] == "destroy"
    assert double.violations == []


def test_sigterm_to_the_executor_shuts_down(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("t", "sleep 60"))
    agent.wait_state("t", "TASK_RUNNING")
    assert agent.process is not None
    # the agent runs `sh -c <command>`: the executor is the shell's child
    children = open(f"/proc/{agent.process.pid}/task/{agent.process.pid}/children").read()
    executor_pid = int(children.split()[0]) if children.strip() else agent.process.pid
    os.kill(executor_pid, signal.SIGTERM)
    agent.wait_terminal("t", timeout=10)
    assert agent.wait_executor_exit(15) == 0
    assert "destroy" in [e["event"] for e in journal(agent.sandbox)]


def test_a_guest_that_ignores_kills_loses_its_vm(agent_factory: Any) -> None:  # noqa: F811
    """Issue 15: the kill used to end at the SIGKILL request; a deaf guest kept its VM (and the
    task stayed RUNNING) until the executor shut down."""
    double = agent_factory(env={"HYPERVM_KILL_ESCALATION": "1"})
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("deaf", "sleep 60", img="fake/deaf", kill_policy=grace(0.5)))
    double.wait_state("deaf", "TASK_RUNNING")
    started = time.monotonic()
    double.kill("deaf")
    status = double.wait_terminal("deaf", timeout=15)
    assert status["state"] == "TASK_KILLED"
    assert "HyperVM was destroyed" in status["message"]
    assert 1.4 <= time.monotonic() - started < 6
    events = [e["event"] for e in journal(double.sandbox)]
    assert events.count("signal") == 2 and "destroy" in events
    assert events.index("destroy") > max(i for i, e in enumerate(events) if e == "signal")
    assert double.wait_executor_exit(30) == 0
    assert double.violations == []
