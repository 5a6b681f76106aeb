"""Standby clones with real VMs: the warm pool daemon keeps a clone with the snapshot loaded,
reseeded and warmed up (executor.snapshot.keeper) for each shape launches from a snapshot asked
for; a launch takes it and reseeds it again; a standby serves one pod only; without one (no keeper,
none ready, one that died) the launch starts its own clone as before; nothing is left behind."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from executor.launcher import boot_vm
from executor.libvirt.hypervisor import Hypervisor
from executor.libvirt.owners import owner_metadata
from executor.pool.daemon import META_POOL_STATE, WarmPool
from executor.pool.protocol import PoolConfig
from executor.pool.release import stop_qemu
from executor.snapshot import store
from executor.snapshot.keeper import STANDBY_STATE, StandbyKeeper
from executor.snapshot.store import Shape
from executor.snapshot.template import SETTLE_S as TEMPLATE_SETTLE_S
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, console_text, our_domains, run_to_exit
from tests.integration.test_snapshot import _pod, _report
from tests.integration.test_snapshot_vcpus import _cfs_quota, _vcpu_threads
from tests.integration.test_snapshot_vcpus import _pod as vcpus_pod
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]
POOL_NAME = f"{TEST_TAG}-sb"
SHAPE = Shape(1, 128)


@pytest.fixture
def max_clones() -> int | None:
    """The store's rotation after N clones (HYPERVM_SNAPSHOT_MAX_CLONES) for ``keeper``."""
    return 100


@pytest.fixture
def keeper(host_cfg: Any, fresh_store: Path, max_clones: int | None
           ) -> Iterator[tuple[Any, StandbyKeeper]]:
    """A pool of no idle VMs and one standby shape, on a socket of its own; the config a
    launch from a snapshot reaches it with."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-sb-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock",
                              use_pool=True, use_snapshot=True, snapshot_max_clones=max_clones)
    pool = WarmPool(cfg, PoolConfig(size=0, standby=1, vcpus=1, memory_mib=128,
                                    name=POOL_NAME), reap_interval=0.5)
    keeper = StandbyKeeper(pool, refill_delay=0.0)
    try:
        with pool, keeper:
            yield cfg, keeper
    finally:
        sock_dir.rmdir()
    assert our_domains(f"hypervm-{POOL_NAME}") == set(), "stopping destroys the standbys"


def _metadata(cfg: Any, name: str) -> dict[str, str]:
    with Hypervisor(cfg.libvirt_uri) as hv:
        return next(d.metadata for d in hv.list_ours() if d.name == name)


def _vcpu_quotas(cfg: Any, name: str) -> list[int | None]:
    """The CFS quota of each vCPU thread of ``name``'s QEMU (None: no cpu controller)."""
    with Hypervisor(cfg.libvirt_uri) as hv:
        pid = hv.qemu_pid(name)
    assert pid is not None
    threads = _vcpu_threads(cfg, name)
    return [_cfs_quota(pid, threads[f"CPU {n}/TCG"]) for n in range(len(threads))]


def _status(cfg: Any, name: str) -> str:
    with Hypervisor(cfg.libvirt_uri) as hv:
        return str(hv.monitor(name, {"execute": "query-status"})["status"])


