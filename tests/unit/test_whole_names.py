"""Every name validator matches the whole value (DEVELOPERS.md, threat model: "Names are matched
whole"). ``re.match`` with a pattern ending in ``$`` (and jsonschema's ``pattern``, a
``re.search``) accepts ONE trailing newline, which could become a second line of a file the
guest or the host reads (/etc/hosts, env files, libvirt XML, paths, log lines, Mesos fields).
Each group: the plain value passes, the same value with a trailing "\\n" is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.errors import ImageError, InvalidSpec
from hypervm.imageref import parse_registry_ref
from hypervm.podspec import Container, PodSpec, Process, Rootfs

# --- hypervm.podspec: pod and container names ---------------------------------------------

def _pod(name: str = "p", container: str = "c1") -> PodSpec:
    return PodSpec(name=name, containers=(Container(
        name=container, rootfs=Rootfs(layers=(Path("/l.erofs"),)), process=Process(args=("sh",))),))


@pytest.mark.parametrize(("field", "names"), [("name", {"name": "web"}),
                                               ("containers[c1\n].name", {"container": "c1"})])
def test_pod_and_container_names_are_matched_whole(field: str, names: dict[str, str]) -> None:
    _pod(**names).validate()
    with pytest.raises(InvalidSpec) as err:
        _pod(**{k: v + "\n" for k, v in names.items()}).validate()
    assert err.value.field == field


# --- hypervm.imageref: repository components, tags, digests, registry hosts ----------------

@pytest.mark.parametrize("ref", [
    "busybox",                                     # a repository component
    "busybox:1.36",                                # a tag
    "busybox@sha256:" + "a" * 64,                  # a digest
    "registry.local:5000/team/app",                # a component after a registry host
])
def test_image_reference_parts_are_matched_whole(ref: str) -> None:
    parse_registry_ref(ref)
    with pytest.raises(ImageError):
        parse_registry_ref(ref + "\n")


def test_a_registry_host_is_matched_whole() -> None:
    assert parse_registry_ref("registry.local:5000/app").domain == "registry.local:5000"
    with pytest.raises(ImageError, match="not a valid registry host"):
        parse_registry_ref("registry.local\n/app")
