"""hypervm.fsmode: a uid's access to a file by its mode bits, class by class."""

import os
import pwd

from hypervm import fsmode


def _st(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_the_owner_gets_the_owners_bits_only():
    st = _st(0o0407, 1000, 1000)  # owner r--, others rwx
    assert fsmode.allows(st, 1000, {1000}, fsmode.READ)
    assert not fsmode.allows(st, 1000, {1000}, fsmode.WRITE)


def test_a_member_of_the_group_gets_the_groups_bits():
    st = _st(0o0660, 0, 107)
    assert fsmode.allows(st, 64055, {107}, fsmode.READ | fsmode.WRITE)
    assert not fsmode.allows(st, 64055, {64055}, fsmode.READ)


def test_others_get_the_others_bits_and_root_always_may():
    st = _st(0o0751, 0, 0)
    assert fsmode.allows(st, 5000, {5000}, fsmode.EXECUTE)
    assert not fsmode.allows(st, 5000, {5000}, fsmode.READ | fsmode.EXECUTE)
    assert fsmode.allows(_st(0o0000, 1, 1), 0, {0}, fsmode.READ | fsmode.WRITE)


def test_a_process_has_its_gid_its_users_primary_group_and_its_supplementary_ones() -> None:
    root = pwd.getpwuid(0)
    groups = fsmode.process_groups(0, 4242)
    assert {4242, root.pw_gid} <= groups  # libvirt's virGetGroupList: the gid and the user's own
    assert set(os.getgrouplist(root.pw_name, root.pw_gid)) <= groups


def test_a_uid_with_no_user_has_only_its_gid() -> None:
    unused = next(uid for uid in range(3_900_000_000, 3_900_001_000) if not _user(uid))
    assert fsmode.process_groups(unused, 4242) == {4242}


def _user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
