"""The pool daemon heals a lost libvirt connection (executor.pool.reconnect): it notices the
loss at a failed call, refuses claims at once meanwhile, reconnects with a capped backoff
(logged once per outage), takes back the idle VMs that survived and destroys the rest, does
what the outage kept from being done, and on stop tries to reconnect for a bounded time.
libvirt faked (the connection's state is the fake's ``up``); guest channels are socketpairs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.cli import pool as pool_cli
from executor.libvirt.domain import META_OWNER_PID, CpuTune
from executor.libvirt.events import DomainInfo
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata
from executor.pool import reconnect
from executor.pool.daemon import META_POOL, META_POOL_STATE, WarmPool
from executor.pool.idle import IdleVM
from executor.pool.protocol import PoolConfig
from executor.pool.reconnect import Link
from executor.snapshot import keeper as keeper_mod
from executor.snapshot.store import Shape
from hypervm.config import config_from_env
from hypervm.errors import HostError, HypervisorError, PoolError
from tests.unit.test_pool_ports import MonitorHypervisor

CLOSED = "internal error: client socket is closed"


class FlakyHypervisor(MonitorHypervisor):
    """A connection libvirtd can drop (``up``): every call fails then, as libvirt's do, until
    :meth:`reopen` (which refuses ``refusals`` times first, libvirtd still down)."""

    uri = "qemu:///system"

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.refusals = 0
        self.reopens = 0
        self.running: dict[str, dict[str, str]] = {}  # name -> metadata

    def _call(self, what: str) -> None:
        if not self.up:
            raise HypervisorError(f"cannot {what}: {CLOSED}")

    def alive(self) -> bool:
        return self.up

    def reopen(self) -> None:
        self.reopens += 1
        if self.refusals > 0:
            self.refusals -= 1
            raise HostError("cannot connect to libvirt at qemu:///system: Failed to connect "
                            "socket to '/var/run/libvirt/libvirt-sock': Connection refused")
        self.up = True

    def list_ours(self) -> list[DomainInfo]:
        self._call("list VMs")
        return [DomainInfo(name, "uuid", True, metadata, (), ())
                for name, metadata in self.running.items()]

    def destroy(self, name: str) -> None:
        self._call(f"look up VM {name}")
        super().destroy(name)
        self.running.pop(name, None)

    def is_running(self, name: str) -> bool:
        self._call(f"look up VM {name}")
        return name in self.running

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        self._call(f"set the metadata of VM {name}")
        super().set_metadata(name, entries)
        self.running[name] = dict(entries)

    def close(self) -> None:
        self.up = False


class Pool:
    """A WarmPool (not started) on a FlakyHypervisor, its idle VMs' guest ends."""

    def __init__(self, tmp_path: Path) -> None:
        cfg = config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)})
        self.warm = WarmPool(cfg, PoolConfig(size=3, name="rc"), reap_interval=0.01,
                             record_delay=0)
        self.hv = FlakyHypervisor()
        self.warm._hv = self.hv
        self.guests: list[socket.socket] = []
        self.idle_meta = {META_POOL: "rc", META_POOL_STATE: "idle", **owner_metadata()}

    def idle(self, name: str, *, running: bool = True, channel: bool = True) -> IdleVM:
        a, b = socket.socketpair()
        self.guests.append(b)
        if not channel:
            b.close()
        run_dir = self.warm.cfg.vms_dir / name
        run_dir.mkdir(parents=True)
        vm = IdleVM(name, run_dir, a, {"version": 1})
        self.warm._idle.append(vm)
        if running:
            self.hv.running[name] = dict(self.idle_meta)
        return vm

    def lose(self) -> None:
        """libvirtd drops the connection; a call notices."""
        self.hv.up = False
        with pytest.raises(HypervisorError):
            self.hv.list_ours()
        assert self.warm._link.lost()

    def close(self) -> None:
        for vm in self.warm._idle:
            vm.sock.close()
        for guest in self.guests:
            guest.close()


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    monkeypatch.setattr(reconnect, "RECONNECT_WAIT_S", (0.001, 0.004))
    made = Pool(tmp_path)
    yield made
    made.warm._stopping.set()
    made.close()


