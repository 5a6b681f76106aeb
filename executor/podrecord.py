"""A pod's values its VM is made of, pure: which layer files become which disk serials and
which 9p sources which tags (the same on a cold VM, a claimed pool VM and a clone), and what
the domain records of its pod (metadata: the pool's tenant, the pod's ports)."""

from __future__ import annotations

from pathlib import Path

from executor.guest.protocol import POOL_SHARE_TAG, layer_serial, mount_payload
from hypervm.podspec import Mount, PodSpec

#: typing.TYPE_CHECKING without importing typing (a cold run's start: executor/vm.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def pod_devices(pod: PodSpec) -> tuple[dict[Path, str], dict[Path, str]]:
    """The pod's distinct layer files → disk serials, and its 9p mount sources → tags."""
    serials: dict[Path, str] = {}
    tags: dict[Path, str] = {}
    for container in pod.containers:
        for layer in container.rootfs.layers:
            serials.setdefault(layer, layer_serial(len(serials)))
        for mount in container.mounts:
            if mount.type == "9p" and mount.source is not None:
                tags.setdefault(mount.source, f"s{len(tags)}")
    return serials, tags


def pod_metadata(pod: PodSpec) -> dict[str, str]:
    """What the domain records of its pod (the hypervisor stamps the owner pid)."""
    meta = {"pod": pod.name}
    meta.update({f"label.{k}": v for k, v in pod.labels})
    meta["tenant"] = pod.network.tenant
    meta.update({f"port.{i}": m.describe() for i, m in enumerate(pod.network.ports)})
    return meta


def start_mount(mount: Mount, tags: dict[Path, str], warm: bool) -> dict[str, Any]:
    """One of a START's ``mounts`` for ``mount``: a 9p source by its tag (``tags``:
    :func:`pod_devices`'), on a ``warm`` (pool) VM a subdir of its one share."""
    tag = tags[mount.source] if mount.type == "9p" and mount.source is not None else None
    if tag is not None and warm:
        return mount_payload(mount.type, mount.destination, mount.readonly, POOL_SHARE_TAG, tag)
    return mount_payload(mount.type, mount.destination, mount.readonly, tag)
