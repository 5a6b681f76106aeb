"""A claimed pool VM's ports, published by the pool after its claim answer (``ports_later``),
are awaited by the first START once it is sent and before its reply (HyperVM.awaited,
executor.pool.adopt._adopt): the START's guest work overlaps the pool's monitor round trips,
the process is reported started only once its ports are published, and a port the pool lost
fails that START with the cold boot's NetworkError and ends the VM (no EXIT reported).
Against a scripted fake guest on a real unix socket; the pool faked."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import MsgType
from executor.pool import adopt
from executor.pool.protocol import Lease
from hypervm.errors import HyperVMError, NetworkError
from tests.unit.test_pipelined_requests import claimed_vm, held_until_start

LOST = NetworkError("cannot publish port 127.0.0.1:8080->80/tcp: in use", hint="taken")


def _seen(guest: Any, kind: MsgType, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f.type is kind for f in guest.received):
            return True
        time.sleep(0.005)
    return False


def test_the_ports_are_awaited_once_the_start_is_sent_and_before_it_returns(
        tmp_path: Path) -> None:
    vm, hv, guest = claimed_vm(tmp_path, held_until_start())
    calls: list[bool] = []
    try:
        vm.configure_network(pipelined=True)
        vm.awaited.append(lambda: calls.append(_seen(guest, MsgType.START)))
        handle = vm.start(vm.pod.containers[0])
        assert calls == [True]  # the START was on its way, and start() waited for them
        assert handle.pid == 7 and hv.destroyed == []
        vm.awaited.append(lambda: calls.append(False))
        vm.start(vm.pod.containers[0])  # once only: this START waits for it
        assert calls == [True, False] and vm.awaited == []
    finally:
        vm.destroy()


def test_a_port_the_pool_lost_fails_the_start_and_ends_the_vm(tmp_path: Path) -> None:
    vm, hv, guest = claimed_vm(tmp_path, held_until_start())
    exits: list[object] = []

    def lost() -> None:
        raise LOST

    try:
        vm.configure_network(pipelined=True)
        vm.awaited.append(lost)
        with pytest.raises(NetworkError) as raised:
            vm.start(vm.pod.containers[0], on_exit=exits.append)
        assert raised.value is LOST  # the cold boot's error, not the channel's
        assert hv.destroyed == [vm.name] and not vm.run_dir.exists()
        assert exits == []  # the process is never reported
    finally:
        vm.destroy()


class Ports:
    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.waited = error, 0

    def wait(self, timeout: float) -> None:
        self.waited += 1
        if self.error is not None:
            raise self.error


def _lease(vm: Any) -> Lease:
    return Lease(vm=vm.name, run_dir=vm.run_dir, ready={}, layers_attached=True)


def test_an_adopted_vm_leaves_its_ports_to_its_first_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm, _, _ = claimed_vm(tmp_path, held_until_start())
    monkeypatch.setattr(adopt, "_give_pod", lambda vm, lease, sock, timeout: {"v": 1})
    ports = Ports()
    try:
        assert adopt._adopt(vm, _lease(vm), None, 5, ports) == {"v": 1}  # type: ignore[arg-type]
        assert ports.waited == 0 and len(vm.awaited) == 1
        vm.awaited[0]()
        assert ports.waited == 1
        vm.destroy()  # a VM ended before any START drops them (their connection closes)
        assert vm.awaited == []
    finally:
        vm.destroy()


def test_a_failed_adoption_still_reads_the_ports_outcome_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's lost port (its NetworkError: a cold boot would fail alike) wins over the
    adoption's own failure; the ports' connection is read (closed) either way."""
    vm, _, _ = claimed_vm(tmp_path, held_until_start())

    def fails(*_: Any) -> Any:
        raise HyperVMError("the guest channel broke")

    monkeypatch.setattr(adopt, "_give_pod", fails)
    try:
        for ports, error in ((Ports(LOST), NetworkError), (Ports(), HyperVMError)):
            with pytest.raises(error):
                adopt._adopt(vm, _lease(vm), None, 5, ports)  # type: ignore[arg-type]
            assert ports.waited == 1 and vm.awaited == []
    finally:
        vm.destroy()
