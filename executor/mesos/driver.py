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

4. It POSTs to ``MESOS_AGENT_ENDPOINT`` + ``/api/v1/executor``. Mesos' own executor library
   (src/executor/executor.cpp) addresses the agent by ``MESOS_SLAVE_PID`` instead:
   ``slave(1)@10.0.0.5:5051`` -> ``http://10.0.0.5:5051/slave(1)/api/v1/executor``. Where master
   and agent share a port (mesos-local) the plain path reaches the master's operator API, which
   takes SUBSCRIBE as an operator subscription. We do as Mesos does, and fall back to the plain
   path on ``MESOS_AGENT_ENDPOINT`` only when ``MESOS_SLAVE_PID`` is absent.

And two behaviours we need: SHUTDOWN must not ``abort()`` the driver before our terminal updates
are sent, and the KILL event's ``kill_policy`` (ignored by pymesos) is passed on. The reconnect
backoff honours ``MESOS_SUBSCRIPTION_BACKOFF_MAX``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from executor.mesos.driver_values import (  # re-exported: the executor's settings live there
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_RECOVERY_TIMEOUT_S,
    DEFAULT_SHUTDOWN_GRACE_S,
    PLAIN_API_PATH,
    ExecutorSettings,
    agent_address,
    describe,
    new_status_fields,
    parse_duration,
    settings_from_env,
    uuid_of,
)
from hypervm.errors import HostError

if TYPE_CHECKING:  # the mixin's methods call pymesos' through super()
    _PymesosDriver = Any
else:
    _PymesosDriver = object

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BACKOFF_MAX_S", "DEFAULT_RECOVERY_TIMEOUT_S", "DEFAULT_SHUTDOWN_GRACE_S",
           "DriverFixes", "ExecutorSettings", "agent_address", "describe", "make_driver",
           "new_status_fields", "parse_duration", "settings_from_env"]


class DriverFixes(_PymesosDriver):
    """What our driver changes in pymesos' MesosExecutorDriver (DEVELOPERS.md, "pymesos'
    executor driver: what we fix"); mixed in before it by :func:`make_driver`."""

    def __init__(self, executor: Any, settings: ExecutorSettings,
                 on_failsafe: Callable[[], None]) -> None:
        super().__init__(executor, use_addict=False, timeout=10 * 365 * 86400)
        self._on_failsafe = on_failsafe
        self.settings = settings
        self._new_master = settings.agent_endpoint  # fix 4: pymesos read the env itself
        self.checkpoint = settings.checkpoint  # fix 2
        self.updates: dict[uuid.UUID, dict[str, Any]] = {}
        self._in_subscribe: set[uuid.UUID] = set()
        self._last_close = 0.0
        self._subscribed = False

    # -- fix 1: record every update until it is acknowledged ------------------------------
    def sendStatusUpdate(self, status: dict[str, Any]) -> None:  # noqa: N802
        for name, value in new_status_fields().items():
            status.setdefault(name, value)
        key = uuid_of(status)
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
        request = request.replace(f"POST {PLAIN_API_PATH} ".encode(),
                                  f"POST {self.settings.api_path} ".encode(), 1)  # fix 4
        if self.settings.auth_token:
            request = request.replace(
                b"\r\nHost:", f"\r\nAuthorization: Bearer {self.settings.auth_token}\r\nHost:"
                .encode(), 1)
        return request

    def _send(self, body: Any, path: str = PLAIN_API_PATH, method: str = "POST",
              headers: dict[str, str] | None = None) -> Any:
        if path == PLAIN_API_PATH:  # fix 4
            path = self.settings.api_path
        headers = dict(headers or {})
        if self.settings.auth_token:
            headers["Authorization"] = f"Bearer {self.settings.auth_token}"
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
        timer = threading.Timer(self.settings.shutdown_grace_s, self._on_failsafe)
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
            time.sleep(random.uniform(0, self.settings.backoff_max_s))
        self._last_close = time.monotonic()

    def _backoff(self, num_conn_retry: int) -> float:
        """Mesos' executor library: uniform in [0, min(max, 1s·2^n)]."""
        cap = min(self.settings.backoff_max_s, 1.0 * (2 ** min(num_conn_retry, 16)))
        return float(random.uniform(0, cap))


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

    driver = type("HyperVMExecutorDriver", (DriverFixes, base), {})
    return driver(executor, settings, on_failsafe)
