"""``hypervm run -v``: let the VM's own QEMU user reach the host directories shared with it.

Each VM's QEMU runs as a uid of its own (executor.libvirt.identity), so a directory the operator
shares keeps its owner and mode and gets, for the VM's lifetime, one POSIX ACL entry for that uid
(``r-x`` for ``:ro``, ``rwx`` otherwise). Only the directory itself: what the guest creates in it
belongs to the VM's uid while it runs, and to the directory's owner once it has ended
(:mod:`executor.volume_files`); existing files keep their own permissions (as a bind mount of
another user's files would). The VM's owner holds the grant (:class:`VolumeHold`) from before
its QEMU starts to after it ends: the foreground ``run``, or the supervisor of a detached one
(executor.supervisor).

When the VM ends only its own entry is taken off: another VM sharing the directory keeps its
own. Once no VM uid (``HYPERVM_VM_UID_RANGE``) is left, the operator's ACL is as it was (its
mask, or no ACL and the mode as it was). Every grant is recorded (``STATE_DIR/volume-grants/``,
which survives a reboot as the ACL does) under one flock, which also orders concurrent grants on
a directory; an owner killed by SIGKILL leaves its record and entry, which ``hypervm gc`` takes
off once the record's VM no longer runs and the record is older than a boot could take
(:func:`release_stale`); until then the uid allocator hands that uid to no other VM. A record
goes only once its entry is off and nothing under a read-write directory is the uid's any more;
otherwise (the entry could not be taken off, the walk was cut short, the directory was moved)
it stays, the uid out of reuse, and gc retries.

A share given to the VM's uid itself (``Mount.owned``: a Mesos task's sandbox, which HyperVM
chowns to the uid) is held the same way, without an ACL entry: when the VM has ended the
directory goes back to root and what the uid made in it to root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from executor.libvirt import identity
from executor.libvirt.grants import Grant, Keeper, keeper, read_record, records, write_record
from hypervm.config import HostConfig
from hypervm.dirlock import locked_dir
from hypervm.errors import HostError, InvalidSpec
from hypervm.frozen import frozen_dataclass
from hypervm.podspec import Mount

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")
#: how long the end of a VM may walk a read-write directory to hand its files back (then gc's)
HAND_BACK_BUDGET_S = 30.0
GC_HAND_BACK_BUDGET_S = 300.0


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
    return _encode(kept)


def _encode(entries: list[tuple[int, int, int]]) -> bytes:
    """The xattr value, entries in the order the kernel requires (tag, then id)."""
    ordered = sorted(entries, key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _VERSION) + b"".join(_ENTRY.pack(*e) for e in ordered)


def _mask(entries: list[tuple[int, int, int]]) -> int | None:
    return next((p for tag, p, _ in entries if tag == _MASK), None)


def without_user(entries: list[tuple[int, int, int]], uid: int, is_vm_uid: Callable[[int], bool],
                 operator_mask: int | None) -> list[tuple[int, int, int]] | None:
    """The ACL once ``uid``'s entry is off: as it is while another VM uid has an entry (its
    mask covers that VM), else the operator's: their named entries with their mask
    (``operator_mask``, or the union of the group class when they had none), or None when no
    named entry is left (the caller drops the ACL and sets the mode from :func:`mode_bits`)."""
    kept = [e for e in entries if not (e[0] == _USER and e[2] == uid)]
    if any(tag == _USER and is_vm_uid(ident) for tag, _, ident in kept):
        return kept
    if not any(tag in (_USER, _GROUP) for tag, _, _ in kept):
        return None
    kept = [e for e in kept if e[0] != _MASK]
    mask = operator_mask
    if mask is None:
        mask = 0
        for tag, p, _ in kept:
            if tag in (_USER, _GROUP, _GROUP_OBJ):
                mask |= p
    return kept + [(_MASK, mask, _UNDEFINED_ID)]


def mode_bits(entries: list[tuple[int, int, int]]) -> int:
    """The permission bits of a minimal ACL (owner, owning group, others)."""
    perm = {tag: p for tag, p, _ in entries if tag in (_USER_OBJ, _GROUP_OBJ, _OTHER)}
    return perm.get(_USER_OBJ, 0) << 6 | perm.get(_GROUP_OBJ, 0) << 3 | perm.get(_OTHER, 0)


def check_reachable(real: Path) -> None:
    """Every directory above ``real`` must be traversable by other users (the VM's uid)."""
    for parent in real.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise InvalidSpec("--volume", f"{parent} (above {real}) cannot be traversed by "
                              "the VM's own user", hint=f"chmod o+x {parent}, or share a "
                              "directory elsewhere")


@contextlib.contextmanager
def granted(uid: int | None, mounts: Iterable[Mount], domain: str = "",
            kept_by: Keeper | None = None) -> Iterator[None]:
    """Each 9p mount's directory reachable by ``uid`` (the QEMU of ``domain``) while the block
    runs, recorded in ``kept_by`` (None: unrecorded, every other uid counts as the
    operator's). No-op for None: QEMU runs as libvirt's shared user, which the operator's
    modes govern."""
    perms: dict[Path, int] = {}  # one directory shared twice (ro and rw): one rwx entry
    owned: set[Path] = set()
    for mount in mounts:
        if mount.type != "9p" or mount.source is None:
            continue
        if not mount.owned:
            perms[mount.source] = perms.get(mount.source, 0) | (5 if mount.readonly else 7)
        elif not mount.readonly:
            owned.add(mount.source)
    with contextlib.ExitStack() as stack:
        if uid is not None:
            for source, perm in perms.items():
                stack.enter_context(_grant(source, uid, perm, domain, kept_by))
            for source in owned - perms.keys():
                stack.enter_context(_hold_owned(source, uid, domain, kept_by))
        yield


def _open_dir(directory: Path | str) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


@contextlib.contextmanager
def _maybe_locked(kept_by: Keeper | None) -> Iterator[None]:
    if kept_by is None:
        yield
    else:
        with locked_dir(kept_by.records):
            yield


def _open_shared(directory: Path) -> int:
    """The shared directory as the user named it (``run -v`` resolved it when parsing), not
    through a link put in its place since; InvalidSpec when it is gone or is no directory."""
    try:
        return _open_dir(directory)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(directory):
            what = "is now a symbolic link"
        elif e.errno in (errno.ENOENT, errno.ENOTDIR):
            what = "is no longer a directory"
        else:
            what = f"cannot be opened: {e.strerror}"
        raise InvalidSpec("--volume", f"{directory} {what}",
                          hint="share an existing directory (by its real path)") from e


@contextlib.contextmanager
def _grant(directory: Path, uid: int, perm: int, domain: str,
           kept_by: Keeper | None) -> Iterator[None]:
    fd = _open_shared(directory)
    record: Path | None = None
    try:
        with _maybe_locked(kept_by):
            record = _add_entry(fd, directory, uid, perm, domain, kept_by)
        try:
            yield
        finally:
            _end_grant(fd, directory, uid, perm, kept_by, record)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _hold_owned(directory: Path, uid: int, domain: str, kept_by: Keeper | None) -> Iterator[None]:
    """A share the VM's uid is given itself (``Mount.owned``: a Mesos sandbox, which HyperVM
    chowns to it; no ACL entry), recorded as a grant from before it is given to after the VM
    ended: then the directory goes back to root (if the VM's end did not do it: its owner was
    killed) and what the uid made in it to root, as for a ``run -v`` directory."""
    try:
        fd = _open_dir(directory)
    except OSError as e:
        raise HostError(f"cannot open {directory}, shared with the VM's user {uid}: "
                        f"{e.strerror}") from e
    record: Path | None = None
    try:
        if kept_by is not None:
            with locked_dir(kept_by.records):
                st = os.fstat(fd)
                record = write_record(kept_by.records, Grant(
                    domain, uid, str(directory), st.st_dev, st.st_ino, None, 7, owned=True))
        try:
            yield
        finally:
            _end_grant(fd, directory, uid, 7, kept_by, record, owned=True)
    finally:
        os.close(fd)


def _own_back(fd: int, directory: Path | str, uid: int) -> bool:
    """An owned share (``fd``) that is still ``uid``'s goes back to root; whether it is not
    the uid's any more. Never raises."""
    try:
        if os.fstat(fd).st_uid == uid:
            os.fchown(fd, 0, 0)
    except OSError as e:
        log.error("cannot give %s back to root from the VM's user %d: %s; its grant record "
                  "stays (uid %d out of use) for hypervm gc to retry", directory, uid, e, uid)
        return False
    return True


def _end_grant(fd: int, directory: Path, uid: int, perm: int, kept_by: Keeper | None,
               record: Path | None, owned: bool = False) -> None:
    """The VM ended: its entry off (an owned share: back to root) and (read-write) its files
    handed back, then its record goes; a record whose entry stays, or whose walk was cut
    short, stays for ``hypervm gc`` (the uid stays out of reuse)."""
    with _maybe_locked(kept_by):
        if record is not None and not record.exists():
            return  # gc released it meanwhile: the uid may be another VM's by now
        off = _take_off(fd, directory, uid, kept_by, _operator_mask(record))
    if off and owned:
        off = _own_back(fd, directory, uid)
    if off and perm & 2:
        off = _reclaim(fd, directory, uid, kept_by, HAND_BACK_BUDGET_S)
    if record is not None and off:
        with _maybe_locked(kept_by):
            record.unlink(missing_ok=True)


def _reclaim(fd: int, directory: Path | str, uid: int, kept_by: Keeper | None,
             budget_s: float) -> bool:
    """Hand what ``uid`` owns under the directory ``fd`` to the directory's owner (root if that
    is a VM uid); whether nothing of the uid's is left."""
    st = os.fstat(fd)
    to = (st.st_uid, st.st_gid)
    if kept_by is not None and (kept_by.is_vm_uid(to[0]) or kept_by.is_vm_uid(to[1])):
        to = (0, 0)
    # deferred: a VM's end with a read-write volume (~1 ms of a cold run before createXML)
    from executor import volume_files

    started = time.monotonic()
    done = volume_files.hand_back(fd, uid, to, budget_s)
    log.debug("%s: handed %d of %d entries of uid %d back to %d:%d in %.2f s", directory,
              done.changed, done.visited, uid, *to, time.monotonic() - started)
    if not done.complete:
        log.error("%s: cannot hand back the files the VM's user %d made there (%s): uid %d "
                  "stays out of use until hypervm gc completes it", directory, uid, done.reason,
                  uid)
    return done.complete


def _add_entry(fd: int, directory: Path, uid: int, perm: int, domain: str,
               kept_by: Keeper | None) -> Path | None:
    """Add ``uid: perm`` to the directory's ACL and record it; the record (None: unkept)."""
    st = os.fstat(fd)
    try:
        before: bytes | None = os.getxattr(fd, ACL_XATTR)
    except OSError:
        before = None
    record = None
    try:
        entries = acl_entries(before, st.st_mode)
        if kept_by is not None:
            same = [g for _, g in records(kept_by.records)
                    if (g.dev, g.ino) == (st.st_dev, st.st_ino)]
            mask = same[0].operator_mask if same else _mask(entries)
            grant = Grant(domain, uid, str(directory), st.st_dev, st.st_ino, mask, perm)
            record = write_record(kept_by.records, grant)
        os.setxattr(fd, ACL_XATTR, with_user(entries, uid, perm))
    except (OSError, ValueError) as e:
        if record is not None:
            record.unlink(missing_ok=True)
        raise HostError(f"cannot let the VM's user {uid} reach {directory} (a POSIX ACL): "
                        f"{e}") from e
    return record


def _operator_mask(record: Path | None) -> int | None:
    try:
        return read_record(record).operator_mask if record else None
    except (OSError, ValueError, TypeError):
        return None


def _take_off(fd: int, directory: Path | str, uid: int, kept_by: Keeper | None,
              operator_mask: int | None) -> bool:
    """Take ``uid``'s entry off the directory ``fd`` (see :func:`without_user`); whether it is
    off. Never raises: a directory left with the entry is logged (its record must stay)."""
    try:
        st = os.fstat(fd)
        try:
            entries = acl_entries(os.getxattr(fd, ACL_XATTR), st.st_mode)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
                return True  # no ACL: nothing of ours is on it
            raise
        if not any(tag == _USER and ident == uid for tag, _, ident in entries):
            return True
        is_vm_uid = kept_by.is_vm_uid if kept_by is not None else (lambda _: False)
        after = without_user(entries, uid, is_vm_uid, operator_mask)
        if after is None:
            os.removexattr(fd, ACL_XATTR)
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o7000 | mode_bits(entries))
        else:
            os.setxattr(fd, ACL_XATTR, _encode(after))
    except (OSError, ValueError) as e:
        log.error("cannot take the VM's ACL entry (uid %d) off %s: %s; its grant record stays "
                  "(uid %d out of use) for hypervm gc to retry", uid, directory, e, uid)
        return False
    return True


