"""Health checks with Mesos' semantics (src/checks/health_checker.cpp).

:class:`HealthState` is the pure decision: given a check result and the time since the task
started, whether to report, the ``healthy`` value, and whether to kill the task.
:class:`HealthChecker` runs one check in a thread (delay, then every interval, each attempt
bounded by the timeout) and hands every result to a callback.

Semantics: failures inside the grace period (from the task's start) are ignored until the first
success; every other failure is reported (``healthy: false``) and counted; the first success and
the first success after failures are reported (``healthy: true``); ``consecutive_failures``
failures in a row kill the task.

What a check says in a status update is fixed text: pass/fail, the HTTP status code, or one of
:data:`REASONS` - never a response body, a reason phrase or an exception's text, and an HTTP
check never follows a redirect (else a task's check would be an oracle onto whatever the host
reaches: a redirect to an internal URL, its answer relayed to the framework).
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
from collections.abc import Callable

from executor.mesos.taskinfo import HealthCheckSpec, resolve_argv
from hypervm.frozen import frozen_dataclass

log = logging.getLogger(__name__)


@frozen_dataclass
class HealthVerdict:
    report: bool
    healthy: bool
    kill: bool


class HealthState:
    def __init__(self, spec: HealthCheckSpec) -> None:
        self.spec = spec
        self.initializing = True
        self.failures = 0

    def on_result(self, ok: bool, since_start_s: float) -> HealthVerdict:
        if ok:
            report = self.initializing or self.failures > 0
            self.initializing, self.failures = False, 0
            return HealthVerdict(report=report, healthy=True, kill=False)
        if self.initializing and since_start_s < self.spec.grace_period_s:
            return HealthVerdict(report=False, healthy=False, kill=False)
        self.failures += 1
        kill = self.failures >= self.spec.consecutive_failures
        return HealthVerdict(report=True, healthy=False, kill=kill)


#: what a failed TCP/HTTP/COMMAND check says, by the kind of failure (first match wins)
REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timed out"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionError, "connection lost"),
    (ssl.SSLError, "TLS failure"),
    (http.client.HTTPException, "no valid HTTP answer"),
    (OSError, "no answer"),
)


def failure_reason(err: BaseException) -> str:
    return next((text for kind, text in REASONS if isinstance(err, kind)), "check error")


def http_status(scheme: str, host: str, port: int, path: str, timeout: float) -> int:
    """The status of ``GET path`` at host:port: one request, redirects not followed, the body
    never read. Raises OSError / http.client.HTTPException when there is no valid answer."""
    conn: http.client.HTTPConnection
    if scheme == "https":  # a task's own certificate: nothing to verify it against
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path or "/", headers={"Connection": "close"})
        return int(conn.getresponse().status)
    finally:
        conn.close()


class Probe:
    """One check attempt against a pod: True when healthy. Never raises."""

    def __init__(self, pod: object, task_id: str, spec: HealthCheckSpec) -> None:
        self.pod, self.task_id, self.spec = pod, task_id, spec

    def __call__(self) -> tuple[bool, str]:
        spec, pod = self.spec, self.pod
        try:
            if spec.type == "COMMAND":
                assert spec.command is not None
                argv = resolve_argv(spec.command, None, None, "health_check")
                code = pod.run_check(self.task_id, argv, spec.command_env,  # type: ignore
                                     spec.timeout_s or 3600.0)
                return code == 0, f"command exited with status {code}"
            if spec.type == "TCP":
                pod.probe_tcp(self.task_id, spec.port, spec.timeout_s or 3600.0)  # type: ignore
                return True, f"port {spec.port} accepts connections"
            status = pod.probe_http(self.task_id, spec.scheme, spec.port,  # type: ignore
                                    spec.path, spec.timeout_s or 3600.0)
            return spec.http_ok(status), f"HTTP {status}"
        except Exception as e:  # noqa: BLE001 - any failure of the probe is a failed check
            log.debug("%s check of %s failed: %r", spec.type, self.task_id, e)
            return False, f"{spec.type} check failed: {failure_reason(e)}"


class HealthChecker:
    """Runs ``probe`` after ``spec.delay_s`` and then every ``spec.interval_s`` until stopped."""

    def __init__(self, spec: HealthCheckSpec, probe: Callable[[], tuple[bool, str]],
                 on_result: Callable[[bool, str], None], name: str) -> None:
        self.spec, self.probe, self.on_result = spec, probe, on_result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"health-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        if self._stop.wait(self.spec.delay_s):
            return
        while not self._stop.is_set():
            ok, why = self.probe()
            if self._stop.is_set():
                return
            log.debug("health check: %s (%s)", "ok" if ok else "failed", why)
            self.on_result(ok, why)
            if self._stop.wait(self.spec.interval_s):
                return
