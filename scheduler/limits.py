"""Upper bounds of what a tenant may ask for, put into the JSON schemas (so the refusal is a
422 naming the field), and Marathon app ids checked in linear time.

Marathon's ``pathType`` pattern (``id``, ``dependencies``) backtracks exponentially: 11
``aaaa/`` segments and an ``A`` take seconds of CPU with the GIL held, freezing the API and the
Mesos callbacks. Ids are checked by :func:`check_path` (one pass) before the schema runs, and
the pattern is taken out of the schema.
"""

from __future__ import annotations

import copy
from typing import Any

from hypervm.errors import InvalidSpec

MAX_CPUS = 256.0  # per container, and per app instance
MAX_MEM = 1024.0 * 1024  # MiB (1 TiB)
MAX_DISK = 1024.0 * 1024  # MiB
MAX_INSTANCES = 1000
MAX_SECONDS = 86400  # any *Seconds field
MAX_BACKOFF_FACTOR = 100.0
MAX_PORTS = 16  # per container / app
#: numbers the schema leaves unbounded, and arrays
MAX_NUMBER = 2**31 - 1
MAX_ITEMS = 64
MAX_ID = 255
#: by property name
MAXIMA: dict[str, float] = {"cpus": MAX_CPUS, "mem": MAX_MEM, "disk": MAX_DISK,
                            "instances": MAX_INSTANCES, "backoffFactor": MAX_BACKOFF_FACTOR,
                            "gpus": 0, "maxConsecutiveFailures": 1000}
MAX_ITEMS_BY_NAME = {"portDefinitions": MAX_PORTS, "portMappings": MAX_PORTS,
                     "ports": MAX_PORTS, "healthChecks": 4}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_EDGE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def capped(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every number has a ``maximum`` and every array a
    ``maxItems`` (the smaller of its own and ours), and Marathon's ``pathType`` has no
    pattern (:func:`check_path` does its job)."""
    out = copy.deepcopy(schema)
    _cap(out, None)
    path_type = out.get("definitions", {}).get("pathType")
    if path_type is not None:
        path_type.pop("pattern", None)
    return out


def _cap(node: Any, name: str | None) -> None:
    if isinstance(node, list):
        for item in node:
            _cap(item, name)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("number", "integer"):
        limit = MAXIMA.get(name or "", MAX_SECONDS if (name or "").endswith("Seconds")
                           else MAX_NUMBER)
        node["maximum"] = min(node.get("maximum", limit), limit)
    if kind == "array":
        limit = MAX_ITEMS_BY_NAME.get(name or "", MAX_ITEMS)
        node["maxItems"] = min(node.get("maxItems", limit), limit)
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            for child, sub in value.items():
                _cap(sub, child)
        elif key in ("items", "additionalProperties", "oneOf", "anyOf", "allOf", "not"):
            _cap(value, name)


def check_path(value: Any, field: str) -> None:
    """Marathon's ``pathType`` (``/team/web``: segments of a-z, 0-9, '-' and '.', starting
    and ending with a letter or digit, or ``..``), in one pass over the string."""
    if not isinstance(value, str):
        return  # the schema names the wrong type
    shown = value if len(value) <= 64 else value[:64] + "…"
    hint = ("names of a-z, 0-9, '-' and '.' separated by '/', each starting and ending with a "
            "letter or digit, e.g. /team/web-1")
    if not value:
        raise InvalidSpec(field, "must not be empty", hint=hint)
    if len(value) > MAX_ID:
        raise InvalidSpec(field, f"{shown!r} is longer than {MAX_ID} characters", hint=hint)
    for segment in value.split("/"):
        if segment in ("", ".."):
            continue
        if (not set(segment) <= _NAME_CHARS or segment[0] not in _EDGE_CHARS
                or segment[-1] not in _EDGE_CHARS):
            raise InvalidSpec(field, f"{shown!r} is not a valid app id", hint=hint)


def check_app_paths(data: Any) -> None:
    """The ``pathType`` fields of an app, before the schema sees them."""
    if not isinstance(data, dict):
        return
    if "id" in data:
        check_path(data["id"], "id")
    dependencies = data.get("dependencies")
    if isinstance(dependencies, list):
        for i, dep in enumerate(dependencies[:MAX_ITEMS + 1]):
            check_path(dep, f"dependencies[{i}]")


def check_instances(value: Any) -> None:
    """``instances`` of a scale request."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANCES:
        raise InvalidSpec("instances", f"{value!r} must be an integer from 0 to {MAX_INSTANCES}")
