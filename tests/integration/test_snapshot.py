"""Starts from a snapshot with real VMs: the launcher (no pool, HYPERVM_SNAPSHOT=on) starts
each pod from the snapshot of its shape; the clones have their pod's vCPUs and memory, run its
processes over the guest channel, get distinct RNG states (RESEED), take published ports, and
leave nothing behind."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from executor.launcher import boot_vm
from executor.snapshot import store
from executor.snapshot.store import Shape
from hypervm.errors import NetworkError
from hypervm.netspec import PortMapping
from hypervm.podspec import Container, Mount, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, console_text, our_domains, run_to_exit
from tests.integration.test_network import free_port, listening_on, wait_for_http
from tests.integration.test_pool import shared_dir
from tests.integration.test_pool_ports import taken_port, web_pod
from vmimage.boot import resolve_boot
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]

#: what each clone reports: its CPUs, its memory, 32 bytes of urandom, its boot id
REPORT = ("grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; "
          "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
          "cat /proc/sys/kernel/random/boot_id")


def _pod(cfg: Any, name: str, cpus: int, memory_mib: int) -> PodSpec:
    layer = ensure_warmup_layer(cfg.rootfs_dir)
    container = Container("c", Rootfs(layers=(layer,)),
                          Process(args=("/bin/sh", "-c", REPORT), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                   resources=Resources(cpus=cpus, memory_mib=memory_mib))


def _report(vm: Any) -> tuple[int, int, str, str]:
    code, out = run_to_exit(vm, vm.pod.containers[0])
    assert code == 0, out
    cpus, mem, rand, boot_id = out.split("\n")[:4]
    mem_kib = int(re.search(r"(\d+) kB", mem).group(1))  # type: ignore[union-attr]
    return int(cpus), mem_kib // 1024, rand, boot_id


def test_clones_of_two_shapes_run_with_their_shape_and_their_own_rng(
        host_cfg: Any, fresh_store: Path) -> None:
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = resolve_boot(cfg)
    vms = []
    try:
        for name, cpus, memory in (("sa", 1, 128), ("sb", 1, 128), ("sc", 2, 256)):
            vms.append(boot_vm(cfg, _pod(cfg, name, cpus, memory)))
        for vm in vms:  # from a snapshot, not booted cold
            assert vm.warm and not vm.warm_layers
            assert vm.boot_seconds is not None
        reports = [_report(vm) for vm in vms]
        for vm, (cpus, mem_mib, _, _) in zip(vms, reports, strict=True):
            assert cpus == vm.pod.resources.cpus
            # MemTotal: the VM's memory less what the kernel keeps for itself
            assert vm.pod.resources.memory_mib - 48 <= mem_mib <= vm.pod.resources.memory_mib
        rands = [r[2] for r in reports]
        assert all(len(r) == 64 for r in rands)
        # sa and sb are clones of one snapshot: each was reseeded with host entropy (init logs
        # it on the console, whose log starts at the restore) and reads bytes of its own
        for vm in vms:
            assert "RNG reseeded with 64 host bytes" in console_text(vm.console_log, "RNG reseeded")
        assert len(set(rands)) == len(rands), rands
        # the kernel makes boot_id at its first read: never in a template, so after RESEED
        assert reports[0][3] != reports[1][3]
        for shape in (Shape(1, 128), Shape(2, 256)):
            entry = store.lookup(cfg, store.snapshot_key(boot, cfg, shape))
            assert entry is not None
            assert os.stat(entry.state).st_mode & 0o777 == 0o600
            assert os.stat(entry.state.parent).st_mode & 0o777 == 0o700
    finally:
        for vm in vms:
            vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-s") == set()
    assert our_domains("hypervm-template-") == set()


def test_a_clone_serves_its_published_port_and_a_taken_one_fails_as_cold(
        host_cfg: Any, fresh_store: Path) -> None:
    """Published ports are added to the running clone (hostfwd_add, as on a claimed pool VM):
    httpd in the clone answers through its port; a taken port fails the launch with the cold
    boot's own error before any clone starts."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    layer = ensure_warmup_layer(cfg.rootfs_dir)
    port, token = free_port(), f"snap-{TEST_TAG}"
    mapping = PortMapping(port, 80, "tcp", "127.0.0.1")
    container, pod = web_pod(layer, "sweb", mapping, token=token)
    with boot_vm(cfg, pod) as vm:
        # a clone, not cold
        assert vm.warm and "RNG reseeded" in console_text(vm.console_log, "RNG reseeded")
        assert listening_on(port)
        vm.start(container)
        assert wait_for_http(f"http://127.0.0.1:{port}/", 60) == f"{token}\n".encode()
    assert not listening_on(port), "the port goes with the clone"
    with taken_port() as taken:
        busy = PortMapping(taken.getsockname()[1], 80, "tcp", "127.0.0.1")
        _, pod = web_pod(layer, "staken", busy)
        with pytest.raises(NetworkError) as snap:
            boot_vm(cfg, pod)
        with pytest.raises(NetworkError) as cold:
            boot_vm(dataclasses.replace(cfg, use_snapshot=False), pod)
    assert str(snap.value) == str(cold.value)
    assert not list(host_cfg.vms_dir.glob(f"hypervm-{TEST_TAG}-staken-*"))


