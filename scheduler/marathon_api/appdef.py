"""An app definition as clients send it → what ``scheduler.marathon.parse_app`` validates. Pure.

Clients send back what they read (the read-only fields of an app: ``tasks``, ``tasksRunning``,
``version`` …) and Marathon's defaults of fields we do not implement (``gpus: 0``,
``container.docker.privileged: false``, ``constraints: []`` …). Both mean nothing here and are
dropped, as Marathon ignores read-only fields; any other value of an unsupported field still
reaches ``parse_app``, which refuses it naming the field.
"""

from __future__ import annotations

from typing import Any

from hypervm.errors import InvalidSpec

#: what GET returns besides the definition; ignored on input, as Marathon does
READ_ONLY = frozenset({"tasks", "tasksRunning", "tasksStaged", "tasksHealthy", "tasksUnhealthy",
                       "deployments", "lastTaskFailure", "taskStats", "versionInfo", "version",
                       "readinessCheckResults"})
#: Marathon fields we do not implement, accepted when they hold Marathon's "nothing" value
EMPTY_OK: dict[str, tuple[Any, ...]] = {
    "gpus": (0, 0.0), "constraints": ([],), "uris": ([],), "fetch": ([],),
    "dependencies": ([],), "storeUrls": ([],), "secrets": ({},), "readinessChecks": ([],),
    "killSelection": ("YOUNGEST_FIRST",), "networks": ([], [{"mode": "host"}]),
    "acceptedResourceRoles": ([], ["*"]), "ports": ([],)}
DOCKER_EMPTY_OK: dict[str, tuple[Any, ...]] = {
    "privileged": (False,), "parameters": ([],), "network": ("HOST",),
    "forcePullImage": (False,)}
#: path segments Marathon reserves (they name sub-resources of /v2/apps/{id})
RESERVED = frozenset({"restart", "tasks", "versions"})


def check_id(app_id: str) -> str:
    """``/a/b`` with no reserved segment (``/x/tasks`` would collide with the tasks route)."""
    for part in app_id.strip("/").split("/"):
        if part in RESERVED:
            raise InvalidSpec("id", f"{app_id!r} uses the reserved word {part!r}",
                              hint=f"Marathon reserves {', '.join(sorted(RESERVED))} in ids")
    return app_id


def normalize(data: Any, role: str) -> Any:
    """Drop read-only fields, nulls and Marathon's empty values of unsupported fields."""
    if not isinstance(data, dict):
        return data  # parse_app names the problem
    out = {k: v for k, v in data.items() if k not in READ_ONLY and v is not None}
    for key, empty in EMPTY_OK.items():
        if key in out and out[key] in empty:
            del out[key]
    if "role" in out:
        if out["role"] != role:
            raise InvalidSpec("role", f"{out['role']!r} is not this tenant's role",
                              hint=f"omit it or give {role!r}")
        del out["role"]
    container = out.get("container")
    if isinstance(container, dict):
        container = {k: v for k, v in container.items() if v is not None}
        if container.get("volumes") == []:
            del container["volumes"]
        docker = container.get("docker")
        if isinstance(docker, dict):
            container["docker"] = {k: v for k, v in docker.items() if v is not None and not (
                k in DOCKER_EMPTY_OK and v in DOCKER_EMPTY_OK[k])}
        out["container"] = container
    checks = out.get("healthChecks")
    if isinstance(checks, list):
        out["healthChecks"] = [{k: v for k, v in hc.items() if v is not None and not (
            k == "ignoreHttp1xx" and v is False)} if isinstance(hc, dict) else hc
            for hc in checks]
    return out


def without_instances(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if k != "instances"}