class VolumeHold:
    """The ACL entries of one VM's ``-v`` directories, recorded for ``hypervm gc``: taken when
    its QEMU user is known and before QEMU starts (QEMU opens a 9p share's directory as it
    starts; pass :meth:`before_shares` to ``boot_vm``), held until :meth:`close`."""

    def __init__(self, cfg: HostConfig, mounts: Iterable[Mount]) -> None:
        self._keeper = keeper(cfg)
        self._mounts = tuple(mounts)
        self._held = contextlib.ExitStack()

    def before_shares(self, pair: tuple[int, int] | None) -> None:
        """HyperVM's hook: ``pair`` is the VM's uid:gid (None: libvirt's shared user, whose
        access the operator's modes govern). Called again only once the VM it was last
        called for is destroyed (a failed claim or snapshot start, then a cold boot): that
        VM's entries go, its uid is back in the range."""
        self._held.close()
        if pair is None:
            return
        domain = identity.holder(pair[0])
        if domain is None:  # allocate() reserved it for the domain: cannot happen
            raise HostError(f"uid {pair[0]} has no reservation in {identity.REGISTRY}")
        self._held.enter_context(granted(pair[0], self._mounts, domain, self._keeper))

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> VolumeHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@frozen_dataclass
class Unfinished:
    """A grant of a VM that no longer runs which gc could not finish: its record stays."""

    grant: Grant
    record: Path
    #: why, and what the operator can do
    why: str


