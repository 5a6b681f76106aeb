"""``hypervm.frozen.frozen_dataclass`` behaves as ``@dataclass(frozen=True)``: construction,
equality, hashing, repr, the frozen guard and the ``dataclasses`` functions, with field options
and inheritance; only its eq/hash/repr are shared instead of compiled per class."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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


def test_eq_hash_and_repr_are_shared_not_compiled_per_class() -> None:
    plain, options, _ = pair(frozen_dataclass)
    for name in ("__eq__", "__hash__"):
        assert getattr(plain, name).__code__ is getattr(options, name).__code__
        assert getattr(plain, name).__code__.co_filename != "<string>"
    assert plain.__init__.__code__ is not options.__init__.__code__  # type: ignore[misc]
    reference = pair(dataclass(frozen=True))[0]
    assert reference.__eq__.__code__.co_filename == "<string>"  # what the test tells apart
