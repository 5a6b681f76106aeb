"""Request bodies → JSON values, strictly: bounded in size, finite numbers only.

Python's ``json.loads`` accepts ``NaN``, ``Infinity`` and ``1e999`` (→ inf); a NaN passes every
``<= 0`` test and makes every later quota comparison false, so they are refused here, naming the
field they were found in (422). Nesting too deep for the parser is a malformed body (400).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypervm.errors import InvalidSpec
from scheduler.errors import PayloadTooLarge
from scheduler.validation import field_path

#: bytes of a request body (the HTTP server refuses larger ones before they are read)
MAX_BODY = 1 << 20


class _NonFinite:
    """Stands for a number JSON cannot carry, until its place is known."""

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def parse(raw: bytes) -> Any:
    """``raw`` → a JSON value; InvalidSpec('(body)') if malformed (400), InvalidSpec naming
    the field of a non-finite number (422)."""
    try:
        value = json.loads(raw, parse_constant=_NonFinite, parse_float=_float)
    except RecursionError as e:
        raise InvalidSpec("(body)", "malformed JSON: nested too deeply",
                          hint="send a JSON object") from e
    except ValueError as e:  # includes UnicodeDecodeError and ints of over 4300 digits
        raise InvalidSpec("(body)", f"malformed JSON: {e}", hint="send a JSON object") from e
    where = find_non_finite(value)
    if where is not None:
        path, bad = where
        raise InvalidSpec(field_path(path), f"{bad.text} is not a finite number",
                          hint="JSON numbers must be finite: no NaN or Infinity")
    return value


def find_non_finite(value: Any) -> tuple[list[Any], _NonFinite] | None:
    """The path of the first non-finite number (iterative, with parent links: no recursion
    limit and no copying of paths, whatever the nesting)."""
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        node, link = stack.pop()
        if isinstance(node, _NonFinite):
            path: list[Any] = []
            while link is not None:
                key, link = link
                path.append(key)
            return path[::-1], node
        if isinstance(node, dict):
            stack.extend((v, (k, link)) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, (i, link)) for i, v in reversed(list(enumerate(node))))
    return None


def read(stream: Any, content_length: int | None, limit: int = MAX_BODY) -> Any:
    """Read at most ``limit`` bytes of a request body and parse them (413 beyond)."""
    if (content_length or 0) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return parse(raw)
