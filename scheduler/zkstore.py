"""The scheduler's state in ZooKeeper (``--zk``), as Marathon keeps its state: one znode per row.

:class:`ZkStore` is a :class:`scheduler.store.Store` (the same SQL interface the rest of the
scheduler uses) whose working copy is an in-memory SQLite database loaded from ZooKeeper when
this scheduler becomes the leader. Temporary triggers note every row a transaction inserts,
updates or deletes; before the SQLite ``COMMIT`` those rows go to ZooKeeper in one atomic
``multi`` (``<root>/state/<table>/<rowid>``, the row as JSON), so a standby that takes over
loads exactly what the leader committed - nothing half-written. The ``multi`` is fenced: it
checks that this scheduler's election node still exists and that ``<root>/state`` has the
version this leader wrote last, so a deposed leader can write nothing. If the connection drops
during a commit, the outcome is read back from ``<root>/state`` (its data names the last
transaction) once the session is back; a commit that did not happen is rolled back in SQLite
too (``StorageUnavailable``, 503). Every table in the database is covered, also tables other
modules add later.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionLoss,
    KazooException,
    NoNodeError,
    OperationTimeoutError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.retry import KazooRetry

from scheduler.errors import StorageUnavailable
from scheduler.store import Store

log = logging.getLogger(__name__)

#: a ZooKeeper multi must fit in jute.maxbuffer (1 MiB by default), with room for the framing
MAX_TRANSACTION_BYTES = 900_000


class LeadershipLost(StorageUnavailable):
    """This scheduler is no longer the leader: another one may write the state now."""


def _unavailable(why: str) -> StorageUnavailable:
    return StorageUnavailable(f"the state in ZooKeeper cannot be written: {why}; nothing was "
                              "changed", hint="retry when ZooKeeper has a quorum again")


class ZkStore(Store):
    """The state under ``root`` (``<root>/state``), written only while ``fence`` (this
    scheduler's election node) exists."""

    def __init__(self, client: KazooClient, root: str, fence: str,
                 session_timeout: float = 10.0) -> None:
        super().__init__(":memory:")
        self.zk, self.fence = client, fence
        self.root = root.rstrip("/") + "/state"
        self.retry = KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0,
                                deadline=max(session_timeout, 1.0),
                                ignore_expire=False)
        #: znodes (table, rowid) that exist in ZooKeeper
        self.known: set[tuple[str, int]] = set()
        self.watched: set[str] = set()
        #: why this scheduler stopped being the leader (it must stop acting then)
        self.lost: str | None = None
        self.db.execute("PRAGMA recursive_triggers=ON")  # REPLACE's deletes are seen too
        # no constraint: a trigger's conflict clause yields to the outer statement's
        self.db.execute("CREATE TEMP TABLE zk_changes (tbl TEXT NOT NULL, rid INTEGER NOT NULL)")
        self.zk.ensure_path(self.root)
        self.version = self._load()
        self.watched.update(self.tables())
        self._install_triggers(self.tables())

    # ------------------------------------------------------------------ loading

    def tables(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT name FROM main.sqlite_master WHERE type='table' AND name NOT LIKE "
            "'sqlite_%' ORDER BY name")]

    def _load(self) -> int:
        """The version of ``<root>/state``; the rows of the tables known now are loaded (those
        of tables created later when they appear: :meth:`sync_tables`)."""
        _, stat = self.zk.get(self.root)
        rows = sum(self._load_table(table) for table in self.tables())
        log.info("state loaded from ZooKeeper %s: %d rows (version %d)", self.root, rows,
                 stat.version)
        return stat.version

    def _load_table(self, table: str) -> int:
        try:
            names = self.zk.get_children(f"{self.root}/{table}")
        except NoNodeError:
            return 0
        pending = [(name, self.zk.get_async(f"{self.root}/{table}/{name}")) for name in names]
        columns = {r[1] for r in self.db.execute(f"PRAGMA main.table_info('{table}')")}
        for name, result in pending:
            row = json.loads(result.get(timeout=30)[0])
            cols = [c for c in row if c in columns]
            self.db.execute(
                f"INSERT INTO main.\"{table}\" (rowid, {', '.join(cols)}) VALUES "
                f"(?{', ?' * len(cols)})", (int(name), *(row[c] for c in cols)))
            self.known.add((table, int(name)))
        return len(pending)

    def sync_tables(self) -> None:
        """Adopt the tables created since (e.g. the Marathon API's): their rows are loaded from
        ZooKeeper, their changes go there. Runs at every transaction; call it after creating
        tables so they are read before a first write."""
        with self.lock:
            self._watch_tables()

    def _watch_tables(self) -> None:
        """Tables that appeared since: load their rows, then note their changes."""
        new = [t for t in self.tables() if t not in self.watched]
        for table in new:
            if self._load_table(table):
                log.info("state: table %s loaded from ZooKeeper", table)
        self._install_triggers(new)
        self.watched.update(new)

    def _install_triggers(self, tables: list[str]) -> None:
        """Temporary triggers note the rows a transaction changes in ``tables``."""
        for table in tables:
            self.zk.ensure_path(f"{self.root}/{table}")
            for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("OLD", "NEW")),
                                ("DELETE", ("OLD",))):
                body = " ".join(f"INSERT INTO zk_changes VALUES ('{table}', {r}.rowid);"
                                for r in rows)
                self.db.execute(f"CREATE TEMP TRIGGER \"zk_{table}_{event}\" AFTER {event} ON "
                                f"main.\"{table}\" BEGIN {body} END")

    # ------------------------------------------------------------------ writing

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """As :meth:`Store.tx`; the rows changed go to ZooKeeper before the SQLite COMMIT (a
        failure there rolls both back)."""
        with super().tx() as db:
            self._watch_tables()
            db.execute("DELETE FROM temp.zk_changes")
            yield db
            self._persist(db)

    def _persist(self, db: sqlite3.Connection) -> None:
        changes = db.execute("SELECT DISTINCT tbl, rid FROM temp.zk_changes ORDER BY tbl, "
                             "rid").fetchall()
        db.execute("DELETE FROM temp.zk_changes")
        if not changes:
            return
        ops: list[tuple[str, str, bytes | None]] = []
        for table, rid in changes:
            row = db.execute(f"SELECT * FROM main.\"{table}\" WHERE rowid=?", (rid,)).fetchone()
            path = f"{self.root}/{table}/{rid}"
            if row is not None:
                data = json.dumps(dict(row), separators=(",", ":")).encode()
                ops.append(("set" if (table, rid) in self.known else "create", path, data))
            elif (table, rid) in self.known:
                ops.append(("delete", path, None))
        size = sum(len(path) + len(data or b"") + 16 for _, path, data in ops)
        if size > MAX_TRANSACTION_BYTES:
            raise _unavailable(f"the change is too large ({size} bytes in {len(ops)} rows, "
                               f"ZooKeeper takes {MAX_TRANSACTION_BYTES})")
        if ops:
            try:
                self._commit(ops)
            except LeadershipLost as e:
                self.lost = str(e)
                raise
            for _, path, written in ops:
                table, rid = path.rsplit("/", 2)[-2:]
                (self.known.add if written is not None else self.known.discard)((table, int(rid)))

    def _commit(self, ops: list[tuple[str, str, bytes | None]]) -> None:
        token = secrets.token_hex(8).encode()
        t = self.zk.transaction()
        t.check(self.fence, 0)
        t.set_data(self.root, token, version=self.version)
        for kind, path, data in ops:
            if kind == "create":
                t.create(path, data)
            elif kind == "set":
                t.set_data(path, data)
            else:
                t.delete(path)
        try:
            results = t.commit()
        except SessionExpiredError as e:
            raise LeadershipLost("the ZooKeeper session expired: this scheduler is no "
                                 "longer the leader") from e
        except (ConnectionLoss, OperationTimeoutError):
            results = self._outcome(token)
        except KazooException as e:
            raise _unavailable(str(e)) from e
        # a failed multi answers the failed op's error, RolledBackError for the others
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)
                  and not isinstance(r, RolledBackError)]
        if failed:
            index, error = failed[0]
            if index == 0:
                raise LeadershipLost("this scheduler's election node is gone: it is no "
                                     "longer the leader")
            if index == 1:
                raise LeadershipLost("another scheduler wrote the state: this one is no "
                                     "longer the leader")
            raise _unavailable(f"{type(error).__name__} on {ops[index - 2][1]}")
        self.version += 1

    def _outcome(self, token: bytes) -> list[Any]:
        """After a lost connection: did the multi happen? ``<root>/state`` tells (its data is
        the token of the last transaction)."""
        try:
            data, stat = self.retry(self.zk.get, self.root)
        except SessionExpiredError as e:
            raise LeadershipLost("the ZooKeeper session expired during a commit") from e
        except (KazooException, NoNodeError) as e:
            raise _unavailable(f"the connection to ZooKeeper was lost during a commit and "
                               f"did not come back ({e})") from e
        if data == token and stat.version == self.version + 1:
            log.info("the commit interrupted by a lost connection did happen")
            return []
        if stat.version != self.version:
            raise LeadershipLost("another scheduler wrote the state")
        raise _unavailable("the connection to ZooKeeper was lost during the commit")
