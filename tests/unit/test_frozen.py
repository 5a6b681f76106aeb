"""``hypervm.frozen.frozen_dataclass`` behaves as ``@dataclass(frozen=True)``: construction
(binding and its TypeErrors), equality, hashing, repr, the frozen guard, the ``dataclasses``
functions, pickling and copying, the signature, with field options and inheritance; only its
methods are shared instead of compiled per class. Every test compares the two (the classes of
each test are made twice, once with each decorator, with the same qualified names)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

import pytest

from hypervm.frozen import frozen_dataclass


def pair(decorator: Any) -> tuple[type, type, type]:
    """The same classes (plain, field options, a subclass) under ``decorator``."""

    @decorator
    class Plain:
        """doc"""

        a: int
        b: str = "x"
        c: tuple[int, ...] = field(default_factory=tuple)

    @decorator
    class Options:
        """doc"""

        key: str
        note: str = field(default="", compare=False)
        secret: str = field(default="", repr=False)
        cached: int = field(default=0, hash=False)
        extra: int = field(default=0, compare=False, hash=True)

    @decorator
    class Child(Plain):
        """doc"""

        d: float = 0.5

    return Plain, Options, Child


SAMPLES: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = [
    (0, (1,), {}),
    (0, (1, "y", (2, 3)), {}),
    (0, (2, "x"), {}),
    (1, ("k",), {}),
    (1, ("k",), {"note": "other", "secret": "s"}),
    (1, ("k",), {"cached": 7}),
    (1, ("k",), {"extra": 9}),
    (2, (1,), {}),
    (2, (1, "x", (), 0.25), {}),
]


@pytest.mark.parametrize("kind", range(3))
def test_equality_hash_and_repr_match_a_frozen_dataclass(kind: int) -> None:
    ours, theirs = pair(frozen_dataclass)[kind], pair(dataclass(frozen=True))[kind]
    cases = [(args, kwargs) for k, args, kwargs in SAMPLES if k == kind]
    for args, kwargs in cases:
        mine, ref = ours(*args, **kwargs), theirs(*args, **kwargs)
        assert repr(mine) == repr(ref)
        assert hash(mine) == hash(ref)
        assert dataclasses.astuple(mine) == dataclasses.astuple(ref)
        for other_args, other_kwargs in cases:
            assert (mine == ours(*other_args, **other_kwargs)) == \
                (ref == theirs(*other_args, **other_kwargs))
            assert (mine != ours(*other_args, **other_kwargs)) == \
                (ref != theirs(*other_args, **other_kwargs))


def test_instances_of_other_classes_never_compare_equal() -> None:
    plain, _, child = pair(frozen_dataclass)
    assert plain(1) != child(1)
    assert plain(1) != (1, "x", ())
    assert plain(1).__eq__((1, "x", ())) is NotImplemented


def test_it_stays_frozen_and_a_dataclass() -> None:
    plain, options, child = pair(frozen_dataclass)
    value = child(1, d=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del value.b  # type: ignore[misc]
    assert dataclasses.is_dataclass(value)
    assert dataclasses.replace(value, a=3) == child(3, d=2.0)
    assert dataclasses.asdict(options("k", secret="s")) == {
        "key": "k", "note": "", "secret": "s", "cached": 0, "extra": 0}
    assert [f.name for f in dataclasses.fields(child)] == ["a", "b", "c", "d"]
    assert {plain(1), plain(1), plain(2)} == {plain(1), plain(2)}


def test_a_method_of_the_class_is_kept() -> None:
    @frozen_dataclass
    class Own:
        a: int

        def __eq__(self, other: object) -> bool:
            return True

        def __repr__(self) -> str:
            return "own"

    @frozen_dataclass
    class OwnHash:
        a: int

        def __hash__(self) -> int:
            return 42

    assert Own(1) == Own(2) and repr(Own(1)) == "own"
    assert hash(Own(1)) == hash(Own(1)) != hash(Own(2))  # dataclass's rule: __eq__ alone
    assert hash(OwnHash(1)) == 42 and OwnHash(1) != OwnHash(2)


@pytest.mark.parametrize("decorator", [frozen_dataclass, dataclass(frozen=True)])
def test_a_recursive_value_repr_ends(decorator: Any) -> None:
    @decorator
    class Node:
        items: list[Any]

    node = Node([])
    node.items.append(node)
    assert repr(node).endswith(".Node(items=[...])")


def test_no_method_is_compiled_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dataclasses`` compiles its methods with ``exec``; ours creates a class without one,
    but for a subclass of a frozen dataclass, whose guard ``dataclasses`` compiles (its check
    between bases wants the subclass frozen; no value of ours is one)."""
    calls: list[object] = []
    real_exec = exec

    def counting_exec(*args: Any) -> None:
        calls.append(args[0])
        real_exec(*args)
    monkeypatch.setattr("builtins.exec", counting_exec)
    plain, options, child = pair(frozen_dataclass)
    assert [text.split("\n")[1] for text in calls] == [  # type: ignore[attr-defined]
        " def __setattr__(self,name,value):", " def __delattr__(self,name):"]
    calls.clear()
    pair(dataclass(frozen=True))
    assert len(calls) == 3 * 6  # what the test tells apart: six methods a class
    for name in ("__init__", "__eq__", "__hash__", "__repr__", "__setattr__", "__delattr__"):
        code = getattr(plain, name).__code__
        assert code is getattr(options, name).__code__ is getattr(child, name).__code__
        assert code.co_filename != "<string>"


