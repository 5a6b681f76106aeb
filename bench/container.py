"""Container baseline: the launch image's own rootfs (its erofs layer, loop-mounted read-only
on the host) run with new mount/UTS/IPC/PID/net namespaces + chroot: ``unshare … chroot DIR
/bin/true``, timed from fork to exit, as a container runtime's minimum."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

UNSHARE = ("unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--fork")


@contextlib.contextmanager
def mounted_layer(layer: Path) -> Iterator[Path]:
    """A read-only loop mount of one erofs layer image."""
    target = Path(tempfile.mkdtemp(prefix="hypervm-bench-ct-", dir="/var/tmp"))
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(layer), str(target)],
                   check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
        target.rmdir()


def run_once(root: Path, argv: Sequence[str] = ("/bin/true",)) -> float:
    started = time.monotonic()
    subprocess.run([*UNSHARE, "chroot", str(root), *argv], check=True, capture_output=True)
    return time.monotonic() - started

