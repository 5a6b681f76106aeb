"""The Mesos side: pymesos' scheduler callbacks. Offers are matched to tenants by role, launches
are committed to the store before the ACCEPT, updates are committed before we acknowledge them
(explicitly: an update whose commit failed is not acknowledged, so Mesos sends it again), and
every (re)subscription reconciles."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pymesos import Scheduler

from scheduler import lifecycle
from scheduler.placement import Pending, offer_role, plan
from scheduler.service import Workloads, spec_of
from scheduler.store import InstanceKey, Store
from scheduler.taskgroup import ExecutorConfig
from scheduler.tenants import Tenants

log = logging.getLogger(__name__)
FRAMEWORK_ID_KEY = "framework_id"
#: how often kills of tasks being removed are sent again, and implicit reconciliation runs
KILL_RETRY_S = 10.0
RECONCILE_S = 600.0
#: tasks still TASK_STAGING after this long are reconciled explicitly
STAGING_CHECK_S = 30.0


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """pymesos aborts its thread on an exception in a callback: log it instead."""
    @functools.wraps(method)
    def wrapper(self: HyperVMFramework, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception:
            log.exception("%s failed", method.__name__)
            return None
    return wrapper


class HyperVMFramework(Scheduler):
    def __init__(self, store: Store, workloads: Workloads, tenants: Tenants,
                 cfg: ExecutorConfig, refuse_seconds: float = 5.0) -> None:
        self.store, self.workloads, self.tenants, self.cfg = store, workloads, tenants, cfg
        self.refuse_seconds = refuse_seconds
        self.driver: Any = None
        self.suppressed = False
        self.subscribed = threading.Event()
        self.fatal: str | None = None
        self._lock = threading.Lock()
        self._last_kills = self._last_reconcile = self._last_staging = time.monotonic()

    @property
    def framework_id(self) -> str | None:
        return self.store.get_meta(FRAMEWORK_ID_KEY)

    # ------------------------------------------------------------------ (re)subscription

    @_guarded
    def registered(self, driver: Any, framework_id: dict[str, str], master_info: Any) -> None:
        self.store.set_meta(FRAMEWORK_ID_KEY, framework_id["value"])
        log.info("registered as framework %s", framework_id["value"])
        self._subscribed(driver)

    @_guarded
    def reregistered(self, driver: Any, master_info: Any) -> None:
        log.info("re-registered as framework %s", self.framework_id)
        self._subscribed(driver)

    def _subscribed(self, driver: Any) -> None:
        self.driver = driver
        live = self.store.live_tasks()
        if live:
            log.info("reconciling %d tasks", len(live))
            driver.reconcileTasks([{"task_id": {"value": t["task_id"]},
                                    "agent_id": {"value": t["agent_id"]}} for t in live])
        driver.reconcileTasks([])  # implicit: tasks we do not know about are killed
        for task_id, agent_id in self.workloads.removing_tasks():
            self.kill(task_id, agent_id)
        self.suppressed = False
        driver.reviveOffers()
        self.subscribed.set()

    @_guarded
    def disconnected(self, driver: Any) -> None:
        log.warning("disconnected from the master")
        self.subscribed.clear()

    @_guarded
    def error(self, driver: Any, message: str) -> None:
        log.error("the master says: %s", message)
        if "removed" in message:
            # the failover timeout passed (or an operator tore us down): Mesos killed our
            # tasks and will never take this id again; the next start registers a new one
            # and reconciliation relaunches what should run
            self.store.delete_meta(FRAMEWORK_ID_KEY)
            message += "; the next start registers a new framework"
        self.fatal = message

    # ------------------------------------------------------------------ offers

    @_guarded
    def resourceOffers(self, driver: Any, offers: list[dict[str, Any]]) -> None:  # noqa: N802
        framework_id = self.framework_id
        assert framework_id
        with self._lock:
            for offer in offers:
                try:
                    self._offer(driver, offer, framework_id)
                except Exception:  # this offer only: the others (other tenants') go on
                    log.exception("offer %s from %s: declined after an error",
                                  offer["id"]["value"], offer.get("hostname"))
                    driver.declineOffer([offer["id"]], {"refuse_seconds": self.refuse_seconds})
            self._suppress_if_idle(driver)

    def _offer(self, driver: Any, offer: dict[str, Any], framework_id: str) -> None:
        role = offer_role(offer)
        tenant = self.tenants.by_role.get(role or "")
        launches = []
        if tenant is not None:
            pending = [Pending(InstanceKey(r["tenant"], r["kind"], r["workload"], r["idx"]),
                               r["attempt"], spec_of(r))
                       for r in self.store.pending([tenant.id], time.time())]
            launches = plan(offer, tenant.role, pending, self.cfg, framework_id)
        if not launches:
            driver.declineOffer([offer["id"]], {"refuse_seconds": self.refuse_seconds})
            return
        for launch in launches:
            # committed first: a crash after this line never launches the instance again
            self.store.mark_launched(launch.pending.key, launch.pending.attempt,
                                     launch.executor_id, offer["agent_id"]["value"],
                                     offer["hostname"], launch.records)
            log.info("launching %s on %s (%s, executor %s)",
                     [r.task_id for r in launch.records], offer["hostname"], role,
                     launch.executor_id)
        driver.acceptOffers([offer["id"]], [launch.operation for launch in launches],
                            {"refuse_seconds": self.refuse_seconds})

    def _suppress_if_idle(self, driver: Any) -> None:
        wake = self.store.next_wakeup()
        if not self.suppressed and (wake is None or wake > time.time()):
            log.info("nothing to launch: suppressing offers")
            self.suppressed = True
            driver.suppressOffers()

    @_guarded
    def offerRescinded(self, driver: Any, offer_id: Any) -> None:  # noqa: N802
        log.info("offer %s rescinded", offer_id)

    # ------------------------------------------------------------------ updates

    @_guarded
    def statusUpdate(self, driver: Any, status: dict[str, Any]) -> None:  # noqa: N802
        task_id = status["task_id"]["value"]
        log.info("task %s is %s%s", task_id, status["state"],
                 f" ({status['message']})" if status.get("message") else "")
        known = self.workloads.apply_status(status)  # committed before the acknowledgement
        if not known and not lifecycle.is_terminal(status["state"]):
            log.warning("killing task %s: this scheduler never launched it", task_id)
            driver.killTask({"value": task_id})
        driver.acknowledgeStatusUpdate(status)  # only updates with a uuid are acknowledged

    # ------------------------------------------------------------------ called by the service

    def wake(self) -> None:
        """New work (or a backoff ended): revive offers."""
        driver = self.driver
        if driver is None:
            return
        with self._lock:
            self.suppressed = False
        driver.reviveOffers()

    def kill(self, task_id: str, agent_id: str | None) -> None:
        if self.driver is not None:
            self.driver.killTask({"value": task_id})

    def tick(self, now: float | None = None) -> None:
        """Called about once a second: revive when a backoff ends, send kills again until the
        tasks end (a KILL can be lost with a master failover), reconcile now and then."""
        now = time.monotonic() if now is None else now
        wake = self.store.next_wakeup()
        if self.suppressed and wake is not None and wake <= time.time():
            self.wake()
        driver = self.driver
        if driver is None or not self.subscribed.is_set():
            return
        if now - self._last_kills >= KILL_RETRY_S:
            self._last_kills = now
            for task_id, agent_id in self.workloads.removing_tasks():
                self.kill(task_id, agent_id)
        if now - self._last_staging >= STAGING_CHECK_S:
            # an ACCEPT that failed or was never sent leaves tasks the master does not know:
            # ask about them explicitly (the answer TASK_LOST starts a new attempt)
            self._last_staging = now
            stale = [t for t in self.store.live_tasks() if t["state"] == "TASK_STAGING"
                     and t["updated"] < time.time() - STAGING_CHECK_S]
            if stale:
                driver.reconcileTasks([{"task_id": {"value": t["task_id"]}} for t in stale])
        if now - self._last_reconcile >= RECONCILE_S:
            self._last_reconcile = now
            driver.reconcileTasks([])
