"""A cold VM's layer disks pinned to PCI slots and named in its START (issues 17/18, task
layerslot): init then finds each disk through sysfs instead of asking every disk its serial
(a virtio-blk GET_ID round trip). The domain's slots, the START's ``rootfs.pci`` and their
bounds; the pool's and snapshots' domains keep libvirt's choice (their disks are SCSI LUNs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from executor import network
from executor.guest.protocol import MsgType, layer_pci_address, start_payload
from executor.libvirt.designer import (
    FIRST_LAYER_SLOT,
    RunFiles,
    cold_domain,
    pin_layer_slots,
    pool_domain,
)
from executor.libvirt.domain import MAX_PCI_DEVICES, DiskSpec
from executor.libvirt.domain_xml import domain_xml, parse_domain_facts
from executor.vm import HyperVM
from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec, ProtocolError
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from vmimage.boot import BootFiles
from vmimage.kernel import Kernel
from vmimage.qemu import DISTRO

RUN = Path("/run/hypervm/vms/hypervm-web-0badcafe")
BOOT = BootFiles(kernel=Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel"), initrd=Path("/i.img"),
                 qemu=DISTRO, accel="tcg", cmdline="console=ttyS0 quiet")
LAYERS = (Path("/layers/a.erofs"), Path("/layers/b.erofs"), Path("/layers/c.erofs"))


def _disks(n: int) -> tuple[DiskSpec, ...]:
    return tuple(DiskSpec(LAYERS[i], f"l{i}") for i in range(n))


def test_a_cold_domains_layer_disks_are_pinned_in_serial_order() -> None:
    spec = cold_domain("hypervm-web-0badcafe", BOOT, config_from_env({}), RunFiles.under(RUN),
                       Resources(cpus=1, memory_mib=128), NetworkSpec(), {}, disks=_disks(3))
    assert [(d.serial, d.pci_slot) for d in spec.disks] == [("l0", 3), ("l1", 4), ("l2", 5)]
    xml = domain_xml(spec)
    import xml.etree.ElementTree as ET  # deferred: this test alone reads the XML back

    slots = [d.find("address") for d in ET.fromstring(xml).findall("devices/disk")]
    assert [(a.get("type"), a.get("bus"), a.get("slot"), a.get("function"))
            for a in slots if a is not None] == [("pci", "0x00", f"0x0{s}", "0x0")
                                                 for s in (3, 4, 5)]
    # hypervm gc's facts are the same with the addresses
    assert parse_domain_facts(xml).disk_paths == LAYERS


def test_the_first_layer_keeps_the_slot_libvirt_gave_it() -> None:
    """Without shares libvirt put the virtio-serial controller at 2 and the disks after it:
    pinning them there leaves a cold run's devices where they were (measured: libvirt 9.0's
    define of the run's domain, DEVELOPERS.md layerslot)."""
    assert FIRST_LAYER_SLOT == 3
    assert pin_layer_slots(()) == ()


def test_a_pool_domain_pins_nothing() -> None:
    spec = pool_domain("hypervm-pool-0badcafe", BOOT, config_from_env({}), RUN, 1, 128, {})
    assert spec.disks == ()
    assert '<address type="pci"' not in domain_xml(spec)


@pytest.mark.parametrize("slot", [0, 1, 32, -1])
def test_a_disk_is_pinned_only_to_a_free_root_bus_slot(slot: int) -> None:
    with pytest.raises(InvalidSpec, match="pci_slot"):
        DiskSpec(LAYERS[0], "l0", pci_slot=slot).validate("disks[0]")


def test_two_disks_never_share_a_slot() -> None:
    spec = cold_domain("hypervm-web-0badcafe", BOOT, config_from_env({}), RunFiles.under(RUN),
                       Resources(cpus=1, memory_mib=128), NetworkSpec(), {}, disks=_disks(2))
    clash = (spec.disks[0], dataclasses.replace(spec.disks[1], pci_slot=3))
    with pytest.raises(InvalidSpec, match="pci_slot"):
        dataclasses.replace(spec, disks=clash).validate()


@pytest.mark.parametrize(("slot", "address"), [(3, "0000:00:03.0"), (31, "0000:00:1f.0")])
def test_a_slots_address_is_as_the_guests_sysfs_names_it(slot: int, address: str) -> None:
    assert layer_pci_address(slot) == address


