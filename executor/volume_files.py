"""Hand back what a VM made in a ``run -v`` directory once the VM has ended.

Under 9p's mapped model every file and directory the guest creates in a shared directory belongs
on the host to the QEMU's uid (executor.libvirt.identity), mode 0600/0700. Once that VM ends the
uid goes back to the range, and its next holder (another tenant's VM, after the range went round)
would own those files. So when a VM ends, every entry under the directory that its uid (or gid)
owns is given to the directory's owner — what ``run -v`` users expect of their outputs (docker,
without a user namespace, leaves root's) — owner-only (0600/0700 as 9p made them; an escaped
QEMU's group/other bits and set-id bits dropped) and without a POSIX ACL (an escaped QEMU could
have named another VM uid in one).

Root walks a tree a hostile guest built, which may still change under it (another VM sharing the
directory): every step is relative to an open directory, no name is resolved through a link
(each entry is opened ``O_PATH | O_NOFOLLOW``, checked and changed through that descriptor, and a
directory is listed through the descriptor it was checked on), nothing is ever opened for
reading or writing (a FIFO cannot block, a device node is not opened). The walk is bounded: at
most :data:`MAX_DEPTH` levels (two descriptors each) and a time budget; a walk cut short says
so, and the caller keeps the uid out of reuse (its grant record) until a later walk
(``hypervm gc``) completes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

#: deeper directories are not walked (each level holds two descriptors open)
MAX_DEPTH = 128
_AT_EMPTY_PATH = 0x1000
_ACLS = ("system.posix_acl_access", "system.posix_acl_default")


@dataclass
class Reclaim:
    """The outcome of one walk: ``complete`` when every entry was seen."""

    complete: bool = True
    changed: int = 0
    visited: int = 0
    #: why the walk is incomplete
    reason: str = ""


@functools.cache
def _libc() -> Any:
    """The C library (errno kept), loaded the first time a walk needs it: every run imports
    this module (executor.volume_access), few hand a ``-v`` directory back."""
    import ctypes  # optional: ~2.5 ms of every run's start, used only by such a walk

    return ctypes.CDLL(None, use_errno=True)


def _fchown_path(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", AT_EMPTY_PATH): the inode ``fd`` (O_PATH, possibly a symlink) itself."""
    if _libc().fchownat(fd, b"", uid, gid, _AT_EMPTY_PATH) != 0:
        import ctypes  # optional: loaded by _libc() already

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _owner_only(fd: int, st: os.stat_result, is_dir: bool) -> None:
    """Drop group/other bits, set-id bits and ACLs of the entry ``fd`` (O_PATH, no symlink; a
    real descriptor for a directory). An O_PATH descriptor reaches its inode through
    /proc/self/fd, the inode it was opened on: no name is looked up again."""
    target: int | str = fd if is_dir else f"/proc/self/fd/{fd}"
    os.chmod(target, stat.S_IMODE(st.st_mode) & 0o700)
    for name in _ACLS:
        with contextlib.suppress(OSError):  # ENODATA: it has none
            os.removexattr(target, name)


def _hand_back(fd: int, st: os.stat_result, uid: int, to: tuple[int, int]) -> bool:
    """Give the entry ``fd`` (fstat ``st``) to ``to`` if ``uid`` owns it (or its group);
    whether it changed."""
    if st.st_uid != uid and st.st_gid != uid:
        return False
    new_uid = to[0] if st.st_uid == uid else -1
    new_gid = to[1] if st.st_gid == uid else -1  # (a VM's gid is its uid) else the group stays
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir:
        os.fchown(fd, new_uid, new_gid)
    else:
        _fchown_path(fd, new_uid, new_gid)
    if not stat.S_ISLNK(st.st_mode):
        _owner_only(fd, st, is_dir)
    return True


def _entries(dir_fd: int) -> Iterator[str]:
    with os.scandir(dir_fd) as it:
        for entry in it:
            yield entry.name


def hand_back(top: int, uid: int, to: tuple[int, int], budget_s: float,
              clock: Callable[[], float] = time.monotonic) -> Reclaim:
    """Give every entry below the open directory ``top`` that ``uid`` owns to ``to`` (uid,
    gid), within ``budget_s`` seconds. Never raises: an entry that cannot be changed (or a
    tree deeper than :data:`MAX_DEPTH`) makes the walk incomplete."""
    done = Reclaim()
    deadline = clock() + budget_s
    stack: list[tuple[int, Iterator[str]]] = []
    try:
        first = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=top)
        stack.append((first, _entries(first)))
        while stack and done.complete:
            dir_fd, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                os.close(dir_fd)
                continue
            done.visited += 1
            if clock() > deadline:
                done.complete, done.reason = False, f"took over {budget_s:.0f} s"
                break
            child = _visit(dir_fd, name, uid, to, done)
            if child is not None:
                if len(stack) >= MAX_DEPTH:
                    os.close(child)
                    done.complete, done.reason = False, f"deeper than {MAX_DEPTH} levels"
                    break
                stack.append((child, _entries(child)))
    except OSError as e:
        done.complete, done.reason = False, f"{e.strerror or e}"
    finally:
        for dir_fd, names in stack:
            names.close()  # type: ignore[attr-defined]
            os.close(dir_fd)
    return done


def _visit(dir_fd: int, name: str, uid: int, to: tuple[int, int], done: Reclaim) -> int | None:
    """Hand back the entry ``name`` of ``dir_fd``; a directory comes back open for listing."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None  # gone meanwhile
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            done.changed += _hand_back(fd, st, uid, to)
            return None
        # list the directory checked, not whatever ``name`` names by now
        try:
            listed = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return None  # removed meanwhile
    finally:
        os.close(fd)
    try:
        done.changed += _hand_back(listed, os.fstat(listed), uid, to)
    except BaseException:
        os.close(listed)
        raise
    return listed
