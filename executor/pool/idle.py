"""The warm pool's idle VMs as the daemon (executor.pool.daemon) keeps them, and what it says of
them by kind (``hypervm pool status``): generic, a listed image's, a learned image's
(executor.pool.learn)."""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor.pool.learn import LearnedImage
from executor.pool.protocol import GENERIC

#: metadata entries of pool VMs: the pool's name, and "idle" or "claimed" (or "standby")
META_POOL = "pool"
META_POOL_STATE = "pool-state"


@dataclass
class IdleVM:
    name: str
    run_dir: Path
    sock: socket.socket
    ready: dict[str, Any]
    kind: str = GENERIC
    #: the layer files attached as the pod's disks (an image VM), in serial order
    layers: tuple[str, ...] = ()
    booted_at: float = field(default_factory=time.monotonic)
    #: the uid:gid its QEMU runs as (None: libvirt's shared user), told to the claimer
    identity: tuple[int, int] | None = None
    #: the tenant a learned image's VM is kept for (executor.pool.learn); None: any
    kept_for: str | None = None


#: the kinds of VM a claim can be served by (``hypervm pool status``'s ``served_by``)
SERVED_KINDS = ("generic", "image", "learned")


def served_kind(vm: IdleVM) -> str:
    """Which of :data:`SERVED_KINDS` ``vm`` is: no layers, a listed image's, a learned one's."""
    return "learned" if vm.kept_for is not None else "image" if vm.layers else "generic"


def label(kind: str) -> str:
    """`` (REF)`` after an image VM's name in the log; nothing for a generic one."""
    return f" ({kind})" if kind else ""


def by_kind(idle: Iterable[IdleVM], booting: Iterable[str], images: Iterable[str],
            learned: Iterable[LearnedImage]) -> dict[str, Any]:
    """The status's ``images`` (listed: ready and booting VMs by reference) and ``learned``
    (each learned image, its tenant and VMs, oldest claimed first)."""
    have = collections.Counter(vm.kind for vm in idle)
    coming = collections.Counter(booting)
    return {"images": {ref: {"ready": have[ref], "booting": coming[ref]} for ref in images},
            "learned": [{"image": image.ref, "tenant": image.tenant, "ready": have[image.kind],
                         "booting": coming[image.kind]} for image in learned]}
