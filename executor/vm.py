"""HyperVM: one pod in one VM — the orchestration between PodSpec, libvirt and the guest init.

Side effects live in the modules this one drives (executor.libvirt.hypervisor for libvirt,
executor.guest.channel for the socket); here: naming, the per-VM run directory, which layer
images become which disks, the boot/teardown sequence and the process bookkeeping.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from executor import network
from executor.guest import console
from executor.guest.protocol import (
    LAYER_WAIT_MS,
    ExitStatus,
    MsgType,
    layer_pci_address,
    limits_payload,
    process_payload,
    reply_pid,
    resize_payload,
    start_payload,
)
from executor.libvirt import identity, linger, starter
from executor.libvirt.designer import RunFiles, cold_domain
from executor.libvirt.domain import DiskSpec, DomainSpec, ShareSpec
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.qemu_process import QemuProcess
from executor.podrecord import pod_devices, pod_metadata, start_mount
from executor.reclaim import SETTLED_FLUSH_S, discard_zero_pages, flush_boot_translations
from hypervm import netspec
from hypervm.config import HostConfig
from hypervm.errors import BootError, HyperVMError, ProtocolError
from hypervm.frozen import frozen_dataclass
from hypervm.podspec import DEFAULT_PATH, Container, PodSpec, Process
from vmimage.boot import BootFiles, resolve_boot

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

    from executor.guest.channel import GuestChannel, PendingReply, ProcessCallbacks

log = logging.getLogger(__name__)

DEFAULT_BOOT_TIMEOUT = 60.0
@frozen_dataclass
class ProcessHandle:
    """A process started in the VM: its handle on the channel, container and guest pid."""

    handle: int
    container: str
    pid: int


@frozen_dataclass
class SentProcess:
    """A START/EXEC sent, its reply not awaited yet (HyperVM.wait_started)."""

    pending: PendingReply
    handle: int
    container: str


def _ignore(_: bytes) -> None:
    pass


class HyperVM:
    """Boot with :meth:`boot`, run with :meth:`start`/:meth:`exec`, end with :meth:`destroy`.

    Usable as a context manager: leaving the block destroys the VM whatever happened.
    """

    def __init__(self, cfg: HostConfig, pod: PodSpec, *, hypervisor: Any = None,
                 accel: str | None = None, boot_files: BootFiles | None = None,
                 claimed: str | None = None, run_dir: Path | None = None,
                 before_shares: Callable[[tuple[int, int] | None], None] | None = None,
                 booting: Callable[[], object] | None = None) -> None:
        """``boot_files``: what to boot (default: this host's, resolved at boot); ``claimed``
        and ``run_dir``: a booted pool VM this object takes over (executor.pool.adopt) instead
        of booting its own. ``before_shares(identity)``: called once the VM's QEMU user is
        known, before the pod's owned shares are given to it (e.g. to let that uid reach a
        sandbox below a 0750 directory); ``identity`` is None when QEMU runs as libvirt's
        shared user. ``booting()``: called by a cold :meth:`boot` once the domain is created,
        before READY is awaited (work the caller needs only once the VM is booted, done while
        the guest boots: issue 17)."""
        pod.validate()
        self.cfg = cfg
        self.pod = pod
        self.name = claimed or f"hypervm-{pod.name}-{os.urandom(4).hex()}"
        self.run_dir = run_dir or cfg.vms_dir / self.name
        self._boot_files = boot_files
        self._hypervisor = hypervisor
        self._own_hypervisor = hypervisor is None
        self._accel = accel
        self._channel: GuestChannel | None = None
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self._destroyed = False
        self._flush_timer: threading.Timer | None = None
        self._layer_serials: dict[Path, str] = {}
        self._layer_pci: dict[Path, str] = {}  # a cold VM's layer disks' PCI addresses
        self._share_tags: dict[Path, str] = {}
        #: the VM came from the warm pool: layers are SCSI LUNs, mounts subdirs of its share
        self.warm = claimed is not None
        #: ... an image pool VM, which had the pod's layers attached and mounted already
        self.warm_layers = False
        self.guest_kernel: str | None = None
        self.boot_seconds: float | None = None
        #: the uid:gid this VM's QEMU runs as (executor.libvirt.identity); None: libvirt's user
        self.identity: identity.Identity | None = None
        self._before_shares = before_shares
        self._booting = booting
        #: a pidfd on this VM's QEMU (watch_qemu): its exit ends the VM without a libvirt wait
        self._qemu: QemuProcess | None = None
        self._starter: starter.Starter | None = None  # a cold run's, which created the domain
        #: hands a claimed VM back to its pool for teardown (executor.pool.adopt);
        #: :meth:`poweroff` uses it instead of POWEROFF, HyperVMError when it cannot
        self.hand_back: Callable[[], None] | None = None
        self._handed_back = False
        #: requests sent without waiting for their replies, awaited by the next START/EXEC
        self._pipelined: list[PendingReply] = []
        #: host work the next START/EXEC awaits before its reply (a claimed VM's ports)
        self.awaited: list[Callable[[], None]] = []

    # -- paths --------------------------------------------------------------------------------

    @property
    def channel_socket(self) -> Path:
        return self.run_dir / "channel.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    def console_tail(self, lines: int = 20) -> str:
        return console.tail(self.console_log, lines)

    # -- lifecycle ----------------------------------------------------------------------------

    def assign_devices(self) -> None:
        """Name each distinct layer (disk serial) and 9p source (tag, or share subdir)."""
        if not self._layer_serials and not self._share_tags:
            self._layer_serials, self._share_tags = pod_devices(self.pod)

    @property
    def layer_serials(self) -> dict[Path, str]:
        """Each distinct layer file of the pod → its disk serial (after assign_devices)."""
        return dict(self._layer_serials)

    @property
    def share_tags(self) -> dict[Path, str]:
        """Each 9p mount source → its tag (cold) or share subdir (warm)."""
        return dict(self._share_tags)

    def take_over(self, channel: GuestChannel) -> Any:
        """A claimed pool VM (executor.pool.adopt): talk to it over ``channel``; returns the
        libvirt connection to adopt it with. From now on :meth:`destroy` ends it."""
        self._channel = channel
        self.watch_qemu()
        if self._hypervisor is None:
            self._hypervisor = Hypervisor(self.cfg.libvirt_uri)
        return self._hypervisor

    def adopted(self, ready: dict[str, Any], layers_attached: bool, seconds: float) -> None:
        """Record that executor.pool.adopt made this claimed pool VM the pod's."""
        self.warm_layers = layers_attached
        self.guest_kernel = ready.get("kernel")
        self.boot_seconds = seconds

    def domain_spec(self, boot: BootFiles) -> DomainSpec:
        """The pure description of this VM for the libvirt builder."""
        self.assign_devices()
        disks = tuple(DiskSpec(path=p, serial=s) for p, s in self._layer_serials.items())
        shares = tuple(
            ShareSpec(source=src, tag=tag, readonly=self.share_readonly(src))
            for src, tag in self._share_tags.items()
        )
        spec = cold_domain(self.name, boot, self.cfg,
                           RunFiles(self.channel_socket, self.console_log),
                           self.pod.resources, self.pod.network, self.metadata(),
                           disks=disks, shares=shares,
                           identity=self.identity.pair if self.identity is not None else None)
        # pinned disks: the START names each one's address (rootfs.pci); LUNs: none (start)
        self._layer_pci = {d.path: layer_pci_address(d.pci_slot) for d in spec.disks
                           if d.pci_slot is not None}
        return spec

    @property
    def mac_address(self) -> str:
        return network.mac_address(self.name)

    def _owned_shares(self) -> set[Path]:
        return {m.source for c in self.pod.containers for m in c.mounts
                if m.owned and not m.readonly and m.source is not None}

    def give_owned_shares(self) -> None:
        """Sandbox-like mount sources (Mount.owned) become writable by this VM's QEMU user
        (its own identity: nobody else's, mode 0750), else by libvirt's QEMU user."""
        if self._before_shares is not None:
            self._before_shares(self.identity.pair if self.identity is not None else None)
        for source in self._owned_shares():
            if self.identity is not None:
                identity.give(source, self.identity)
            else:
                self._hypervisor.give_to_qemu(source)

    def _end_identity(self) -> None:
        """The VM is gone: its shares go back to root, its uid back to the range."""
        ident, self.identity = self.identity, None
        if ident is None:
            return
        for source in self._owned_shares():
            identity.take_back(source, ident)
        identity.release(self.name)

    def share_readonly(self, source: Path) -> bool:
        return all(m.readonly for c in self.pod.containers for m in c.mounts if m.source == source)

    def metadata(self) -> dict[str, str]:
        return pod_metadata(self.pod)

    def boot(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> None:
        """Create the domain and wait for the guest init's READY (a cold boot; the launcher
        takes a warm VM from the pool instead when one fits). Destroys the VM on failure."""
        started = time.monotonic()
        policy: Future[None] | None = None
        boot = self._boot_files or resolve_boot(self.cfg, accel=self._accel)
        accel = boot.accel
        if self._hypervisor is None:  # with the console script's starter, if it forked one
            self._starter = starter.take()
            self._hypervisor = Hypervisor(self.cfg.libvirt_uri, starter=self._starter)
        try:
            self.identity = identity.for_vm(self.cfg, self._hypervisor, self.name)
            spec = self.domain_spec(boot)
            network.check_host_ports(self.pod.network)
            self.give_owned_shares()
            self._create(spec)
            policy = self._enforce_policy_meanwhile()
            self.watch_qemu()
            # deferred: the guest channel client is first needed once the domain is created
            # (the guest boots meanwhile): ~5 ms of a cold run before createXML (issue 17)
            from executor.guest.channel import GuestChannel

            self._channel = GuestChannel(self.channel_socket)
            if self._booting is not None:
                self._booting()
            if policy is not None:
                policy.result()  # in force before READY: the guest's NIC is up only after it
            ready = self._channel.connect(timeout)
            # the guest configures its network while we hand the VM over: the first START or
            # EXEC is sent behind the request and fails with it (a cold run's START then
            # reaches the guest ~5-25 ms sooner, by then it is busy with the NETWORK)
            self.configure_network(pipelined=True)
            if boot.flushes_after_boot(self.cfg):
                self.flush_when_settled(discard_zeros=boot.discards_zero_pages(self.cfg))
        except HyperVMError as e:
            tail = self.console_tail()
            self.destroy()
            if tail:
                log.info("console of %s:\n%s", self.name, tail)
            if isinstance(e, BootError):
                raise BootError(f"{self.name} did not boot: {e}") from e
            raise
        except BaseException:
            self.destroy()
            raise
        self.guest_kernel = ready.get("kernel")
        self.fail_closed()
        self.boot_seconds = time.monotonic() - started
        log.info("%s ready in %.2f s (guest kernel %s, %s)", self.name, self.boot_seconds,
                 self.guest_kernel, accel)

    def _enforce_policy_meanwhile(self) -> Future[None] | None:
        """The guests' network policy (executor.netpolicy: one ``nft`` run, ~17 ms), installed
        by a thread while the guest boots (started once its domain is created: before, its
        fork, exec and nft took the CPU from the domain's preparation and from libvirtd's
        createXML on a cold run's path), for a pod with a NIC. It is in force before the
        guest's READY is awaited: the guest sends nothing before then (its NIC comes up at
        NETWORK, after READY; it runs nothing of the pod before START)."""
        if self.pod.network.mode == "none":
            return None
        # deferred: first needed once the domain is created (as the guest channel in boot):
        # nft's module and the thread's Future (concurrent.futures) are ~2 ms of a cold run
        # before createXML (issue 17)
        from executor import netpolicy
        from hypervm.background import in_thread  # deferred: see above

        return in_thread("netpolicy", lambda: netpolicy.enforce(self.cfg,
                                                                 network.host_resolv_conf()))

    def fail_closed(self) -> None:
        """Once booted, a broken guest channel destroys the VM: its processes are reported
        lost (by the channel) and nothing of a guest we cannot talk to keeps running."""
        def broken(reason: str) -> None:
            if not self._destroyed:
                log.warning("%s: %s: destroying the VM", self.name, reason)
                self.destroy()

        self.channel.on_disconnect = broken

    def _create(self, spec: DomainSpec) -> None:
        try:
            self._hypervisor.create(spec)
        except HyperVMError as e:
            converted = network.forward_error(e, self.pod.network)
            if converted is None:
                raise
            raise converted from e

    def configure_network(self, *, pipelined: bool = False) -> None:
        """Send the pod's NETWORK request. ``pipelined``: do not wait for its reply here; the
        next START/EXEC is sent behind it (init handles them in order) and waits for both
        replies, so a refused configuration still fails that start (executor.pool.adopt)."""
        hostnames = [c.hostname or c.name for c in self.pod.containers]
        payload = network.guest_config(self.pod.network, self.mac_address, hostnames,
                                       network.host_resolv_conf(), interfaces=not self.warm)
        if payload is None:
            return
        if pipelined:
            self._pipelined.append(self.channel.send_request(MsgType.NETWORK, payload))
        else:
            self.channel.request(MsgType.NETWORK, payload)

    def _settle_pipelined(self) -> None:
        """Wait for the host's :attr:`awaited` work, then the replies to the requests sent
        ahead (:meth:`configure_network`); one that failed destroys the VM (a process may
        have started behind it) and raises."""
        awaited, self.awaited = self.awaited, []
        for wait in awaited:  # first: the pool ends a VM whose ports failed (its NetworkError)
            try:
                wait()
            except HyperVMError:
                self.destroy()
                raise
        pipelined, self._pipelined = self._pipelined, []
        for pending in pipelined:
            try:
                self.channel.wait_reply(pending)
            except HyperVMError as e:
                log.warning("%s: %s failed: destroying the VM", self.name, pending.type.name)
                self.destroy()
                raise HyperVMError(f"{self.name}: the guest did not apply the pod's "
                                   f"{pending.type.name} request: {e}") from e

    def __enter__(self) -> HyperVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def channel(self) -> GuestChannel:
        if self._channel is None:
            raise ProtocolError(f"{self.name} is not booted")
        return self._channel

    # -- processes ----------------------------------------------------------------------------

    def start(self, container: Container,
              on_stdout: Callable[[bytes], None] = _ignore,
              on_stderr: Callable[[bytes], None] = _ignore,
              on_exit: Callable[[ExitStatus], None] = lambda _: None,
              meanwhile: Callable[[], None] | None = None) -> ProcessHandle:
        """Create ``container`` in the VM and start its main process. ``meanwhile`` is
        called once the START is on its way, before its reply is awaited (work that need
        not delay the START: the guest takes ~10 ms under TCG)."""
        sent = self.send_start(container, on_stdout, on_stderr, on_exit)
        return self.wait_started(sent, meanwhile)

    def send_start(self, container: Container,
                   on_stdout: Callable[[bytes], None] = _ignore,
                   on_stderr: Callable[[bytes], None] = _ignore,
                   on_exit: Callable[[ExitStatus], None] = lambda _: None) -> SentProcess:
        """Send :meth:`start`'s START without awaiting its reply (:meth:`wait_started`): a
        pod's STARTs sent back to back are handled by init in order, with no host round trip
        between them (init/PROTOCOL.md rule 2; a group's tasks, executor.mesos.executor)."""
        if container not in self.pod.containers:
            raise HyperVMError(f"container {container.name!r} is not part of pod {self.pod.name}")
        handle = next(self._handles)
        payload = start_payload(
            container.name, handle, [self._layer_serials[p] for p in container.rootfs.layers],
            process_payload(container.process, netspec.port_env(self.pod.network.ports),
                            DEFAULT_PATH),
            readonly=container.rootfs.readonly,
            mounts=[start_mount(m, self._share_tags, self.warm) for m in container.mounts],
            # LUNs (a warm VM's hot-added, a cold one's past its PCI budget): by serial, waited for
            hostname=container.hostname, wait_ms=None if self._layer_pci else LAYER_WAIT_MS,
            pci=[self._layer_pci[p] for p in container.rootfs.layers] if self._layer_pci else None,
            limits=limits_payload(container.limits.memory_mib, container.limits.pids,
                                  container.limits.scratch_mib))
        # deferred: after the boot (see boot()); loaded by then, as the VM has a channel
        from executor.guest.channel import ProcessCallbacks

        return self._send_spawn(MsgType.START, payload, container.name, handle,
                                ProcessCallbacks(on_stdout, on_stderr, on_exit))

    def exec(self, container_name: str, process: Process,
             on_stdout: Callable[[bytes], None] = _ignore,
             on_stderr: Callable[[bytes], None] = _ignore,
             on_exit: Callable[[ExitStatus], None] = lambda _: None) -> ProcessHandle:
        """Start an extra process inside a running container."""
        process.validate("exec.process")
        handle = next(self._handles)
        payload = {"container": container_name, "handle": handle,
                   "process": process_payload(process, netspec.port_env(self.pod.network.ports),
                                              DEFAULT_PATH)}
        # deferred: after the boot (see boot()); loaded by then, as the VM has a channel
        from executor.guest.channel import ProcessCallbacks

        return self.wait_started(self._send_spawn(MsgType.EXEC, payload, container_name, handle,
                                                  ProcessCallbacks(on_stdout, on_stderr,
                                                                   on_exit)))

    def _send_spawn(self, type_: MsgType, payload: dict[str, Any], container: str,
                    handle: int, callbacks: ProcessCallbacks) -> SentProcess:
        channel = self.channel
        channel.register_process(handle, callbacks)
        try:
            return SentProcess(channel.send_request(type_, payload), handle, container)
        except BaseException:
            channel.unregister_process(handle)
            raise

    def wait_started(self, sent: SentProcess,
                     meanwhile: Callable[[], None] | None = None) -> ProcessHandle:
        """The process of a START/EXEC sent (:meth:`send_start`) once its reply came
        (``meanwhile`` called before it is awaited); GuestError when it did not start."""
        channel = self.channel
        try:
            if meanwhile is not None:
                meanwhile()
            self._settle_pipelined()
            reply = channel.wait_reply(sent.pending)
        except BaseException:
            channel.unregister_process(sent.handle)
            raise
        return ProcessHandle(handle=sent.handle, container=sent.container, pid=reply_pid(reply))

    def signal(self, process: ProcessHandle | int, signum: int) -> None:
        handle = process.handle if isinstance(process, ProcessHandle) else process
        self.channel.request(MsgType.SIGNAL, {"handle": handle, "signal": int(signum)})

    def resize(self, process: ProcessHandle, rows: int, cols: int) -> None:
        """Set the window size of a ``tty`` process's terminal."""
        self.channel.request(MsgType.RESIZE, resize_payload(process.handle, rows, cols))

    def send_stdin(self, process: ProcessHandle, data: bytes) -> None:
        self.channel.send_stdin(process.handle, data)

    def ping(self, timeout: float = 5.0) -> None:
        self.channel.request(MsgType.PING, {}, timeout=timeout)

    # -- teardown -----------------------------------------------------------------------------

    def watch_qemu(self) -> None:
        """Hold a pidfd on this running VM's QEMU, so :meth:`poweroff` and :meth:`destroy` see
        its exit without waiting for libvirtd's teardown (executor.libvirt.qemu_process)."""
        if self._qemu is None:
            self._qemu = QemuProcess.of(self.name)

    @property
    def qemu_pid(self) -> int | None:
        """Its QEMU's pid once :meth:`watch_qemu` pinned it (None: unknown)."""
        return self._qemu.pid if self._qemu is not None else None

    def qemu_exited(self) -> bool:
        """QEMU is known to have exited (a pidfd says so); False when unknown."""
        return self._qemu is not None and self._qemu.exited()

    def poweroff(self, timeout: float = 5.0) -> None:
        """Ask init to power off cleanly (a claimed VM: hand it back to its pool, which
        destroys it); destroy the domain if it does not go in time. Returns once QEMU has
        exited: libvirtd (or the pool) finishes the teardown without us."""
        if self._destroyed:
            return
        if self._channel is not None:
            self._channel.on_disconnect = None  # the guest closes it as it goes: expected
        if self._channel is not None and self.hand_back is not None:
            try:
                self.hand_back()  # its QEMU has exited once it returns
                self._handed_back = True
            except HyperVMError as e:
                log.info("%s: the pool did not take it back (%s): powering it off", self.name, e)
        if self._channel is not None and not self._handed_back:
            try:
                self._channel.request(MsgType.POWEROFF, {}, timeout=timeout)
                if self._qemu is not None:
                    if not self._qemu.wait_exit(timeout):
                        log.debug("%s: QEMU still runs %g s after POWEROFF", self.name, timeout)
                elif self._hypervisor is not None:
                    self._hypervisor.wait_gone(self.name, timeout)
            except HyperVMError as e:
                log.debug("clean poweroff of %s failed: %s", self.name, e)
        self.destroy()

    def discard(self, timeout: float = 5.0) -> None:
        """End this VM without asking its guest (its QEMU told to exit, then killed), for a VM
        whose guest holds nothing to keep: 9p shares are uncached (what a process wrote is on
        the host once its write returned), layer disks read-only, writable layers tmpfs in guest
        RAM. No guest power-off; else :meth:`poweroff` (QEMU not watched, a pool's VM). Returns
        once QEMU has exited or the VM's starter child has its end (:meth:`_hand_end`)."""
        if self._destroyed:
            return
        if self._qemu is None or self.hand_back is not None:
            self.poweroff(timeout)
            return
        if self._channel is not None:
            self._channel.on_disconnect = None  # it closes as QEMU goes: expected
        self._qemu.terminate()
        if self._hand_end(timeout):
            return
        if not self._qemu.stop(timeout):
            log.warning("%s: QEMU survived SIGKILL for %g s", self.name, timeout)
        self.destroy()

    def flush_when_settled(self, *, discard_zeros: bool = False) -> None:
        """Drop QEMU's translations :data:`SETTLED_FLUSH_S` from now (a cold VM's once READY,
        a snapshot clone's once started: what its start ran, ~9.5 MiB of an idle clone's
        private memory, is not run again). ``discard_zeros``: then give back the guest RAM
        pages that hold only zeros (a cold VM's memfd RAM; never a clone's private mapping of
        its template, where a discarded page reads as the template's again)."""
        timer = threading.Timer(SETTLED_FLUSH_S, self._settled_flush, (discard_zeros,))
        timer.daemon = True
        self._flush_timer = timer
        timer.start()

    def _settled_flush(self, discard_zeros: bool = False) -> None:
        with self._lock:
            if self._destroyed:
                return
        flush_boot_translations(self._hypervisor, self.name, settled=True)
        if discard_zeros:
            discard_zero_pages(self._hypervisor, self.name)

    def _hand_end(self, timeout: float) -> bool:
        """This VM's end left to the starter child that created it, not waited for (~10 ms of
        QEMU's exit; executor.libvirt.vmend); not with host mounts (their grants are ours) nor
        published ports (free once we return: a next run may take them)."""
        if (held := self._starter) is None or self._share_tags or self.pod.network.ports or \
                not held.hand_end(str(self.run_dir), self.identity is not None, timeout):
            return False
        self.identity = None  # the child's to free, with the run directory
        self.destroy(handed=True)
        return True

    def destroy(self, handed: bool = False) -> None:
        """Destroy the domain, close the channel, remove the run dir; ``handed``: but for the
        channel, the starter child's to do (:meth:`_hand_end`). Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        self.awaited = []  # never awaited (no START): a claimed VM's ports connection closes
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._channel is not None:
            self._channel.close()
        gone = self.qemu_exited()
        if self._qemu is not None:
            self._qemu.close()
        if handed:
            if self._own_hypervisor and self._hypervisor is not None:
                self._hypervisor.close()  # the child holds the domain: nothing auto-destroyed
            return
        if self._hypervisor is not None:
            self._end_domain(gone)
        self._end_identity()
        # deferred: not before createXML (with bz2, lzma: ~2.5 ms, issue 17); the network
        # policy's module, imported while the guest boots, has usually loaded it by now
        import shutil

        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _end_domain(self, qemu_gone: bool) -> None:
        """Destroy the domain unless its QEMU has exited (libvirtd then ends the transient
        domain itself: no libvirt call, which would wait for that); close our connection,
        after that teardown when closing it would auto-destroy the domain."""
        autodestroyed = False
        try:
            if qemu_gone or self._handed_back:  # the pool destroys a VM handed back to it
                autodestroyed = self._hypervisor.forget(self.name)
            else:
                self._hypervisor.destroy(self.name)
        finally:
            if self._own_hypervisor and autodestroyed:
                linger.close_when_gone(self._hypervisor, self.name)
            elif self._own_hypervisor:
                self._hypervisor.close()
