"""``/v2/apps`` and everything under it, in Marathon's shapes (Falcon resources).

``/v2/apps/{id}`` ids contain slashes, so one route takes the rest of the path and splits off
the sub-resource (``restart``, ``tasks[/{taskId}]``, ``versions[/{version}]``): Marathon
reserves those words in ids, and so do we.
"""

from __future__ import annotations

from typing import Any

import falcon

from scheduler.api import read_json
from scheduler.errors import NotFound
from scheduler.marathon import normalize_id
from scheduler.marathon_api import appdef, state, views
from scheduler.marathon_api.deployments import Deployments
from scheduler.marathon_api.errors import NotSupported
from scheduler.marathon_api.events import EventBus, event
from scheduler.service import Workloads
from scheduler.tenants import Tenant

LIST_EMBED = {"counts", "deployments"}
ONE_EMBED = {"tasks", "counts", "deployments", "lastTaskFailure"}


def embeds(req: falcon.Request, default: set[str]) -> set[str]:
    out = set(default)
    for value in req.get_param_as_list("embed") or []:
        name = value.split(".", 1)[-1]
        out.add("lastTaskFailure" if name == "failures" else name)
    return out


def _tenant(req: falcon.Request) -> Tenant:
    return req.context.tenant


def deployment_answer(dep: Any) -> dict[str, Any]:
    return {"deploymentId": dep.id, "version": dep.version}


class AppReader:
    """Workload views → Marathon app and task objects."""

    def __init__(self, workloads: Workloads) -> None:
        self.workloads, self.store = workloads, workloads.store

    def app(self, tenant: Tenant, view: dict[str, Any], embed: set[str]) -> dict[str, Any]:
        with self.store.lock:
            db = self.store.db
            version = state.latest_version(db, tenant.id, view["id"])
            return views.app(
                view, version=version, version_info=state.version_info(db, tenant.id,
                                                                        view["id"]),
                tasks=self.tasks(tenant, view, version) if "tasks" in embed else [],
                deployments=state.deployments(db, tenant.id, view["id"]),
                failure=view.get("lastTaskFailure"), embed=embed)

    def tasks(self, tenant: Tenant, view: dict[str, Any], version: str | None
              ) -> list[dict[str, Any]]:
        live = views.live_tasks(view)
        with self.store.lock:
            times = state.task_times(self.store.db, [t["taskId"] for t in live])
        return [views.task(t, view["id"], times.get(t["taskId"]), version, tenant.role)
                for t in live]

    def one(self, tenant: Tenant, app_id: str, embed: set[str]) -> dict[str, Any]:
        return self.app(tenant, self.workloads.view(tenant, "app", app_id), embed)

    def all(self, tenant: Tenant, embed: set[str]) -> list[dict[str, Any]]:
        return [self.app(tenant, v, embed) for v in self.workloads.list_of(tenant, "app")]

    def all_tasks(self, tenant: Tenant) -> list[dict[str, Any]]:
        out = []
        for view in self.workloads.list_of(tenant, "app"):
            with self.store.lock:
                version = state.latest_version(self.store.db, tenant.id, view["id"])
            out += self.tasks(tenant, view, version)
        return out


class Apps:
    """``GET /v2/apps[?embed=apps.tasks&id=&cmd=&label=]``, ``POST /v2/apps``."""

    def __init__(self, reader: AppReader, deployments: Deployments, bus: EventBus) -> None:
        self.reader, self.deployments, self.bus = reader, deployments, bus
        self.workloads = reader.workloads

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        apps = self.reader.all(_tenant(req), embeds(req, LIST_EMBED))
        wanted_id, cmd = req.get_param("id"), req.get_param("cmd")
        label = req.get_param("label")
        if wanted_id:
            apps = [a for a in apps if wanted_id in a["id"]]
        if cmd:
            apps = [a for a in apps if cmd in (a.get("cmd") or "")]
        if label:
            key, _, value = label.partition("==")
            apps = [a for a in apps if key.strip() in a["labels"] and (
                not value or a["labels"][key.strip()] == value.strip())]
        resp.media = {"apps": apps}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.create(req, read_json(req))
        resp.status = falcon.HTTP_201
        resp.location = f"/v2/apps{resp.media['id']}"

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise NotSupported("batch updates (PUT /v2/apps with a list) are not supported",
                           hint="PUT /v2/apps/{id} for each app")

    def create(self, req: falcon.Request, body: Any) -> dict[str, Any]:
        tenant = _tenant(req)
        body = appdef.normalize(body, tenant.role)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            appdef.check_id(body["id"])
        spec = self.workloads.create(tenant, "app", body)
        self.deployments.created(tenant, spec)
        out = self.reader.one(tenant, spec.id, LIST_EMBED | {"tasks"})
        self.bus.publish(tenant.id, event("api_post_event", clientIp=req.remote_addr,
                                          uri=req.path, appDefinition=out))
        return out


