"""The rest of Marathon's API: ``/ping``, ``/v2/info``, ``/v2/leader``, ``/v2/tasks``,
``/v2/deployments``, ``/v2/queue``, and ``/v2/groups`` (read-only) and ``/v2/pods`` (refused:
hypervm pods are ``/v1/pods``). Falcon resources, every answer scoped by the caller's tenant."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import falcon

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass
from scheduler.api import read_json
from scheduler.errors import Forbidden, NotFound
from scheduler.marathon_api import state, views
from scheduler.marathon_api.apps import LIST_EMBED, AppReader, deployment_answer
from scheduler.marathon_api.deployments import Deployments
from scheduler.marathon_api.errors import NotSupported
from scheduler.store import Store
from scheduler.tenants import Tenant

#: the Marathon REST API level these resources follow
MARATHON_VERSION = "1.11.0"


def _tenant(req: falcon.Request) -> Tenant:
    return req.context.tenant


@frozen_dataclass
class ServerInfo:
    """What ``/v2/info`` and ``/v2/leader`` tell about this scheduler."""
    name: str
    #: where clients reach the API: ``--listen`` (a wildcard host becomes this host's name)
    listen: str
    master: str
    failover_timeout: float
    executor: str
    user: str

    @property
    def leader(self) -> str:
        host, sep, port = self.listen.rpartition(":")
        if sep and host.strip("[]") in ("0.0.0.0", "::", ""):
            return f"{socket.getfqdn()}:{port}"
        return self.listen

    @property
    def http_port(self) -> int | None:
        port = self.listen.rpartition(":")[2]
        return int(port) if port.isdigit() else None


class Ping:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "pong"


class Info:
    def __init__(self, info: ServerInfo, store: Store) -> None:
        self.info, self.store = info, store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        info = self.info
        resp.media = {
            "name": info.name, "version": MARATHON_VERSION, "buildref": "hypervm",
            "elected": True, "leader": info.leader,
            "frameworkId": self.store.get_meta("framework_id"),
            "marathon_config": {
                "master": info.master, "framework_name": info.name, "checkpoint": True,
                "failover_timeout": int(info.failover_timeout), "executor": info.executor,
                "hostname": info.leader.rsplit(":", 1)[0], "ha": False,
                "mesos_role": _tenant(req).role, "mesos_user": info.user,
                "webui_url": None, "features": []},
            "zookeeper_config": {},
            "http_config": {"http_port": info.http_port, "https_port": None},
            "event_subscriber": None}


class Leader:
    """``GET /v2/leader``; ``DELETE /v2/leader``: the leader abdicates (``abdicate``, given
    with ``--zk``), as Marathon's: ``{"message": "Leadership abdicated"}``, and it leaves the
    election a moment later. Alone (no ``--zk``) there is no election to hand over to:
    ``404``, Marathon's answer when it has no leader to abdicate. Abdicating moves every
    tenant's API and framework, so only an operator tenant may."""

    def __init__(self, info: ServerInfo, abdicate: Callable[[], None] | None = None) -> None:
        self.info, self.abdicate = info, abdicate

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"leader": self.info.leader}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        tenant = _tenant(req)
        if not tenant.operator:
            raise Forbidden(f"tenant {tenant.id} may not make the leader abdicate: it moves "
                            "every tenant's API", hint="use a tenant with operator: true")
        if self.abdicate is None:
            raise NotFound("There is no leader to abdicate: this scheduler runs alone, "
                           "without an election", hint="start several with --zk")
        self.abdicate()
        resp.media = {"message": "Leadership abdicated"}


class Tasks:
    """``GET /v2/tasks``, ``POST /v2/tasks/delete?scale=`` ``{"ids": [...]}``."""

    def __init__(self, reader: AppReader, deployments: Deployments) -> None:
        self.reader, self.deployments = reader, deployments

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        tasks = self.reader.all_tasks(_tenant(req))
        wanted = {f"TASK_{s.upper()}" for s in req.get_param_as_list("status") or []}
        resp.media = {"tasks": [t for t in tasks if not wanted or t["state"] in wanted]}

    def on_post_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidSpec("ids", "must be a list of task ids")
        tenant = _tenant(req)
        known = {t["id"]: t for t in self.reader.all_tasks(tenant)}
        for task_id in ids:
            if task_id not in known:
                raise NotFound(f"task {task_id} not found")
        scale = req.get_param_as_bool("scale", default=False)
        force = req.get_param_as_bool("force", default=False)
        for task_id in ids:
            self.deployments.kill_task(tenant, known[task_id]["appId"], task_id, scale, force)
        resp.media = {"tasks": [known[i] for i in ids]}


