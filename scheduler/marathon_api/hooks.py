"""Where the scheduler's work becomes Marathon events and metrics: task status updates (through
the workload service) and offers (through the framework). Subclasses, so that the scheduler's
modules do not know about Marathon's API."""

from __future__ import annotations

import json
import logging
from typing import Any

from scheduler.framework import HyperVMFramework
from scheduler.marathon_api import state, views
from scheduler.marathon_api.events import EventBus, event
from scheduler.marathon_api.metrics import Metrics
from scheduler.service import Workloads
from scheduler.store import Store
from scheduler.tenants import Tenants

log = logging.getLogger(__name__)
#: status messages relay the guest's words: bounded before they are stored or sent
MAX_MESSAGE = 1024


class EventedWorkloads(Workloads):
    """Workloads whose status updates also feed ``/v2/events``, the tasks' start times and
    the metrics (``lastTaskFailure`` is the service's own record, ``scheduler/failures.py``)."""

    def __init__(self, store: Store, bus: EventBus, metrics: Metrics) -> None:
        super().__init__(store)
        self.bus, self.metrics = bus, metrics

    def apply_status(self, status: dict[str, Any]) -> bool:
        task_id = status["task_id"]["value"]
        before = self.store.task(task_id)
        known = super().apply_status(status)
        if known and before is not None:
            try:
                self._observe(before, status)
            except Exception:  # an event lost is no reason to refuse the update
                log.exception("events for task %s", task_id)
        return known

    def _observe(self, task: Any, status: dict[str, Any]) -> None:
        tenant, app_id, state_now = task["tenant"], task["workload"], status["state"]
        self.metrics.status_updates.labels(tenant, state_now).inc()
        failed = state_now in views.FAILED and state_now != task["state"]
        if failed:
            self.metrics.task_failures.labels(tenant).inc()
        if task["kind"] != "app":
            return
        with self.store.tx() as db:
            version = state.latest_version(db, tenant, app_id)
            state.note_task(db, task["task_id"], state_now, version)
            row = db.execute("SELECT version FROM marathon_tasks WHERE task_id=?",
                             (task["task_id"],)).fetchone()
            version = row["version"] if row else version
        ports = [p["hostPort"] for p in _ports(task)]
        self.bus.publish(tenant, event(
            "status_update_event", slaveId=task["agent_id"], taskId=task["task_id"],
            taskStatus=state_now, message=str(status.get("message") or "")[:MAX_MESSAGE],
            appId=app_id,
            host=task["hostname"] or "", ports=ports, ipAddresses=[], version=version))
        healthy = status.get("healthy")
        if healthy is not None and (task["healthy"] is None or bool(task["healthy"]) != healthy):
            self.bus.publish(tenant, event(
                "health_status_changed_event", appId=app_id, taskId=task["task_id"],
                instanceId=task["task_id"], version=version, alive=bool(healthy)))


def _ports(task: Any) -> list[dict[str, Any]]:
    return json.loads(task["ports"] or "[]")


class _CountingDriver:
    """The driver as ``resourceOffers`` uses it, counting launches (per tenant) and declines."""

    def __init__(self, driver: Any, metrics: Metrics, tenants: Tenants) -> None:
        self._driver, self._metrics, self._tenants = driver, metrics, tenants

    def acceptOffers(self, offer_ids: Any, operations: list[dict[str, Any]],  # noqa: N802
                     filters: Any = None) -> Any:
        for op in operations:
            if op.get("type") == "LAUNCH_GROUP":
                role = _role(op)
                tenant = self._tenants.by_role.get(role or "")
                self._metrics.launches.labels(tenant.id if tenant else "").inc()
        return self._driver.acceptOffers(offer_ids, operations, filters)

    def declineOffer(self, offer_ids: Any, filters: Any = None) -> Any:  # noqa: N802
        self._metrics.offers_declined.inc(len(offer_ids))
        return self._driver.declineOffer(offer_ids, filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


def _role(op: dict[str, Any]) -> str | None:
    for res in op["launch_group"]["executor"].get("resources", []):
        role = (res.get("allocation_info") or {}).get("role")
        if role:
            return role
    return None


class MeteredFramework(HyperVMFramework):
    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def resourceOffers(self, driver: Any, offers: list[dict[str, Any]]) -> None:  # noqa: N802
        self.metrics.offers.inc(len(offers))
        super().resourceOffers(_CountingDriver(driver, self.metrics, self.tenants), offers)
