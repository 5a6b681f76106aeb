"""Handing a gone VM's files back (executor.volume_files): root walks a tree a hostile guest
built, so no link is followed, no FIFO or device opened, and the walk is bounded."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from executor import volume_files as vf

VM = 200001  # the gone VM's uid (and gid)
OTHER = 200002  # another VM's
OWNER = (1234, 1235)  # the shared directory's owner


def _own(path: Path, uid: int = VM, mode: int | None = None) -> Path:
    os.chown(path, uid, uid, follow_symlinks=False)
    if mode is not None:
        path.chmod(mode)
    return path


def _walk(top: Path, budget: float = 30.0, **kwargs: object) -> vf.Reclaim:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return vf.hand_back(fd, VM, OWNER, budget, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-only host file (and a directory of the VM's) outside the share."""
    path = tmp_path / "secret"
    path.write_text("root only")
    path.chmod(0o600)
    return path


def test_the_vms_entries_go_to_the_owner_owner_only_without_acls(tmp_path: Path) -> None:
    top = tmp_path / "share"
    top.mkdir()
    sub = top / "sub"
    sub.mkdir()
    _own(sub, mode=0o2777)
    made = sub / "f"
    made.write_text("x")
    _own(made, mode=0o6777)
    os.setxattr(made, "system.posix_acl_access", _acl_naming(OTHER))
    keep = top / "operator.txt"
    keep.write_text("mine")
    _own(keep, 1234, 0o644)
    group_only = top / "g"
    group_only.write_text("")
    os.chown(group_only, 1234, VM)
    done = _walk(top)
    assert done.complete and done.changed == 3 and done.visited == 4
    for path in (sub, made):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == OWNER
    assert stat.S_IMODE(sub.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.stat().st_mode) == 0o700  # no set-id, no group/other bits
    assert "system.posix_acl_access" not in os.listxattr(made)
    assert (keep.stat().st_uid, stat.S_IMODE(keep.stat().st_mode)) == (1234, 0o644)
    assert (group_only.stat().st_uid, group_only.stat().st_gid) == (1234, OWNER[1])


def _acl_naming(uid: int) -> bytes:
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 7, uid), (0x04, 0, 0xFFFFFFFF),
               (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_no_link_is_followed(tmp_path: Path, secret: Path) -> None:
    """Links the guest planted (owned by the VM's uid) to a root-only file and to a directory of
    the VM's outside the share: only the links change hands, never what they point to."""
    top = tmp_path / "share"
    top.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    theirs = outside / "left"
    theirs.write_text("")
    _own(theirs, mode=0o600)
    for name, target in (("to-secret", secret), ("to-dir", outside), ("to-file", theirs)):
        link = top / name
        link.symlink_to(target)
        _own(link)
    done = _walk(top)
    assert done.complete and done.changed == 3
    for name in ("to-secret", "to-dir", "to-file"):
        assert (top / name).lstat().st_uid == OWNER[0]
    assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (0, 0o600)
    assert theirs.stat().st_uid == VM  # outside the share: not reached through the link
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o600


def test_a_fifo_is_handed_back_without_being_opened(tmp_path: Path) -> None:
    top = tmp_path / "share"
    top.mkdir()
    fifo = top / "fifo"
    os.mkfifo(fifo, 0o666)
    _own(fifo)
    done = _walk(top)  # opening it for reading would block forever: nobody writes
    assert done.complete and fifo.lstat().st_uid == OWNER[0]
    assert stat.S_IMODE(fifo.lstat().st_mode) == 0o600


def test_a_tree_deeper_than_the_limit_is_cut_short(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vf, "MAX_DEPTH", 5)
    top = tmp_path / "share"
    deep = top
    for _ in range(5):
        deep = deep / "d"
        deep.mkdir(parents=True)
    done = _walk(top)
    assert not done.complete and "deeper than 5" in done.reason
    monkeypatch.setattr(vf, "MAX_DEPTH", 6)
    assert _walk(top).complete
    before = len(os.listdir("/proc/self/fd"))
    _walk(top)
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor left open


def test_a_walk_over_its_budget_is_cut_short(tmp_path: Path) -> None:
    top = tmp_path / "share"
    top.mkdir()
    for i in range(10):
        (top / str(i)).write_text("")
        _own(top / str(i))
    ticks = iter(range(100))
    done = _walk(top, budget=3.0, clock=lambda: float(next(ticks)))
    assert not done.complete and "took over 3 s" in done.reason
    assert done.changed < 10


def test_a_directory_swapped_for_a_link_is_not_entered(tmp_path: Path, secret: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest swaps a directory for a link to / between the listing and the visit: the name
    is opened without following, so the link is handed back as a link and nothing above the
    share is walked."""
    top = tmp_path / "share"
    top.mkdir()
    (top / "d").mkdir()
    real_open = os.open

    def swapping_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == "d" and not (top / "d").is_symlink():
            (top / "d").rmdir()
            (top / "d").symlink_to(tmp_path)
            _own(top / "d")
            _own(secret, mode=0o600)  # would be reached through the link
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vf.os, "open", swapping_open)
    done = _walk(top)
    assert done.complete
    assert (top / "d").lstat().st_uid == OWNER[0]
    assert secret.stat().st_uid == VM  # not walked into


def test_a_file_in_the_operators_set_gid_directory_keeps_its_group(tmp_path: Path) -> None:
    top = tmp_path / "share"
    top.mkdir()
    made = top / "f"
    made.write_text("")
    os.chown(made, VM, 4000)  # the group of a set-gid directory of the operator's
    assert _walk(top).complete
    assert (made.stat().st_uid, made.stat().st_gid) == (OWNER[0], 4000)