class Stopping:
    """threading.Event as the Link waits on it: never set, each wait recorded."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False


def test_the_reconnect_backs_off_exponentially_up_to_its_cap() -> None:
    hv = FlakyHypervisor()
    hv.up, hv.refusals = False, 8
    stopping = Stopping()
    link = Link(lambda: hv, stopping)  # type: ignore[arg-type]
    assert link.lost() and not link.up
    assert link.reconnect() is True
    assert hv.reopens == 9 and hv.up
    first, cap = reconnect.RECONNECT_WAIT_S
    assert stopping.waits == [min(first * 2 ** n, cap) for n in range(8)]
    assert stopping.waits[-1] == cap and stopping.waits[:2] == [first, 2 * first]
    assert not link.up  # claims wait for the daemon to take its VMs back
    link.restored()
    assert link.up


def test_an_outage_is_logged_once_not_at_every_failed_call(
        caplog: pytest.LogCaptureFixture) -> None:
    hv = FlakyHypervisor()
    link = Link(lambda: hv, threading.Event())
    assert not link.lost()  # a call failing on a live connection: not an outage
    hv.up = False
    with caplog.at_level(logging.WARNING, logger=reconnect.__name__):
        assert all(link.lost() for _ in range(50))
        assert link.reconnect()
        link.restored()
        hv.up = False
        assert link.lost()
    lost = [r for r in caplog.records if "lost the libvirt connection" in r.getMessage()]
    back = [r for r in caplog.records if "back after" in r.getMessage()]
    assert len(lost) == 2 and len(back) == 1 and link.outages == 2


def test_a_stopping_daemon_gives_up_reconnecting_within_its_bound() -> None:
    hv = FlakyHypervisor()
    hv.up, hv.refusals = False, 10**6
    link = Link(lambda: hv, threading.Event())
    started = time.monotonic()
    assert link.reconnect(0.2) is False
    assert time.monotonic() - started < 0.2 + reconnect.RECONNECT_WAIT_S[1] + 1
    stopping = threading.Event()
    stopping.set()  # the daemon stops: the endless reconnect ends after its attempt
    assert Link(lambda: hv, stopping).reconnect() is False


def test_claims_during_an_outage_are_refused_at_once(pool: Pool) -> None:
    pool.idle("hypervm-rc-a")
    pool.lose()
    started = time.monotonic()
    with pytest.raises(PoolError, match="lost its libvirt connection and is reconnecting"):
        pool.warm.claim(1, 128, os.getpid(), record_later=True)
    assert time.monotonic() - started < 0.5
    assert pool.warm.idle_vms() == ["hypervm-rc-a"]  # not taken, not discarded
    assert pool.warm.status()["connected"] is False
    assert "libvirt connection lost: reconnecting, claims refused meanwhile" in (
        pool_cli.status_lines(pool.warm.status()))


def test_after_the_reconnect_the_survivors_are_kept_and_the_rest_destroyed(
        pool: Pool) -> None:
    warm, hv = pool.warm, pool.hv
    pool.idle("hypervm-rc-kept")
    pool.idle("hypervm-rc-closed", channel=False)  # its QEMU died: channel closed
    pool.idle("hypervm-rc-gone", running=False)  # libvirtd lost it
    pool.idle("hypervm-rc-kept2")
    claimed = {**pool.idle_meta, META_POOL_STATE: "claimed"}
    hv.running["hypervm-rc-unknown"] = dict(pool.idle_meta)  # a boot whose answer was lost
    hv.running["hypervm-rc-released"] = dict(claimed)  # its release's destroy: lost
    hv.running["hypervm-rc-theirs"] = dict(claimed)  # a client's
    hv.running["hypervm-rc-other"] = {**pool.idle_meta, META_OWNER_PID: "1"}  # not ours
    lease, sock = warm.claim(1, 128, os.getpid(), {"pod": "web"}, record_later=True)
    sock.close()
    assert lease.vm == "hypervm-rc-kept"
    pool.lose()
    warm.record_claim(lease.vm, {"pod": "web"}, os.getpid())  # fails: written later
    released_dir = warm.cfg.vms_dir / "hypervm-rc-released"
    released_dir.mkdir()
    warm._discard("hypervm-rc-released", released_dir, None)  # fails: destroyed later
    assert released_dir.is_dir() and hv.destroyed == []  # its run dir (and uid) kept till then
    assert hv.metadata == {}
    hv.refusals = 2
    warm._heal()
    assert warm.connected and hv.reopens == 3
    assert warm.idle_vms() == ["hypervm-rc-kept2"]
    assert sorted(hv.destroyed) == ["hypervm-rc-closed", "hypervm-rc-gone",
                                    "hypervm-rc-released", "hypervm-rc-unknown"]
    assert not released_dir.exists()
    assert sorted(hv.running) == ["hypervm-rc-kept", "hypervm-rc-kept2", "hypervm-rc-other",
                                  "hypervm-rc-theirs"]
    entries = hv.metadata[lease.vm]  # recorded as its claimer's now
    assert entries["pod"] == "web" and entries[META_POOL_STATE] == "claimed"
    assert entries[META_OWNER_PID] == str(os.getpid())
    again, sock = warm.claim(1, 128, os.getpid(), record_later=True)  # served again
    sock.close()
    assert again.vm == "hypervm-rc-kept2"


def test_the_reaper_notices_the_loss_and_heals_it(pool: Pool) -> None:
    warm, hv = pool.warm, pool.hv
    pool.idle("hypervm-rc-a")
    pool.idle("hypervm-rc-b")
    thread = threading.Thread(target=warm._reap_loop, daemon=True)
    thread.start()
    hv.up, hv.refusals = False, 3  # libvirtd drops us; comes back at the 4th attempt
    deadline = time.monotonic() + 10
    while hv.reopens < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    while not warm.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert warm.connected and hv.reopens == 4 and warm._link.outages == 1
    lease, sock = warm.claim(1, 128, os.getpid(), record_later=True)
    sock.close()
    assert lease.vm == "hypervm-rc-a" and hv.destroyed == []
    warm._stopping.set()
    thread.join(5)
    assert not thread.is_alive()


def test_stop_during_an_outage_reconnects_to_destroy_its_vms(pool: Pool) -> None:
    warm, hv = pool.warm, pool.hv
    pool.idle("hypervm-rc-a")
    pool.idle("hypervm-rc-b")
    pool.lose()
    hv.refusals = 2
    warm.stop()
    assert sorted(hv.destroyed) == ["hypervm-rc-a", "hypervm-rc-b"] and hv.running == {}


def test_stop_without_libvirt_leaves_its_vms_for_gc_and_says_so(
        pool: Pool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(reconnect, "STOP_RECONNECT_S", 0.2)
    warm, hv = pool.warm, pool.hv
    pool.idle("hypervm-rc-a")
    pool.lose()
    hv.refusals = 10**6
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        warm.stop()
    assert time.monotonic() - started < 3
    assert hv.destroyed == [] and "hypervm-rc-a" in hv.running
    assert (warm.cfg.vms_dir / "hypervm-rc-a").is_dir()  # its uid and run dir too: gc's
    assert any("hypervm-rc-a left running for `hypervm gc`" in r.getMessage()
               for r in caplog.records)


def test_a_standby_is_taken_back_with_its_spare_vcpus_capped_again(
        pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: list[tuple[Any, ...]] = []
    monkeypatch.setattr(keeper_mod.vcpucap, "bound", lambda *a: bounds.append(a))
    pool.hv.qemu_pid = lambda name: 4242  # type: ignore[attr-defined]
    keeper = keeper_mod.StandbyKeeper(pool.warm)
    made: list[keeper_mod._Standby] = []
    # the third: of a template above the shared capacity, its spares online, never capped
    for name, closed, vcpus, online in (("hypervm-rc-sb-1", False, 2, 1),
                                        ("hypervm-rc-sb-2", True, 2, 1),
                                        ("hypervm-rc-sb-3", False, 3, 3)):
        a, b = socket.socketpair()
        pool.guests.append(b)
        if closed:
            b.close()
        shape = Shape(vcpus=2 + len(made), memory_mib=256)
        standby = keeper_mod._Standby(name, pool.warm.cfg.vms_dir / name, shape, "k", "t",
                                      None, time.monotonic(), a, {}, vcpus=vcpus, online=online)
        keeper._ready[shape] = standby
        pool.hv.running[name] = {**pool.idle_meta, META_POOL_STATE: "standby"}
        made.append(standby)
    pool.warm.on_reconnect(keeper._readopt)
    pool.lose()
    with pytest.raises(PoolError, match="reconnecting: no standby"):
        pool.warm.require_connected("no standby")
    pool.warm._heal()
    assert keeper.ready_names() == ["hypervm-rc-sb-1", "hypervm-rc-sb-3"]
    assert bounds == [(4242, 2, 1, CpuTune()), (4242, 3, 3, CpuTune())]
    assert pool.hv.destroyed == ["hypervm-rc-sb-2"]  # dropped; sb-1 kept, not swept
    made[0].close()
    made[2].close()


def test_a_hypervisor_without_events_reopens_in_place() -> None:
    hv = Hypervisor("test:///default", events=False, autodestroy=False)
    try:
        before = hv.conn
        assert hv.alive()
        hv.reopen()
        assert hv.alive() and hv.conn is not before
        assert hv.list_ours() == []
    finally:
        hv.close()
    assert not hv.alive()
