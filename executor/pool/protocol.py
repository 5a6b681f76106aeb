"""The warm pool's pure parts: its settings, which pods a pool VM can take, which VM a claim
gets, and the claim protocol spoken on the pool's unix socket (the domain of a pool VM is
``executor.libvirt.designer.pool_domain``; the guest requests it runs are built in
``executor.guest.protocol``).

A *generic* pool VM is booted ahead of time with no layers: a virtio-scsi controller (the pod's
layer disks are hot-added as LUNs at claim time), one 9p share (``POOL_SHARE_TAG``) of an empty
directory into which the claimer binds each mount source, the user-mode NIC without published
ports, and the channel. An *image* pool VM (``PoolConfig.images``) has one image's layers
attached and mounted already; it serves only a pod whose layers are exactly those (never
another image's pod: a tenant must not see disks it did not ask for), so the launch skips the
hot-add and the guest's disk probe. The side effects live in :mod:`executor.pool.daemon` (the
daemon), :mod:`executor.pool.claim` (the claim client) and :mod:`executor.pool.adopt` (a
claimed VM becomes the pod's). Nothing here touches the host.

Claim protocol: the client connects to the pool's socket and sends one JSON line; the pool
answers one JSON line and, for a claim, passes the connected guest channel socket along with
it (SCM_RIGHTS), so the claimer talks to the booted init at once.

    → {"op": "claim", "vcpus": 1, "memory_mib": 128, "metadata": {"pod": "web", ...},
       "layers": ["/var/lib/hypervm/.../a.erofs", ...],
       "ports": [{"host_ip": "127.0.0.1", "host_port": 8080, "container_port": 80,
                  "protocol": "tcp"}, ...]}
    ← {"vm": "hypervm-pool-1a2b3c4d", "run_dir": "...", "ready": {READY payload},
       "layers_attached": true} + 1 fd
    ← {"error": "no warm VM is ready"}
    ← {"error": "ports[0] (...): host port 8080/tcp is already in use", "hint": "...",
       "kind": "network"}
    → {"op": "release", "vm": "hypervm-pool-1a2b3c4d"}      (executor.pool.release)
    ← {"released": "hypervm-pool-1a2b3c4d"}
    → {"op": "status"}
    ← {"name": "pool", "size": 2, "ready": 1, "booting": 1, "vcpus": 1, "memory_mib": 128, ...}

``layers`` are the pod's distinct layer files in the order the claimer names their disks
(``layer_serial``); ``layers_attached`` says the VM has exactly those attached already (an image
pool VM), so the claimer hot-adds nothing. The pool writes the pod's metadata into the VM
together with the new owner (the claimer's pid), so the claimer has nothing left to write.

``image`` (optional) is the reference the pod's one image was resolved from: a pool that learns
images (``learn_images``, executor.pool.learn) keeps image VMs for the ones claimed last, for
the claim's tenant (``metadata.tenant``) only. It grants nothing: a VM is still matched by its
exact layer files, and a pool that does not learn ignores it.

``ports`` are the pod's published ports: the pool checks them as a cold boot does and publishes
them on the VM (QEMU ``hostfwd_add``) before it answers. A port that cannot be published fails
the claim with the cold boot's error (``"kind": "network"``: the claimer raises it as the
NetworkError it is, and does not boot cold), and a VM that had some published is destroyed.

With ``"ports_later": true`` in the claim (issue 18: the monitor round trips then overlap the
claimer's take-over), the pool checks the ports, answers the claim with ``"ports_pending":
true``, then publishes them and sends a second line on the same connection: ``{"ports":
"published"}``, or the error line above (the VM is then destroyed by the pool). The claimer
reads it once its first START is sent, before that START's reply (executor.pool.adopt,
HyperVM.awaited): the pod is reported running only once its ports are published, and a lost
port fails that START. A pool that does not know ``ports_later`` publishes first and sends no
``ports_pending``; the claimer then reads nothing more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from executor.libvirt.domain import (
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_MEMORY_MIB,
    check_metadata,
)
from executor.pool.learn import MAX_LEARN_IMAGES, MAX_REF
from hypervm.errors import HyperVMError, ImageError, InvalidSpec, NetworkError, PoolError
from hypervm.frozen import frozen_dataclass
from hypervm.imageref import parse_reference
from hypervm.netspec import NetworkSpec, PortMapping, valid_tenant
from hypervm.podspec import PodSpec

#: the warm-up layer's disk is LUN 0; a pod's layers take the LUNs after it
WARMUP_UNIT = 0
FIRST_POD_UNIT = 1
MAX_POOL_SIZE = 64
#: shapes a pool keeps a standby clone of at most (each a QEMU waiting for a snapshot)
MAX_STANDBY_SHAPES = 8
MAX_LINE = 64 * 1024
MAX_CLAIM_LAYERS = 128
#: published ports a claim may carry (each is one monitor command); more boot cold
MAX_CLAIM_PORTS = 256
#: the error ``kind`` of a claim that failed on its ports (the claimer raises NetworkError)
NETWORK_ERROR = "network"
#: the kind of a generic pool VM (an image pool VM's kind is its image reference)
GENERIC = ""


#: a pool's name, matched whole (fullmatch: ``^…$`` with ``match`` let "p\n" through)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


@frozen_dataclass
class PoolConfig:
    """``size`` generic idle VMs, plus ``per_image`` idle VMs for each image of ``images``
    (references, resolved like a launch resolves them), all of ``vcpus`` vCPUs and
    ``memory_mib`` MiB, named hypervm-<name>-…"""

    size: int = 2
    vcpus: int = 1
    memory_mib: int = 128
    name: str = "pool"
    images: tuple[str, ...] = ()
    per_image: int = 1
    #: shapes to keep a standby clone of (executor.snapshot.keeper): the latest ones that
    #: launches from a snapshot asked for, one standby each (a pool of only standbys may have
    #: no idle VMs)
    standby: int = 0
    #: images to learn (executor.pool.learn): the ones most recently claimed get
    #: ``per_image`` idle VMs each, counted in the pool's bound like the listed ones
    learn_images: int = 0

    def targets(self) -> dict[str, int]:
        """Idle VMs to keep, by kind: ``GENERIC`` and each image reference."""
        targets = {GENERIC: self.size} if self.size else {}
        targets.update((ref, self.per_image) for ref in self.images)
        return targets

    def validate(self) -> PoolConfig:
        if not 0 <= self.size <= MAX_POOL_SIZE:
            raise InvalidSpec("pool.size", f"{self.size} is out of range",
                              hint=f"use 0..{MAX_POOL_SIZE} (0 only with images)")

        seen = set()
        for i, ref in enumerate(self.images):
            try:
                if not isinstance(ref, str) or ref != ref.strip():
                    raise ImageError(repr(ref), "not an image reference")
                canonical = str(parse_reference(ref))
            except ImageError as e:
                raise InvalidSpec(f"pool.images[{i}]", e.args[0],
                                  hint=e.hint or "e.g. --image registry.example:5000/web:1"
                                  ) from e
            if canonical in seen:
                raise InvalidSpec("pool.images", f"{canonical} is listed twice",
                                  hint="list each image once; --per-image sets how many VMs")
            seen.add(canonical)
        if not 1 <= self.per_image <= MAX_POOL_SIZE:
            raise InvalidSpec("pool.per_image", f"{self.per_image} is out of range",
                              hint=f"use 1..{MAX_POOL_SIZE}")
        if not 0 <= self.standby <= MAX_STANDBY_SHAPES:
            raise InvalidSpec("pool.standby", f"{self.standby} is out of range",
                              hint=f"use 0..{MAX_STANDBY_SHAPES}")
        if not 0 <= self.learn_images <= MAX_LEARN_IMAGES:
            raise InvalidSpec("pool.learn_images", f"{self.learn_images} is out of range",
                              hint=f"use 0..{MAX_LEARN_IMAGES}")
        total = sum(self.targets().values())
        if not (0 if self.standby or self.learn_images else 1) <= total <= MAX_POOL_SIZE:
            raise InvalidSpec("pool.size", f"{total} idle VMs in all is out of range",
                              hint=f"keep size + images × per_image within 1..{MAX_POOL_SIZE}")
        if total + self.learn_images * self.per_image > MAX_POOL_SIZE:
            raise InvalidSpec("pool.learn_images", f"{total} idle VMs + {self.learn_images} "
                              f"learned images × {self.per_image} is more than {MAX_POOL_SIZE}",
                              hint=f"keep size + (images + learn_images) × per_image within "
                                   f"{MAX_POOL_SIZE}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise InvalidSpec("pool.vcpus", f"{self.vcpus} is out of range",
                              hint=f"use 1..{MAX_VCPUS}")
        if self.memory_mib < MIN_MEMORY_MIB:
            raise InvalidSpec("pool.memory_mib",
                              f"{self.memory_mib} MiB is less than a pod can have "
                              f"({MIN_MEMORY_MIB} MiB): no pod could claim such a VM",
                              hint=f"use --memory {MIN_MEMORY_MIB} or more")
        if self.memory_mib > MAX_MEMORY_MIB:
            raise InvalidSpec("pool.memory_mib", f"{self.memory_mib} MiB is out of range",
                              hint=f"use {MIN_MEMORY_MIB}..{MAX_MEMORY_MIB}")
        if not _NAME_RE.fullmatch(self.name):
            raise InvalidSpec("pool.name", f"{self.name!r} is not a valid pool name",
                              hint="use 1..40 characters of [A-Za-z0-9_.-]")
        return self


def unfit_reason(pod: PodSpec, vcpus: int, memory_mib: int) -> str | None:
    """Why a pool VM of this shape cannot run ``pod`` (None: it can).

    The shape must match exactly: a bigger VM would hand the task resources Mesos did not
    allocate. A pod without a NIC must not get one, so it boots cold. Published ports are
    added when the VM is claimed (up to ``MAX_CLAIM_PORTS``).
    """
    if pod.resources.cpus != vcpus or pod.resources.memory_mib != memory_mib:
        return (f"the pod needs {pod.resources.cpus} vCPU / {pod.resources.memory_mib} MiB, "
                f"pool VMs have {vcpus} vCPU / {memory_mib} MiB")
    if len(pod.network.ports) > MAX_CLAIM_PORTS:
        return (f"the pod publishes {len(pod.network.ports)} ports, a claim takes at most "
                f"{MAX_CLAIM_PORTS}")
    if pod.network.mode != "user":
        return f"the pod's network mode is {pod.network.mode!r} (pool VMs have a NIC)"
    return None


def next_kind(targets: Mapping[str, int], have: Mapping[str, int]) -> str | None:
    """The kind of VM to boot next: the one furthest below its target (as a fraction, generic
    first on a tie), or None when every kind has its ``targets`` idle or booting (``have``)."""
    short = [(have.get(kind, 0) / target, i, kind)
             for i, (kind, target) in enumerate(targets.items()) if have.get(kind, 0) < target]
    return min(short)[2] if short else None


def pick_vm(idle: Sequence[tuple[str, ...]], layers: Sequence[str],
            kept_for: Sequence[str | None] = (), tenant: str = "default") -> int | None:
    """Which idle VM a claim for ``layers`` by ``tenant`` gets, by each VM's attached layers
    (``()`` for a generic VM), oldest first: an image VM with exactly these layers, else a
    generic one. An image VM never serves other layers: its disks would be visible to the pod.
    ``kept_for[i]``: the tenant a learned image VM is kept for (executor.pool.learn; None or
    missing: any), which alone may get it."""
    wanted = tuple(layers)
    if wanted:
        for i, attached in enumerate(idle):
            owner = kept_for[i] if i < len(kept_for) else None
            if attached == wanted and owner in (None, tenant):
                return i
    for i, attached in enumerate(idle):
        if not attached:
            return i
    return None



# --- the claim protocol -----------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes, what: str) -> dict[str, Any]:
    """One protocol line as a JSON object; PoolError naming ``what`` otherwise."""
    if len(line) > MAX_LINE:
        raise PoolError(f"{what}: longer than {MAX_LINE} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PoolError(f"{what}: not JSON ({e})") from e
    if not isinstance(message, dict):
        raise PoolError(f"{what}: not a JSON object")
    return message


def claim_request(vcpus: int, memory_mib: int, metadata: Mapping[str, str] | None = None,
                  layers: Sequence[str] = (), ports: Sequence[PortMapping] = (),
                  ports_later: bool = False, image: str | None = None) -> dict[str, Any]:
    """``metadata``: the pod's entries for the VM (the pool writes them with the new owner);
    ``layers``: the pod's distinct layer files, in disk-serial order; ``ports``: the pod's
    published ports (the pool publishes them on the VM); ``ports_later``: the pool may
    publish them after its answer, reporting on a second line (see the module's text);
    ``image``: the reference the pod's one image was resolved from (the pool may learn it)."""
    request: dict[str, Any] = {"op": "claim", "vcpus": vcpus, "memory_mib": memory_mib,
                               "metadata": dict(metadata or {}), "layers": list(layers)}
    if image is not None:
        request["image"] = image
    if ports:  # a claim without ports is the same line as before ports could be claimed
        request["ports"] = [{"host_ip": m.host_ip, "host_port": m.host_port,
                             "container_port": m.container_port, "protocol": m.protocol}
                            for m in ports]
        if ports_later:
            request["ports_later"] = True
    return request


@frozen_dataclass
class Claim:
    vcpus: int
    memory_mib: int
    metadata: dict[str, str]
    layers: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    #: the claimer reads the ports' outcome on a second line (see the module's text)
    ports_later: bool = False
    #: the pod's one image, as its claimer resolved it (executor.pool.learn), if it said
    image: str | None = None

    @property
    def tenant(self) -> str:
        """The pod's tenant (its metadata's, as executor.vm.pod_metadata writes it)."""
        return self.metadata.get("tenant", "default")


def request_metadata(request: Mapping[str, Any], op: str) -> dict[str, str]:
    """The ``metadata`` of an ``op`` request (the claimer's owner metadata: a claim's, a
    standby's); PoolError naming the bad field."""
    metadata = request.get("metadata", {})
    if not isinstance(metadata, dict):
        raise PoolError(f"{op}.metadata: must be an object, not {metadata!r:.100}")
    try:
        check_metadata(metadata)
    except InvalidSpec as e:
        raise PoolError(f"{op}.{e}") from e
    return metadata


def parse_claim(request: dict[str, Any]) -> Claim:
    """The claim in a request; PoolError naming the bad field."""
    values = []
    for key in ("vcpus", "memory_mib"):
        value = request.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PoolError(f"claim.{key}: must be a positive integer, not {value!r}")
        values.append(value)
    metadata = request_metadata(request, "claim")
    layers = request.get("layers", [])
    if (not isinstance(layers, list) or len(layers) > MAX_CLAIM_LAYERS
            or not all(isinstance(x, str) and x.startswith("/") for x in layers)
            or len(set(layers)) != len(layers)):
        raise PoolError(f"claim.layers: must be a list of at most {MAX_CLAIM_LAYERS} distinct "
                        f"absolute paths, not {layers!r:.200}")
    later = request.get("ports_later", False)
    if not isinstance(later, bool):
        raise PoolError(f"claim.ports_later: must be true or false, not {later!r:.50}")
    image = request.get("image")
    if image is not None and (not isinstance(image, str) or len(image) > MAX_REF):
        raise PoolError(f"claim.image: must be an image reference, not {image!r:.100}")
    if not valid_tenant(metadata.get("tenant", "default")):
        raise PoolError(f"claim.metadata.tenant: not a tenant name: "
                        f"{metadata.get('tenant')!r:.50}")
    return Claim(values[0], values[1], metadata, tuple(layers),
                 parse_ports(request.get("ports", [])), later, image)


_PORT_KEYS = {"host_ip": str, "host_port": int, "container_port": int, "protocol": str}


def parse_ports(ports: Any) -> tuple[PortMapping, ...]:
    """A claim's ``ports`` as mappings, validated as a pod's are; PoolError naming the bad
    entry (the claimer built them from a valid pod: anything else is a broken client)."""
    if not isinstance(ports, list) or len(ports) > MAX_CLAIM_PORTS:
        raise PoolError(f"claim.ports: must be a list of at most {MAX_CLAIM_PORTS} ports, "
                        f"not {ports!r:.200}")
    mappings = []
    for i, port in enumerate(ports):
        if (not isinstance(port, dict) or set(port) != set(_PORT_KEYS)
                or not all(isinstance(port[k], t) and not isinstance(port[k], bool)
                           for k, t in _PORT_KEYS.items())):
            raise PoolError(f"claim.ports[{i}]: must be an object of {sorted(_PORT_KEYS)}, "
                            f"not {port!r:.200}")
        mappings.append(PortMapping(port["host_port"], port["container_port"],
                                    port["protocol"], port["host_ip"]))
    try:
        NetworkSpec(ports=tuple(mappings)).validate()
    except InvalidSpec as e:
        raise PoolError(f"claim.{e}") from e
    return tuple(mappings)


def error_reply(err: HyperVMError) -> dict[str, Any]:
    """The reply to a claim that failed: a NetworkError (a port the pod cannot have) keeps its
    kind and hint, so the claimer raises the error a cold boot would have raised."""
    if isinstance(err, NetworkError):
        return {"error": err.args[0], "hint": err.hint, "kind": NETWORK_ERROR}
    return {"error": str(err)}


@frozen_dataclass
class Lease:
    """A claimed pool VM: now the claimer's to use and to destroy."""

    vm: str
    run_dir: Path
    ready: dict[str, Any]
    #: the VM has the claimed layers attached (and mounted) already: hot-add nothing
    layers_attached: bool = False
    #: the uid:gid the VM's QEMU runs as (None: libvirt's shared user), as the pool booted it
    identity: tuple[int, int] | None = None
    #: the pool said ``identity`` (one from before did not: the claimer asks libvirt)
    identity_known: bool = False

    #: the pool publishes the claimed ports after this answer (``ports_later``): the claimer
    #: reads their outcome (:func:`check_ports_reply`) before it starts anything in the VM
    ports_pending: bool = False

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Lease:
        _raise_error(reply)
        vm, run_dir, ready = reply.get("vm"), reply.get("run_dir"), reply.get("ready")
        attached = reply.get("layers_attached", False)
        pending = reply.get("ports_pending", False)
        pair = reply.get("identity")
        if (not isinstance(vm, str) or not isinstance(run_dir, str) or not isinstance(ready, dict)
                or not isinstance(attached, bool) or not isinstance(pending, bool)
                or not (pair is None or _is_identity(pair))):
            raise PoolError(f"malformed claim reply: {reply!r:.500}")
        return cls(vm=vm, run_dir=Path(run_dir), ready=ready, layers_attached=attached,
                   identity=(pair[0], pair[1]) if pair is not None else None,
                   identity_known="identity" in reply, ports_pending=pending)

    def reply(self) -> dict[str, Any]:
        reply = {"vm": self.vm, "run_dir": str(self.run_dir), "ready": self.ready,
                 "layers_attached": self.layers_attached}
        if self.identity_known:
            reply["identity"] = list(self.identity) if self.identity is not None else None
        if self.ports_pending:
            reply["ports_pending"] = True
        return reply


#: the second line of a ``ports_later`` claim whose ports are published
PORTS_PUBLISHED = {"ports": "published"}


def check_ports_reply(reply: dict[str, Any]) -> None:
    """The second line of a ``ports_later`` claim: returns when the ports are published;
    NetworkError (the cold boot's) or PoolError otherwise."""
    _raise_error(reply)
    if reply != PORTS_PUBLISHED:
        raise PoolError(f"malformed ports reply: {reply!r:.200}")


def _raise_error(reply: dict[str, Any]) -> None:
    if "error" in reply:
        if reply.get("kind") == NETWORK_ERROR:
            hint = reply.get("hint")
            raise NetworkError(str(reply["error"]), hint=hint if isinstance(hint, str) else None)
        raise PoolError(str(reply["error"]))


def _is_identity(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value))
