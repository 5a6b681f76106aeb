"""One call on a thread of its own, its outcome in a Future: work that overlaps what the
caller does meanwhile (a VM's network policy while its domain is made, a task's exec socket
while the guest starts the task), which the caller then waits for with ``result()``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_thread(name: str, fn: Callable[..., T], *args: Any) -> Future[T]:
    """Start ``fn(*args)`` on a daemon thread named ``name``; its result or exception goes
    into the returned Future (``result()`` raises it in the caller)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller by the Future
            future.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
