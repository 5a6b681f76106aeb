"""Images (and pods) of many layers (task manylayers): a cold VM's layers are pinned virtio-blk
disks while they and its shares fit its PCI budget, else LUNs of one virtio-scsi controller
(found by serial: no rootfs.pci, a bounded wait_ms); what init cannot take at all (64 layers
a root filesystem, 256 a VM) fails on the host, naming the field and the fix."""

from __future__ import annotations

import contextlib
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import LAYER_WAIT_MS
from executor.libvirt.designer import RunFiles, cold_domain, layers_fit_pci
from executor.libvirt.domain import MAX_PCI_DEVICES, MAX_SCSI_UNIT, DiskSpec, ShareSpec
from executor.libvirt.domain_xml import domain_xml, parse_domain_facts
from executor.mesos import runtime
from executor.mesos.runtime import PodPlan, VMPod
from executor.mesos.taskinfo import parse_task
from executor.vm import HyperVM
from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec
from hypervm.netspec import NetworkSpec
from hypervm.podspec import (
    MAX_POD_LAYERS,
    MAX_ROOTFS_LAYERS,
    Container,
    PodSpec,
    Process,
    Resources,
    Rootfs,
)
from tests.unit.test_layer_slots import BOOT, RUN, _Channel


def _disks(n: int) -> tuple[DiskSpec, ...]:
    return tuple(DiskSpec(Path(f"/layers/{i}.erofs"), f"l{i}") for i in range(n))


def _shares(n: int) -> tuple[ShareSpec, ...]:
    return tuple(ShareSpec(Path(f"/srv/{i}"), f"s{i}") for i in range(n))


def _cold(disks: int, shares: int = 0) -> Any:
    return cold_domain("hypervm-web-0badcafe", BOOT, config_from_env({}), RunFiles.under(RUN),
                       Resources(cpus=1, memory_mib=128), NetworkSpec(), {},
                       disks=_disks(disks), shares=_shares(shares))


@pytest.mark.parametrize(("disks", "shares", "fits"), [
    (1, 0, True), (MAX_PCI_DEVICES, 0, True), (MAX_PCI_DEVICES + 1, 0, False),
    (MAX_PCI_DEVICES - 4, 4, True), (MAX_PCI_DEVICES - 4, 5, False), (0, MAX_PCI_DEVICES, True)])
def test_layers_fit_the_pci_budget_up_to_its_last_device(disks: int, shares: int,
                                                         fits: bool) -> None:
    assert layers_fit_pci(disks, shares) is fits


def test_a_one_layer_image_keeps_its_pinned_virtio_blk_disk() -> None:
    """The fast path of a normal image's cold run (DEVELOPERS.md, layerslot) is unchanged."""
    spec = _cold(1)
    assert [(d.pci_slot, d.scsi_unit) for d in spec.disks] == [(3, None)]
    assert not spec.scsi_controller
    xml = domain_xml(spec)
    assert 'model="virtio-scsi"' not in xml and 'bus="scsi"' not in xml


def test_as_many_layers_as_the_budget_are_all_pinned() -> None:
    spec = _cold(MAX_PCI_DEVICES)
    assert all(d.pci_slot is not None and d.scsi_unit is None for d in spec.disks)
    assert not spec.scsi_controller


@pytest.mark.parametrize("n", [MAX_PCI_DEVICES + 1, 30])
def test_one_layer_over_the_budget_puts_them_all_on_one_scsi_controller(n: int) -> None:
    spec = _cold(n)
    assert spec.scsi_controller
    assert [(d.serial, d.pci_slot, d.scsi_unit) for d in spec.disks] == [
        (f"l{i}", None, i) for i in range(n)]
    root = ET.fromstring(domain_xml(spec))
    assert len(root.findall("devices/controller[@type='scsi']")) == 1
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("bus"), d.find("address").get("type"),  # type: ignore[union-attr]
             d.find("address").get("unit"), d.findtext("serial"))  # type: ignore[union-attr]
            for d in disks] == [("scsi", "drive", str(i), f"l{i}") for i in range(n)]
    targets = [d.find("target").get("dev") for d in disks]  # type: ignore[union-attr]
    assert targets[0] == "sda" and targets[-1] == ("sdy" if n == 25 else "sdad")
    assert len(set(targets)) == n
    assert len(parse_domain_facts(domain_xml(spec)).disk_paths) == n


def test_shares_beside_scsi_layers_still_count_against_the_budget() -> None:
    """A LUN is no PCI device, the controller is one: 30 layers and 23 shares fit, 24 not."""
    assert len(_cold(30, MAX_PCI_DEVICES - 1).shares) == MAX_PCI_DEVICES - 1
    with pytest.raises(InvalidSpec, match="0 disks and 24 shares exceed 24 PCI devices"):
        _cold(30, MAX_PCI_DEVICES)


