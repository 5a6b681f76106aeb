"""Health checks: the pure HealthState, and COMMAND/TCP/HTTP checks through the executor."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from executor.mesos.health import HealthState
from executor.mesos.taskinfo import HealthCheckSpec
from tests.mesos.agent import AgentDouble
from tests.mesos.fixtures import agent, agent_factory, task  # noqa: F401

FAST = {"delay_seconds": 0.2, "interval_seconds": 0.3, "timeout_seconds": 2,
        "grace_period_seconds": 0, "consecutive_failures": 3}


def test_state_grace_period_ignores_failures_until_first_success() -> None:
    state = HealthState(HealthCheckSpec("COMMAND", grace_period_s=10, consecutive_failures=2))
    assert not state.on_result(False, 1.0).report
    assert not state.on_result(False, 9.0).report
    first = state.on_result(True, 9.5)
    assert first.report and first.healthy
    assert not state.on_result(True, 10.0).report  # no news
    fail = state.on_result(False, 10.5)  # past the first success: counts even in grace
    assert fail.report and not fail.healthy and not fail.kill
    assert state.on_result(False, 11).kill


def test_state_recovery_resets_the_count() -> None:
    state = HealthState(HealthCheckSpec("TCP", grace_period_s=0, consecutive_failures=2))
    assert state.on_result(False, 20).report
    back = state.on_result(True, 21)
    assert back.report and back.healthy
    assert not state.on_result(False, 22).kill
    assert state.on_result(False, 23).kill


def test_state_failures_after_grace_count_before_any_success() -> None:
    state = HealthState(HealthCheckSpec("TCP", grace_period_s=1, consecutive_failures=1))
    assert state.on_result(False, 2).kill


def test_failing_command_check_kills_the_task(agent: AgentDouble) -> None:  # noqa: F811
    # healthy while the marker file exists; the task removes it after a while
    check = dict(FAST, type="COMMAND", command={"value": "test -e alive"})
    agent.launch(task("h", "touch alive; sleep 1.2; rm alive; sleep 60", health_check=check))
    status = agent.wait_terminal("h", timeout=20)
    assert status["state"] == "TASK_KILLED"
    assert status["healthy"] is False
    health = [s for s in agent.statuses("h")
              if s.get("reason") == "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"]
    assert [s["healthy"] for s in health] == [True, False, False, False]
    assert all(s["state"] == "TASK_RUNNING" for s in health)
    assert agent.wait_executor_exit(30) == 0
    assert agent.violations == []


def test_tcp_check_reports_healthy(agent: AgentDouble) -> None:  # noqa: F811
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        check = dict(FAST, type="TCP", tcp={"port": port})
        agent.launch(task("tcp", "sleep 1.5", health_check=check))
        assert agent.wait_terminal("tcp")["state"] == "TASK_FINISHED"
        health = [s["healthy"] for s in agent.statuses("tcp") if "healthy" in s]
        assert health[:1] == [True] and False not in health
    finally:
        listener.close()


def test_http_check_bad_status_is_unhealthy(agent_factory: Any) -> None:  # noqa: F811
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        double = agent_factory()
        double.start_executor()
        double.wait_subscribed()
        port = server.server_address[1]
        check = dict(FAST, type="HTTP", http={"port": port, "path": "/bad"},
                     consecutive_failures=2)
        double.launch(task("web", "sleep 60", health_check=check))
        status = double.wait_terminal("web", timeout=20)
        assert status["state"] == "TASK_KILLED" and status["healthy"] is False
        unhealthy = [s for s in double.statuses("web") if s.get("healthy") is False]
        assert unhealthy and "HTTP 503" in unhealthy[0]["message"]
    finally:
        server.shutdown()


@pytest.mark.parametrize("check", [
    HealthCheckSpec("HTTP", statuses=(200, 204)),
])
def test_http_statuses(check: HealthCheckSpec) -> None:
    assert check.http_ok(204) and not check.http_ok(301)
