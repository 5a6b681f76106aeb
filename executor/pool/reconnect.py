"""The pool daemon's libvirt connection, healed when libvirtd drops it (a restart for an
upgrade, or ``virt-admin client-disconnect``).

Noticing: the daemon's connection has no event loop, so nothing tells it of a closed socket
until a call fails on it ("Cannot write data: Broken pipe", then "internal error: client
socket is closed" for every call; libvirt's close callback fires at that same call, no
sooner); ``Hypervisor.alive()`` (``virConnectIsAlive``, no round trip) then says False. The
reaper's listing every ``reap_interval`` s is such a call, so an outage is seen within it.

Healing: :meth:`Link.reconnect` reopens the connection in place (every holder of the
``Hypervisor`` keeps it) with a capped exponential backoff (tenacity), logged once when lost
and once when back. Meanwhile claims and standby takes are refused at once with a
:class:`PoolError` (the claimer boots cold, as when no pool runs) and nothing is booted.

What the daemon had is taken back, not destroyed: nothing of a pool VM lives in the libvirt
connection. Its domains are transient but not auto-destroyed (libvirtd keeps them when a
client goes, and reconnects to their QEMUs when it restarts), and its guest channel is a
socket to QEMU itself. So each idle VM (and standby) is kept when its domain still runs and
its channel is not closed, else destroyed and refilled; what could not be destroyed during
the outage is destroyed then, a claim's owner record the outage kept from being written is
written then (the claimed VM is its claimer's: only that record, the reaper's watch and a
release are the daemon's part, and all three work again), and any other VM of this daemon's
not claimed, nor kept, nor in the making is destroyed (e.g. a boot whose create answer was
lost). A standby is taken back with its spare vCPUs capped again (executor.libvirt.vcpucap:
libvirt does not rewrite the cgroups on a reconnect; a restarted libvirtd might).

On SIGTERM during an outage, the daemon tries to reconnect for :data:`STOP_RECONNECT_S` to
destroy its VMs; what it cannot destroy stays for ``hypervm gc`` (logged, with the names).
:class:`Healing` is the daemon's part of all this, its reaper thread included (where an outage
is noticed and healed).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from executor.guest.channel import peer_closed
from executor.libvirt.owners import owner_metadata, process_start_time, select_leftovers
from executor.pool.idle import META_POOL, META_POOL_STATE, IdleVM
from executor.pool.protocol import PoolConfig
from executor.pool.release import Claimer
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, PoolError

log = logging.getLogger(__name__)

#: the first wait between reconnect attempts, and the most (the wait doubles up to it)
RECONNECT_WAIT_S = (0.25, 5.0)
#: how long a stopping daemon tries to reconnect to destroy its VMs
STOP_RECONNECT_S = 5.0


class Link:
    """Whether the ``Hypervisor`` (without events) ``hv_of()`` returns is connected, and its
    reconnects."""

    def __init__(self, hv_of: Callable[[], Any], stopping: threading.Event) -> None:
        self._hv_of = hv_of
        self._stopping = stopping
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._lost_at = 0.0
        self.outages = 0

    @property
    def hv(self) -> Any:
        return self._hv_of()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def require(self, what: str = "no warm VM") -> None:
        """PoolError while the connection is lost (a claim must not wait for it)."""
        if not self._up.is_set():
            raise PoolError(f"the pool lost its libvirt connection and is reconnecting: {what}")

    def lost(self) -> bool:
        """After a failed call: True when it failed because the connection is lost (then
        marked down, and logged once per outage)."""
        if self.hv is None or self.hv.alive():
            return False
        with self._lock:
            if self._up.is_set():
                self._up.clear()
                self._lost_at = time.monotonic()
                self.outages += 1
                log.warning("lost the libvirt connection to %s: claims refused, reconnecting",
                            self.hv.uri)
        return True

    def reconnect(self, timeout: float | None = None) -> bool:
        """Reopen the connection, waiting longer between attempts, until it works; until the
        daemon stops (``timeout`` None) or for ``timeout`` s. True once connected (the caller
        takes its VMs back, then calls :meth:`restored`)."""
        if self.hv.alive():
            return True
        if timeout is None:
            stop: Any = _stop_when(self._stopping)
            sleep: Callable[[float], Any] = self._stopping.wait
        else:
            stop, sleep = stop_after_delay(timeout), time.sleep
        retrying = Retrying(wait=wait_exponential(multiplier=RECONNECT_WAIT_S[0],
                                                  max=RECONNECT_WAIT_S[1]),
                            stop=stop, sleep=sleep, retry=retry_if_exception_type(HyperVMError),
                            retry_error_callback=self._gave_up)
        return bool(retrying(self._attempt))

    def _attempt(self) -> bool:
        self.hv.reopen()
        with self._lock:
            lost_at = self._lost_at
        log.warning("libvirt connection to %s back after %.1f s", self.hv.uri,
                    time.monotonic() - lost_at if lost_at else 0.0)
        return True

    def _gave_up(self, state: RetryCallState) -> bool:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning("libvirt at %s still unreachable after %d attempts: %s", self.hv.uri,
                    state.attempt_number, error)
        return False

    def restored(self) -> None:
        """The daemon has taken its VMs back: claims are served again."""
        self._up.set()


def _stop_when(event: threading.Event) -> Callable[[RetryCallState], bool]:
    return lambda _state: event.is_set()


#: a claim's owner record to write: (VM, the pod's metadata, the claimer's pid)
Record = tuple[str, "Mapping[str, str] | None", int]


class Healing:
    """The warm pool daemon's (executor.pool.daemon.WarmPool's) reaper and what it does when
    libvirt drops the connection: a mixin over the daemon's state, declared here."""

    cfg: HostConfig
    config: PoolConfig
    reap_interval: float
    _hv: Any
    _cond: threading.Condition
    _stopping: threading.Event
    _idle: collections.deque[IdleVM]
    _booting: dict[str, str]
    _claimers: dict[str, Claimer]

    def _discard(self, name: str, run_dir: Path, sock: socket.socket | None) -> None:
        raise NotImplementedError

    def record_claim(self, name: str, metadata: Mapping[str, str] | None,
                     owner_pid: int) -> None:
        raise NotImplementedError

    def _init_healing(self) -> None:
        self._link = Link(lambda: self._hv, self._stopping)
        #: what an outage kept from being done: destroys (name -> run dir), owner records
        self._orphans: dict[str, Path] = {}
        self._unrecorded: list[Record] = []
        self._readopters: list[Callable[[], set[str]]] = []

    @property
    def connected(self) -> bool:  # False while its libvirt connection is lost
        return self._link.up

    def require_connected(self, what: str) -> None:
        """PoolError (at once) while the libvirt connection is lost."""
        self._link.require(what)

    def on_reconnect(self, readopt: Callable[[], set[str]]) -> None:
        """Call ``readopt()`` after a reconnect, before claims are served again: it keeps (or
        discards) the VMs of this daemon's the pool does not know (standbys) and names those
        kept or in the making (any other VM of this daemon's not claimed is destroyed)."""
        self._readopters.append(readopt)

    def intact(self, name: str, sock: socket.socket) -> bool:
        """After a reconnect: VM ``name`` still runs and its guest channel is open."""
        try:
            return not peer_closed(sock) and bool(self._hv.is_running(name))
        except HyperVMError:
            return False

    def _orphan(self, name: str, run_dir: Path) -> None:
        with self._cond:
            self._orphans[name] = run_dir

    def _unrecord(self, name: str, metadata: Mapping[str, str] | None, pid: int) -> None:
        with self._cond:
            self._unrecorded.append((name, metadata, pid))

    # -- reap ---------------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stopping.wait(self.reap_interval):
            if self._link.up:
                self._reap()
            if not self._link.up:
                self._heal()

    def _reap(self) -> None:
        try:
            # claimed VMs whose claimer died, and idle ones of a previous daemon of this
            # pool that died without cleaning up (this daemon's own are owned by it)
            ours = [d for d in self._hv.list_ours()
                    if d.metadata.get(META_POOL) == self.config.name]
            self._forget_claims({d.name for d in ours})
            for leftover in select_leftovers(ours, process_start_time):
                log.info("reaping %s: %s", leftover.name, leftover.reason)
                self._discard(leftover.name, self.cfg.vms_dir / leftover.name, None)
        except HyperVMError as e:
            if not self._link.lost():
                log.warning("pool reaper: %s", e)

    def _forget_claims(self, live: set[str]) -> None:
        """Claimed VMs gone without a release (destroyed by their claimer, or reaped)."""
        with self._cond:
            for name in set(self._claimers) - live:
                del self._claimers[name]

    # -- outages ------------------------------------------------------------------------------

    def _heal(self) -> None:
        """Reconnect (until it works or the daemon stops), take back the VMs that survived,
        destroy the rest, then serve claims again."""
        if not self._link.reconnect():
            return
        self._redo()
        with self._cond:
            idle = list(self._idle)
        gone = {vm.name for vm in idle if not self.intact(vm.name, vm.sock)}
        with self._cond:
            lost = [vm for vm in self._idle if vm.name in gone]
            self._idle = collections.deque(vm for vm in self._idle if vm.name not in gone)
            kept = {vm.name for vm in self._idle} | set(self._booting) | set(self._claimers)
        for vm in lost:
            log.info("pool VM %s did not survive the outage: destroyed", vm.name)
            self._discard(vm.name, vm.run_dir, vm.sock)
        for readopt in self._readopters:
            kept |= readopt()
        self._sweep(kept)
        log.info("after the outage: %d idle VMs taken back, %d destroyed",
                 len(idle) - len(lost), len(lost))
        self._link.restored()
        with self._cond:
            self._cond.notify_all()

    def _redo(self) -> None:
        """What the outage kept from being done: destroys, claims' owner records."""
        with self._cond:
            orphans, self._orphans = self._orphans, {}
            unrecorded, self._unrecorded = self._unrecorded, []
        for name, run_dir in orphans.items():
            self._discard(name, run_dir, None)
        for name, metadata, pid in unrecorded:
            self.record_claim(name, metadata, pid)

    def _sweep(self, kept: set[str]) -> None:
        """Destroy the VMs of this daemon's it no longer knows of (not claimed, not
        ``kept``), e.g. a boot whose create answer the outage lost."""
        try:
            ours = self._hv.list_ours()
        except HyperVMError as e:
            log.warning("after the outage: cannot list the VMs: %s", e)
            return
        me = owner_metadata().items()
        for d in ours:
            if (d.name not in kept and d.metadata.get(META_POOL) == self.config.name
                    and d.metadata.get(META_POOL_STATE) != "claimed"
                    and all(d.metadata.get(k) == v for k, v in me)):
                log.info("%s: this daemon's, unknown after the outage: destroyed", d.name)
                self._discard(d.name, self.cfg.vms_dir / d.name, None)

    def _settle(self) -> None:
        """At stop: what an outage left (destroys, owner records) is done if the connection
        comes back within STOP_RECONNECT_S, else left for ``hypervm gc`` (logged)."""
        with self._cond:
            if self._hv is None or not (self._orphans or self._unrecorded):
                return
        if self._link.reconnect(STOP_RECONNECT_S):
            self._redo()
        with self._cond:
            left, unrecorded = sorted(self._orphans), [u[0] for u in self._unrecorded]
        if left:
            log.warning("libvirt unreachable: VMs %s left running for `hypervm gc`",
                        ", ".join(left))
        if unrecorded:
            log.warning("libvirt unreachable: claimed VMs %s not recorded as their claimers' "
                        "(`hypervm gc` takes them for this daemon's)", ", ".join(unrecorded))
