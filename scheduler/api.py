"""The REST API (JSON over HTTP), a Falcon WSGI app.

Every route but ``/openapi.json`` needs ``Authorization: Bearer <token>``; a tenant only ever
sees its own workloads (another tenant's are 404). Errors: malformed JSON 400, invalid or
unsupported field 422 (``field`` names it), unknown token 401, over quota 403 (``quota`` names
it), unknown workload 404, id taken 409.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from hypervm.errors import InvalidSpec
from scheduler import jsonbody, lifecycle, openapi
from scheduler.errors import NotFound, QuotaExceeded, SchedulerError, Unauthorized
from scheduler.marathon import normalize_id
from scheduler.server import TENANT_KEY, ServerOptions, make_server
from scheduler.service import Workloads
from scheduler.tenants import Tenant, Tenants

log = logging.getLogger(__name__)


class AuthMiddleware:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if getattr(resource, "public", False):
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        tenant = self.tenants.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
        req.context.tenant = tenant
        req.env[TENANT_KEY] = tenant.id  # for the access log


def read_json(req: falcon.Request) -> Any:
    return jsonbody.read(req.bounded_stream, req.content_length)


def _tenant(req: falcon.Request) -> Tenant:
    return req.context.tenant


class OpenAPI:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = openapi.document()


class Pods:
    def __init__(self, workloads: Workloads) -> None:
        self.workloads = workloads

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"pods": self.workloads.list_of(_tenant(req), "pod")}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = self.workloads.create(_tenant(req), "pod", read_json(req))
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/pods/{spec.id}"
        resp.media = self.workloads.view(_tenant(req), "pod", spec.id)

    def on_get_one(self, req: falcon.Request, resp: falcon.Response, pod_id: str) -> None:
        resp.media = self.workloads.view(_tenant(req), "pod", pod_id)

    def on_delete_one(self, req: falcon.Request, resp: falcon.Response, pod_id: str) -> None:
        self.workloads.delete(_tenant(req), "pod", pod_id)
        resp.status = falcon.HTTP_202
        resp.media = {"id": pod_id, "deleted": True}


def marathon_app(view: dict[str, Any]) -> dict[str, Any]:
    """Our workload view in Marathon's shape (``tasks``, ``tasksRunning`` …)."""
    tasks = []
    for inst in view["instances"]:
        for t in inst["tasks"]:
            tasks.append({"id": t["taskId"], "appId": view["id"], "host": t["host"],
                          "ports": [p["hostPort"] for p in t["ports"]], "state": t["state"],
                          "exitCode": t["exitCode"], "message": t["message"],
                          "slaveId": t["agentId"], "instance": inst["index"],
                          "healthy": t["healthy"]})
    live = [t for t in tasks if not lifecycle.is_terminal(t["state"])]
    return {**view["definition"], "tasks": tasks,
            "tasksRunning": sum(t["state"] == "TASK_RUNNING" for t in live),
            "tasksStaged": sum(t["state"] in ("TASK_STAGING", "TASK_STARTING") for t in live),
            "tasksHealthy": sum(t["healthy"] is True for t in live),
            "tasksUnhealthy": sum(t["healthy"] is False for t in live),
            "instanceStates": [{"index": i["index"], "state": i["state"], "host": i["host"],
                                "attempt": i["attempt"]} for i in view["instances"]],
            "deployments": [],
            **({"lastTaskFailure": view["lastTaskFailure"]} if view.get("lastTaskFailure")
               else {})}


class Apps:
    def __init__(self, workloads: Workloads) -> None:
        self.workloads = workloads

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        views = self.workloads.list_of(_tenant(req), "app")
        resp.media = {"apps": [marathon_app(v) for v in views]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = self.workloads.create(_tenant(req), "app", read_json(req))
        resp.status = falcon.HTTP_201
        resp.location = f"/v2/apps{spec.id}"
        resp.media = marathon_app(self.workloads.view(_tenant(req), "app", spec.id))

    def on_get_one(self, req: falcon.Request, resp: falcon.Response, app_id: str) -> None:
        view = self.workloads.view(_tenant(req), "app", normalize_id(app_id))
        resp.media = {"app": marathon_app(view)}

    def on_put_one(self, req: falcon.Request, resp: falcon.Response, app_id: str) -> None:
        body = read_json(req)
        if not isinstance(body, dict) or "instances" not in body:
            raise InvalidSpec("instances", "is required",
                              hint="PUT {\"instances\": N} scales; other changes are not "
                                   "supported: delete and create the app")
        extra = sorted(set(body) - {"instances", "id"})
        if extra:
            raise InvalidSpec(extra[0], "cannot be changed on a running app",
                              hint="only instances can be changed; delete and re-create")
        wid = normalize_id(app_id)
        self.workloads.scale(_tenant(req), "app", wid, body["instances"])
        resp.media = {"version": "", "deploymentId": f"scale{wid}"}

    def on_delete_one(self, req: falcon.Request, resp: falcon.Response, app_id: str) -> None:
        wid = normalize_id(app_id)
        self.workloads.delete(_tenant(req), "app", wid)
        resp.media = {"version": "", "deploymentId": f"delete{wid}"}


def _invalid(req: falcon.Request, resp: falcon.Response, ex: InvalidSpec, params: Any) -> None:
    resp.status = falcon.HTTP_400 if ex.field == "(body)" else falcon.HTTP_422
    resp.media = {"title": "Invalid request", "field": ex.field, "description": str(ex),
                  "message": str(ex)}


def _scheduler_error(req: falcon.Request, resp: falcon.Response, ex: SchedulerError,
                     params: Any) -> None:
    resp.status = falcon.code_to_http_status(ex.status)
    body: dict[str, Any] = {"title": type(ex).__name__, "description": str(ex),
                            "message": str(ex)}
    if isinstance(ex, QuotaExceeded):
        body["quota"] = ex.quota
    if isinstance(ex, Unauthorized):
        resp.set_header("WWW-Authenticate", 'Bearer realm="hypervm-scheduler"')
    for name, value in ex.headers.items():
        resp.set_header(name, value)
    resp.media = body


def make_app(workloads: Workloads, tenants: Tenants) -> falcon.App:
    app = falcon.App(middleware=[AuthMiddleware(tenants)])
    app.req_options.strip_url_path_trailing_slash = True
    pods, apps = Pods(workloads), Apps(workloads)
    app.add_route("/openapi.json", OpenAPI())
    app.add_route("/v1/pods", pods)
    app.add_route("/v1/pods/{pod_id}", pods, suffix="one")
    app.add_route("/v2/apps", apps)
    app.add_route("/v2/apps/{app_id:path}", apps, suffix="one")
    app.add_error_handler(InvalidSpec, _invalid)
    app.add_error_handler(SchedulerError, _scheduler_error)
    return app


def serve(app: falcon.App, host: str, port: int, options: ServerOptions | None = None) -> Any:
    """The API's waitress server on ``host:port`` (``unix:/PATH``, 0), not yet running: call
    its ``run()`` (``scheduler.server.stop`` ends it)."""
    listen = host if host.startswith("unix:") else f"[{host}]:{port}" if ":" in host \
        else f"{host}:{port}"
    return make_server(app, listen, options)


__all__ = ["NotFound", "make_app", "serve"]
