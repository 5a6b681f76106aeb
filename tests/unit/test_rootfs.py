"""vmimage.rootfs: mkfs.erofs command, layer images (checked by mounting them), busybox rootfs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervm.errors import ImageError
from vmimage.rootfs import build_layer_image, make_busybox_rootfs, mkfs_erofs_argv

needs_mkfs = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="no erofs-utils")


def test_mkfs_argv_keeps_owners_and_mtimes() -> None:
    argv = mkfs_erofs_argv(Path("/o.img"), Path("/src"))
    assert argv[0] == "mkfs.erofs" and argv[-2:] == ["/o.img", "/src"]
    assert "--preserve-mtime" in argv
    assert not any(a in argv for a in ("--all-root", "--force-uid", "--force-gid"))
    assert not any(a.startswith("-x") for a in argv)  # xattrs stay on
    assert "-zlz4hc" in mkfs_erofs_argv(Path("/o"), Path("/s"), "lz4hc")
    with pytest.raises(ValueError):
        mkfs_erofs_argv(Path("/o"), Path("/s"), "zstd")


def test_missing_source_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        build_layer_image(tmp_path / "nope", tmp_path / "x.img")


@pytest.fixture
def layer_dir(tmp_path: Path) -> Path:
    """A layer with what overlayfs and real images need: owners, setuid, whiteouts, xattrs."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown, trusted.* xattrs, mknod)")
    src = tmp_path / "layer"
    (src / "opaque").mkdir(parents=True)
    (src / "opaque" / "kept").write_text("k")
    os.setxattr(src / "opaque", "trusted.overlay.opaque", b"y")
    os.mknod(src / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlay whiteout
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "suid", 1000, 1001)
    os.chmod(src / "suid", 0o4755)
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "user").write_text("u")
    os.setxattr(src / "user", "user.mime", b"text/plain")
    os.utime(src / "user", (1_600_000_000, 1_600_000_000))
    (src / "link").symlink_to("user")
    return src


@pytest.fixture
def mount_erofs() -> Iterator:
    """Mounts an erofs image read-only through a loop device of its own; undone at teardown."""
    done: list[tuple[str, Path]] = []

    def mount(image: Path, where: Path) -> Path:
        if "erofs" not in Path("/proc/filesystems").read_text():
            pytest.skip("host kernel has no erofs")
        loop = subprocess.run(["losetup", "-f", "--show", "-r", str(image)], capture_output=True,
                              text=True)
        if loop.returncode != 0:
            pytest.skip(f"no loop device: {loop.stderr.strip()}")
        dev = loop.stdout.strip()
        where.mkdir()
        res = subprocess.run(["mount", "-t", "erofs", "-o", "ro", dev, str(where)],
                             capture_output=True, text=True)
        done.append((dev, where))
        assert res.returncode == 0, res.stderr
        return where

    yield mount
    for dev, where in done:
        subprocess.run(["umount", str(where)], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@needs_mkfs
def test_layer_image_keeps_metadata(layer_dir: Path, tmp_path: Path, mount_erofs) -> None:  # noqa: ANN001
    image = build_layer_image(layer_dir, tmp_path / "out" / "layer.erofs")
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    assert [p.name for p in image.parent.iterdir()] == ["layer.erofs"]  # no temp file left
    mnt = mount_erofs(image, tmp_path / "mnt")
    assert os.getxattr(mnt / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(mnt / "user", "user.mime") == b"text/plain"
    st = os.stat(mnt / "suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    assert stat.S_IMODE(os.stat(mnt / "tmp").st_mode) == 0o1777
    wh = os.lstat(mnt / "gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert os.readlink(mnt / "link") == "user"
    assert os.stat(mnt / "user").st_mtime == 1_600_000_000
    assert (mnt / "opaque" / "kept").read_text() == "k"


@needs_mkfs
def test_layer_image_replaces_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("1")
    dest = tmp_path / "l.erofs"
    dest.write_bytes(b"old")
    build_layer_image(src, dest)
    assert dest.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0"  # erofs superblock magic


def test_busybox_rootfs_layout(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    root = make_busybox_rootfs(tmp_path / "rootfs")
    assert os.access(root / "bin/busybox", os.X_OK)
    for applet in ("bin/sh", "bin/ls", "usr/bin/env", "bin/cat"):
        assert os.readlink(root / applet) == "/bin/busybox", applet
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    for d in ("proc", "sys", "dev", "run", "root", "etc"):
        assert (root / d).is_dir(), d
    passwd = (root / "etc/passwd").read_text()
    assert passwd.startswith("root:x:0:0:") and "nobody:x:65534:65534:" in passwd
    assert "nogroup:x:65534:" in (root / "etc/group").read_text()


def test_busybox_rootfs_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("")
    from hypervm.errors import HostError

    with pytest.raises(HostError):
        make_busybox_rootfs(tmp_path / "r")


def test_warmup_layer_is_built_once_per_busybox(tmp_path: Path) -> None:
    from vmimage.rootfs import ensure_warmup_layer

    if shutil.which("mkfs.erofs") is None or not Path("/bin/busybox").exists():
        pytest.skip("needs mkfs.erofs and busybox-static (make deps)")
    first = ensure_warmup_layer(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("warmup-v1-")
    assert stat.S_IMODE(first.stat().st_mode) == 0o644  # QEMU (libvirt-qemu) reads it
    assert first.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0"  # the erofs superblock magic
    mtime = first.stat().st_mtime_ns
    assert ensure_warmup_layer(tmp_path) == first and first.stat().st_mtime_ns == mtime
    other = tmp_path / "busybox-copy"
    other.write_bytes(Path("/bin/busybox").read_bytes() + b"\0")
    other.chmod(0o755)
    assert ensure_warmup_layer(tmp_path, other) != first  # another busybox, another layer
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []
