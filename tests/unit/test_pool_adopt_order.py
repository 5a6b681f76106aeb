"""A claimed pool VM's NETWORK goes to the guest before the host gives the VM the pod's
devices (executor.pool.adopt._give_pod): the guest applies it while the host writes and
fsyncs the shares' grant records and binds the sandbox, instead of after; the pod's CPU bound
is set before either."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from executor.guest import protocol as proto
from executor.guest.protocol import MsgType
from executor.pool import adopt
from executor.pool.protocol import Lease
from tests.unit.test_guest_channel import FakeGuest
from tests.unit.test_pipelined_requests import Hypervisor, claimed_vm


class AdoptingHypervisor(Hypervisor):
    def adopt(self, name: str) -> None:
        self.adopted = name


def _received(guest: FakeGuest, timeout: float = 2.0) -> list[MsgType]:
    """The frame types the guest got, once it got any (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not guest.received and time.monotonic() < deadline:
        time.sleep(0.01)
    return [f.type for f in guest.received]


def test_the_network_reaches_the_guest_before_the_devices_are_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    vm, _, _ = claimed_vm(tmp_path / "a", lambda conn, f: None)
    vm._channel.close()  # the adoption attaches a channel of its own
    vm._channel = None
    hv = AdoptingHypervisor()
    guest = FakeGuest(tmp_path / "claimed.sock",
                      handler=lambda conn, f: conn.sendall(proto.encode_json(MsgType.OK, f.id,
                                                                             {})))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(tmp_path / "claimed.sock"))
    seen: list[list[MsgType]] = []

    def give_devices(vm: Any, hv: Any, binds: list[Any], *, attach_layers: bool = True,
                     cpu_bound: bool = True) -> None:
        seen.append(_received(guest))

    def take_over(channel: Any) -> Any:
        vm._channel = channel
        return hv

    monkeypatch.setattr(adopt, "give_devices", give_devices)
    # the CPU bound first: in force before anything reaches the guest
    monkeypatch.setattr(adopt, "bound_pool_vcpus",
                        lambda vm, hv: seen.append(["bound", *(f.type for f in guest.received)]))
    monkeypatch.setattr(vm, "take_over", take_over)
    lease = Lease(vm="hypervm-pool-x", run_dir=vm.run_dir,
                  ready={"version": proto.VERSION, "kernel": "6.1"}, layers_attached=True,
                  identity=None, identity_known=True)
    try:
        adopt._give_pod(vm, lease, sock, timeout=5)
        assert seen == [["bound"], [MsgType.NETWORK]]
        assert hv.adopted == "hypervm-pool-x"
    finally:
        vm.destroy()
        guest.close()