def rich(decorator: Any) -> tuple[type, type]:
    """A class with every field option ``__init__`` handles, and a subclass adding fields."""

    @decorator
    class Rich:
        """doc"""

        a: int
        b: str = "x"
        items: list[int] = field(default_factory=list)
        fixed: int = field(default=5, init=False)
        made: list[int] = field(default_factory=lambda: [1], init=False)
        scale: InitVar[int] = 3
        _: KW_ONLY
        k: int
        m: int = 2

        def __post_init__(self, scale: int) -> None:
            object.__setattr__(self, "scaled", self.a * scale)

    @decorator
    class Sub(Rich):
        """doc"""

        z: float = 0.5
        w: int = field(default=0, kw_only=True)

    return Rich, Sub


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {"k": 1}),
    ((1, "y", [2], 7), {"k": 9, "m": 3}),
    ((), {"a": 4, "b": "q", "items": [5], "scale": 2, "k": 0, "m": 1}),
    ((1, "y"), {"scale": 0, "k": 1}),
    ((), {"k": 1}),                          # a required positional missing
    ((), {}),                                # two missing, a keyword-only among them
    ((1,), {}),                              # the keyword-only missing
    ((1, "y", [2], 7, 8), {"k": 1}),         # too many positional
    ((1, "y", [2], 7, 8, 9), {}),
    ((1,), {"k": 1, "zz": 2}),               # unexpected keyword
    ((1,), {"a": 2, "k": 1}),                # a positional given twice
    ((1,), {"k": 1, "self": 2}),             # self, which dataclass names too
    ((1,), {"k": 1, "fixed": 3}),            # an init=False field
    ((1,), {"k": 1, "made": [3]}),
    ((1,), {"k": 1, "z": 0.25, "w": 7}),     # the subclass's own
    ((1, "y", [2], 7, 0.75), {"k": 1}),
]


