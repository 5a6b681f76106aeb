"""Images of many layers (task manylayers): a cold VM whose layer disks do not all fit its PCI
budget gets them as LUNs of one virtio-scsi controller, which init finds by serial; an image
of more layers than init takes per root filesystem fails before anything boots."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import imagebuild
from tests.integration.imagebuild import Entry, make_state_dir
from tests.integration.registry import Registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

#: more layers than a cold VM's PCI budget (24 devices) takes as virtio-blk disks
MANY = 30
#: the middle layer whose file a later layer's whiteout hides
HIDDEN_IN, HIDDEN_BY = 10, 20


def many_layers(layout: Path, n: int, tag: str = "many") -> imagebuild.BuiltImage:
    """busybox, then ``n - 1`` layers of one file each (``/layers/<i>.txt``); layer
    HIDDEN_IN adds ``/mid/hidden.txt``, layer HIDDEN_BY whites it out; the topmost adds
    ``/top.txt``."""
    base = imagebuild.busybox_entries() + [Entry("low.txt", data=b"lowest\n")]
    layers = [imagebuild.layer_tar(base)]
    for i in range(1, n):
        entries = [Entry("layers", "dir", mode=0o755), Entry(f"layers/{i}.txt", data=b"%d\n" % i)]
        if i == HIDDEN_IN:
            entries += [Entry("mid", "dir", mode=0o755), Entry("mid/hidden.txt", data=b"hid\n")]
        if i == HIDDEN_BY:
            entries += [Entry("mid", "dir", mode=0o755), Entry("mid/.wh.hidden.txt")]
        if i == n - 1:
            entries.append(Entry("top.txt", data=b"topmost\n"))
        layers.append(imagebuild.layer_tar(entries))
    return imagebuild.write_layout(layout, tag, layers, imagebuild.BASE_CONFIG)


@pytest.fixture
def image_env() -> Iterator[dict[str, str]]:
    """A private image cache for the CLI (kernel and initrd stay the host's), no pool."""
    cache = make_state_dir()
    yield {"HYPERVM_IMAGE_DIR": str(cache), "HYPERVM_POOL": "off", "HYPERVM_SNAPSHOT": "off"}
    shutil.rmtree(cache, ignore_errors=True)


def test_an_image_of_more_layers_than_pci_slots_runs(hypervm, registry: Registry,  # noqa: ANN001
                                                     tmp_path: Path,
                                                     image_env: dict[str, str]) -> None:
    """30 layers: more than a cold VM's PCI budget; before task manylayers the run failed
    with "30 disks and 0 shares exceed 24 PCI devices" (exit 125)."""
    ref = imagebuild.push(many_layers(tmp_path / "many", MANY), registry.host, "many", "v1")
    result = hypervm("run", "-q", ref, "--", "sh", "-c",
                     "cat /low.txt /layers/15.txt /top.txt;"
                     " test -e /mid/hidden.txt || echo hidden-gone; ls /layers | wc -l",
                     env=image_env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["lowest", "15", "topmost", "hidden-gone",
                                              str(MANY - 1)]


def test_an_image_of_more_layers_than_init_takes_fails_before_booting(
        hypervm, registry: Registry, tmp_path: Path,  # noqa: ANN001
        image_env: dict[str, str]) -> None:
    """65 layers: one more than init takes for a root filesystem (init/src/parse.h
    MAX_LAYERS): hypervm's own failure (125), one line naming the field and the fix."""
    ref = imagebuild.push(many_layers(tmp_path / "toomany", 65), registry.host, "toomany", "v1")
    result = hypervm("run", "-q", ref, "--", "true", env=image_env)
    assert result.returncode == 125, result.stderr.decode()
    err = result.stderr.decode()
    assert "rootfs.layers" in err and "65 layers" in err and "64" in err, err
    assert "flatten the image" in err
    assert "Traceback" not in err
