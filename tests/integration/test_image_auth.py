"""Credentials for a registry (basic or token auth): the operator's come from the Docker config
via docker-py; a tenant's (a Mesos task's) only from its task, and a tenant's cache hit is
authorized by the registry with them (issue 15 finding 8)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervm.errors import ImageError
from tests.integration import imagebuild
from tests.integration.imagebuild import private_store
from tests.integration.registry import Registry, running_registry
from vmimage.images import ImageStore
from vmimage.images.authorize import PullAuth
from vmimage.images.credentials import parse_docker_config

pytestmark = pytest.mark.slow
USER, PASSWORD = "alice", "s3cret-pw"
OTHER_USER, OTHER_PASSWORD = "bob", "other-pw"


@pytest.fixture(scope="module", params=["basic", "token"])
def auth_registry(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    users = {USER: PASSWORD, OTHER_USER: OTHER_PASSWORD}
    with running_registry(tmp_path_factory.mktemp("auth-registry"), users,
                          token_auth=request.param == "token") as reg:
        yield reg


@pytest.fixture
def store() -> Iterator[ImageStore]:
    with private_store() as s:
        yield s


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    directory.mkdir()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return directory


def test_pull_with_docker_config_credentials(auth_registry: Registry, store: ImageStore,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    built = imagebuild.busybox_base(tmp_path / "layout")
    ref = imagebuild.push(built, auth_registry.host, "private", "1",
                          creds=f"{USER}:{PASSWORD}")
    monkeypatch.setenv("HOME", str(tmp_path))  # no other credentials than the ones we give
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nobody"))
    with pytest.raises(ImageError) as info:
        store.pull(ref)
    assert ref in str(info.value) and "log in" in str(info.value)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "wrong", auth_registry.host,
                                                          USER, "wrong")))
    with pytest.raises(ImageError):
        store.pull(ref)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "right",
                                                          auth_registry.host, USER, PASSWORD)))
    image = store.pull(ref)
    assert image.digest == built.manifest_digest
    assert auth_registry.blob_gets("private")[built.config_digest] == 1
    # the credentials never stay on disk in the cache
    assert not [p for p in store.cache.root.rglob("*") if p.name == "auth.json"]


def task_creds(host: str, user: str, password: str) -> object:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return parse_docker_config(json.dumps({"auths": {host: {"auth": token}}}).encode(), "cfg")


def test_cached_private_image_is_authorized_per_tenant(auth_registry: Registry,
                                                       store: ImageStore, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    built = imagebuild.busybox_base(tmp_path / "layout")
    ref = imagebuild.push(built, auth_registry.host, "tenant-a-app", "1",
                          creds=f"{USER}:{PASSWORD}")
    # the host's Docker config could read it: a tenant still never gets those credentials
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "host", auth_registry.host,
                                                          USER, PASSWORD)))
    alice = task_creds(auth_registry.host, USER, PASSWORD)
    image = store.resolve(ref, "missing", PullAuth("tenant-a", alice))  # pulled
    assert image.digest == built.manifest_digest
    pinned = f"{ref.rsplit(':', 1)[0]}@{image.digest}"
    for name in (ref, pinned):  # by tag or by digest: cached, but tenant B may not read it
        with pytest.raises(ImageError) as info:
            store.resolve(name, "missing", PullAuth("tenant-b"))
        assert "tenant-b" in str(info.value) and "docker.config" in str(info.value)
    with pytest.raises(ImageError):
        store.resolve(ref, "always", PullAuth("tenant-b"))
    with pytest.raises(ImageError):
        store.resolve(pinned, "always", PullAuth("tenant-b"))
    with pytest.raises(ImageError):  # wrong credentials
        store.resolve(ref, "missing", PullAuth("tenant-b", task_creds(auth_registry.host,
                                                                      OTHER_USER, "guess")))
    # valid credentials of its own: served from the cache, nothing transferred again
    bob = task_creds(auth_registry.host, OTHER_USER, OTHER_PASSWORD)
    assert store.resolve(ref, "missing", PullAuth("tenant-b", bob)).digest == image.digest
    assert auth_registry.blob_gets("tenant-a-app")[built.config_digest] == 1
    # the operator (no PullAuth) uses the host's credentials and the cache as before
    assert store.resolve(ref).digest == image.digest


def test_host_credentials_serve_tenants_only_when_allowed(auth_registry: Registry,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    built = imagebuild.busybox_base(tmp_path / "layout")
    ref = imagebuild.push(built, auth_registry.host, "shared", "1", creds=f"{USER}:{PASSWORD}")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "host", auth_registry.host,
                                                          USER, PASSWORD)))
    with private_store() as store:
        with pytest.raises(ImageError):  # not cached: a tenant's pull has no credentials
            store.pull(ref, PullAuth("tenant-b"))
        store.task_host_credentials = True  # HYPERVM_TASK_HOST_CREDENTIALS=on
        assert store.pull(ref, PullAuth("tenant-b")).digest == built.manifest_digest


def test_public_images_serve_every_tenant(tmp_path: Path) -> None:
    built = imagebuild.busybox_base(tmp_path / "layout")
    with running_registry(tmp_path / "public") as registry, private_store() as store:
        ref = imagebuild.push(built, registry.host, "public", "1")
        store.pull(ref)
        for tenant in ("tenant-a", "tenant-b"):
            assert store.resolve(ref, "missing", PullAuth(tenant)).digest == built.manifest_digest
