"""Garbage collection and the size report of the image cache.

gc keeps every image a kept ref points to and every layer image a running VM uses (``in_use``,
paths of layer images); everything else goes: image records, manifests, configs, layer images
and their blob-index entries, and staging leftovers. It holds the cache's ``gc`` lock
exclusively, so it never races a pull.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hypervm.frozen import frozen_dataclass

from .cache import Cache


@frozen_dataclass
class ImageSize:
    """The size of one cached image (``hypervm images``)."""

    ref: str
    digest: str
    layers: int
    #: bytes of its layer images (shared layers counted in every image)
    size: int


@frozen_dataclass
class SizeReport:
    """The size of the whole image cache."""

    images: tuple[ImageSize, ...]
    layers: int
    layer_bytes: int
    total_bytes: int


@dataclass
class GCReport:
    """What one garbage collection removed and kept."""

    removed_refs: list[str] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept_layers: int = 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def size_report(cache: Cache) -> SizeReport:
    images = []
    for ref, digest in sorted(cache.refs().items()):
        record = cache.image(digest)
        if record is None:
            continue
        size = sum(_size(cache.layer_path(d)) for d in record.diff_ids)
        images.append(ImageSize(ref, digest, len(record.diff_ids), size))
    layers = list((cache.root / "layers/sha256").glob("*.erofs"))
    total = sum(_size(p) for p in cache.root.rglob("*") if p.is_file())
    return SizeReport(tuple(images), len(layers), sum(_size(p) for p in layers), total)


def collect(cache: Cache, in_use: set[Path], keep_refs: Iterable[str] | None = None) -> GCReport:
    report = GCReport()
    with cache.lock("gc"):
        refs = _drop_refs(cache, keep_refs, report)
        keep_images = set(refs.values())
        keep_layers = {Path(p).name for p in in_use}
        keep_configs = set()
        for digest in keep_images:
            record = cache.image(digest)
            if record is not None:
                keep_layers.update(cache.layer_path(d).name for d in record.diff_ids)
                keep_configs.add(record.config)
        _remove_unkept(cache.root / "images/sha256",
                       {d.split(":")[1] + ".json" for d in keep_images}, report,
                       removed=report.removed_images)
        _remove_unkept(cache.root / "manifests/sha256", {d.split(":")[1] for d in keep_images},
                       report)
        _remove_unkept(cache.root / "configs/sha256", {d.split(":")[1] for d in keep_configs},
                       report)
        _remove_unkept(cache.root / "layers/sha256",
                       keep_layers | {n[: -len(".erofs")] + ".json" for n in keep_layers},
                       report, removed=report.removed_layers, suffix=".erofs")
        report.kept_layers = len(list((cache.root / "layers/sha256").glob("*.erofs")))
        for path in sorted((cache.root / "blobs/sha256").iterdir()):
            if cache.blob_diff_id("sha256:" + path.name) is None:
                path.unlink()
        for path in (cache.root / "locks").iterdir():  # no pull holds one while we hold gc
            if path.name != "gc.lock":
                path.unlink()
        for path in (cache.root / "tmp").iterdir():  # staging of pulls that were killed
            report.freed_bytes += sum(_size(p) for p in path.rglob("*")) if path.is_dir() else 0
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return report


def _drop_refs(cache: Cache, keep_refs: Iterable[str] | None, report: GCReport
               ) -> dict[str, str]:
    """Untag every ref not in ``keep_refs`` (None keeps all); returns the kept refs."""
    refs = cache.refs()
    if keep_refs is None:
        return refs
    kept = set(keep_refs)
    for ref in refs:
        if ref not in kept:
            cache.remove_ref(ref)
            report.removed_refs.append(ref)
    return {r: d for r, d in refs.items() if r in kept}


def _remove_unkept(directory: Path, keep: set[str], report: GCReport, *,
                   removed: list[str] | None = None, suffix: str = ".json") -> None:
    """Remove every file of ``directory`` not named in ``keep`` (temp files included)."""
    for path in sorted(directory.iterdir()):
        if path.name in keep:
            continue
        if removed is not None and path.name.endswith(suffix) and not path.name.startswith("."):
            removed.append("sha256:" + path.name[: -len(suffix)])
        report.freed_bytes += _size(path)
        path.unlink()