def release_stale(cfg: HostConfig, runs: Callable[[str], bool] = identity.qemu_runs,
                  dry_run: bool = False, only: str | None = None,
                  grace: float = identity.RESERVATION_GRACE_S,
                  unfinished: list[Unfinished] | None = None) -> list[Grant]:
    """Finish the grants of VMs that no longer run (``runs(domain)`` False), whose owner was
    killed before it could, or could not (``only``: of that domain alone): entry off, files
    handed back (each walk out of the lock); the grants released (``dry_run``: to release). A
    record younger than ``grace`` stands (its VM's QEMU may not have started yet: the entry
    comes first). A record whose directory is gone or was moved or replaced (another inode at
    its path) stays, its uid out of reuse: the entry and the files may be on it still, and
    nothing at that path is changed. Each record that stays is added to ``unfinished``."""
    kept_by = keeper(cfg)
    if not kept_by.records.is_dir():
        return []
    now = time.time()
    stuck = unfinished if unfinished is not None else []
    with locked_dir(kept_by.records):
        stale = [(record, grant) for record, grant in records(kept_by.records)
                 if (only is None or grant.domain == only) and not runs(grant.domain)
                 and _older(record, now, grace)]
        if dry_run:
            return [grant for _, grant in stale]
        opened = []
        for record, grant in stale:
            fd = _open_recorded(grant, record, stuck)
            if fd is not None and _take_off(fd, grant.path, grant.uid, kept_by,
                                            grant.operator_mask) \
                    and (not grant.owned or _own_back(fd, grant.path, grant.uid)):
                opened.append((record, grant, fd))
            elif fd is not None:
                os.close(fd)
                stuck.append(Unfinished(grant, record, "its ACL entry could not be taken off "
                                        "(the log says why)"))
    released = []
    for record, grant, fd in opened:
        try:
            clean = not grant.perm & 2 or _reclaim(fd, grant.path, grant.uid, kept_by,
                                                   GC_HAND_BACK_BUDGET_S)
        finally:
            os.close(fd)
        if clean:
            with locked_dir(kept_by.records):
                record.unlink(missing_ok=True)
            released.append(grant)
        else:
            stuck.append(Unfinished(grant, record, "what its uid made there could not all be "
                                    "handed back yet (the log says why); gc retries"))
    return released


def _older(record: Path, now: float, grace: float) -> bool:
    try:
        return now - record.stat().st_mtime >= grace
    except OSError:
        return False


def _open_recorded(grant: Grant, record: Path, stuck: list[Unfinished]) -> int | None:
    """The recorded directory, if it is still at its path (the same inode); else None, logged
    and added to ``stuck``: nothing is done by a path that now leads elsewhere."""
    try:
        fd = _open_dir(grant.path)
    except OSError as e:
        why = e.strerror or str(e)
    else:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (grant.dev, grant.ino):
            return fd
        os.close(fd)
        why = "another directory is there now"
    fix = (f"{grant.path} was moved or removed ({why}): move it back and run hypervm gc again; "
           f"if it is gone for good, remove {record}")
    log.error("%s (device %d, inode %d), which %s's uid %d had an ACL entry on, cannot be "
              "found (%s): uid %d stays out of use. Move the directory back and run hypervm gc; "
              "if it is gone for good, remove %s", grant.path, grant.dev, grant.ino,
              grant.domain, grant.uid, why, grant.uid, record)
    stuck.append(Unfinished(grant, record, fix))
    return None