def outcome(make: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """What ``make(*args, **kwargs)`` gave: ("value", its __dict__ and repr) or (the error's
    type, its message)."""
    try:
        value = make(*args, **kwargs)
    except Exception as e:  # noqa: BLE001  (compared, whatever it is)
        return type(e).__name__, str(e)
    return "value", (vars(value), repr(value))


@pytest.mark.parametrize("kind", range(2))
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_and_its_errors_match_a_frozen_dataclass(
        kind: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    ours, theirs = rich(frozen_dataclass)[kind], rich(dataclass(frozen=True))[kind]
    assert outcome(ours, *args, **kwargs) == outcome(theirs, *args, **kwargs)


def test_construction_covers_every_case_it_compares() -> None:
    """The comparison above is not vacuous: values and each kind of binding error occur."""
    sub = rich(frozen_dataclass)[1]
    seen = [outcome(sub, *args, **kwargs) for args, kwargs in CALLS]
    assert sum(kind == "value" for kind, _ in seen) >= 5
    texts = " ".join(str(text) for kind, text in seen if kind == "TypeError")
    for part in ("missing 1 required positional argument: 'a'", "required keyword-only",
                 "positional arguments but", "unexpected keyword argument 'zz'",
                 "multiple values for argument 'a'", "multiple values for argument 'self'",
                 "rich.<locals>.Sub.__init__()"):
        assert part in texts


def test_factories_make_a_new_value_per_instance_and_post_init_sees_init_vars() -> None:
    for decorator in (frozen_dataclass, dataclass(frozen=True)):
        klass = rich(decorator)[0]
        one, two = klass(2, k=0), klass(2, scale=5, k=0)
        assert one.items == two.items == [] and one.items is not two.items
        assert one.made == [1] and one.made is not two.made
        assert (one.scaled, two.scaled, one.fixed) == (6, 10, 5)
        assert "scale" not in vars(one) and "fixed" not in vars(one)


def test_a_field_named_self_binds_as_in_a_frozen_dataclass() -> None:
    def make(decorator: Any) -> type:
        @decorator
        class Named:
            """doc"""

            self: int
            other: int = 0
        return Named

    ours, theirs = make(frozen_dataclass), make(dataclass(frozen=True))
    for args, kwargs in [((1,), {}), ((), {"self": 1, "other": 2}), ((1,), {"self": 2}),
                         ((), {})]:
        assert outcome(ours, *args, **kwargs) == outcome(theirs, *args, **kwargs)


def definition_error(decorator: Any, case: str) -> str:
    """The TypeError defining a class of ``case`` raises (or "" when it is accepted)."""
    try:
        if case == "default order":
            @decorator
            class Order:
                a: int = 0
                b: int
        elif case == "own guard":
            @decorator
            class Guard:
                a: int

                def __setattr__(self, name: str, value: Any) -> None:
                    pass
        elif case == "on a non-frozen dataclass":
            @dataclass
            class Thawed:
                a: int

            @decorator
            class Frozen(Thawed):
                b: int = 0
        elif case == "a non-frozen dataclass on it":
            @decorator
            class Base:
                a: int

            @dataclass
            class Thawing(Base):
                b: int = 0
    except TypeError as e:
        return str(e)
    return ""


@pytest.mark.parametrize("case", ["default order", "own guard", "on a non-frozen dataclass",
                                  "a non-frozen dataclass on it"])
def test_a_class_dataclass_refuses_is_refused_alike(case: str) -> None:
    theirs = definition_error(dataclass(frozen=True), case)
    assert theirs and definition_error(frozen_dataclass, case) == theirs


def test_the_freeze_matches_a_frozen_dataclass() -> None:
    """Fields and new names alike, on the class and on a plain subclass (which may take new
    names, not fields), with FrozenInstanceError."""
    results = []
    for decorator in (frozen_dataclass, dataclass(frozen=True)):
        klass = rich(decorator)[0]
        plain_sub = type("PlainSub", (klass,), {})
        for value in (klass(1, k=2), rich(decorator)[1](1, k=2), plain_sub(1, k=2)):
            seen = []
            for action in (lambda v: setattr(v, "a", 9), lambda v: setattr(v, "new", 9),
                           lambda v: delattr(v, "a"), lambda v: delattr(v, "b"),
                           lambda v: object.__setattr__(v, "x", 1) or delattr(v, "x"),
                           lambda v: setattr(v, "scaled", 0)):
                seen.append(outcome(lambda a, v: a(v) or v, action, value))
            seen.append((value.a, "new" in vars(value)))
            results.append(seen)
    ours, theirs = results[:3], results[3:]
    assert ours == theirs
    assert ours[0][0] == ("FrozenInstanceError", "cannot assign to field 'a'")
    assert ours[0][1] == ("FrozenInstanceError", "cannot assign to field 'new'")
    assert ours[2][1][0] == "value" and ours[2][-1] == (1, True)  # the plain subclass's new name


def test_the_dataclasses_functions_and_params_match() -> None:
    (ours, ours_sub), (theirs, theirs_sub) = rich(frozen_dataclass), rich(dataclass(frozen=True))
    for mine, ref in ((ours, theirs), (ours_sub, theirs_sub)):
        assert repr(mine.__dataclass_params__) == repr(ref.__dataclass_params__)
        assert mine.__dataclass_params__.frozen
        assert mine.__match_args__ == ref.__match_args__
        assert [(f.name, f.init, f.kw_only) for f in dataclasses.fields(mine)] == \
            [(f.name, f.init, f.kw_only) for f in dataclasses.fields(ref)]
        assert str(inspect.signature(mine)) == str(inspect.signature(ref))
        assert dataclasses.is_dataclass(mine) and dataclasses.is_dataclass(mine(1, k=1))
        a, b = mine(1, items=[2], k=3), ref(1, items=[2], k=3)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)
        assert dataclasses.astuple(a) == dataclasses.astuple(b)
        for changes in ({"a": 5, "scale": 2}, {"m": 0, "scale": 1}, {"a": 5},
                        {"fixed": 1, "scale": 1}):
            assert outcome(dataclasses.replace, a, **changes) == \
                outcome(dataclasses.replace, b, **changes)
        match a:
            case mine(x, y, z, s):
                assert (x, y, z, s) == (1, "x", [2], 3)  # InitVar: the class's default
    assert not isinstance(vars(ours)["__signature__"], inspect.Signature)  # built when asked
    assert not hasattr(ours(1, k=1), "__signature__")


def test_a_class_without_a_docstring_gets_dataclasss() -> None:
    def make(decorator: Any) -> type:
        @decorator
        class Bare:
            a: int
            b: list[int] = field(default_factory=list)
            _: KW_ONLY
            c: str = "c"
        return Bare

    assert make(frozen_dataclass).__doc__ == make(dataclass(frozen=True)).__doc__ == \
        "Bare(a: 'int', b: 'list[int]' = <factory>, *, c: 'str' = 'c')"


@frozen_dataclass
class Pickled:
    """A module-level value (pickle finds its class by name): the pod spec a -d run hands its
    supervisor is pickled (executor/cli/detach.py)."""

    a: int
    items: tuple[str, ...] = ()
    note: str = field(default="", compare=False)


@dataclass(frozen=True)
class PickledRef:
    """``Pickled`` under ``@dataclass(frozen=True)``."""

    a: int
    items: tuple[str, ...] = ()
    note: str = field(default="", compare=False)


def test_pickling_and_copying_match() -> None:
    for klass in (Pickled, PickledRef):
        value = klass(1, ("x",), note="n")
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(value, protocol))
            assert back == value and vars(back) == vars(value) and type(back) is klass
        assert vars(copy.copy(value)) == vars(value) == vars(copy.deepcopy(value))
        with pytest.raises(dataclasses.FrozenInstanceError):
            pickle.loads(pickle.dumps(value)).a = 2


