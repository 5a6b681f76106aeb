"""``hypervm run -v``: host directories shared read-only and read-write with a real VM."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.volume_access import ACL_XATTR

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A host directory the VM's own user can reach (pytest's tmp_path is below a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="hypervm-vol-", dir="/tmp"))
    path.chmod(0o755)
    (path / "in.txt").write_text("from the host\n")
    yield path
    shutil.rmtree(path)


def test_read_only_volume(hypervm, busybox_rootfs: Path, shared_dir: Path) -> None:  # noqa: ANN001
    result = hypervm("run", "-v", f"{shared_dir}:/data:ro", "--rootfs", str(busybox_rootfs),
                     "--", "sh", "-c", "cat /data/in.txt; echo x > /data/new; echo $?")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"from the host\n1\n"
    assert b"Read-only file system" in result.stderr
    assert sorted(os.listdir(shared_dir)) == ["in.txt"]


def test_read_write_volume(hypervm, busybox_rootfs: Path, shared_dir: Path) -> None:  # noqa: ANN001
    mode = shared_dir.stat().st_mode
    result = hypervm("run", "--volume", f"{shared_dir}:/rw", "--rootfs", str(busybox_rootfs),
                     "--", "sh", "-c", "cat /rw/in.txt && echo written > /rw/out.txt && "
                     "mkdir /rw/sub && echo deep > /rw/sub/f")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"from the host\n"
    assert (shared_dir / "out.txt").read_text() == "written\n"
    assert (shared_dir / "sub" / "f").read_text() == "deep\n"
    # the VM's access ends with it: the directory's mode is as it was, no ACL is left
    assert shared_dir.stat().st_mode == mode
    assert ACL_XATTR not in os.listxattr(shared_dir)


def test_volume_below_a_private_directory_is_refused(hypervm, busybox_rootfs: Path,  # noqa: ANN001
                                                     tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(parents=True)
    tmp_path.chmod(0o700)
    result = hypervm("run", "-v", f"{private}:/p", "--rootfs", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125
    assert b"cannot be traversed by the VM's own user" in result.stderr
    assert result.stderr.count(b"\n") == 1
