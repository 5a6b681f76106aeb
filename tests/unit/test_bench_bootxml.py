"""bench.bootxml's domains: ``run`` is the cold run's domain, and each variant takes away
exactly the one difference it is named after (else a variant's cost would be another's)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.bootxml import DISK_ALIAS, VARIANTS, run_spec, variant_list, variant_xml
from bench.devicecode import device_args
from bench.vmenv import VMEnv
from executor.libvirt.domain_xml import QEMU_NS, domain_xml
from hypervm.config import config_from_env
from vmimage.boot import BootFiles
from vmimage.kernel import Kernel
from vmimage.qemu import DISTRO

LAYER = Path("/var/lib/hypervm/images/layers/sha256/00.erofs")
NAME = "hypervm-bench-xml-0badcafe"


def _env() -> VMEnv:
    boot = BootFiles(kernel=Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel"),
                     initrd=Path("/k/initrd.img"), qemu=DISTRO, accel="tcg", cmdline="quiet")
    return VMEnv(cfg=config_from_env({}), boot=boot)


def _parts(xml: str) -> dict[str, object]:
    """What the variants change, read from the XML libvirt gets."""
    root = ET.fromstring(xml)
    args = [a.get("value", "") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    return {
        "disks": [s.get("file") for s in root.iterfind("devices/disk/source")],
        "nic": [a for a in args if a.startswith(("virtio-net-pci", "user,"))],
        "identity": root.findtext("seclabel/label"),
        "memtune": root.find("memtune") is not None,
        "env": [e.get("name") for e in root.iter(f"{{{QEMU_NS}}}env")],
    }


def test_the_run_domain_has_the_cold_runs_layer_disk_nic_uid_soft_limit_and_env() -> None:
    parts = _parts(domain_xml(run_spec(_env(), NAME, LAYER, (200001, 200001))))
    assert parts["disks"] == [str(LAYER)]
    assert len(parts["nic"]) == 2  # -netdev user,… and -device virtio-net-pci,…
    assert parts["identity"] == "+200001:+200001"
    assert parts["memtune"] is True
    assert parts["env"] == ["G_SLICE"]


@pytest.mark.parametrize(("variant", "changed"), [
    ("run -disk", {"disks": []}),
    ("run -nic", {"nic": []}),
    ("run -disk -nic", {"disks": [], "nic": []}),
    ("run -identity", {"identity": None}),
    ("run -memtune", {"memtune": False}),
    ("run -env", {"env": []}),
    ("run -host", {"identity": None, "memtune": False, "env": []}),
])
def test_each_variant_takes_away_only_its_difference(variant: str,
                                                     changed: dict[str, object]) -> None:
    run = run_spec(_env(), NAME, LAYER, (200001, 200001))
    assert _parts(domain_xml(VARIANTS[variant](run).validate())) == {
        **_parts(domain_xml(run)), **changed}


def test_devicecode_adds_the_runs_disk_and_nic_with_the_properties_asked() -> None:
    assert device_args("base", LAYER) == []
    blk, net = device_args("blk:queue-size=64+net", LAYER)[1::2][:2], \
        device_args("net:status=off", LAYER)
    assert blk == [f"file={LAYER},if=none,id=d0,format=raw,readonly=on",
                   "virtio-blk-pci,drive=d0,serial=l0,queue-size=64"]
    assert net[0] == "-netdev" and net[2] == "-device"
    assert net[3].startswith("virtio-net-pci,") and net[3].endswith(",romfile=,status=off")
    assert len(device_args("blk+net", LAYER)) == 8
    with pytest.raises(ValueError, match="unknown device"):
        device_args("scsi", LAYER)


def test_a_nic_variant_gives_its_properties_to_the_nic_alone() -> None:
    run = run_spec(_env(), NAME, LAYER, (200001, 200001))
    parts, base = _parts(variant_xml("run nic:status=off,mrg_rxbuf=on", run)), \
        _parts(domain_xml(run))
    nic = parts["nic"]
    assert isinstance(nic, list) and isinstance(base["nic"], list)
    assert nic[1] == base["nic"][1] + ",status=off,mrg_rxbuf=on"
    assert {**parts, "nic": base["nic"]} == base


def test_a_disk_variant_overrides_the_layer_disks_device_only() -> None:
    run = run_spec(_env(), NAME, LAYER, (200001, 200001))
    xml = variant_xml("run blk:queue-size=64,disable-legacy=on,config-wce=false", run)
    assert _parts(xml) == _parts(domain_xml(run))
    root = ET.fromstring(xml)
    (device,) = root.iterfind(f"{{{QEMU_NS}}}override/{{{QEMU_NS}}}device")
    assert device.get("alias") == DISK_ALIAS == "virtio-disk0"  # libvirt's for the first vdX
    assert [(p.get("name"), p.get("type"), p.get("value"))
            for p in device.iterfind(f"{{{QEMU_NS}}}frontend/{{{QEMU_NS}}}property")] == [
        ("queue-size", "unsigned", "64"), ("disable-legacy", "string", "on"),
        ("config-wce", "bool", "false")]


def test_variants_with_properties_are_separated_by_semicolons() -> None:
    assert variant_list("raw,run,run -disk") == ["raw", "run", "run -disk"]
    assert variant_list("run; run nic:a=1,b=2 ;run blk:c=3") == [
        "run", "run nic:a=1,b=2", "run blk:c=3"]
    run = run_spec(_env(), NAME, LAYER, (200001, 200001))
    assert variant_xml("run", run) == domain_xml(run)
    with pytest.raises(KeyError):
        variant_xml("run -gpu", run)
