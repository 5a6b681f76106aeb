"""A bind mount made inside another process's mount namespace (a pool VM's QEMU), from a
thread of this process: no ``nsenter``/``mount`` programs to start (two execs, ~5 ms of a warm
launch's critical path, where this takes well under one).

The thread first stops sharing its filesystem context with the rest of the process
(``unshare(CLONE_FS)``: setns into a mount namespace requires it), then enters the namespace
(``setns``), makes the bind (and, for a read-only one, remounts it read-only, as util-linux's
``-o bind,ro`` does) and ends: only that thread ever is in the other namespace, and paths are
resolved there as ``nsenter --mount=… mount`` resolves them. Linux only; root
(CAP_SYS_ADMIN, CAP_SYS_CHROOT).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NamespaceBind:
    """A bind running in its own thread; :meth:`wait` returns None, or the OSError it met."""

    def __init__(self, ns_path: str, source: Path, target: Path, readonly: bool) -> None:
        self._args = (ns_path, os.fsencode(source), os.fsencode(target), readonly)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="ns-bind", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> OSError | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            return TimeoutError(f"the bind did not finish within {timeout} s")
        return self._error

    def _run(self) -> None:
        try:
            bind_in_namespace(*self._args)
        except OSError as e:
            self._error = e


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def bind_in_namespace(ns_path: str, source: bytes, target: bytes, readonly: bool) -> None:
    """Run only on a thread of its own that ends afterwards (:class:`NamespaceBind`): it
    leaves the calling thread in the namespace at ``ns_path``."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
        _check(_libc.setns(fd, CLONE_NEWNS), f"setns {ns_path}")
    finally:
        os.close(fd)
    # the target lies in the VM's share, where the guest (QEMU's user, through 9p) could
    # have swapped it for a symlink: it is opened without following one, mounted on by fd
    try:
        target_fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"the bind target is not a directory: {e.strerror}") from e
    try:
        _check(_libc.mount(source, _fd_path(target_fd), None, MS_BIND, None), "mount --bind")
    finally:
        os.close(target_fd)
    if readonly:  # the name now leads to the bind's root (the fd above: to what it covers)
        bound_fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _check(_libc.mount(None, _fd_path(bound_fd), None,
                               MS_REMOUNT | MS_BIND | MS_RDONLY, None),
                   "remount the bind read-only")
        finally:
            os.close(bound_fd)


def _fd_path(fd: int) -> bytes:
    return f"/proc/self/fd/{fd}".encode()
