"""Progress of long builds (HyperKernel, HyperQEMU) read from the build tool's own output.

ninja prints ``[N/M] …`` for each step; Kbuild prints one ``  CC      kernel/fork.o`` line per
step without a total, so the kernel's total is the step count of the last build (meta.json), or an
estimate measured for the current recipe. A line is reported each time another ~5 % is done: plain
lines, in a log or on a terminal alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NINJA = re.compile(rb"^\[(\d+)/(\d+)\] ")
_KBUILD = re.compile(rb"^  [A-Z][A-Z0-9_]{1,10} +\S")


class StepMeter:
    """Counts a build's steps from its output lines and calls ``report`` every ``every`` %."""

    def __init__(self, what: str, report: Callable[[str], None], *, total: int | None = None,
                 every: int = 5) -> None:
        self.what = what
        self.report = report
        self.total = total
        self.done = 0
        self.every = every
        self._next = every
        self._last = 0

    def line(self, raw: bytes) -> None:
        """One output line of the build."""
        match = _NINJA.match(raw)
        if match:
            self.done, self.total, exact = int(match.group(1)), int(match.group(2)), True
        elif _KBUILD.match(raw):
            self.done, exact = self.done + 1, False
        else:
            return
        if not self.total:
            return
        percent = 100 * self.done // self.total
        if not exact:
            percent = min(percent, 99)  # an estimate: 100 % is when the build ends
        target = self._next if exact else min(self._next, 99)
        if percent >= target and percent > self._last:
            about = "" if exact else "~"
            self.report(f"{self.what}: {percent}% ({self.done} of {about}{self.total} steps)")
            self._last = percent
            self._next = (percent // self.every + 1) * self.every
