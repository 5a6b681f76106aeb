"""``hypervm run -v``: host directories shared read-only and read-write with a real VM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.libvirt import grants, identity
from executor.volume_access import _USER, ACL_XATTR, acl_entries, release_stale
from hypervm.config import config_from_env
from hypervm.errors import HostError
from tests.conftest import TEST_TAG, our_domains, run_hypervm

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


def test_what_the_process_wrote_is_on_the_host_when_run_returns(  # noqa: ANN001
        hypervm, busybox_rootfs: Path, shared_dir: Path) -> None:
    """The run ends its VM without the guest's orderly power-off (VM.discard): nothing a
    process wrote into a volume before it exited may be lost with it."""
    result = hypervm("run", "-v", f"{shared_dir}:/rw", "--rootfs", str(busybox_rootfs),
                     "--", "sh", "-c", "dd if=/dev/urandom of=/rw/big.tmp bs=64k count=64 "
                     "2>/dev/null && mv /rw/big.tmp /rw/big && sha256sum /rw/big && "
                     "echo last > /rw/last")
    assert result.returncode == 0, result.stderr.decode()
    data = (shared_dir / "big").read_bytes()
    assert len(data) == 64 * 65536
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert (shared_dir / "last").read_text() == "last\n"
    assert not (shared_dir / "big.tmp").exists()


def test_volume_below_a_private_directory_is_refused(hypervm, busybox_rootfs: Path,  # noqa: ANN001
                                                     tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(parents=True)
    tmp_path.chmod(0o700)
    result = hypervm("run", "-v", f"{private}:/p", "--rootfs", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125
    assert b"cannot be traversed by the VM's own user" in result.stderr
    assert result.stderr.count(b"\n") == 1


# -- detached runs: the supervisor holds the ACL entry while the VM runs ---------------------


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """root's 0700 directory: no VM uid can enter it without the ACL entry of its run."""
    path = Path(tempfile.mkdtemp(prefix="hypervm-vol-", dir="/tmp"))
    path.chmod(0o700)
    (path / "in.txt").write_text("from the host\n")
    yield path
    shutil.rmtree(path)


def _vm_users(path: Path) -> dict[int, int]:
    """uid -> perm of the VM uids named in ``path``'s ACL."""
    first, last = config_from_env().vm_uid_range
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError:
        return {}
    return {ident: perm for tag, perm, ident in acl_entries(raw, 0)
            if tag == _USER and first <= ident <= last}


