"""What the API and the framework do to workloads: admission (quota), views, scale, kill, and
applying task status updates (restarts with backoff). Every change is one SQLite transaction;
the caller acts (kill, revive) only after it is committed."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from scheduler import failures, lifecycle, limits
from scheduler.errors import Conflict, NotFound, QuotaExceeded
from scheduler.marathon import parse_app
from scheduler.model import WorkloadSpec
from scheduler.pods import parse_pod
from scheduler.store import InstanceKey, Store
from scheduler.tenants import Tenant

log = logging.getLogger(__name__)
PARSERS: dict[str, Callable[[Any], WorkloadSpec]] = {"pod": parse_pod, "app": parse_app}


def spec_of(row: sqlite3.Row) -> WorkloadSpec:
    return PARSERS[row["kind"]](json.loads(row["definition"]))


class Workloads:
    def __init__(self, store: Store, on_change: Callable[[], None] = lambda: None,
                 kill: Callable[[str, str], None] = lambda task_id, agent_id: None) -> None:
        self.store = store
        #: called after a commit that may create work (the framework revives offers)
        self.on_change = on_change
        #: asks Mesos to kill a task (the framework's driver)
        self.kill = kill

    # ------------------------------------------------------------------ admission

    def usage(self, db: sqlite3.Connection, tenant: str) -> tuple[float, float, int]:
        """cpus, mem and instances of the tenant's workloads that still run or will - those
        being removed (scaled down, deleted) too, until their tasks have ended."""
        cpus = mem = 0.0
        count = 0
        for row in db.execute("SELECT * FROM workloads WHERE tenant=?", (tenant,)):
            spec = spec_of(row)
            n = db.execute("SELECT COUNT(*) FROM instances WHERE tenant=? AND kind=? AND "
                           "workload=? AND state!='DONE'",
                           (tenant, row["kind"], row["id"])).fetchone()[0]
            cpus, mem, count = cpus + n * spec.cpus, mem + n * spec.mem, count + n
        return cpus, mem, count

    def admit(self, db: sqlite3.Connection, tenant: Tenant, spec: WorkloadSpec, extra: int
              ) -> None:
        """Refuse ``extra`` more instances of ``spec`` if they break a quota (named)."""
        if extra <= 0:
            return
        cpus, mem, count = self.usage(db, tenant.id)
        quota = tenant.quota
        for name, used, more, limit in (
                ("instances", count, extra, quota.instances),
                ("cpus", cpus, extra * spec.cpus, quota.cpus),
                ("mem", mem, extra * spec.mem, quota.mem)):
            if used + more > limit + 1e-9:
                raise QuotaExceeded(name, f"quota {name} of tenant {tenant.id} exceeded: "
                                          f"{more:g} requested + {used:g} in use > {limit:g}")

    def create(self, tenant: Tenant, kind: str, definition: Any) -> WorkloadSpec:
        spec = PARSERS[kind](definition)
        with self.store.tx() as db:
            self._refuse_taken(db, tenant, kind, spec.id)
            self.admit(db, tenant, spec, spec.instances)
            self.store.insert_workload(db, tenant.id, kind, spec.id, spec.definition,
                                       spec.instances)
        log.info("tenant %s created %s %s (%d instances)", tenant.id, kind, spec.id,
                 spec.instances)
        self.on_change()
        return spec

    def _refuse_taken(self, db: sqlite3.Connection, tenant: Tenant, kind: str, wid: str
                      ) -> None:
        """409 while the id exists, or was deleted and some of its tasks still live."""
        row = db.execute("SELECT deleted FROM workloads WHERE tenant=? AND kind=? AND id=?",
                         (tenant.id, kind, wid)).fetchone()
        if row is None:
            return
        if not row["deleted"]:
            raise Conflict(f"{kind} {wid} exists already",
                           hint="delete it first or choose another id")
        left = db.execute("SELECT COUNT(*) FROM instances WHERE tenant=? AND kind=? AND "
                          "workload=?", (tenant.id, kind, wid)).fetchone()[0]
        if not left:
            return  # nothing of it is left: insert_workload replaces the row
        raise Conflict(f"{kind} {wid} is being deleted: {left} instance(s) still have live "
                       "tasks", hint="retry once they have ended (the id is free then)")

    def scale(self, tenant: Tenant, kind: str, wid: str, instances: int) -> WorkloadSpec:
        limits.check_instances(instances)
        kills: list[tuple[str, str]] = []
        with self.store.tx() as db:
            row = self._get(db, tenant, kind, wid)
            spec = spec_of(row)
            definition = {**json.loads(row["definition"]), "instances": instances}
            current = [r for r in db.execute(
                "SELECT * FROM instances WHERE tenant=? AND kind=? AND workload=? AND "
                "removing=0 ORDER BY idx", (tenant.id, kind, wid))]
            if instances > len(current):
                self.admit(db, tenant, spec, instances - len(current))
                top = db.execute("SELECT COALESCE(MAX(idx), -1) FROM instances WHERE tenant=? "
                                 "AND kind=? AND workload=?", (tenant.id, kind, wid)).fetchone()
                for idx in range(top[0] + 1, top[0] + 1 + instances - len(current)):
                    self.store.add_instance(db, tenant.id, kind, wid, idx)
            for inst in current[instances:]:
                kills += self._remove_instance(db, inst)
            db.execute("UPDATE workloads SET definition=? WHERE tenant=? AND kind=? AND id=?",
                       (json.dumps(definition), tenant.id, kind, wid))
        self._kill_all(kills)
        self.on_change()
        return PARSERS[kind](definition)

    def delete(self, tenant: Tenant, kind: str, wid: str) -> None:
        kills: list[tuple[str, str]] = []
        with self.store.tx() as db:
            self._get(db, tenant, kind, wid)
            db.execute("UPDATE workloads SET deleted=1 WHERE tenant=? AND kind=? AND id=?",
                       (tenant.id, kind, wid))
            for inst in db.execute("SELECT * FROM instances WHERE tenant=? AND kind=? AND "
                                   "workload=?", (tenant.id, kind, wid)).fetchall():
                kills += self._remove_instance(db, inst)
            self._purge(db, tenant.id, kind, wid)
        log.info("tenant %s deleted %s %s", tenant.id, kind, wid)
        self._kill_all(kills)

    def _remove_instance(self, db: sqlite3.Connection, inst: sqlite3.Row
                         ) -> list[tuple[str, str]]:
        where = (inst["tenant"], inst["kind"], inst["workload"], inst["idx"])
        live = [(t["task_id"], t["agent_id"]) for t in db.execute(
            "SELECT * FROM tasks WHERE tenant=? AND kind=? AND workload=? AND idx=? AND "
            "attempt=?", (*where, inst["attempt"])) if not lifecycle.is_terminal(t["state"])]
        if inst["state"] == "LAUNCHED" and live:
            db.execute("UPDATE instances SET removing=1 WHERE tenant=? AND kind=? AND "
                       "workload=? AND idx=?", where)
        else:
            db.execute("DELETE FROM instances WHERE tenant=? AND kind=? AND workload=? AND "
                       "idx=?", where)
            db.execute("DELETE FROM tasks WHERE tenant=? AND kind=? AND workload=? AND idx=?",
                       where)
        return live

    def _purge(self, db: sqlite3.Connection, tenant: str, kind: str, wid: str) -> None:
        """Forget a deleted workload once none of its instances is left."""
        left = db.execute("SELECT COUNT(*) FROM instances WHERE tenant=? AND kind=? AND "
                          "workload=?", (tenant, kind, wid)).fetchone()[0]
        if not left:
            gone = db.execute("DELETE FROM workloads WHERE tenant=? AND kind=? AND id=? AND "
                              "deleted=1", (tenant, kind, wid)).rowcount
            if gone:
                failures.forget(db, tenant, kind, wid)

    def _kill_all(self, kills: list[tuple[str, str]]) -> None:
        for task_id, agent_id in kills:
            self.kill(task_id, agent_id)

    def _get(self, db: sqlite3.Connection, tenant: Tenant, kind: str, wid: str) -> sqlite3.Row:
        row = self.store.workload(db, tenant.id, kind, wid)
        if row is None:
            raise NotFound(f"{kind} {wid} not found")
        return row

    # ------------------------------------------------------------------ views

    def view(self, tenant: Tenant, kind: str, wid: str) -> dict[str, Any]:
        with self.store.lock:
            row = self._get(self.store.db, tenant, kind, wid)
            return self._view(row)

    def list_of(self, tenant: Tenant, kind: str) -> list[dict[str, Any]]:
        with self.store.lock:
            return [self._view(row) for row in self.store.workloads(tenant.id, kind)]

    def _view(self, row: sqlite3.Row) -> dict[str, Any]:
        instances = []
        for inst in self.store.instances(row["tenant"], row["kind"], row["id"]):
            key = InstanceKey(row["tenant"], row["kind"], row["id"], inst["idx"])
            tasks = [{
                "taskId": t["task_id"], "container": t["container"],
                "state": t["state"], "exitCode": t["exit_code"], "message": t["message"],
                "healthy": None if t["healthy"] is None else bool(t["healthy"]),
                "agentId": t["agent_id"], "host": t["hostname"],
                "ports": json.loads(t["ports"]),
            } for t in self.store.tasks_of(key, inst["attempt"])]
            state = "PENDING" if inst["state"] == "PENDING" else lifecycle.summary(
                t["state"] for t in tasks)
            instances.append({
                "index": inst["idx"], "state": "REMOVING" if inst["removing"] else state,
                "attempt": inst["attempt"], "failures": inst["failures"],
                "host": inst["hostname"], "agentId": inst["agent_id"],
                "executorId": inst["executor_id"], "tasks": tasks,
                "nextLaunchAt": inst["not_before"] if inst["state"] == "PENDING" else None})
        return {"id": row["id"], "kind": row["kind"], "definition": json.loads(row["definition"]),
                "instances": instances,
                "lastTaskFailure": failures.last_failure(self.store.db, row)}

    # ------------------------------------------------------------------ status updates

    def apply_status(self, status: dict[str, Any]) -> bool:
        """Record a TaskStatus; returns False for a task we never launched (kill it)."""
        task_id = status["task_id"]["value"]
        state = status["state"]
        message = failures.bounded(status.get("message"))
        restart = False
        with self.store.tx() as db:
            task = db.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
            if task is None:
                return False
            if lifecycle.is_terminal(task["state"]) and not lifecycle.is_terminal(state):
                return True  # a late, stale update
            healthy = status.get("healthy")
            healthy = healthy if isinstance(healthy, bool) else None
            failures.record(db, task, status)
            db.execute("UPDATE tasks SET state=?, message=COALESCE(?, message), reason=?, "
                       "healthy=COALESCE(?, healthy), exit_code=?, updated=? WHERE task_id=?",
                       (state, message, failures.bounded(status.get("reason"), 64),
                        None if healthy is None else int(healthy),
                        lifecycle.exit_code(state, message), time.time(), task_id))
            restart = self._advance(db, task)
        if restart:
            self.on_change()
        return True

    def _advance(self, db: sqlite3.Connection, task: sqlite3.Row) -> bool:
        where = (task["tenant"], task["kind"], task["workload"], task["idx"])
        inst = db.execute("SELECT * FROM instances WHERE tenant=? AND kind=? AND workload=? "
                          "AND idx=?", where).fetchone()
        if inst is None or inst["attempt"] != task["attempt"] or inst["state"] != "LAUNCHED":
            return False
        states = [r["state"] for r in db.execute(
            "SELECT state FROM tasks WHERE tenant=? AND kind=? AND workload=? AND idx=? AND "
            "attempt=?", (*where, task["attempt"]))]
        wl = db.execute("SELECT * FROM workloads WHERE tenant=? AND kind=? AND id=?",
                        where[:3]).fetchone()
        spec = spec_of(wl)
        step = lifecycle.next_step(spec.restart, bool(inst["removing"]) or wl["deleted"],
                                   states)
        if step == "remove":
            db.execute("DELETE FROM instances WHERE tenant=? AND kind=? AND workload=? AND "
                       "idx=?", where)
            db.execute("DELETE FROM tasks WHERE tenant=? AND kind=? AND workload=? AND idx=?",
                       where)
            self._purge(db, *where[:3])
        elif step == "done":
            db.execute("UPDATE instances SET state='DONE' WHERE tenant=? AND kind=? AND "
                       "workload=? AND idx=?", where)
        elif step == "restart":
            failures = inst["failures"] + 1
            delay = spec.backoff(failures)
            log.info("%s %s/%s instance %d ended (%s): relaunch in %.1f s", task["kind"],
                     task["tenant"], task["workload"], task["idx"], sorted(set(states)), delay)
            db.execute("UPDATE instances SET state='PENDING', attempt=attempt+1, failures=?, "
                       "not_before=? WHERE tenant=? AND kind=? AND workload=? AND idx=?",
                       (failures, time.time() + delay, *where))
            return True
        return False

    def removing_tasks(self) -> list[tuple[str, str]]:
        """Live tasks of instances being removed (their kill is re-sent until they end)."""
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT t.task_id, t.agent_id, t.state FROM tasks t JOIN instances i ON "
                "t.tenant=i.tenant AND t.kind=i.kind AND t.workload=i.workload AND t.idx=i.idx "
                "AND t.attempt=i.attempt WHERE i.removing=1").fetchall()
        return [(r["task_id"], r["agent_id"]) for r in rows
                if not lifecycle.is_terminal(r["state"])]
