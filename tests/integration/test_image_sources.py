"""docker-archive:, oci: and docker-daemon: (podman's Docker API) give the same layers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervm.errors import ImageError
from tests.integration import imagebuild
from tests.integration.imagebuild import check_multilayer_tree, mounted, private_store
from tests.integration.registry import running_registry
from vmimage.images import ImageStore

pytestmark = pytest.mark.slow


@pytest.fixture
def store() -> Iterator[ImageStore]:
    with private_store() as s:
        yield s


@contextlib.contextmanager
def podman_service() -> Iterator[tuple[str, list[str]]]:
    """``podman system service`` on a unix socket with its own storage; yields (DOCKER_HOST,
    the podman argv prefix for the same storage). Stopped and removed at teardown."""
    workdir = Path(tempfile.mkdtemp(prefix="hvp-", dir="/tmp"))  # podman: runroot <= 50 chars
    podman = ["podman", "--root", str(workdir / "root"), "--runroot", str(workdir / "runroot"),
              "--storage-driver", "vfs"]
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "podman.sock"
    with open(workdir / "podman.log", "wb") as log:
        proc = subprocess.Popen([*podman, "system", "service", "--time=0", f"unix://{sock}"],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("podman system service did not start: "
                                   + (workdir / "podman.log").read_text()[-500:])
            time.sleep(0.1)
        yield f"unix://{sock}", podman
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True,
                       check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_archive_layout_and_registry_give_the_same_layers(store: ImageStore, tmp_path: Path
                                                          ) -> None:
    built = imagebuild.multilayer(tmp_path / "layout")
    from_layout = store.pull(built.oci_ref)
    archive = imagebuild.save_docker_archive(built, tmp_path / "multi.tar", "multi:1")
    from_archive = store.pull(f"docker-archive:{archive}")
    with running_registry(tmp_path / "registry") as registry:
        from_registry = store.pull(imagebuild.push(built, registry.host, "multi", "1"))
    assert from_layout.layers == from_archive.layers == from_registry.layers
    assert from_layout.config == from_archive.config == from_registry.config
    assert from_layout.digest == from_registry.digest == built.manifest_digest
    with mounted(from_archive.layers, tmp_path) as merged:
        check_multilayer_tree(merged)
    refs = {i.ref for i in store.size_report().images}
    assert built.oci_ref in refs and f"docker-archive:{archive}" in refs


def test_missing_local_sources_are_clear(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a file"):
        store.pull(f"docker-archive:{tmp_path}/nope.tar")
    with pytest.raises(ImageError, match="not an OCI image layout"):
        store.pull(f"oci:{tmp_path}:x")
    built = imagebuild.busybox_base(tmp_path / "layout")
    with pytest.raises(ImageError, match="skopeo failed: .*absent"):
        store.pull(f"oci:{tmp_path}/layout:absent")
    index = imagebuild.write_index(tmp_path / "layout", "list", [(built, "linux/amd64")])
    with pytest.raises(ImageError) as info:
        store.pull(f"oci:{tmp_path}/layout:list")
    assert "manifest list" in str(info.value) and index in str(info.value)
    assert built.manifest_digest in str(info.value)


def test_docker_daemon_through_podman(store: ImageStore, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make deps installs it)")
    built = imagebuild.user_image(tmp_path / "layout")
    archive = imagebuild.save_docker_archive(built, tmp_path / "user.tar", "hypervm-test/user:1")
    with podman_service() as (docker_host, podman):
        subprocess.run([*podman, "load", "-i", str(archive)], check=True, capture_output=True)
        monkeypatch.setenv("DOCKER_HOST", docker_host)
        image = store.pull("docker-daemon:hypervm-test/user:1")
        with pytest.raises(ImageError, match="has no image"):
            store.pull("docker-daemon:hypervm-test/absent:1")
    expected = store.pull(built.oci_ref)
    assert image.layers == expected.layers
    assert image.config == expected.config
    assert store.resolve_user(image, image.config.user) == (1000, 1000, (2000, 29))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    with pytest.raises(ImageError, match="engine"):
        store.pull("docker-daemon:hypervm-test/user:1")
    assert not os.path.exists(docker_host.removeprefix("unix://"))
