"""Density: QEMU RSS of idle 128 MiB HyperVMs, and how many VMs run at once before the launch
latency of one more VM doubles.

Idle VMs (booted, no process started) are added in steps; at each step a probe VM is launched
(HyperVM boot + START of ``true``, the executor's path without Mesos) a few times. The search
stops when the probe's p50 exceeds twice its p50 with no idle VM, when a boot fails, when host
memory runs low (checked before every boot), or at the cap (200 VMs in the full run);
``DensityResult.limit`` says which came first. ``max_concurrent_vms`` counts the idle VMs
plus the probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import peers
from bench.vmenv import (
    GUEST_MIB,
    VMEnv,
    bench_name,
    guest_ram_pages,
    private_by_mapping,
    private_dirty_mib,
    pss_mib,
    rss_mib,
)
from executor import launcher
from executor.libvirt.hypervisor import Hypervisor
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.vm import SETTLED_FLUSH_S, HyperVM
from hypervm.errors import HyperVMError
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs

log = logging.getLogger(__name__)

SLOWDOWN_LIMIT = 2.0
MIN_AVAILABLE_MIB = 2048
#: seconds an idle VM settles after its boot before its memory is read: past its second TCG
#: flush (executor.vm.SETTLED_FLUSH_S after READY), when it holds what it keeps while idle.
#: (With one flush at READY the figures were the same from 2 s to 40 s after the boot.)
SETTLE_S = SETTLED_FLUSH_S + 2.0


@dataclass
class Level:
    idle_vms: int
    probe_s: list[float]
    idle_rss_mib: list[float]
    idle_pss_mib: list[float] = field(default_factory=list)
    idle_private_mib: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def p50(self) -> float | None:
        return statistics.median(self.probe_s) if self.probe_s else None


@dataclass
class DensityResult:
    levels: list[Level] = field(default_factory=list)
    max_concurrent_vms: int | None = None
    capped: bool = False
    stopped_because: str = ""
    #: what ran out first, in a word: "latency", "memory", "boot failure", or "none (cap)"
    limit: str = ""
    idle_rss_mib: float | None = None
    baseline_s: float | None = None


def pod(layers: Sequence[Path], kind: str) -> PodSpec:
    container = Container(name="c", rootfs=Rootfs(layers=tuple(layers)),
                          process=Process(args=("/bin/true",), env=("PATH=/bin",)))
    return PodSpec(name=bench_name(kind), containers=(container,),
                   resources=Resources(cpus=1, memory_mib=GUEST_MIB))


def probe_once(env: VMEnv, hv: Hypervisor, layers: Sequence[Path]) -> float:
    spec = pod(layers, "probe")
    with HyperVM(env.cfg, spec, hypervisor=hv, accel=env.accel) as vm:
        started = time.monotonic()
        vm.boot()
        vm.start(spec.containers[0])
        return time.monotonic() - started


def start_on_booted(env: VMEnv, hv: Hypervisor, layers: Sequence[Path], cmdline_extra: str = ""
                    ) -> tuple[float, float]:
    """(boot, START) of one HyperVM: boot until READY, then START of ``true`` until init replies
    with the pid. START alone is the floor of any warm pool (its VMs are booted already).
    ``cmdline_extra`` is appended to the kernel command line for this VM only."""
    spec = pod(layers, "floor")
    with HyperVM(env.cfg, spec, hypervisor=hv, boot_files=env.with_cmdline(cmdline_extra)) as vm:
        started = time.monotonic()
        vm.boot()
        booted = time.monotonic()
        vm.start(spec.containers[0])
        return booted - started, time.monotonic() - booted


class _MemoryLow(Exception):
    """Host memory ran low before the next idle VM (args: idle VMs running)."""


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def measure(env: VMEnv, layers: Sequence[Path], steps: Sequence[int], probes: int,
            reference: Sequence[float] = ()) -> DensityResult:
    """``reference``: more samples of the same probe with no idle VM (taken elsewhere in the
    run), pooled with the first step's so that one slow probe does not set the baseline."""
    result = DensityResult()
    idle: list[HyperVM] = []
    with Hypervisor(env.cfg.libvirt_uri) as hv:
        try:
            baseline: float | None = None
            for target in steps:
                level = Level(idle_vms=target, probe_s=[], idle_rss_mib=[])
                result.levels.append(level)
                try:
                    while len(idle) < target:
                        if mem_available_mib() < MIN_AVAILABLE_MIB:
                            raise _MemoryLow(len(idle))
                        vm = HyperVM(env.cfg, pod(layers, "idle"), hypervisor=hv,
                                     accel=env.accel)
                        idle.append(vm)
                        vm.boot()
                    time.sleep(SETTLE_S if target else 0)
                    level.idle_rss_mib = _memory(hv, idle, rss_mib)
                    level.idle_pss_mib = _memory(hv, idle, pss_mib)
                    level.idle_private_mib = _memory(hv, idle, private_dirty_mib)
                    for _ in range(probes):
                        level.probe_s.append(probe_once(env, hv, layers))
                except _MemoryLow as e:
                    result.stopped_because = (f"host memory low (< {MIN_AVAILABLE_MIB} MiB "
                                              f"available) with {e.args[0]} idle VMs")
                    result.limit = "memory"
                    break
                except HyperVMError as e:
                    level.failures += 1
                    result.stopped_because = f"failure with {target} idle VMs: {e}"
                    result.limit = f"boot failure: {type(e).__name__}"
                    break
                except OSError as e:  # a host resource ran out (files, processes, ...)
                    level.failures += 1
                    result.stopped_because = f"host error with {target} idle VMs: {e}"
                    result.limit = f"host resource: {e.strerror or type(e).__name__}"
                    break
                log.info("%d idle VMs: probe p50 %.2f s, idle RSS %s MiB", target, level.p50,
                         median_or_none(level.idle_rss_mib))
                assert level.p50 is not None
                if baseline is None:
                    baseline = statistics.median([*level.probe_s, *reference])
                    result.baseline_s = round(baseline, 4)
                if level.p50 > SLOWDOWN_LIMIT * baseline:
                    result.stopped_because = (f"probe p50 {level.p50:.2f} s with {target} idle VMs"
                                              f" > {SLOWDOWN_LIMIT:g} x {baseline:.2f} s")
                    result.limit = "latency (CPU)"
                    break
                result.max_concurrent_vms = target + 1
                if mem_available_mib() < MIN_AVAILABLE_MIB:
                    result.stopped_because = "host memory low"
                    result.limit = "memory"
                    break
            else:
                result.capped = True
                result.stopped_because = f"cap of {steps[-1] + 1} VMs reached"
                result.limit = f"none: the search's cap of {steps[-1] + 1} VMs"
            rss = [r for lv in result.levels for r in lv.idle_rss_mib]
            result.idle_rss_mib = median_or_none(rss)
        finally:
            for vm in idle:
                vm.destroy()
    return result


