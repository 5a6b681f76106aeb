"""The claiming side of the warm pool: take a booted VM from ``hypervm pool serve`` and give it
a pod's layers and mounts.

- :func:`claim` speaks the protocol of executor.pool_spec and receives the guest channel's
  connected socket with the reply.
- :func:`bind_into_qemu` makes a host directory appear inside the pool VM's share: a bind mount
  made in QEMU's own mount namespace (libvirt gives each QEMU one), so the host's mount table
  never changes and removing the VM's run dir can never reach into the bound directory.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from executor.config import HostConfig
from executor.errors import PoolError
from executor.pool_spec import MAX_LINE, Lease, claim_request, decode, encode

log = logging.getLogger(__name__)

CLAIM_TIMEOUT = 5.0


def _request(cfg: HostConfig, message: dict[str, Any],
             timeout: float) -> tuple[dict[str, Any], list[int]]:
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
        while not data.endswith(b"\n"):
            chunk, got, _flags, _addr = socket.recv_fds(sock, MAX_LINE, 1)
            fds += got
            if not chunk:
                break
            data += chunk
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise PoolError(f"the warm pool at {path} does not answer: {e}") from e
    finally:
        sock.close()
    try:
        return decode(data, "pool reply"), fds
    except PoolError:
        for fd in fds:
            os.close(fd)
        raise


def claim(cfg: HostConfig, vcpus: int, memory_mib: int, metadata: Mapping[str, str] | None = None,
          layers: Sequence[str] = (), timeout: float = CLAIM_TIMEOUT
          ) -> tuple[Lease, socket.socket]:
    """Claim a warm VM of this shape for a pod of these ``layers`` (distinct layer files in
    disk-serial order), ``metadata`` written on it; the caller owns (and must destroy) it
    from now on. PoolError when none can be had: boot cold then."""
    reply, fds = _request(cfg, claim_request(vcpus, memory_mib, metadata, layers), timeout)
    try:
        lease = Lease.from_reply(reply)
        if len(fds) != 1:
            raise PoolError(f"the pool sent {len(fds)} descriptors with the claim, not 1")
    except PoolError:
        for fd in fds:
            os.close(fd)
        raise
    return lease, socket.socket(fileno=fds[0])


def status(cfg: HostConfig, timeout: float = CLAIM_TIMEOUT) -> dict[str, Any]:
    reply, fds = _request(cfg, {"op": "status"}, timeout)
    for fd in fds:
        os.close(fd)
    if "error" in reply:
        raise PoolError(str(reply["error"]))
    return reply


def bind_into_qemu(qemu_pid: int, source: Path, target: Path, readonly: bool) -> None:
    """Bind-mount ``source`` on ``target`` inside QEMU's mount namespace (read-only there too
    when ``readonly``). Refuses when QEMU shares this process's namespace: the bind would
    then land in the host's mount table."""
    ns = f"/proc/{qemu_pid}/ns/mnt"
    try:
        if os.stat(ns).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            raise PoolError("QEMU runs in the host's mount namespace (libvirt qemu.conf "
                            "namespaces=[]): a pool VM cannot take mounts")
    except OSError as e:
        raise PoolError(f"cannot inspect QEMU's mount namespace: {e}") from e
    # util-linux mount: "bind,ro" binds, then remounts the bind read-only
    argv = ["nsenter", f"--mount={ns}", "--", "mount", "-o", "bind,ro" if readonly else "bind",
            "--", str(source), str(target)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PoolError(f"cannot bind {source} into the pool VM: "
                        f"{result.stderr.strip() or result.returncode}")
    log.debug("bound %s on %s in QEMU %d's mount namespace", source, target, qemu_pid)

