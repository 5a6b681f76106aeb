"""Pulls from a real registry (Debian's docker-registry on loopback) into a private cache.

Checks the merged tree by mounting the erofs layers with overlayfs on the host, counts blob
GETs in the registry's access log, and injects faults (corrupt blob, truncated gzip, manifest
that is not JSON) to check the error and that the cache is unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervm.errors import ImageError
from tests.integration import imagebuild
from tests.integration.imagebuild import (
    check_multilayer_tree,
    make_state_dir,  # noqa: F401 - used from here by others
    mounted,
    private_store,
)
from tests.integration.registry import Registry, fault_proxy
from vmimage.images import ImageStore
from vmimage.images.cache import Cache

pytestmark = pytest.mark.slow
HYPERVM = [sys.executable, "-m", "executor.cli"]


def cli_env(store: ImageStore) -> dict[str, str]:
    """The environment that points ``hypervm`` at the store's private cache."""
    return {**os.environ, "HYPERVM_STATE_DIR": str(store.cache.root.parent),
            "HYPERVM_IMAGE_DIR": str(store.cache.root)}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, imagebuild.BuiltImage]:
    root = tmp_path_factory.mktemp("layouts")
    return {"base": imagebuild.busybox_base(root / "base"),
            "multi": imagebuild.multilayer(root / "multi"),
            "user": imagebuild.user_image(root / "user")}


@pytest.fixture
def store() -> Iterator[ImageStore]:
    with private_store() as s:
        yield s


def test_merged_tree_is_what_the_oci_spec_defines(registry: Registry, layouts: dict,
                                                  store: ImageStore, tmp_path: Path) -> None:
    ref = imagebuild.push(layouts["multi"], registry.host, "multi", "1")
    image = store.pull(ref)
    assert image.ref == ref and image.digest == layouts["multi"].manifest_digest
    assert len(image.layers) == 3
    for layer in image.layers:
        assert layer.is_file() and stat.S_IMODE(layer.stat().st_mode) == 0o644
        assert layer.name == layer.name.lower() and layer.suffix == ".erofs"
    assert [p.name[:-6] for p in image.layers] == [
        d.split(":")[1] for d in layouts["multi"].diff_ids]
    assert image.config.working_dir == "/data" and image.config.cmd == ("/bin/sh",)
    with mounted(image.layers, tmp_path) as merged:
        check_multilayer_tree(merged)


def test_second_pull_transfers_no_blob(registry: Registry, layouts: dict,
                                       store: ImageStore) -> None:
    ref = imagebuild.push(layouts["base"], registry.host, "again", "1")
    first = store.pull(ref)
    fetched = registry.blob_gets("again")
    assert set(fetched) == {*layouts["base"].layer_digests, layouts["base"].config_digest}
    assert all(n == 1 for n in fetched.values())
    second = store.pull(ref)
    assert second == first
    assert registry.blob_gets("again") == fetched  # counted: not one more blob GET
    pinned = store.pull(f"{registry.host}/again@{first.digest}")
    assert pinned.layers == first.layers
    assert registry.blob_gets("again") == fetched


