"""Calls the pool daemon makes a little later, off a launch's clock: a claimed VM's owner
record (a libvirt metadata write) waits until the claimer's first START is done, because
libvirtd rewriting the domain's status meanwhile slowed that START from ~12 to ~38 ms on this
TCG host (measured in-process, bench/README.md "The warm launch alone"). The daemon's own
record of the claimer (in memory) holds meanwhile: its reaper and releases use that one."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

#: seconds a claim's owner record waits (a warm launch's START takes 10-60 ms here)
RECORD_DELAY_S = 0.5


class Deferred:
    """Run calls ``delay`` seconds later, each on a timer thread of its own, or all at once
    with :meth:`flush` (before the daemon closes its libvirt connection). ``delay`` <= 0: at
    once, in the caller."""

    def __init__(self, delay: float = RECORD_DELAY_S) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._pending: dict[int, tuple[threading.Timer, Callable[..., None], tuple[Any, ...]]] = {}

    def call_later(self, fn: Callable[..., None], *args: Any) -> None:
        if self.delay <= 0:
            fn(*args)
            return
        key = next(self._keys)
        timer = threading.Timer(self.delay, self._run, (key,))
        timer.daemon = True
        with self._lock:
            self._pending[key] = (timer, fn, args)
        timer.start()

    def _run(self, key: int) -> None:
        with self._lock:
            entry = self._pending.pop(key, None)
        if entry is not None:
            entry[1](*entry[2])

    def flush(self) -> None:
        """Run every pending call now (in the caller), in the order they were made."""
        with self._lock:
            entries = [self._pending[k] for k in sorted(self._pending)]
            self._pending.clear()
        for timer, fn, args in entries:
            timer.cancel()
            fn(*args)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
