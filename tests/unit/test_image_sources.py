"""Source selection: TLS policy per registry and credentials from the Docker config."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from hypervm.imageref import parse_reference
from vmimage.images.sources import open_source


@pytest.fixture(autouse=True)
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "docker"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


@pytest.mark.parametrize("text, insecure_list, insecure", [
    ("127.0.0.1:5000/app:1", (), True),
    ("reg.example:5000/app:1", (), False),
    ("reg.example:5000/app:1", ("reg.example:5000",), True),
])
def test_registry_source(tmp_path: Path, text: str, insecure_list: tuple[str, ...],
                         insecure: bool) -> None:
    with open_source(parse_reference(text), tmp_path, insecure_list) as source:
        assert source.insecure is insecure
        assert source.transport == f"docker://{text}"
        assert source.authfile is None
        digest = "sha256:" + "e" * 64
        assert source.pinned(digest) == f"docker://{text.rsplit(':', 1)[0]}@{digest}"


def test_docker_config_credentials_become_a_private_authfile(tmp_path: Path,
                                                             no_credentials: Path) -> None:
    token = base64.b64encode(b"alice:pw").decode()
    (no_credentials / "config.json").write_text(json.dumps(
        {"auths": {"reg.example:5000": {"auth": token}}}))
    staging = tmp_path / "staging"
    staging.mkdir()
    with open_source(parse_reference("reg.example:5000/app:1"), staging) as source:
        assert source.authfile is not None
        assert stat.S_IMODE(source.authfile.stat().st_mode) == 0o600
        doc = json.loads(source.authfile.read_text())
        assert doc == {"auths": {"reg.example:5000": {"auth": token}}}
    with open_source(parse_reference("other.example/app:1"), tmp_path) as source:
        assert source.authfile is None


def test_local_sources(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    with open_source(parse_reference(f"docker-archive:{archive}"), tmp_path) as source:
        assert source.transport == f"docker-archive:{archive}" and not source.insecure
        assert source.pinned("sha256:" + "0" * 64) == source.transport


def test_store_from_env_merges_insecure_hosts(tmp_path: Path) -> None:
    from hypervm.config import HostConfig
    from vmimage.images import ImageStore

    cfg = HostConfig(tmp_path, tmp_path / "run", "test:///default", "tcg")
    store = ImageStore.from_env(cfg, {"HYPERVM_INSECURE_REGISTRIES": "a:1,b"},
                                insecure_registries=["c"])
    assert store.insecure_registries == ("a:1", "b", "c")
    assert ImageStore.from_env(cfg, {}).insecure_registries == ()