@pytest.mark.parametrize("slot", [32, -1, 256])
def test_no_address_beyond_the_root_bus(slot: int) -> None:
    with pytest.raises(ProtocolError):
        layer_pci_address(slot)


def test_the_most_layers_a_domain_takes_stay_below_the_nics_slot() -> None:
    """The NIC is a QEMU argument at a fixed slot libvirt does not know: the domain's cap on
    PCI devices keeps the last pinned layer below it (a higher cap would make them collide)."""
    pinned = pin_layer_slots(_many_disks(MAX_PCI_DEVICES))
    assert max(d.pci_slot or 0 for d in pinned) < network.NIC_PCI_SLOT
    spec = cold_domain("hypervm-web-0badcafe", BOOT, config_from_env({}), RunFiles.under(RUN),
                       Resources(cpus=1, memory_mib=128), NetworkSpec(), {},
                       disks=_many_disks(MAX_PCI_DEVICES))
    assert len(spec.disks) == MAX_PCI_DEVICES
    assert all(d.pci_slot is not None for d in spec.disks)
    # one more: none pinned, all SCSI LUNs (task manylayers; tests/unit/test_many_layers.py)
    spec = cold_domain("hypervm-web-0badcafe", BOOT, config_from_env({}), RunFiles.under(RUN),
                       Resources(cpus=1, memory_mib=128), NetworkSpec(), {},
                       disks=_many_disks(MAX_PCI_DEVICES + 1))
    assert spec.scsi_controller and all(d.pci_slot is None for d in spec.disks)


def _many_disks(n: int) -> tuple[DiskSpec, ...]:
    return tuple(DiskSpec(Path(f"/layers/{i}.erofs"), f"l{i}") for i in range(n))


def test_the_start_carries_one_address_a_layer_or_none() -> None:
    process = {"args": ["true"]}
    with_pci = start_payload("c", 1, ["l0", "l1"], process, pci=["0000:00:03.0", "0000:00:04.0"])
    assert with_pci["rootfs"]["pci"] == ["0000:00:03.0", "0000:00:04.0"]
    assert "pci" not in start_payload("c", 1, ["l0"], process)["rootfs"]
    for bad in (["0000:00:03.0"], ["0000:00:03.0", "00:04.0"], ["0000:00:03.0", "0000:00:20.0"],
                ["0000:00:03.0", "0000:00:0A.0"], ["0000:00:03.0", "0000:00:04.0\n"]):
        with pytest.raises(ProtocolError, match="rootfs.pci"):
            start_payload("c", 1, ["l0", "l1"], process, pci=bad)


class _Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def register_process(self, handle: int, callbacks: Any) -> None:
        pass

    def send_request(self, type_: MsgType, payload: dict[str, Any]) -> str:
        self.sent.append(payload)
        return "pending"


def _pod(tmp_path: Path) -> PodSpec:
    layers = [tmp_path / n for n in ("a.erofs", "b.erofs", "c.erofs")]
    return PodSpec(name="p", containers=(
        Container("one", Rootfs(layers=(layers[0], layers[1])), Process(args=("true",))),
        Container("two", Rootfs(layers=(layers[2], layers[0])), Process(args=("true",)))))


def test_a_cold_vms_starts_name_each_layers_address(tmp_path: Path) -> None:
    vm = HyperVM(config_from_env({}), _pod(tmp_path))
    spec = vm.domain_spec(BOOT)
    assert [d.pci_slot for d in spec.disks] == [3, 4, 5]
    channel = _Channel()
    vm._channel = channel  # type: ignore[assignment]
    for container in vm.pod.containers:
        vm.send_start(container)
    assert [(p["rootfs"]["layers"], p["rootfs"]["pci"]) for p in channel.sent] == [
        (["l0", "l1"], ["0000:00:03.0", "0000:00:04.0"]),
        (["l2", "l0"], ["0000:00:05.0", "0000:00:03.0"])]


def test_a_claimed_pool_vms_start_names_no_address(tmp_path: Path) -> None:
    """Its layers are SCSI LUNs hot-added at the claim: found by serial, after waiting."""
    vm = HyperVM(config_from_env({}), _pod(tmp_path), claimed="hypervm-pool-0badcafe",
                 run_dir=tmp_path / "run")
    vm.assign_devices()
    channel = _Channel()
    vm._channel = channel  # type: ignore[assignment]
    vm.send_start(vm.pod.containers[0])
    assert "pci" not in channel.sent[0]["rootfs"]
    assert channel.sent[0]["rootfs"]["wait_ms"] > 0
