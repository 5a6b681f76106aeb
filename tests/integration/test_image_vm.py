"""Pulled images run in a real HyperVM: the guest's overlay of our erofs layers is the merged
tree the OCI spec defines, and the image's user is resolved to ids the guest applies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervm.podspec import Container, PodSpec, Process, Rootfs
from tests.conftest import run_to_exit
from tests.integration import imagebuild
from tests.integration.imagebuild import private_store
from tests.integration.registry import Registry
from vmimage.images import Image, ImageStore

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]

INSPECT = """
cd /
for p in data/keep.txt data/gone.txt data/gonedir data/new.txt data/same.txt opq/old.txt \
         opq/sub opq/fresh.txt bin/stat null-dev; do
  if [ -e "$p" ]; then echo "present $p"; else echo "absent $p"; fi
done
echo "opq: $(ls /opq | tr '\\n' ' ')"
echo "data: $(ls /data | tr '\\n' ' ')"
ls -ln /suid /owned.txt | while read mode links uid gid rest; do echo "$mode $uid $gid"; done
echo "cwd $(pwd)"
"""


@pytest.fixture
def store() -> Iterator[ImageStore]:
    with private_store() as s:
        yield s


def run_in_vm(vm_factory, image: Image, process: Process) -> tuple[int, str]:  # noqa: ANN001
    container = Container("main", Rootfs(layers=image.layers), process)
    vm = vm_factory(PodSpec(name="image", containers=(container,)))
    return run_to_exit(vm, container)


def test_guest_sees_the_merged_tree(vm_factory, registry: Registry, store: ImageStore,  # noqa: ANN001
                                    tmp_path: Path) -> None:
    image = store.pull(imagebuild.push(imagebuild.multilayer(tmp_path / "l"), registry.host,
                                       "vm-multi", "1"))
    code, out = run_in_vm(vm_factory, image, Process(
        args=("/bin/sh", "-c", INSPECT), env=image.config.env, cwd=image.config.working_dir))
    assert code == 0, out
    lines = out.splitlines()
    checked = [line.split(" ", 1)[1] for line in lines if line.startswith(("present ", "absent "))]
    assert len(checked) == 10, out
    for name in checked:
        hidden = imagebuild.MULTILAYER_EXPECTED[name] is None
        assert f"{'absent' if hidden else 'present'} {name}" in lines, out
    assert "opq: fresh.txt " in lines, out
    assert "data: keep.txt new.txt same.txt " in lines, out
    assert "-rwsr-xr-x 0 0" in lines and "-rw-r----- 1234 5678" in lines, out


def test_guest_runs_as_the_image_user(vm_factory, registry: Registry, store: ImageStore,  # noqa: ANN001
                                      tmp_path: Path) -> None:
    image = store.pull(imagebuild.push(imagebuild.user_image(tmp_path / "l"), registry.host,
                                       "vm-user", "1"))
    uid, gid, groups = store.resolve_user(image, image.config.user)
    args = (*image.config.entrypoint, "id -u; id -g; id -G; pwd; echo $A")
    code, out = run_in_vm(vm_factory, image, Process(
        args=args, env=image.config.env, cwd=image.config.working_dir, uid=uid, gid=gid,
        additional_gids=groups))
    assert code == 0, out
    words = out.split()
    assert words[:2] == ["1000", "1000"] and sorted(words[2:5]) == ["1000", "2000", "29"], out
    assert words[5:] == ["/home/app", "1"], out
