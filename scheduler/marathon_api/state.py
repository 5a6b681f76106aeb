"""What Marathon's API needs besides the scheduler's own tables, in the same SQLite database:
app versions, deployments, and when each task was staged and started (and for which version).
Every function takes the connection of an open transaction (or runs under the store's lock), so
it commits with the change it belongs to."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from hypervm.frozen import frozen_dataclass
from scheduler.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS marathon_versions (
    tenant TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL, definition TEXT NOT NULL,
    scaling INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, app, version));
CREATE TABLE IF NOT EXISTS marathon_deployments (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL,
    action TEXT NOT NULL, old TEXT NOT NULL, original TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS marathon_tasks (
    task_id TEXT PRIMARY KEY, staged_at REAL NOT NULL, started_at REAL, version TEXT);
CREATE TABLE IF NOT EXISTS marathon_idx (
    tenant TEXT NOT NULL, app TEXT NOT NULL, next INTEGER NOT NULL, PRIMARY KEY (tenant, app));
"""

#: versions kept per app
MAX_VERSIONS = 50
#: the actions of Marathon's deployment steps
START, SCALE, RESTART, STOP = ("StartApplication", "ScaleApplication", "RestartApplication",
                               "StopApplication")


def install(store: Store) -> None:
    with store.lock:
        store.db.executescript(SCHEMA)


def timestamp(t: float | None = None) -> str:
    """Marathon's timestamps and version ids: ISO 8601 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------- versions

def add_version(db: sqlite3.Connection, tenant: str, app: str, definition: dict[str, Any],
                scaling: bool) -> str:
    """A new version id (strictly later than the app's last one) for ``definition``."""
    now = time.time()
    last = latest_version(db, tenant, app)
    if last is not None:
        now = max(now, parse_timestamp(last) + 0.001)
    version = timestamp(now)
    db.execute("INSERT INTO marathon_versions VALUES (?, ?, ?, ?, ?)",
               (tenant, app, version, json.dumps(definition), int(scaling)))
    # as Marathon keeps a bounded history (a client updating in a loop cannot fill the disk)
    db.execute("DELETE FROM marathon_versions WHERE tenant=? AND app=? AND version NOT IN "
               "(SELECT version FROM marathon_versions WHERE tenant=? AND app=? ORDER BY "
               "version DESC LIMIT ?)", (tenant, app, tenant, app, MAX_VERSIONS))
    return version


def latest_version(db: sqlite3.Connection, tenant: str, app: str) -> str | None:
    row = db.execute("SELECT MAX(version) FROM marathon_versions WHERE tenant=? AND app=?",
                     (tenant, app)).fetchone()
    return row[0]


def versions(db: sqlite3.Connection, tenant: str, app: str) -> list[str]:
    """Newest first, as Marathon lists them."""
    return [r[0] for r in db.execute("SELECT version FROM marathon_versions WHERE tenant=? AND "
                                     "app=? ORDER BY version DESC", (tenant, app))]


def version_definition(db: sqlite3.Connection, tenant: str, app: str, version: str
                       ) -> dict[str, Any] | None:
    row = db.execute("SELECT definition FROM marathon_versions WHERE tenant=? AND app=? AND "
                     "version=?", (tenant, app, version)).fetchone()
    return json.loads(row[0]) if row else None


def version_info(db: sqlite3.Connection, tenant: str, app: str) -> dict[str, str | None]:
    """``lastScalingAt`` (any change) and ``lastConfigChangeAt`` (not only ``instances``)."""
    rows = db.execute("SELECT version, scaling FROM marathon_versions WHERE tenant=? AND app=? "
                      "ORDER BY version DESC", (tenant, app)).fetchall()
    scaling = rows[0][0] if rows else None
    config = next((r[0] for r in rows if not r[1]), scaling)
    return {"lastScalingAt": scaling, "lastConfigChangeAt": config}


def forget_app(db: sqlite3.Connection, tenant: str, app: str) -> None:
    db.execute("DELETE FROM marathon_versions WHERE tenant=? AND app=?", (tenant, app))


# ---------------------------------------------------------------------- deployments

@frozen_dataclass
class Deployment:
    id: str
    tenant: str
    app: str
    version: str
    action: str
    #: the instances (idx) the deployment replaces: they are removed as new ones get ready
    old: tuple[int, ...]
    #: the definition before the deployment (what a cancel rolls back to), None for a start
    original: dict[str, Any] | None
    created: float

    @classmethod
    def of(cls, row: sqlite3.Row) -> Deployment:
        return cls(row["id"], row["tenant"], row["app"], row["version"], row["action"],
                   tuple(json.loads(row["old"])),
                   json.loads(row["original"]) if row["original"] else None, row["created"])


def insert_deployment(db: sqlite3.Connection, dep: Deployment) -> None:
    db.execute("INSERT INTO marathon_deployments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (dep.id, dep.tenant, dep.app, dep.version, dep.action, json.dumps(dep.old),
                json.dumps(dep.original) if dep.original is not None else None, dep.created))