def test_a_launch_takes_the_standby_of_its_shape_once(keeper: Any) -> None:
    cfg, kept = keeper
    vms = []
    try:
        # the first launch makes the snapshot; the second asks for a standby (none yet: it
        # starts its own clone) and so makes the shape wanted
        for name in ("first", "second"):
            vms.append(boot_vm(cfg, _pod(cfg, name, 1, 128)))
            assert vms[-1].warm and not vms[-1].name.startswith(f"hypervm-{POOL_NAME}")
        assert kept.wait_ready(store.template_shape(cfg, SHAPE), 120), kept.status()
        standby = kept.ready_names()[0]
        assert _metadata(cfg, standby)[META_POOL_STATE] == STANDBY_STATE
        # loaded, run, reseeded by the daemon (before its warm-up container ran)
        assert _status(cfg, standby) == "running"
        # its spare present vCPU capped on the host from its creation, and after a claim of
        # 1 vCPU (executor.libvirt.vcpucap; the daemon's capacity: the host's CPU count)
        capped = [-1, 1000] if store.template_shape(cfg, SHAPE).vcpus > 1 else [-1]
        assert _vcpu_quotas(cfg, standby) in (capped, [None] * len(capped))
        console = kept.cfg.vms_dir / standby / "console.log"
        assert console_text(console, "RNG reseeded with 64 host bytes").count(
            "RNG reseeded with 64 host bytes") == 1
        vms.append(boot_vm(cfg, _pod(cfg, "third", 1, 128)))
        third = vms[-1]
        assert third.name == standby
        assert standby not in kept.ready_names(), "a standby is handed out once"
        meta = _metadata(cfg, standby)
        assert meta[META_POOL_STATE] == "claimed"
        assert meta["owner-pid"] == owner_metadata()["owner-pid"]
        assert kept.status()["taken"] == 1
        assert _vcpu_quotas(cfg, standby) in (capped, [None] * len(capped))
        # the standby's clone runs its pod, reseeded like any clone: its own RNG
        reports = [_report(vm) for vm in vms[1:]]
        assert console_text(third.console_log, "RNG reseeded with 64 host bytes", 2).count(
            "RNG reseeded with 64 host bytes") == 2
        assert reports[0][2] != reports[1][2] and reports[0][3] != reports[1][3]
        assert reports[1][0] == 1 and 80 <= reports[1][1] <= 128
        # a new standby replaces the one taken, never the same VM
        assert kept.wait_ready(store.template_shape(cfg, SHAPE), 120), kept.status()
        dead = kept.ready_names()[0]
        assert dead != standby
        # a standby that died while it waited: the launch starts a clone of its own
        assert stop_qemu(dead)
        vms.append(boot_vm(cfg, _pod(cfg, "fourth", 1, 128)))
        assert vms[-1].name.startswith(f"hypervm-{TEST_TAG}-fourth-")
        assert "RNG reseeded" in console_text(vms[-1].console_log, "RNG reseeded")
        assert kept.status()["taken"] == 1, "a dead standby is discarded, not handed out"
    finally:
        for vm in vms:
            vm.destroy()
    deadline = time.monotonic() + 10  # QEMUs that exited: libvirtd ends their domains
    while (our_domains(standby) | our_domains(dead)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_domains(standby), "the taken standby ends with its pod"
    assert not our_domains(dead), "a dead standby's domain is gone too"


@pytest.mark.parametrize("max_clones", [2])
def test_the_daemon_makes_a_rotated_snapshot_anew_for_its_standby(keeper: Any) -> None:
    """The store rotates a snapshot after N clones (here 2): the keeper of a wanted shape makes
    the new template itself and a standby of it, off any launch's clock (before, it waited
    for a launch of the shape to make it and kept no standby until then); the next launch
    takes that standby."""
    cfg, kept = keeper
    template = store.template_shape(cfg, SHAPE)
    key = store.snapshot_key(kept.pool.boot_files, cfg, template)
    vms = []
    try:
        vms.append(boot_vm(cfg, _pod(cfg, "r1", 1, 128)))  # makes the snapshot: clone 1
        first = store.lookup(cfg, key)
        assert first is not None
        # no standby yet (the shape is wanted from now on): its own clone, the second
        vms.append(boot_vm(cfg, _pod(cfg, "r2", 1, 128)))
        deadline = time.monotonic() + 120  # no launch meanwhile: the keeper remakes it
        while ((remade := store.lookup(cfg, key)) is None or remade.template == first.template
               ) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert remade is not None and remade.template != first.template, kept.status()
        assert kept.wait_ready(template, 120), kept.status()
        standby = kept.ready_names()[0]
        vms.append(boot_vm(cfg, _pod(cfg, "r3", 1, 128)))
        assert vms[-1].name == standby
        assert _report(vms[-1])[0] == 1
    finally:
        for vm in vms:
            vm.destroy()


def test_a_standby_serves_a_vcpu_count_never_launched_before(keeper: Any) -> None:
    """Standbys are kept per template (memory size, tenant; 2 vCPUs present of the capacity,
    the second offline in the guest and capped on the host). A waiting standby runs 2 vCPU
    threads (libvirt's live count), its second capped: a pod of 1 vCPU taking it keeps the cap
    and sees 1; a launch of 2 vCPUs, a count never launched before, takes the next standby and
    gets its second vCPU granted (no cap) and online, without a hot-plug."""
    cfg, kept = keeper
    template = store.template_shape(cfg, SHAPE)  # HYPERVM_SNAPSHOT_VCPUS: the host's CPUs
    if template.vcpus < 2:
        pytest.skip("a template of 1 vCPU (a host of one CPU): no spare vCPU")
    vms = []
    try:
        for name in ("n1", "n2"):  # the snapshot, then the wanted template shape
            vms.append(boot_vm(cfg, _pod(cfg, name, 1, 128)))
        for name, cpus in (("n3", 1), ("n4", 2)):
            assert kept.wait_ready(template, 120), kept.status()
            standby = kept.ready_names()[0]
            assert _vcpu_quotas(cfg, standby) in ([-1, 1000], [None, None])
            with Hypervisor(cfg.libvirt_uri) as hv:
                assert hv.conn.lookupByName(standby).vcpusFlags(
                    libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
            vms.append(boot_vm(cfg, _pod(cfg, name, cpus, 128)))
            assert vms[-1].name == standby, f"the {cpus} vCPU pod took the standby"
            assert _report(vms[-1])[0] == cpus
            assert _vcpu_quotas(cfg, standby) in (
                [-1, 1000] if cpus == 1 else [-1, -1], [None, None])
        assert "2 vCPUs online (2 wanted)" in console_text(vms[-1].console_log,
                                                           "2 vCPUs online (2 wanted)")
    finally:
        for vm in vms:
            vm.destroy()


#: the guest's view of a pod above the shared capacity: its CPUs online, then each CPU's
#: idle time (/proc/stat, USER_HZ ticks): one online since the template booted has idled
#: through the template's settle and the standby's wait; one onlined by the claim has not
#: seconds the standby idles before it is claimed
IDLE_S = 3.0
ONLINE_SINCE = ("cat /sys/devices/system/cpu/online; "
                "grep '^cpu[0-9]' /proc/stat | while read cpu u n s idle rest; do echo $idle; done")


def test_a_standby_above_the_shared_capacity_waits_with_its_vcpus_online_uncapped(
        keeper: Any) -> None:
    """A template of a capacity above HYPERVM_SNAPSHOT_VCPUS serves only pods of exactly its
    count, which are given all its vCPUs: it keeps them online (no ``hypervm.spares=offline``),
    so its waiting standby runs them uncapped (a capped online vCPU stalls the guest's IPIs
    to it: measured, its warm-up START got no reply in 60 s) and a claim's RESEED onlines none;
    once claimed, every vCPU thread is under the pod's quota. Before: the spares offline and
    capped while it waited, onlined by the claim's RESEED (~35 ms each under TCG)."""
    cfg, kept = keeper
    cpus = cfg.snapshot_vcpus + 1
    if cpus > 4:
        pytest.skip(f"a host of {cfg.snapshot_vcpus} CPUs: a pod of {cpus} vCPUs is too slow")
    template = store.template_shape(cfg, Shape(cpus, 128))
    assert template.vcpus == cpus
    vms = []
    try:
        for name in ("a1", "a2"):  # the snapshot, then the wanted template shape
            vms.append(boot_vm(cfg, vcpus_pod(cfg, name, cpus, cpu_limit=cpus / 2,
                                              args=ONLINE_SINCE)))
        assert kept.wait_ready(template, 120), kept.status()
        standby = kept.ready_names()[0]
        assert _vcpu_quotas(cfg, standby) in ([-1] * cpus, [None] * cpus)
        time.sleep(IDLE_S)  # it idles, as a standby does
        vms.append(boot_vm(cfg, vcpus_pod(cfg, "a3", cpus, cpu_limit=cpus / 2,
                                          args=ONLINE_SINCE)))
        claimed = vms[-1]
        assert claimed.name == standby
        quotas = _vcpu_quotas(cfg, standby)
        assert quotas in ([50000] * cpus, [None] * cpus), quotas
        code, out = run_to_exit(claimed, claimed.pod.containers[0])
        assert code == 0, out
        online, *idle = out.split()
        assert online == f"0-{cpus - 1}" and len(idle) == cpus, out
        # online since before the template's save: idled through its settle (2 s) and the
        # standby's wait; onlined by the claim (before: 0.77 and 0.96 s), the boot's only
        spare_idle_s = min(int(t) for t in idle[1:]) / 100
        assert spare_idle_s >= 0.8 * (TEMPLATE_SETTLE_S + IDLE_S), out
    finally:
        for vm in vms:
            vm.destroy()


def test_without_a_keeper_a_launch_starts_its_own_clone(host_cfg: Any,
                                                        fresh_store: Path) -> None:
    """A pool that serves no standbys (``--standby 0``), and one whose standby's QEMU died:
    the launch falls back to its own clone (its own name), not to a cold boot."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-sb-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock",
                              use_pool=True, use_snapshot=True)
    pool = WarmPool(cfg, PoolConfig(size=0, standby=1, vcpus=1, memory_mib=128,
                                    name=POOL_NAME), reap_interval=0.5)
    try:
        with pool:  # no keeper: the standby operation is unknown to it
            for name in ("own1", "own2"):
                with boot_vm(cfg, _pod(cfg, name, 1, 128)) as vm:
                    assert vm.warm and vm.name.startswith(f"hypervm-{TEST_TAG}-{name}-")
                    assert "RNG reseeded" in console_text(vm.console_log, "RNG reseeded")
                    assert _report(vm)[0] == 1
    finally:
        sock_dir.rmdir()
    assert os.path.exists(sock_dir) is False


def test_a_groups_two_starts_on_a_standby_claimed_at_once_make_no_cgroup(keeper: Any) -> None:
    """Task "twocont": a standby is ready only once its init had its quiet loop after the
    warm-up (keeper.SETTLE_S), which made its spare cgroups (init 0.7.4: two), so a
    2-container group claiming it the moment it is ready (the launch a burst makes) sends both
    STARTs back to back and neither makes a cgroup of its own (init logs "(made at its
    START)" when one does; without the settle, the second did here)."""
    cfg, kept = keeper
    layer = ensure_warmup_layer(cfg.rootfs_dir)
    group = PodSpec(name=f"{TEST_TAG}-grp", containers=tuple(
        Container(c, Rootfs(layers=(layer,)), Process(args=("/bin/sh", "-c", "true"),
                                                    env=("PATH=/bin",)))
        for c in ("first", "second")), resources=Resources(cpus=1, memory_mib=128))
    vms = []
    try:
        for name in ("first", "second"):  # the snapshot, then the shape wanted (as above)
            vms.append(boot_vm(cfg, _pod(cfg, name, 1, 128)))
        assert kept.wait_ready(store.template_shape(cfg, SHAPE), 120), kept.status()
        standby = kept.ready_names()[0]
        vms.append(boot_vm(cfg, group))
        vm = vms[-1]
        assert vm.name == standby
        sent = [vm.send_start(c) for c in vm.pod.containers]
        assert [vm.wait_started(s).container for s in sent] == ["first", "second"]
        console = console_text(vm.console_log, "container second started")
        started = [line for line in console.splitlines() if " started: process " in line]
        assert any("container first started" in line for line in started), console[-3000:]
        assert any("container second started" in line for line in started), console[-3000:]
        # the claim's STARTs took spares made ahead (the warm-up's START took the first one)
        assert all(", cgroup ct" in line and "(made at its START)" not in line
                   for line in started), started
    finally:
        for vm in vms:
            vm.destroy()
