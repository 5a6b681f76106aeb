"""hypervm.fsmode: a uid's access to a file by its mode bits, class by class."""

import os

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
