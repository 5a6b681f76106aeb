"""Volume sources on the agent: resolved so that they stay inside their allowed root.

A sandbox is written by its guest over 9p, so any component of a sandbox path may be a link the
guest planted: root walks it one component at a time from a directory descriptor with
``O_NOFOLLOW`` and makes what is missing there, never by name from ``/``. A HOST_PATH volume is
resolved with ``realpath`` and must still lie under an allowed prefix (itself resolved). Errors
name the TaskInfo field (:class:`~hypervm.errors.InvalidSpec`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from executor.mesos.task_policy import under
from hypervm.errors import InvalidSpec

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def sandbox_dir(base: Path, relative: str, field: str) -> Path:
    """``base/relative`` as a real directory (made 0755 where missing), reached without
    following any link; ``relative`` is already normalised (no ``..``, not absolute)."""
    try:
        _walk(base, relative, field)
    except OSError as e:
        raise InvalidSpec(field, f"cannot make {relative!r} in the sandbox {base}: "
                          f"{e.strerror}") from e
    path = base / relative if relative != "." else base
    if not under(os.path.realpath(path), os.path.realpath(base)):  # a race lost to the guest
        raise InvalidSpec(field, f"{relative!r} leaves the sandbox")
    return path


def _walk(base: Path, relative: str, field: str) -> None:
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in (p for p in relative.split("/") if p not in ("", ".")):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidSpec(field, f"{relative!r} goes through {part!r}, which is "
                                      "a link or not a directory in the sandbox") from e
                raise
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def host_dir(path: str, prefixes: Iterable[str], field: str) -> Path:
    """The resolved host directory ``path``, which must lie under an allowed prefix after
    following every link."""
    real = os.path.realpath(path)
    if not any(under(real, os.path.realpath(p)) for p in prefixes):
        raise InvalidSpec(field, f"{path} resolves to {real}, which is not under a host path "
                          "the operator allows",
                          hint="the operator lists allowed directories in "
                               "HYPERVM_HOST_PATH_PREFIXES")
    if not os.path.isdir(real):
        raise InvalidSpec(field, f"{path} is not a directory on the agent")
    return Path(real)
