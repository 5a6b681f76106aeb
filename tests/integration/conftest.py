"""Fixtures for the integration tests (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.registry import Registry, running_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real registry (Debian's docker-registry) on a free loopback port, one per module."""
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
