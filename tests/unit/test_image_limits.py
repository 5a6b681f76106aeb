"""Hostile images and stalled transfers (issue 15, finding 7): whiteout and entry names, caps
enforced while streaming, skopeo and lock timeouts, staging cleaned, one clear ImageError."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from hypervm.config import ImageLimits, config_from_env, image_limits_from_env
from hypervm.errors import HostError, ImageError, InvalidSpec
from hypervm.podspec import MAX_ROOTFS_LAYERS
from tests.unit.test_image_unpack import BLOB, tar_bytes
from vmimage.images.cache import Cache
from vmimage.images.store import ImageStore
from vmimage.images.unpack import Budget, unpack_layer

MiB = 1 << 20


def layer(tmp_path: Path, data: bytes, *, compress: bool = True) -> tuple[Path, Path]:
    """(blob, dest) with ``dest`` inside tmp/staging next to a sentinel file."""
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(data, 1) if compress else data)
    dest = tmp_path / "staging" / "layer-1"
    dest.mkdir(parents=True)
    (tmp_path / "staging" / "layer-0.erofs").write_bytes(b"an earlier layer")
    return blob, dest


def unpack_error(blob: Path, dest: Path, budget: Budget | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        unpack_layer("test/img:1", BLOB, blob, dest, budget)
    assert BLOB in str(info.value) and "test/img:1" in str(info.value)
    return info.value


def du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512
               for d, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("entries", [
    [("keep", "dir"), ("keep/file", "file", b"x"), ("keep/.wh..", "file")],
    [("keep", "dir"), ("keep/file", "file", b"x"), ("keep/.wh...", "file")],
    [(".wh..", "file")],
    [(".wh...", "file")],  # ".." of the layer root: the whole staging directory
], ids=["dot-in-dir", "dotdot-in-dir", "dot-at-root", "dotdot-at-root"])
def test_whiteouts_of_dot_and_dotdot_are_rejected(tmp_path: Path, entries: list[Any]) -> None:
    blob, dest = layer(tmp_path, tar_bytes(*entries))
    error = unpack_error(blob, dest)
    assert "whiteout" in str(error)
    assert (tmp_path / "staging" / "layer-0.erofs").read_bytes() == b"an earlier layer"
    assert dest.is_dir()


def pax_tar(name: str, *, linkname: str | None = None) -> bytes:
    """One entry whose name (or symlink target) travels in a PAX header, as Go's writer
    sends long names: PAX values may hold what a ustar field cannot (a NUL byte)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("placeholder")
        info.pax_headers = {"path": name}
        if linkname is not None:
            info.type, info.linkname = tarfile.SYMTYPE, "placeholder"
            info.pax_headers["linkpath"] = linkname
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


@pytest.mark.parametrize("data, why", [
    (pax_tar("a\x00b"), "NUL"),
    (pax_tar("d/" + "n" * 256), "longer than 255"),
    (pax_tar("/".join(["d" * 200] * 21)), "longer than 4095"),
    (pax_tar("link", linkname="/etc\x00x"), "target that has a NUL"),
    (pax_tar("link", linkname="x" * 5000), "target that is longer"),
])
def test_bad_names_are_a_clear_error(tmp_path: Path, data: bytes, why: str) -> None:
    blob, dest = layer(tmp_path, data)
    assert why in str(unpack_error(blob, dest))


# ---------------------------------------------------------------------------- caps


