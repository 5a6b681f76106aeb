"""What the Mesos executor needs from a pod runtime, and the real one: a HyperVM per task group.

The executor only talks to :class:`Runtime` / :class:`Pod`. :class:`VMRuntime` pulls the images
(vmimage), builds the PodSpec (:func:`build_container`, pure) and drives ``executor.vm.HyperVM``.
Unit tests select a fake through ``HYPERVM_EXECUTOR_RUNTIME=<module>:<factory>`` (see
tests/mesos/fake_runtime.py); production never sets it.

All Pod methods may block (they talk to libvirt or the guest) and are called from worker
threads; ``on_*`` callbacks arrive on the runtime's reader threads.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import field
from pathlib import Path
from typing import Any, Protocol

from executor.guest.protocol import EXEC_FAILURE_STATUS, ExitStatus
from executor.launcher import Launcher, boot_vm
from executor.libvirt.hypervisor import Hypervisor
from executor.mesos.exec_socket import serve_task_exec
from executor.mesos.health import http_status
from executor.mesos.sandbox_acl import grant_search_below
from executor.mesos.taskinfo import CONTAINER_SANDBOX, TaskSpec, command_overrides
from executor.mesos.volume_paths import host_dir, sandbox_dir
from executor.volume_access import VolumeHold
from hypervm.background import in_thread
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import GuestError, HyperVMError, InvalidSpec
from hypervm.frozen import frozen_dataclass
from hypervm.imageprocess import UserResolver, image_process, merge_env
from hypervm.limits import task_limits
from hypervm.netspec import NetworkSpec, mappings_from_mesos
from hypervm.podspec import Container, Limits, Mount, PodSpec, Process, Resources, Rootfs
from vmimage.images.authorize import PullAuth

log = logging.getLogger(__name__)

RUNTIME_ENV = "HYPERVM_EXECUTOR_RUNTIME"
Output = Callable[[bytes], None]
OnExit = Callable[[ExitStatus], None]

__all__ = ["ExitStatus", "Pod", "PodPlan", "Runtime", "VMRuntime", "load_runtime"]


@frozen_dataclass
class PodPlan:
    """One task group, ready to run: what the runtime needs besides the images."""

    name: str
    tasks: tuple[TaskSpec, ...]
    vcpus: int
    memory_mib: int
    #: the executor's sandbox (SANDBOX_PATH PARENT volumes)
    sandbox: Path
    #: each task's sandbox directory on the host, by task id
    task_sandboxes: Mapping[str, Path] = field(default_factory=dict)
    labels: tuple[tuple[str, str], ...] = ()
    #: CPU time bound in cores (the tasks' + executor's cpus); None: the vCPUs
    cpu_limit: float | None = None
    #: where HOST_PATH volumes may lie once resolved (MesosPolicy.host_path_prefixes)
    host_path_prefixes: tuple[str, ...] = ()


class Pod(Protocol):
    def boot(self) -> None:
        """Pull the images, create the VM, wait until it runs. Raises HyperVMError."""

    def send_start(self, task_id: str, on_stdout: Output, on_stderr: Output,
                   on_exit: OnExit) -> Callable[[], None]:
        """Send the start of the task's main process; returns the wait until it runs (which
        raises GuestError ENOENT/EACCES when the command cannot be executed), so a group's
        STARTs need not wait for each other's reply."""

    def signal(self, task_id: str, signum: int) -> None: ...

    def run_check(self, task_id: str, argv: tuple[str, ...], env: tuple[str, ...],
                  timeout: float) -> int:
        """Run a command in the task's container; its exit code (raise on timeout)."""

    def probe_tcp(self, task_id: str, port: int, timeout: float) -> bool: ...

    def probe_http(self, task_id: str, scheme: str, port: int, path: str,
                   timeout: float) -> int:
        """The HTTP status of GET path on the task's port (raise if there is no answer)."""

    def destroy(self) -> None:
        """Idempotent: nothing of the pod is left afterwards."""


class Runtime(Protocol):
    def create_pod(self, plan: PodPlan) -> Pod: ...


def load_runtime(env: Mapping[str, str]) -> Runtime:
    """The runtime named by ``HYPERVM_EXECUTOR_RUNTIME`` (``module:factory``), else VMRuntime."""
    spec = env.get(RUNTIME_ENV)
    if not spec:
        return VMRuntime(config_from_env(env), env)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "factory")
    except (ImportError, AttributeError) as e:
        raise InvalidSpec(RUNTIME_ENV, f"cannot load {spec!r}: {e}",
                          hint="unset it to run real HyperVMs") from e
    return factory(env)


# ---------------------------------------------------------------------------- pure pod building


def mesos_env(task: TaskSpec) -> tuple[str, ...]:
    """What a task's environment adds to its image's: Mesos' variables, then its own."""
    return (f"MESOS_SANDBOX={CONTAINER_SANDBOX}", f"MESOS_TASK_ID={task.task_id}", *task.env)


