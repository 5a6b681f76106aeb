"""One lock per root-only state directory: an exclusive ``flock`` on a file inside it, held
while a block reads and changes the directory (uid reservations, volume grants, task exec
sockets), so processes of one host never interleave their changes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked_dir(directory: Path, lock_name: str = ".lock") -> Iterator[None]:
    """Hold ``directory`` (made if missing; root-only, 0700) exclusively while the block runs,
    through the lock file ``lock_name`` in it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    fd = os.open(directory / lock_name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
