"""``@frozen_dataclass``: ``@dataclass(frozen=True)`` with ``__eq__``, ``__hash__`` and
``__repr__`` shared by every class instead of compiled for each one.

``dataclasses`` compiles each generated method from source text with ``exec`` when the class
is created: six for a frozen class (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``, ``__delattr__``), ~0.75 ms a class on this machine, ~43 ms of the ~145 ms
before a cold ``hypervm run`` creates its VM (58 classes; issue 17). Here ``dataclasses``
compiles only the three that cannot be shared (the constructor and the frozen guard), and
comparison, hashing and repr read the fields through one ``operator.attrgetter`` per class:
the same results as ``@dataclass(frozen=True)``'s (fields with ``compare``, ``hash`` or
``repr`` False left out alike; a method the class defines itself is kept, as dataclass keeps
it), the same ``fields``/``replace``/``asdict``, and type checkers see a frozen dataclass
(PEP 681). ``tests/unit/test_frozen.py`` compares the two.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """obj → the tuple of its ``names`` attributes, as dataclass's generated methods build it."""
    if not names:
        return lambda _obj: ()
    get = attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (get(obj),)
    return get


def _eq(fields: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return fields(self) == fields(other)
        return NotImplemented
    return __eq__


def _hash(fields: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(fields(self))
    return __hash__


def _repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({shown})"
    return __repr__


def _explicit_hash(own: dict[str, Any]) -> bool:
    """The class body sets ``__hash__`` itself (not Python's None beside its own ``__eq__``)."""
    if "__hash__" not in own:
        return False
    return not (own["__hash__"] is None and "__eq__" in own)


def _set(cls: type, name: str, method: Callable[..., Any]) -> None:
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    setattr(cls, name, method)


@dataclass_transform(frozen_default=True,
                     field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen_dataclass(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)``, its eq/hash/repr shared (module docstring)."""
    own = dict(cls.__dict__)
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    compared = _getter(tuple(f.name for f in fields if f.compare))
    if "__eq__" not in own:
        _set(cls, "__eq__", _eq(compared))
    if not _explicit_hash(own):
        hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
        _set(cls, "__hash__", _hash(_getter(hashed)))
    if "__repr__" not in own:
        _set(cls, "__repr__", _repr(tuple(f.name for f in fields if f.repr)))
    return cls