def task_env(task: TaskSpec, image_env: tuple[str, ...]) -> tuple[str, ...]:
    """Image env, then Mesos' variables, then the task's own (later wins)."""
    return merge_env(image_env, mesos_env(task))


def task_mounts(task: TaskSpec, plan: PodPlan) -> tuple[Mount, ...]:
    """The task sandbox at /mnt/mesos/sandbox, then its volumes (host dirs over 9p)."""
    own = plan.task_sandboxes.get(task.task_id, plan.sandbox)
    mounts = [Mount(type="9p", destination=CONTAINER_SANDBOX, source=own, owned=True)]
    for i, vol in enumerate(task.volumes):
        field = vol.field or f"{task.where}.container.volumes[{i}]"
        if vol.kind == "host":
            source = host_dir(vol.source, plan.host_path_prefixes, field)
        else:
            source = sandbox_dir(own if vol.kind == "sandbox_self" else plan.sandbox,
                                 vol.source, field)
        mounts.append(Mount(type="9p", destination=vol.container_path, source=source,
                            readonly=vol.readonly, owned=vol.kind != "host"))
    return tuple(mounts)


def build_container(task: TaskSpec, name: str, layers: tuple[Path, ...], config: Any,
                    resolve_user: UserResolver, plan: PodPlan,
                    limits: Limits | None = None) -> Container:
    """The Container for one task from its image (``config``: vmimage's ImageConfig), by the
    same rules as ``hypervm run`` (hypervm.imageprocess) with the task's overrides, within
    ``limits`` (hypervm.limits.task_limits)."""
    entrypoint, command = command_overrides(task.command)
    process = image_process(config, resolve_user, entrypoint=entrypoint, command=command,
                            env=mesos_env(task), user=task.user or None,
                            field=f"{task.where}.command", image_name="the image",
                            hint='set "command": {"value": "..."}')
    return Container(name=name, rootfs=Rootfs(layers=layers), process=process,
                     mounts=task_mounts(task, plan), hostname=name, limits=limits or Limits())


def pod_network(tasks: tuple[TaskSpec, ...]) -> Any:
    """The pod's NetworkSpec: a user-mode NIC; each task's ``ports`` resources are published
    to its DiscoveryInfo ports (in order; further host ports map to the same number); the
    tenant is the role of the tasks' resources."""
    mappings: list[Any] = []
    for task in tasks:
        try:
            mappings.extend(mappings_from_mesos(task.port_ranges, task.container_ports))
        except InvalidSpec as e:
            raise InvalidSpec(f"{task.where}.{e.field}", str(e).split(": ", 1)[-1]) from e
    role = next((t.role for t in tasks if t.role), None) or "default"
    return NetworkSpec(ports=tuple(mappings), tenant=role)


def probe_address(network: Any, container_port: int, where: str) -> tuple[str, int]:
    """Where the host reaches a port of the pod: its published host port on loopback."""
    for mapping in network.ports:
        if mapping.container_port == container_port and mapping.protocol == "tcp":
            host = "127.0.0.1" if mapping.host_ip in ("0.0.0.0", "") else mapping.host_ip
            return host, mapping.host_port
    raise HyperVMError(f"{where}: port {container_port} of the task is not published, so the "
                       "check cannot reach it (give the task a ports resource and list the port "
                       "in discovery.ports)")


def pull_auth(task: TaskSpec, network: Any) -> Any:
    """A task pulls as its tenant (its role) with its own credentials: a cached image is
    authorized by the registry for it (vmimage.images.authorize)."""
    return PullAuth(tenant=task.role or network.tenant, credentials=task.image_credentials)


#: how long a TCP check watches an accepted connection for the user-mode network dropping it
TCP_SETTLE_S = 1.0