def gzip_bomb(path: Path, size: int) -> None:
    """A gzip'd tar holding one file of ``size`` zero bytes (~1000:1), written in chunks."""
    info = tarfile.TarInfo("zeros")
    info.size = size
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(info.tobuf(tarfile.PAX_FORMAT))
        chunk = bytes(MiB)
        for _ in range(size // MiB):
            out.write(chunk)
        out.write(bytes(2 * tarfile.RECORDSIZE))


def test_a_gzip_bomb_stops_at_the_cap_without_filling_the_disk(tmp_path: Path) -> None:
    blob = tmp_path / "bomb.gz"
    gzip_bomb(blob, 256 * MiB)
    assert blob.stat().st_size < MiB
    dest = tmp_path / "layer"
    dest.mkdir()
    budget = Budget("test/img:1", ImageLimits(max_layer_bytes=4 * MiB))
    started = time.monotonic()
    error = unpack_error(blob, dest, budget)
    assert time.monotonic() - started < 2.0
    assert "HYPERVM_IMAGE_MAX_LAYER_BYTES" in str(error) and "4.0 MiB" in str(error)
    assert du(dest) <= 5 * MiB  # stopped at the cap: not 256 MiB


def test_the_image_cap_spans_its_layers(tmp_path: Path) -> None:
    budget = Budget("test/img:1", ImageLimits(max_layer_bytes=3 * MiB, max_image_bytes=5 * MiB))
    for index in range(2):
        data = tar_bytes((f"f{index}", "file", os.urandom(2 * MiB + 1000)))
        blob, dest = tmp_path / f"b{index}", tmp_path / f"l{index}"
        blob.write_bytes(data)
        dest.mkdir()
        unpack_layer("test/img:1", BLOB, blob, dest, budget)
    blob, dest = tmp_path / "b2", tmp_path / "l2"
    blob.write_bytes(tar_bytes(("f2", "file", os.urandom(2 * MiB))))
    dest.mkdir()
    assert "HYPERVM_IMAGE_MAX_BYTES" in str(unpack_error(blob, dest, budget))


def test_too_many_entries_stop_the_layer(tmp_path: Path) -> None:
    blob, dest = layer(tmp_path, tar_bytes(*[(f"f{i}", "file", b"") for i in range(50)]))
    error = unpack_error(blob, dest, Budget("test/img:1", ImageLimits(max_entries=20)))
    assert "more than 20 entries" in str(error) and "HYPERVM_IMAGE_MAX_ENTRIES" in str(error)
    assert len(os.listdir(dest)) <= 20


def test_implied_parent_directories_count_as_entries(tmp_path: Path) -> None:
    """One entry may imply ~2000 parent directories: an inode bomb unless they count."""
    deep = "/".join(f"d{i}" for i in range(100)) + "/f"
    blob, dest = layer(tmp_path, tar_bytes((deep, "file", b"x")))
    error = unpack_error(blob, dest, Budget("test/img:1", ImageLimits(max_entries=50)))
    assert "more than 50 entries" in str(error)
    assert sum(len(dirs) for _, dirs, _ in os.walk(dest)) <= 50


def test_unpacking_keeps_a_free_space_reserve(tmp_path: Path) -> None:
    blob, dest = layer(tmp_path, tar_bytes(("f", "file", b"x")))
    error = unpack_error(blob, dest, Budget("test/img:1", ImageLimits(min_free_bytes=1 << 60)))
    assert "left on the image cache's disk" in str(error)


def test_limits_from_the_environment() -> None:
    env = {"HYPERVM_IMAGE_MAX_LAYER_BYTES": "2G", "HYPERVM_IMAGE_MAX_BYTES": "1.5t",
           "HYPERVM_IMAGE_MAX_ENTRIES": "1000", "HYPERVM_IMAGE_MAX_LAYERS": "10",
           "HYPERVM_IMAGE_PULL_TIMEOUT": "90", "HYPERVM_IMAGE_LOCK_TIMEOUT": "0.5",
           "HYPERVM_IMAGE_MIN_FREE_BYTES": "512M"}
    assert config_from_env(env).image_limits == ImageLimits(
        max_layer_bytes=2 << 30, max_image_bytes=int(1.5 * (1 << 40)), max_entries=1000,
        max_layers=10, min_free_bytes=512 * MiB, pull_timeout_s=90.0, lock_timeout_s=0.5)
    assert image_limits_from_env({}) == ImageLimits()
    for name, bad in (("HYPERVM_IMAGE_MAX_ENTRIES", "lots"), ("HYPERVM_IMAGE_MAX_BYTES", "-1G"),
                      ("HYPERVM_IMAGE_PULL_TIMEOUT", "0"), ("HYPERVM_IMAGE_MAX_LAYERS", "inf")):
        with pytest.raises(InvalidSpec) as info:
            image_limits_from_env({name: bad})
        assert info.value.field == name


# ---------------------------------------------------------------------------- locks


def test_a_held_lock_times_out_with_a_clear_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "images", lock_timeout_s=0.5)
    cache.ensure()
    holder = os.open(cache.root / "locks" / "gc.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a stalled pull or gc elsewhere
    try:
        started = time.monotonic()
        with pytest.raises(HostError) as info, cache.lock("gc", shared=True):
            pass
        assert 0.4 < time.monotonic() - started < 3.0
        assert "'gc' lock" in str(info.value) and "HYPERVM_IMAGE_LOCK_TIMEOUT" in str(info.value)
    finally:
        os.close(holder)
    with cache.lock("gc", shared=True):  # free again: taken at once
        pass


def test_a_free_lock_is_taken_without_importing_tenacity(tmp_path: Path) -> None:
    """Every cold run takes the cache's locks uncontended: no wait, so no tenacity import
    (milliseconds of a cold run before its VM is created, issue 17); a held lock still waits
    (above)."""
    code = ("import sys; from pathlib import Path; from vmimage.images.cache import Cache\n"
            f"c = Cache(Path({str(tmp_path / 'images')!r}), lock_timeout_s=5.0); c.ensure()\n"
            "with c.lock('gc', shared=True), c.lock('pull'):\n"
            "    pass\n"
            "print('tenacity' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------- the store


FAKE_SKOPEO = """#!{python}
import os, pathlib, sys, time
state = pathlib.Path(os.environ["FAKE_SKOPEO_DIR"])
args = sys.argv[1:]
with open(state / "calls", "a") as calls:
    calls.write(" ".join(args) + "\\n")
if "inspect" in args:
    sys.stdout.buffer.write((state / "manifest.json").read_bytes())
    sys.exit(0)
mode = (state / "copy-mode").read_text()
if mode == "stall":  # a registry that trickles: nothing ever arrives
    time.sleep(120)
elif mode == "flood":  # a registry that streams without end
    layout = pathlib.Path(args[-1].split(":")[1])
    with open(layout / "blobs" / "sha256" / "partial", "wb") as out:
        while True:
            out.write(bytes(1 << 20))
            out.flush()
            time.sleep(0.01)
sys.exit(3)
"""


@pytest.fixture
def fake_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "skopeo-state"
    (state / "bin").mkdir(parents=True)
    script = state / "bin" / "skopeo"
    script.write_text(FAKE_SKOPEO.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{state / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SKOPEO_DIR", str(state))
    monkeypatch.setenv("DOCKER_CONFIG", str(state))  # no credentials of this host
    return state


def manifest(state: Path, layers: int, size: int = 1000) -> None:
    def desc(media_type: str, seed: str, length: int) -> dict[str, Any]:
        return {"mediaType": media_type, "size": length,
                "digest": "sha256:" + hashlib.sha256(seed.encode()).hexdigest()}

    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": desc("application/vnd.oci.image.config.v1+json", "config", 100),
           "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", f"l{i}", size)
                      for i in range(layers)]}
    (state / "manifest.json").write_text(json.dumps(doc))


def store(tmp_path: Path, **limits: Any) -> ImageStore:
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state")})
    cfg = type(cfg)(**{**cfg.__dict__, "image_limits": ImageLimits(**limits)})
    return ImageStore(cfg)


def pull_error(st: ImageStore) -> ImageError:
    with pytest.raises(ImageError) as info:
        st.pull("localhost:5999/test/img:1")
    assert "localhost:5999/test/img:1" in str(info.value)
    return info.value


def assert_staging_clean(st: ImageStore) -> None:
    assert list((st.cache.root / "tmp").iterdir()) == []
    assert [p for p in st.cache.entries() if "refs" in p.parts or "layers" in p.parts] == []


def test_a_stalled_skopeo_copy_times_out(tmp_path: Path, fake_skopeo: Path) -> None:
    manifest(fake_skopeo, 1)
    (fake_skopeo / "copy-mode").write_text("stall")
    st = store(tmp_path, pull_timeout_s=1.0)
    started = time.monotonic()
    error = pull_error(st)
    assert time.monotonic() - started < 10
    assert "did not finish within 1 s" in str(error)
    assert "HYPERVM_IMAGE_PULL_TIMEOUT" in str(error)
    assert "sha256:" + hashlib.sha256(b"l0").hexdigest() in str(error)  # the blob it fetched
    assert_staging_clean(st)
    sleepers = subprocess.run(["pgrep", "-f", f"{fake_skopeo}/bin/skopeo"],
                              capture_output=True, text=True).stdout
    assert sleepers == ""  # the stalled skopeo was killed, not left behind


def test_a_source_sending_more_than_declared_is_stopped(tmp_path: Path,
                                                        fake_skopeo: Path) -> None:
    manifest(fake_skopeo, 2, size=1000)
    (fake_skopeo / "copy-mode").write_text("flood")
    st = store(tmp_path, pull_timeout_s=30.0)
    started = time.monotonic()
    error = pull_error(st)
    assert time.monotonic() - started < 10
    assert "more than the" in str(error) and "the manifest declares" in str(error)
    assert "and 1 more" in str(error)
    assert_staging_clean(st)


def test_too_many_layers_are_refused_before_any_transfer(tmp_path: Path,
                                                         fake_skopeo: Path) -> None:
    manifest(fake_skopeo, 5)
    (fake_skopeo / "copy-mode").write_text("stall")
    error = pull_error(store(tmp_path, max_layers=4))
    assert "5 layers, more than the limit of 4" in str(error)
    assert "HYPERVM_IMAGE_MAX_LAYERS" in str(error)
    assert "copy" not in (fake_skopeo / "calls").read_text()


def test_more_layers_than_a_root_filesystem_takes_are_refused_before_any_transfer(
        tmp_path: Path, fake_skopeo: Path) -> None:
    """An image no VM's init could stack (task manylayers; the run's own check is the pod's)."""
    manifest(fake_skopeo, MAX_ROOTFS_LAYERS + 1)
    (fake_skopeo / "copy-mode").write_text("stall")
    error = pull_error(store(tmp_path, max_layers=128))
    assert "65 layers, more than the 64 a container's root filesystem" in str(error)
    assert "flatten" in str(error)
    assert "copy" not in (fake_skopeo / "calls").read_text()


def test_a_declared_layer_over_the_cap_is_refused_before_any_transfer(
        tmp_path: Path, fake_skopeo: Path) -> None:
    manifest(fake_skopeo, 1, size=10 * MiB)
    (fake_skopeo / "copy-mode").write_text("stall")
    error = pull_error(store(tmp_path, max_layer_bytes=MiB))
    assert "HYPERVM_IMAGE_MAX_LAYER_BYTES" in str(error)
    assert "copy" not in (fake_skopeo / "calls").read_text()


def test_a_pull_waiting_on_a_stalled_pulls_blob_lock_times_out(tmp_path: Path,
                                                               fake_skopeo: Path) -> None:
    manifest(fake_skopeo, 1)
    (fake_skopeo / "copy-mode").write_text("stall")
    st = store(tmp_path, lock_timeout_s=0.5)
    st.cache.ensure()
    blob = hashlib.sha256(b"l0").hexdigest()
    holder = os.open(st.cache.root / "locks" / f"blob-{blob}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another pull of the same blob, stalled
    try:
        error = pull_error(st)
    finally:
        os.close(holder)
    assert f"sha256:{blob}" in str(error) and "HYPERVM_IMAGE_LOCK_TIMEOUT" in str(error)
    assert "copy" not in (fake_skopeo / "calls").read_text()
    assert_staging_clean(st)
