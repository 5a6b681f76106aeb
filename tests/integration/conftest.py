"""Fixtures for the integration tests (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.snapshot import store
from tests.conftest import run_hypervm
from tests.integration import imagebuild
from tests.integration.registry import Registry, running_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real registry (Debian's docker-registry) on a free loopback port, one per module."""
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def image_ref(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A static busybox image, pushed to the module's registry; its reference."""
    image = imagebuild.busybox_base(tmp_path_factory.mktemp("layout"))
    return imagebuild.push(image, registry.host, "busybox", "1")


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Container names the test made; every one is removed (and its VM killed) at the end."""
    made: list[str] = []
    yield made
    for name in made:
        run_hypervm("rm", "-f", name)


@pytest.fixture
def fresh_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A store of this test's own: its templates are made by the test."""
    root = tmp_path / "snapshots"
    monkeypatch.setattr(store, "snapshots_dir", lambda cfg: root)
    return root