def update_old(db: sqlite3.Connection, dep_id: str, old: list[int]) -> None:
    db.execute("UPDATE marathon_deployments SET old=? WHERE id=?", (json.dumps(old), dep_id))


def delete_deployment(db: sqlite3.Connection, dep_id: str) -> None:
    db.execute("DELETE FROM marathon_deployments WHERE id=?", (dep_id,))


def deployments(db: sqlite3.Connection, tenant: str | None = None, app: str | None = None
                ) -> list[Deployment]:
    sql, args = "SELECT * FROM marathon_deployments WHERE 1=1", list[str]()
    if tenant is not None:
        sql, args = sql + " AND tenant=?", [*args, tenant]
    if app is not None:
        sql, args = sql + " AND app=?", [*args, app]
    return [Deployment.of(r) for r in db.execute(sql + " ORDER BY created", args)]


def reserve_idx(db: sqlite3.Connection, tenant: str, app: str, count: int) -> int:
    """The first of ``count`` instance indexes this app never had: task and executor ids are
    made of them, and Mesos refuses an executor id used before."""
    row = db.execute("SELECT next FROM marathon_idx WHERE tenant=? AND app=?",
                     (tenant, app)).fetchone()
    top = db.execute("SELECT COALESCE(MAX(idx), -1) + 1 FROM instances WHERE tenant=? AND "
                     "kind='app' AND workload=?", (tenant, app)).fetchone()[0]
    start = max(row[0] if row else 0, top)
    db.execute("INSERT OR REPLACE INTO marathon_idx VALUES (?, ?, ?)",
               (tenant, app, start + count))
    return start


# ---------------------------------------------------------------------- tasks

def note_task(db: sqlite3.Connection, task_id: str, state: str, version: str | None) -> None:
    """First sight of a task (its staging time and the app version), and its start."""
    now = time.time()
    db.execute("INSERT OR IGNORE INTO marathon_tasks (task_id, staged_at, version) "
               "VALUES (?, ?, ?)", (task_id, now, version))
    if state == "TASK_RUNNING":
        db.execute("UPDATE marathon_tasks SET started_at=? WHERE task_id=? AND started_at IS "
                   "NULL", (now, task_id))


def task_times(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, sqlite3.Row]:
    if not task_ids:
        return {}
    marks = ",".join("?" * len(task_ids))
    return {r["task_id"]: r for r in db.execute(
        f"SELECT * FROM marathon_tasks WHERE task_id IN ({marks})", task_ids)}


def prune_tasks(db: sqlite3.Connection) -> None:
    """Forget the times of tasks the scheduler has forgotten (removed instances)."""
    db.execute("DELETE FROM marathon_tasks WHERE task_id NOT IN (SELECT task_id FROM tasks)")
