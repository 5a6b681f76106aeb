"""Log lines a guest can cause, rate-limited per VM.

The guest is hostile: every line it can make the host log (a reply to no request, a frame for
no process, a broken channel) would otherwise let it fill the executor's log and disk. Each VM's
channel gets a token bucket; lines past it are counted and summarised as "N lines suppressed"
with the next line that passes (or on :meth:`GuestLog.flush`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: lines per second a guest may cause on average, and the burst it may cause at once
DEFAULT_RATE = 5.0
DEFAULT_BURST = 20


class GuestLog:
    """A logger for guest-caused lines with a token bucket (``rate`` lines/s, ``burst``)."""

    def __init__(self, logger: logging.Logger, who: str, rate: float = DEFAULT_RATE,
                 burst: int = DEFAULT_BURST, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.who = logger, who
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = float(burst)
        self._last = clock()
        self._suppressed = 0
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                self._suppressed += 1
                return
            self._tokens -= 1.0
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self.logger.warning("%s: %d lines caused by the guest suppressed", self.who,
                                suppressed)
        self.logger.log(level, msg, *args)

    def debug(self, msg: str, *args: object) -> None:
        self.log(logging.DEBUG, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    def flush(self) -> None:
        """Say how many lines were suppressed since the last line that passed."""
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self.logger.warning("%s: %d lines caused by the guest suppressed", self.who,
                                suppressed)
