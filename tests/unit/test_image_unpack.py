"""Layer unpacking: overlayfs whiteouts, opaque dirs, metadata and the path-escape policy."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hypervm.errors import ImageError
from vmimage.images.unpack import OPAQUE_XATTR, safe_name, unpack_layer

BLOB = "sha256:" + "b" * 64


def tar_bytes(*entries: tuple) -> bytes:
    """entries: (name, kind, data_or_target, mode, uid, gid, xattrs) with defaults."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, kind, payload, mode, uid, gid, xattrs = (*entry, *[None] * (7 - len(entry)))
            info = tarfile.TarInfo(name)
            info.mode = mode if mode is not None else 0o644
            info.uid, info.gid, info.mtime = uid or 0, gid or 0, 1_600_000_000
            if xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
            if kind == "file":
                data = payload or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = payload or ""
            tar.addfile(info)
    return out.getvalue()


def unpack(tmp_path: Path, data: bytes, *, compress: bool = True) -> tuple[Path, object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(data) if compress else data)
    dest = tmp_path / "sandbox" / "layer"
    dest.mkdir(parents=True)
    info = unpack_layer("test/img:1", BLOB, blob, dest)
    return dest, info


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def test_whiteouts_and_opaque_dirs_become_overlayfs_form(tmp_path: Path) -> None:
    data = tar_bytes(("etc", "dir"), ("etc/.wh.passwd", "file"), ("opq", "dir"),
                     ("opq/.wh..wh..opq", "file"), ("opq/kept", "file", b"k"),
                     ("a/b/.wh.c", "file"), (".wh..wh.plnk", "dir"),
                     ("same/.wh.x", "file"), ("same/x", "file", b"x"),
                     ("same/y", "file", b"y"), ("same/.wh.y", "file"))
    dest, info = unpack(tmp_path, data)
    assert is_whiteout(dest / "etc/passwd")
    assert is_whiteout(dest / "a/b/c")
    assert os.getxattr(dest / "opq", OPAQUE_XATTR) == b"y"
    assert (dest / "opq/kept").read_bytes() == b"k"
    assert not (dest / ".wh..wh.plnk").exists()
    # a whiteout never hides an entry of its own layer, whichever comes first
    assert (dest / "same/x").read_bytes() == b"x" and (dest / "same/y").read_bytes() == b"y"
    assert not list(dest.rglob(".wh.*"))
    assert info.files == {"etc/passwd": None}


def test_metadata_is_kept(tmp_path: Path) -> None:
    data = tar_bytes(("bin", "dir", None, 0o755), ("bin/su", "file", b"su", 0o4755, 0, 0),
                     ("bin/sg", "file", b"sg", 0o2711, 5, 7),
                     ("tmp", "dir", None, 0o1777),
                     ("owned", "file", b"o", 0o640, 1234, 5678, {"user.note": "hi"}),
                     ("link", "sym", "/etc/passwd"), ("hl", "hard", "owned"),
                     ("pipe", "fifo", None, 0o600), ("dev/null", "chr", None, 0o666))
    dest, info = unpack(tmp_path, data)
    assert stat.S_IMODE(os.lstat(dest / "bin/su").st_mode) == 0o4755
    st = os.lstat(dest / "bin/sg")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2711, 5, 7)
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    st = os.lstat(dest / "owned")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime == 1_600_000_000
    assert os.getxattr(dest / "owned", "user.note") == b"hi"
    assert os.readlink(dest / "link") == "/etc/passwd"
    assert os.lstat(dest / "hl").st_ino == st.st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "pipe").st_mode)
    assert not (dest / "dev/null").exists() and info.skipped_devices == 1
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755


def test_diff_id_is_the_uncompressed_digest(tmp_path: Path) -> None:
    data = tar_bytes(("f", "file", b"hello"))
    _, info = unpack(tmp_path, data)
    assert info.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    _, plain = unpack(tmp_path / "plain", data, compress=False)
    assert plain.diff_id == info.diff_id


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    data = tar_bytes(("x", "file", b"1"), ("x", "dir"), ("x/y", "file", b"2"),
                     ("x", "file", b"3"), ("d", "dir", None, 0o700), ("d", "dir", None, 0o755))
    dest, _ = unpack(tmp_path, data)
    assert (dest / "x").read_bytes() == b"3"
    assert stat.S_IMODE(os.lstat(dest / "d").st_mode) == 0o755


