"""The scheduler's state in SQLite: written (and committed) before the scheduler acts on it.

Workloads (pods and apps, per tenant), their instances (one task group each) and every task
launched. A task row is committed before the ACCEPT that launches it, so a scheduler that
crashes and restarts finds it, reconciles it, and never launches that instance again while the
task may live.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypervm.frozen import frozen_dataclass
from scheduler import failures, lifecycle
from scheduler.errors import ConfigError, StorageUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, definition TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    PRIMARY KEY (tenant, kind, id));
CREATE TABLE IF NOT EXISTS instances (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, workload TEXT NOT NULL, idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    -- PENDING (waits for an offer), LAUNCHED (tasks exist), DONE
    state TEXT NOT NULL DEFAULT 'PENDING', removing INTEGER NOT NULL DEFAULT 0,
    executor_id TEXT, agent_id TEXT, hostname TEXT, not_before REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, kind, workload, idx));
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, workload TEXT NOT NULL,
    idx INTEGER NOT NULL, attempt INTEGER NOT NULL, container TEXT NOT NULL,
    state TEXT NOT NULL, message TEXT, reason TEXT, healthy INTEGER, exit_code INTEGER,
    agent_id TEXT, hostname TEXT, ports TEXT NOT NULL DEFAULT '[]', updated REAL NOT NULL);
-- the next attempt of every instance slot ever launched: a workload deleted and created again,
-- or scaled down and up, never reuses a task id (a late update cannot be taken for a new task)
CREATE TABLE IF NOT EXISTS generations (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, workload TEXT NOT NULL, idx INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL, PRIMARY KEY (tenant, kind, workload, idx));
"""


@frozen_dataclass
class InstanceKey:
    tenant: str
    kind: str
    workload: str
    idx: int


@frozen_dataclass
class LaunchRecord:
    task_id: str
    container: str
    ports: list[dict[str, Any]]


#: SQLite's result codes that say the database cannot be written now (not a bug of ours)
_STORAGE_ERRORS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_BUSY",
                   "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_CORRUPT", "SQLITE_NOLFS")


def is_storage_error(e: sqlite3.Error) -> bool:
    return str(getattr(e, "sqlite_errorname", "")).startswith(_STORAGE_ERRORS)


def storage_error(e: sqlite3.Error) -> StorageUnavailable:
    return StorageUnavailable(
        f"the state database cannot be written: {e} "
        f"({getattr(e, 'sqlite_errorname', 'SQLITE_ERROR')}); nothing was changed",
        hint="free space on the state volume (or fix its I/O error), then retry")


