"""The warm pool daemon's standby clones (the protocol: executor.snapshot.standby).

A :class:`StandbyKeeper` serves the ``standby`` operation on a :class:`WarmPool`'s socket and
keeps one standby clone for each of the latest ``PoolConfig.standby`` template shapes that
launches from a snapshot asked for (store.template_shape: memory size, tenant and the
template's vCPU capacity; pods of fewer vCPUs take it and hot-plug theirs): a clone domain of
the store's snapshot of that shape (2 vCPUs present, the second offline in the guest and
capped on the host until a claim grants it: executor.libvirt.vcpucap; a template above
``HYPERVM_SNAPSHOT_VCPUS`` has all present and online, none capped: designer.online_vcpus), its QEMU
started (``-incoming defer``), the snapshot loaded, then run: RESEED before anything else, then
one throwaway container from the host's warm-up layer (LUN 0, as on a pool VM), so that TCG
has translated the guest code a START runs. Its run dir and uid are made as for any VM (root's
run dir with the VM's group, a uid of its own); it is the daemon's (owner metadata, pool state
``standby``) until a claimer takes it, then the claimer's (recorded as a claim records it),
and handed out once, with its guest channel's connected socket: it leaves the keeper's table
under its lock before the reply is written. The claimer reseeds it again.

What waiting costs: an idle VM's QEMU (the snapshot's guest RAM, the warm-up's translations);
README "Standby clones" has the measured figures. Stopping the keeper destroys its standbys.

Threads: *standby* starts a standby for a wanted shape that has none (one at a time, waiting
``refill_delay`` after a take, so it does not compete with the launch that took one).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor import netpolicy, network
from executor.guest.channel import RawChannel, connect_socket, peer_closed
from executor.guest.protocol import (
    POOL_REQUEST_ID,
    RESEED_BYTES,
    MsgType,
    reseed_payload,
)
from executor.libvirt import identity, migration, vcpucap
from executor.libvirt.designer import POOL_SHARE_DIR, clone_domain, online_vcpus
from executor.libvirt.domain import DOMAIN_PREFIX, CpuTune
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata, process_start_time
from executor.pool import listener, warmup
from executor.pool.daemon import META_POOL, META_POOL_STATE, REFILL_DELAY_S, WarmPool
from executor.pool.protocol import encode, error_reply
from executor.snapshot import store, template
from executor.snapshot.standby import OP, Ask, lease_reply, parse_standby, remember
from executor.snapshot.store import Shape
from hypervm.errors import HostError, HyperVMError, PoolError
from vmimage.boot import BootFiles
from vmimage.rootfs import ensure_warmup_layer

log = logging.getLogger(__name__)

#: seconds a standby's QEMU may take to load the snapshot, and its warm-up to run
LOAD_TIMEOUT = 30.0
#: seconds the keeper waits for another process's template of the store (then retries later)
TEMPLATE_WAIT_S = template.BOOT_TIMEOUT + template.SAVE_TIMEOUT
WARMUP_TIMEOUT = 60.0
#: after the warm-up's exit, let the standby's init have its quiet loop (init's SPARE_IDLE_MS,
#: 500 ms) before the standby is ready: the warm-up container's release and its spare cgroups
#: (init 0.7.4: two, for a group's two STARTs) are made then, off any launch's clock, not in
#: the claim's RESEED round (a claim that came sooner paid them: ~10-20 ms of vCPU; task
#: "twocont", DEVELOPERS.md)
SETTLE_S = 0.6
#: snapshot keys of shapes remembered at most (computing one builds a domain's XML)
KEYS_KEPT = 64
#: the pool state of a standby clone in its metadata
STANDBY_STATE = "standby"
#: after a standby could not be made (no snapshot yet, a failed start), retry that shape
#: no sooner than this (a request for it retries at once)
RETRY_S = 30.0


@dataclass
class _Standby:
    name: str
    run_dir: Path
    shape: Shape
    key: str
    template: str
    identity: tuple[int, int] | None
    made_at: float
    #: the guest channel's connected socket, handed to the claimer
    sock: socket.socket
    #: the template's READY payload (a clone never sends it)
    ready: dict[str, Any]
    #: its present vCPUs (the others than ``online`` capped until a claim: executor.libvirt.vcpucap)
    vcpus: int = 1
    #: those online in its guest, uncapped while it waits (designer.online_vcpus: 1, or all
    #: of a template above the shared capacity, whose claimer is always given all)
    online: int = 1

    def close(self) -> None:
        self.sock.close()


class StandbyKeeper:
    """Use as a context manager inside the pool's (``with pool, keeper:``): it needs the
    pool's libvirt connection, and registers itself as the pool's ``standby`` service."""

    def __init__(self, pool: WarmPool, *, refill_delay: float = REFILL_DELAY_S) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.limit = pool.config.standby
        self.refill_delay = refill_delay
        self._wanted: list[Shape] = []  # least recently asked for first
        self._ready: dict[Shape, _Standby] = {}
        self._keys: dict[Shape, str] = {}  # the snapshot key of each shape, this daemon's
        self._retry_at: dict[Shape, float] = {}
        self._last_take = 0.0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._warmup_layer = Path()
        self._making: str | None = None  # the standby being started now
        self.taken = self.missed = self.made = self.failures = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.pool.hypervisor is None or self.pool.boot_files is None:
            raise HostError("standby clones need a started warm pool")
        self._warmup_layer = ensure_warmup_layer(self.cfg.rootfs_dir)
        self.pool.add_service(OP, self)
        self.pool.on_reconnect(self._readopt)
        self._thread = threading.Thread(target=self._refill_loop, name="pool-standby",
                                        daemon=True)
        self._thread.start()
        log.info("standby clones for up to %d shapes", self.limit)

    def stop(self) -> None:
        """Stop making standbys and destroy the ready ones. Idempotent."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        with self._cond:
            ready, self._ready = list(self._ready.values()), {}
        for each in ready:
            self._drop(each)

    def _drop(self, standby: _Standby) -> None:
        standby.close()
        self.pool.discard(standby.name, standby.run_dir)

    def __enter__(self) -> StandbyKeeper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"shapes": [[s.vcpus, s.memory_mib] for s in self._wanted],
                    "ready": sorted(sb.name for sb in self._ready.values()),
                    "limit": self.limit, "taken": self.taken, "missed": self.missed,
                    "made": self.made, "failures": self.failures}

    def ready_names(self) -> list[str]:
        with self._cond:
            return [sb.name for sb in self._ready.values()]

    def wait_ready(self, shape: Shape, timeout: float) -> bool:
        """Wait until a standby of ``shape`` is ready; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while shape not in self._ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                self._cond.wait(remaining)
        return True

    # -- the service --------------------------------------------------------------------------

    def __call__(self, conn: socket.socket, pid: int, request: dict[str, Any],
                 fds: list[int], rest: bytes = b"") -> None:
        for fd in fds:  # a standby request carries none
            os.close(fd)
        try:
            ask = parse_standby(request)
            standby = self.take(ask, pid)
        except PoolError as e:
            listener.send_quietly(conn, error_reply(e))
            return
        try:
            socket.send_fds(conn, [encode(lease_reply(standby.name, str(standby.run_dir),
                                                      standby.identity, standby.ready))],
                            [standby.sock.fileno()])
        except OSError as e:  # its owner is recorded below all the same: the reaper's then
            log.info("standby %s: the claimer went away (%s)", standby.name, e)
        finally:
            standby.close()  # the claimer has its own copy
            self.pool.record_claim(standby.name, ask.metadata, pid)

    def take(self, ask: Ask, pid: int) -> _Standby:
        """Hand the standby of ``ask``'s shape to ``pid`` (and note the shape as wanted);
        PoolError when there is none for it."""
        # one standby per template, whatever vCPUs (up to its capacity) the claimer asked for
        ask = dataclasses.replace(ask, shape=store.template_shape(self.cfg, ask.shape))
        if self._stopping.is_set():
            raise PoolError("the pool is stopping")
        self.pool.require_connected("no standby")
        if process_start_time(pid) is None:
            raise PoolError(f"the claiming process {pid} is gone")
        if self._key(ask.shape) != ask.key:
            raise PoolError("this pool's kernel, init or QEMU makes another snapshot of the "
                            "shape: no standby")
        with self._cond:
            self._wanted, gone = remember(self._wanted, ask.shape, self.limit)
            dropped = [self._ready.pop(s) for s in gone if s in self._ready]
            standby = self._ready.pop(ask.shape, None)
            self._retry_at.pop(ask.shape, None)  # a launch may have made its snapshot now
            if standby is not None:
                self._last_take = time.monotonic()
            self._cond.notify_all()
        for each in dropped:
            log.info("standby %s: its shape is no longer wanted", each.name)
            self._drop(each)
        if standby is None:
            self.missed += 1
            raise PoolError(f"no standby of {ask.shape.vcpus} vCPU / {ask.shape.memory_mib} "
                            "MiB is ready")
        if (standby.key, standby.template) != (ask.key, ask.template):
            self._drop(standby)
            raise PoolError("the standby was made for a snapshot the store no longer has")
        if peer_closed(standby.sock):  # e.g. its QEMU died while it waited
            self._drop(standby)
            raise PoolError(f"the standby {standby.name} is gone")
        self.pool.hand_over(standby.name, pid)
        self.taken += 1
        log.info("standby %s taken by pid %d after %.1f s", standby.name, pid,
                 time.monotonic() - standby.made_at)
        return standby

    def _key(self, shape: Shape) -> str:
        key = self._keys.get(shape)
        if key is None:
            boot = self.pool.boot_files
            if boot is None:
                raise PoolError("the pool is not started")
            if len(self._keys) >= KEYS_KEPT:  # claimers may ask for any shape: bounded
                self._keys.clear()
            key = self._keys[shape] = store.snapshot_key(boot, self.cfg, shape)
        return key

    # -- refill -------------------------------------------------------------------------------

    def _next(self) -> Shape | None:
        """The most recently wanted shape without a standby, not waiting for a retry (call
        with the lock held)."""
        now = time.monotonic()
        if not self.pool.connected:  # none made during a libvirt outage
            return None
        for shape in reversed(self._wanted):
            if shape not in self._ready and self._retry_at.get(shape, 0.0) <= now:
                return shape
        return None

    def _readopt(self) -> set[str]:
        """After the pool's libvirt connection came back (executor.pool.reconnect): keep each
        standby whose domain runs and whose guest channel is open, its spare vCPUs capped
        again (libvirt does not rewrite the cgroups when a client reconnects; a restarted
        libvirtd might), drop the others. The names kept, and the one in the making."""
        hv = self.pool.hypervisor
        with self._cond:
            ready, making = list(self._ready.values()), self._making
        kept = {making} if making else set()
        for standby in ready:
            try:
                if not self.pool.intact(standby.name, standby.sock):
                    raise PoolError("its domain or its guest channel is gone")
                vcpucap.bound(hv.qemu_pid(standby.name), standby.vcpus, standby.online,
                              CpuTune())
                kept.add(standby.name)
                continue
            except HyperVMError as e:
                log.info("standby %s did not survive the outage (%s): dropped", standby.name, e)
            with self._cond:
                if self._ready.get(standby.shape) is standby:
                    del self._ready[standby.shape]
            self._drop(standby)
        return kept

    def _drop_stale(self) -> None:
        """Drop the ready standbys whose snapshot the store no longer serves (rotated after
        N clones, expired, evicted): a launch would refuse them and make the template itself;
        the refill makes it now instead (call without the lock: it reads the store)."""
        with self._cond:
            ready = list(self._ready.values())
        for standby in ready:
            snap = store.lookup(self.cfg, standby.key)
            if snap is not None and snap.template == standby.template:
                continue
            with self._cond:
                if self._ready.get(standby.shape) is not standby:
                    continue  # taken meanwhile
                del self._ready[standby.shape]
            log.info("standby %s: its snapshot was rotated: made anew", standby.name)
            self._drop(standby)

    def _refill_loop(self) -> None:
        while not self._stopping.is_set():
            self._drop_stale()
            with self._cond:
                while not self._stopping.is_set() and (shape := self._next()) is None:
                    self._cond.wait(1.0)
                    if self._ready:
                        break  # check them again (_drop_stale) at most each second
                if shape is None:
                    continue
            if self._stopping.is_set() or shape is None:
                return
            # a standby was just taken: let its launch have the CPU first
            while (pause := self._last_take + self.refill_delay - time.monotonic()) > 0:
                if self._stopping.wait(pause):
                    return
            standby = self._make(shape)
            with self._cond:
                keep = (standby is not None and not self._stopping.is_set()
                        and shape in self._wanted and shape not in self._ready)
                if keep and standby is not None:
                    self._ready[shape] = standby
                elif standby is None:
                    self._retry_at[shape] = time.monotonic() + RETRY_S
                self._cond.notify_all()
            if standby is not None and not keep:
                self._drop(standby)

    def _make(self, shape: Shape) -> _Standby | None:
        """Start a standby of ``shape``, its snapshot made first when the store has none
        (None: it failed)."""
        try:
            key = self._key(shape)
        except HyperVMError as e:
            log.warning("no standby of %s: %s", shape, e)
            return None
        name = f"{DOMAIN_PREFIX}{self.pool.config.name}-sb-{uuid.uuid4().hex[:8]}"
        run_dir = self.cfg.vms_dir / name
        metadata = {META_POOL: self.pool.config.name, META_POOL_STATE: STANDBY_STATE,
                    **owner_metadata()}
        hv, boot = self.pool.hypervisor, self.pool.boot_files
        started = time.monotonic()
        self._making = name  # kept by _readopt
        try:
            if boot is None:
                raise HostError("the pool is not started")
            # none in the store (never made, rotated, expired): made here, off any launch's
            # clock, not by the next launch of the shape (counted when a launch takes it)
            snap = self._ensure_snapshot(boot, shape)
            own = identity.for_vm(self.cfg, hv, name)
            spec = clone_domain(name, snap.template, boot, self.cfg, run_dir,
                                shape.vcpus, shape.memory_mib, metadata,
                                identity=own.pair if own is not None else None)
            netpolicy.enforce(self.cfg, network.host_resolv_conf())  # clones have a NIC
            hv.prepare_run_dir(run_dir, spec.identity)
            (run_dir / POOL_SHARE_DIR).mkdir(mode=0o755)
            hv.create(spec)
            # its spare vCPUs capped before its state is loaded (no guest code ran yet) until
            # a claim grants them (executor.snapshot.start). Those online in the snapshot (all
            # of a template above the shared capacity) are not: a capped online vCPU stalls
            # the guest's IPIs to it (TLB shoot-downs, RCU) for up to the cap's 1 s period.
            # It runs none of a tenant's code before the claim, which grants a pod of exactly
            # its count the pod's bound on all of them before RESEED (rules 12, 14)
            online = online_vcpus(shape.vcpus, self.cfg.snapshot_vcpus)
            vcpucap.bound(hv.qemu_pid(name), spec.vcpus, online, CpuTune())
            # off any launch's clock
            migration.load(hv, name, snap.state, LOAD_TIMEOUT, snap.memory)
            sock = self._warm_up(hv, name, spec.channel_socket)
        except (HyperVMError, OSError) as e:
            self.failures += 1
            log.warning("standby %s did not start: %s", name, e)
            self.pool.discard(name, run_dir)
            return None
        finally:
            self._making = None
        self.made += 1
        log.info("standby %s of %d vCPU / %d MiB ready in %.2f s", name, shape.vcpus,
                 shape.memory_mib, time.monotonic() - started)
        return _Standby(name, run_dir, shape, key, snap.template, spec.identity,
                        time.monotonic(), sock, snap.ready, spec.vcpus, online)

    def _ensure_snapshot(self, boot: BootFiles, shape: Shape) -> store.Snapshot:
        """The store's snapshot of ``shape``, its template made now when it has none: through
        a libvirt connection of its own that auto-destroys it, never the pool's (which does
        not: its VMs are handed over), so a template never outlives this daemon (SIGKILLed
        while it boots or saves, it was left running, owned by a dead pid, until a
        ``hypervm gc``: no next daemon reaps a VM that is not of its pool)."""
        with Hypervisor(self.cfg.libvirt_uri, events=False) as own:
            return template.ensure(self.cfg, boot, own, shape, wait=TEMPLATE_WAIT_S,
                                   count=False)

    def _warm_up(self, hv: Any, name: str, channel_socket: Path) -> socket.socket:
        """Let the loaded standby ``name`` run: RESEED before anything else (its kernel RNG
        is the template's until then), then one throwaway container from the host's warm-up
        layer (as a pool VM runs one), so that QEMU has translated the guest code a START
        runs before a claimer's START comes (TCG saves no translations). Its channel's
        connected socket."""
        migration.resume(hv, name)
        sock = connect_socket(channel_socket, LOAD_TIMEOUT)
        try:
            channel = RawChannel(sock)
            channel.request(MsgType.RESEED, POOL_REQUEST_ID,
                            reseed_payload(os.urandom(RESEED_BYTES)), LOAD_TIMEOUT)
            warmup.attach_layers(hv, name, (), self._warmup_layer)
            warmup.run_warmup(channel, name, 0, WARMUP_TIMEOUT)
            time.sleep(SETTLE_S)
        except BaseException:
            sock.close()
            raise
        return sock
