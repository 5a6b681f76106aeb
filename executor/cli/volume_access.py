"""``hypervm run -v``: let the VM's own QEMU user reach the host directories shared with it.

Each VM's QEMU runs as a uid of its own (executor.libvirt.identity), so a directory the operator
shares keeps its owner and mode and gets, for the VM's lifetime, one POSIX ACL entry for that uid
(``r-x`` for ``:ro``, ``rwx`` otherwise), removed afterwards with the mode as it was. Only the
directory itself: what the guest creates in it belongs to the VM's uid; existing files keep their
own permissions (as a bind mount of another user's files would).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from executor.vm import HyperVM
from hypervm.errors import HostError, InvalidSpec
from hypervm.podspec import Mount

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")


def acl_entries(raw: bytes | None, mode: int) -> list[tuple[int, int, int]]:
    """(tag, perm, id) entries of an ACL xattr, or the mode's minimal ACL when there is none."""
    if raw is None:
        return [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID), (_GROUP_OBJ, (mode >> 3) & 7,
                _UNDEFINED_ID), (_OTHER, mode & 7, _UNDEFINED_ID)]
    (version,) = struct.unpack_from("<I", raw)
    if version != _VERSION or (len(raw) - 4) % _ENTRY.size:
        raise ValueError("unknown ACL format")
    return [_ENTRY.unpack_from(raw, off) for off in range(4, len(raw), _ENTRY.size)]


def with_user(entries: list[tuple[int, int, int]], uid: int,
              perm: int) -> bytes:
    """The ACL xattr of ``entries`` plus ``uid: perm``, with the mask widened to cover it."""
    kept = [e for e in entries if not (e[0] == _USER and e[2] == uid) and e[0] != _MASK]
    kept.append((_USER, perm, uid))
    group_class = 0
    for tag, p, _ in kept:
        if tag in (_USER, _GROUP, _GROUP_OBJ):
            group_class |= p
    old_mask = next((p for tag, p, _ in entries if tag == _MASK), None)
    kept.append((_MASK, group_class if old_mask is None else old_mask | perm, _UNDEFINED_ID))
    kept.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _VERSION) + b"".join(_ENTRY.pack(*e) for e in kept)


def check_reachable(real: Path) -> None:
    """Every directory above ``real`` must be traversable by other users (the VM's uid)."""
    for parent in real.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise InvalidSpec("--volume", f"{parent} (above {real}) cannot be traversed by "
                              "the VM's own user", hint=f"chmod o+x {parent}, or share a "
                              "directory elsewhere")


@contextlib.contextmanager
def granted(uid: int | None, mounts: Iterable[Mount]) -> Iterator[None]:
    """Each 9p mount's directory reachable by ``uid`` while the block runs (no-op for None:
    QEMU runs as libvirt's shared user, which the operator's modes govern)."""
    with contextlib.ExitStack() as stack:
        if uid is not None:
            for mount in mounts:
                if mount.type == "9p" and mount.source is not None and not mount.owned:
                    stack.enter_context(_grant(mount.source, uid, 5 if mount.readonly else 7))
        yield


@contextlib.contextmanager
def _grant(directory: Path, uid: int, perm: int) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        try:
            before: bytes | None = os.getxattr(fd, ACL_XATTR)
        except OSError:
            before = None
        try:
            os.setxattr(fd, ACL_XATTR, with_user(acl_entries(before, mode), uid, perm))
        except (OSError, ValueError) as e:
            raise HostError(f"cannot let the VM's user {uid} reach {directory} (a POSIX ACL): "
                            f"{e}") from e
        try:
            yield
        finally:
            _restore(fd, directory, before, mode)
    finally:
        os.close(fd)


def _restore(fd: int, directory: Path, before: bytes | None, mode: int) -> None:
    try:
        if before is None:
            os.removexattr(fd, ACL_XATTR)
        else:
            os.setxattr(fd, ACL_XATTR, before)
        os.fchmod(fd, stat.S_IMODE(mode))
    except OSError as e:
        log.warning("cannot take the VM's ACL entry off %s: %s", directory, e)


def granted_to(vm: HyperVM, mounts: Iterable[Mount]) -> contextlib.AbstractContextManager[None]:
    """:func:`granted` to the uid ``vm``'s QEMU runs as."""
    return granted(vm.identity.uid if vm.identity is not None else None, mounts)
