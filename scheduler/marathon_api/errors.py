"""Errors of the Marathon API (rooted in the scheduler's; the REST layer maps the status)."""

from __future__ import annotations

from scheduler.errors import SchedulerError


class NotSupported(SchedulerError):
    """A Marathon feature hypervm-scheduler does not have (the message says which, the hint
    what to use instead)."""

    status = 501