def test_overlay_xattrs_from_the_tar_are_dropped(tmp_path: Path) -> None:
    data = tar_bytes(("d", "dir", None, 0o755, 0, 0, {"trusted.overlay.opaque": "y"}))
    dest, _ = unpack(tmp_path, data)
    with pytest.raises(OSError):
        os.getxattr(dest / "d", OPAQUE_XATTR)


def test_passwd_and_group_are_recorded(tmp_path: Path) -> None:
    data = tar_bytes(("etc", "dir"), ("etc/passwd", "file", b"app:x:1:1::/:/bin/sh\n"))
    _, info = unpack(tmp_path, data)
    assert info.files == {"etc/passwd": "app:x:1:1::/:/bin/sh\n"}
    _, info = unpack(tmp_path / "2", tar_bytes(("etc/.wh..wh..opq", "file")))
    assert info.files == {"etc/passwd": None, "etc/group": None}


@pytest.mark.parametrize("entries, words", [
    ((("../evil", "file", b"x"),), "'..' component"),
    ((("a/../../evil", "file", b"x"),), "'..' component"),
    ((("/abs-evil", "file", b"x"),), "is absolute"),
    ((("link", "sym", "../../outside"), ("link/evil", "file", b"x")), "through the symlink"),
    ((("link", "sym", "/"), ("link/tmp/evil", "file", b"x")), "through the symlink"),
    ((("hl", "hard", "/etc/passwd"),), "hardlink"),
    ((("hl", "hard", "../../outside/target"),), "hardlink"),
    ((("hl", "hard", "later"), ("later", "file", b"x")), "hardlink"),
    ((("link", "sym", "/etc/passwd"), ("hl", "hard", "link")), "hardlink"),
    ((("f", "file", b"x"), ("f/g", "file", b"x")), "not a directory"),
    (((".", "sym", "../outside"), ("target", "file", b"x")), "root directory"),
    ((("./", "file", b"x"),), "root directory"),
    ((("a/..", "sym", "/"),), "'..' component"),
    (((".wh.", "file"),), "whiteout of nothing"),
])
def test_escapes_are_rejected_and_nothing_is_written_outside(
        tmp_path: Path, entries: tuple, words: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("secret")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    host_tmp_before = set(os.listdir("/tmp"))
    with pytest.raises(ImageError) as info:
        unpack(tmp_path, tar_bytes(*entries))
    message = str(info.value)
    assert words in message and "rejected" in message
    assert "test/img:1" in message and BLOB in message
    after = {p for p in tmp_path.rglob("*")}
    new = {p for p in after - set(before) if not p.is_relative_to(tmp_path / "sandbox")}
    assert new == {tmp_path / "blob"}
    assert (outside / "target").read_text() == "secret" and os.listdir(outside) == ["target"]
    assert not (set(os.listdir("/tmp")) - host_tmp_before) & {"evil", "abs-evil"}
    assert not Path("/abs-evil").exists()


def test_symlinks_pointing_out_are_contained_not_followed(tmp_path: Path) -> None:
    dest, _ = unpack(tmp_path, tar_bytes(("up", "sym", "../../../.."), ("abs", "sym", "/etc")))
    assert os.readlink(dest / "up") == "../../../.." and os.readlink(dest / "abs") == "/etc"


@pytest.mark.parametrize("cut", [10, 200, -8])
def test_truncated_gzip_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar_bytes(("f", "file", os.urandom(4096))))[:cut])
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(ImageError) as info:
        unpack_layer("img:1", BLOB, blob, dest)
    assert "not a valid gzip tar" in str(info.value) and BLOB in str(info.value)


@pytest.mark.parametrize("name, expected", [
    ("./a/b", "a/b"), ("a//b/", "a/b"), (".", ""), ("./", ""), ("a/./b", "a/b"),
    ("/a", None), ("a/../b", None), ("..", None),
])
def test_safe_name(name: str, expected: str | None) -> None:
    assert safe_name(name) == expected


def test_zstd_is_refused_clearly(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(ImageError, match="zstd"):
        unpack_layer("img:1", BLOB, blob, dest)
