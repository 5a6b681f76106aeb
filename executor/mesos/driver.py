"""pymesos' MesosExecutorDriver, with its bugs fixed, and the executor's environment settings.

pymesos 0.3.15 (DEVELOPERS.md) has these problems, each fixed here and covered by a test in
tests/unit/test_mesos_driver.py:

1. ``sendStatusUpdate`` never records the update, so ``unacknowledged_updates`` in a
   re-SUBSCRIBE is always empty and every update sent while the agent restarts is lost. We record
   each update before sending it (and one the agent never got is resent on the next SUBSCRIBED).
2. ``MESOS_CHECKPOINT=0`` is read as true (``bool("0")``). We parse "1"/"0".
3. On SHUTDOWN and on disconnection without checkpointing it ``os.killpg(0, SIGKILL)`` after the
   grace period: that kills whatever shares our process group (the agent itself when it does not
   setsid, pytest in tests). We replace it with a fail-safe that ends only our own process.

And two behaviours we need: SHUTDOWN must not ``abort()`` the driver before our terminal updates
are sent, and the KILL event's ``kill_policy`` (ignored by pymesos) is passed on. The reconnect
backoff honours ``MESOS_SUBSCRIPTION_BACKOFF_MAX``.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervm.errors import HostError, InvalidSpec

log = logging.getLogger(__name__)

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "secs": 1.0, "mins": 60.0, "hrs": 3600.0,
          "days": 86400.0, "weeks": 604800.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|ms|secs|mins|hrs|days|weeks)\s*$")

#: Mesos' defaults (src/slave/constants.hpp)
DEFAULT_SHUTDOWN_GRACE_S = 5.0
DEFAULT_RECOVERY_TIMEOUT_S = 15 * 60.0
DEFAULT_BACKOFF_MAX_S = 2.0


def parse_duration(text: str, name: str) -> float:
    """A Mesos Duration string ("5secs", "15mins", "100ms" …) in seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise InvalidSpec(name, f"{text!r} is not a duration",
                          hint="use a number and a unit: ns, us, ms, secs, mins, hrs, days, weeks")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class ExecutorSettings:
    framework_id: str
    executor_id: str
    agent_endpoint: str
    sandbox: Path
    checkpoint: bool
    shutdown_grace_s: float
    recovery_timeout_s: float
    backoff_max_s: float
    auth_token: str | None = None


