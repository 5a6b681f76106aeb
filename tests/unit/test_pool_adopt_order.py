"""A claimed pool VM's NETWORK goes to the guest before the host gives the VM the pod's
devices (executor.pool.adopt._give_pod): the guest applies it while the host writes and
fsyncs the shares' grant records and binds the sandbox, instead of after; the grant and the
binds run beside each other (executor.pool.adopt.give_devices)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executor.guest import protocol as proto
from executor.guest.protocol import MsgType
from executor.libvirt.designer import POOL_SHARE_DIR
from executor.pool import adopt
from executor.pool.protocol import Lease
from hypervm.errors import HyperVMError
from hypervm.podspec import Resources
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

    def give_devices(vm: Any, hv: Any, binds: list[Any], *, attach_layers: bool = True) -> None:
        seen.append(_received(guest))

    def take_over(channel: Any) -> Any:
        vm._channel = channel
        return hv

    monkeypatch.setattr(adopt, "give_devices", give_devices)
    monkeypatch.setattr(vm, "take_over", take_over)
    lease = Lease(vm="hypervm-pool-x", run_dir=vm.run_dir,
                  ready={"version": proto.VERSION, "kernel": "6.1"}, layers_attached=True,
                  identity=None, identity_known=True)
    try:
        adopt._give_pod(vm, lease, sock, timeout=5)
        assert seen == [[MsgType.NETWORK]]
        assert hv.adopted == "hypervm-pool-x"
    finally:
        vm.destroy()
        guest.close()


class _SharesVM:
    """What give_devices reads of a HyperVM: one owned share to bind, no CPU bound."""

    def __init__(self, run_dir: Path, give: Any) -> None:
        self.name = "hypervm-pool-x"
        self.run_dir = run_dir
        self.share_tags = {run_dir / "sandbox": "s0"}
        self.pod = SimpleNamespace(resources=Resources(cpus=1, memory_mib=128))
        self.give_owned_shares = give

    def share_readonly(self, source: Path) -> bool:
        return False


class _QemuHypervisor:
    def qemu_pid(self, name: str) -> int:
        return 4242


def _vm_and_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  give: Any) -> tuple[_SharesVM, threading.Event]:
    (tmp_path / POOL_SHARE_DIR).mkdir()
    bound = threading.Event()

    def start_bind(pid: int, source: Path, target: Path, readonly: bool) -> str:
        bound.set()
        return "bind"

    monkeypatch.setattr(adopt.client, "start_bind", start_bind)
    return _SharesVM(tmp_path, give), bound


def test_the_binds_start_while_the_shares_are_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shares' grant (records fsynced, then the access entries) runs beside the binds:
    a grant that takes long (here: until a bind started) does not hold them back."""
    overlapped: list[bool] = []
    bound: threading.Event | None = None

    def give() -> None:
        assert bound is not None
        overlapped.append(bound.wait(2.0))

    vm, bound = _vm_and_binds(tmp_path, monkeypatch, give)
    binds: list[Any] = []
    adopt.give_devices(vm, _QemuHypervisor(), binds, attach_layers=False)  # type: ignore[arg-type]
    assert overlapped == [True]
    assert binds == ["bind"]
    assert (tmp_path / POOL_SHARE_DIR / "s0").is_dir()


def test_give_devices_returns_only_once_the_shares_are_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may start in the guest before its shares are given: give_devices waits for the
    helper, and its failure is give_devices' (the binds started are left for wait_binds)."""
    given = threading.Event()

    def slow_give() -> None:
        time.sleep(0.2)
        given.set()

    vm, _ = _vm_and_binds(tmp_path, monkeypatch, slow_give)
    adopt.give_devices(vm, _QemuHypervisor(), [], attach_layers=False)  # type: ignore[arg-type]
    assert given.is_set()

    def failing_give() -> None:
        time.sleep(0.1)
        raise HyperVMError("cannot write the grant record")

    (tmp_path / POOL_SHARE_DIR / "s0").rmdir()
    vm.give_owned_shares = failing_give
    binds: list[Any] = []
    with pytest.raises(HyperVMError, match="grant record"):
        adopt.give_devices(vm, _QemuHypervisor(), binds, attach_layers=False)  # type: ignore[arg-type]
    assert binds == ["bind"]


def test_a_failing_bind_start_still_waits_for_the_shares(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When starting the binds fails, give_devices raises only after the helper's grant ended
    (the VM is destroyed next: no grant may still be under way then)."""
    given = threading.Event()

    def slow_give() -> None:
        time.sleep(0.2)
        given.set()

    vm, _ = _vm_and_binds(tmp_path, monkeypatch, slow_give)

    class NoQemu(_QemuHypervisor):
        def qemu_pid(self, name: str) -> None:  # type: ignore[override]
            return None

    with pytest.raises(HyperVMError, match="no QEMU process"):
        adopt.give_devices(vm, NoQemu(), [], attach_layers=False)  # type: ignore[arg-type]
    assert given.is_set()