def tcp_check(address: tuple[str, int], timeout: float) -> bool:
    """Mesos' TCP check (connect, close) through a published port. A published port is a
    ``hostfwd`` listener of QEMU's user-mode network: it accepts every connection at once, then
    connects to the guest and, when the guest refuses, closes ours. So a connection counts only
    if it is still open ``TCP_SETTLE_S`` later (or data came); raises ConnectionRefusedError."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(min(timeout, TCP_SETTLE_S))
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True  # still open: the guest accepted it
        except ConnectionResetError as e:
            raise ConnectionRefusedError(f"{address[0]}:{address[1]}: reset: the task does not "
                                         "accept connections") from e
        if not data:
            raise ConnectionRefusedError(f"{address[0]}:{address[1]}: closed at once: the task "
                                         "does not accept connections")
        return True


def container_names(tasks: tuple[TaskSpec, ...]) -> dict[str, str]:
    """Task id → a container name init accepts ([A-Za-z0-9_.-]{1,64}), unique in the pod."""
    names: dict[str, str] = {}
    for i, task in enumerate(tasks):
        clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in task.name)[:48]
        names[task.task_id] = f"{clean or 'task'}-{i}"
    return names


# ---------------------------------------------------------------------------- the real runtime


#: what a launch needs, imported when the executor starts instead of on the first launch's
#: clock (~0.2 s: libvirt, the image store, docker-py's auth); encodings.idna: the codec
#: socket.getaddrinfo encodes a host name with, imported on its first use (~3 ms)
LAUNCH_MODULES = ("executor.launcher", "executor.libvirt.hypervisor", "vmimage.boot",
                  "vmimage.images.store", "encodings.idna")
#: ... and when the host uses them: the warm pool's client (claim, take-over, the namespace
#: bind with ctypes, the guest channel; its tenacity only when a connect waits) and the start
#: from a snapshot, which executor.launcher imports only when it uses them (a cold ``hypervm
#: run`` does not pay them): imported on the launch, they cost a warm launch ~10-30 ms of its
#: clock
POOL_MODULES = ("executor.pool.adopt",)
SNAPSHOT_MODULES = ("executor.snapshot.start",)


def preload_modules(cfg: HostConfig) -> tuple[str, ...]:
    """What the executor imports when it starts: :data:`LAUNCH_MODULES`, the pool's client
    when the pool may serve (``HYPERVM_POOL=auto``), the snapshot start when it is on."""
    return (*LAUNCH_MODULES, *(POOL_MODULES if cfg.use_pool else ()),
            *(SNAPSHOT_MODULES if cfg.use_snapshot else ()))


class VMRuntime:
    def __init__(self, cfg: HostConfig, env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        for name in preload_modules(cfg):
            importlib.import_module(name)
        #: the same image settings as ``hypervm run`` (HYPERVM_INSECURE_REGISTRIES, the gc hold)
        self.launcher = Launcher(cfg, env)
        self.hypervisor: Any = None
        self._hv_lock = threading.Lock()
        try:
            self.shared_hypervisor()
        except HyperVMError as e:  # the launch will try again and report it
            log.warning("libvirt: %s", e)

    def shared_hypervisor(self) -> Any:
        """One libvirt connection for the executor's life, opened when the executor starts,
        off the launch's clock (VMs it creates are auto-destroyed when the executor dies, as
        with a connection per VM)."""
        with self._hv_lock:
            if self.hypervisor is None:
                self.hypervisor = Hypervisor(self.cfg.libvirt_uri)
                self.hypervisor.prefetch()
            return self.hypervisor

    def create_pod(self, plan: PodPlan) -> Pod:
        return VMPod(self.cfg, plan, self.shared_hypervisor, self.launcher)


class VMPod:
    """One HyperVM running every task of a group as a container."""

    def __init__(self, cfg: HostConfig, plan: PodPlan,
                 hypervisor: Callable[[], Any] = lambda: None,
                 launcher: Launcher | None = None) -> None:
        self.cfg, self.plan = cfg, plan
        self._hypervisor = hypervisor  # None: the HyperVM opens its own connection
        self._launcher = launcher or Launcher(cfg)
        self.names = container_names(plan.tasks)
        self.vm: Any = None
        self._containers: dict[str, Container] = {}
        self._handles: dict[str, Any] = {}
        self._exec_servers: list[Any] = []  # hypervm exec --task (executor.mesos.exec_socket)
        self._lock = threading.Lock()
        self._destroyed = False
        self.network = pod_network(plan.tasks)
        #: the VM's uid on its shares (executor.volume_access), held until the VM is gone
        self._volumes: VolumeHold | None = None

    def boot(self) -> None:
        launcher = self._launcher
        containers = []
        with launcher.hold():  # no gc of our layers between the resolve and the running VM
            for task in self.plan.tasks:
                image = launcher.resolve(task.image, task.pull_policy,
                                         pull_auth(task, self.network))
                container = build_container(task, self.names[task.task_id], image.layers,
                                            image.config, launcher.user_resolver(image),
                                            self.plan, task_limits(task, self.cfg))
                self._containers[task.task_id] = container
                containers.append(container)
            pod = PodSpec(name=self.plan.name, containers=tuple(containers),
                          resources=Resources(cpus=self.plan.vcpus,
                                              memory_mib=self.plan.memory_mib,
                                              cpu_limit=self.plan.cpu_limit),
                          labels=self.plan.labels, network=self.network,
                          image=self.plan.tasks[0].image if len(containers) == 1 else None)
            pod.validate()  # before a pool claim or a boot: e.g. more layers than init takes
            hypervisor = self._hypervisor()
            volumes = VolumeHold(self.cfg, [m for c in containers for m in c.mounts])
            with self._lock:
                if self._destroyed:
                    raise HyperVMError("the pod was destroyed while it booted")
                self._volumes = volumes
            boot_vm(self.cfg, pod, hypervisor=hypervisor, created=self._created,
                    before_shares=functools.partial(self._before_shares, containers,
                                                    hypervisor))

    def _before_shares(self, containers: list[Container], hypervisor: Any,
                       ids: tuple[int, int] | None) -> None:
        """The VM's uid is known, its shares not given yet: record its hold on them (what it
        makes there is handed back when it ends, executor.volume_access; HOST_PATH volumes get
        their ACL entry as ``run -v`` directories do), then let it reach the sandboxes."""
        assert self._volumes is not None
        self._volumes.before_shares(ids)
        self._let_qemu_reach_sandboxes(containers, hypervisor, ids)

    def _created(self, vm: Any) -> None:
        """The VM exists (not booted yet): from now on :meth:`destroy` ends it."""
        with self._lock:
            if self._destroyed:
                raise HyperVMError("the pod was destroyed while it booted")
            self.vm = vm

    def _let_qemu_reach_sandboxes(self, containers: list[Container], hypervisor: Any,
                                  ids: tuple[int, int] | None) -> None:
        """A real agent's executor sandbox is 0750 root:root: the VM's QEMU user (``ids``, its
        own uid, else libvirt's shared one) gets search permission on the way to each sandbox
        share below it (executor/mesos/sandbox_acl.py). HyperVM calls it once the uid is known,
        before it gives the shares to that uid."""
        if ids is None and hypervisor is not None:
            ids = hypervisor.qemu_user()
        if ids is None or os.geteuid() != 0:
            return
        for source in {m.source for c in containers for m in c.mounts
                       if m.owned and m.source is not None}:
            grant_search_below(self.plan.sandbox, source, *ids)

    def send_start(self, task_id: str, on_stdout: Output, on_stderr: Output,
                   on_exit: OnExit) -> Callable[[], None]:
        """Send the task's START; the wait for its reply is returned (a group's STARTs go
        back to back: init handles them in order, with no host round trip between them). Its
        ``hypervm exec --task`` socket is made meanwhile (while the guest starts the process),
        not after it: TASK_RUNNING waits for neither. Its thread starts once the START is
        sent, so it does not hold up the START."""
        container = self._containers[task_id]
        sent = self.vm.send_start(container, on_stdout=on_stdout, on_stderr=on_stderr,
                                  on_exit=on_exit)
        serving: list[Future[Any]] = []

        def serve_exec() -> None:
            serving.append(in_thread(f"exec-socket-{task_id}", serve_task_exec, self.cfg,
                                     task_id, self.vm, container))

        def wait() -> None:
            try:
                self._handles[task_id] = self.vm.wait_started(sent, meanwhile=serve_exec)
            except BaseException:
                for future in serving:
                    if future.exception() is None and (server := future.result()) is not None:
                        server.close()
                raise
            if serving and (server := serving[0].result()) is not None:
                with self._lock:
                    self._exec_servers.append(server)

        return wait

    def signal(self, task_id: str, signum: int) -> None:
        self.vm.signal(self._handles[task_id], signum)

    def run_check(self, task_id: str, argv: tuple[str, ...], env: tuple[str, ...],
                  timeout: float) -> int:
        done = threading.Event()
        result: list[ExitStatus] = []

        def on_exit(status: ExitStatus) -> None:
            result.append(status)
            done.set()

        base = self._containers[task_id].process
        process = Process(args=argv, env=(*base.env, *env), cwd=base.cwd, uid=base.uid,
                          gid=base.gid, additional_gids=base.additional_gids)
        try:
            handle = self.vm.exec(self.names[task_id], process, on_exit=on_exit)
        except GuestError as e:
            return EXEC_FAILURE_STATUS.get(e.code, 1)
        if not done.wait(timeout):
            try:
                self.vm.signal(handle, 9)
            except HyperVMError:
                pass
            raise TimeoutError(f"the check did not finish within {timeout:g} s")
        return result[0].code

    def probe_tcp(self, task_id: str, port: int, timeout: float) -> bool:
        address = probe_address(self.network, port, f"task {task_id}: TCP check")
        return tcp_check(address, timeout)

    def probe_http(self, task_id: str, scheme: str, port: int, path: str,
                   timeout: float) -> int:
        host, host_port = probe_address(self.network, port, f"task {task_id}: HTTP check")
        return http_status(scheme, host, host_port, path, timeout)

    def destroy(self) -> None:
        with self._lock:
            self._destroyed = True
            vm = self.vm
            servers, self._exec_servers = self._exec_servers, []
        for server in servers:
            server.close()
        try:
            if vm is not None:
                vm.destroy()
        finally:
            if self._volumes is not None:  # the VM is gone: nothing more of its can appear
                self._volumes.close()
