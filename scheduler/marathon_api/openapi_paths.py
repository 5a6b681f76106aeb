"""The OpenAPI entries of Marathon's API (merged into ``scheduler/openapi.py``'s document).
Marathon's own reference describes the bodies; these name the calls and our answers."""

from __future__ import annotations

from typing import Any

_ERRORS = {"401": "missing or unknown token",
           "403": "over quota (the message names it), or an operator's call",
           "404": "no such app, task, version or deployment for this tenant",
           "409": "locked by a deployment (add force=true) or id taken",
           "422": "invalid or unsupported field (field and details name it)",
           "501": "a Marathon feature hypervm-scheduler does not have (the message says which)"}


def _op(summary: str, *codes: str, ok: str = "200", body: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "responses": {
        ok: {"description": "OK"}, **{c: {"description": _ERRORS[c]} for c in codes}}}
    if body:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"type": "object"}}}}
    return out


def _params(*names: str, force: bool = False) -> list[dict[str, Any]]:
    out = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
           for n in names]
    if force:
        out.append({"name": "force", "in": "query", "schema": {"type": "boolean"}})
    return out


PATHS: dict[str, Any] = {
    "/ping": {"get": {**_op("pong (no token needed)"), "security": []}},
    "/v2/info": {"get": _op("Marathon's info: name, version, leader, frameworkId, configs",
                            "401")},
    "/v2/leader": {"get": _op("{leader: host:port}", "401"),
                   "delete": _op("the leader abdicates (--zk; an operator tenant): "
                                 "{message: Leadership abdicated}; 404 without an election",
                                 "401", "403", "404")},
    "/v2/apps": {
        "get": _op("The tenant's apps (?embed=apps.tasks|apps.counts|apps.deployments|"
                   "apps.lastTaskFailure, ?id=, ?cmd=, ?label=)", "401"),
        "post": _op("Create an app (Marathon's AppDefinition; a StartApplication deployment)",
                    "401", "403", "409", "422", ok="201", body=True)},
    "/v2/apps/{id}": {
        "parameters": _params("id", force=True),
        "get": _op("{app: {... tasks, counts, deployments, lastTaskFailure}}", "401", "404"),
        "put": _op("Change the definition (merged; ?partialUpdate=false replaces): a scale or "
                   "a rolling upgrade; {version: V} rolls back; a new id creates (201)",
                   "401", "403", "404", "409", "422", body=True),
        "patch": _op("Merge into the definition: a scale or a rolling upgrade", "401", "403",
                     "404", "409", "422", body=True),
        "delete": _op("Remove the app (a StopApplication deployment)", "401", "404", "409")},
    "/v2/apps/{id}/restart": {"parameters": _params("id", force=True),
                              "post": _op("Rolling restart", "401", "404", "409")},
    "/v2/apps/{id}/tasks": {
        "parameters": _params("id"),
        "get": _op("{tasks: [...]}", "401", "404"),
        "delete": _op("Kill every task (?scale=true: and scale to 0)", "401", "404", "409")},
    "/v2/apps/{id}/tasks/{taskId}": {
        "parameters": _params("id", "taskId"),
        "delete": _op("Kill a task: {task} (replaced), or ?scale=true: one instance less",
                      "401", "404", "409")},
    "/v2/apps/{id}/versions": {"parameters": _params("id"),
                               "get": _op("{versions: [newest first]}", "401", "404")},
    "/v2/apps/{id}/versions/{version}": {
        "parameters": _params("id", "version"),
        "get": _op("The definition of that version", "401", "404")},
    "/v2/tasks": {"get": _op("The tenant's tasks (?status=running|staging|…)", "401")},
    "/v2/tasks/delete": {"post": _op("Kill {ids: [...]} (?scale=true)", "401", "404", "409",
                                     body=True)},
    "/v2/deployments": {"get": _op("Deployments in progress", "401")},
    "/v2/deployments/{id}": {
        "parameters": _params("id", force=True),
        "delete": _op("Cancel: a rollback deployment; force=true: 202, just stop", "401",
                      "404", "409")},
    "/v2/queue": {"get": _op("{queue: [{app, count, delay, since}]}", "401")},
    "/v2/queue/{id}/delay": {"parameters": _params("id"),
                             "delete": _op("Relaunch without the backoff", "401", "404",
                                           ok="204")},
    "/v2/events": {"get": _op("Server-sent events (?event_type=...)", "401")},
    "/metrics": {"get": _op("Dropwizard JSON (version, gauges, counters, histograms, meters, "
                            "timers)", "401")},
    "/metrics/prometheus": {"get": _op("Prometheus text format", "401")},
    "/v2/groups": {"get": _op("The apps as Marathon's root group (read-only)", "401"),
                   "post": _op("refused: apps are changed through /v2/apps", "501")},
    "/v2/pods": {"get": _op("[] (Marathon pods are not supported)", "401"),
                 "post": _op("refused: use /v1/pods", "501")},
}
