"""Credentials for a registry (basic or token auth) come from the Docker config via docker-py."""

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

pytestmark = pytest.mark.slow
USER, PASSWORD = "alice", "s3cret-pw"


@pytest.fixture(scope="module", params=["basic", "token"])
def auth_registry(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("auth-registry"), {USER: PASSWORD},
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
