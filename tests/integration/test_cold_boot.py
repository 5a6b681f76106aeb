"""A cold boot (executor.vm.HyperVM.boot) as ``hypervm run`` needs it fast (issue 17): the guests'
network policy installed on a thread started once the domain is created (off the path before
createXML), still in force before READY is awaited, and a policy that cannot be installed
still fails the boot and leaves no VM; the TCG translations flushed once settled, not at READY
(the first START reuses them); its layer disk found by the guest at the PCI slot the host
pinned it to (rootfs.pci, init 0.7.5)."""

from __future__ import annotations

import dataclasses
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from executor import netpolicy
from executor.guest.channel import GuestChannel
from executor.libvirt.hypervisor import Hypervisor
from executor.vm import SETTLED_FLUSH_S, HyperVM
from hypervm.config import HostConfig
from hypervm.errors import NetworkError
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, console_text, run_to_exit
from vmimage.boot import resolve_boot
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_leaked_domains")]


@pytest.fixture(scope="module")
def pod(host_cfg: HostConfig) -> PodSpec:
    layer = ensure_warmup_layer(host_cfg.rootfs_dir)
    say = Container("c", Rootfs(layers=(layer,)), Process(
        args=("/bin/sh", "-c", "echo hello"), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-cold", containers=(say,),
                   resources=Resources(cpus=1, memory_mib=128))


def test_the_policy_is_in_force_before_ready_is_awaited(
        host_cfg: HostConfig, pod: PodSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = threading.Event()
    real_enforce, real_connect = netpolicy.enforce, GuestChannel.connect
    seen: list[bool] = []

    def slow_enforce(cfg: HostConfig, resolv_conf: str = "") -> None:
        time.sleep(0.5)  # READY must wait for it however long it takes
        real_enforce(cfg, resolv_conf)
        installed.set()

    def connect(channel: GuestChannel, timeout: float) -> dict:
        seen.append(installed.is_set())
        return real_connect(channel, timeout)

    monkeypatch.setattr(netpolicy, "enforce", slow_enforce)
    monkeypatch.setattr(GuestChannel, "connect", connect)
    with HyperVM(dataclasses.replace(host_cfg, use_pool=False), pod) as vm:
        vm.boot(timeout=90.0)
        assert seen == [True]
        assert netpolicy.installed() is not None
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")


def test_a_policy_that_cannot_be_installed_fails_the_boot_and_leaves_no_vm(
        host_cfg: HostConfig, pod: PodSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_enforce(cfg: HostConfig, resolv_conf: str = "") -> None:
        time.sleep(0.3)  # fails while the guest boots
        raise NetworkError("cannot install the guests' network policy: test")

    monkeypatch.setattr(netpolicy, "enforce", failing_enforce)
    vm = HyperVM(dataclasses.replace(host_cfg, use_pool=False), pod)
    with pytest.raises(NetworkError, match="network policy"):
        vm.boot(timeout=90.0)
    assert not Path(vm.run_dir).exists()


def test_a_cold_vm_flushes_its_translations_once_settled_not_at_ready(
        host_cfg: HostConfig, pod: PodSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first START runs much of the boot's kernel code again: a flush at READY made it
    translate that anew (~0.12 s under TCG). The one flush comes SETTLED_FLUSH_S later."""
    cfg = dataclasses.replace(host_cfg, use_pool=False)
    if not resolve_boot(cfg).flushes_after_boot(cfg):
        pytest.skip("needs TCG and HyperQEMU's tcg-flush")
    flushed: list[float] = []
    real_flush = Hypervisor.flush_tcg

    def flush_tcg(hv: Hypervisor, name: str) -> None:
        flushed.append(time.monotonic())
        real_flush(hv, name)

    monkeypatch.setattr(Hypervisor, "flush_tcg", flush_tcg)
    with HyperVM(cfg, pod) as vm:
        vm.boot(timeout=90.0)
        ready = time.monotonic()
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")
        assert flushed == []
        time.sleep(SETTLED_FLUSH_S + 1.0)
        assert len(flushed) == 1 and flushed[0] - ready >= SETTLED_FLUSH_S - 0.5


def test_a_cold_vms_layer_disk_is_mounted_from_its_pinned_slot(
        host_cfg: HostConfig, pod: PodSpec) -> None:
    """The domain pins the layer disk to slot 3 (designer.pin_layer_slots) and the START names
    it: init mounts the disk it finds there without asking any disk its serial. A START
    without the address (an older host) would log "by serial"."""
    with HyperVM(dataclasses.replace(host_cfg, use_pool=False), pod) as vm:
        vm.boot(timeout=90.0)
        assert run_to_exit(vm, pod.containers[0]) == (0, "hello\n")
        xml = ET.fromstring(vm._hypervisor.conn.lookupByName(vm.name).XMLDesc(0))
        (disk,) = xml.findall("devices/disk")
        address = disk.find("address")
        assert disk.findtext("serial") == "l0" and address is not None
        assert (address.get("bus"), address.get("slot")) == ("0x00", "0x03")
        console = console_text(vm.console_log, "layer l0 (")
    assert "layer l0 (/dev/vda at 0000:00:03.0) mounted" in console, console[-3000:]
