"""Standby clones' pure parts: the request and reply, the shapes kept, the pool setting, and
the keeper's hand-out (one claimer per standby, only for the snapshot it was made for)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executor.pool.protocol import MAX_STANDBY_SHAPES, PoolConfig
from executor.snapshot import keeper as keeper_mod
from executor.snapshot.keeper import StandbyKeeper
from executor.snapshot.standby import (
    lease_reply,
    parse_lease,
    parse_standby,
    remember,
    standby_request,
)
from executor.snapshot.store import Shape
from hypervm.errors import InvalidSpec, PoolError

KEY = "0123456789abcdef01234567"
TEMPLATE = "hypervm-template-1a2b3c4d"


def test_a_request_parses_back() -> None:
    ask = parse_standby(standby_request(Shape(2, 256), KEY, TEMPLATE, {"pod": "web"}))
    assert (ask.shape, ask.key, ask.template, ask.metadata) == (Shape(2, 256), KEY, TEMPLATE,
                                                                {"pod": "web"})


@pytest.mark.parametrize(("field", "value"), [
    ("vcpus", 0), ("vcpus", True), ("vcpus", "1"), ("vcpus", 10**6), ("memory_mib", -1),
    ("key", "../../etc"), ("key", KEY.upper()), ("key", None), ("template", "../x"),
    ("template", "other-1"), ("template", "hypervm-a/b"), ("metadata", []),
    ("metadata", {"pod": 1}),
])
def test_a_bad_request_names_its_field(field: str, value: Any) -> None:
    request = standby_request(Shape(1, 128), KEY, TEMPLATE)
    request[field] = value
    with pytest.raises(PoolError, match=f"standby.{field}"):
        parse_standby(request)


def test_a_lease_reply_parses_and_a_malformed_one_is_refused() -> None:
    lease = parse_lease(lease_reply("hypervm-pool-sb-1a2b3c4d", "/run/hypervm/vms/x",
                                    (200001, 200001), {"version": 1}))
    assert (lease.vm, lease.run_dir, lease.identity, lease.ready) == (
        "hypervm-pool-sb-1a2b3c4d", Path("/run/hypervm/vms/x"), (200001, 200001),
        {"version": 1})
    assert parse_lease(lease_reply("hypervm-p-sb-1", "/r", None, {})).identity is None
    with pytest.raises(PoolError, match="no standby"):
        parse_lease({"error": "no standby of 1 vCPU / 128 MiB is ready"})
    for bad in ({"vm": "x", "run_dir": "/r", "identity": None, "ready": {}},
                {"vm": "hypervm-p-1", "run_dir": "relative", "identity": None, "ready": {}},
                {"vm": "hypervm-p-1", "run_dir": "/r", "identity": [0, 0], "ready": {}},
                {"vm": "hypervm-p-1", "run_dir": "/r", "identity": [True, 1], "ready": {}},
                {"vm": "hypervm-p-1", "run_dir": "/r", "identity": None},
                {"vm": "hypervm-p-1", "run_dir": "/r", "identity": None, "ready": []}):
        with pytest.raises(PoolError, match="malformed"):
            parse_lease(bad)


def test_the_shapes_kept_are_the_latest_asked_for() -> None:
    a, b, c = Shape(1, 128), Shape(1, 256), Shape(2, 512)
    wanted, gone = remember([], a, 2)
    assert (wanted, gone) == ([a], [])
    wanted, gone = remember(wanted, b, 2)
    assert (wanted, gone) == ([a, b], [])
    wanted, gone = remember(wanted, a, 2)  # asked again: the most recent now
    assert (wanted, gone) == ([b, a], [])
    wanted, gone = remember(wanted, c, 2)
    assert (wanted, gone) == ([a, c], [b])


def test_standby_setting_is_bounded_and_allows_a_pool_of_only_standbys() -> None:
    assert PoolConfig(size=0, standby=1).validate().standby == 1
    with pytest.raises(InvalidSpec, match="pool.size"):
        PoolConfig(size=0, standby=0).validate()
    for bad in (-1, MAX_STANDBY_SHAPES + 1):
        with pytest.raises(InvalidSpec, match="pool.standby"):
            PoolConfig(standby=bad).validate()


class _Pool:
    """What the keeper uses of a WarmPool, recording hand-overs and discards."""

    def __init__(self) -> None:
        self.cfg = SimpleNamespace(snapshot_vcpus=1)  # templates of 1 vCPU
        self.config = PoolConfig(size=0, standby=1, name="t")
        self.handed: list[tuple[str, int]] = []
        self.discarded: list[str] = []
        self.connected = True  # its libvirt connection (executor.pool.reconnect)

    def require_connected(self, what: str) -> None:
        assert self.connected

    def hand_over(self, name: str, pid: int) -> None:
        self.handed.append((name, pid))

    def discard(self, name: str, run_dir: Path) -> None:
        self.discarded.append(name)


@pytest.fixture
def guest() -> Iterator[socket.socket]:
    """The guest's end of a standby's channel socket (the keeper holds the other)."""
    ours, theirs = socket.socketpair()
    _SOCKETS.append(ours)
    yield theirs
    theirs.close()
    ours.close()


_SOCKETS: list[socket.socket] = []


def _keeper(shape: Shape, template: str = TEMPLATE) -> tuple[StandbyKeeper, _Pool]:
    pool = _Pool()
    kept = StandbyKeeper(pool)  # type: ignore[arg-type]
    kept._keys[shape] = KEY
    kept._wanted = [shape]
    kept._ready[shape] = keeper_mod._Standby("hypervm-t-sb-1", Path("/r"), shape, KEY,
                                             template, None, time.monotonic(),
                                             _SOCKETS[-1], {"version": 1})
    return kept, pool


def test_a_standby_is_handed_to_one_claimer_only(guest: socket.socket) -> None:
    shape = Shape(1, 128)
    kept, pool = _keeper(shape)
    ask = parse_standby(standby_request(shape, KEY, TEMPLATE))
    assert kept.take(ask, os.getpid()).name == "hypervm-t-sb-1"
    assert pool.handed == [("hypervm-t-sb-1", os.getpid())]
    with pytest.raises(PoolError, match="no standby"):
        kept.take(ask, os.getpid())
    assert pool.handed == [("hypervm-t-sb-1", os.getpid())]
    assert kept.status()["taken"] == 1 and kept.status()["missed"] == 1


def test_a_standby_of_a_template_serves_any_vcpu_count_up_to_its_capacity(
        guest: socket.socket) -> None:
    """Standbys are kept per template (2 vCPUs present of its capacity, the claimer onlines
    the second, hot-plugs the rest): a claimer of 1 vCPU and one of 2 ask for the same standby."""
    template = Shape(2, 128)
    kept, pool = _keeper(template)
    pool.cfg.snapshot_vcpus = 2
    ask = parse_standby(standby_request(Shape(1, 128), KEY, TEMPLATE))
    assert kept.take(ask, os.getpid()).name == "hypervm-t-sb-1"
    assert kept.status()["shapes"] == [[2, 128]]
    with pytest.raises(PoolError, match="no standby of 2 vCPU"):  # one take only
        kept.take(parse_standby(standby_request(Shape(2, 128), KEY, TEMPLATE)), os.getpid())
    assert kept.status()["shapes"] == [[2, 128]], "one template shape wanted, not two"


def test_a_standby_of_another_snapshot_or_key_is_never_handed_out(
        guest: socket.socket) -> None:
    shape = Shape(1, 128)
    kept, pool = _keeper(shape, template="hypervm-template-old")
    with pytest.raises(PoolError, match="no longer has"):  # the store's entry was remade
        kept.take(parse_standby(standby_request(shape, KEY, TEMPLATE)), os.getpid())
    assert pool.discarded == ["hypervm-t-sb-1"] and pool.handed == []
    guest.close()  # the second standby below: a fresh pair
    _SOCKETS.append(socket.socketpair()[0])
    kept, pool = _keeper(shape)
    other_key = "f" * 24  # the claimer boots another kernel, init or QEMU
    with pytest.raises(PoolError, match="another snapshot"):
        kept.take(parse_standby(standby_request(shape, other_key, TEMPLATE)), os.getpid())
    assert pool.handed == [] and kept.ready_names() == ["hypervm-t-sb-1"]


def test_a_dead_claimer_gets_nothing(guest: socket.socket) -> None:
    shape = Shape(1, 128)
    kept, pool = _keeper(shape)
    with pytest.raises(PoolError, match="gone"):
        kept.take(parse_standby(standby_request(shape, KEY, TEMPLATE)), 2**22 + 12345)
    assert pool.handed == [] and kept.ready_names() == ["hypervm-t-sb-1"]


def test_a_standby_whose_guest_is_gone_is_discarded_not_handed_out(
        guest: socket.socket) -> None:
    shape = Shape(1, 128)
    kept, pool = _keeper(shape)
    guest.close()  # its QEMU died while it waited
    with pytest.raises(PoolError, match="is gone"):
        kept.take(parse_standby(standby_request(shape, KEY, TEMPLATE)), os.getpid())
    assert pool.discarded == ["hypervm-t-sb-1"] and pool.handed == []
