"""PodSpec: the pure description of what runs in one HyperVM.

The CLI (``hypervm run``) and the Mesos executor (TaskInfo / TaskGroupInfo) both build a PodSpec;
everything below — image resolution, the libvirt domain, the guest init — only ever sees this.
Validation here raises :class:`~hypervm.errors.InvalidSpec` naming the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path

from hypervm.errors import InvalidSpec
from hypervm.frozen import frozen_dataclass
from hypervm.netspec import NetworkSpec

#: below this the HyperKernel and init cannot run a container reliably
MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_CPUS = 64
#: below this a container's cgroup cannot even start its process (init refuses < 4 MiB)
MIN_LIMIT_MEMORY_MIB = 4
#: the layers of one container's root filesystem the guest init takes (init/src/parse.h
#: MAX_LAYERS: overlayfs' lowerdir option stays below one page); more fail before any boot
MAX_ROOTFS_LAYERS = 64
#: the distinct layers of one pod (its VM's layer disks) the guest init mounts
#: (init/src/layers.c MAX_MOUNTED)
MAX_POD_LAYERS = 256
#: how to get there (an image's layers are its build's steps)
FEWER_LAYERS_HINT = "flatten the image (a multi-stage build, docker build --squash) to fewer layers"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: pod and container names, matched whole (fullmatch: ``^…$`` with ``match`` lets "p\n" through)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@frozen_dataclass
class Process:
    """A process to run in a container: arguments, environment, user, limits."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    stdin: bool = False
    #: a pseudo-terminal in the guest: stdin/stdout/stderr are its slave (output comes as stdout)
    tty: bool = False

    def validate(self, where: str) -> None:
        if not self.args or not self.args[0]:
            raise InvalidSpec(f"{where}.args", "the command is empty",
                              hint="give a command, e.g. -- sh -c 'echo hi'")
        for item in self.env:
            if "=" not in item or item.startswith("="):
                raise InvalidSpec(f"{where}.env", f"{item!r} is not KEY=VALUE")
        if not self.cwd.startswith("/"):
            raise InvalidSpec(f"{where}.cwd", f"{self.cwd!r} is not an absolute path")
        for name, value in (("uid", self.uid), ("gid", self.gid)):
            if not 0 <= value < 2**32 - 1:
                raise InvalidSpec(f"{where}.{name}", f"{value} is out of range")


@frozen_dataclass
class Mount:
    """A mount in a container: ``9p`` shares ``source`` (a host directory), ``tmpfs`` is empty.

    ``owned``: the directory belongs to the pod (a Mesos sandbox): hypervm hands it to the user
    QEMU runs as, so the guest can create files in it (a host volume keeps its owner)."""

    type: str
    destination: str
    source: Path | None = None
    readonly: bool = False
    owned: bool = False

    def validate(self, where: str) -> None:
        if self.type not in ("9p", "tmpfs"):
            raise InvalidSpec(f"{where}.type", f"unknown mount type {self.type!r}",
                              hint="use 9p or tmpfs")
        if not self.destination.startswith("/"):
            raise InvalidSpec(f"{where}.destination",
                              f"{self.destination!r} is not an absolute path")
        if self.type == "9p":
            if self.source is None or not self.source.is_dir():
                raise InvalidSpec(f"{where}.source", f"{self.source} is not a directory")


@frozen_dataclass
class Rootfs:
    """Read-only layer images on the host (erofs or ext4), lowest first."""

    layers: tuple[Path, ...]
    readonly: bool = False


@frozen_dataclass
class Limits:
    """A container's bounds inside its VM (init/PROTOCOL.md START ``limits``): ``memory_mib``
    its cgroup's memory.max, ``pids`` its pids.max, ``scratch_mib`` the size of its writable
    layer (a tmpfs in guest RAM). None: not limited (the VM's RAM still bounds it)."""

    memory_mib: int | None = None
    pids: int | None = None
    scratch_mib: int | None = None

    def validate(self, where: str) -> None:
        for name, value, low, hint in (
                ("memory", self.memory_mib, MIN_LIMIT_MEMORY_MIB, "MiB"),
                ("pids", self.pids, 2, "processes and threads"),
                ("disk", self.scratch_mib, 1, "MiB of writable layer")):
            if value is not None and not low <= value <= MAX_MEMORY_MIB:
                raise InvalidSpec(f"{where}.{name}", f"{value} is out of range",
                                  hint=f"use {low}..{MAX_MEMORY_MIB} {hint}")