def split(rest: str) -> tuple[str, str | None, str | None]:
    """``a/b/tasks/t1`` → (``/a/b``, ``tasks``, ``t1``)."""
    parts = [p for p in rest.split("/") if p]
    for i, part in enumerate(parts):
        if i and part in appdef.RESERVED:
            return "/" + "/".join(parts[:i]), part, "/".join(parts[i + 1:]) or None
    return normalize_id("/".join(parts)), None, None


class App:
    """``/v2/apps/{id}`` and its sub-resources."""

    def __init__(self, apps: Apps) -> None:
        self.apps, self.reader, self.deployments = apps, apps.reader, apps.deployments

    def on_get(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        tenant = _tenant(req)
        app_id, sub, arg = split(rest)
        if sub is None:
            resp.media = {"app": self.reader.one(tenant, app_id, embeds(req, ONE_EMBED))}
        elif sub == "tasks" and arg is None:
            view = self.reader.workloads.view(tenant, "app", app_id)
            with self.reader.store.lock:
                version = state.latest_version(self.reader.store.db, tenant.id, app_id)
            resp.media = {"tasks": self.reader.tasks(tenant, view, version)}
        elif sub == "versions":
            resp.media = self._versions(tenant, app_id, arg)
        else:
            raise NotFound(f"{req.path} not found")

    def _versions(self, tenant: Tenant, app_id: str, version: str | None) -> dict[str, Any]:
        self.reader.workloads.view(tenant, "app", app_id)  # 404 for unknown apps
        with self.reader.store.lock:
            db = self.reader.store.db
            if version is None:
                return {"versions": state.versions(db, tenant.id, app_id)}
            definition = state.version_definition(db, tenant.id, app_id, version)
        if definition is None:
            raise NotFound(f"app {app_id} has no version {version}")
        return {**views.definition(definition), "id": app_id, "version": version}

    def on_put(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        self._update(req, resp, rest, partial=req.get_param_as_bool(
            "partialUpdate", default=True), creates=True)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        self._update(req, resp, rest, partial=True, creates=False)

    def _update(self, req: falcon.Request, resp: falcon.Response, rest: str, partial: bool,
                creates: bool) -> None:
        """PUT of an app that does not exist creates it (Marathon's semantics); PATCH 404s."""
        tenant = _tenant(req)
        app_id, sub, _ = split(rest)
        if sub is not None:
            raise NotFound(f"{req.path} not found")
        body = read_json(req)
        try:
            dep = self.deployments.update(tenant, app_id, body, partial=partial,
                                          force=req.get_param_as_bool("force", default=False))
        except NotFound:
            if not creates or not isinstance(body, dict) or set(body) - {"id"} == {"version"}:
                raise
            resp.media = self.apps.create(req, {**body, "id": app_id})  # PUT creates
            resp.status = falcon.HTTP_201
            return
        resp.media = deployment_answer(dep)
        self.apps.bus.publish(tenant.id, event(
            "api_post_event", clientIp=req.remote_addr, uri=req.path,
            appDefinition=self.reader.one(tenant, app_id, LIST_EMBED)))

    def on_post(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        app_id, sub, arg = split(rest)
        if sub != "restart" or arg is not None:
            raise falcon.HTTPMethodNotAllowed(["GET", "PUT", "PATCH", "DELETE"])
        dep = self.deployments.restart(_tenant(req), app_id,
                                       req.get_param_as_bool("force", default=False))
        resp.media = deployment_answer(dep)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        tenant = _tenant(req)
        app_id, sub, arg = split(rest)
        force = req.get_param_as_bool("force", default=False)
        scale = req.get_param_as_bool("scale", default=False)
        if sub is None:
            resp.media = deployment_answer(self.deployments.delete(tenant, app_id, force))
        elif sub == "tasks":
            resp.media = self._kill(tenant, app_id, arg, scale, force)
        else:
            raise NotFound(f"{req.path} not found")

    def _kill(self, tenant: Tenant, app_id: str, task_id: str | None, scale: bool,
              force: bool) -> dict[str, Any]:
        view = self.reader.workloads.view(tenant, "app", app_id)
        with self.reader.store.lock:
            version = state.latest_version(self.reader.store.db, tenant.id, app_id)
        tasks = self.reader.tasks(tenant, view, version)
        chosen = [t for t in tasks if task_id is None or t["id"] == task_id]
        if task_id is not None and not chosen:
            raise NotFound(f"task {task_id} of app {app_id} not found")
        dep = None
        for t in chosen:
            dep = self.deployments.kill_task(tenant, app_id, t["id"], scale, force) or dep
            force = True  # the next kill supersedes the scale deployment of this one
        if scale and dep is not None:
            return deployment_answer(dep)
        return {"task": chosen[0]} if task_id is not None else {"tasks": chosen}


def add_routes(app: falcon.App, workloads: Workloads, deployments: Deployments,
               bus: EventBus) -> AppReader:
    reader = AppReader(workloads)
    apps = Apps(reader, deployments, bus)
    app.add_route("/v2/apps", apps)
    app.add_route("/v2/apps/{rest:path}", App(apps))
    return reader

