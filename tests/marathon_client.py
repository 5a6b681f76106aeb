"""The PyPI ``marathon`` client (0.13) for the tests that drive hypervm-scheduler with it
(``tests/unit/test_scheduler_marathon_client.py`` through the master double,
``tests/integration/test_realmesos_marathon_client.py`` through the real Mesos): import the
client from here, never ``marathon`` directly, so the patch below is applied once for all.

**The client's bug, not ours**: marathon 0.13 (its newest release) encodes nested objects in
``marathon/util.py`` with ``isinstance(obj, collections.Iterable)``, an alias Python 3.10
removed; unpatched, its ``create_app``/``update_app`` raise ``AttributeError`` inside the client
before any request is sent. The patch points that module's ``collections`` at
``collections.abc`` (which has ``Iterable``) and touches nothing else.
"""

from __future__ import annotations

import collections.abc
import threading
import time
from collections.abc import Callable
from typing import Any

import marathon.util

if not hasattr(marathon.util.collections, "Iterable"):
    marathon.util.collections = collections.abc  # type: ignore[assignment]

from marathon import MarathonClient  # noqa: E402
from marathon.models import MarathonApp, MarathonHealthCheck  # noqa: E402
from marathon.models.app import MarathonUpgradeStrategy  # noqa: E402
from marathon.models.container import MarathonContainer, MarathonDockerContainer  # noqa: E402
from marathon.models.events import MarathonEvent  # noqa: E402

__all__ = ["Collector", "MarathonClient", "settled", "wait", "web_app"]


class Collector:
    """Reads ``client.event_stream()`` in a thread (each event parsed by the client)."""

    def __init__(self, client: MarathonClient) -> None:
        self.events: list[MarathonEvent] = []
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(client,), daemon=True).start()

    def _run(self, client: MarathonClient) -> None:
        try:
            for evt in client.event_stream():
                self.events.append(evt)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def types(self) -> set[str]:
        return {e.event_type for e in self.events}


def wait(what: str, predicate: Callable[[], Any], timeout: float = 60,
         every: float = 0.2) -> Any:
    """``predicate()``'s first true value, polled; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def settled(c: MarathonClient, timeout: float = 60) -> None:
    """Wait until the tenant has no deployment in progress."""
    wait("no deployment in progress", lambda: not c.list_deployments(), timeout)


def web_app(image: str, instances: int = 2, mem: float = 16, cpus: float = 0.1,
            min_health: float = 0.5, max_over: float = 0.0) -> MarathonApp:
    """A long-running app with a COMMAND health check that passes at once."""
    return MarathonApp(
        cmd="exec sleep 300", cpus=cpus, mem=mem, instances=instances,
        container=MarathonContainer(type="MESOS",
                                    docker=MarathonDockerContainer(image=image)),
        health_checks=[MarathonHealthCheck(
            protocol="COMMAND", command="true", grace_period_seconds=5, interval_seconds=1,
            timeout_seconds=2, max_consecutive_failures=2, delay_seconds=0)],
        upgrade_strategy=MarathonUpgradeStrategy(minimum_health_capacity=min_health,
                                                 maximum_over_capacity=max_over))
