"""A claimed pool VM becomes a pod's HyperVM: the claim (executor.pool.claim), then the pod's
metadata (written by the pool with the claim), layers (hot-added SCSI LUNs, unless an image
pool VM has them already), mounts (binds into QEMU's mount namespace), CPU bound and /etc files.

:func:`claim_vm` returns None whenever the pool cannot serve the pod, leaving nothing behind:
the launcher then boots cold.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from executor.guest.channel import GuestChannel
from executor.libvirt import identity, vcpucap
from executor.libvirt.bounds import CFS_PERIOD_US, resource_bounds
from executor.libvirt.designer import POOL_SHARE_DIR
from executor.libvirt.domain import DiskSpec
from executor.libvirt.domain_xml import hotplug_disk_xml
from executor.podrecord import pod_devices, pod_metadata
from executor.pool import claim as client
from executor.pool.protocol import FIRST_POD_UNIT, Lease, unfit_reason
from executor.vm import HyperVM
from hypervm.background import in_thread
from hypervm.config import HostConfig
from hypervm.errors import HostError, HyperVMError, NetworkError, PoolError
from hypervm.podspec import PodSpec

log = logging.getLogger(__name__)


def claim_vm(cfg: HostConfig, pod: PodSpec, *, hypervisor: Any = None, timeout: float,
             before_shares: Callable[[tuple[int, int] | None], None] | None = None
             ) -> HyperVM | None:
    """A pool VM running ``pod``, or None (nothing left behind) to boot cold. NetworkError,
    as a cold boot raises it, when a port of the pod cannot be published: here when the pool
    refuses it at the claim, else from the first START, which waits for the pool to publish
    the ports (:func:`_adopt`)."""
    if not cfg.pool_socket.exists():
        return None
    res = pod.resources
    started = time.monotonic()
    serials, _ = pod_devices(pod)
    try:
        reason = unfit_reason(pod, res.cpus, res.memory_mib)
        if reason is not None:
            raise PoolError(reason)
        lease, sock, ports = client.claim_ports_later(
            cfg, res.cpus, res.memory_mib, pod_metadata(pod), [str(path) for path in serials],
            ports=pod.network.ports, image=pod.image)
    except PoolError as e:  # a NetworkError (a port it cannot have) propagates: cold fails alike
        log.info("%s: no warm VM (%s): booting cold", pod.name, e)
        return None
    vm = HyperVM(cfg, pod, hypervisor=hypervisor, claimed=lease.vm, run_dir=lease.run_dir,
                 before_shares=before_shares)
    vm.assign_devices()
    try:
        ready = _adopt(vm, lease, sock, timeout, ports)
    except (KeyboardInterrupt, NetworkError):  # the pool lost a port: cold would fail alike
        vm.destroy()
        sock.close()
        raise
    except HyperVMError as e:
        log.warning("%s: warm VM %s failed (%s): booting cold", pod.name, lease.vm, e)
        vm.destroy()
        sock.close()  # when the failure came before the channel took it
        return None
    vm.adopted(ready, lease.layers_attached, time.monotonic() - started)
    vm.hand_back = functools.partial(client.release, cfg, lease.vm)
    vm.fail_closed()
    log.info("%s: warm VM %s%s ready in %.3f s", pod.name, vm.name,
             " (layers attached)" if vm.warm_layers else "", vm.boot_seconds)
    return vm


def _adopt(vm: HyperVM, lease: Lease, sock: Any, timeout: float,
           ports: client.PortsPending | None) -> dict[str, Any]:
    """Make the claimed VM ours and give it the pod: metadata, layers, mounts, bounds; its
    ``ports``, published by the pool meanwhile, are awaited by the first START before its
    reply (HyperVM.awaited: the START's guest work overlaps the pool's monitor round
    trips), so the pod is reported running only once they are published, and a port the
    pool could not publish fails that START (the pool destroyed the VM)."""
    try:
        ready = _give_pod(vm, lease, sock, timeout)
    except BaseException:
        if ports is not None:
            ports.wait(timeout)  # closes it; raises when not published (even after a failure)
        raise
    if ports is not None:
        vm.awaited.append(functools.partial(ports.wait, timeout))
    return ready


def _give_pod(vm: HyperVM, lease: Lease, sock: Any, timeout: float) -> dict[str, Any]:
    hv = vm.take_over(GuestChannel(vm.channel_socket))
    hv.adopt(vm.name)  # the pool wrote our metadata and made us the owner
    # the CPU bound, in force from here on (the START comes after): written into the vCPUs'
    # cgroups (~0.3 ms), not through libvirtd's setSchedulerParameters (~5-15 ms)
    bound_pool_vcpus(vm, hv)
    # the pool VM's own uid, given at its boot: the pool says which (no libvirt round trip)
    pair = lease.identity if lease.identity_known else hv.vm_identity(vm.name)
    vm.identity = identity.Identity(*pair) if pair is not None else None
    # the channel first and the NETWORK sent ahead: the guest applies it while the host
    # gives the devices (the shares' grant records are fsynced, the binds run); no START
    # (which mounts the shares, its layers) before they are given
    ready = vm.channel.attach(sock, timeout, lease.ready)
    vm.configure_network(pipelined=True)  # its reply is awaited with the first START's
    binds: list[Any] = []
    try:
        # an image pool VM has exactly our layers already
        give_devices(vm, hv, binds, attach_layers=not lease.layers_attached, cpu_bound=False)
    finally:
        client.wait_binds(binds)
    return ready


_VCPU_DIR = re.compile(r"vcpu[0-9]+")


def bound_pool_vcpus(vm: HyperVM, hv: Any) -> None:
    """Give a claimed pool VM the pod's CPU bound (if any) before anything of the pod runs in
    it: the CFS quota written into each of its vCPU threads' cgroups (libvirt's ``…/vcpuN``),
    as libvirt's setSchedulerParameters would (executor.libvirt.vcpucap: root writes only
    root's cgroupfs, under the domain's cgroup read from the kernel's view of QEMU, whose pid
    comes from libvirt's root-owned pid file). A pool VM's vCPUs are fixed (no hot-plug, no
    later libvirt bound to undo it); its live XML shows no ``<cputune>``, libvirt's
    scheduler parameters (read from the cgroups) show the bound. Through libvirt when the
    host's layout is not libvirt's usual one; HyperVMError when the bound cannot be set."""
    cputune, _ = resource_bounds(vm.pod.resources)
    if cputune.empty:
        return
    try:
        domain = vcpucap.domain_cgroup(_qemu_pid(vm, hv))
        present = sum(1 for entry in domain[0].iterdir() if _VCPU_DIR.fullmatch(entry.name))
        vcpucap.grant(domain, range(max(present, vm.pod.resources.cpus)), cputune.quota_us,
                      cputune.period_us or CFS_PERIOD_US)
    except (HostError, OSError) as e:
        log.info("%s: CPU bound through libvirt (%s)", vm.name, e)
        hv.set_cpu_bounds(vm.name, cputune)


def _qemu_pid(vm: HyperVM, hv: Any) -> int:
    pid = hv.qemu_pid(vm.name)
    if pid is None:
        raise HostError(f"no QEMU pid file for {vm.name}")
    return int(pid)


def start_cpu_bounds(vm: HyperVM, hv: Any) -> Future[None] | None:
    """Set the pod's CPU bound on the VM on a thread of its own (None: it has none); the
    caller waits for it before anything starts in the VM (:func:`give_devices` does)."""
    cputune, _ = resource_bounds(vm.pod.resources)
    if cputune.empty:
        return None
    return in_thread(f"cpu-bounds-{vm.name}", hv.set_cpu_bounds, vm.name, cputune)


def give_devices(vm: HyperVM, hv: Any, binds: list[Any], *, attach_layers: bool = True,
                 cpu_bound: bool = True) -> None:
    """Give a VM that booted without them (a claimed pool VM, a snapshot clone) the pod's
    owned shares, layers (hot-added LUNs, unless ``attach_layers`` is False), mounts (binds
    into QEMU's mount namespace, started into ``binds``: the caller waits for them with
    ``claim.wait_binds``, also when this raises) and CPU bound; its memory was bounded when
    its domain was made. The CPU bound (~5 ms in libvirtd) is set on a thread of its own
    (:func:`start_cpu_bounds`) meanwhile; it is in place when this returns.
    ``cpu_bound=False``: the caller set it already (a claimed pool VM:
    :func:`bound_pool_vcpus`)."""
    bounds = start_cpu_bounds(vm, hv) if cpu_bound else None
    try:
        vm.give_owned_shares()
        if attach_layers:
            give_layers(vm, hv)
        if vm.share_tags:
            qemu_pid = hv.qemu_pid(vm.name)
            if qemu_pid is None:
                raise HyperVMError(f"no QEMU process for {vm.name}")
            for source, tag in vm.share_tags.items():
                target = vm.run_dir / POOL_SHARE_DIR / tag
                target.mkdir()
                binds.append(client.start_bind(qemu_pid, source, target,
                                               vm.share_readonly(source)))
    except BaseException:
        if bounds is not None:
            bounds.exception()  # never left running: the caller destroys the VM
        raise
    if bounds is not None:
        bounds.result()  # its HypervisorError, if any


def give_layers(vm: HyperVM, hv: Any) -> None:
    """The pod's layers as hot-added SCSI LUNs, from the first unit a pod's disks take."""
    for unit, (path, serial) in enumerate(vm.layer_serials.items(), FIRST_POD_UNIT):
        hv.attach_device(vm.name, hotplug_disk_xml(DiskSpec(path=path, serial=serial), unit))
