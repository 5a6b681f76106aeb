"""QEMU's user may search a real agent's 0750 root:root sandbox, and gains nothing else."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.mesos.sandbox_acl import (
    GROUP_OBJ,
    MASK,
    OTHER,
    UNDEFINED_ID,
    USER,
    USER_OBJ,
    Entry,
    acl_from_mode,
    can_search,
    decode,
    encode,
    grant_search_below,
    with_search,
)
from hypervm.errors import HostError

QEMU_UID, QEMU_GID = 64055, 64055  # any unprivileged ids (Debian's libvirt-qemu is one)
OTHER_UID = 64056
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, a real ACL)")


def test_encode_decode_round_trip_in_kernel_order() -> None:
    entries = with_search(acl_from_mode(0o750), QEMU_UID)
    raw = encode(list(reversed(entries)))
    assert raw[:4] == b"\x02\x00\x00\x00"  # version 2, little-endian
    assert [e.tag for e in decode(raw)] == [USER_OBJ, USER, GROUP_OBJ, MASK, OTHER]
    assert decode(raw) == sorted(entries)


@pytest.mark.parametrize("raw", [b"", b"\x02\x00\x00", b"\x01\x00\x00\x00", b"\x02\0\0\0\1"])
def test_decode_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_search_only_and_mask_keeps_the_group() -> None:
    acl = with_search(acl_from_mode(0o750), QEMU_UID)
    assert Entry(USER, QEMU_UID, 0o1) in acl
    assert Entry(MASK, UNDEFINED_ID, 0o5) in acl  # r-x: the owning group keeps what it had
    assert Entry(OTHER, UNDEFINED_ID, 0) in acl
    # a second grant keeps one entry, and keeps permissions the user already had
    again = with_search(with_search([*acl_from_mode(0o700), Entry(USER, QEMU_UID, 0o4)],
                                    QEMU_UID), QEMU_UID)
    assert [e for e in again if e.tag == USER] == [Entry(USER, QEMU_UID, 0o5)]


def fake_stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))


def test_can_search() -> None:
    assert not can_search(fake_stat(0o750), None, QEMU_UID, QEMU_GID)
    assert can_search(fake_stat(0o751), None, QEMU_UID, QEMU_GID)
    assert can_search(fake_stat(0o750, gid=QEMU_GID), None, QEMU_UID, QEMU_GID)
    assert can_search(fake_stat(0o700, uid=QEMU_UID), None, QEMU_UID, QEMU_GID)
    acl = with_search(acl_from_mode(0o750), QEMU_UID)
    assert can_search(fake_stat(0o750), acl, QEMU_UID, QEMU_GID)
    assert not can_search(fake_stat(0o750), acl, OTHER_UID, QEMU_GID)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A sandbox made the way Mesos 1.11 makes it: 0750 root:root, under traversable dirs,
    with a group task's sandbox that belongs to QEMU's user (as the executor makes it)."""
    base = Path(tempfile.mkdtemp(prefix="hypervm-acl-"))
    base.chmod(0o755)
    box = base / "runs" / "c1"
    (box / "tasks" / "t1").mkdir(parents=True)
    box.parent.chmod(0o755)
    box.chmod(0o750)
    (box / "tasks").chmod(0o755)
    os.chown(box / "tasks" / "t1", QEMU_UID, QEMU_GID)
    (box / "secret").write_text("agent only")
    (box / "secret").chmod(0o640)
    yield box
    shutil.rmtree(base)


def as_user(uid: int, argv: list[str]) -> int:
    """Run ``argv`` as ``uid`` (no supplementary groups); its exit code."""
    return subprocess.run(argv, user=uid, group=QEMU_GID, extra_groups=[], cwd="/",
                          check=False, capture_output=True).returncode


def lists(path: Path) -> list[str]:
    return ["/bin/ls", str(path)]


@root_only
def test_qemu_reaches_the_task_sandbox_and_nothing_else(sandbox: Path) -> None:
    task_dir = sandbox / "tasks" / "t1"
    assert as_user(QEMU_UID, lists(task_dir)) != 0  # the hole: 0750 root:root blocks QEMU
    assert grant_search_below(sandbox, task_dir, QEMU_UID, QEMU_GID) == [sandbox]
    assert as_user(QEMU_UID, lists(task_dir)) == 0
    assert as_user(QEMU_UID, lists(sandbox)) != 0  # search, not read
    assert as_user(QEMU_UID, ["/bin/cat", str(sandbox / "secret")]) != 0
    assert as_user(OTHER_UID, lists(task_dir)) != 0  # nobody else gains anything
    assert stat.S_IMODE(sandbox.stat().st_mode) == 0o750
    assert sandbox.stat().st_uid == 0
    # idempotent: nothing more to do the second time
    assert grant_search_below(sandbox, task_dir, QEMU_UID, QEMU_GID) == []


@root_only
def test_only_inside_the_sandbox(sandbox: Path) -> None:
    assert grant_search_below(sandbox, sandbox, QEMU_UID, QEMU_GID) == []
    assert grant_search_below(sandbox, Path("/etc/ssl"), QEMU_UID, QEMU_GID) == []
    assert as_user(QEMU_UID, lists(sandbox / "tasks")) != 0


@root_only
def test_a_symlink_on_the_way_is_not_followed(sandbox: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "x").mkdir(parents=True)
    elsewhere.chmod(0o700)
    (sandbox / "vol").symlink_to(elsewhere)
    with pytest.raises(HostError) as info:
        grant_search_below(sandbox, sandbox / "vol" / "x", QEMU_UID, QEMU_GID)
    assert "vol" in str(info.value)
    assert os.listxattr(elsewhere) == []
