"""``@frozen_dataclass``: ``@dataclass(frozen=True)`` whose methods are shared by every class
instead of compiled for each one.

``dataclasses`` compiles each generated method from source text with ``exec`` when the class
is created: six for a frozen class (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``, ``__delattr__``), ~0.75 ms a class on this machine; a cold ``hypervm run``
creates ~45 of them before its VM (issue 17). Here ``dataclasses`` only collects the fields
(``dataclass(init=False, eq=False, repr=False)``, which compiles nothing: ~0.03 ms a class),
and every method is a function written once in this module, closed over the class's fields:

- ``__init__`` binds its arguments as the compiled one would (positional, keyword, defaults,
  ``default_factory``, ``field(init=False)``, ``kw_only``, ``InitVar``\\ s handed to
  ``__post_init__``, fields of the dataclass bases) and assigns with ``object.__setattr__`` (a
  class whose parameters are its fields in order, no factory, InitVar or data descriptor among
  them: one ``__dict__.update``, which is what those assignments do); when the arguments do
  not bind, a signature-only stub is compiled (once, on that error) and called with them, so
  the ``TypeError`` is Python's own, word for word;
- the frozen guard ``__setattr__``/``__delattr__`` is the compiled one's logic (refuse any
  name on the class itself, a field's name on a subclass, with ``FrozenInstanceError``): the
  freeze is not weaker, only not compiled;
- ``__eq__``, ``__hash__`` and ``__repr__`` read the fields through one
  ``operator.attrgetter`` (fields with ``compare``, ``hash`` or ``repr`` False left out alike;
  a method the class defines itself is kept, as dataclass keeps it).

``__dataclass_params__`` says what ``@dataclass(frozen=True)``'s says (``fields``,
``replace``, ``asdict``, ``is_dataclass`` as before, and a plain ``@dataclass`` cannot
inherit from one), type checkers see a frozen dataclass (PEP 681), and
``inspect.signature(cls)`` is the compiled ``__init__``'s, built when asked. A subclass of a
frozen dataclass is handed to ``dataclasses`` as frozen (its check between bases wants it),
which compiles the guard for it (none of ours). The price: binding arguments in Python costs
more per instance than a compiled ``__init__`` (DEVELOPERS.md has the figures). What this
leans on in ``dataclasses`` beyond its documented API: ``_FIELD_INITVAR`` (how an InitVar's
``Field`` is told apart, 3.7-3.13) and ``__dataclass_params__``' attributes being settable;
``dataclasses`` (with ``inspect``, ~5.5 ms) is still imported: ``fields``, ``replace`` and
``asdict`` are its own and want its ``Field`` objects.
``tests/unit/test_frozen.py`` compares every behaviour with ``@dataclass(frozen=True)``'s.
"""

from __future__ import annotations

import dataclasses
import inspect
import reprlib
from collections.abc import Callable
from operator import attrgetter

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs: object) -> Callable[[Callable[..., object]],
                                                            Callable[..., object]]:
        """typing's marks the function for type checkers (PEP 681), which read it here."""
        return lambda fn: fn

_INITVAR = dataclasses._FIELD_INITVAR  # type: ignore[attr-defined]  # (3.7-3.13)
_FACTORY: Any = type("_Factory", (), {"__repr__": lambda self: "<factory>"})()
"""A parameter's default when its field has a ``default_factory`` (dataclass's marker alike)."""


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


def _guard(cls: type, names: tuple[str, ...]) -> tuple[Callable[..., None], Callable[..., None]]:
    """The frozen guard dataclass compiles for ``cls``: nothing on ``cls``'s own instances,
    only ``names`` on a subclass's."""
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)  # type: ignore[arg-type]

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)  # type: ignore[arg-type]
    return __setattr__, __delattr__


def _parameters(cls: type) -> tuple[list[dataclasses.Field[Any]], list[dataclasses.Field[Any]]]:
    """The fields ``__init__`` takes (InitVars included): positional-or-keyword, keyword-only."""
    real = dataclasses.fields(cls)  # type: ignore[arg-type]
    fields = [f for f in cls.__dataclass_fields__.values()  # type: ignore[attr-defined]
              if f.init and (f in real or _initvar(f))]
    return [f for f in fields if not f.kw_only], [f for f in fields if f.kw_only]


