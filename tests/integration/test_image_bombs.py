"""Hostile images and stalled registries with the real skopeo and a real registry (issue 15,
finding 7): a gzip bomb stops at the cap, a trickling registry times out, a pull waiting on the
stalled pull's blob lock gives up; each with one ImageError naming the image and the blob, and
nothing left in the cache or its staging."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypervm.config import HostConfig, ImageLimits
from hypervm.errors import ImageError
from tests.integration import imagebuild
from tests.integration.registry import Registry, _ProxyHandler, _serve
from vmimage.images import ImageStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
MiB = 1 << 20


@contextlib.contextmanager
def limited_store(**limits: Any) -> Iterator[ImageStore]:
    state = imagebuild.make_state_dir()
    try:
        cfg = HostConfig(state_dir=state, run_dir=state / "run", libvirt_uri="test:///default",
                         accel="tcg", image_limits=ImageLimits(**limits))
        yield ImageStore(cfg)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def assert_nothing_entered(store: ImageStore) -> None:
    root = store.cache.root
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "layers/sha256").iterdir()) == []
    assert list((root / "refs").iterdir()) == []


def bomb_tar(size: int) -> bytes:
    info = tarfile.TarInfo("zeros")
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT) + bytes(size) + bytes(2 * tarfile.RECORDSIZE)


def test_a_gzip_bomb_from_a_registry_stops_at_the_cap(registry: Registry,
                                                      tmp_path: Path) -> None:
    built = imagebuild.write_layout(tmp_path / "layout", "bomb", [bomb_tar(64 * MiB)],
                                    imagebuild.BASE_CONFIG)
    ref = imagebuild.push(built, registry.host, "bomb", "1")
    with limited_store(max_layer_bytes=8 * MiB) as store:
        started = time.monotonic()
        with pytest.raises(ImageError) as info:
            store.pull(ref)
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert ref in message and built.layer_digests[0] in message, message
        assert "HYPERVM_IMAGE_MAX_LAYER_BYTES" in message
        assert elapsed < 15
        assert_nothing_entered(store)


class _Trickle(_ProxyHandler):
    """GETs of ``stall_path`` answer 200 with the right length, send 512 bytes, then stall."""

    stall_path: str
    release: threading.Event

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != self.stall_path:
            return self._serve(body=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(10 * MiB))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.end_headers()
        self.wfile.write(bytes(512))
        self.wfile.flush()
        self.release.wait(60)


def test_a_trickling_registry_times_out_and_so_does_a_pull_waiting_on_it(
        registry: Registry, tmp_path: Path) -> None:
    extra = imagebuild.layer_tar([imagebuild.Entry("x.bin", data=os.urandom(64 * 1024))])
    built = imagebuild.write_layout(tmp_path / "layout", "slow", [extra],
                                    imagebuild.BASE_CONFIG)
    imagebuild.push(built, registry.host, "slow", "1")
    blob = built.layer_digests[0]
    release = threading.Event()
    # the proxy forwards one Accept header only: serve the manifest itself, by tag and digest
    raw = (built.layout / "blobs/sha256" / built.manifest_digest.split(":")[1]).read_bytes()
    manifest = (200, "application/vnd.oci.image.manifest.v1+json", raw)
    overrides = {"/v2/slow/manifests/1": manifest,
                 f"/v2/slow/manifests/{built.manifest_digest}": manifest}
    handler = type("Handler", (_Trickle,), {
        "upstream": registry.host, "overrides": overrides,
        "stall_path": f"/v2/slow/blobs/{blob}", "release": release})
    try:
        with _serve(handler) as proxy, limited_store(pull_timeout_s=4.0,
                                                     lock_timeout_s=1.0) as store:
            ref = f"{proxy}/slow:1"
            waiter_error: list[BaseException] = []

            def second_pull() -> None:
                time.sleep(1.5)  # the first pull holds the blob's lock by now
                try:
                    store.pull(ref)
                except BaseException as e:  # noqa: BLE001 - checked below
                    waiter_error.append(e)

            waiter = threading.Thread(target=second_pull)
            waiter.start()
            started = time.monotonic()
            with pytest.raises(ImageError) as info:
                store.pull(ref)
            elapsed = time.monotonic() - started
            waiter.join(30)
            message = str(info.value)
            assert ref in message and blob in message, message
            assert "did not finish within 4 s" in message and 3.5 < elapsed < 15
            assert len(waiter_error) == 1 and isinstance(waiter_error[0], ImageError)
            waited = str(waiter_error[0])
            # it waited on the image's lock (taken before the blobs'): named by its manifest
            assert ref in waited and built.manifest_digest in waited
            assert "HYPERVM_IMAGE_LOCK_TIMEOUT" in waited
            assert_nothing_entered(store)
    finally:
        release.set()