def test_four_concurrent_pulls_fetch_each_blob_once(registry: Registry, layouts: dict) -> None:
    ref = imagebuild.push(layouts["multi"], registry.host, "concurrent", "1")
    with private_store() as store:
        env = cli_env(store)
        procs = [subprocess.Popen([*HYPERVM, "pull", ref], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(4)]
        outputs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outputs
        digest = layouts["multi"].manifest_digest
        assert all(out.decode().split() == [ref, digest] for out, _ in outputs)
        counts = registry.blob_gets("concurrent")
        wanted = {*layouts["multi"].layer_digests, layouts["multi"].config_digest}
        assert set(counts) == wanted and all(n == 1 for n in counts.values()), counts


def test_user_image_config_and_user_resolution(registry: Registry, layouts: dict,
                                               store: ImageStore) -> None:
    # pushed as Docker schema 2: the config path that skopeo would rewrite
    ref = imagebuild.push(layouts["user"], registry.host, "user", "1", fmt="v2s2")
    image = store.pull(ref)
    assert image.config.user == "app" and image.config.entrypoint == ("/bin/sh", "-c")
    assert image.config.env == ("PATH=/bin", "A=1")
    assert store.resolve_user(image, image.config.user) == (1000, 1000, (2000, 29))
    assert store.resolve_user(image, "svc:audio") == (1001, 29, ())
    assert store.resolve_user(image, "") == (0, 0, ())
    with pytest.raises(ImageError, match="'ghost'"):
        store.resolve_user(image, "ghost")
    # a layer image shared with the base is one file in the cache
    base = store.pull(imagebuild.push(layouts["base"], registry.host, "base", "1"))
    assert base.layers[0] == image.layers[0]


def test_gc_keeps_tagged_and_in_use(registry: Registry, layouts: dict,
                                    store: ImageStore) -> None:
    multi = store.pull(imagebuild.push(layouts["multi"], registry.host, "gc-multi", "1"))
    user = store.pull(imagebuild.push(layouts["user"], registry.host, "gc-user", "1"))
    report = store.gc(set())
    assert report.removed_layers == [] and all(p.exists() for p in multi.layers + user.layers)
    report = store.gc({multi.layers[2]}, keep_refs=[user.ref])
    assert report.removed_refs == [multi.ref]
    assert multi.layers[2].exists() and multi.layers[1].exists() is False
    assert all(p.exists() for p in user.layers)
    assert store.image(multi.ref) is None and store.image(user.ref) == user
    with store.hold():  # e.g. while a VM starts: gc waits
        worker = threading.Thread(target=store.gc, args=(set(),), kwargs={"keep_refs": []})
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and all(p.exists() for p in user.layers)
    worker.join(30)
    assert not any(p.exists() for p in multi.layers + user.layers)
    assert store.size_report().layers == 0 and store.size_report().images == ()


def run_pull(store: ImageStore, ref: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(store)
    return subprocess.run([*HYPERVM, "pull", ref], env=env, capture_output=True, text=True,
                          timeout=300)


def assert_clean_failure(store: ImageStore, ref: str, blob: str, words: str) -> None:
    cache = Cache(store.cache.root)
    cache.ensure()
    before = [(p, p.read_bytes()) for p in cache.entries()]
    with pytest.raises(ImageError) as info:
        store.pull(ref)
    message = str(info.value)
    assert ref in message and blob in message and words in message, message
    proc = run_pull(store, ref)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and blob in proc.stderr and ref in proc.stderr
    assert [(p, p.read_bytes()) for p in cache.entries()] == before
    assert not list((cache.root / "tmp").iterdir())
    assert not [p for p in (cache.root / "layers/sha256").iterdir() if p.name.startswith(".")]


def _unique_image(root: Path, tag: str, **kwargs: object) -> imagebuild.BuiltImage:
    extra = imagebuild.layer_tar([imagebuild.Entry(f"{tag}.bin", data=os.urandom(64 * 1024))])
    return imagebuild.write_layout(
        root, tag, [imagebuild.layer_tar(imagebuild.busybox_entries()), extra],
        imagebuild.BASE_CONFIG, **kwargs)  # type: ignore[arg-type]


def test_blob_with_wrong_digest(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    store.pull(imagebuild.push(imagebuild.busybox_base(tmp_path / "b"), registry.host, "ok", "1"))
    built = _unique_image(tmp_path / "layout", "corrupt")
    ref = imagebuild.push(built, registry.host, "corrupt", "1")
    data = registry.blob_data(built.layer_digests[1])
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes: only the digest can tell
    data.write_bytes(bytes(raw))
    assert_clean_failure(store, ref, built.layer_digests[1], "igest")


def test_truncated_gzip_layer(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    full = gzip.compress(imagebuild.layer_tar(
        [imagebuild.Entry("big.bin", data=os.urandom(256 * 1024))]), mtime=0)
    built = _unique_image(tmp_path / "layout", "truncated",
                          blob_override={1: full[: len(full) // 2]})
    ref = imagebuild.push(built, registry.host, "truncated", "1")
    assert_clean_failure(store, ref, built.layer_digests[1], "not a valid gzip tar")


def test_manifest_that_is_not_json(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    imagebuild.push(_unique_image(tmp_path / "layout", "notjson"), registry.host, "notjson", "1")
    garbage = b"<html>this is not a manifest</html>"
    overrides = {"/v2/notjson/manifests/1": (
        200, "application/vnd.oci.image.manifest.v1+json", garbage)}
    with fault_proxy(registry.host, overrides) as proxy:
        ref = f"{proxy}/notjson:1"
        blob = "sha256:" + hashlib.sha256(garbage).hexdigest()
        assert_clean_failure(store, ref, blob, "not valid JSON")


def test_cli_images_lists_sizes(registry: Registry, layouts: dict, store: ImageStore) -> None:
    ref = imagebuild.push(layouts["base"], registry.host, "listed", "1")
    proc = run_pull(store, ref)
    assert proc.returncode == 0
    # not a terminal: the result alone on stdout, plain progress lines on stderr
    assert proc.stdout == f"{ref} {layouts['base'].manifest_digest}\n"
    assert "fetching 1 of 1 layers" in proc.stderr and "layer 1/1" in proc.stderr
    env = cli_env(store)
    out = subprocess.run([*HYPERVM, "images"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert ref in out and layouts["base"].manifest_digest[:19] in out
    assert "cache: 1 layer images" in out


def test_manifest_list_resolves_to_linux_amd64(registry: Registry, store: ImageStore,
                                               tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    other = imagebuild.busybox_base(layout, "arm")
    amd64 = imagebuild.multilayer(layout, "amd")
    imagebuild.write_index(layout, "multiarch", [(other, "linux/arm64"), (amd64, "linux/amd64")])
    ref = imagebuild.push_all(layout, "multiarch", registry.host, "multiarch")
    image = store.pull(ref)
    assert image.digest == amd64.manifest_digest and len(image.layers) == 3
    gets = registry.blob_gets("multiarch")
    assert other.config_digest not in gets  # the other platform's blobs are never fetched
    imagebuild.write_index(layout, "armonly", [(other, "linux/arm64")])
    ref = imagebuild.push_all(layout, "armonly", registry.host, "armonly")
    with pytest.raises(ImageError, match="no linux/amd64 image.*linux/arm64"):
        store.pull(ref)


def test_interrupted_pull_leaves_nothing_half_written(registry: Registry, store: ImageStore,
                                                      tmp_path: Path) -> None:
    big = imagebuild.layer_tar([imagebuild.Entry("big.bin", data=os.urandom(48 << 20))])
    built = imagebuild.write_layout(
        tmp_path / "layout", "big",
        [imagebuild.layer_tar(imagebuild.busybox_entries()), big], imagebuild.BASE_CONFIG)
    ref = imagebuild.push(built, registry.host, "big", "1")
    cache = store.cache
    cache.ensure()
    before = cache.entries()
    env = cli_env(store)
    proc = subprocess.Popen([*HYPERVM, "pull", ref], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(p.is_file() and p.stat().st_size > 0
                  for p in (cache.root / "tmp").rglob("*")):  # the transfer has begun
        assert proc.poll() is None and time.monotonic() < deadline, "pull ended too soon"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cache.entries() == before  # nothing entered the cache
    image = store.pull(ref)  # the next pull is not confused by the leftovers
    assert len(image.layers) == 2
    store.gc(set())
    assert not list((cache.root / "tmp").iterdir())


def test_a_repeated_layer_is_stacked_once(registry: Registry, store: ImageStore,
                                          tmp_path: Path) -> None:
    rep = imagebuild.layer_tar([imagebuild.Entry("rep.txt", data=b"rep\n")])
    gone = imagebuild.layer_tar([imagebuild.Entry(".wh.rep.txt")])
    built = imagebuild.write_layout(
        tmp_path / "layout", "rep",
        [imagebuild.layer_tar(imagebuild.busybox_entries()), rep, gone, rep],
        imagebuild.BASE_CONFIG)
    image = store.pull(imagebuild.push(built, registry.host, "rep", "1"))
    assert len(image.layers) == 3 and len(set(image.layers)) == 3
    (tmp_path / "mnt").mkdir()
    with mounted(image.layers, tmp_path / "mnt") as merged:
        assert (merged / "rep.txt").read_bytes() == b"rep\n"
