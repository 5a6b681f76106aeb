"""PodSpec validation names the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypervm.errors import InvalidSpec
from hypervm.podspec import (
    MIN_MEMORY_MIB,
    Container,
    Mount,
    PodSpec,
    Process,
    Resources,
    Rootfs,
)


def pod(**overrides: object) -> PodSpec:
    container = Container(name="c1", rootfs=Rootfs(layers=(Path("/l.erofs"),)),
                          process=Process(args=("sh",)))
    values: dict = {"name": "p", "containers": (container,), "resources": Resources()}
    values.update(overrides)
    return PodSpec(**values)


def test_valid_pod_passes() -> None:
    pod().validate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"resources": Resources(memory_mib=MIN_MEMORY_MIB - 1)}, "memory"),
        ({"resources": Resources(cpus=0)}, "cpus"),
        ({"name": "bad name"}, "name"),
        ({"containers": ()}, "containers"),
    ],
)
def test_invalid_pod_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        pod(**overrides).validate()
    assert info.value.field == field


def test_memory_error_says_the_minimum() -> None:
    with pytest.raises(InvalidSpec, match=f"at least {MIN_MEMORY_MIB} MiB"):
        Resources(memory_mib=16).validate()


@pytest.mark.parametrize(
    ("process", "suffix"),
    [
        (Process(args=()), "args"),
        (Process(args=("sh",), env=("NOEQUALS",)), "env"),
        (Process(args=("sh",), cwd="relative"), "cwd"),
        (Process(args=("sh",), uid=-1), "uid"),
    ],
)
def test_invalid_process(process: Process, suffix: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        process.validate("p")
    assert info.value.field == f"p.{suffix}"


def test_duplicate_container_names() -> None:
    c = pod().containers[0]
    with pytest.raises(InvalidSpec, match="unique"):
        pod(containers=(c, c)).validate()


def test_mount_validation(tmp_path: Path) -> None:
    Mount(type="9p", destination="/data", source=tmp_path).validate("m")
    with pytest.raises(InvalidSpec, match="not a directory"):
        Mount(type="9p", destination="/data", source=tmp_path / "missing").validate("m")
    with pytest.raises(InvalidSpec, match="unknown mount type"):
        Mount(type="nfs", destination="/data").validate("m")
