"""A claim answered before its VM's metadata is written (WarmPool.claim(record_later=True),
then record_claim): what the pool daemon does for a claimer on its socket, off the launch's
clock. libvirt faked; the idle VMs' guest channels are socketpairs."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.guest.channel import peer_closed
from executor.libvirt.owners import META_OWNER_PID
from executor.pool import claim as client
from executor.pool.daemon import WarmPool
from executor.pool.deferred import Deferred
from executor.pool.idle import IdleVM as _Idle
from executor.pool.protocol import PoolConfig
from hypervm.config import config_from_env
from hypervm.errors import HypervisorError
from tests.unit.test_pool_ports import MonitorHypervisor


class RecordingHypervisor(MonitorHypervisor):
    def __init__(self, refuse_metadata: bool = False) -> None:
        super().__init__()
        self.refuse_metadata = refuse_metadata

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        if self.refuse_metadata:
            raise HypervisorError(f"cannot set the metadata of VM {name}: gone")
        super().set_metadata(name, entries)


def recorded(pool: tuple[WarmPool, list]) -> dict[str, dict[str, str]]:
    return pool[0]._fake_hv.metadata  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[WarmPool, list[socket.socket]]]:
    """Three idle VMs whose guest ends are open (the second one's QEMU died: closed)."""
    cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
    pool = WarmPool(cfg, PoolConfig(size=3))
    pool._hv = pool._fake_hv = RecordingHypervisor()  # type: ignore[attr-defined]
    pool._stopping.set()
    guests = []
    for i in range(3):
        a, b = socket.socketpair()
        guests.append(b)
        run_dir = tmp_path / f"vm{i}"
        run_dir.mkdir()
        pool._idle.append(_Idle(f"vm{i}", run_dir, a, {"version": 1}))
    guests[1].close()
    yield pool, guests
    for vm in pool._idle:
        vm.sock.close()
    for guest in guests:
        guest.close()


def test_the_metadata_is_written_after_the_answer(pool: tuple[WarmPool, list]) -> None:
    warm, _ = pool
    lease, sock = warm.claim(1, 128, os.getpid(), {"pod": "web"}, record_later=True)
    sock.close()
    assert lease.vm == "vm0" and warm._hv.metadata == {}
    warm.record_claim("vm0", {"pod": "web"}, os.getpid())
    entries = warm._hv.metadata["vm0"]
    assert entries["pod"] == "web" and entries["pool-state"] == "claimed"
    assert entries[META_OWNER_PID] == str(os.getpid())


def test_a_vm_whose_guest_channel_closed_is_discarded_not_handed_out(
        pool: tuple[WarmPool, list]) -> None:
    """With no libvirt call before the answer, a dead VM shows by its closed channel."""
    warm, _ = pool
    first, sock = warm.claim(1, 128, os.getpid(), record_later=True)
    sock.close()
    second, sock = warm.claim(1, 128, os.getpid(), record_later=True)
    sock.close()
    assert (first.vm, second.vm) == ("vm0", "vm2")
    assert warm._hv.destroyed == ["vm1"] and not (warm.cfg.vms_dir / "vm1").exists()


def test_a_claim_whose_owner_cannot_be_recorded_destroys_the_vm(
        pool: tuple[WarmPool, list]) -> None:
    warm, _ = pool
    lease, sock = warm.claim(1, 128, os.getpid(), record_later=True)
    sock.close()
    warm._hv.refuse_metadata = True
    warm.record_claim(lease.vm, {}, os.getpid())
    assert warm._hv.destroyed == ["vm0"] and "vm0" not in warm._claimers


def test_a_vm_released_before_its_record_is_left_alone(pool: tuple[WarmPool, list]) -> None:
    warm, _ = pool
    lease, sock = warm.claim(1, 128, os.getpid(), record_later=True)
    sock.close()
    warm._claimers.pop(lease.vm)  # what a release does
    warm.record_claim(lease.vm, {}, os.getpid())
    assert warm._hv.metadata == {} and warm._hv.destroyed == []


def test_a_claim_over_the_socket_records_the_owner(tmp_path: Path,
                                                   pool: tuple[WarmPool, list]) -> None:
    """The daemon's serving path: the claimer gets its lease, then the owner is recorded,
    later (executor.pool.deferred: not during the claimer's first START); stopping the pool
    writes a pending record at once."""
    warm, _ = pool
    warm._records = Deferred(30.0)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(warm.cfg.pool_socket))
    server.listen(1)
    try:
        def serve() -> None:
            conn, _ = server.accept()
            warm._handle(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        lease, sock = client.claim(warm.cfg, 1, 128, {"pod": "web"})
        sock.close()
        thread.join(5)
    finally:
        server.close()
    assert lease.vm == "vm0"
    assert "vm0" not in warm._hv.metadata and warm._records.pending() == 1
    warm._hv.close = lambda: None
    warm.stop()
    assert warm._hv is None and warm._records.pending() == 0
    assert recorded(pool)["vm0"]["pool-state"] == "claimed"


def test_peer_closed_sees_a_closed_end_and_keeps_pending_input() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert not peer_closed(a)
        b.sendall(b"x")
        assert not peer_closed(a) and a.recv(1) == b"x"
        b.close()
        assert peer_closed(a)


def test_deferred_calls_run_later_in_order_or_at_once_when_flushed() -> None:
    calls: list[str] = []
    soon = Deferred(0.05)
    soon.call_later(calls.append, "a")
    assert calls == [] and soon.pending() == 1
    for _ in range(200):
        if calls:
            break
        threading.Event().wait(0.01)
    assert calls == ["a"] and soon.pending() == 0
    later = Deferred(30.0)
    later.call_later(calls.append, "b")
    later.call_later(calls.append, "c")
    later.flush()
    assert calls == ["a", "b", "c"] and later.pending() == 0
    Deferred(0).call_later(calls.append, "now")  # no delay: in the caller
    assert calls[-1] == "now"


def test_a_vm_its_claimer_ended_before_the_record_is_left_alone(
        pool: tuple[WarmPool, list]) -> None:
    """The owner record comes RECORD_DELAY_S after the answer: a pod over by then (its VM
    destroyed by the claimer) is no error, and nothing is destroyed twice."""
    warm, _ = pool
    lease, sock = warm.claim(1, 128, os.getpid(), {"pod": "web"}, record_later=True)
    sock.close()
    warm._hv.refuse_metadata = True  # as libvirt answers for a domain that is gone
    warm._hv.destroyed.append(lease.vm)  # the claimer destroyed it
    warm.record_claim(lease.vm, {"pod": "web"}, os.getpid())
    assert warm._hv.destroyed == [lease.vm] and lease.vm not in warm._claimers
