"""Health checks: the pure HealthState, and COMMAND/TCP/HTTP checks through the executor."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from executor.mesos.health import HealthState, Probe, http_status
from executor.mesos.taskinfo import CommandSpec, HealthCheckSpec
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


class _Server:
    """An HTTP server on 127.0.0.1 answering ``routes[path] -> (status, headers, body)``,
    recording the paths it was asked for."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status, "SECRET-REASON-PHRASE")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_check_follows_no_redirect_and_relays_no_body(agent_factory: Any) -> None:  # noqa: F811
    """Issue 15 finding 4: a check redirected to an internal URL does not go there (the
    internal service is never asked), and what the framework hears is the status code only:
    no body, no reason phrase, no URL."""
    internal = _Server({"/secret": (200, {}, b"SECRET-INTERNAL-BODY")})
    task_server = _Server({
        "/health": (302, {"Location": f"http://127.0.0.1:{internal.port}/secret"},
                    b"SECRET-REDIRECT-BODY")})
    try:
        double = agent_factory()
        double.start_executor()
        double.wait_subscribed()
        check = dict(FAST, type="HTTP", http={"port": task_server.port, "path": "/health"})
        double.launch(task("web", "sleep 1.5", health_check=check))
        assert double.wait_terminal("web", timeout=20)["state"] == "TASK_FINISHED"
        # Mesos: 200-399 is healthy; the redirect itself is the answer
        reports = [(s["healthy"], s.get("message", "")) for s in double.statuses("web")
                   if "healthy" in s]
        assert reports and reports[0] == (True, "HTTP 302"), reports
        assert internal.hits == [] and "/health" in task_server.hits
    finally:
        internal.close()
        task_server.close()


class _Pod:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def probe_http(self, *args: Any) -> int:
        raise self.error

    probe_tcp = probe_http
    run_check = probe_http


@pytest.mark.parametrize(("error", "reason"), [
    (ConnectionRefusedError("[Errno 111] SECRET"), "connection refused"),
    (TimeoutError("SECRET"), "timed out"),
    (OSError("SECRET no route"), "no answer"),
    (ValueError("SECRET"), "check error"),
])
@pytest.mark.parametrize("kind", ["HTTP", "TCP", "COMMAND"])
def test_failed_probe_says_a_fixed_reason(kind: str, error: BaseException, reason: str) -> None:
    spec = HealthCheckSpec(kind, port=80, path="/", command=CommandSpec(value="true"))
    ok, why = Probe(_Pod(error), "t", spec)()
    assert not ok and why == f"{kind} check failed: {reason}"


def test_http_status_reads_no_body_and_follows_nothing() -> None:
    server = _Server({"/r": (301, {"Location": "/elsewhere"}, b"x" * 100_000)})
    try:
        assert http_status("http", "127.0.0.1", server.port, "/r", 5) == 301
        assert server.hits == ["/r"]
    finally:
        server.close()
