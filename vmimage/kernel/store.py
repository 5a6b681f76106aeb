"""A keyed artefact store on disk: one directory per key, published atomically, under a lock.

Used for the kernel (``<state>/kernel/<key>/``) and the initrd (``<state>/initrd/<key>/``).
A builder fills a private staging directory next to the final one and renames it into place,
so a reader sees either nothing or a complete artefact; a lock file serialises builders so two
concurrent ``make kernel`` runs build once. Everything published is readable by the
``libvirt-qemu`` user: directories 0755, files 0644 (0755 when executable).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from executor.errors import HostError

log = logging.getLogger(__name__)

#: prefix of staging directories; never a valid key, so readers and GC can skip them
STAGING_PREFIX = ".tmp-"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` and its parents with mode 0755 (QEMU must traverse them)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    except OSError as e:
        raise HostError(f"cannot create {path}: {e.strerror}",
                        hint="run as root or set HYPERVM_STATE_DIR") from e
    return path


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block."""
    ensure_dir(lock_path.parent)
    with open(lock_path, "a+") as fh:
        log.debug("waiting for lock %s", lock_path)
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_readable(root: Path) -> None:
    """chmod a tree so any user can read it: dirs 0755, files 0644 or 0755 if executable."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if p.stat().st_mode & 0o111 else 0o644)


@contextlib.contextmanager
def staging(parent: Path, key: str) -> Iterator[Path]:
    """A fresh staging directory in ``parent``; removed on exit unless it was published."""
    ensure_dir(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}-", dir=parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> Path:
    """Make ``tmp`` readable and rename it to ``final`` (atomic on one file system)."""
    make_readable(tmp)
    try:
        os.rename(tmp, final)
    except OSError as e:
        if final.is_dir():  # someone else published the same key first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise HostError(f"cannot publish {final}: {e.strerror}") from e
    log.info("published %s", final)
    return final
