"""Let QEMU's user reach a task's sandbox inside an executor sandbox it may not enter.

Mesos 1.11 creates every executor sandbox ``0750`` root:root (src/slave/paths.cpp). QEMU runs as
another user (``libvirt-qemu``), and a group task's sandbox ``<sandbox>/tasks/<id>`` is shared
with the guest over 9p: QEMU must *search* (``x``) every directory on the way. We give exactly
that and nothing more: one POSIX ACL entry ``user:<uid>:--x`` on each directory between the
executor sandbox (included) and the shared directory (excluded) that the user cannot already
search. The mode bits stay as the agent set them (the ACL mask keeps the group's permissions),
no other user gains anything, and nothing becomes readable or writable. ``uid`` is the only
input that says who gets access (today libvirt's one QEMU user; per-VM users later).

The ACL is written as the kernel's ``system.posix_acl_access`` xattr (linux/posix_acl_xattr.h:
a little-endian version 2 header, then (tag, perm, id) entries sorted by tag and id), read and
written through file descriptors opened without following symlinks, so no path a guest could
have written into is resolved by root.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hypervm.errors import HostError

log = logging.getLogger(__name__)

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
SEARCH = 0o1
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


def acl_from_mode(mode: int) -> list[Entry]:
    """The minimal ACL equivalent to a file's permission bits."""
    return [Entry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7),
            Entry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
            Entry(OTHER, UNDEFINED_ID, mode & 7)]


def decode(raw: bytes) -> list[Entry]:
    """The entries of a ``system.posix_acl_access`` value; ValueError if it is malformed."""
    if len(raw) < _HEADER.size or (len(raw) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"ACL xattr of {len(raw)} bytes")
    (version,) = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise ValueError(f"ACL xattr version {version}")
    return [Entry(tag, ident, perm) for tag, perm, ident in
            _ENTRY.iter_unpack(raw[_HEADER.size:])]


def encode(entries: list[Entry]) -> bytes:
    """The xattr value: entries in the order the kernel requires (tag, then id)."""
    return _HEADER.pack(VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm, e.id) for e in sorted(entries))


def with_search(entries: list[Entry], uid: int) -> list[Entry]:
    """``entries`` plus search permission for ``uid`` (kept with its other permissions), and a
    mask that is the union of the group class, as setfacl computes it: nobody else's
    effective permissions change."""
    named = {e.id: e.perm for e in entries if e.tag == USER}
    named[uid] = named.get(uid, 0) | SEARCH
    kept = [e for e in entries if e.tag not in (USER, MASK)]
    users = [Entry(USER, ident, perm) for ident, perm in named.items()]
    mask = 0
    for e in kept + users:
        if e.tag in (GROUP_OBJ, GROUP, USER):
            mask |= e.perm
    return kept + users + [Entry(MASK, UNDEFINED_ID, mask)]


def can_search(st: os.stat_result, entries: list[Entry] | None, uid: int, gid: int) -> bool:
    """Whether ``uid`` (primary group ``gid``) may search a directory (POSIX.1e access check,
    supplementary groups left out: a False here only costs one ACL entry)."""
    if uid == 0 or st.st_uid == uid:
        return uid == 0 or bool(st.st_mode & stat.S_IXUSR)
    acl = entries or acl_from_mode(st.st_mode)
    mask = next((e.perm for e in acl if e.tag == MASK), 7)
    for e in acl:
        if e.tag == USER and e.id == uid:
            return bool(e.perm & mask & SEARCH)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _read_acl(fd: int) -> list[Entry] | None:
    try:
        return decode(os.getxattr(fd, XATTR))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def _walk(root: Path, target: Path) -> Iterator[tuple[Path, int]]:
    """Open ``root`` and each directory below it down to ``target``'s parent (never following
    a symlink); yields (path, fd), closing each fd after the caller's turn."""
    relative = target.relative_to(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    path = root
    try:
        for name in (*relative.parts[:-1], None):
            yield path, fd
            if name is None:
                return
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd, path = child, path / name
    finally:
        os.close(fd)


def grant_search_below(root: Path, target: Path, uid: int, gid: int) -> list[Path]:
    """Let ``uid`` search ``root`` and every directory under it on the way to ``target`` (not
    ``target`` itself); the directories that got an ACL entry. ``target`` equal to ``root``
    needs nothing. HostError names the directory when the filesystem refuses."""
    if target == root:
        return []
    try:
        target.relative_to(root)
    except ValueError:
        return []  # not inside the sandbox: a host path, whose access is the operator's
    changed = []
    try:
        for path, fd in _walk(root, target):
            st = os.fstat(fd)
            entries = _read_acl(fd)
            if can_search(st, entries, uid, gid):
                continue
            os.setxattr(fd, XATTR, encode(with_search(entries or acl_from_mode(st.st_mode),
                                                      uid)))
            changed.append(path)
    except OSError as e:
        where = e.filename or root
        raise HostError(
            f"cannot let QEMU (uid {uid}) reach {target} through {where}: {e.strerror}",
            hint="the agent's --work_dir must be on a filesystem with POSIX ACLs (ext4, xfs, "
                 "tmpfs), and the sandbox a real directory") from e
    if changed:
        log.info("QEMU (uid %d) may search %s", uid, ", ".join(map(str, changed)))
    return changed