def test_an_own_init_is_kept_and_a_plain_subclass_init_gets_its_signature() -> None:
    for decorator in (frozen_dataclass, dataclass(frozen=True)):
        @decorator
        class Own:
            a: int

            def __init__(self, text: str) -> None:
                object.__setattr__(self, "a", int(text))

        class Plain(rich(decorator)[0]):  # type: ignore[misc,valid-type]
            def __init__(self, n: int) -> None:
                super().__init__(n, k=n)

        assert Own("4").a == 4 and str(inspect.signature(Own)) == "(text: 'str') -> 'None'"
        assert Plain(3).k == 3 and str(inspect.signature(Plain)) == "(n: 'int') -> 'None'"


class Recorded:
    """A data descriptor as a field's default (dataclass's "descriptor-typed fields"): the
    field's assignments go through its ``__set__``, never straight into ``__dict__``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = "_" + name

    def __get__(self, obj: Any, owner: type) -> Any:
        return 100 if obj is None else getattr(obj, self.name)

    def __set__(self, obj: Any, value: int) -> None:
        object.__setattr__(obj, self.name, value * 2)


def test_values_are_stored_as_a_frozen_dataclass_stores_them() -> None:
    """The order of ``__dict__`` and a data descriptor's ``__set__``, for the plain classes
    (stored in one update) and the others (field by field)."""
    def make(decorator: Any) -> tuple[type, type]:
        @decorator
        class Simple:
            b: int
            a: int = 0

        @decorator
        class Described:
            a: int
            d: Recorded = Recorded()  # noqa: RUF009  (the case)
        return Simple, Described

    for mine, ref in zip(make(frozen_dataclass), make(dataclass(frozen=True)), strict=True):
        for args in ((1,), (1, 2)):
            assert list(vars(mine(*args)).items()) == list(vars(ref(*args)).items())
    assert vars(make(frozen_dataclass)[1](1, 3)) == {"a": 1, "_d": 6}
    for name in ("a", "d", "_d"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(make(frozen_dataclass)[1](1), name, 0)
    ordered = rich(frozen_dataclass)[1](1, "y", k=2, w=3)
    assert list(vars(ordered)) == list(vars(rich(dataclass(frozen=True))[1](1, "y", k=2, w=3)))