def _memory(hv: Hypervisor, vms: Sequence[HyperVM],
         measure: Callable[[int], float | None]) -> list[float]:
    out = []
    for vm in vms:
        pid = hv.qemu_pid(vm.name)
        value = measure(pid) if pid else None
        if value is not None:
            out.append(round(value, 1))
    return out


def median_or_none(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def idle_qemu_memory(env: VMEnv, layers: Sequence[Path], count: int, settle_s: float,
                     top: int = 8, **vm_kwargs: Any) -> list[dict[str, Any]]:
    """``count`` idle VMs of :func:`pod` booted at once, ``settle_s`` later: each QEMU's PSS
    and private MiB and where the private MiB are (by mapping, ``top`` largest); then
    destroyed. ``vm_kwargs`` go to each HyperVM (e.g. ``accel``, ``boot_files``)."""
    with Hypervisor(env.cfg.libvirt_uri) as hv, contextlib.ExitStack() as stack:
        vms = []
        for _ in range(count):
            vm = stack.enter_context(HyperVM(env.cfg, pod(layers, "idlemem"), hypervisor=hv,
                                             **vm_kwargs))
            vm.boot()
            vms.append(vm)
        time.sleep(settle_s)
        return [_qemu_memory(hv, vm.name, top) for vm in vms]


def idle_clone_memory(env: VMEnv, layers: Sequence[Path], count: int, settle_s: float,
                      top: int = 8) -> list[dict[str, Any]]:
    """As :func:`idle_qemu_memory`, for ``count`` idle *clones* of one template at once: each
    launched as a pod with HYPERVM_SNAPSHOT=on and no pool (a clone of its own from the
    snapshot of the shape; the first makes the template when the store has none). With
    HyperQEMU's ``ram-template`` they map the template's RAM from one file: the pages they
    only read are shared page cache, not private."""
    cfg = dataclasses.replace(env.cfg, use_pool=False, use_snapshot=True)
    with Hypervisor(cfg.libvirt_uri) as hv, contextlib.ExitStack() as stack:
        vms = []
        for _ in range(count):
            vm = launcher.boot_vm(cfg, pod(layers, "idleclone"), hypervisor=hv,
                                  boot_files=env.boot)
            stack.callback(vm.destroy)
            if not vm.warm:
                raise RuntimeError(f"{vm.name} was booted cold, not cloned (see the log)")
            vms.append(vm)
        time.sleep(settle_s)
        return [_qemu_memory(hv, vm.name, top) for vm in vms]


def idle_pool_memory(env: VMEnv, count: int, settle_s: float, top: int = 8,
                     fill_timeout: float = 600.0) -> list[dict[str, Any]]:
    """As :func:`idle_qemu_memory`, for ``count`` idle generic *pool* VMs (1 vCPU, 128 MiB:
    booted one after the other by a warm pool of their own, each with its warm-up container
    run), ``settle_s`` after the pool is full; the pool then stops (destroying them). The pool
    resolves its boot files itself (``env.cfg``'s, not ``env.boot``)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-idlemem-"))
    cfg = dataclasses.replace(env.cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=count, vcpus=1, memory_mib=GUEST_MIB,
                                    name=bench_name("idlepool")))
    pool.start()
    try:
        if not pool.wait_full(fill_timeout):
            raise RuntimeError(f"the pool did not fill in {fill_timeout:g} s: {pool.status()}")
        time.sleep(settle_s)
        return [_qemu_memory(pool.hypervisor, name, top) for name in pool.idle_vms()]
    finally:
        pool.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _qemu_memory(hv: Hypervisor, name: str, top: int) -> dict[str, Any]:
    pid = hv.qemu_pid(name)
    each = peers.rollup(pid) if pid else {"rss": 0.0, "pss": 0.0, "private": 0.0}
    return {"rss": each["rss"], "pss": each["pss"], "private": each["private"],
            "by_mapping": private_by_mapping(pid, top) if pid else [],
            "guest_ram": guest_ram_pages(pid) if pid else None}