def _initvar(f: dataclasses.Field[Any]) -> bool:
    return getattr(f, "_field_type", None) is _INITVAR


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return _FACTORY
    return f.default


def _check_order(positional: list[dataclasses.Field[Any]]) -> None:
    """dataclass's own check (which its ``__init__``'s compilation makes)."""
    seen_default = False
    for f in positional:
        if _default(f) is not dataclasses.MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")


def _signature(cls: type) -> inspect.Signature:
    """The compiled ``__init__``'s signature, ``self`` left out as for the class."""
    positional, keyword = _parameters(cls)
    kinds: list[tuple[dataclasses.Field[Any], Any]]
    kinds = [(f, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in positional]
    kinds += [(f, inspect.Parameter.KEYWORD_ONLY) for f in keyword]
    empty = inspect.Parameter.empty
    return inspect.Signature([
        inspect.Parameter(f.name, kind, annotation=f.type,
                          default=empty if _default(f) is dataclasses.MISSING else _default(f))
        for f, kind in kinds], return_annotation=None)


class _LazySignature:
    """``cls.__signature__`` (what ``inspect.signature`` reads first), built when asked: ~20 µs
    a class that no cold run spends. Absent on instances and on a subclass with an
    ``__init__`` of its own, where ``inspect`` looks further as usual."""

    def __init__(self, init: Callable[..., None]) -> None:
        self.init = init

    def __get__(self, obj: Any, owner: type) -> inspect.Signature:
        if obj is not None or owner.__init__ is not self.init:  # type: ignore[misc]
            raise AttributeError("__signature__")
        return _signature(owner)


def _binding_error(cls: type, positional: list[dataclasses.Field[Any]],
                   keyword: list[dataclasses.Field[Any]]) -> Callable[..., None]:
    """args, kwargs → raise the TypeError the compiled ``__init__`` would raise for them: a
    stub with its signature, compiled on the first error only."""
    stub: list[Callable[..., None]] = []

    def fail(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not stub:
            self_name = "__dataclass_self__" if any(
                f.name == "self" for f in [*positional, *keyword]) else "self"
            params = [self_name] + [f.name + ("" if _default(f) is dataclasses.MISSING else "=_d")
                                    for f in positional]
            params += ["*"] + [f.name + ("" if _default(f) is dataclasses.MISSING else "=_d")
                               for f in keyword] if keyword else []
            namespace: dict[str, Any] = {"_d": None}
            exec(f"def __init__({','.join(params)}): pass", namespace)  # noqa: S102
            stub.append(namespace["__init__"])
            stub[0].__qualname__ = f"{cls.__qualname__}.__init__"
        stub[0](None, *args, **kwargs)
        raise TypeError(f"{cls.__qualname__}.__init__() arguments that do not bind")
    return fail


def _binder(cls: type, positional: list[dataclasses.Field[Any]],
            keyword: list[dataclasses.Field[Any]]) -> Callable[..., list[Any]]:
    """(args, kwargs) → every parameter's value in order (defaults filled in, ``_FACTORY``
    for a factory's), or the compiled ``__init__``'s TypeError."""
    count = len(positional)
    later = [tuple(f.name for f in [*positional[n:], *keyword]) for n in range(count + 1)]
    defaults = {f.name: _default(f) for f in [*positional, *keyword]
                if _default(f) is not dataclasses.MISSING}
    fail = _binding_error(cls, positional, keyword)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        given = len(args)
        if given > count:
            fail(args, kwargs)
        values = list(args)
        used = 0
        for name in later[given]:
            if name in kwargs:
                values.append(kwargs[name])
                used += 1
            elif name in defaults:
                values.append(defaults[name])
            else:
                fail(args, kwargs)
        if used != len(kwargs):
            fail(args, kwargs)
        return values
    return bind


def _plain_fields(cls: type, names: tuple[str, ...]) -> bool:
    """Whether ``object.__setattr__`` of each of ``names`` only stores it in the instance's
    ``__dict__``: no data descriptor (a slot, a property) of that name on the class."""
    if "__slots__" in vars(cls):
        return False
    found = (next((vars(b)[name] for b in cls.__mro__ if name in vars(b)), None)
             for name in names)
    return not any(hasattr(type(attr), "__set__") or hasattr(type(attr), "__delete__")
                   for attr in found)


def _init(cls: type) -> Callable[..., None]:
    """``cls``'s ``__init__``: the compiled one's binding and assignments (module docstring)."""
    positional, keyword = _parameters(cls)
    _check_order(positional)
    params = tuple(f.name for f in [*positional, *keyword])
    count, bind = len(positional), _binder(cls, positional, keyword)
    steps: tuple[tuple[str, bool, Any], ...] = tuple(
        (f.name, f.init, f.default_factory) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init or f.default_factory is not dataclasses.MISSING)
    initvars = tuple(params.index(f.name)  # where __post_init__'s arguments are
                     for f in cls.__dataclass_fields__.values()  # type: ignore[attr-defined]
                     if _initvar(f) and f.name in params)
    # Every parameter a field, no factory, in the fields' order: the values go as they are.
    direct = tuple(name for name, _, _ in steps) == params and _plain_fields(cls, params) and \
        all(factory is dataclasses.MISSING for _, _, factory in steps)
    post_init = hasattr(cls, "__post_init__")
    assign = object.__setattr__

    def __init__(self: Any, /, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != count or keyword:
            args = bind(args, kwargs)  # type: ignore[assignment]
        if direct:
            stored = self.__dict__
            for name, value in zip(params, args, strict=True):
                stored[name] = value
        else:
            named = dict(zip(params, args, strict=True))
            for name, from_argument, factory in steps:
                value = named[name] if from_argument else _FACTORY
                assign(self, name, factory() if value is _FACTORY else value)
        if post_init:
            self.__post_init__(*[args[i] for i in initvars])
    return __init__


def _explicit_hash(own: dict[str, Any]) -> bool:
    """The class body sets ``__hash__`` itself (not Python's None beside its own ``__eq__``)."""
    if "__hash__" not in own:
        return False
    return not (own["__hash__"] is None and "__eq__" in own)


def _set(cls: type, name: str, method: Callable[..., Any]) -> None:
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    setattr(cls, name, method)


def _frozen_base(cls: type) -> bool:
    """Whether ``cls`` has frozen dataclass bases: dataclass's check between bases (a frozen
    class on non-frozen dataclasses is refused, as ``@dataclass(frozen=True)`` refuses it)."""
    bases = [b.__dataclass_params__.frozen  # type: ignore[attr-defined]
             for b in cls.__mro__[-1:0:-1] if getattr(b, "__dataclass_fields__", None) is not None]
    if bases and not any(bases):
        raise TypeError("cannot inherit frozen dataclass from a non-frozen one")
    return any(bases)


def _methods(cls: type, own: dict[str, Any]) -> None:
    """The shared methods on ``cls`` where its body has none of its own, as dataclass sets them."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if "__init__" not in own:
        init = _init(cls)
        _set(cls, "__init__", init)
        cls.__signature__ = _LazySignature(init)  # type: ignore[attr-defined]
    compared = _getter(tuple(f.name for f in fields if f.compare))
    if "__eq__" not in own:
        _set(cls, "__eq__", _eq(compared))
    for method in _guard(cls, tuple(f.name for f in fields)):
        _set(cls, method.__name__, method)
    if not _explicit_hash(own):
        hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
        _set(cls, "__hash__", _hash(_getter(hashed)))
    if "__repr__" not in own:
        _set(cls, "__repr__", _repr(tuple(f.name for f in fields if f.repr)))
    if not own.get("__doc__"):
        cls.__doc__ = cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")


@dataclass_transform(frozen_default=True,
                     field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen_dataclass(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)``, its methods shared (module docstring)."""
    own = dict(cls.__dict__)
    frozen_base = _frozen_base(cls)
    cls = dataclasses.dataclass(init=False, eq=False, repr=False, frozen=frozen_base)(cls)
    for name in ("__setattr__", "__delattr__"):
        if name in own:
            raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    params.init = params.repr = params.eq = params.frozen = True
    _methods(cls, own)
    return cls
