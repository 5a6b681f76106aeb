"""Any vCPU count from one snapshot, with real VMs (issue 18 item 2): a template boots with 2
vCPUs present of a capacity (HYPERVM_SNAPSHOT_VCPUS), its init takes the second offline before
READY; launches of 1 and 2 vCPUs of one memory size and tenant start from its ONE entry, each
clone with its own vCPUs online (the second onlined by init, further ones hot-plugged by the
host), bounded by what the host gave it: QEMU's vCPU threads, each in a cgroup with the pod's
CPU quota, a spare one capped to 1 ms a second, not by what the guest says."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from executor.guest.protocol import RESEED_BYTES, MsgType, reseed_payload
from executor.launcher import boot_vm
from executor.libvirt.hypervisor import Hypervisor
from executor.snapshot import store
from executor.snapshot.store import Shape
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, console_text, our_domains, run_to_exit
from vmimage.boot import resolve_boot
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]

#: the guest's view: CPUs it runs on, those present (hot-plugged) and possible (capacity); then
#: its CPUs with an invariant TSC and their distinct delay calibrations (BogoMIPS)
VIEW = ("grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/present "
        "/sys/devices/system/cpu/possible /sys/devices/system/cpu/online; "
        "grep -c constant_tsc /proc/cpuinfo; grep ^bogomips /proc/cpuinfo | sort -u | wc -l")


def _pod(cfg: Any, name: str, cpus: int, cpu_limit: float | None = None,
         args: str = VIEW) -> PodSpec:
    container = Container("c", Rootfs(layers=(ensure_warmup_layer(cfg.rootfs_dir),)),
                          Process(args=("/bin/sh", "-c", args), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                   resources=Resources(cpus=cpus, memory_mib=128, cpu_limit=cpu_limit))


def _view(vm: Any) -> list[str]:
    code, out = run_to_exit(vm, vm.pod.containers[0])
    assert code == 0, out
    return out.split()


def _vcpu_threads(cfg: Any, name: str) -> dict[str, int]:
    """The host's side: QEMU's vCPU threads of ``name`` (comm ``CPU n/TCG``) by name."""
    with Hypervisor(cfg.libvirt_uri) as hv:
        pid = hv.qemu_pid(name)
    assert pid is not None
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        comm = (task / "comm").read_text().strip()
        if comm.startswith("CPU "):
            threads[comm] = int(task.name)
    return threads


def _cfs_quota(pid: int, tid: int) -> int | None:
    """The CFS quota (µs per 100 ms) of the cpu cgroup thread ``tid`` is in (v1 or v2); None
    when the host has no cpu controller (libvirt then bounds nothing: skipped)."""
    for line in Path(f"/proc/{pid}/task/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and Path("/sys/fs/cgroup/cpu").is_dir():
            return int(Path(f"/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us").read_text())
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/cpu.max").exists():
            quota = Path(f"/sys/fs/cgroup{path}/cpu.max").read_text().split()[0]
            return None if quota == "max" else int(quota)
    return None


def test_two_vcpu_counts_of_one_tenant_start_from_one_snapshot(host_cfg: Any,
                                                               fresh_store: Path
                                                               ) -> None:
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True, snapshot_vcpus=2)
    boot = resolve_boot(cfg)
    vms = []
    try:
        for name, cpus in (("v1", 1), ("v2", 2)):
            vms.append(boot_vm(cfg, _pod(cfg, name, cpus)))
        assert all(vm.warm for vm in vms)  # from the snapshot, not booted cold
        # ONE entry served both: the second launch made no template
        assert len(list(fresh_store.glob("*/state"))) == 1
        entry = store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(2, 128)))
        assert entry is not None and (entry.state.parent / "clones").stat().st_size == 2
        one, two = (_view(vm) for vm in vms)
        # the guest: its own vCPUs online, of the template's capacity of 2 (both present,
        # the second booted offline: a 2-vCPU clone onlines it, no hot-plug)
        assert one[:4] == ["1", "0-1", "0-1", "0"], one
        assert two[:4] == ["2", "0-1", "0-1", "0-1"], two
        if boot.accel == "tcg" and "tcg-invtsc" in boot.qemu.features:
            # HyperQEMU's invariant TSC: the hot-plugged vCPU took the first one's delay
            # calibration, not a ~0.3 s busy loop of its own under TCG (tcg-invtsc.patch)
            assert two[4:] == ["2", "1"], two
        assert "2 vCPUs online (2 wanted)" in console_text(vms[1].console_log, "2 vCPUs online")
        # the host: QEMU runs the template's present vCPUs; of the 1-vCPU pod's, the spare
        # is capped to 1 ms a second whatever the guest does with it, the granted ones not
        for vm, quotas in ((vms[0], [-1, 1000]), (vms[1], [-1, -1])):
            pid = vm.qemu_pid
            threads = _vcpu_threads(cfg, vm.name)
            assert pid is not None and sorted(threads) == ["CPU 0/TCG", "CPU 1/TCG"]
            got = [_cfs_quota(pid, threads[f"CPU {n}/TCG"]) for n in (0, 1)]
            if got != [None, None]:  # no cpu controller: libvirt would bound none
                assert [-1 if q is None else q for q in got] == quotas, (vm.name, got)
    finally:
        for vm in vms:
            vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-v") == set()
    assert our_domains("hypervm-template-") == set()


def test_a_hotplugged_vcpu_is_bounded_by_the_pods_cpu_quota(host_cfg: Any,
                                                            fresh_store: Path
                                                            ) -> None:
    """3 vCPUs limited to 1.5 cores from a template of 2 present: each vCPU thread, the
    granted present one and the hot-plugged one included, runs in a cgroup of libvirt's with
    half a core (a vCPU added behind libvirt's back, by QMP device_add, would run in QEMU's
    emulator cgroup, unbounded). 1 vCPU limited to half a core from the same template: its
    spare stays capped after libvirt wrote the pod's quota into every vCPU's cgroup."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True, snapshot_vcpus=3)
    for cpus, limit, want in ((3, 1.5, [50000] * 3), (1, 0.5, [50000, 1000])):
        with boot_vm(cfg, _pod(cfg, f"vq{cpus}", cpus, cpu_limit=limit)) as vm:
            assert vm.warm and _view(vm)[0] == str(cpus)
            threads = _vcpu_threads(cfg, vm.name)
            with Hypervisor(cfg.libvirt_uri) as hv:
                pid = hv.qemu_pid(vm.name)
            assert pid is not None and len(threads) == len(want)
            quotas = [_cfs_quota(pid, threads[f"CPU {n}/TCG"]) for n in range(len(want))]
            if all(q is None for q in quotas):
                pytest.skip("no cpu cgroup controller: libvirt bounds no vCPU on this host")
            assert quotas == want, quotas


