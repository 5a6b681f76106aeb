"""Deployments, as Marathon has them: every change of an app (create, scale, new definition,
restart, delete) is a deployment; a new definition replaces the instances by a rolling upgrade
(``rolling.py``) that honours ``upgradeStrategy`` and health checks; while one runs the app is
locked (409 unless ``force=true``, which supersedes it); cancelling one rolls back to the
definition before it (``force=true``: just stop it where it is).

A deployment is a row (``state.py``): its app, version, action and the instances it replaces.
``tick()`` (about every half second) moves each one on from what the database says, so a
scheduler that restarts resumes them where they were.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypervm.errors import InvalidSpec
from scheduler import lifecycle
from scheduler.errors import Conflict, NotFound, QuotaExceeded
from scheduler.marathon import normalize_id, parse_app
from scheduler.marathon_api import appdef, rolling, state, views
from scheduler.marathon_api.events import EventBus, event
from scheduler.marathon_api.state import RESTART, SCALE, START, STOP, Deployment
from scheduler.model import WorkloadSpec
from scheduler.service import Workloads, spec_of
from scheduler.tenants import Tenant

log = logging.getLogger(__name__)
PRUNE_EVERY = 120


class Locked(Conflict):
    """The app has a deployment in progress."""


@dataclass
class Outcome:
    """What a committed change still has to do: kill tasks, revive offers, publish events."""
    tenant: str
    dep: Deployment | None = None
    target: dict[str, Any] | None = None
    kills: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[tuple[Deployment, dict[str, Any] | None]] = field(default_factory=list)
    launched: bool = False
    #: a new deployment (deployment_info) or a finished one (deployment_success)
    started: bool = False
    succeeded: bool = False


class Deployments:
    def __init__(self, workloads: Workloads, bus: EventBus) -> None:
        self.workloads, self.store, self.bus = workloads, workloads.store, bus
        self._ticks = 0

    # ------------------------------------------------------------------ changes from the API

    def created(self, tenant: Tenant, spec: WorkloadSpec) -> Deployment:
        """The app was created: its first version and its start deployment."""
        with self.store.tx() as db:
            # an app of the same id deleted before is gone (else create refuses): its stop
            # deployment and its versions went with it
            for old in state.deployments(db, tenant.id, spec.id):
                state.delete_deployment(db, old.id)
            state.forget_app(db, tenant.id, spec.id)
            version = state.add_version(db, tenant.id, spec.id, spec.definition, False)
            dep = Deployment(_new_id(), tenant.id, spec.id, version, START, (), None,
                             time.time())
            state.insert_deployment(db, dep)
        self._after(Outcome(tenant.id, dep, spec.definition, launched=True, started=True))
        return dep

    def update(self, tenant: Tenant, app_id: str, body: Any, *, partial: bool = True,
               force: bool = False) -> Deployment:
        """PUT/PATCH: ``partial`` merges ``body`` into the definition; ``{"version": v}`` rolls
        back to version v."""
        if not isinstance(body, dict):
            raise InvalidSpec("(body)", "must be a JSON object")
        with self.store.tx() as db:
            row = self._row(db, tenant, app_id)
            current = json.loads(row["definition"])
            if set(body) - {"id"} == {"version"}:
                target = state.version_definition(db, tenant.id, app_id, str(body["version"]))
                if target is None:
                    raise NotFound(f"app {app_id} has no version {body['version']}")
            else:
                target = {**current, **body} if partial else dict(body)
            out = self._deploy(db, tenant, row, current, target, force, restart=False)
        self._after(out)
        assert out.dep is not None
        return out.dep

    def restart(self, tenant: Tenant, app_id: str, force: bool = False) -> Deployment:
        with self.store.tx() as db:
            row = self._row(db, tenant, app_id)
            current = json.loads(row["definition"])
            out = self._deploy(db, tenant, row, current, current, force, restart=True)
        self._after(out)
        assert out.dep is not None
        return out.dep

    def delete(self, tenant: Tenant, app_id: str, force: bool = False) -> Deployment:
        with self.store.tx() as db:
            row = self._row(db, tenant, app_id)
            stopped = self._supersede(db, tenant.id, app_id, force)
            current = json.loads(row["definition"])
        self.workloads.delete(tenant, "app", app_id)
        with self.store.tx() as db:
            version = state.latest_version(db, tenant.id, app_id) or state.timestamp()
            dep = Deployment(_new_id(), tenant.id, app_id, version, STOP, (), current,
                             time.time())
            state.insert_deployment(db, dep)
        self._after(Outcome(tenant.id, dep, None, stopped=[(d, current) for d in stopped],
                            started=True))
        return dep

    def kill_task(self, tenant: Tenant, app_id: str, task_id: str, scale: bool,
                  force: bool = False) -> Deployment | None:
        """Kill one task: the instance restarts (``scale=false``) or is removed and the app
        scaled down by one (``scale=true``, a deployment)."""
        with self.store.tx() as db:
            task = db.execute("SELECT * FROM tasks WHERE task_id=? AND tenant=? AND kind='app' "
                              "AND workload=?", (task_id, tenant.id, app_id)).fetchone()
            row = self._row(db, tenant, app_id)
            if task is None:
                raise NotFound(f"task {task_id} of app {app_id} not found")
            if not scale:
                live = not lifecycle.is_terminal(task["state"])
                out = Outcome(tenant.id, kills=[(task_id, task["agent_id"])] if live else [])
            else:
                out = self._scale_without(db, tenant, row, task["idx"], force)
        self._after(out)
        return out.dep

    def cancel(self, tenant: Tenant, dep_id: str, force: bool = False) -> Deployment | None:
        """Stop a deployment; without ``force`` a new one rolls back to what was before."""
        with self.store.tx() as db:
            found = [d for d in state.deployments(db, tenant.id) if d.id == dep_id]
            if not found:
                raise NotFound(f"deployment {dep_id} not found")
            dep = found[0]
            if dep.action == STOP and not force:
                raise Conflict(f"deployment {dep_id} deletes app {dep.app} and cannot be rolled "
                               "back", hint="create the app again, or cancel with force=true")
            state.delete_deployment(db, dep.id)
            row = self.store.workload(db, tenant.id, "app", dep.app)
            current = json.loads(row["definition"]) if row else None
            out = Outcome(tenant.id, stopped=[(dep, current)])
            if not force and row is not None:
                self._roll_back(db, tenant, dep, row, out)
        self._after(out)
        return out.dep

    # ------------------------------------------------------------------ the loop

    def tick(self) -> None:
        """Move every deployment on (called about every half second)."""
        with self.store.lock:
            pending = state.deployments(self.store.db)
        for dep in pending:
            try:
                self._after(self._advance(dep))
            except Exception:
                log.exception("deployment %s of %s", dep.id, dep.app)
        self._ticks += 1
        if self._ticks % PRUNE_EVERY == 0:
            with self.store.tx() as db:
                state.prune_tasks(db)

    def _advance(self, dep: Deployment) -> Outcome:
        out = Outcome(dep.tenant, dep)
        with self.store.tx() as db:
            if not db.execute("SELECT 1 FROM marathon_deployments WHERE id=?",
                              (dep.id,)).fetchone():
                return Outcome(dep.tenant)  # cancelled meanwhile
            insts = db.execute("SELECT * FROM instances WHERE tenant=? AND kind='app' AND "
                               "workload=? ORDER BY idx", (dep.tenant, dep.app)).fetchall()
            row = self.store.workload(db, dep.tenant, "app", dep.app)
            if dep.action == STOP and row is not None:  # created again meanwhile
                state.delete_deployment(db, dep.id)
                out.succeeded = True
                return out
            if dep.action == STOP or row is None:
                if not insts:
                    state.delete_deployment(db, dep.id)
                    if row is None:
                        state.forget_app(db, dep.tenant, dep.app)
                    out.succeeded = dep.action == STOP
                    if not out.succeeded:
                        out.stopped = [(dep, None)]
                return out
            spec = spec_of(row)
            out.target = spec.definition
            live = [i for i in insts if not i["removing"]]
            old = [rolling.Inst(i["idx"], self._ready(db, i, spec)) for i in live
                   if i["idx"] in dep.old]
            new = [rolling.Inst(i["idx"], self._ready(db, i, spec)) for i in live
                   if i["idx"] not in dep.old]
            dying = len(insts) - len(live)
            if rolling.done(spec.instances, old, new, dying):
                state.delete_deployment(db, dep.id)
                out.succeeded = True
                return out
            step = rolling.next_step(spec.instances, *rolling.strategy(spec.definition), old,
                                     new, dying)
            by_idx = {i["idx"]: i for i in live}
            for idx in step.kill:
                out.kills += self.workloads._remove_instance(db, by_idx[idx])
            start = state.reserve_idx(db, dep.tenant, dep.app, step.launch)
            for k in range(step.launch):
                self.store.add_instance(db, dep.tenant, "app", dep.app, start + k)
            out.launched = step.launch > 0
        if step.kill or step.launch:
            log.info("deployment %s of %s: kill %s, launch %d", dep.id, dep.app,
                     list(step.kill), step.launch)
        return out

    # ------------------------------------------------------------------ helpers (in a tx)

    def _deploy(self, db: sqlite3.Connection, tenant: Tenant, row: sqlite3.Row,
                current: dict[str, Any], target: dict[str, Any], force: bool, restart: bool
                ) -> Outcome:
        app_id = row["id"]
        target = appdef.normalize(target, tenant.role)
        if "id" in target and normalize_id(str(target["id"])) != app_id:
            raise InvalidSpec("id", f"{target['id']!r} differs from the app's id {app_id}",
                              hint="an app cannot be renamed: create a new one")
        spec = parse_app({**target, "id": app_id})
        changed = restart or appdef.without_instances(views.definition(spec.definition)) != \
            appdef.without_instances(views.definition(current))
        out = Outcome(tenant.id, target=spec.definition)
        live = self._live(db, tenant.id, app_id)
        if changed:
            self._admit_rolling(db, tenant, spec_of(row), spec, len(live))
            old = tuple(i["idx"] for i in live)
        else:
            out.kills = self._scale(db, tenant, spec, live)
            old = ()
        # after the quota (which no waiting fixes); a refusal rolls the scaling back
        out.stopped = [(d, current) for d in self._supersede(db, tenant.id, app_id, force)]
        self._set_definition(db, tenant.id, app_id, spec.definition)
        version = state.add_version(db, tenant.id, app_id, spec.definition, not changed)
        out.dep = Deployment(_new_id(), tenant.id, app_id, version,
                             RESTART if changed else SCALE, old, current, time.time())
        state.insert_deployment(db, out.dep)
        out.launched = out.started = True
        return out

    def _scale_without(self, db: sqlite3.Connection, tenant: Tenant, row: sqlite3.Row,
                       idx: int, force: bool) -> Outcome:
        current = json.loads(row["definition"])
        stopped = self._supersede(db, tenant.id, row["id"], force)
        out = Outcome(tenant.id, stopped=[(d, current) for d in stopped])
        inst = db.execute("SELECT * FROM instances WHERE tenant=? AND kind='app' AND "
                          "workload=? AND idx=?", (tenant.id, row["id"], idx)).fetchone()
        if inst is not None and not inst["removing"]:
            out.kills = self.workloads._remove_instance(db, inst)
        target = {**current, "instances": max(0, spec_of(row).instances - 1)}
        self._set_definition(db, tenant.id, row["id"], target)
        version = state.add_version(db, tenant.id, row["id"], target, True)
        out.dep = Deployment(_new_id(), tenant.id, row["id"], version, SCALE, (), current,
                             time.time())
        out.target, out.started = target, True
        state.insert_deployment(db, out.dep)
        return out

    def _roll_back(self, db: sqlite3.Connection, tenant: Tenant, dep: Deployment,
                   row: sqlite3.Row, out: Outcome) -> None:
        current = json.loads(row["definition"])
        if dep.action == START or dep.original is None:
            out.kills = self._remove_app(db, tenant.id, dep.app)
            rollback = Deployment(_new_id(), tenant.id, dep.app, dep.version, STOP, (),
                                  current, time.time())
        else:
            spec = parse_app(dep.original)
            live = self._live(db, tenant.id, dep.app)
            if dep.action == SCALE:
                out.kills = self._scale(db, tenant, spec, live)
                old: tuple[int, ...] = ()
            else:  # the instances the cancelled deployment started are replaced
                old = tuple(i["idx"] for i in live if i["idx"] not in dep.old)
            self._set_definition(db, tenant.id, dep.app, spec.definition)
            version = state.add_version(db, tenant.id, dep.app, spec.definition,
                                        dep.action == SCALE)
            rollback = Deployment(_new_id(), tenant.id, dep.app, version, dep.action, old,
                                  current, time.time())
            out.target, out.launched = spec.definition, True
        state.insert_deployment(db, rollback)
        out.dep, out.started = rollback, True
        log.info("deployment %s of %s cancelled: rolled back by %s", dep.id, dep.app,
                 rollback.id)

    def _supersede(self, db: sqlite3.Connection, tenant: str, app_id: str, force: bool
                   ) -> list[Deployment]:
        running = state.deployments(db, tenant, app_id)
        if running and not force:
            raise Locked(f"App is locked by one or more deployments. Override with the option "
                         f"'?force=true'. View details at '/v2/deployments/{running[0].id}'.",
                         hint="wait for the deployment, cancel it, or add force=true")
        for dep in running:
            state.delete_deployment(db, dep.id)
        return running

    def _scale(self, db: sqlite3.Connection, tenant: Tenant, spec: WorkloadSpec,
               live: list[sqlite3.Row]) -> list[tuple[str, str]]:
        """To ``spec.instances``: new ones admitted against the quota, the youngest removed."""
        kills: list[tuple[str, str]] = []
        if spec.instances > len(live):
            self.workloads.admit(db, tenant, spec, spec.instances - len(live))
            start = state.reserve_idx(db, tenant.id, spec.id, spec.instances - len(live))
            for k in range(spec.instances - len(live)):
                self.store.add_instance(db, tenant.id, "app", spec.id, start + k)
        for inst in live[spec.instances:]:
            kills += self.workloads._remove_instance(db, inst)
        return kills

    def _admit_rolling(self, db: sqlite3.Connection, tenant: Tenant, old: WorkloadSpec,
                       new: WorkloadSpec, n_old: int) -> None:
        """The most instances a rolling upgrade runs at once must fit the quota."""
        _, max_total = rolling.bounds(new.instances, *rolling.strategy(new.definition))
        peak = max(n_old, max_total)
        cpus, mem, count = self.workloads.usage(db, tenant.id)
        # this app's share of the usage (the peak counts its instances being killed too)
        mine = db.execute("SELECT COUNT(*) FROM instances WHERE tenant=? AND kind='app' AND "
                          "workload=? AND state!='DONE'", (tenant.id, old.id)).fetchone()[0]
        quota = tenant.quota
        for name, others, need, limit in (
                ("instances", count - mine, peak, quota.instances),
                ("cpus", cpus - mine * old.cpus, peak * max(old.cpus, new.cpus), quota.cpus),
                ("mem", mem - mine * old.mem, peak * max(old.mem, new.mem), quota.mem)):
            if others + need > limit + 1e-9:
                raise QuotaExceeded(name, f"quota {name} of tenant {tenant.id} exceeded: the "
                                          f"rolling upgrade needs {need:g} at once + {others:g} "
                                          f"in use by other workloads > {limit:g} (lower "
                                          "upgradeStrategy.maximumOverCapacity)")

    def _remove_app(self, db: sqlite3.Connection, tenant: str, app_id: str
                    ) -> list[tuple[str, str]]:
        db.execute("UPDATE workloads SET deleted=1 WHERE tenant=? AND kind='app' AND id=?",
                   (tenant, app_id))
        kills: list[tuple[str, str]] = []
        for inst in db.execute("SELECT * FROM instances WHERE tenant=? AND kind='app' AND "
                               "workload=?", (tenant, app_id)).fetchall():
            kills += self.workloads._remove_instance(db, inst)
        self.workloads._purge(db, tenant, "app", app_id)
        return kills

    def _ready(self, db: sqlite3.Connection, inst: sqlite3.Row, spec: WorkloadSpec) -> bool:
        """Running, and healthy if the app has a health check."""
        if inst["state"] != "LAUNCHED" or inst["removing"]:
            return False
        tasks = db.execute("SELECT state, healthy FROM tasks WHERE tenant=? AND kind=? AND "
                           "workload=? AND idx=? AND attempt=?",
                           (inst["tenant"], inst["kind"], inst["workload"], inst["idx"],
                            inst["attempt"])).fetchall()
        checked = any(c.health_check for c in spec.containers)
        return bool(tasks) and all(t["state"] == "TASK_RUNNING" and (
            not checked or t["healthy"] == 1) for t in tasks)

    def _row(self, db: sqlite3.Connection, tenant: Tenant, app_id: str) -> sqlite3.Row:
        row = self.store.workload(db, tenant.id, "app", app_id)
        if row is None:
            raise NotFound(f"app {app_id} not found")
        return row

    def _live(self, db: sqlite3.Connection, tenant: str, app_id: str) -> list[sqlite3.Row]:
        return db.execute("SELECT * FROM instances WHERE tenant=? AND kind='app' AND "
                          "workload=? AND removing=0 ORDER BY idx", (tenant, app_id)).fetchall()

    def _set_definition(self, db: sqlite3.Connection, tenant: str, app_id: str,
                        definition: dict[str, Any]) -> None:
        db.execute("UPDATE workloads SET definition=? WHERE tenant=? AND kind='app' AND id=?",
                   (json.dumps(definition), tenant, app_id))

    # ------------------------------------------------------------------ after the commit

    def _after(self, out: Outcome) -> None:
        for task_id, agent_id in out.kills:
            self.workloads.kill(task_id, agent_id)
        if out.launched:
            self.workloads.on_change()
        for dep, before in out.stopped:
            self.bus.publish(out.tenant, event("deployment_failed", id=dep.id,
                                               plan=views.plan(dep, before)))
        if out.dep is None:
            return
        plan = views.plan(out.dep, out.target)
        if out.succeeded:
            log.info("deployment %s of %s succeeded", out.dep.id, out.dep.app)
            self.bus.publish(out.tenant, event("deployment_success", id=out.dep.id, plan=plan))
        elif out.started:
            log.info("deployment %s: %s %s (version %s)", out.dep.id, out.dep.action,
                     out.dep.app, out.dep.version)
            self.bus.publish(out.tenant, event("deployment_info", plan=plan,
                                               currentStep=views.steps(out.dep)[0]))


def _new_id() -> str:
    return str(uuid.uuid4())
