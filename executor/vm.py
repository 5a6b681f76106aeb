"""HyperVM: one pod in one VM — the orchestration between PodSpec, libvirt and the guest init.

Side effects live in the modules this one drives (executor.hypervisor for libvirt,
executor.guest_channel for the socket); here: naming, the per-VM run directory, which layer
images become which disks, the boot/teardown sequence and the process bookkeeping.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor import network
from executor.agent_protocol import ExitStatus, MsgType, limits_payload
from executor.bounds import resource_bounds
from executor.config import HostConfig
from executor.domain import DiskSpec, DomainSpec, ShareSpec
from executor.errors import BootError, HyperVMError, PoolError, ProtocolError
from executor.guest_channel import GuestChannel, ProcessCallbacks
from executor.podspec import DEFAULT_PATH, Container, PodSpec, Process
from executor.pool_spec import FIRST_POD_UNIT, LAYER_WAIT_MS, POOL_SHARE_TAG, layer_serial

log = logging.getLogger(__name__)

#: the guest kernel's command line; quiet keeps TCG boots fast (the console is a slow UART);
#: pci=noacpi: ACPI IRQ routing costs ~0.19 s per virtio device under TCG (bench: HyperVM boot
#: 2.12 -> 1.41 s); ACPI itself stays, the guest powers off through it
BASE_CMDLINE = ("console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check "
                "noreplace-smp pci=noacpi")
DEFAULT_BOOT_TIMEOUT = 60.0


def flush_boot_translations(hypervisor: Any, name: str) -> None:
    """Give a READY VM's boot translations back to the host (TCG, HyperQEMU): they are most of
    an idle VM's translation buffer and the guest never runs that code again. A failure costs
    only memory, so it is logged, not raised."""
    try:
        hypervisor.flush_tcg(name)
    except HyperVMError as e:
        log.warning("%s keeps its boot's TCG translations: %s", name, e)


@dataclass(frozen=True)
class ProcessHandle:
    handle: int
    container: str
    pid: int


def _ignore(_: bytes) -> None:
    pass


class HyperVM:
    """Boot with :meth:`boot`, run with :meth:`start`/:meth:`exec`, end with :meth:`destroy`.

    Usable as a context manager: leaving the block destroys the VM whatever happened.
    """

    def __init__(self, cfg: HostConfig, pod: PodSpec, *, hypervisor: Any = None,
                 accel: str | None = None) -> None:
        pod.validate()
        self.cfg = cfg
        self.pod = pod
        self.name = f"hypervm-{pod.name}-{uuid.uuid4().hex[:8]}"
        self.run_dir = cfg.vms_dir / self.name
        self._hypervisor = hypervisor
        self._own_hypervisor = hypervisor is None
        self._accel = accel
        self._channel: GuestChannel | None = None
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self._destroyed = False
        self._layer_serials: dict[Path, str] = {}
        self._share_tags: dict[Path, str] = {}
        #: the VM came from the warm pool: layers are SCSI LUNs, mounts subdirs of its share
        self.warm = False
        #: ... an image pool VM, which had the pod's layers attached and mounted already
        self.warm_layers = False
        self.guest_kernel: str | None = None
        self.boot_seconds: float | None = None

    # -- paths --------------------------------------------------------------------------------

    @property
    def channel_socket(self) -> Path:
        return self.run_dir / "channel.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    def console_tail(self, lines: int = 20) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------

    def _assign_devices(self) -> None:
        """Name each distinct layer (disk serial) and 9p source (tag, or share subdir)."""
        for container in self.pod.containers:
            for layer in container.rootfs.layers:
                self._layer_serials.setdefault(layer, layer_serial(len(self._layer_serials)))
            for mount in container.mounts:
                if mount.type == "9p" and mount.source is not None:
                    self._share_tags.setdefault(mount.source, f"s{len(self._share_tags)}")

    def domain_spec(self, kernel: Any, initrd: Path, accel: str,
                    emulator: Path | None = None) -> DomainSpec:
        """The pure description of this VM for the libvirt builder."""
        self._assign_devices()
        disks = tuple(DiskSpec(path=p, serial=s) for p, s in self._layer_serials.items())
        shares = tuple(
            ShareSpec(source=src, tag=tag, readonly=self._share_readonly(src))
            for src, tag in self._share_tags.items()
        )
        cmdline = " ".join(filter(None, [BASE_CMDLINE, getattr(kernel, "cmdline_extra", "")]))
        cputune, memtune = resource_bounds(self.pod.resources)
        return DomainSpec(
            name=self.name,
            accel=accel,
            vcpus=self.pod.resources.cpus,
            memory_mib=self.pod.resources.memory_mib,
            kernel=kernel.path,
            initrd=initrd,
            cmdline=cmdline,
            channel_socket=self.channel_socket,
            console_log=self.console_log,
            disks=disks,
            shares=shares,
            metadata=self._metadata(),
            cputune=cputune,
            memtune=memtune,
            qemu_args=network.qemu_args(self.pod.network, self.mac_address),
            tb_cache_mib=self.cfg.tb_cache_mib,
            free_page_reporting=self.cfg.free_page_reporting,
            emulator=emulator,
        )

    @property
    def mac_address(self) -> str:
        return network.mac_address(self.name)

    def _give_owned_shares(self) -> None:
        """Sandbox-like mount sources (Mount.owned) become writable by QEMU's user."""
        for source in {m.source for c in self.pod.containers for m in c.mounts
                       if m.owned and not m.readonly and m.source is not None}:
            self._hypervisor.give_to_qemu(source)

    def _share_readonly(self, source: Path) -> bool:
        return all(m.readonly for c in self.pod.containers for m in c.mounts if m.source == source)

    def _metadata(self) -> dict[str, str]:
        meta = {"pod": self.pod.name}  # the hypervisor stamps the owner pid
        meta.update({f"label.{k}": v for k, v in self.pod.labels})
        meta["tenant"] = self.pod.network.tenant
        meta.update({f"port.{i}": m.describe() for i, m in enumerate(self.pod.network.ports)})
        return meta

    def boot(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> None:
        """Take a warm VM from the pool when one serves and the pod fits it; else create the
        domain and wait for the guest init's READY. Destroys the VM on failure."""
        if self.cfg.use_pool and self._boot_warm(timeout):
            return
        self._boot_cold(timeout)

    def _boot_warm(self, timeout: float) -> bool:
        """True when a pool VM now runs this pod; False (nothing left behind) to boot cold."""
        from executor import warm
        from executor.pool_spec import unfit_reason

        if not self.cfg.pool_socket.exists():
            return False
        res = self.pod.resources
        reason = unfit_reason(self.pod, res.cpus, res.memory_mib)
        started = time.monotonic()
        try:
            if reason is not None:
                raise PoolError(reason)
            self._assign_devices()
            lease, sock = warm.claim(self.cfg, res.cpus, res.memory_mib, self._metadata(),
                                     [str(path) for path in self._layer_serials])
        except PoolError as e:
            log.info("%s: no warm VM (%s): booting cold", self.pod.name, e)
            return False
        cold_name, cold_dir = self.name, self.run_dir
        self.name, self.run_dir, self.warm = lease.vm, lease.run_dir, True
        try:
            self._adopt(lease, sock, timeout)
        except KeyboardInterrupt:
            self.destroy()
            sock.close()
            raise
        except HyperVMError as e:
            log.warning("%s: warm VM %s failed (%s): booting cold", self.pod.name, lease.vm, e)
            self.destroy()
            sock.close()  # when the failure came before the channel took it
            self.name, self.run_dir, self.warm = cold_name, cold_dir, False
            self.warm_layers = False
            self._destroyed, self._channel = False, None
            if self._own_hypervisor:  # destroy() closed it
                self._hypervisor = None
            self._layer_serials, self._share_tags = {}, {}
            return False
        self.boot_seconds = time.monotonic() - started
        log.info("%s: warm VM %s%s ready in %.3f s", self.pod.name, self.name,
                 " (layers attached)" if self.warm_layers else "", self.boot_seconds)
        return True

    def _adopt(self, lease: Any, sock: Any, timeout: float) -> None:
        """Make the claimed VM ours and give it the pod: metadata, layers, mounts, bounds."""
        from executor import warm
        from executor.hypervisor import Hypervisor
        from executor.libvirt_xml import hotplug_disk_xml
        from executor.pool_spec import SHARE_DIR

        channel = GuestChannel(self.channel_socket)
        self._channel = channel
        if self._hypervisor is None:
            self._hypervisor = Hypervisor(self.cfg.libvirt_uri)
        hv = self._hypervisor
        hv.adopt(self.name)  # the pool wrote our metadata and made us the owner
        self._give_owned_shares()
        self.warm_layers = lease.layers_attached
        if not lease.layers_attached:  # an image pool VM has exactly our layers already
            for unit, (path, serial) in enumerate(self._layer_serials.items(), FIRST_POD_UNIT):
                hv.attach_device(self.name, hotplug_disk_xml(DiskSpec(path=path, serial=serial),
                                                             unit))
        binds = []
        try:
            if self._share_tags:
                qemu_pid = hv.qemu_pid(self.name)
                if qemu_pid is None:
                    raise HyperVMError(f"no QEMU process for {self.name}")
                for source, tag in self._share_tags.items():
                    target = self.run_dir / SHARE_DIR / tag
                    target.mkdir()
                    binds.append(warm.start_bind(qemu_pid, source, target,
                                                 self._share_readonly(source)))
            cputune, _ = resource_bounds(self.pod.resources)  # memory: bounded at boot (shape)
            if not cputune.empty:
                hv.set_cpu_bounds(self.name, cputune)
            # while the binds run: no START (which mounts them) before they are done
            ready = channel.attach(sock, timeout, lease.ready)
            self.guest_kernel = ready.get("kernel")
            self._configure_network()
        finally:
            warm.wait_binds(binds)

    def _boot_cold(self, timeout: float) -> None:
        from executor.accel import detect_accel
        from executor.hypervisor import Hypervisor
        from vmimage.initrd import ensure_initrd
        from vmimage.kernel import find_kernel
        from vmimage.qemu import find_qemu

        started = time.monotonic()
        kernel = find_kernel(self.cfg)
        initrd = ensure_initrd(self.cfg, kernel)
        accel = self._accel or detect_accel(self.cfg)
        qemu = find_qemu(self.cfg)
        if self._hypervisor is None:
            self._hypervisor = Hypervisor(self.cfg.libvirt_uri)
        spec = self.domain_spec(kernel, initrd, accel, qemu.emulator)
        try:
            network.check_host_ports(self.pod.network)
            self._give_owned_shares()
            self._create(spec)
            self._channel = GuestChannel(self.channel_socket)
            ready = self._channel.connect(timeout)
            self._configure_network()
            if qemu.flushes_after_boot(self.cfg, accel):
                flush_boot_translations(self._hypervisor, self.name)
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
        self.boot_seconds = time.monotonic() - started
        log.info("%s ready in %.2f s (guest kernel %s, %s)", self.name, self.boot_seconds,
                 self.guest_kernel, accel)

    def _create(self, spec: DomainSpec) -> None:
        try:
            self._hypervisor.create(spec)
        except HyperVMError as e:
            converted = network.forward_error(e, self.pod.network)
            if converted is None:
                raise
            raise converted from e

    def _configure_network(self) -> None:
        hostnames = [c.hostname or c.name for c in self.pod.containers]
        payload = network.guest_config(self.pod.network, self.mac_address, hostnames,
                                       network.host_resolv_conf(), interfaces=not self.warm)
        if payload is not None:
            self.channel.request(MsgType.NETWORK, payload)

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
              on_exit: Callable[[ExitStatus], None] = lambda _: None) -> ProcessHandle:
        """Create ``container`` in the VM and start its main process."""
        if container not in self.pod.containers:
            raise HyperVMError(f"container {container.name!r} is not part of pod {self.pod.name}")
        handle = next(self._handles)
        rootfs: dict[str, Any] = {
            "layers": [self._layer_serials[p] for p in container.rootfs.layers],
            "readonly": container.rootfs.readonly,
        }
        if self.warm:
            rootfs["wait_ms"] = LAYER_WAIT_MS
        payload: dict[str, Any] = {
            "container": container.name,
            "handle": handle,
            "rootfs": rootfs,
            "mounts": [self._mount_payload(m) for m in container.mounts],
            "hostname": container.hostname or container.name,
            "process": process_payload(container.process,
                                       network.port_env(self.pod.network.ports)),
        }
        limits = limits_payload(container.limits.memory_mib, container.limits.pids,
                                container.limits.scratch_mib)
        if limits is not None:
            payload["limits"] = limits
        return self._spawn(MsgType.START, payload, container.name, handle,
                           ProcessCallbacks(on_stdout, on_stderr, on_exit))

    def exec(self, container_name: str, process: Process,
             on_stdout: Callable[[bytes], None] = _ignore,
             on_stderr: Callable[[bytes], None] = _ignore,
             on_exit: Callable[[ExitStatus], None] = lambda _: None) -> ProcessHandle:
        """Start an extra process inside a running container."""
        process.validate("exec.process")
        handle = next(self._handles)
        payload = {"container": container_name, "handle": handle,
                   "process": process_payload(process,
                                              network.port_env(self.pod.network.ports))}
        return self._spawn(MsgType.EXEC, payload, container_name, handle,
                           ProcessCallbacks(on_stdout, on_stderr, on_exit))

    def _spawn(self, type_: MsgType, payload: dict[str, Any], container: str, handle: int,
               callbacks: ProcessCallbacks) -> ProcessHandle:
        channel = self.channel
        channel.register_process(handle, callbacks)
        try:
            reply = channel.request(type_, payload)
        except BaseException:
            channel.unregister_process(handle)
            raise
        return ProcessHandle(handle=handle, container=container, pid=int(reply.get("pid", 0)))

    def _mount_payload(self, mount: Any) -> dict[str, Any]:
        item: dict[str, Any] = {"type": mount.type, "destination": mount.destination,
                                "readonly": mount.readonly}
        if mount.type == "9p" and self.warm:
            item["source"], item["subdir"] = POOL_SHARE_TAG, self._share_tags[mount.source]
        elif mount.type == "9p":
            item["source"] = self._share_tags[mount.source]
        return item

    def signal(self, process: ProcessHandle | int, signum: int) -> None:
        handle = process.handle if isinstance(process, ProcessHandle) else process
        self.channel.request(MsgType.SIGNAL, {"handle": handle, "signal": int(signum)})

    def send_stdin(self, process: ProcessHandle, data: bytes) -> None:
        self.channel.send_stdin(process.handle, data)

    def ping(self, timeout: float = 5.0) -> None:
        self.channel.request(MsgType.PING, {}, timeout=timeout)

    # -- teardown -----------------------------------------------------------------------------

    def poweroff(self, timeout: float = 5.0) -> None:
        """Ask init to power off cleanly; destroy the domain if it does not go in time."""
        if self._destroyed:
            return
        if self._channel is not None:
            try:
                self._channel.request(MsgType.POWEROFF, {}, timeout=timeout)
                if self._hypervisor is not None:
                    self._hypervisor.wait_gone(self.name, timeout)
            except HyperVMError as e:
                log.debug("clean poweroff of %s failed: %s", self.name, e)
        self.destroy()

    def destroy(self) -> None:
        """Destroy the domain, close the channel, remove the run dir. Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        if self._channel is not None:
            self._channel.close()
        if self._hypervisor is not None:
            try:
                self._hypervisor.destroy(self.name)
            finally:
                if self._own_hypervisor:
                    self._hypervisor.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def process_payload(process: Process, defaults: tuple[str, ...] = ()) -> dict[str, Any]:
    """The protocol's ``process`` object for a Process; ``defaults`` (KEY=VALUE, e.g. the
    PORT* variables) apply where the process's env does not set the key."""
    env = list(process.env)
    keys = {item.split("=", 1)[0] for item in env}
    env += [item for item in defaults if item.split("=", 1)[0] not in keys]
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    return {
        "args": list(process.args),
        "env": env,
        "cwd": process.cwd,
        "uid": process.uid,
        "gid": process.gid,
        "additional_gids": list(process.additional_gids),
        "stdin": process.stdin,
    }

