"""QEMU's run directories and a guest's writable shares: their owner and mode (root decides
them before libvirtd and virtlogd, both root, use them)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypervm import fsmode
from hypervm.errors import HostError

RUN_DIR_MODE = 0o750


def prepare(directory: Path, label: tuple[int, int] | None) -> None:
    """Create ``directory`` (and traversable parents), root's with the group of ``label`` (the
    VM's own identity, or the user libvirt runs QEMU as; None: no DAC), mode 0750: QEMU reaches
    it, but renames and plants nothing there. libvirtd makes the channel socket there (for
    that user; QEMU gets its fd), virtlogd (root) the console log, again at every rotation and
    following a link: one planted by an escaped QEMU would have root append the guest's
    console to any file."""
    try:
        missing = [p for p in (directory, *directory.parents) if not p.exists()]
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            path.chmod(0o755)  # whatever the umask: QEMU must traverse the parents
        if label is not None and os.geteuid() == 0:
            os.chown(directory, 0, label[1])
        directory.chmod(RUN_DIR_MODE)
    except OSError as e:
        raise HostError(f"cannot prepare {directory} for QEMU: {e}") from e
    if label is not None:
        check_traversable(directory.parent, *label)


def give(directory: Path, label: tuple[int, int] | None) -> None:
    """Make ``directory`` (not its contents) belong to ``label`` (the user libvirt runs QEMU
    as), so a guest can create files in it over 9p. No-op unless root and ``label``."""
    if label is None or os.geteuid() != 0:
        return
    try:  # the directory may be in a guest's share: a symlink there is not followed
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, *label)
        finally:
            os.close(fd)
    except OSError as e:
        raise HostError(f"cannot give {directory} to QEMU's user (a symlink or not a "
                        f"directory?): {e}") from e


def check_traversable(directory: Path, uid: int, gid: int) -> None:
    """QEMU (running as ``uid:gid`` plus the user's supplementary groups) must be able to reach
    ``directory``."""
    groups = fsmode.process_groups(uid, gid)
    for path in (directory, *directory.parents):
        st = path.stat()
        if not fsmode.allows(st, uid, groups, fsmode.EXECUTE):
            raise HostError(
                f"QEMU (uid {uid}) cannot reach {directory}: {path} is mode "
                f"{stat.S_IMODE(st.st_mode):o}",
                hint=f"chmod o+x {path}",
            )
