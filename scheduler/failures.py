"""The last task failure of each workload, as Marathon shows it (``lastTaskFailure``).

A task that fails, errors, is lost or dropped - including a launch the master refuses
(``TASK_ERROR`` "Executor … uses no disk", ``TASK_DROPPED``/``TASK_LOST`` for invalid offers) -
is recorded on its workload, so a user sees why an app keeps relaunching. Messages come from the
executor (which relays the guest's words) and the master: they are bounded before storage.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
import time
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, workload TEXT NOT NULL, task_id TEXT NOT NULL,
    state TEXT NOT NULL, message TEXT, reason TEXT, source TEXT, agent_id TEXT,
    hostname TEXT, at REAL NOT NULL, PRIMARY KEY (tenant, kind, workload));
"""
#: terminal states that are a failure (KILLED is what we asked for, FINISHED is success)
FAILURE_STATES = frozenset({"TASK_FAILED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
                            "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})
MAX_MESSAGE = 1024


def bounded(text: Any, limit: int = MAX_MESSAGE) -> str | None:
    """A status message or reason as we store it: a string of at most ``limit`` characters."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def refused_by_master(status: dict[str, Any]) -> bool:
    """The master did not launch the task (an invalid or unauthorized task group, offers no
    longer valid): relaunching the same thing fails the same way, so it is logged loudly."""
    return status.get("source") == "SOURCE_MASTER" and (
        status.get("state") in ("TASK_ERROR", "TASK_DROPPED")
        or status.get("reason") == "REASON_INVALID_OFFERS")


def record(db: sqlite3.Connection, task: sqlite3.Row, status: dict[str, Any]) -> None:
    """Remember ``status`` as the workload's last failure (inside the caller's transaction)."""
    if status.get("state") not in FAILURE_STATES:
        return
    agent = (status.get("agent_id") or {}).get("value") or task["agent_id"]
    db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (task["tenant"], task["kind"], task["workload"], task["task_id"],
                status["state"], bounded(status.get("message")),
                bounded(status.get("reason"), 64), bounded(status.get("source"), 64),
                bounded(agent, 255), task["hostname"], time.time()))
    if refused_by_master(status):
        log.warning("the master refused task %s of %s %s/%s: %s (%s)", task["task_id"],
                    task["kind"], task["tenant"], task["workload"], status["state"],
                    bounded(status.get("message")))


def forget(db: sqlite3.Connection, tenant: str, kind: str, wid: str) -> None:
    db.execute("DELETE FROM failures WHERE tenant=? AND kind=? AND workload=?",
               (tenant, kind, wid))


def iso(ts: float) -> str:
    """Marathon's timestamps: ISO 8601, UTC, milliseconds."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def last_failure(db: sqlite3.Connection, workload: sqlite3.Row) -> dict[str, Any] | None:
    """Marathon's ``TaskFailure`` JSON (appId, host, message, state, taskId, timestamp,
    version, slaveId), or None."""
    row = db.execute("SELECT * FROM failures WHERE tenant=? AND kind=? AND workload=?",
                     (workload["tenant"], workload["kind"], workload["id"])).fetchone()
    if row is None:
        return None
    return {"appId": workload["id"], "host": row["hostname"] or "",
            "message": row["message"] or "", "state": row["state"], "taskId": row["task_id"],
            "timestamp": iso(row["at"]), "version": iso(workload["created"]),
            "slaveId": row["agent_id"] or ""}
