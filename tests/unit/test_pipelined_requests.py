"""Requests sent ahead of their replies (GuestChannel.send_request/wait_reply), and a claimed
VM's NETWORK pipelined with its first START (executor.pool.adopt): against a scripted fake
guest on a real unix socket."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from executor import netpolicy
from executor import vm as vm_module
from executor.guest import protocol as proto
from executor.guest.channel import GuestChannel
from executor.guest.protocol import MsgType
from executor.vm import HyperVM
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, NetworkError
from hypervm.podspec import Container, PodSpec, Process, Rootfs
from tests.unit.test_guest_channel import FakeGuest


class Hypervisor:
    def __init__(self) -> None:
        self.destroyed: list[str] = []

    def destroy(self, name: str) -> bool:
        self.destroyed.append(name)
        return True


def held_until_start(network_reply: MsgType = MsgType.OK):
    """A guest that answers nothing before it has the START: a host waiting for the NETWORK
    reply before sending the START would wait forever. Then NETWORK's reply (OK, or ERROR
    ENET), then START's OK with a pid."""
    held: list[proto.Frame] = []

    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        if frame.type is not MsgType.START:
            held.append(frame)
            return
        for earlier in held:
            if network_reply is MsgType.OK:
                conn.sendall(proto.encode_json(MsgType.OK, earlier.id, {}))
            else:
                conn.sendall(proto.encode_json(MsgType.ERROR, earlier.id, {
                    "code": "ENET", "message": "no interface", "errno": 19}))
        conn.sendall(proto.encode_json(MsgType.OK, frame.id, {"pid": 7}))

    return handler


def claimed_vm(tmp_path: Path, handler) -> tuple[HyperVM, Hypervisor, FakeGuest]:
    cfg = HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                     libvirt_uri="test:///default", accel="tcg")
    pod = PodSpec(name="p", containers=(Container("c", Rootfs(layers=(tmp_path / "l",)),
                                                  Process(args=("true",))),))
    hv = Hypervisor()
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    vm = HyperVM(cfg, pod, hypervisor=hv, claimed="hypervm-pool-x", run_dir=run_dir)
    vm.assign_devices()
    guest = FakeGuest(vm.channel_socket, handler=handler)
    vm._channel = GuestChannel(vm.channel_socket)
    vm._channel.connect(timeout=5)
    return vm, hv, guest


def test_requests_sent_ahead_get_their_own_replies(tmp_path: Path) -> None:
    """Two requests in flight at once; the guest answers the second first: each wait gets
    the reply with its own id."""
    got: list[proto.Frame] = []

    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        got.append(frame)
        if len(got) == 2:
            for f in reversed(got):
                conn.sendall(proto.encode_json(MsgType.OK, f.id, {"pid": f.id + 100}))

    FakeGuest(tmp_path / "ch.sock", handler=handler)
    channel = GuestChannel(tmp_path / "ch.sock")
    try:
        channel.connect(timeout=5)
        first = channel.send_request(MsgType.PING, {})
        second = channel.send_request(MsgType.PING, {})
        assert channel.wait_reply(second, timeout=5) == {"pid": second.request_id + 100}
        assert channel.wait_reply(first, timeout=5) == {"pid": first.request_id + 100}
    finally:
        channel.close()


def test_a_claimed_vm_sends_its_start_behind_its_network(tmp_path: Path) -> None:
    vm, hv, guest = claimed_vm(tmp_path, held_until_start())
    try:
        vm.configure_network(pipelined=True)
        handle = vm.start(vm.pod.containers[0])
        assert handle.pid == 7
        assert [f.type for f in guest.received] == [MsgType.NETWORK, MsgType.START]
        assert hv.destroyed == []
    finally:
        vm.destroy()


def test_a_refused_pipelined_network_fails_the_start_and_destroys_the_vm(tmp_path: Path) -> None:
    """The START got OK, but behind a NETWORK the guest refused: the start fails naming the
    NETWORK request, the process is never reported (no EXIT callback) and the VM is gone."""
    vm, hv, guest = claimed_vm(tmp_path, held_until_start(MsgType.ERROR))
    exits: list[object] = []
    try:
        vm.configure_network(pipelined=True)
        with pytest.raises(HyperVMError, match="NETWORK request.*ENET|NETWORK request.*no "
                                               "interface"):
            vm.start(vm.pod.containers[0], on_exit=exits.append)
        assert hv.destroyed == [vm.name]
        assert not vm.run_dir.exists()
        with pytest.raises(HyperVMError):
            vm.ping(timeout=1)
        assert exits == []
    finally:
        vm.destroy()


