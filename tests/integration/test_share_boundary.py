"""Issue 15, finding 1: what a guest makes in its shared sandbox is never a real host symlink,
setuid file, FIFO or device; the guest still sees (and the host still reads) what it wrote."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_TAG, run_to_exit

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

PLANT = """
cd /mnt/mesos/sandbox
echo data > written
ln -s /etc/passwd link
echo x > suid; chmod 4755 suid
mkfifo fifo
mknod dev c 1 3
mkdir sub; echo nested > sub/file
ls -l link suid fifo dev | cut -c1-10
readlink link; cat written sub/file
"""


@pytest.fixture
def qemu_tmp() -> Iterator[Path]:
    """A temp dir QEMU's user can reach (pytest's is under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="hypervm-share-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp)


def test_guest_links_devices_and_setid_bits_are_not_real_on_the_host(
        vm_factory, busybox_rootfs: Path, host_cfg, qemu_tmp: Path) -> None:  # noqa: ANN001
    from hypervm.podspec import Container, Mount, PodSpec, Process, Rootfs
    from vmimage.rootfs import build_layer_image

    image = host_cfg.rootfs_dir / f"test-{os.getpid()}-share.erofs"
    host_cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    build_layer_image(busybox_rootfs, image)
    sandbox = qemu_tmp / "sandbox"
    sandbox.mkdir()
    try:
        container = Container("planter", Rootfs(layers=(image,)),
                              Process(args=("sh", "-c", PLANT)),
                              mounts=(Mount(type="9p", destination="/mnt/mesos/sandbox",
                                            source=sandbox, owned=True),))
        vm = vm_factory(PodSpec(name=f"{TEST_TAG}-share", containers=(container,)))
        code, output = run_to_exit(vm, container)
    finally:
        image.unlink(missing_ok=True)
    assert code == 0, output
    # the guest sees what it made, with its semantics
    lines = output.split()
    assert lines[:4] == ["crw-r--r--", "prw-r--r--", "lrwxrwxrwx", "-rwsr-xr-x"], output
    assert lines[4:] == ["/etc/passwd", "data", "nested"], output
    # the host sees plain files and directories, never a link, device, FIFO or set-id bit
    for name in ("link", "suid", "fifo", "dev", "written", "sub", "sub/file"):
        mode = os.lstat(sandbox / name).st_mode
        assert stat.S_ISREG(mode) or (name == "sub" and stat.S_ISDIR(mode)), (name, oct(mode))
        assert not mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(mode))
    # ... and root (the agent, the executor) reads what the task wrote
    assert (sandbox / "written").read_text() == "data\n"
    assert (sandbox / "sub" / "file").read_text() == "nested\n"
