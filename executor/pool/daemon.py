"""The warm pool daemon (``hypervm pool serve``): keeps pre-booted, empty HyperVMs ready and
hands each to one claimer, never twice.

Threads: *refill* boots a VM whenever a kind (generic, or one of the images) has fewer than its
target ready or booting (one at a time, so the pool never starves running VMs of CPU); *serve*
answers claims on the pool's unix socket (executor.pool.protocol has the protocol and which VM a
claim gets); *reap* destroys claimed VMs whose claimer died, and heals a lost libvirt connection
(executor.pool.reconnect: claims refused meanwhile, the VMs that survived taken back).

Ownership: pool VMs are not auto-destroyed (they must outlive this daemon's hand-over), so they
carry owner metadata like every HyperVM. An idle VM is owned by the daemon; a claim records the
claimer (SO_PEERCRED) in memory before the reply leaves, in the metadata RECORD_DELAY_S later
(executor.pool.deferred): a live process always answers for the VM. When it dies, the reaper
(every ``reap_interval`` s) or ``hypervm gc`` destroys it, as the idle VMs of a killed daemon.
Stopping the daemon destroys its idle VMs.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from executor import netpolicy, network
from executor.guest.channel import RawChannel, connect_socket, peer_closed
from executor.libvirt import identity
from executor.libvirt.designer import POOL_SHARE_DIR, pool_domain
from executor.libvirt.domain import DOMAIN_PREFIX
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata, process_start_time
from executor.pool import listener, warmup
from executor.pool.deferred import RECORD_DELAY_S, Deferred
from executor.pool.idle import (
    META_POOL,
    META_POOL_STATE,
    SERVED_KINDS,
    IdleVM,
    by_kind,
    label,
    served_kind,
)
from executor.pool.learn import LearnedImage, LearnedImages
from executor.pool.protocol import (
    GENERIC,
    PORTS_PUBLISHED,
    Claim,
    Lease,
    PoolConfig,
    decode,
    encode,
    error_reply,
    next_kind,
    parse_claim,
    pick_vm,
)
from executor.pool.reconnect import Healing
from executor.pool.release import Claimer, check_claimer, claimer, parse_release, stop_qemu
from hypervm import netspec
from hypervm.config import HostConfig
from hypervm.errors import (
    HostError,
    HyperVMError,
    ImageError,
    NetworkError,
    PoolError,
)
from hypervm.netspec import PortMapping
from vmimage.boot import BootFiles, resolve_boot
from vmimage.images import ImageStore
from vmimage.rootfs import ensure_warmup_layer

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 60.0
#: after a claim, wait this long before booting its replacement: a boot (QEMU start, a guest
#: kernel under TCG) competes for the CPU the claimed VM's launch needs right then
REFILL_DELAY_S = 1.0
#: a service on the pool socket: (connection, caller pid, request, the descriptors sent with
#: it (the service's to close), the bytes sent after the request's line)
Service = Callable[[socket.socket, int, dict[str, Any], list[int], bytes], None]
#: after a failed boot, wait this long (doubling up to the max) before the next attempt
RETRY_BACKOFF = (1.0, 30.0)


class WarmPool(Healing):
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, cfg: HostConfig, config: PoolConfig, *, reap_interval: float = 2.0,
                 refill_delay: float = REFILL_DELAY_S, accel: str | None = None,
                 resolve: Callable[[str], Sequence[Path]] | None = None,
                 record_delay: float = RECORD_DELAY_S,
                 cached: Callable[[str], Sequence[Path] | None] | None = None) -> None:
        """``resolve``: an image reference's layer files (default: this host's image cache);
        ``record_delay``: how long a claim's owner record waits (executor.pool.deferred);
        ``cached``: a learned image's layers from the cache only, None when not there."""
        self.cfg = cfg
        self.config = config.validate()
        #: the image cache as a launch on this host uses it (the same registry settings); its
        #: gc hold covers an image VM's layers from the resolve until they are attached
        self._store = ImageStore.from_env(cfg)
        self._resolve = resolve or (lambda ref: self._store.resolve(ref).layers)
        self._cached = cached or (lambda ref: getattr(self._store.image(ref), "layers", None))
        self.reap_interval = reap_interval
        self.refill_delay = refill_delay
        self._records = Deferred(record_delay)
        self._last_claim = 0.0
        self._accel = accel
        self._hv: Any = None
        self._boot: BootFiles | None = None
        self._boot_layer = Path()
        self._idle: collections.deque[IdleVM] = collections.deque()
        self._booting: dict[str, str] = {}  # name -> kind
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: socket.socket | None = None
        self.claims = 0
        self.boots = 0
        self.failures = 0
        self.releases = 0
        #: claims served by kind of VM (idle.served_kind): generic, image (listed), learned
        self.served_by = dict.fromkeys(SERVED_KINDS, 0)
        #: claimed VMs -> who they were handed to (executor.pool.release), until released
        self._claimers: dict[str, Claimer] = {}
        #: the background destroys of released VMs (stop() waits for them)
        self._releasing: list[threading.Thread] = []
        #: more operations on the socket (add_service), and their parts of the status
        self._services: dict[str, Service] = {}
        #: the images learned from claims (executor.pool.learn), under the lock
        self._learned = LearnedImages(self.config.learn_images, self.config.images)
        self._init_healing()  # the libvirt connection's state (executor.pool.reconnect)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Check the host, bind the socket and start refilling. Raises HostError."""
        self._boot = resolve_boot(self.cfg, accel=self._accel)
        self._boot_layer = ensure_warmup_layer(self.cfg.rootfs_dir)
        self._hv = Hypervisor(self.cfg.libvirt_uri, events=False, autodestroy=False)
        try:
            self._server = self._bind()
        except BaseException:
            self._hv.close()
            self._hv = None
            raise
        for target, name in ((self._refill_loop, "pool-refill"), (self._serve_loop, "pool-serve"),
                             (self._reap_loop, "pool-reap")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("warm pool %r: %d VMs of %d vCPU / %d MiB, socket %s", self.config.name,
                 self.config.size, self.config.vcpus, self.config.memory_mib,
                 self.cfg.pool_socket)

    def stop(self) -> None:
        """Stop serving and refilling; destroy the idle VMs (claimed ones belong to their
        claimers); what a libvirt outage keeps it from destroying: :meth:`_settle`.
        Idempotent."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
            booting = list(self._booting)
        for name in booting:  # now, not after their boot and warm-up (seconds under TCG): a
            with contextlib.suppress(HyperVMError):  # SIGKILL may follow a SIGTERM soon
                self._hv.destroy(name)
        server, self._server = self._server, None
        listener.close(server, self.cfg.pool_socket)
        for thread in self._threads:
            thread.join(timeout=BOOT_TIMEOUT + 5)
        self._threads = []
        with self._cond:
            releasing, self._releasing = self._releasing, []
        for thread in releasing:  # a VM released just now: its destroy needs the connection
            thread.join(timeout=BOOT_TIMEOUT)
        with self._cond:
            idle, self._idle = list(self._idle), collections.deque()
        for vm in idle:
            self._discard(vm.name, vm.run_dir, vm.sock)
        self._records.flush()  # the claimers' VMs are theirs: recorded before we go
        self._settle()
        if self._hv is not None:
            self._hv.close()
            self._hv = None

    def add_service(self, op: str, service: Service) -> None:
        """Serve ``{"op": op, ...}`` in the connection's thread, after the access check (e.g.
        the fast ``hypervm run``, executor.cli.fastrun_serve); a ``status()`` method of the
        service gives its part of :meth:`status`, under ``services.<op>``."""
        self._services[op] = service

    @property
    def hypervisor(self) -> Any:  # the pool's libvirt connection, for a service's VMs
        return self._hv

    @property
    def boot_files(self) -> BootFiles | None:  # what its VMs boot, once started
        return self._boot

    def hand_over(self, name: str, owner_pid: int) -> None:
        """A VM of this daemon's other than a pool VM (a standby clone, executor.snapshot.keeper)
        is ``owner_pid``'s now: it may release it, and :meth:`record_claim` records it."""
        with self._cond:
            self._claimers[name] = claimer(owner_pid)

    def discard(self, name: str, run_dir: Path) -> None:
        """Destroy a VM of this daemon's (not claimed), its run dir and its uid."""
        self._discard(name, run_dir, None)

    def __enter__(self) -> WarmPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_full(self, timeout: float) -> bool:
        """Wait until every kind has its VMs ready (learned images too); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < sum(self._targets().values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                self._cond.wait(remaining)
        return True

    def unclaimed(self) -> set[str]:
        """Names of the VMs still the pool's (ready or booting)."""
        with self._cond:
            return {vm.name for vm in self._idle} | set(self._booting)

    def _targets(self) -> dict[str, int]:
        """Idle VMs to keep by kind, the learned images' included (call with the lock held)."""
        targets = self.config.targets()
        targets.update((image.kind, self.config.per_image) for image in self._learned)
        return targets

    def learn(self, claim: Claim) -> None:
        """Learn a claim's image (executor.pool.learn), if of the pool's shape; the idle VMs
        of an image forgotten for it are destroyed."""
        if claim.image is None or (claim.vcpus, claim.memory_mib) != (self.config.vcpus,
                                                                     self.config.memory_mib):
            return
        with self._cond:
            gone = self._learned.note(claim.tenant, claim.image)
            stale = [vm for vm in self._idle if vm.kind in gone]
            self._idle = collections.deque(vm for vm in self._idle if vm.kind not in gone)
            self._cond.notify_all()  # the refill thread boots the new one's
        for vm in stale:
            self._discard(vm.name, vm.run_dir, vm.sock)

    def _have(self) -> dict[str, int]:
        """Ready or booting VMs by kind (call with the lock held)."""
        have = collections.Counter(vm.kind for vm in self._idle)
        have.update(self._booting.values())
        return dict(have)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"name": self.config.name, "size": self.config.size,
                    "target": sum(self._targets().values()),
                    "learn_images": self.config.learn_images,
                    **by_kind(self._idle, self._booting.values(), self.config.images,
                              self._learned),
                    "vcpus": self.config.vcpus, "memory_mib": self.config.memory_mib,
                    "ready": len(self._idle), "booting": len(self._booting),
                    "per_image": self.config.per_image,
                    "claims": self.claims, "boots": self.boots, "failures": self.failures,
                    "served_by": dict(self.served_by),
                    "accel": self._boot.accel if self._boot else None,
                    "connected": self._link.up, "outages": self._link.outages,
                    "services": self._service_status()}

    def _service_status(self) -> dict[str, Any]:
        """What each service (add_service) says of itself, e.g. the fast run's counters."""
        said = {}
        for op, service in self._services.items():
            status_of = getattr(service, "status", None)
            if callable(status_of):
                said[op] = status_of()
        return said

    def idle_vms(self) -> list[str]:
        """The names of the VMs ready to be claimed now."""
        with self._cond:
            return [vm.name for vm in self._idle]

    # -- claims -------------------------------------------------------------------------------

    def claim(self, vcpus: int, memory_mib: int, owner_pid: int,
              metadata: Mapping[str, str] | None = None,
              layers: Sequence[str] = (), ports: Sequence[PortMapping] = (), *,
              record_later: bool = False, ports_later: bool = False, tenant: str = "default"
              ) -> tuple[Lease, socket.socket]:
        """Hand a ready VM to ``owner_pid`` (an image VM with exactly the pod's ``layers``,
        else the oldest generic one), with the pod's ``metadata`` written on it and its
        ``ports`` published: the caller must pass on the socket. NetworkError, as a cold boot
        raises it, when a port cannot be published (checked before a VM is taken; a VM that
        lost a race for one is destroyed, never handed out half-configured).
        ``record_later``: the caller writes the metadata with :meth:`record_claim` once it
        has answered the claimer (a libvirt round trip off the launch's clock); a VM whose
        guest channel is closed is discarded here instead. ``ports_later``: checked, not
        published: the caller does that with :meth:`publish_claimed` once it has answered.
        ``tenant``: the pod's; a learned image's VM goes to its own tenant only."""
        self._link.require()  # during a libvirt outage (executor.pool.reconnect)
        if (vcpus, memory_mib) != (self.config.vcpus, self.config.memory_mib):
            raise PoolError(f"pool VMs have {self.config.vcpus} vCPU / {self.config.memory_mib} "
                            f"MiB, not {vcpus} / {memory_mib}")
        if process_start_time(owner_pid) is None:
            raise PoolError(f"the claiming process {owner_pid} is gone")
        net = netspec.NetworkSpec(ports=tuple(ports))
        net.validate()  # parse_claim did; a bad mapping must not discard VM after VM below
        network.check_host_ports(net)  # the cold boot's check, before a VM is taken
        while True:
            with self._cond:
                index = pick_vm([vm.layers for vm in self._idle], layers,
                                [vm.kept_for for vm in self._idle], tenant)
                if index is None:
                    raise PoolError("no warm VM is ready" if not self._idle else
                                    "no warm VM for these layers is ready")
                vm = self._idle[index]
                del self._idle[index]
                self._last_claim = time.monotonic()
                self._cond.notify_all()  # the refill thread boots a replacement
            try:
                if record_later and peer_closed(vm.sock):
                    raise PoolError("its guest channel is closed")
                if not ports_later:
                    network.publish_live(self._hv, vm.name, net)
                if not record_later:
                    self._record(vm.name, metadata, owner_pid)
            except NetworkError as e:
                log.warning("pool VM %s cannot publish the pod's ports (%s): discarded",
                            vm.name, e)
                self._discard(vm.name, vm.run_dir, vm.sock)
                raise
            except HyperVMError as e:
                log.warning("pool VM %s is unusable (%s): discarded", vm.name, e)
                self._discard(vm.name, vm.run_dir, vm.sock)
                continue
            self.claims += 1
            self.served_by[served_kind(vm)] += 1
            with self._cond:
                self._claimers[vm.name] = claimer(owner_pid)
            log.info("%s%s claimed by pid %d after %.1f s idle%s", vm.name, label(vm.kind),
                     owner_pid, time.monotonic() - vm.booted_at,
                     f", {len(net.ports)} ports published" if net.ports else "")
            return Lease(vm=vm.name, run_dir=vm.run_dir, ready=vm.ready,
                         layers_attached=bool(vm.layers), identity=vm.identity,
                         identity_known=True, ports_pending=ports_later and bool(net.ports)
                         ), vm.sock

    def publish_claimed(self, name: str, ports: Sequence[PortMapping]) -> dict[str, Any]:
        """Publish a ``ports_later`` claim's ports on VM ``name``: the claimer's line."""
        try:
            network.publish_live(self._hv, name, netspec.NetworkSpec(ports=tuple(ports)))
        except HyperVMError as e:
            log.warning("claimed VM %s cannot publish the pod's ports (%s): destroyed", name, e)
            with self._cond:
                self._claimers.pop(name, None)
            self._discard(name, self.cfg.vms_dir / name, None)
            return error_reply(e)
        return PORTS_PUBLISHED

    def _record(self, name: str, metadata: Mapping[str, str] | None, owner_pid: int) -> None:
        self._hv.set_metadata(name, {**(metadata or {}), META_POOL: self.config.name,
                                     META_POOL_STATE: "claimed", **owner_metadata(owner_pid)})

    def record_claim(self, name: str, metadata: Mapping[str, str] | None,
                     owner_pid: int) -> None:
        """Write the claimed VM ``name``'s pod metadata and owner (see :meth:`claim`); when
        that fails the VM is destroyed (unrecorded, it would outlive its owner). Nothing to do
        once the claimer released or ended it (a pod over before the deferred record)."""
        with self._cond:
            if name not in self._claimers:
                return
        try:
            self._record(name, metadata, owner_pid)
        except HyperVMError as e:
            if self._link.lost():  # written once the connection is back
                return self._unrecord(name, metadata, owner_pid)
            with self._cond:
                self._claimers.pop(name, None)
            if self._hv.is_running(name):
                log.warning("claimed VM %s: cannot record its owner (%s): destroyed", name, e)
                self._discard(name, self.cfg.vms_dir / name, None)

    # -- refill -------------------------------------------------------------------------------

    def _refill_loop(self) -> None:
        # per kind, so an image that cannot be had (registry down) does not stop the rest
        backoff: dict[str, float] = {}
        retry_at: dict[str, float] = {}
        while not self._stopping.is_set():
            with self._cond:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    due = {k: n for k, n in self._targets().items()  # none while
                           if retry_at.get(k, 0.0) <= now and self._link.up}  # disconnected
                    if (kind := next_kind(due, self._have())) is not None:
                        break
                    self._cond.wait(1.0)
            if self._stopping.is_set() or kind is None:
                return
            # a claim was just made: let its launch have the CPU before booting a replacement
            while (pause := self._last_claim + self.refill_delay - time.monotonic()) > 0:
                if self._stopping.wait(pause):
                    return
            if self._boot_one(kind):
                backoff.pop(kind, None)
                retry_at.pop(kind, None)
            else:
                delay = backoff.get(kind, RETRY_BACKOFF[0])
                retry_at[kind] = time.monotonic() + delay
                backoff[kind] = min(delay * 2, RETRY_BACKOFF[1])

    def _boot_one(self, kind: str = GENERIC) -> bool:

        name = f"{DOMAIN_PREFIX}{self.config.name}-{uuid.uuid4().hex[:8]}"
        run_dir = self.cfg.vms_dir / name
        metadata = {META_POOL: self.config.name, META_POOL_STATE: "idle", **owner_metadata()}
        try:  # its own uid from boot on; the claimer gives the pod's shares to it
            own = identity.for_vm(self.cfg, self._hv, name)
        except HyperVMError as e:
            self.failures += 1
            log.warning("pool VM %s%s gets no identity: %s", name, label(kind), e)
            return False
        if (boot := self._boot) is None:
            raise HostError("the warm pool boots VMs only once started")
        spec = pool_domain(name, boot, self.cfg, run_dir, self.config.vcpus,
                           self.config.memory_mib, metadata,
                           identity=own.pair if own is not None else None)
        with self._cond:
            self._booting[name] = kind
            learned = self._learned.get(kind)
        sock = None
        started = time.monotonic()
        layers: tuple[str, ...] = ()
        hold = self._store.hold() if kind != GENERIC else contextlib.nullcontext()
        try:
            with hold:  # no gc of an image VM's layers before they are attached
                if kind != GENERIC:  # resolved for every boot: a re-pulled tag's new layers
                    layers = self._layers(kind, learned)
                netpolicy.enforce(self.cfg, network.host_resolv_conf())  # pool VMs have a NIC
                self._hv.prepare_run_dir(run_dir, spec.identity)
                (run_dir / POOL_SHARE_DIR).mkdir(mode=0o755)
                self._hv.create(spec)
                sock = connect_socket(spec.channel_socket, BOOT_TIMEOUT)
                ready = warmup.prepare_guest(
                    self._hv, name, RawChannel(sock), layers, self._boot_layer,
                    flush_tcg=boot.flushes_after_boot(self.cfg), timeout=BOOT_TIMEOUT,
                    discard_zeros=boot.discards_zero_pages(self.cfg))
        except (HyperVMError, OSError) as e:
            self.failures += 1
            log.warning("pool VM %s%s did not boot: %s", name, label(kind), e)
            self._discard(name, run_dir, sock)
            with self._cond:
                self._booting.pop(name, None)
            return False
        self.boots += 1
        log.info("pool VM %s%s ready in %.2f s", name, label(kind),
                 time.monotonic() - started)
        with self._cond:
            self._booting.pop(name, None)
            if self._stopping.is_set() or kind not in self._targets():  # stopped, forgotten
                stale = True
            else:
                stale = False
                self._idle.append(IdleVM(name, run_dir, sock, ready, kind, layers,
                                        identity=spec.identity,
                                        kept_for=learned.tenant if learned else None))
                self._cond.notify_all()
        if stale:
            self._discard(name, run_dir, sock)
        return True

    def _layers(self, kind: str, learned: LearnedImage | None) -> tuple[str, ...]:
        """An image VM's layers: a listed image's resolved as a launch does, a learned one's
        from the cache only (never pulled for a client; forgotten once gone: ImageError)."""
        layers = (self._resolve(kind) if kind in self.config.images else  # else learned,
                  self._cached(learned.ref) if learned is not None else None)  # or forgotten
        if layers is None:
            with self._cond:
                self._learned.forget(kind)
            raise ImageError(kind, "no longer in the image cache: forgotten")
        return tuple(dict.fromkeys(str(p) for p in layers))

    def _discard(self, name: str, run_dir: Path, sock: socket.socket | None) -> None:
        if sock is not None:
            sock.close()
        try:
            if self._hv is not None:
                self._hv.destroy(name)
        except HyperVMError as e:
            if self._link.lost():  # destroyed once the connection is back (or by gc): its
                return self._orphan(name, run_dir)  # run dir and uid stay its own till then
            log.warning("cannot destroy pool VM %s: %s", name, e)
        shutil.rmtree(run_dir, ignore_errors=True)
        identity.release(name)

    # -- serve --------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        return listener.bind(self.cfg.pool_socket)

    def _serve_loop(self) -> None:
        while not self._stopping.is_set():
            server = self._server
            if server is None:
                return
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), name="pool-client",
                             daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            conn.settimeout(5.0)
            try:
                pid, uid = listener.peer(conn)
                line, rest, fds = listener.read_request(conn)
                request = decode(line, "request")
                if uid not in (0, os.geteuid()):
                    raise PoolError(f"uid {uid} may not use this pool")
                op = request.get("op")
                if isinstance(op, str) and op in self._services:
                    fds, given = [], fds
                    self._services[op](conn, pid, request, given, rest)
                elif op == "status":
                    conn.sendall(encode(self.status()))
                elif op == "claim":
                    claim = parse_claim(request)
                    self.learn(claim)  # a claim that finds no VM teaches the pool too
                    lease, sock = self.claim(claim.vcpus, claim.memory_mib, pid, claim.metadata,
                                             claim.layers, claim.ports, record_later=True,
                                             ports_later=claim.ports_later,
                                             tenant=claim.tenant)
                    try:
                        socket.send_fds(conn, [encode(lease.reply())], [sock.fileno()])
                        if lease.ports_pending:  # not when the answer was lost (OSError)
                            listener.send_quietly(conn, self.publish_claimed(lease.vm,
                                                                             claim.ports))
                    finally:
                        sock.close()
                        self._records.call_later(self.record_claim, lease.vm, claim.metadata,
                                                 pid)
                elif op == "release":
                    name = parse_release(request)
                    self._release(pid, name)
                    conn.sendall(encode({"released": name}))
                else:
                    raise PoolError(f"op: unknown operation {op!r} (use claim, release or "
                                    f"status)")
            except (PoolError, NetworkError) as e:
                listener.send_quietly(conn, error_reply(e))
            except OSError as e:
                log.debug("pool client went away: %s", e)
            finally:
                for fd in fds:
                    os.close(fd)

    def _release(self, owner_pid: int, name: str) -> None:
        """A claimer hands its VM back (executor.pool.release): QEMU ends now, the domain's
        destroy goes on in the background."""
        with self._cond:
            check_claimer(self._claimers, name, owner_pid)
            del self._claimers[name]
        run_dir = self.cfg.vms_dir / name
        if stop_qemu(name):
            thread = threading.Thread(target=self._discard, args=(name, run_dir, None),
                                      name="pool-release", daemon=True)
            with self._cond:  # stop() waits for it before closing the libvirt connection
                self._releasing = [t for t in self._releasing if t.is_alive()] + [thread]
            thread.start()
        else:
            self._discard(name, run_dir, None)
        self.releases += 1
        log.info("%s released by pid %d", name, owner_pid)