@frozen_dataclass
class Container:
    """One container of a pod: its root filesystem, process, mounts and limits."""

    name: str
    rootfs: Rootfs
    process: Process
    mounts: tuple[Mount, ...] = ()
    hostname: str | None = None
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> None:
        where = f"containers[{self.name}]"
        if not _NAME_RE.fullmatch(self.name):
            raise InvalidSpec(f"{where}.name", "must match [A-Za-z0-9_.-]{1,64}")
        if not self.rootfs.layers:
            raise InvalidSpec(f"{where}.rootfs", "no layers")
        if len(self.rootfs.layers) > MAX_ROOTFS_LAYERS:
            raise InvalidSpec(f"{where}.rootfs.layers",
                              f"{len(self.rootfs.layers)} layers are more than the "
                              f"{MAX_ROOTFS_LAYERS} a container's root filesystem can have",
                              hint=FEWER_LAYERS_HINT)
        self.process.validate(f"{where}.process")
        self.limits.validate(f"{where}.limits")
        for i, mount in enumerate(self.mounts):
            mount.validate(f"{where}.mounts[{i}]")


@frozen_dataclass
class Resources:
    """``cpus`` vCPUs and ``memory_mib`` of guest RAM; ``cpu_limit`` bounds the CPU time the
    whole VM may use, in cores (a Mesos ``cpus`` of 0.5 is 1 vCPU limited to half a core)."""

    cpus: int = 1
    memory_mib: int = 256
    cpu_limit: float | None = None

    def validate(self) -> None:
        if not 1 <= self.cpus <= MAX_CPUS:
            raise InvalidSpec("cpus", f"{self.cpus} is out of range", hint=f"use 1..{MAX_CPUS}")
        if self.cpu_limit is not None and not 0.01 <= self.cpu_limit <= self.cpus:
            raise InvalidSpec("cpus", f"a CPU limit of {self.cpu_limit:g} cores does not fit "
                                      f"{self.cpus} vCPUs", hint="use 0.01..vCPUs")
        if self.memory_mib < MIN_MEMORY_MIB:
            raise InvalidSpec("memory", f"{self.memory_mib} MiB is below the minimum",
                              hint=f"use at least {MIN_MEMORY_MIB} MiB")
        if self.memory_mib > MAX_MEMORY_MIB:
            raise InvalidSpec("memory", f"{self.memory_mib} MiB is above the maximum")


@frozen_dataclass
class PodSpec:
    """A pod: its containers, which share one VM, its resources and its network."""

    name: str
    containers: tuple[Container, ...]
    resources: Resources = field(default_factory=Resources)
    #: free-form labels recorded in the domain metadata (task ids, tenant …)
    labels: tuple[tuple[str, str], ...] = ()
    #: the VM's NIC, published ports and tenant (executor/network.py)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    #: the reference of the pod's one image, when it has one: a warm pool may learn it and
    #: keep VMs with its layers ready (executor.pool.learn); it grants nothing
    image: str | None = None

    def validate(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise InvalidSpec("name", "must match [A-Za-z0-9_.-]{1,64}")
        if not self.containers:
            raise InvalidSpec("containers", "a pod needs at least one container")
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise InvalidSpec("containers", "container names must be unique")
        self.resources.validate()
        for container in self.containers:
            container.validate()
        distinct = len({layer for c in self.containers for layer in c.rootfs.layers})
        if distinct > MAX_POD_LAYERS:
            raise InvalidSpec("containers", f"{distinct} distinct layers are more than the "
                              f"{MAX_POD_LAYERS} one pod's VM can mount",
                              hint=f"{FEWER_LAYERS_HINT}, or share layers between its images")
        self.network.validate()