def test_a_clone_gets_its_layers_mounts_and_cpu_bound_while_it_loads_and_reseeds(
        host_cfg: Any, fresh_store: Path) -> None:
    """The clone's host-side devices overlap the load and RESEED (executor.snapshot.start):
    the container still sees its layer, a read-only and a writable mount, and its CPU bound;
    the bound directories outlive the clone untouched."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    ro, rw = shared_dir(), shared_dir()
    try:
        (ro / "in.txt").write_text("from the host\n")
        os.chmod(rw, 0o777)
        script = ("cat /in/in.txt; echo made-in-clone > /out/vm.txt; "
                  "if (echo x > /in/nope) 2>/dev/null; then echo ro-broken; fi; "
                  "grep -c ^processor /proc/cpuinfo")
        container = Container("c", Rootfs(layers=(ensure_warmup_layer(cfg.rootfs_dir),)),
                              Process(args=("/bin/sh", "-c", script), env=("PATH=/bin",)),
                              mounts=(Mount(type="9p", destination="/in", source=ro,
                                            readonly=True),
                                      Mount(type="9p", destination="/out", source=rw)))
        pod = PodSpec(name=f"{TEST_TAG}-sdev", containers=(container,),
                      resources=Resources(cpus=1, memory_mib=128, cpu_limit=0.5))
        with boot_vm(cfg, pod) as vm:
            # a clone
            assert vm.warm and "RNG reseeded" in console_text(vm.console_log, "RNG reseeded")
            code, out = run_to_exit(vm, container)
            assert code == 0, out
            assert out.split() == ["from", "the", "host", "1"], out
            assert (rw / "vm.txt").read_text() == "made-in-clone\n"
            assert not (ro / "nope").exists()
            name = vm.name
        assert name not in our_domains(name)
        assert (ro / "in.txt").read_text() == "from the host\n"
    finally:
        shutil.rmtree(ro, ignore_errors=True)
        shutil.rmtree(rw, ignore_errors=True)


def test_tenants_never_share_a_template(host_cfg: Any, fresh_store: Path) -> None:
    """Clones share their template's guest kernel layout (KASLR) and boot-time secrets: one
    tenant's clones come from a template of its own, another tenant's from another, made by a
    boot of its own (its own KASLR offset); a tenant's second clone reuses its template."""
    from hypervm.netspec import NetworkSpec

    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = resolve_boot(cfg)
    vms = []
    try:
        for name, tenant in (("ta", "acme"), ("tb", "globex"), ("tc", "acme")):
            pod = dataclasses.replace(_pod(cfg, name, 1, 128),
                                      network=NetworkSpec(tenant=tenant))
            vms.append(boot_vm(cfg, pod))
        assert all(vm.warm for vm in vms)  # from snapshots, not booted cold
        entries = {tenant: store.lookup(cfg, store.snapshot_key(boot, cfg,
                                                                Shape(1, 128, tenant)))
                   for tenant in ("acme", "globex")}
        assert all(entries.values()) and len(list(fresh_store.glob("*/state"))) == 2
        acme, globex = entries["acme"], entries["globex"]
        assert acme is not None and globex is not None and acme.template != globex.template
        assert (acme.state.parent / "clones").stat().st_size == 2  # ta and tc
        assert (globex.state.parent / "clones").stat().st_size == 1
        assert all(_report(vm)[0] == 1 for vm in vms)
    finally:
        for vm in vms:
            vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-t") == set()
    assert our_domains("hypervm-template-") == set()
