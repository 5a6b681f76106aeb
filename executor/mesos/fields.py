"""Checked reads of Mesos v1 JSON (TaskInfo, ExecutorInfo, events): each raises InvalidSpec
naming the JSON path of what is wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hypervm.errors import InvalidSpec

#: Mesos IDs, as Mesos' own validateID (src/common/validation.cpp): 1-255 characters, no
#: control character (a newline would be a second line of a log or of a status message), no
#: '/' or '\' (IDs become paths), not '.' or '..'; matched whole (fullmatch)
ID_RE = re.compile(r"[^/\\\x00-\x1f\x7f]{1,255}")


def valid_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None and value not in (".", "..")


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidSpec(where, f"expected an object, got {type(value).__name__}")
    return value


def seq(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise InvalidSpec(where, f"expected a list, got {type(value).__name__}")
    return value


def text(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise InvalidSpec(where, "expected a non-empty string")
    return value


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSpec(where, f"expected a number, got {value!r}")
    return float(value)


def mesos_id(parent: Mapping[str, Any], key: str, where: str) -> str:
    if key not in parent:
        raise InvalidSpec(f"{where}.{key}", "is missing")
    value = text(obj(parent[key], f"{where}.{key}").get("value"), f"{where}.{key}.value")
    if not valid_id(value):
        raise InvalidSpec(f"{where}.{key}.value", f"{value!r} is not a valid ID",
                          hint="use 1-255 characters without '/', '\\' or control characters")
    return value


def labels(parent: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    if "labels" not in parent:
        return ()
    labels = obj(parent["labels"], f"{where}.labels")
    out = []
    for i, label in enumerate(seq(labels.get("labels", []), f"{where}.labels.labels")):
        at = f"{where}.labels.labels[{i}]"
        label = obj(label, at)
        out.append((text(label.get("key"), f"{at}.key"),
                    text(label.get("value", ""), f"{at}.value", empty=True)))
    return tuple(out)


def duration_s(value: Any, where: str) -> float:
    """A DurationInfo ``{"nanoseconds": N}`` (int64 may arrive as a JSON string) in seconds."""
    nanos = obj(value, where).get("nanoseconds")
    if isinstance(nanos, str) and re.fullmatch(r"-?[0-9]+", nanos):
        nanos = int(nanos)
    if isinstance(nanos, bool) or not isinstance(nanos, int):
        raise InvalidSpec(f"{where}.nanoseconds", "expected an integer")
    if nanos < 0:
        raise InvalidSpec(f"{where}.nanoseconds", "must not be negative")
    return nanos / 1e9
