"""Standby clones: the claiming side, and the protocol both sides speak.

A *standby* is a clone domain (``designer.clone_domain``) of one shape that the warm pool
daemon started ahead of time, loaded the snapshot into, let run, reseeded (RESEED first: its
RNG is the template's until then) and ran one throwaway container in, so that TCG has
translated the guest code a START runs (no QEMU saves translations). The daemon
(executor.snapshot.keeper) keeps one per *template* shape that snapshot launches asked for
lately (store.template_shape: a memory size and tenant, with the template's vCPU capacity, 2
of them present and 1 online): a launch of any vCPU count up to that capacity takes it with its
guest channel's connected socket, onlines its second, hot-plugs any further ones, reseeds it
again with a seed of its own and gives it the pod (executor.snapshot.start), so the libvirt + QEMU
start, the load and the first run's translation leave the launch's clock. A standby is handed
to one claimer, never twice, and becomes that claimer's as a claimed pool VM does (its owner
recorded, the pool's reaper ends it when the claimer dies).

    → {"op": "standby", "vcpus": 1, "memory_mib": 128, "key": "<snapshot key>",
       "template": "hypervm-template-1a2b3c4d", "metadata": {"pod": "web", ...}}
    ← {"vm": "hypervm-pool-sb-1a2b3c4d", "run_dir": "...", "identity": [uid, gid] | null,
       "ready": {the template's READY payload}} + 1 fd: the guest channel's connected socket
    ← {"error": "no standby of 1 vCPU / 128 MiB is ready"}

``key`` is the snapshot key the claimer computed from its boot files (store.snapshot_key): the
daemon serves, and keeps standbys for, only a key its own boot files give (a claimer with
another init or kernel gets none), and only a standby made for ``template`` (the store's
entry of that key now: a standby made for a discarded entry has the wrong NIC). Each request
also tells the daemon that this shape is wanted: a launch asks once the store has the shape's
snapshot, so the launch after the one that made it asks first, finds none and starts a clone
of its own; the later ones find a standby.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from executor.libvirt.domain import MAX_MEMORY_MIB, MAX_VCPUS, valid_domain_name
from executor.pool import claim as client
from executor.pool.protocol import Lease, request_metadata
from executor.snapshot.store import Shape
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, PoolError
from hypervm.frozen import frozen_dataclass
from hypervm.netspec import valid_tenant

log = logging.getLogger(__name__)

OP = "standby"
#: a standby is asked for on a launch's clock: a pool that does not answer at once is skipped
TAKE_TIMEOUT = 2.0
#: matched whole (fullmatch): ``^…$`` with ``match`` let a trailing newline through
_KEY_RE = re.compile(r"[0-9a-f]{24}")


@frozen_dataclass
class Ask:
    """A standby request: the shape, the snapshot it will load, the pod's metadata."""

    shape: Shape
    key: str
    template: str
    metadata: dict[str, str]


def standby_request(shape: Shape, key: str, template: str,
                    metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"op": OP, "vcpus": shape.vcpus, "memory_mib": shape.memory_mib,
            "tenant": shape.tenant, "key": key,
            "template": template, "metadata": dict(metadata or {})}


def parse_standby(request: Mapping[str, Any]) -> Ask:
    """The standby request in ``request``; PoolError naming the bad field."""
    values = []
    for field, bound in (("vcpus", MAX_VCPUS), ("memory_mib", MAX_MEMORY_MIB)):
        value = request.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
            raise PoolError(f"standby.{field}: must be an integer in 1..{bound}, not "
                            f"{value!r:.50}")
        values.append(value)
    tenant = request.get("tenant", "default")
    if not valid_tenant(tenant):  # the template's tenant: its key covers it (store.snapshot_key)
        raise PoolError(f"standby.tenant: not a tenant name: {tenant!r:.50}")
    key, template = request.get("key"), request.get("template")
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise PoolError(f"standby.key: not a snapshot key: {key!r:.50}")
    if not isinstance(template, str) or not valid_domain_name(template):
        raise PoolError(f"standby.template: not a HyperVM name: {template!r:.100}")
    metadata = request_metadata(request, OP)
    return Ask(Shape(values[0], values[1], tenant), key, template, metadata)


def lease_reply(name: str, run_dir: str, identity: tuple[int, int] | None,
                ready: Mapping[str, Any]) -> dict[str, Any]:
    return {"vm": name, "run_dir": run_dir, "ready": dict(ready),
            "identity": list(identity) if identity is not None else None}


def parse_lease(reply: Mapping[str, Any]) -> Lease:
    """The daemon's answer as a Lease (no READY: nothing ran in a standby yet); PoolError
    when it has none or the reply is malformed."""
    if "error" in reply:
        raise PoolError(str(reply["error"]))
    vm, run_dir, pair = reply.get("vm"), reply.get("run_dir"), reply.get("identity")
    ready = reply.get("ready")
    if (not isinstance(vm, str) or not valid_domain_name(vm) or not isinstance(run_dir, str)
            or not run_dir.startswith("/") or not (pair is None or _is_identity(pair))
            or not isinstance(ready, dict)):
        raise PoolError(f"malformed standby reply: {dict(reply)!r:.300}")
    return Lease(vm=vm, run_dir=Path(run_dir), ready=ready,
                 identity=(pair[0], pair[1]) if pair is not None else None,
                 identity_known=True)


def _is_identity(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value))


def remember(wanted: Sequence[Shape], shape: Shape, limit: int
             ) -> tuple[list[Shape], list[Shape]]:
    """The shapes to keep a standby of after a request for ``shape``: it becomes the most
    recently wanted (last); beyond ``limit`` the least recently wanted go. Returns the new
    list and the shapes that went."""
    kept = [s for s in wanted if s != shape] + [shape]
    cut = max(0, len(kept) - limit)
    return kept[cut:], kept[:cut]


def take(cfg: HostConfig, shape: Shape, key: str, template: str,
         metadata: Mapping[str, str] | None = None) -> tuple[Lease, socket.socket] | None:
    """A standby of ``shape`` for the snapshot ``key`` (entry of ``template``) from the warm
    pool daemon, now ours to use and to destroy, with its guest channel's connected socket;
    or None (no daemon, or none ready: the request still tells the daemon to keep one of
    this shape)."""
    if not cfg.use_pool or not cfg.pool_socket.exists():
        return None
    fds: list[int] = []
    try:
        reply, fds = client.request(cfg, standby_request(shape, key, template, metadata),
                                    TAKE_TIMEOUT)
        lease = parse_lease(reply)
        if len(fds) != 1:
            raise PoolError(f"the pool sent {len(fds)} descriptors with the standby, not 1")
    except HyperVMError as e:
        for fd in fds:
            os.close(fd)
        log.info("no standby clone (%s): starting one", e)
        return None
    return lease, socket.socket(fileno=fds[0])
