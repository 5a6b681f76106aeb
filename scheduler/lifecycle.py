"""What an instance does next once its tasks change state. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable

TERMINAL = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
                      "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})
#: the order in which one task's state summarises an instance (first found wins)
_SUMMARY = ("TASK_FAILED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED", "TASK_GONE",
            "TASK_UNKNOWN", "TASK_KILLING", "TASK_KILLED", "TASK_STAGING", "TASK_STARTING",
            "TASK_RUNNING", "TASK_FINISHED")
_EXIT_RE = re.compile(r"exited with status (\d+)")


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def exit_code(state: str, message: str | None) -> int | None:
    """The task's exit code when the executor reported one (FINISHED is 0)."""
    if state == "TASK_FINISHED":
        return 0
    match = _EXIT_RE.search(message or "")
    if not match:
        return None
    # the executor relays what the guest says: clamp to an exit status's range (0-255) before
    # it reaches SQLite (an integer over 2^63 cannot be stored) or int() (4300 digits at most)
    digits = match.group(1)
    return min(int(digits), 255) if len(digits) <= 4 else 255


def summary(states: Iterable[str]) -> str:
    """One state for an instance: RUNNING while everything runs, FAILED if any failed …"""
    found = set(states)
    if not found:
        return "PENDING"
    if found - TERMINAL:
        live = found - TERMINAL
        for state in ("TASK_KILLING", "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"):
            if state in live and (state != "TASK_RUNNING" or live == {"TASK_RUNNING"}):
                return state.removeprefix("TASK_")
        return "RUNNING"
    for state in _SUMMARY:
        if state in found:
            return state.removeprefix("TASK_")
    return "FAILED"


def next_step(restart: str, removing: bool, states: Iterable[str]) -> str:
    """``wait`` (tasks still live), ``remove`` (scaled down/deleted), ``done`` or ``restart``."""
    states = list(states)
    if any(not is_terminal(s) for s in states):
        return "wait"
    if removing:
        return "remove"
    succeeded = all(s == "TASK_FINISHED" for s in states)
    if restart == "always" or (restart == "on-failure" and not succeeded):
        return "restart"
    return "done"