def test_a_pipelined_network_never_answered_fails_the_start(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A guest that answers the START but never the NETWORK: bounded by the request timeout,
    then the start fails and the VM is destroyed."""
    from executor.guest import channel as channel_module

    monkeypatch.setattr(channel_module, "DEFAULT_REQUEST_TIMEOUT", 0.3)
    answered = threading.Event()

    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        if frame.type is MsgType.START:
            conn.sendall(proto.encode_json(MsgType.OK, frame.id, {"pid": 7}))
            answered.set()

    vm, hv, _ = claimed_vm(tmp_path, handler)
    try:
        vm.configure_network(pipelined=True)
        with pytest.raises(HyperVMError, match="no reply to NETWORK"):
            vm.start(vm.pod.containers[0])
        assert answered.is_set()
        assert hv.destroyed == [vm.name]
    finally:
        vm.destroy()


class ColdHypervisor(Hypervisor):
    """Creating a domain starts the scripted guest on its channel socket."""

    def __init__(self, handler) -> None:  # noqa: ANN001
        super().__init__()
        self.handler = handler
        self.vm: HyperVM | None = None
        self.guest: FakeGuest | None = None

    def create(self, spec: object) -> None:
        assert self.vm is not None
        self.vm.run_dir.mkdir(parents=True, exist_ok=True)
        self.guest = FakeGuest(self.vm.channel_socket, handler=self.handler)


class NoFlush:
    accel = "tcg"

    def flushes_after_boot(self, cfg: HostConfig) -> bool:
        return False


def test_a_cold_boot_returns_before_its_network_reply_and_its_start_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest answers nothing before it has the START: a cold boot that waited for the
    NETWORK reply would never return. It returns at READY; the START goes behind the
    NETWORK and gets both replies."""
    cfg = HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                     libvirt_uri="test:///default", accel="tcg")
    pod = PodSpec(name="p", containers=(Container("c", Rootfs(layers=(tmp_path / "l",)),
                                                  Process(args=("true",))),))
    monkeypatch.setattr(netpolicy, "enforce", lambda *a: None)
    monkeypatch.setattr(vm_module.identity, "for_vm", lambda *a: None)
    monkeypatch.setattr(HyperVM, "domain_spec", lambda self, boot: self.assign_devices())
    hv = ColdHypervisor(held_until_start())
    vm = hv.vm = HyperVM(cfg, pod, hypervisor=hv, boot_files=NoFlush())  # type: ignore[arg-type]
    try:
        vm.boot(timeout=5)  # returns although the guest has answered nothing after READY
        assert hv.guest is not None
        assert vm.start(vm.pod.containers[0]).pid == 7
        assert [f.type for f in hv.guest.received] == [MsgType.NETWORK, MsgType.START]
        assert hv.destroyed == []
    finally:
        vm.destroy()


def test_a_cold_boot_installs_the_network_policy_after_createxml_and_before_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's nft run is off the path before createXML (issue 17: it took the CPU from
    the domain's preparation and libvirtd's createXML) and still in force before the guest's
    READY is awaited; a policy that cannot be installed destroys the created VM."""
    cfg = HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                     libvirt_uri="test:///default", accel="tcg")
    pod = PodSpec(name="p", containers=(Container("c", Rootfs(layers=(tmp_path / "l",)),
                                                  Process(args=("true",))),))
    steps: list[str] = []
    hv = ColdHypervisor(held_until_start())

    def enforce(*_: object) -> None:
        steps.append("policy began")
        time.sleep(0.2)  # a slow nft: READY must still wait for it
        steps.append("policy in force")

    def create(spec: object) -> None:
        time.sleep(0.1)  # a policy thread started before createXML has begun by now
        steps.append("createXML")
        ColdHypervisor.create(hv, spec)

    connect = GuestChannel.connect

    def connect_after_policy(channel: GuestChannel, timeout: float) -> dict[str, object]:
        steps.append("READY awaited")
        return connect(channel, timeout)

    monkeypatch.setattr(netpolicy, "enforce", enforce)
    monkeypatch.setattr(hv, "create", create)
    monkeypatch.setattr(GuestChannel, "connect", connect_after_policy)
    monkeypatch.setattr(vm_module.identity, "for_vm", lambda *a: None)
    monkeypatch.setattr(HyperVM, "domain_spec", lambda self, boot: self.assign_devices())
    vm = hv.vm = HyperVM(cfg, pod, hypervisor=hv, boot_files=NoFlush())  # type: ignore[arg-type]
    try:
        vm.boot(timeout=5)
    finally:
        vm.destroy()
    assert steps == ["createXML", "policy began", "policy in force", "READY awaited"]

    def refused(*_: object) -> None:
        raise NetworkError("cannot install the guests' network policy: no nf_tables")

    monkeypatch.setattr(netpolicy, "enforce", refused)
    hv.destroyed.clear()
    vm = hv.vm = HyperVM(cfg, pod, hypervisor=hv, boot_files=NoFlush())  # type: ignore[arg-type]
    with pytest.raises(NetworkError):
        vm.boot(timeout=5)
    assert hv.destroyed == [vm.name]