def test_a_domain_counts_luns_as_no_pci_device() -> None:
    spec = _cold(MAX_PCI_DEVICES + 1)
    many = tuple(DiskSpec(Path(f"/l/{i}"), f"l{i}", scsi_unit=i) for i in range(200))
    assert len(dataclasses.replace(spec, disks=many).validate().disks) == 200
    with pytest.raises(InvalidSpec, match="without a SCSI controller"):
        dataclasses.replace(spec, disks=many, scsi_controller=False).validate()
    twice = (many[0], DiskSpec(Path("/l/x"), "lx", scsi_unit=0))
    with pytest.raises(InvalidSpec, match="scsi_unit '0' is used twice"):
        dataclasses.replace(spec, disks=twice).validate()


@pytest.mark.parametrize(("unit", "slot"), [(-1, None), (MAX_SCSI_UNIT + 1, None), (0, 3)])
def test_a_lun_is_in_range_and_has_no_slot(unit: int, slot: int | None) -> None:
    with pytest.raises(InvalidSpec, match="scsi_unit"):
        DiskSpec(Path("/l/0"), "l0", pci_slot=slot, scsi_unit=unit).validate("disks[0]")


def _starts(pod: PodSpec) -> tuple[Any, list[dict[str, Any]]]:
    vm = HyperVM(config_from_env({}), pod)
    spec = vm.domain_spec(BOOT)
    channel = _Channel()
    vm._channel = channel  # type: ignore[assignment]
    for container in pod.containers:
        vm.send_start(container)
    return spec, [p["rootfs"] for p in channel.sent]


def _container(name: str, layers: range) -> Container:
    return Container(name, Rootfs(layers=tuple(Path(f"/layers/{i}.erofs") for i in layers)),
                     Process(args=("true",)))


def test_a_group_of_three_ten_layer_images_gets_scsi_layers_found_by_serial() -> None:
    """A Mesos task group's VM (its containers' distinct layers) takes the same path."""
    pod = PodSpec(name="g", containers=tuple(
        _container(f"c{j}", range(10 * j, 10 * j + 10)) for j in range(3)))
    spec, rootfs = _starts(pod)
    assert spec.scsi_controller and [d.scsi_unit for d in spec.disks] == list(range(30))
    assert [r["layers"] for r in rootfs] == [[f"l{i}" for i in range(10 * j, 10 * j + 10)]
                                             for j in range(3)]
    assert all("pci" not in r and r["wait_ms"] == LAYER_WAIT_MS for r in rootfs)


def test_a_one_layer_pods_start_names_its_address_and_waits_for_nothing() -> None:
    spec, rootfs = _starts(PodSpec(name="one", containers=(_container("c", range(1)),)))
    assert rootfs == [{"layers": ["l0"], "readonly": False, "pci": ["0000:00:03.0"]}]
    assert not spec.scsi_controller


def test_a_root_filesystem_takes_at_most_what_init_takes() -> None:
    PodSpec(name="p", containers=(_container("c", range(MAX_ROOTFS_LAYERS)),)).validate()
    with pytest.raises(InvalidSpec) as err:
        PodSpec(name="p", containers=(_container("c", range(MAX_ROOTFS_LAYERS + 1)),)).validate()
    assert err.value.field == "containers[c].rootfs.layers"
    assert "65 layers are more than the 64" in str(err.value) and "flatten" in str(err.value)


def test_a_pod_takes_at_most_the_distinct_layers_init_mounts() -> None:
    full = [_container(f"c{j}", range(64 * j, 64 * j + 64)) for j in range(4)]
    PodSpec(name="p", containers=(*full, _container("again", range(64)))).validate()
    with pytest.raises(InvalidSpec) as err:
        PodSpec(name="p", containers=(*full, _container("more", range(MAX_POD_LAYERS,
                                                                      MAX_POD_LAYERS + 1)))
                ).validate()
    assert err.value.field == "containers" and "257 distinct layers" in str(err.value)


def test_a_mesos_pod_of_too_many_layers_fails_before_its_vm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a pool claim or a boot (as a bad image: TASK_FAILED with the message)."""
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                           "HYPERVM_RUN_DIR": str(tmp_path / "run"), "HYPERVM_POOL": "off"})
    task = {"name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
            "command": {"value": "true"},
            "container": {"type": "MESOS", "mesos": {"image": {
                "type": "DOCKER", "docker": {"name": "busybox"}}}}}
    plan = PodPlan("p", (parse_task(task, "task"),), 1, 128, tmp_path, {"t1": tmp_path})
    monkeypatch.setattr(runtime, "build_container",
                        lambda _task, name, *_, **__: _container(name, range(65)))
    booted: list[Any] = []
    monkeypatch.setattr(runtime, "boot_vm", lambda *a, **k: booted.append(a))

    class Launcher:
        def hold(self) -> Any:
            return contextlib.nullcontext()

        def resolve(self, *_: Any) -> Any:
            return type("Image", (), {"layers": (), "config": None})()

        def user_resolver(self, _: Any) -> Any:
            return None

    pod = VMPod(cfg, plan, hypervisor=lambda: pytest.fail("no hypervisor before the check"),
                launcher=Launcher())  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match="rootfs.layers: 65 layers"):
        pod.boot()
    assert booted == []