def _wait_for(what, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _detached(names: list[str], suffix: str, busybox_rootfs: Path, volume: str,
              script: str) -> str:
    name = f"{TEST_TAG}-{suffix}"
    names.append(name)
    started = run_hypervm("run", "-d", "--name", name, "-v", volume, "--rootfs",
                          str(busybox_rootfs), "--", "sh", "-c", script)
    assert started.returncode == 0, started.stderr.decode()
    return name


def test_foreground_read_write_volume_of_a_private_directory(hypervm, busybox_rootfs: Path,  # noqa: ANN001
                                                             private_dir: Path) -> None:
    # QEMU opens a 9p share as it starts: the entry must be there before (it came after)
    result = hypervm("run", "-v", f"{private_dir}:/rw", "--rootfs", str(busybox_rootfs),
                     "--", "sh", "-c", "cat /rw/in.txt && echo written > /rw/out.txt")
    assert result.returncode == 0, result.stderr.decode()
    assert (private_dir / "out.txt").read_text() == "written\n"
    assert ACL_XATTR not in os.listxattr(private_dir)
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700


def test_detached_read_write_volume_of_a_private_directory(busybox_rootfs: Path,
                                                           private_dir: Path,
                                                           names: list[str]) -> None:
    name = _detached(names, "vol-rw", busybox_rootfs, f"{private_dir}:/data",
                     "cat /data/in.txt && echo written > /data/out.txt && exec sleep 600")
    _wait_for(lambda: (private_dir / "out.txt").exists())
    assert (private_dir / "out.txt").read_text() == "written\n"
    assert list(_vm_users(private_dir).values()) == [7]  # the VM's own uid, while it runs
    stopped = run_hypervm("stop", "-t", "1", name)
    assert stopped.returncode == 0, stopped.stderr.decode()
    # stop answered: the VM and its way into the directory are gone, the mode is as it was
    assert ACL_XATTR not in os.listxattr(private_dir)
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    assert run_hypervm("logs", name).stdout == b"from the host\n"
    assert run_hypervm("rm", name).returncode == 0


def test_detached_read_only_volume_cannot_be_written(busybox_rootfs: Path, private_dir: Path,
                                                     names: list[str]) -> None:
    name = _detached(names, "vol-ro", busybox_rootfs, f"{private_dir}:/data:ro",
                     "cat /data/in.txt; echo x > /data/new; echo $?; exec sleep 600")
    _wait_for(lambda: run_hypervm("logs", name).stdout == b"from the host\n1\n")
    assert list(_vm_users(private_dir).values()) == [5]  # r-x
    assert sorted(os.listdir(private_dir)) == ["in.txt"]
    removed = run_hypervm("rm", "-f", name)
    assert removed.returncode == 0, removed.stderr.decode()
    assert ACL_XATTR not in os.listxattr(private_dir)
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700


def test_a_killed_supervisors_entry_is_taken_off_by_gc_or_rm(busybox_rootfs: Path,
                                                              private_dir: Path,
                                                              names: list[str],
                                                              tmp_path: Path) -> None:
    name = _detached(names, "vol-kill", busybox_rootfs, f"{private_dir}:/data",
                     "exec sleep 600")
    state = json.loads(run_hypervm("inspect", name).stdout)[0]
    assert len(_vm_users(private_dir)) == 1
    os.kill(state["supervisor_pid"], signal.SIGKILL)  # nothing of ours runs to take it off
    _wait_for(lambda: state["id"] not in our_domains())  # libvirt destroys its VM
    assert len(_vm_users(private_dir)) == 1
    # what hypervm gc would take off (gc itself would touch the whole host's VMs and cache)
    stale = release_stale(config_from_env(), dry_run=True, grace=0)
    assert state["id"] in [g.domain for g in stale]
    [uid] = _vm_users(private_dir)
    # until then no other VM gets that uid (a registry of our own: only the grant counts)
    records = grants.keeper(config_from_env()).records
    with pytest.raises(HostError, match="volume grant"):
        identity.allocate((uid, uid), "probe", lambda _: False, directory=tmp_path,
                          grants_dir=records)
    removed = run_hypervm("rm", name)  # rm of the dead container takes its entries off too
    assert removed.returncode == 0, removed.stderr.decode()
    assert identity.allocate((uid, uid), "probe", lambda _: False, directory=tmp_path,
                             grants_dir=records).uid == uid
    assert ACL_XATTR not in os.listxattr(private_dir)
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    left = release_stale(config_from_env(), dry_run=True, grace=0)
    assert state["id"] not in [g.domain for g in left]


def test_what_the_guest_made_goes_to_the_directorys_owner(hypervm, busybox_rootfs: Path,  # noqa: ANN001
                                                          shared_dir: Path) -> None:
    """Once the VM ends nothing under the directory is its uid's (the uid's next holder, another
    tenant's VM, would own it): the directory's owner gets it, owner-only."""
    os.chown(shared_dir, 4321, 4322)
    result = hypervm("run", "-v", f"{shared_dir}:/rw", "--rootfs", str(busybox_rootfs), "--",
                     "sh", "-c", "mkdir -p /rw/a/b && echo x > /rw/a/b/f && chmod 4777 /rw/a/b/f"
                     " && ln -s /etc/shadow /rw/link && mkfifo /rw/fifo")
    assert result.returncode == 0, result.stderr.decode()
    made = [Path(root) / name for root, dirs, files in os.walk(shared_dir)
            for name in dirs + files if name != "in.txt"]
    assert sorted(p.name for p in made) == ["a", "b", "f", "fifo", "link"]
    for path in made:
        st = path.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7077) == (4321, 4322, 0), path
    assert (shared_dir / "a" / "b" / "f").read_text() == "x\n"
