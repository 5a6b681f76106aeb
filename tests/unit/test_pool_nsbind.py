"""executor.pool.claim.start_bind (executor.pool.nsbind): a bind made in another process's
mount namespace from a thread, against a real private namespace (``unshare -m``): it lands
there only, read-only when asked, and this process stays in its own namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.pool import claim
from hypervm.errors import PoolError

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1)")


@pytest.fixture
def holder() -> Iterator[int]:
    """A process in a mount namespace of its own (private propagation), like a QEMU's."""
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while (os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino
               == os.stat("/proc/self/ns/mnt").st_ino):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def mounts_of(pid: int | str, target: Path) -> list[list[str]]:
    """mountinfo lines (split) whose mount point is ``target``."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line.split() for line in lines if line.split()[4] == str(target)]


@pytest.mark.parametrize("readonly", [False, True])
def test_the_bind_lands_in_the_other_namespace_only(tmp_path: Path, holder: int,
                                                    readonly: bool) -> None:
    source, target = tmp_path / "sandbox", tmp_path / "share"
    source.mkdir()
    target.mkdir()
    (source / "file").write_text("hi")
    own_ns = os.stat("/proc/self/ns/mnt").st_ino
    claim.wait_binds([claim.start_bind(holder, source, target, readonly)])
    theirs = mounts_of(holder, target)
    assert len(theirs) == 1
    assert theirs[0][5].split(",")[0] == ("ro" if readonly else "rw")
    assert mounts_of("self", target) == []
    assert not (target / "file").exists()  # not in our namespace
    assert os.stat("/proc/self/ns/mnt").st_ino == own_ns


def test_a_failed_bind_is_a_pool_error(tmp_path: Path, holder: int) -> None:
    source = tmp_path / "sandbox"
    source.mkdir()
    pending = claim.start_bind(holder, source, tmp_path / "missing", False)
    with pytest.raises(PoolError, match="cannot bind .*sandbox.*No such file"):
        claim.wait_binds([pending])


def test_a_target_swapped_for_a_symlink_is_refused(tmp_path: Path, holder: int) -> None:
    """The target lies in the VM's share, which the guest writes through 9p: a symlink
    there (to anywhere in QEMU's namespace) must not redirect the bind."""
    source, elsewhere, share = tmp_path / "sandbox", tmp_path / "elsewhere", tmp_path / "share"
    for d in (source, elsewhere, share):
        d.mkdir()
    (share / "s0").symlink_to(elsewhere)
    pending = claim.start_bind(holder, source, share / "s0", False)
    with pytest.raises(PoolError, match="not a directory"):
        claim.wait_binds([pending])
    assert mounts_of(holder, elsewhere) == [] and mounts_of(holder, share / "s0") == []


def test_a_qemu_in_our_own_namespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="host's mount namespace"):
        claim.start_bind(os.getpid(), tmp_path, tmp_path, False)
