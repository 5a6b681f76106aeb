"""Whether a user may use a file by its mode bits alone (no capability, no ACL): the check a
process of that uid and those groups faces, as QEMU's does (``executor.libvirt.hypervisor``:
QEMU's uid reaching a run directory; ``hypervm doctor``: libvirt's QEMU user and /dev/kvm)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Collection

#: the bits of one class (owner, group, others), as ``allows``' ``want``
READ, WRITE, EXECUTE = 4, 2, 1


def allows(st: os.stat_result, uid: int, groups: Collection[int], want: int) -> bool:
    """Whether ``uid`` (in ``groups``) has every bit of ``want`` on a file of this mode and
    owner: the owner's bits for its owner, the group's for a member of its group, else the
    others'. Root may always."""
    if uid == 0:
        return True
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in groups else 0
    return (st.st_mode >> shift) & want == want


def process_groups(uid: int, gid: int) -> set[int]:
    """The groups of a process libvirt starts as ``uid:gid`` (virGetGroupList): ``gid``, the
    user's primary group and its supplementary ones; only ``gid`` for a uid with no user."""
    try:
        user = pwd.getpwuid(uid)
        return {gid, user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    except (KeyError, OSError):
        return {gid}
