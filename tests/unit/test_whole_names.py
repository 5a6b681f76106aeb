"""Every name validator matches the whole value (DEVELOPERS.md, threat model: "Names are matched
whole"). ``re.match`` with a pattern ending in ``$`` (and jsonschema's ``pattern``, a
``re.search``) accepts ONE trailing newline, which could become a second line of a file the
guest or the host reads (/etc/hosts, env files, libvirt XML, paths, log lines, Mesos fields).
Each group: the plain value passes, the same value with a trailing "\\n" is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.libvirt.domain import DiskSpec, DomainSpec, ShareSpec
from executor.libvirt.domain_xml import domain_xml
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


# --- executor.libvirt.domain: the domain's name, disk serials, 9p tags, QEMU env names -------

def _domain(**overrides: object) -> DomainSpec:
    values: dict[str, object] = dict(
        name="hypervm-pod-1", accel="tcg", vcpus=1, memory_mib=256,
        kernel=Path("/k/vmlinux"), initrd=Path("/i/initrd.img"), cmdline="console=ttyS0",
        channel_socket=Path("/run/hypervm/vms/v/channel.sock"),
        console_log=Path("/run/hypervm/vms/v/console.log"),
        disks=(DiskSpec(Path("/l0.erofs"), "l0"),), shares=(ShareSpec(Path("/srv/s"), "s0"),),
        qemu_env={"G_SLICE": "always-malloc"})
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "bad"), [
    ("name", {"name": "hypervm-pod-1\n"}),                                  # <name>
    ("disks[0].serial", {"disks": (DiskSpec(Path("/l0.erofs"), "l0\n"),)}),  # <serial>
    ("shares[0].tag", {"shares": (ShareSpec(Path("/srv/s"), "s0\n"),)}),    # <target dir=…>
    ("qemu_env['G_SLICE\\n']", {"qemu_env": {"G_SLICE\n": "always-malloc"}}),  # <qemu:env>
])
def test_no_trailing_newline_reaches_the_domain_xml(field: str, bad: dict[str, object]) -> None:
    """On the old code each of these went into the XML libvirt defines the domain from
    (``<name>hypervm-pod-1\\n</name>`` …); now the spec is refused, naming the field."""
    assert "<name>hypervm-pod-1</name>" in domain_xml(_domain())
    with pytest.raises(InvalidSpec) as err:
        domain_xml(_domain(**bad))
    assert err.value.field == field
