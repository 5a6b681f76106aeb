"""The OpenAPI 3.1 document of the REST API (served at ``/openapi.json``). Pure data."""

from __future__ import annotations

from typing import Any

from scheduler import limits
from scheduler.marathon_api.openapi_paths import PATHS as MARATHON_PATHS
from scheduler.pods import POD_SCHEMA

ERROR = {"type": "object", "properties": {"title": {"type": "string"},
                                          "description": {"type": "string"},
                                          "field": {"type": "string"},
                                          "quota": {"type": "string"}}}
INSTANCE = {"type": "object", "properties": {
    "index": {"type": "integer"}, "state": {"type": "string"}, "attempt": {"type": "integer"},
    "host": {"type": ["string", "null"]}, "tasks": {"type": "array", "items": {
        "type": "object", "properties": {
            "taskId": {"type": "string"}, "container": {"type": "string"},
            "state": {"type": "string"}, "exitCode": {"type": ["integer", "null"]},
            "ports": {"type": "array"}, "host": {"type": ["string", "null"]}}}}}}
WORKLOAD = {"type": "object", "properties": {
    "id": {"type": "string"}, "kind": {"type": "string"}, "definition": {"type": "object"},
    "instances": {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}},
    "lastTaskFailure": {"type": ["object", "null"], "description": "Marathon's TaskFailure: "
                        "appId, host, message, state, taskId, timestamp, version, slaveId"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "malformed JSON or invalid field (the message names it)",
            401: "missing or unknown token", 404: "no such workload for this tenant",
            403: "over quota (the message names the quota)", 409: "the id is taken",
            422: "invalid or unsupported field (the message names it)"}
    return {str(c): {"description": text[c], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _ok(ref: str, code: str = "200") -> dict[str, Any]:
    return {code: {"description": "OK", "content": {"application/json": {
        "schema": {"$ref": ref}}}}}


def document() -> dict[str, Any]:
    pod_schema = {k: v for k, v in limits.capped(POD_SCHEMA).items() if k != "$schema"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "hypervm-scheduler", "version": "1",
                 "description": "Multi-tenant VM-isolated containers on Mesos. Every call needs "
                                "'Authorization: Bearer <tenant token>'; a tenant sees only "
                                "its own workloads."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/pods": {
                "get": {"summary": "List the tenant's pods", "responses": {
                    **_ok("#/components/schemas/WorkloadList"), **_errors(401)}},
                "post": {"summary": "Create a pod (a task group in one HyperVM)",
                         "requestBody": _body("#/components/schemas/Pod"),
                         "responses": {**_ok("#/components/schemas/Workload", "201"),
                                       **_errors(400, 401, 403, 409, 422)}}},
            "/v1/pods/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "get": {"summary": "A pod with per-task state, host, ports and exit codes",
                        "responses": {**_ok("#/components/schemas/Workload"),
                                      **_errors(401, 404)}},
                "delete": {"summary": "Kill and remove a pod",
                           "responses": {"202": {"description": "killing"},
                                         **_errors(401, 404)}}},
            **MARATHON_PATHS,  # /v2/..., /ping, /metrics
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Pod": pod_schema, "Workload": WORKLOAD, "Instance": INSTANCE,
                        "WorkloadList": {"type": "object", "properties": {
                            "pods": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/Workload"}}}},
                        "Error": ERROR}},
    }
