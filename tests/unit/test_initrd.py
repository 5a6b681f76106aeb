"""vmimage.initrd: the newc writer (checked against GNU cpio), contents, key, cache."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hypervm.config import config_from_env
from hypervm.errors import HostError
from vmimage import initrd
from vmimage.initrd import CpioEntry, ensure_initrd, initrd_entries, newc_archive
from vmimage.kernel import Kernel

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int], int]]:
    """(name, mode, data, rdev, mtime) of each member; a reader independent of the writer."""
    out = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos: pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, fields[1], body, (fields[9], fields[10]), fields[5]))


def test_archive_round_trips() -> None:
    entries = [CpioEntry.file("b/file", b"hello", 0o640), CpioEntry.directory("b"),
               CpioEntry.chardev("dev/console", 5, 1), CpioEntry.directory("dev"),
               CpioEntry.file("a", b"")]
    members = parse_newc(newc_archive(entries))
    assert [m[0] for m in members] == ["a", "b", "b/file", "dev", "dev/console"]
    by_name = {m[0]: m for m in members}
    assert by_name["b/file"][2] == b"hello"
    assert by_name["b/file"][1] == stat.S_IFREG | 0o640
    assert stat.S_ISCHR(by_name["dev/console"][1]) and by_name["dev/console"][3] == (5, 1)
    assert all(m[4] == 0 for m in members)


def test_archive_is_deterministic_whatever_the_input_order() -> None:
    entries = initrd_entries(b"\x7fELF-init", [("virtio_pci.ko", b"m1"), ("ext4.ko", b"m2")])
    assert newc_archive(entries) == newc_archive(list(reversed(entries)))


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ValueError):
        newc_archive([CpioEntry.file("init", b"a"), CpioEntry.file("init", b"b")])


@needs_cpio
def test_gnu_cpio_reads_the_archive(tmp_path: Path) -> None:
    data = newc_archive(initrd_entries(b"#!init", [("overlay.ko", b"ko")]))
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode()
    assert "init" in listing and "dev/console" in listing and "lib/modules/overlay.ko" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "init", "lib/modules/*"], input=data, cwd=out,
                   check=True)
    assert (out / "init").read_bytes() == b"#!init"
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755


def test_hyperkernel_initrd_has_no_modules() -> None:
    names = {e.path for e in initrd_entries(b"x")}
    assert names == {"init", "dev", "dev/console", "proc", "sys", "run"}


def test_distro_initrd_lists_modules_in_load_order() -> None:
    entries = {e.path: e for e in initrd_entries(b"x", [("b.ko", b"1"), ("a.ko", b"2")])}
    assert entries[initrd.ORDER_FILE].data == b"/lib/modules/b.ko\n/lib/modules/a.ko\n"
    assert entries["lib/modules/a.ko"].data == b"2"


def test_key_depends_on_init_kernel_and_modules() -> None:
    base = initrd.initrd_key(b"init", "k", [("a.ko", b"1")])
    assert base == initrd.initrd_key(b"init", "k", [("a.ko", b"1")])
    assert base != initrd.initrd_key(b"init2", "k", [("a.ko", b"1")])
    assert base != initrd.initrd_key(b"init", "k2", [("a.ko", b"1")])
    assert base != initrd.initrd_key(b"init", "k", [("a.ko", b"2")])
    assert base != initrd.initrd_key(b"init", "k", [])


@pytest.fixture
def cfg(tmp_path: Path):  # noqa: ANN201
    return config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state")})


def test_ensure_initrd_builds_once_readable(cfg, tmp_path: Path) -> None:  # noqa: ANN001
    init = tmp_path / "init-bin"
    init.write_bytes(b"\x7fELF stand-in")
    mod = tmp_path / "virtio_blk.ko"
    mod.write_bytes(b"module")
    kernel = Kernel(path=tmp_path / "vmlinuz", version="6.1.0", kind="distro", modules=(mod,),
                    key="distro-6.1.0")
    image = ensure_initrd(cfg, kernel, init)
    assert image.parent.parent == cfg.initrd_dir and image.name == "initrd.img"
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    assert stat.S_IMODE(image.parent.stat().st_mode) == 0o755
    members = {m[0]: m for m in parse_newc(image.read_bytes())}
    assert members["init"][2] == b"\x7fELF stand-in"
    assert members["lib/modules/virtio_blk.ko"][2] == b"module"
    mtime = image.stat().st_mtime_ns
    assert ensure_initrd(cfg, kernel, init) == image and image.stat().st_mtime_ns == mtime
    init.write_bytes(b"\x7fELF new init")
    assert ensure_initrd(cfg, kernel, init) != image


def test_missing_init_says_make_init(cfg, tmp_path: Path) -> None:  # noqa: ANN001
    kernel = Kernel(path=tmp_path / "vmlinux", version="6.1", kind="hyperkernel", key="k")
    with pytest.raises(HostError) as err:
        ensure_initrd(cfg, kernel, tmp_path / "nope")
    assert "make -C init" in str(err.value)


def test_compressed_module_is_refused(cfg, tmp_path: Path) -> None:  # noqa: ANN001
    init = tmp_path / "init"
    init.write_bytes(b"x")
    mod = tmp_path / "ext4.ko.xz"
    mod.write_bytes(b"xz")
    kernel = Kernel(path=tmp_path / "v", version="6.1", kind="distro", modules=(mod,), key="d")
    with pytest.raises(HostError):
        ensure_initrd(cfg, kernel, init)
