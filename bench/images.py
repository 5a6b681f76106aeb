"""Images for the benchmark, built here (no internet) and served by a loopback registry:
the busybox test image every launch uses, and a ~100 MB image for the import rate.

Import: an empty private cache pulls the big image (manifest, blobs, verification, unpack, erofs
build); MB/s counts the compressed bytes fetched. Cache hit: ``ImageStore.pull`` of an image
already in the cache, which is what every launch pays before its VM boots (by tag: one
manifest request to the registry, then no blob work).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hypervm.config import HostConfig
from tests.integration import imagebuild
from tests.integration.registry import running_registry
from vmimage.images import ImageStore

log = logging.getLogger(__name__)

BIG_FILES = 4


@dataclass(frozen=True)
class BenchImages:
    registry_host: str
    busybox_ref: str
    big_ref: str | None
    big_blob_bytes: int
    big_tar_bytes: int
    #: busybox + /data/tree.tar, the peers' syscall workload (bench/peers.py)
    work_ref: str | None = None


def scratch_dir(prefix: str) -> Path:
    """A directory QEMU (libvirt-qemu) can read: not under /root, not mode 0700."""
    path = Path(tempfile.mkdtemp(prefix=f"hypervm-bench-{prefix}-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def big_image(layout: Path, size_mb: int) -> imagebuild.BuiltImage:
    """busybox + ``size_mb`` MB of incompressible files in a second layer."""
    chunk = size_mb * 1024 * 1024 // BIG_FILES
    entries = [imagebuild.Entry("data", "dir", mode=0o755)]
    entries += [imagebuild.Entry(f"data/blob{i}", data=os.urandom(chunk))
                for i in range(BIG_FILES)]
    layers = [imagebuild.layer_tar(imagebuild.busybox_entries()), imagebuild.layer_tar(entries)]
    return imagebuild.write_layout(layout, "big", layers, imagebuild.BASE_CONFIG)


def _blob_bytes(image: imagebuild.BuiltImage) -> int:
    blobs = image.layout / "blobs" / "sha256"
    return sum((blobs / d.split(":")[1]).stat().st_size for d in image.layer_digests)


@contextlib.contextmanager
def serve_images(big_mb: int | None, with_work: bool = False) -> Iterator[BenchImages]:
    """Start a loopback registry and push the benchmark images to it (not timed)."""
    work = scratch_dir("registry")
    try:
        with running_registry(work / "registry") as registry:
            busybox = imagebuild.busybox_base(work / "layout-busybox")
            busybox_ref = imagebuild.push(busybox, registry.host, "bench-busybox", "1")
            big_ref, blob_bytes, tar_bytes = None, 0, 0
            if big_mb:
                big = big_image(work / "layout-big", big_mb)
                blob_bytes = _blob_bytes(big)
                tar_bytes = big_mb * 1024 * 1024
                big_ref = imagebuild.push(big, registry.host, "bench-big", "1")
                shutil.rmtree(work / "layout-big", ignore_errors=True)
            work_ref = None
            if with_work:
                from bench.peers import tree_entries

                layout = imagebuild.write_layout(work / "layout-work", "1", [
                    imagebuild.layer_tar(tree_entries())], imagebuild.BASE_CONFIG)
                work_ref = imagebuild.push(layout, registry.host, "bench-work", "1")
                shutil.rmtree(work / "layout-work", ignore_errors=True)
            yield BenchImages(registry.host, busybox_ref, big_ref, blob_bytes, tar_bytes,
                              work_ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class ImportResult:
    import_s: float
    mb_s: float
    cache_hit_s: list[float]
    #: pull of ``name@sha256:…`` already cached: the store skips the registry entirely
    cache_hit_by_digest_s: list[float]
    offline_lookup_s: list[float]


def measure_import(images: BenchImages, hits: int) -> ImportResult:
    """Pull the big image into an empty private cache, then pull it again ``hits`` times."""
    assert images.big_ref is not None
    state = scratch_dir("store")
    try:
        cfg = HostConfig(state_dir=state, run_dir=state / "run", libvirt_uri="qemu:///system",
                         accel="tcg")
        store = ImageStore(cfg)
        started = time.monotonic()
        image = store.pull(images.big_ref)
        took = time.monotonic() - started
        hit = _timed_pulls(store, images.big_ref, hits)
        pinned = images.big_ref.rsplit(":", 1)[0] + "@" + image.digest
        by_digest = _timed_pulls(store, pinned, hits)
        offline = []
        for _ in range(hits):
            started = time.monotonic()
            store.image(images.big_ref)
            offline.append(time.monotonic() - started)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return ImportResult(took, images.big_blob_bytes / 1e6 / took, hit, by_digest, offline)


def _timed_pulls(store: ImageStore, ref: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.monotonic()
        store.pull(ref)
        out.append(time.monotonic() - started)
    return out


def warm_shared_cache(cfg: HostConfig, ref: str, hits: int) -> tuple[list[Path], list[float]]:
    """Pull the launch image into the shared cache (untimed), then time ``hits`` cache hits
    the way a launch resolves its image (``ImageStore.resolve``, pull policy ``missing``)."""
    store = ImageStore(cfg)
    image = store.pull(ref)
    times = []
    for _ in range(hits):
        started = time.monotonic()
        store.resolve(ref)
        times.append(time.monotonic() - started)
    return list(image.layers), times
