"""The REST API (JSON over HTTP), a Falcon WSGI app.

Every route but ``/openapi.json`` needs ``Authorization: Bearer <token>``; a tenant only ever
sees its own workloads (another tenant's are 404). Errors: malformed JSON 400, invalid or
unsupported field 422 (``field`` names it), unknown token 401, over quota 403 (``quota`` names
it), unknown workload 404, id taken 409.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

import falcon

from hypervm.errors import InvalidSpec
from scheduler import jsonbody, openapi
from scheduler.errors import NotFound, QuotaExceeded, SchedulerError, Unauthorized
from scheduler.server import TENANT_KEY, ServerOptions, make_server
from scheduler.service import Workloads
from scheduler.tenants import Tenant, Tenants

if TYPE_CHECKING:
    from scheduler.marathon_api.hub import MarathonHub

log = logging.getLogger(__name__)


class AuthMiddleware:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if getattr(resource, "public", False):
            return
        tenant = authenticate(self.tenants, req.get_header("Authorization") or "")
        if tenant is None:
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
        req.context.tenant = tenant
        req.env[TENANT_KEY] = tenant.id  # for the access log


def authenticate(tenants: Tenants, header: str) -> Tenant | None:
    """``Bearer <token>``; as Marathon clients send it: ``token=<token>`` (DC/OS) or HTTP Basic
    with the tenant id as user and the token as password."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return tenants.authenticate(value.strip())
    if scheme.startswith("token=") and not value:
        return tenants.authenticate(scheme.removeprefix("token="))
    if scheme.lower() == "basic":
        try:
            user, _, token = base64.b64decode(value.strip(), validate=True).decode().partition(
                ":")
        except (ValueError, UnicodeDecodeError):
            return None
        tenant = tenants.authenticate(token)
        return tenant if tenant is not None and tenant.id == user else None
    return None


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


def _invalid(req: falcon.Request, resp: falcon.Response, ex: InvalidSpec, params: Any) -> None:
    resp.status = falcon.HTTP_400 if ex.field == "(body)" else falcon.HTTP_422
    resp.media = {"title": "Invalid request", "field": ex.field, "description": str(ex),
                  "message": str(ex),
                  # Marathon's shape of a validation error
                  "details": [{"path": "/" + ex.field.replace(".", "/"), "errors": [str(ex)]}]}


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


def make_app(workloads: Workloads, tenants: Tenants, marathon: MarathonHub | None = None
             ) -> falcon.App:
    app = falcon.App(middleware=[AuthMiddleware(tenants)])
    app.req_options.strip_url_path_trailing_slash = True
    pods = Pods(workloads)
    app.add_route("/openapi.json", OpenAPI())
    app.add_route("/v1/pods", pods)
    app.add_route("/v1/pods/{pod_id}", pods, suffix="one")
    if marathon is None:
        # a cycle: the Marathon resources import read_json from this module
        from scheduler.marathon_api.hub import MarathonHub

        marathon = MarathonHub.for_workloads(workloads, tenants)
    marathon.add_routes(app)  # /v2/..., /ping, /metrics
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
