"""A clone's RESEED pipelined with its first START (executor.snapshot.start.reseed): sent
without waiting to an init that refuses to start anything after a failed RESEED (0.6.0),
awaited first with an older one; against a scripted fake guest on a real unix socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from executor.guest import protocol as proto
from executor.guest.protocol import MsgType
from executor.snapshot import start
from hypervm.errors import GuestError, HyperVMError
from tests.unit.test_pipelined_requests import claimed_vm, held_until_start


@pytest.mark.parametrize(("init", "refuses"), [
    ("0.6.0", True), ("0.10.0", True), ("1.0.0", True), ("0.5.0", False), ("0.4.1", False),
    ("", False), ("0.6", False), ("0.6.0-evil", False), (None, False)])
def test_only_an_init_that_refuses_unseeded_starts_gets_reseed_ahead(init: object,
                                                                     refuses: bool) -> None:
    ready = {"version": 1} if init is None else {"version": 1, "init": init}
    assert start.refuses_unseeded(ready) is refuses


def test_the_start_goes_right_behind_reseed(tmp_path: Path) -> None:
    """The guest answers nothing before the START: a host waiting for RESEED's reply first
    would wait forever."""
    vm, hv, guest = claimed_vm(tmp_path, held_until_start())
    try:
        start.reseed(vm, {"version": 1, "init": "0.6.0"})
        assert vm.start(vm.pod.containers[0]).pid == 7
        assert [f.type for f in guest.received] == [MsgType.RESEED, MsgType.START]
        assert hv.destroyed == []
    finally:
        vm.destroy()


def test_a_failed_reseed_fails_the_start_and_destroys_the_clone(tmp_path: Path) -> None:
    vm, hv, guest = claimed_vm(tmp_path, held_until_start(MsgType.ERROR))
    exits: list[object] = []
    try:
        start.reseed(vm, {"version": 1, "init": "0.6.0"})
        with pytest.raises(HyperVMError, match="RESEED request"):
            vm.start(vm.pod.containers[0], on_exit=exits.append)
        assert hv.destroyed == [vm.name] and exits == []
    finally:
        vm.destroy()


def test_an_older_init_gets_its_reseed_awaited(tmp_path: Path) -> None:
    """An init before 0.6.0 would start a container behind a failed RESEED: the host waits
    for the reply, and a refusal fails the clone before any START is sent."""
    def refuse(conn: socket.socket, frame: proto.Frame) -> None:
        conn.sendall(proto.encode_json(MsgType.ERROR, frame.id, {
            "code": "EIO", "message": "RNDADDENTROPY: EPERM", "errno": 1}))

    vm, hv, guest = claimed_vm(tmp_path, refuse)
    try:
        with pytest.raises(GuestError, match="EIO|RNDADDENTROPY"):
            start.reseed(vm, {"version": 1, "init": "0.5.0"})
        assert [f.type for f in guest.received] == [MsgType.RESEED]
    finally:
        vm.destroy()
