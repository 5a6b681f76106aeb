"""The claiming side of the warm pool: take a booted VM from ``hypervm pool serve`` and give it
a pod's layers and mounts.

- :func:`claim` speaks the protocol of executor.pool.protocol and receives the guest channel's
  connected socket with the reply.
- :func:`start_bind` makes a host directory appear inside the pool VM's share: a bind mount
  made in QEMU's own mount namespace (libvirt gives each QEMU one), so the host's mount table
  never changes and removing the VM's run dir can never reach into the bound directory. It
  runs on a thread of its own (executor.pool.nsbind) while the claimer talks to the guest.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from executor.pool.nsbind import NamespaceBind
from executor.pool.protocol import (
    MAX_LINE,
    Lease,
    check_ports_reply,
    claim_request,
    decode,
    encode,
)
from executor.pool.release import check_released, release_request
from hypervm.config import HostConfig
from hypervm.errors import HyperVMError, PoolError
from hypervm.netspec import PortMapping

log = logging.getLogger(__name__)

CLAIM_TIMEOUT = 5.0
#: seconds a bind into QEMU's mount namespace may take
BIND_TIMEOUT = 10.0


def _request(cfg: HostConfig, message: dict[str, Any],
             timeout: float) -> tuple[dict[str, Any], list[int]]:
    reply, fds, follow = _exchange(cfg, message, timeout)
    follow.close()
    return reply, fds


def _exchange(cfg: HostConfig, message: dict[str, Any],
              timeout: float) -> tuple[dict[str, Any], list[int], PortsPending]:
    """The reply line (with its descriptors) and the connection, for a second line."""
    path = cfg.pool_socket
    if not path.exists():
        raise PoolError(f"no warm pool serves at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    fds: list[int] = []
    try:
        sock.connect(str(path))
        sock.sendall(encode(message))
        data = b""
        while b"\n" not in data and len(data) <= MAX_LINE:
            chunk, got, _flags, _addr = socket.recv_fds(sock, MAX_LINE, 1)
            fds += got
            if not chunk:
                break
            data += chunk
    except OSError as e:
        sock.close()
        for fd in fds:
            os.close(fd)
        raise PoolError(f"the warm pool at {path} does not answer: {e}") from e
    line, _, rest = data.partition(b"\n")
    try:
        return decode(line, "pool reply"), fds, PortsPending(sock, rest)
    except PoolError:
        sock.close()
        for fd in fds:
            os.close(fd)
        raise


def request(cfg: HostConfig, message: dict[str, Any],
            timeout: float) -> tuple[dict[str, Any], list[int]]:
    """One request of another operation on the pool's socket (e.g. a standby clone's,
    executor.snapshot.standby): its reply and the descriptors sent with it (the caller's to
    close). PoolError when no pool answers."""
    return _request(cfg, message, timeout)


class PortsPending:
    """The connection of a claim whose ports the pool publishes after its answer
    (``ports_later``): :meth:`wait` reads their outcome. Close it when not waiting."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock, self.data = sock, data

    def wait(self, timeout: float) -> None:
        """Returns once the pool published the ports; NetworkError (the cold boot's: the pool
        destroyed the VM) or PoolError otherwise."""
        try:
            self.sock.settimeout(timeout)
            while b"\n" not in self.data and len(self.data) <= MAX_LINE:
                chunk = self.sock.recv(MAX_LINE)
                if not chunk:
                    break
                self.data += chunk
        except OSError as e:
            raise PoolError(f"the warm pool did not say whether it published the ports: "
                            f"{e}") from e
        finally:
            self.close()
        check_ports_reply(decode(self.data.partition(b"\n")[0], "pool ports reply"))

    def close(self) -> None:
        self.sock.close()


def claim(cfg: HostConfig, vcpus: int, memory_mib: int, metadata: Mapping[str, str] | None = None,
          layers: Sequence[str] = (), timeout: float = CLAIM_TIMEOUT,
          ports: Sequence[PortMapping] = ()) -> tuple[Lease, socket.socket]:
    """Claim a warm VM of this shape for a pod of these ``layers`` (distinct layer files in
    disk-serial order), ``metadata`` written on it, ``ports`` published on it; the caller owns
    (and must destroy) it from now on. PoolError when none can be had: boot cold then.
    NetworkError when a port cannot be published (a cold boot would fail alike)."""
    lease, sock, _ = claim_ports_later(cfg, vcpus, memory_mib, metadata, layers, timeout,
                                       ports, ports_later=False)
    return lease, sock


