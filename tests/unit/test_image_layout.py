"""An OCI layout made from a rootfs directory (umoci) pulls like any image."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.errors import ImageError
from tests.integration.imagebuild import private_store
from vmimage.images.layout import layout_from_rootfs


def test_layout_from_rootfs_pulls_with_its_config(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "greeting").write_text("hi\n")
    ref = layout_from_rootfs(rootfs, tmp_path / "layout", "t1", entrypoint=("/bin/sh", "-c"),
                             cmd=("echo x",), env=("A=1",), working_dir="/etc")
    assert ref == f"oci:{tmp_path / 'layout'}:t1"
    with private_store() as store:
        image = store.pull(ref)
    assert image.config.entrypoint == ("/bin/sh", "-c")
    assert image.config.cmd == ("echo x",)
    assert "A=1" in image.config.env and image.config.working_dir == "/etc"
    assert len(image.layers) == 1


def test_missing_rootfs_names_the_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a directory"):
        layout_from_rootfs(tmp_path / "missing", tmp_path / "layout", "t1")
    assert not (tmp_path / "layout").exists()
