"""The cache's on-disk rules: whole entries or none, records valid only when complete."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from vmimage.images.cache import Cache, ImageRecord
from vmimage.images.gc import collect, size_report

D = ["sha256:" + c * 64 for c in "0123456789"]


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    c = Cache(tmp_path / "images")
    c.ensure()
    return c


def add_layer(cache: Cache, diff_id: str, blob: str, size: int = 10) -> None:
    cache.layer_path(diff_id).write_bytes(b"x" * size)
    cache.put_layer_meta(diff_id, {"diff_id": diff_id, "files": {}})
    cache.put_blob_diff_id(blob, diff_id)


def test_layout_is_readable_by_qemu(cache: Cache) -> None:
    for sub in ("", "layers", "layers/sha256"):
        assert stat.S_IMODE((cache.root / sub).stat().st_mode) == 0o755
    cache.put_config(D[0], b"{}")
    assert stat.S_IMODE((cache.root / "configs/sha256" / ("0" * 64)).stat().st_mode) == 0o644


def test_image_record_only_when_complete(cache: Cache) -> None:
    record = ImageRecord(D[9], D[0], (D[1], D[2]))
    cache.put_image(record)
    assert cache.image(D[9]) is None  # no config, no layers
    cache.put_config(D[0], b"{}")
    add_layer(cache, D[1], D[5])
    assert cache.image(D[9]) is None  # one layer missing
    add_layer(cache, D[2], D[6])
    assert cache.image(D[9]) == record
    cache.layer_meta_path(D[2]).unlink()
    assert cache.image(D[9]) is None and cache.blob_diff_id(D[6]) is None


def test_write_atomic_leaves_nothing_on_failure(cache: Cache) -> None:
    target = cache.root / "configs/sha256" / ("1" * 64)
    with pytest.raises(TypeError):
        cache.write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert list((cache.root / "configs/sha256").iterdir()) == []
    cache.write_atomic(target, b"ok")
    assert target.read_bytes() == b"ok"


def test_locks_exclude_each_other(cache: Cache) -> None:
    order: list[str] = []

    def second() -> None:
        with cache.lock("blob-x"):
            order.append("second")

    with cache.lock("blob-x"):
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.2)
        order.append("first")
    worker.join(5)
    assert order == ["first", "second"]
    with cache.lock("gc", shared=True), cache.lock("gc", shared=True):
        pass  # shared holders coexist


def test_gc_and_size_report(cache: Cache) -> None:
    cache.put_config(D[0], b"{}")
    add_layer(cache, D[1], D[5], size=100)
    add_layer(cache, D[2], D[6], size=50)
    cache.put_image(ImageRecord(D[9], D[0], (D[1],)))
    cache.put_manifest(D[9], b"{}")
    cache.put_ref("reg/a:1", D[9])
    (cache.root / "tmp" / "pull-dead").mkdir()
    report = size_report(cache)
    assert [(i.ref, i.layers, i.size) for i in report.images] == [("reg/a:1", 1, 100)]
    assert report.layers == 2 and report.layer_bytes == 150
    result = collect(cache, set())
    assert result.removed_layers == [D[2]] and result.removed_images == []
    assert not cache.layer_path(D[2]).exists() and cache.blob_diff_id(D[6]) is None
    assert cache.image(D[9]) is not None and not list((cache.root / "tmp").iterdir())
    result = collect(cache, {cache.layer_path(D[1])}, keep_refs=[])
    assert result.removed_refs == ["reg/a:1"] and result.removed_images == [D[9]]
    assert cache.layer_path(D[1]).exists()  # in use by a running VM
    assert cache.manifest(D[9]) is None and cache.config(D[0]) is None


def test_repeated_layers_keep_their_topmost_place() -> None:
    from vmimage.images.store import unique_layers

    a, b, c = Path("/l/a"), Path("/l/b"), Path("/l/c")
    assert unique_layers((a, b, a, c)) == (b, a, c)
    assert unique_layers((a, a)) == (a,)
    assert unique_layers((a, b, c)) == (a, b, c)
