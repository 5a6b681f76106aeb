"""Directories and files root uses inside a guest-writable tree, never resolved by name.

A task's sandbox is shared read-write with its guest, which is hostile: whatever it can name
there (a symlink to /etc/cron.d/x, a FIFO that blocks an open, a file it made) may be planted
between two of our calls. So below a trusted root (a directory the agent made: the executor's
sandbox) every component is opened relative to its parent's fd with ``O_NOFOLLOW``, files are
opened ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``, and renames are relative to a
directory fd (renameat moves the link itself, never what it points to).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path, PurePosixPath

from hypervm.errors import HostError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FILE_MODE = 0o644
DIR_MODE = 0o755


def _parts(relative: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if PurePosixPath(relative).is_absolute() or ".." in parts:
        raise HostError(f"{relative}: not a plain relative path below the sandbox")
    return parts


def open_dir(root: Path, relative: str | PurePosixPath = "", create: bool = False) -> int:
    """An fd of ``root/relative``. ``root`` is trusted (opened by name); every component below
    it is opened with openat + O_NOFOLLOW | O_DIRECTORY (made with mkdirat when ``create``): a
    symlink or non-directory anywhere below ``root`` is a HostError, never followed."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in _parts(relative):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise HostError(f"{root / relative}: {part!r} is not a directory we may use "
                                f"(a symlink planted by a guest?): {e.strerror}") from e
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root: Path, relative: str | PurePosixPath) -> Path:
    """Create ``root/relative`` like ``mkdir -p``, refusing symlinks below ``root``."""
    os.close(open_dir(root, relative, create=True))
    return root.joinpath(*_parts(relative))


def _ours(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1


def open_append(dir_fd: int, name: str) -> int:
    """An fd appending to ``name`` in ``dir_fd``: a regular file we own with one link. Anything
    else there (a symlink, FIFO, device, a file the guest made or hard-linked) is unlinked (the
    entry itself) and a new file made with O_EXCL, so nothing is ever followed or opened."""
    for _ in range(5):
        try:
            fd = os.open(name, APPEND_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            fd = None
        except OSError:  # ELOOP (a symlink), ENXIO (a FIFO without reader), ...
            fd = None
            _unlink(dir_fd, name)
        if fd is not None:
            if _ours(os.fstat(fd)):
                return fd
            os.close(fd)
            _unlink(dir_fd, name)
        try:
            fd = os.open(name, APPEND_FLAGS | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            continue  # something was planted meanwhile: look again
        if _ours(os.fstat(fd)):
            return fd
        os.close(fd)
    raise HostError(f"cannot create {name!r}: the guest keeps replacing it")


def _unlink(dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise HostError(f"{name!r} is a directory")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def rename_in(dir_fd: int, src: str, dst: str) -> None:
    """renameat within ``dir_fd`` when ``src`` exists (the link itself moves, never followed);
    a guest's directory in the way makes it a no-op."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
        os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove_in(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(name, dir_fd=dir_fd)
