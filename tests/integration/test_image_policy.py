"""Pull policy: a registry image already in the cache runs with no registry request at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.errors import ImageError
from tests.integration import imagebuild
from tests.integration.imagebuild import private_store
from tests.integration.registry import Registry

pytestmark = [pytest.mark.slow]


def requests_for(registry: Registry, name: str) -> int:
    return registry.log_path.read_text(errors="replace").count(f"/v2/{name}/")


def test_missing_policy_uses_the_cache_and_always_asks(registry: Registry,
                                                       tmp_path: Path) -> None:
    ref = imagebuild.push(imagebuild.busybox_base(tmp_path / "layout"), registry.host, "pol")
    with private_store() as store:
        first = store.resolve(ref)
        asked = requests_for(registry, "pol")
        assert asked > 0
        again = store.resolve(ref)
        assert again == first
        assert requests_for(registry, "pol") == asked, "a cached image must not touch the registry"
        blobs = registry.blob_gets("pol")
        assert store.resolve(ref, "always").digest == first.digest
        assert requests_for(registry, "pol") > asked  # the tag was looked up again
        assert registry.blob_gets("pol") == blobs  # but no blob fetched
        with pytest.raises(ImageError, match="pull policy"):
            store.resolve(ref, "sometimes")
