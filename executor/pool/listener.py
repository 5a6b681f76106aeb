"""The warm pool's unix socket (executor.pool.daemon serves it): binding it root-only, who is
calling, and reading one request line with the descriptors sent with it, bounded."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path
from typing import Any

from executor.pool.protocol import MAX_LINE, encode
from hypervm.errors import HostError, PoolError

#: descriptors a request may carry (the fast run's stdout and stderr)
MAX_REQUEST_FDS = 2


def bind(path: Path) -> socket.socket:
    """The pool's listening socket at ``path``, root only (a claim hands over a VM); a dead
    pool's socket is replaced, a live pool's is an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a dead pool's socket
        else:
            raise HostError(f"a warm pool already serves at {path}",
                            hint="stop it first, or set HYPERVM_POOL_SOCKET")
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # root only: a claim hands over a VM
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(16)
    return server


def close(server: socket.socket | None, path: Path) -> None:
    """Stop accepting on ``server`` (if any: bound at ``path``) and remove its socket file."""
    if server is None:
        return
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def peer(conn: socket.socket) -> tuple[int, int]:
    """The calling process's pid and uid (SO_PEERCRED: the kernel's word, not the caller's)."""
    pid, uid, _gid = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def read_request(conn: socket.socket) -> tuple[bytes, bytes, list[int]]:
    """The request line, what came after it, and the descriptors sent with it."""
    data, fds = b"", []
    try:
        while b"\n" not in data:
            chunk, got, _flags, _addr = socket.recv_fds(conn, 4096, MAX_REQUEST_FDS)
            fds += got
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_LINE or len(fds) > MAX_REQUEST_FDS:
                raise PoolError(f"request: longer than {MAX_LINE} bytes or more than "
                                f"{MAX_REQUEST_FDS} descriptors")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    line, newline, rest = data.partition(b"\n")
    return line + newline, rest, fds


def send_quietly(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(encode(message))
    except OSError:
        pass
