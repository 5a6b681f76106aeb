"""A pod's values its VM is made of, pure: which layer files become which disk serials and
which 9p sources which tags (the same on a cold VM, a claimed pool VM and a clone), and what
the domain records of its pod (metadata: the pool's tenant, the pod's ports)."""

from __future__ import annotations

from pathlib import Path

from executor.guest.protocol import layer_serial
from hypervm.podspec import PodSpec


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
