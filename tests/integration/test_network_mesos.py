"""Networking through hypervm-executor (the Mesos agent double, real VMs): a task's ``ports``
resources become published ports, the task sees PORT0/PORTS, a taken host port fails the task
with the reason. Traffic goes to 127.0.0.1 only."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.integration.test_mesos_vm import BOOT, domains, task, vm_agent  # noqa: F401
from tests.integration.test_network import free_port, wait_for_http

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.usefixtures("no_leaked_domains")]


def ports_task(tid: str, command: str, ref: str, host_port: int, container_port: int
               ) -> dict[str, Any]:
    out = task(tid, command, ref, discovery={
        "visibility": "FRAMEWORK", "name": tid,
        "ports": {"ports": [{"number": container_port, "protocol": "tcp"}]}})
    out["resources"].append({"name": "ports", "type": "RANGES",
                             "ranges": {"range": [{"begin": host_port, "end": host_port}]}})
    return out


def test_ports_resource_is_published_and_in_the_env(vm_agent: Any, image_ref: str) -> None:  # noqa: F811
    port = free_port()
    agent = vm_agent()
    script = ('mkdir -p /www && echo "$PORT0 $PORTS $PORT_80" > /www/index.html && '
              "exec httpd -f -p 80 -h /www")
    agent.launch_group([ports_task("web", script, image_ref, port, 80)])
    agent.wait_state("web", "TASK_RUNNING", BOOT)
    assert wait_for_http(f"http://127.0.0.1:{port}/") == f"{port} {port} {port}\n".encode()
    agent.kill("web")
    assert agent.wait_terminal("web", 60)["state"] == "TASK_KILLED"
    assert agent.wait_executor_exit(60) == 0
    assert domains() == set()


def test_taken_host_port_fails_the_task_with_the_reason(vm_agent: Any, image_ref: str) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = vm_agent()
        agent.launch_group([ports_task("t", "true", image_ref, port, 80)])
        status = agent.wait_terminal("t", BOOT)
    assert status["state"] == "TASK_FAILED"
    assert f"host port {port}/tcp is already in use" in status["message"]
    assert agent.wait_executor_exit(60) == 0
    assert domains() == set()


def test_http_health_check_follows_no_redirect_to_the_host(vm_agent: Any, image_ref: str  # noqa: F811
                                                           ) -> None:
    """Issue 15 finding 4: a task's HTTP check answered with a redirect to a host-internal URL
    (a service on the host's 127.0.0.1) does not go there, and the framework hears only the
    status code, never the body."""
    hits: list[str] = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"SECRET-INTERNAL")

        def log_message(self, *args: Any) -> None:
            pass

    internal = HTTPServer(("127.0.0.1", 0), Internal)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    port = free_port()
    cgi = (f'printf "Status: 302 Found\\r\\nLocation: http://127.0.0.1:'
           f'{internal.server_address[1]}/secret\\r\\n\\r\\nSECRET-BODY"')
    script = (f"mkdir -p /www/cgi-bin && printf '#!/bin/sh\\n%s\\n' '{cgi}' > /www/cgi-bin/r && "
              "chmod +x /www/cgi-bin/r && exec httpd -f -p 80 -h /www")
    check = {"type": "HTTP", "http": {"port": 80, "path": "/cgi-bin/r"}, "delay_seconds": 1,
             "interval_seconds": 1, "timeout_seconds": 10, "consecutive_failures": 3,
             "grace_period_seconds": 60}
    try:
        agent = vm_agent()
        agent.launch_group([dict(ports_task("web", script, image_ref, port, 80),
                                 health_check=check)])
        agent.wait_state("web", "TASK_RUNNING", BOOT)
        deadline = time.monotonic() + 90
        while not [s for s in agent.statuses("web") if "healthy" in s]:
            assert time.monotonic() < deadline, agent.statuses("web")
            time.sleep(0.5)
        first = next(s for s in agent.statuses("web") if "healthy" in s)
        assert first["healthy"] is True and first.get("message") == "HTTP 302", first
        assert hits == []
        agent.kill("web")
        assert agent.wait_terminal("web", 60)["state"] == "TASK_KILLED"
        assert agent.wait_executor_exit(60) == 0
    finally:
        internal.shutdown()
        internal.server_close()