class DeploymentsResource:
    """``GET /v2/deployments``, ``DELETE /v2/deployments/{id}[?force=true]``."""

    def __init__(self, deployments: Deployments) -> None:
        self.deployments = deployments

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        store = self.deployments.store
        with store.lock:
            deps = state.deployments(store.db, _tenant(req).id)
        resp.media = [views.deployment(d) for d in deps]

    def on_delete_one(self, req: falcon.Request, resp: falcon.Response, dep_id: str) -> None:
        force = req.get_param_as_bool("force", default=False)
        rollback = self.deployments.cancel(_tenant(req), dep_id, force)
        if rollback is None:
            resp.status = falcon.HTTP_202
            return
        resp.media = deployment_answer(rollback)


class Queue:
    """``GET /v2/queue``: apps with instances waiting for an offer or a backoff;
    ``DELETE /v2/queue/{app}/delay``: relaunch them without waiting for the backoff."""

    def __init__(self, reader: AppReader) -> None:
        self.reader = reader

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        tenant, now = _tenant(req), time.time()
        items = []
        for view in self.reader.workloads.list_of(tenant, "app"):
            pending = [i for i in view["instances"] if i["state"] == "PENDING"]
            if pending:
                since = min(i["nextLaunchAt"] or now for i in pending)
                app = self.reader.app(tenant, view, LIST_EMBED)
                items.append(views.queue_item(app, pending, now, min(since, now)))
        resp.media = {"queue": items}

    def on_delete_delay(self, req: falcon.Request, resp: falcon.Response, rest: str) -> None:
        if not rest.strip("/").endswith("/delay"):
            raise NotFound(f"{req.path} not found")
        tenant, app_id = _tenant(req), "/" + rest.strip("/").removesuffix("/delay")
        self.reader.workloads.view(tenant, "app", app_id)  # 404 for unknown apps
        with self.reader.store.tx() as db:
            db.execute("UPDATE instances SET not_before=0 WHERE tenant=? AND kind='app' AND "
                       "workload=? AND state='PENDING'", (tenant.id, app_id))
        self.reader.workloads.on_change()
        resp.status = falcon.HTTP_204


class Groups:
    """Read-only: the tenant's apps as Marathon's group tree (``/shop/web`` is in ``/shop``)."""

    def __init__(self, reader: AppReader) -> None:
        self.reader = reader

    def on_get(self, req: falcon.Request, resp: falcon.Response, rest: str = "") -> None:
        apps = self.reader.all(_tenant(req), LIST_EMBED)
        group_id = "/" + rest.strip("/")
        found = _find(group_tree(apps), group_id)
        if found is None:
            raise NotFound(f"group {group_id} not found")
        resp.media = found

    def _refuse(self, req: falcon.Request, resp: falcon.Response, rest: str = "") -> None:
        raise NotSupported("groups are read-only in hypervm-scheduler",
                           hint="create, change and delete apps through /v2/apps")

    on_post = on_put = on_patch = on_delete = _refuse


def group_tree(apps: list[dict[str, Any]]) -> dict[str, Any]:
    root: dict[str, Any] = _group("/")
    for app in apps:
        node = root
        parts = app["id"].strip("/").split("/")[:-1]
        for i in range(len(parts)):
            gid = "/" + "/".join(parts[:i + 1])
            child = next((g for g in node["groups"] if g["id"] == gid), None)
            if child is None:
                child = _group(gid)
                node["groups"].append(child)
            node = child
        node["apps"].append(app)
    return root


def _group(gid: str) -> dict[str, Any]:
    return {"id": gid, "apps": [], "groups": [], "pods": [], "dependencies": [],
            "version": state.timestamp(0)}


def _find(group: dict[str, Any], gid: str) -> dict[str, Any] | None:
    if group["id"] == gid:
        return group
    for child in group["groups"]:
        if gid.startswith(child["id"]):
            found = _find(child, gid)
            if found is not None:
                return found
    return None


class Pods:
    """Marathon pods are refused: a hypervm pod (``/v1/pods``) is the VM-isolated pod."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, rest: str = "") -> None:
        if rest.strip("/"):
            raise NotFound(f"pod /{rest.strip('/')} not found")
        resp.media = []

    def _refuse(self, req: falcon.Request, resp: falcon.Response, rest: str = "") -> None:
        raise NotSupported("Marathon pods (/v2/pods) are not supported by hypervm-scheduler",
                           hint="run a pod of several containers in one VM with POST /v1/pods, "
                                "or single-container apps with /v2/apps")

    on_post = on_put = on_patch = on_delete = _refuse
