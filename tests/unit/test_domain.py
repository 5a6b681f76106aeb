"""DomainSpec validation: every limit of libvirt, QEMU and Linux names the field and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from executor.libvirt.domain import (
    MIN_MEMORY_MIB,
    CpuTune,
    DiskSpec,
    DomainSpec,
    MemTune,
    ShareSpec,
)
from hypervm.errors import InvalidSpec


def make_spec(**overrides: object) -> DomainSpec:
    values: dict[str, object] = dict(
        name="hypervm-pod-1234abcd",
        accel="tcg",
        vcpus=1,
        memory_mib=256,
        kernel=Path("/var/lib/hypervm/kernel/k/vmlinux"),
        initrd=Path("/var/lib/hypervm/initrd/i/initrd.img"),
        cmdline="console=ttyS0 quiet",
        channel_socket=Path("/run/hypervm/vms/hypervm-pod-1234abcd/channel.sock"),
        console_log=Path("/run/hypervm/vms/hypervm-pod-1234abcd/console.log"),
        disks=(DiskSpec(Path("/var/lib/hypervm/images/l0.erofs"), "l0"),),
        shares=(ShareSpec(Path("/srv/sandbox"), "s0"),),
        metadata={"owner-pid": "1", "pod": "pod"},
    )
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_valid_spec_returns_itself() -> None:
    spec = make_spec()
    assert spec.validate() is spec


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_spec().name = "hypervm-other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "pod-1"}, "name"),
        ({"name": "hypervm-"}, "name"),
        ({"name": "hypervm-a/b"}, "name"),
        ({"name": "hypervm-" + "a" * 81}, "name"),
        ({"accel": "hvf"}, "accel"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 65}, "vcpus"),
        ({"memory_mib": 16}, "memory_mib"),
        ({"kernel": Path("vmlinux")}, "kernel"),
        ({"initrd": Path("initrd.img")}, "initrd"),
        ({"console_log": Path("console.log")}, "console_log"),
        ({"bios": Path("qboot.rom")}, "bios"),
        ({"channel_socket": Path("/run/" + "x" * 100 + "/channel.sock")}, "channel_socket"),
        ({"cmdline": "a\nb"}, "cmdline"),
        ({"cmdline": "x" * 2048}, "cmdline"),
        ({"cmdline": "bad\x01"}, "cmdline"),
        ({"disks": (DiskSpec(Path("/l0"), "x" * 21),)}, "disks[0].serial"),
        ({"disks": (DiskSpec(Path("/l0"), "a b"),)}, "disks[0].serial"),
        ({"disks": (DiskSpec(Path("/l0"), "l0", format="vmdk"),)}, "disks[0].format"),
        ({"disks": (DiskSpec(Path("l0"), "l0"),)}, "disks[0].path"),
        ({"disks": (DiskSpec(Path("/a"), "l0"), DiskSpec(Path("/b"), "l0"))}, "disks"),
        ({"disks": tuple(DiskSpec(Path(f"/l{i}"), f"l{i}") for i in range(25))}, "disks"),
        ({"shares": (ShareSpec(Path("/s"), "t" * 32),)}, "shares[0].tag"),
        ({"shares": (ShareSpec(Path("s"), "s0"),)}, "shares[0].source"),
        ({"shares": (ShareSpec(Path("/a"), "s"), ShareSpec(Path("/b"), "s"))}, "shares"),
        ({"metadata": {"": "x"}}, "metadata['']"),
        ({"metadata": {"pod": "a\x00b"}}, "metadata['pod']"),
        ({"metadata": {"pod": 3}}, "metadata['pod']"),
        ({"cputune": CpuTune(shares=1)}, "cputune.shares"),
        ({"cputune": CpuTune(period_us=10)}, "cputune.period_us"),
        ({"cputune": CpuTune(quota_us=5)}, "cputune.quota_us"),
        ({"memtune": MemTune(hard_limit_mib=128)}, "memtune.hard_limit_mib"),
        ({"qemu_args": ("-device", "x\x07")}, "qemu_args[1]"),
        ({"qemu_env": {"1X": "y"}}, "qemu_env['1X']"),
        ({"qemu_env": {"A B": "y"}}, "qemu_env['A B']"),
        ({"qemu_env": {"G_SLICE": "x\x07"}}, "qemu_env['G_SLICE']"),
    ],
)
def test_invalid_spec_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        make_spec(**overrides).validate()
    assert info.value.field == field


#: what XML 1.0 cannot carry (and \r, which parsers turn into \n): every one is refused
XML_BAD = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0xFFFE, 0xFFFF)]


@pytest.mark.parametrize("char", XML_BAD)
def test_every_character_xml_cannot_carry_is_refused_by_name(char: str) -> None:
    with pytest.raises(InvalidSpec, match="control character") as info:
        make_spec(metadata={"pod": f"a{char}b"}).validate()
    assert info.value.field == "metadata['pod']"
    assert repr(char) in str(info.value)


def test_characters_xml_carries_pass() -> None:
    text = "".join(chr(c) for c in range(0x20, 0x3000)) + "\t\n\ufffd\U0001f600"
    make_spec(metadata={"pod": text}, qemu_env={"A": text}).validate()


def test_limits_are_inclusive() -> None:
    make_spec(
        name="hypervm-" + "a" * 80,
        vcpus=64,
        memory_mib=MIN_MEMORY_MIB,  # one minimum for pods and domains (was 32 here, 64 there)
        cmdline="x" * 2047,
        disks=(DiskSpec(Path("/l0"), "x" * 20),),
        shares=(ShareSpec(Path("/s"), "t" * 31),),
        channel_socket=Path("/" + "x" * 106),
        memtune=MemTune(hard_limit_mib=MIN_MEMORY_MIB),
        cputune=CpuTune(shares=2, period_us=1000, quota_us=1000),
    ).validate()


def test_errors_carry_a_hint() -> None:
    with pytest.raises(InvalidSpec) as info:
        make_spec(disks=(DiskSpec(Path("/l0"), "x" * 21),)).validate()
    assert "20" in str(info.value)


def test_one_minimum_memory_for_pods_and_domains() -> None:
    """A domain no pod could ask for is refused: 48 MiB booted pool VMs no pod could claim."""
    from hypervm.podspec import MIN_MEMORY_MIB as POD_MIN

    assert MIN_MEMORY_MIB == POD_MIN == 64
    with pytest.raises(InvalidSpec, match="memory_mib"):
        make_spec(memory_mib=48).validate()