def open_store(url: str) -> Store:
    """``sqlite:///abs/path.db`` (or ``sqlite://:memory:``) → Store."""
    if not url.startswith("sqlite://"):
        raise ConfigError(f"--state {url!r}: only sqlite:///PATH is supported")
    path = url[len("sqlite://"):]
    if path != ":memory:":
        if not path.startswith("/"):
            raise ConfigError(f"--state {url!r}: give an absolute path: sqlite:///var/lib/x.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Store(path)


class Store:
    def __init__(self, path: str) -> None:
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            if path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA + failures.SCHEMA)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the state database {path}: {e}") from e
        self.lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One serialised transaction, committed when the block ends without error, else (and
        when the COMMIT itself fails) rolled back: nothing is half-written, and the next
        transaction starts clean. A full disk or an I/O error is :class:`StorageUnavailable`."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise storage_error(e) from e
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException as e:
                if self.db.in_transaction:  # SQLite may have rolled back already
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and is_storage_error(e):
                    raise storage_error(e) from e
                raise

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM meta WHERE key=?", (key,))

    # ------------------------------------------------------------------ workloads

    def workload(self, db: sqlite3.Connection, tenant: str, kind: str, wid: str
                 ) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM workloads WHERE tenant=? AND kind=? AND id=? "
                          "AND deleted=0", (tenant, kind, wid)).fetchone()

    def workloads(self, tenant: str | None = None, kind: str | None = None,
                  include_deleted: bool = False) -> list[sqlite3.Row]:
        sql = "SELECT * FROM workloads WHERE 1=1"
        args: list[Any] = []
        if tenant is not None:
            sql, args = sql + " AND tenant=?", [*args, tenant]
        if kind is not None:
            sql, args = sql + " AND kind=?", [*args, kind]
        if not include_deleted:
            sql += " AND deleted=0"
        with self.lock:
            return self.db.execute(sql + " ORDER BY created, id", args).fetchall()

    def instances(self, tenant: str, kind: str, wid: str) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute("SELECT * FROM instances WHERE tenant=? AND kind=? AND "
                                   "workload=? ORDER BY idx", (tenant, kind, wid)).fetchall()

    def tasks_of(self, key: InstanceKey, attempt: int) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(
                "SELECT * FROM tasks WHERE tenant=? AND kind=? AND workload=? AND idx=? AND "
                "attempt=? ORDER BY rowid", (key.tenant, key.kind, key.workload, key.idx,
                                             attempt)).fetchall()

    def insert_workload(self, db: sqlite3.Connection, tenant: str, kind: str, wid: str,
                        definition: dict[str, Any], instances: int) -> None:
        db.execute("DELETE FROM workloads WHERE tenant=? AND kind=? AND id=? AND deleted=1",
                   (tenant, kind, wid))
        db.execute("INSERT INTO workloads (tenant, kind, id, definition, created) "
                   "VALUES (?, ?, ?, ?, ?)", (tenant, kind, wid, json.dumps(definition),
                                              time.time()))
        for idx in range(instances):
            self.add_instance(db, tenant, kind, wid, idx)

    def add_instance(self, db: sqlite3.Connection, tenant: str, kind: str, wid: str,
                     idx: int) -> None:
        # a plain INSERT: an instance that still exists (e.g. being removed) is never replaced
        db.execute("INSERT INTO instances (tenant, kind, workload, idx, attempt) VALUES "
                   "(?, ?, ?, ?, COALESCE((SELECT next_attempt FROM generations WHERE tenant=? "
                   "AND kind=? AND workload=? AND idx=?), 0))",
                   (tenant, kind, wid, idx, tenant, kind, wid, idx))

    def pending(self, tenants: list[str], now: float) -> list[sqlite3.Row]:
        """Instances waiting for an offer, oldest workloads first."""
        if not tenants:
            return []
        marks = ",".join("?" * len(tenants))
        with self.lock:
            return self.db.execute(
                "SELECT i.*, w.definition FROM instances i JOIN workloads w ON "
                "w.tenant=i.tenant AND w.kind=i.kind AND w.id=i.workload "
                f"WHERE i.state='PENDING' AND i.removing=0 AND w.deleted=0 AND i.tenant IN "
                f"({marks}) AND i.not_before<=? ORDER BY w.created, i.idx",
                (*tenants, now)).fetchall()

    def next_wakeup(self) -> float | None:
        """The earliest time a pending instance may launch (None: nothing pending)."""
        with self.lock:
            row = self.db.execute(
                "SELECT MIN(not_before) AS t FROM instances WHERE state='PENDING' AND "
                "removing=0").fetchone()
        return row["t"]

    def mark_launched(self, key: InstanceKey, attempt: int, executor_id: str, agent_id: str,
                      hostname: str, tasks: list[LaunchRecord]) -> None:
        """Committed before the ACCEPT: the instance will not be launched again."""
        now = time.time()
        with self.tx() as db:
            db.execute("UPDATE instances SET state='LAUNCHED', attempt=?, executor_id=?, "
                       "agent_id=?, hostname=? WHERE tenant=? AND kind=? AND workload=? AND "
                       "idx=?", (attempt, executor_id, agent_id, hostname, key.tenant, key.kind,
                                 key.workload, key.idx))
            db.execute("INSERT INTO generations VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                       "next_attempt=MAX(next_attempt, excluded.next_attempt)",
                       (key.tenant, key.kind, key.workload, key.idx, attempt + 1))
            for t in tasks:
                db.execute("INSERT INTO tasks (task_id, tenant, kind, workload, idx, attempt, "
                           "container, state, agent_id, hostname, ports, updated) VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, 'TASK_STAGING', ?, ?, ?, ?)",
                           (t.task_id, key.tenant, key.kind, key.workload, key.idx, attempt,
                            t.container, agent_id, hostname, json.dumps(t.ports), now))

    def live_tasks(self) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(lifecycle.TERMINAL))
        with self.lock:
            return self.db.execute(f"SELECT * FROM tasks WHERE state NOT IN ({marks})",
                                   tuple(lifecycle.TERMINAL)).fetchall()

    def task(self, task_id: str) -> sqlite3.Row | None:
        with self.lock:
            return self.db.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
