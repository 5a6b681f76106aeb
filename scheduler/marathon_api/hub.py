"""Wiring: one object that owns the event bus, the metrics, the deployments and the Marathon
routes, built by ``cli.py`` next to the framework."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from scheduler.marathon_api import apps, resources, state
from scheduler.marathon_api.deployments import Deployments
from scheduler.marathon_api.events import EventBus, Events
from scheduler.marathon_api.hooks import EventedWorkloads, MeteredFramework
from scheduler.marathon_api.metrics import LatencyMiddleware, Metrics, MetricsResource
from scheduler.marathon_api.resources import ServerInfo
from scheduler.service import Workloads
from scheduler.store import Store
from scheduler.tenants import Tenants


class MarathonHub:
    def __init__(self, store: Store, tenants: Tenants, info: ServerInfo,
                 max_streams: int = 16, max_streams_per_tenant: int = 4,
                 workloads: Workloads | None = None,
                 abdicate: Callable[[], None] | None = None) -> None:
        """``workloads``: an existing service (tests); without it status updates feed the
        events and metrics (``EventedWorkloads``). ``abdicate``: leave the election
        (``DELETE /v2/leader``; with ``--zk`` only)."""
        state.install(store)
        self.store, self.tenants, self.info = store, tenants, info
        self.abdicate = abdicate
        self.bus = EventBus(max_streams, max_streams_per_tenant)
        self.metrics = Metrics()
        self.metrics.refresh = self._refresh
        self.workloads = workloads or EventedWorkloads(store, self.bus, self.metrics)
        self.deployments = Deployments(self.workloads, self.bus)

    @classmethod
    def for_workloads(cls, workloads: Workloads, tenants: Tenants) -> MarathonHub:
        """The API on an existing service, without a framework (tests, tools)."""
        return cls(workloads.store, tenants, ServerInfo(
            "hypervm-scheduler", "localhost:0", "", 0.0, "hypervm-executor", "root"),
            workloads=workloads)

    def framework(self, *args: Any, **kwargs: Any) -> MeteredFramework:
        return MeteredFramework(*args, metrics=self.metrics, **kwargs)

    def tick(self) -> None:
        self.deployments.tick()

    def close(self) -> None:
        """Before the server stops: end the event streams (they would hold it up)."""
        self.bus.close_all()

    def add_routes(self, app: falcon.App) -> None:
        app.add_middleware(LatencyMiddleware(self.metrics))
        reader = apps.add_routes(app, self.workloads, self.deployments, self.bus)
        app.add_route("/ping", resources.Ping())
        app.add_route("/v2/info", resources.Info(self.info, self.store))
        app.add_route("/v2/leader", resources.Leader(self.info, self.abdicate))
        tasks = resources.Tasks(reader, self.deployments)
        app.add_route("/v2/tasks", tasks)
        app.add_route("/v2/tasks/delete", tasks, suffix="delete")
        deployments = resources.DeploymentsResource(self.deployments)
        app.add_route("/v2/deployments", deployments)
        app.add_route("/v2/deployments/{dep_id}", deployments, suffix="one")
        queue = resources.Queue(reader)
        app.add_route("/v2/queue", queue)
        app.add_route("/v2/queue/{rest:path}", queue, suffix="delay")
        app.add_route("/v2/events", Events(self.bus))
        metrics = MetricsResource(self.metrics)
        app.add_route("/metrics", metrics)
        app.add_route("/metrics/prometheus", metrics, suffix="prometheus")
        groups, pods = resources.Groups(reader), resources.Pods()
        for path, resource in (("/v2/groups", groups), ("/v2/pods", pods)):
            app.add_route(path, resource)
            app.add_route(path + "/{rest:path}", resource)

    def _refresh(self) -> None:
        """Per-tenant usage, quota and deployments, read when the metrics are rendered."""
        with self.store.lock:
            db = self.store.db
            for tenant in self.tenants.all:
                cpus, mem, count = self.workloads.usage(db, tenant.id)
                for name, used, limit in (("cpus", cpus, tenant.quota.cpus),
                                          ("mem", mem, tenant.quota.mem),
                                          ("instances", count, tenant.quota.instances)):
                    self.metrics.usage.labels(tenant.id, name).set(used)
                    self.metrics.quota.labels(tenant.id, name).set(limit)
                self.metrics.deployments.labels(tenant.id).set(
                    len(state.deployments(db, tenant.id)))