def settings_from_env(env: Mapping[str, str]) -> ExecutorSettings:
    """What the agent tells its executor through the environment; InvalidSpec names the var."""
    def required(name: str) -> str:
        value = env.get(name, "")
        if not value:
            raise InvalidSpec(name, "is not set",
                              hint="hypervm-executor must be started by a Mesos agent")
        return value

    checkpoint_text = env.get("MESOS_CHECKPOINT", "0")
    if checkpoint_text not in ("0", "1"):
        raise InvalidSpec("MESOS_CHECKPOINT", f"{checkpoint_text!r} is not 0 or 1")

    def duration(name: str, default: float) -> float:
        return parse_duration(env[name], name) if env.get(name) else default

    endpoint = required("MESOS_AGENT_ENDPOINT")
    if not re.match(r"^[^:/]+:\d+$", endpoint):
        raise InvalidSpec("MESOS_AGENT_ENDPOINT", f"{endpoint!r} is not host:port")
    return ExecutorSettings(
        framework_id=required("MESOS_FRAMEWORK_ID"),
        executor_id=required("MESOS_EXECUTOR_ID"),
        agent_endpoint=endpoint,
        sandbox=Path(env.get("MESOS_SANDBOX") or env.get("MESOS_DIRECTORY") or "."),
        checkpoint=checkpoint_text == "1",
        shutdown_grace_s=duration("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                                  DEFAULT_SHUTDOWN_GRACE_S),
        recovery_timeout_s=duration("MESOS_RECOVERY_TIMEOUT", DEFAULT_RECOVERY_TIMEOUT_S),
        backoff_max_s=duration("MESOS_SUBSCRIPTION_BACKOFF_MAX", DEFAULT_BACKOFF_MAX_S),
        auth_token=env.get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN") or None,
    )


def new_status_fields() -> dict[str, Any]:
    """uuid (base64 of 16 bytes), timestamp and source for a TaskStatus."""
    return {"uuid": base64.b64encode(uuid.uuid4().bytes).decode("ascii"),
            "timestamp": time.time(), "source": "SOURCE_EXECUTOR"}


def _load_pymesos() -> Any:
    try:
        # optional dependency: pymesos is installed by make deps, not by pip (DEVELOPERS.md)
        from pymesos import MesosExecutorDriver
    except ImportError as e:  # pragma: no cover - depends on the install
        raise HostError("pymesos is not installed", hint="run `make deps` (DEVELOPERS.md)") from e
    return MesosExecutorDriver


def make_driver(executor: Any, settings: ExecutorSettings,
                on_failsafe: Callable[[], None]) -> Any:
    """A running-ready driver for ``executor`` (a pymesos Executor with our extra callbacks).

    ``executor`` may also define ``killTaskWithPolicy(driver, task_id, kill_policy)`` and
    ``acknowledged(driver, task_id, uuid)``. ``on_failsafe`` replaces pymesos' killpg.
    """
    base = _load_pymesos()

    class HyperVMExecutorDriver(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(executor, use_addict=False, timeout=10 * 365 * 86400)
            self.checkpoint = settings.checkpoint  # fix 2
            self.settings = settings
            self.updates: dict[uuid.UUID, dict[str, Any]] = {}
            self._in_subscribe: set[uuid.UUID] = set()
            self._last_close = 0.0
            self._subscribed = False

        # -- fix 1: record every update until it is acknowledged ------------------------------
        def sendStatusUpdate(self, status: dict[str, Any]) -> None:  # noqa: N802
            for name, value in new_status_fields().items():
                status.setdefault(name, value)
            key = _uuid_of(status)
            with self._lock:
                self.updates[key] = {"status": status}
                connected = self._subscribed
            if not connected:
                log.info("not subscribed: %s for %s is kept for the next SUBSCRIBE",
                         status["state"], status["task_id"]["value"])
                return
            self._post_update(status)

        def _post_update(self, status: dict[str, Any]) -> None:
            for attempt in (1, 2):
                try:
                    super().sendStatusUpdate(status)
                    return
                except Exception as e:  # noqa: BLE001 - pymesos raises bare RuntimeError/OSError
                    log.warning("sending %s for %s failed (attempt %d): %s", status["state"],
                                status["task_id"]["value"], attempt, e)
            log.warning("%s for %s stays unacknowledged until the next SUBSCRIBE",
                        status["state"], status["task_id"]["value"])

        def unacknowledged(self) -> list[dict[str, Any]]:
            with self._lock:
                return [u["status"] for u in self.updates.values()]

        def gen_request(self) -> bytes:
            with self._lock:
                self._in_subscribe = set(self.updates)
            request: bytes = super().gen_request()
            if settings.auth_token:
                request = request.replace(
                    b"\r\nHost:", f"\r\nAuthorization: Bearer {settings.auth_token}\r\nHost:"
                    .encode(), 1)
            return request

        def _send(self, body: Any, path: str = "/api/v1/executor", method: str = "POST",
                  headers: dict[str, str] | None = None) -> Any:
            headers = dict(headers or {})
            if settings.auth_token:
                headers["Authorization"] = f"Bearer {settings.auth_token}"
            return super()._send(body, path=path, method=method, headers=headers)

        def on_subscribed(self, info: dict[str, Any]) -> None:
            with self._lock:
                self._subscribed = True
                missed = [u["status"] for k, u in self.updates.items()
                          if k not in self._in_subscribe]
            super().on_subscribed(info)
            for status in missed:  # recorded after the SUBSCRIBE was written: send them now
                self._post_update(status)

        def on_acknowledged(self, event: dict[str, Any]) -> None:
            with self._lock:
                super().on_acknowledged(event)
            callback = getattr(self.executor, "acknowledged", None)
            if callback is not None:
                callback(self, event["task_id"]["value"], event["uuid"])

        # -- launches: pymesos asserts on a known task ID, which kills its IO thread ----------
        def on_launch(self, event: dict[str, Any]) -> None:
            task = event["task"]
            with self._lock:
                self.tasks.setdefault(task["task_id"]["value"], task)
            self.executor.launchTask(self, task)

        def on_launch_group(self, event: dict[str, Any]) -> None:
            tasks = event["task_group"]["tasks"]
            with self._lock:
                for task in tasks:
                    self.tasks.setdefault(task["task_id"]["value"], task)
            self.executor.launchTaskGroup(self, list(tasks))

        # -- the KILL event's kill_policy ------------------------------------------------------
        def on_kill(self, event: dict[str, Any]) -> None:
            callback = getattr(self.executor, "killTaskWithPolicy", None)
            if callback is None:
                super().on_kill(event)
            else:
                callback(self, event["task_id"], event.get("kill_policy"))

        # -- fix 3 and SHUTDOWN without abort ------------------------------------------------
        def _delay_kill(self) -> None:
            timer = threading.Timer(settings.shutdown_grace_s, on_failsafe)
            timer.daemon = True
            timer.start()

        def on_shutdown(self) -> None:
            self._delay_kill()
            self.executor.shutdown(self)

        def on_close(self) -> None:
            if self.aborted:  # our own stop(): nothing to recover
                return
            with self._lock:
                was_subscribed, self._subscribed = self._subscribed, False
            conn: Any = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
                self._conn = None
            if was_subscribed:
                self.executor.disconnected(self)
            if not self.checkpoint:  # Mesos: without checkpointing, shut down
                self._delay_kill()
                self.executor.shutdown(self)
                self.abort()
                return
            # The agent answered (e.g. 503 while it recovers) and closed: back off before the
            # next SUBSCRIBE instead of spinning; refused connections back off in pymesos.
            now = time.monotonic()
            if not was_subscribed and now - self._last_close < 1.0:
                time.sleep(random.uniform(0, settings.backoff_max_s))
            self._last_close = time.monotonic()

        def _backoff(self, num_conn_retry: int) -> float:
            """Mesos' executor library: uniform in [0, min(max, 1s·2^n)]."""
            cap = min(settings.backoff_max_s, 1.0 * (2 ** min(num_conn_retry, 16)))
            return float(random.uniform(0, cap))

    return HyperVMExecutorDriver()


def _uuid_of(status: Mapping[str, Any]) -> uuid.UUID:
    return uuid.UUID(bytes=base64.b64decode(status["uuid"]))


def describe(status: Mapping[str, Any]) -> str:
    """One line for the log."""
    fields = {k: status[k] for k in ("state", "reason", "message", "healthy") if k in status}
    return f"{status['task_id']['value']}: {json.dumps(fields)}"
