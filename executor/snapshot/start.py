"""A pod's VM started from a snapshot (``HYPERVM_SNAPSHOT=on``): the launcher's path when no
pool VM serves the pod. The snapshot is made once per host for each memory size and tenant
(the first such launch pays a template boot, executor.snapshot.template), with 2 vCPUs present
(the second offline) of a capacity of ``HYPERVM_SNAPSHOT_VCPUS``
(store.template_shape): pods of 1 to that many vCPUs share it, their second onlined, further
ones hot-plugged after the load. Every later launch:

1. a clone domain of its own name, UUID, run dir and uid, auto-destroyed with our libvirt
   connection like a cold VM, waiting for a migration stream (designer.clone_domain);
2. the template's state loaded into it (executor.libvirt.migration; with HyperQEMU's
   ``ram-template`` its RAM mapped copy-on-write from the template's memory file first, the
   stream then holds only the devices), and it runs;

   or, when the warm pool daemon has a *standby* of the shape (executor.snapshot.standby),
   the daemon did 1 and 2 ahead of time, reseeded it and ran a throwaway container in it (so
   TCG has translated what a START runs): the standby becomes ours as a claimed pool VM does
   (the daemon records us as its owner, hands us its channel's socket), and 3 gives it a
   seed of its own all the same. Without one (no daemon, none ready, or one that fails) the
   launch does 1 and 2 itself;
3. the spare present vCPU capped on the host unless the pod has it (executor.libvirt.vcpucap:
   from before the load, or by the daemon for a standby; granted the pod's bound before
   RESEED; capped again after libvirt's CPU bound, before any START), the pod's vCPUs beyond
   the present ones hot-plugged (libvirt: each in a cgroup with the CPU quota; in a thread of
   its own, overlapping RESEED, whose ``cpus`` has init wait for them), and RESEED with fresh
   host entropy before anything else (every clone of a snapshot starts with the template's
   kernel RNG state: init/PROTOCOL.md RESEED), which also has init bring the pod's vCPUs
   online (no more). A clone that cannot be reseeded is destroyed, never used;
4. the pod, as on a claimed pool VM: layers hot-added as SCSI LUNs, mount sources bound into
   the share's subdirectories in QEMU's mount namespace, the CPU bound, the /etc files.

The host's side of 4 overlaps 2 and 3 (one helper thread): the owned shares, binds and CPU
bound while QEMU loads the state (they need its process, not its guest; on a standby, with its
layers),
the layers while the guest handles RESEED (a hot-added LUN needs a running guest; nothing of
the pod runs before START).

:func:`start_vm` returns None whenever the snapshot path cannot serve the pod, leaving nothing
behind: the launcher then boots cold.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from executor import netpolicy, network
from executor.guest.channel import GuestChannel, connect_socket
from executor.guest.protocol import RESEED_BYTES, MsgType, reseed_payload
from executor.libvirt import identity, migration, qmp, vcpucap
from executor.libvirt.bounds import resource_bounds
from executor.libvirt.designer import POOL_SHARE_DIR, clone_domain, present_vcpus
from executor.podrecord import pod_metadata
from executor.pool import claim as binder
from executor.pool.adopt import give_devices, give_layers
from executor.pool.protocol import Lease
from executor.snapshot import standby, store, template
from executor.snapshot.store import Shape, Snapshot
from executor.vm import HyperVM
from hypervm.background import in_thread
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, NetworkError
from hypervm.podspec import PodSpec
from vmimage.boot import BootFiles, resolve_boot

log = logging.getLogger(__name__)

#: a standby taken from the pool daemon: its lease and its guest channel's connected socket
Taken = tuple[Lease, socket.socket]

LOAD_TIMEOUT = 30.0
#: root's socket in the clone's run dir its QEMU connects a monitor to (executor.libvirt.qmp)
QMP_SOCKET = "qmp.sock"


def unfit_reason(pod: PodSpec) -> str | None:
    """Why a clone cannot run ``pod`` (None: it can). A clone has the template's NIC: a pod
    without a NIC needs a cold boot. Published ports are added to a running clone as to a
    claimed pool VM (``network.publish_live``)."""
    if pod.network.mode != "user":
        return f"the pod's network mode is {pod.network.mode!r} (clones have a NIC)"
    return None


def start_vm(cfg: HostConfig, pod: PodSpec, *, hypervisor: Any = None, timeout: float,
             boot_files: BootFiles | None = None, accel: str | None = None,
             before_shares: Callable[[tuple[int, int] | None], None] | None = None
             ) -> HyperVM | None:
    """A VM started from the snapshot of ``pod``'s shape, running nothing yet, or None (nothing
    left behind) to boot cold. The first start of a shape makes its snapshot (a template boot,
    a few seconds under TCG). Logs where the time went (bench/launch.py reads it)."""
    reason = unfit_reason(pod)
    if reason is not None:
        log.info("%s: no snapshot start (%s): booting cold", pod.name, reason)
        return None
    network.check_host_ports(pod.network)  # the cold boot's check and error, before a VM starts
    started = time.monotonic()
    shape = Shape(pod.resources.cpus, pod.resources.memory_mib, pod.network.tenant)
    try:
        boot = boot_files or resolve_boot(cfg, accel=accel)
    except HyperVMError as e:
        log.warning("%s: no start from a snapshot (%s): booting cold", pod.name, e)
        return None
    snap, taken = _standby(cfg, pod, boot, shape)
    start = functools.partial(_start, cfg, pod, boot, shape, hypervisor=hypervisor,
                              timeout=timeout, before_shares=before_shares, started=started)
    if taken is not None:
        vm = start(snap, taken)
        if vm is not None:
            return vm
        log.info("%s: the standby %s failed: starting a clone of its own", pod.name,
                 taken[0].vm)
    return start(snap, None)


def _start(cfg: HostConfig, pod: PodSpec, boot: BootFiles, shape: Shape,
           snap: Snapshot | None, taken: Taken | None, *, hypervisor: Any, timeout: float,
           before_shares: Callable[[tuple[int, int] | None], None] | None,
           started: float) -> HyperVM | None:
    """:func:`start_vm` on the standby ``taken``, or on a clone of its own (None)."""
    lease, sock = taken if taken is not None else (None, None)
    name = lease.vm if lease is not None else f"hypervm-{pod.name}-{uuid.uuid4().hex[:8]}"
    vm = HyperVM(cfg, pod, hypervisor=hypervisor, claimed=name,
                 run_dir=lease.run_dir if lease is not None else None,
                 before_shares=before_shares)
    marks = [("start", started)]
    spent: dict[str, float] = {}  # spans that overlap marks' (the vCPUs' hot-plug)
    publishing = False
    binds: list[Any] = []  # mounts being bound into QEMU's mount namespace
    try:
        vm.assign_devices()
        hv = vm.take_over(GuestChannel(vm.channel_socket))
        if snap is None:  # another shape's template may hold the store: no longer than our timeout
            snap = template.ensure(cfg, boot, hv, shape, wait=timeout)
        else:  # found by _standby: one more clone of it (the store rotates it after N)
            store.count_clone(snap)
        marks.append(("snapshot", time.monotonic()))
        ready = _clone(vm, hv, boot, snap, marks, binds, taken, spent)
        # its ports as a claimed pool VM takes them; one QEMU cannot have (a race lost after
        # the check) fails the launch as it would fail a cold boot
        publishing = True
        network.publish_live(hv, name, pod.network)
        publishing = False
        try:  # its reply is awaited with the first START's, as on a claimed pool VM
            vm.configure_network(pipelined=True)
        finally:
            binder.wait_binds(binds)  # no START (which mounts them) before they are done
        marks.append(("pod", time.monotonic()))
    except HyperVMError as e:
        _abandon(vm, binds, sock)
        if publishing and isinstance(e, NetworkError):
            raise
        log.warning("%s: no start from a snapshot%s (%s)%s", pod.name,
                    f" on the standby {name}" if lease is not None else "", e,
                    "" if lease is not None else ": booting cold")
        return None
    except BaseException:
        _abandon(vm, binds, sock)
        raise
    vm.adopted(ready, False, time.monotonic() - started)
    vm.fail_closed()
    if boot.flushes_after_boot(cfg):  # as a cold VM's, off the launch's clock
        vm.flush_when_settled()
    spans = ", ".join([f"{b} {t1 - t0:.3f}"
                       for (_, t0), (b, t1) in zip(marks, marks[1:], strict=False)]
                      + [f"{k} {v:.3f}" for k, v in spent.items()])
    log.info("%s: %s started from snapshot %s%s in %.3f s (%s)", pod.name, name,
             snap.state.parent.name, " (standby)" if lease is not None else "",
             vm.boot_seconds, spans)
    return vm


def _standby(cfg: HostConfig, pod: PodSpec, boot: BootFiles, shape: Shape
             ) -> tuple[Snapshot | None, Taken | None]:
    """The store's snapshot for ``shape`` (None: none yet) and, when there is one, a standby
    clone of it from the pool daemon (None: none ready; executor.snapshot.standby): standbys
    are kept per template (memory size, tenant), whatever vCPUs the pod then gets."""
    snap = store.lookup(cfg, store.snapshot_key(boot, cfg, shape))
    if snap is None:
        return None, None
    return snap, standby.take(cfg, store.template_shape(cfg, shape), snap.state.parent.name,
                              snap.template, pod_metadata(pod))


def _clone(vm: HyperVM, hv: Any, boot: BootFiles, snap: Snapshot,
           marks: list[tuple[str, float]], binds: list[Any], taken: Taken | None = None,
           spent: dict[str, float] | None = None) -> dict[str, Any]:
    """Create the clone and load the snapshot into it, let it run and reseed its RNG; or take
    the standby ``taken``, in which the pool daemon did all that (and made its run dir, uid
    and network policy), and reseed it again. Give it the pod's devices (the mounts' binds
    started into ``binds``); its READY payload. Appends when each step ended to ``marks``,
    and how long the hot-plug of the pod's further vCPUs took to ``spent`` (``vcpus``): on a
    standby it starts first, its guest's hot-add (ACPI, the new CPU's set-up: ~0.05-0.08 s
    under TCG) overlapping the rest of ours; on a clone of its own once the state is loaded."""
    cfg = vm.cfg
    spent = {} if spent is None else spent
    cpus = vm.pod.resources.cpus
    present = present_vcpus(_capacity(vm), cfg.snapshot_vcpus)
    if taken is None:
        monitor = _create(vm, hv, boot, snap)
    else:
        lease = taken[0]
        hv.adopt(vm.name)  # the pool wrote our metadata and made us the owner
        vm.identity = identity.Identity(*lease.identity) if lease.identity is not None else None
    marks.append(("create", time.monotonic()))
    pid = hv.qemu_pid(vm.name)
    cputune = resource_bounds(vm.pod.resources)[0]
    # the spares capped (a clone of its own: before its state is loaded, no guest code ran
    # yet; a standby: the daemon capped them at its creation), the pod's present vCPUs
    # granted before RESEED onlines them; a clone of more vCPUs than that (a standby of
    # another template) refused
    vcpucap.bound(pid, present, cpus, cputune, exact=True)
    # on leaving, the helper's running step is waited for (an error then is the first one's)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{vm.name}-devices") as helper, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{vm.name}-vcpus") as plugger:
        steps: list[Future[Any]] = []
        if cpus > present and taken is not None:  # a standby runs: its vCPUs first
            steps.append(plugger.submit(_plug, hv, vm.name, cpus, spent))
        # a standby runs already: its layers can be hot-added at once
        steps.append(helper.submit(give_devices, vm, hv, binds,
                                   attach_layers=taken is not None))
        if taken is None:
            try:
                migration.restore(monitor, vm.name, snap.state, LOAD_TIMEOUT, snap.memory)
            except HyperVMError:
                store.discard(cfg, snap)  # e.g. a QEMU the key did not tell apart: anew
                raise
            finally:
                if monitor is not hv:  # it runs guest code now: our monitor is closed
                    monitor.close()
            steps[-1].result()
            steps.append(helper.submit(give_layers, vm, hv))  # a LUN needs a loaded guest
            sock, given = connect_socket(vm.channel_socket, LOAD_TIMEOUT), snap.ready
        else:
            sock, given = taken[1], taken[0].ready
        marks.append(("load", time.monotonic()))
        if cpus > present and taken is None:  # beyond the template's present ones:
            # hot-plugged while init reseeds (RESEED's cpus has it wait for them, online them)
            steps.append(plugger.submit(_plug, hv, vm.name, cpus, spent))
        ready = vm.channel.attach(sock, LOAD_TIMEOUT, given)
        # before anything else runs in it: a clone's kernel RNG is the template's until now
        # (a standby was reseeded by the daemon: this one is the pod's own, all the same)
        vm.channel.request(MsgType.RESEED, reseed_payload(os.urandom(RESEED_BYTES),
                                                          cpus=cpus if cpus > 1 else None))
        marks.append(("reseed", time.monotonic()))
        for step in steps:
            step.result()
    # libvirt's CPU bound (give_devices) wrote every vCPU's cgroup: the spares capped again
    # before any START runs the pod's code
    vcpucap.bound(pid, present, cpus, cputune)
    marks.append(("layers", time.monotonic()))
    return ready


def _plug(hv: Any, name: str, cpus: int, spent: dict[str, float]) -> None:
    """Hot-plug the pod's vCPUs (libvirt: each in a cgroup with the CPU quota); the seconds
    libvirt took into ``spent["vcpus"]`` (the start's log line; it overlaps the spans)."""
    began = time.monotonic()
    hv.set_vcpus(name, cpus)
    spent["vcpus"] = time.monotonic() - began


def _capacity(vm: HyperVM) -> int:
    """The vCPU capacity of the template ``vm``'s pod is cloned from."""
    res = vm.pod.resources
    return store.template_shape(vm.cfg, Shape(res.cpus, res.memory_mib)).vcpus


def _create(vm: HyperVM, hv: Any, boot: BootFiles, snap: Snapshot) -> Any:
    """Create the clone domain of ``snap`` for ``vm``, waiting for the stream; the monitor
    its load goes through: a QMP connection of ours (executor.libvirt.qmp: ~0.1 ms a command
    where libvirt's pass-through takes 1.5-5), else ``hv`` (its pid unknown)."""
    cfg = vm.cfg
    qmp_socket = vm.run_dir / QMP_SOCKET
    # the guests' network policy, as for any VM with a NIC: the snapshot may outlive the
    # nftables table that was in force when its template booted (a host reboot). A thread
    # installs it while the domain is prepared; joined before the clone's QEMU exists (its
    # guest runs, NIC up, as soon as the state is loaded)
    policy = in_thread("netpolicy", netpolicy.enforce, cfg, network.host_resolv_conf())
    try:
        vm.identity = identity.for_vm(cfg, hv, vm.name)
        spec = clone_domain(vm.name, snap.template, boot, cfg, vm.run_dir, _capacity(vm),
                            vm.pod.resources.memory_mib, pod_metadata(vm.pod),
                            identity=vm.identity.pair if vm.identity is not None else None,
                            monitor_args=qmp.qemu_args(qmp_socket))
        hv.prepare_run_dir(vm.run_dir, spec.identity)
        (vm.run_dir / POOL_SHARE_DIR).mkdir(mode=0o755)
        listener = qmp.Listener.open(qmp_socket)  # before QEMU starts: it connects at once
    except BaseException:
        policy.exception()  # waited for: nothing of a failed start runs on
        raise
    try:
        policy.result()  # its error: no policy, no clone
        hv.create(spec)
        vm.watch_qemu()  # its end is then its QEMU's exit, not libvirtd's teardown
        pid = vm.qemu_pid
        if pid is None:
            log.debug("%s: its QEMU's pid is unknown: loading through libvirt", vm.name)
            return hv
        return listener.accept(pid)
    finally:
        listener.close()


def _abandon(vm: HyperVM, binds: list[Any], sock: socket.socket | None = None) -> None:
    """A start that failed: its binds done (no mount process outlives it), its VM destroyed
    (and a standby's channel socket closed, when the channel had not taken it yet)."""
    if sock is not None:
        sock.close()
    try:
        binder.wait_binds(binds)
    except HyperVMError as e:
        log.debug("%s: a bind failed too: %s", vm.name, e)
    finally:
        vm.destroy()