def claim_ports_later(cfg: HostConfig, vcpus: int, memory_mib: int,
                      metadata: Mapping[str, str] | None = None, layers: Sequence[str] = (),
                      timeout: float = CLAIM_TIMEOUT, ports: Sequence[PortMapping] = (), *,
                      ports_later: bool = True, image: str | None = None
                      ) -> tuple[Lease, socket.socket, PortsPending | None]:
    """:func:`claim`, the pool publishing ``ports`` after its answer when it can: then the
    third value is not None and the caller must :meth:`PortsPending.wait` before it starts
    anything in the VM (or close it, and destroy the VM). ``image``: the pod's one image's
    reference, which the pool may learn (executor.pool.learn)."""
    reply, fds, follow = _exchange(cfg, claim_request(vcpus, memory_mib, metadata, layers,
                                                      ports, ports_later, image), timeout)
    try:
        lease = Lease.from_reply(reply)
        if len(fds) != 1:
            raise PoolError(f"the pool sent {len(fds)} descriptors with the claim, not 1")
    except HyperVMError:
        follow.close()
        for fd in fds:
            os.close(fd)
        raise
    if not lease.ports_pending:
        follow.close()
    return lease, socket.socket(fileno=fds[0]), follow if lease.ports_pending else None


def release(cfg: HostConfig, vm: str, timeout: float = CLAIM_TIMEOUT) -> None:
    """Hand our claimed ``vm`` back to the pool, which destroys it (executor.pool.release);
    returns once its QEMU has exited. PoolError when the pool does not take it."""
    reply, fds = _request(cfg, release_request(vm), timeout)
    for fd in fds:
        os.close(fd)
    check_released(reply, vm)


def status(cfg: HostConfig, timeout: float = CLAIM_TIMEOUT) -> dict[str, Any]:
    reply, fds = _request(cfg, {"op": "status"}, timeout)
    for fd in fds:
        os.close(fd)
    if "error" in reply:
        raise PoolError(str(reply["error"]))
    return reply


class PendingBind:
    """A bind started by :func:`start_bind`; :meth:`wait` for it before the guest uses it."""

    def __init__(self, bind: NamespaceBind, source: Path, target: Path) -> None:
        self.bind, self.source, self.target = bind, source, target

    def wait(self) -> None:
        """PoolError when the bind failed."""
        error = self.bind.wait(BIND_TIMEOUT)
        if error is not None:
            raise PoolError(f"cannot bind {self.source} into the pool VM: {error}")
        log.debug("bound %s on %s in QEMU's mount namespace", self.source, self.target)


def start_bind(qemu_pid: int, source: Path, target: Path, readonly: bool) -> PendingBind:
    """Start bind-mounting ``source`` on ``target`` inside QEMU's mount namespace (read-only
    there too when ``readonly``; both paths resolved there, as ``nsenter --mount`` would),
    on a thread of its own (executor.pool.nsbind), so the caller can talk to the guest
    meanwhile. Refuses when QEMU shares this process's namespace: the bind would then land
    in the host's mount table."""
    ns = f"/proc/{qemu_pid}/ns/mnt"
    try:
        if os.stat(ns).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            raise PoolError("QEMU runs in the host's mount namespace (libvirt qemu.conf "
                            "namespaces=[]): a pool VM cannot take mounts")
    except OSError as e:
        raise PoolError(f"cannot inspect QEMU's mount namespace: {e}") from e
    return PendingBind(NamespaceBind(ns, source, target, readonly), source, target)


def wait_binds(binds: list[PendingBind]) -> None:
    """Wait for every bind (none is left running); PoolError for the first that failed."""
    failed: PoolError | None = None
    for bind in binds:
        try:
            bind.wait()
        except PoolError as e:
            failed = failed or e
    if failed is not None:
        raise failed