#: two busy loops: a guest with a second online CPU runs one on it
BUSY = "for i in 1 2; do (while :; do :; done) & done; sleep 60"


def _cpu_seconds(pid: int, tid: int) -> float:
    """The CPU time thread ``tid`` of ``pid`` has run (the kernel's schedstat, ns)."""
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9


def test_a_one_vcpu_clone_that_onlines_its_spare_vcpu_gains_no_cpu_time(
        host_cfg: Any, fresh_store: Path) -> None:
    """The template's second vCPU is present in every clone (offline in the guest): a hostile
    1-vCPU pod's guest runs two busy loops and onlines the spare (here init, asked by RESEED,
    as a hostile kernel or init could do by itself); the host's cap on the spare's cgroup (1
    ms a second, executor.libvirt.vcpucap) keeps that thread at ~0 CPU while the pod's own
    vCPU is busy (the guest's bring-up of the starved CPU then hangs: its own loss). Checked
    failing without the cap: the spare comes online in ~20 ms and runs one loop."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True, snapshot_vcpus=2)
    with boot_vm(cfg, _pod(cfg, "vs", 1, args=BUSY)) as vm:
        assert vm.warm
        pid, threads = vm.qemu_pid, _vcpu_threads(cfg, vm.name)
        assert pid is not None and sorted(threads) == ["CPU 0/TCG", "CPU 1/TCG"]
        own, spare = threads["CPU 0/TCG"], threads["CPU 1/TCG"]
        if _cfs_quota(pid, spare) is None:
            pytest.skip("no cpu cgroup controller: the spare vCPU cannot be capped here")
        vm.start(vm.pod.containers[0], on_stdout=lambda b: None, on_stderr=lambda b: None,
                 on_exit=lambda s: None)
        time.sleep(1.0)  # the loops run
        spare_before, own_before = _cpu_seconds(pid, spare), _cpu_seconds(pid, own)
        # the guest onlines its spare (init's reply does not come while the kernel waits)
        vm.channel.send_request(MsgType.RESEED,
                                reseed_payload(os.urandom(RESEED_BYTES), cpus=2))
        time.sleep(WINDOW_S)
        spare_used = _cpu_seconds(pid, spare) - spare_before
        own_used = _cpu_seconds(pid, own) - own_before
        assert own_used > 0.1 * WINDOW_S, f"the pod's vCPU ran {own_used:.3f} s"
        assert spare_used < 0.05, f"the spare vCPU ran {spare_used:.3f} s"


#: how long the guest's busy loops and its onlining of the spare are watched
WINDOW_S = 5.0


def test_a_pod_above_the_shared_capacity_has_all_its_vcpus_present_none_hotplugged(
        host_cfg: Any, fresh_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pod of more vCPUs than HYPERVM_SNAPSHOT_VCPUS (3 on a capacity of 2) gets a template
    of its own capacity, which only pods of exactly that count start from: all 3 are present
    in it (the spares booted and taken offline before READY), so its clone onlines them on
    RESEED with no ACPI hot-plug (no ``vcpus`` span in the start's log line; before, the third
    was hot-plugged: ~60-100 ms more under TCG), each vCPU thread under the pod's CPU quota."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True, snapshot_vcpus=2)
    boot = resolve_boot(cfg)
    caplog.set_level(logging.INFO, logger="executor.snapshot.start")
    with boot_vm(cfg, _pod(cfg, "v3", 3, cpu_limit=1.5)) as vm:  # the template made first
        pass
    with boot_vm(cfg, _pod(cfg, "v3b", 3, cpu_limit=1.5)) as vm:
        assert vm.warm and _view(vm)[:4] == ["3", "0-2", "0-2", "0-2"]
        starts = [r.getMessage() for r in caplog.records if "started from snapshot" in r.message]
        assert starts and all("vcpus" not in line for line in starts), starts
        assert store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(3, 128))) is not None
        pid, threads = vm.qemu_pid, _vcpu_threads(cfg, vm.name)
        assert pid is not None and sorted(threads) == [f"CPU {n}/TCG" for n in range(3)]
        quotas = [_cfs_quota(pid, threads[f"CPU {n}/TCG"]) for n in range(3)]
        if quotas != [None] * 3:  # no cpu controller: libvirt would bound none
            assert quotas == [50000] * 3, quotas
        assert "3 vCPUs online (3 wanted)" in console_text(vm.console_log, "3 vCPUs online")
    assert our_domains(f"hypervm-{TEST_TAG}-v3") == set()
