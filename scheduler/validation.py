"""Shared validation helpers: JSON Schema errors and image names → InvalidSpec naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from hypervm.errors import ImageError, InvalidSpec
from hypervm.imageref import parse_registry_ref

#: matched whole (fullmatch: ``^…$`` with ``match`` let "A\n" through)
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(parts: Iterable[Any], prefix: str = "") -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def schema_error(error: ValidationError, prefix: str = "") -> InvalidSpec:
    """The most relevant schema error as InvalidSpec; unknown fields are named themselves."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        props = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        extra = sorted(k for k in error.instance if k not in props
                       and not any(re.search(p, k) for p in patterns))
        if extra:
            allowed = ", ".join(sorted(props)) or "none"
            return InvalidSpec(field_path([*path, extra[0]], prefix), "unknown field",
                               hint=f"allowed here: {allowed}")
    if error.validator == "required":
        return InvalidSpec(field_path(path, prefix), error.message)
    return InvalidSpec(field_path(path, prefix), error.message)


@cache
def _ecma_anchors(pattern: str) -> str:
    """``pattern`` with each ``$`` outside a character class read as ECMA-262 (JSON Schema's
    dialect) reads it, the end of the value: Python's ``$`` also matches before a final
    newline, so ``^[a-z]+$`` let "web\\n" through jsonschema's ``pattern`` (a ``re.search``)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
        i += 1
    return "".join(out)


def _whole_pattern(validator: Any, pattern: str, instance: Any, _schema: Any
                   ) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not re.search(_ecma_anchors(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def whole_patterns(cls: Any) -> Any:
    """The validator class ``cls`` whose ``pattern`` keyword matches as JSON Schema means it
    (:func:`_ecma_anchors`): every schema of the API is checked through one of these."""
    return jsonschema.validators.extend(cls, {"pattern": _whole_pattern})


def validate(validator: jsonschema.protocols.Validator, data: Any, prefix: str = "") -> None:
    error = best_match(validator.iter_errors(data))
    if error is not None:
        raise schema_error(error, prefix)


def check_image(name: str, where: str) -> str:
    """A registry image reference (``busybox:1.36``, ``host:5000/a/b@sha256:…``)."""
    try:
        parse_registry_ref(name.removeprefix("docker://"))
    except ImageError as e:
        raise InvalidSpec(where, f"bad image name: {e}",
                          hint="use [registry/]repository[:tag|@sha256:digest], lowercase") from e
    return name


def check_env(env: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    for name in env:
        if not _ENV_RE.fullmatch(name):
            raise InvalidSpec(f"{where}.{name}", "is not a valid environment variable name",
                              hint="use letters, digits and _, not starting with a digit")
    return tuple((k, str(v)) for k, v in env.items())
