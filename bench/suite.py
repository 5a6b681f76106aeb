"""One benchmark run: every figure and its baseline, in the same run, into one document.

VM latencies are sampled in rounds (raw boot, container, cold launch, ... one after the
other), so a change in the machine's load hits figures and baselines alike. The cold
``hypervm run`` and its own raw boot are sampled first, before any pool starts, as a cold run
happens (bench.coldphase).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    coldphase,
    container,
    density,
    images,
    launch,
    peers,
    peersuite,
    profile,
    rawboot,
    shapes,
    snapfast,
)
from bench.results import check_targets, git_commit, machine_info
from bench.stats import ratio, summarize
from bench.vmenv import (
    VMEnv,
    leftover_domains,
    load_average,
    rss_by_mapping,
    wait_no_new_domains,
)
from executor.cli.fastrun_serve import RUN_OP, RunService
from executor.libvirt.hypervisor import Hypervisor
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.snapshot.keeper import StandbyKeeper
from vmimage.qemu import find_qemu

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
WARM_POOL_NOTE = (
    "LAUNCH -> TASK_RUNNING through the executor and the agent double, the VM claimed from a "
    "warm pool (executor/pool.py, `hypervm pool serve --image REF`) that keeps an idle 1 vCPU / "
    "128 MiB VM with the launch image's layers attached and mounted, full before each launch; "
    "the sandbox bound into QEMU's mount namespace; phases in details.summaries['warm launch: "
    "...']. warm_launch_generic_*: the same from a pool of {size} generic VMs (no --image), "
    "whose claim hot-adds the layers as SCSI LUNs")
#: added to the notes of warm_launch_* and warm_launch_ports_* (bench/README.md)
WARM_ALONE_NOTE = (
    "measured after the other latency rounds with only its own pool running: no other "
    "measurement's background work (another pool's refill, the standby keeper's next clone, a "
    "VM's teardown) overlaps a launch; the same launch, pool, size and number of samples")
#: run_true_p50_s and raw_boot_cold_host_p50_s (bench/README.md, "The cold phase")
COLD_HOST_NOTE = (
    "the cold phase (bench.coldphase), before any pool starts: no pool daemon, standby or "
    "other VM of the bench running, as on a host where a run is cold at all; {rounds} rounds "
    "of one raw boot and one cold run, which goes first alternating; the issue-17 ratio is "
    "ratios['run_true_p50 / raw_boot_cold_host_p50']. Until this phase, the cold run was taken "
    "in the latency rounds beside the pools' 4 idle VMs and a standby clone (5 TCG guests), "
    "right after a pool's refill, and raw_boot_p50_s (still taken there) earlier in the round "
    "(bench/README.md, 'The cold phase')")
POOL_SIZE = 2
#: the task's cpus of ``warm_launch_cpus_*``: with the executor's 0.1, 0.6 of the VM's one
#: vCPU, a CPU bound set at the claim (the suite's 0.9 + 0.1 is a whole vCPU, unbounded)
WARM_CPUS = 0.5
#: the pool refills one boot at a time; a full pool before each measurement keeps its boots
#: from loading the machine while something else is timed
POOL_FILL_S = 240.0


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    run_true_runs: int
    container_runs: int
    density_steps: tuple[int, ...]
    density_probes: int
    big_image_mb: int
    cache_hits: int
    #: runs of each peer workload per sandbox kind (bench/peersuite.py)
    workload_runs: int = 3
    #: one untimed run of each kind first (page cache, libvirt, executor imports)
    warm_up: bool = True
    #: rounds (the first ones) that also take a snapshot start of 2 vCPUs on an own clone and
    #: a warm launch with a CPU bound (WARM_CPUS): 10 samples of each keep the bench's time in
    #: check (each costs a launch, the warm one a pool refill: ~1.2 and ~2.5 s a round)
    extra_runs: int = 10
    #: rounds of the cold phase (bench.coldphase: a raw boot and a cold ``hypervm run`` each,
    #: no pool running), before the latency rounds
    cold_rounds: int = 12


#: a kernel command-line change measured against the current one (ACPI PCI interrupt-link
#: evaluation costs ~0.2 s per virtio-pci device under TCG, see boot_profile)
TUNED_CMDLINE = " pci=noacpi"

QUICK = Plan("quick", rounds=2, run_true_runs=1, container_runs=10, density_steps=(0, 1),
             density_probes=1, big_image_mb=8, cache_hits=3, warm_up=False, workload_runs=1,
             extra_runs=2, cold_rounds=2)
#: the density search goes up to 200 VMs (199 idle + the probe) unless something runs out
FULL = Plan("full", rounds=20, run_true_runs=10, container_runs=20,
            density_steps=(0, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 199),
            density_probes=3, big_image_mb=100, cache_hits=10)


def p(summary_p: float) -> float:
    return round(summary_p, 4)


def run(plan: Plan) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, Any]]]:
    """Run every measurement; returns (document, samples by name for the plot, density)."""
    started = time.monotonic()
    before = set(leftover_domains())
    env = VMEnv.load()
    doc: dict[str, Any] = {"schema": 1, "mode": plan.mode, "machine": machine_info(env.accel),
                           "commit": git_commit(REPO), "kernel": env.kernel.key or
                           str(env.kernel.path), "notes": {}, "details": {}}
    doc["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    qemu = find_qemu(env.cfg)
    doc["qemu"] = {"kind": qemu.kind, "path": str(qemu.path), "version": qemu.version,
                   "key": qemu.key, "tcg_flush": qemu.flushes_after_boot(env.cfg, env.accel)}
    details = doc["details"]
    with contextlib.ExitStack() as stack:
        imgs = stack.enter_context(images.serve_images(plan.big_image_mb, with_work=True))
        layers, hits = images.warm_shared_cache(env.cfg, imgs.busybox_ref, plan.cache_hits)
        assert imgs.work_ref is not None
        work_layers, _ = images.warm_shared_cache(env.cfg, imgs.work_ref, 0)
        log.info("images ready (%s)", imgs.busybox_ref)
        cold_samples: dict[str, list[float]] = {}
        with Hypervisor(env.cfg.libvirt_uri) as hv:  # before any pool: a cold host's run
            doc["machine"]["loadavg_1min_per_cold_round"] = coldphase.measure(
                env, hv, imgs.busybox_ref, plan.cold_rounds, cold_samples, warm_up=plan.warm_up)
        multi_ref = stack.enter_context(shapes.multilayer_ref(imgs))
        images.warm_shared_cache(env.cfg, multi_ref, 0)
        rounds = _latency_rounds(env, plan, {False: imgs.busybox_ref, True: multi_ref}, layers)
        samples, pool_rss, pool_private = rounds.samples, rounds.pool_rss, rounds.pool_private
        samples.update(cold_samples)
        doc["machine"]["loadavg_1min_per_round"] = rounds.loads
        details["standby_misses"] = rounds.standby_misses
        doc["machine"]["loadavg_1min_per_warm_round"] = _warm_rounds(
            env, plan, imgs.busybox_ref, samples)
        details["idle_pool_vm_rss_mib"] = pool_rss
        doc["idle_pool_vm_rss_mib"] = (round(statistics.median(pool_rss), 1) if pool_rss
                                       else None)
        details["idle_pool_vm_private_mib"] = pool_private
        doc["idle_pool_vm_private_mib"] = (round(statistics.median(pool_private["generic"]), 1)
                                           if pool_private["generic"] else None)
        log.info("peers: workloads, idle memory, network")
        with container.mounted_layer(layers[0]) as lower, peers.oci_root(lower) as root:
            measured = peersuite.measure(env, root, layers, imgs.work_ref, work_layers[0],
                                         plan.workload_runs)
        with Hypervisor(env.cfg.libvirt_uri) as hv:
            details["boot_profile"] = {
                "raw": profile.boot_profile(
                    rawboot.boot_once(env, hv, quiet=False, keep_console=True)),
                "hypervm": profile.hypervm_boot(env, layers)}
        log.info("density search over %s idle VMs", plan.density_steps)
        reference = [b + s for b, s in zip(samples["hypervm boot"],
                                           samples["start on booted vm"], strict=True)]
        dens = density.measure(env, layers, plan.density_steps, plan.density_probes, reference)
        log.info("importing a %d MB image", plan.big_image_mb)
        imported = images.measure_import(imgs, plan.cache_hits)
    # every VM is destroyed by its owner (and libvirt autodestroys it with the connection)
    leftovers = wait_no_new_domains(before)
    _fill(doc, samples, hits, dens, imported, plan)
    peersuite.fill(doc, samples, measured)
    doc["idle_vm_rss_by_mapping"] = _rss_breakdown(env, layers)
    details["idle_vm_memory_tb_cache_mib"] = {
        str(mib): _idle_memory(env, layers, mib) for mib in TB_CACHE_CHOICES}
    details["leftover_vms"] = leftovers
    doc["machine"]["loadavg_after"] = load_average()
    doc["kernel_at_end"] = env.current().kernel.key or str(env.current().kernel.path)
    doc["duration_s"] = round(time.monotonic() - started, 1)
    doc["targets"] = check_targets(doc)
    density_rows = [{"idle_vms": lv.idle_vms, "probe_p50_s": lv.p50, "probe_s": lv.probe_s,
                     "idle_rss_mib": lv.idle_rss_mib, "idle_pss_mib": lv.idle_pss_mib,
                     "idle_private_dirty_mib": lv.idle_private_mib,
                     "failures": lv.failures}
                    for lv in dens.levels]
    details["density"] = density_rows
    details["density_baseline_s"] = dens.baseline_s
    return doc, samples, density_rows


@dataclass
class Rounds:
    """What the latency rounds measured."""
    #: latency samples by name
    samples: dict[str, list[float]]
    #: the load before each round
    loads: list[float]
    #: the RSS (MiB) of the pools' idle VMs at the end of each round: booted, warmed up,
    #: waiting for a claim
    pool_rss: list[float]
    #: their private MiB by kind (``generic``, ``image``), read before the round's first
    #: generic claim: idle since the last round's end at least (past density.SETTLE_S), as
    #: bench.idlemem --pool reads them
    pool_private: dict[str, list[float]]
    #: the standby launches served by another clone, discarded and taken again
    standby_misses: list[str]


def _latency_rounds(env: VMEnv, plan: Plan, refs: dict[bool, str],
                    layers: list[Path]) -> Rounds:
    """The interleaved latency rounds (:class:`Rounds`); ``refs``: busybox's and the 3-layer
    image's (bench.shapes)."""
    ref = refs[False]
    samples: dict[str, list[float]] = {"container": [], "raw boot": [], "raw boot: qemu": [],
                                       "cold launch": [], "cold launch: vm boot": [],
                                       "warm launch": [], "warm launch (generic VM)": [],
                                       "warm launch (ports)": [],
                                       "start on booted vm": [],
                                       "hypervm boot": [], "hypervm boot" + TUNED_CMDLINE: [],
                                       peersuite.POOLED["learned"]: [],
                                       peersuite.POOLED["generic"]: [], "snapshot launch": [],
                                       "snapshot launch (standby)": [],
                                       **{kind: [] for kind in SNAPSHOT_2CPU}}
    loads: list[float] = []
    pool_rss: list[float] = []
    pool_private: dict[str, list[float]] = {"generic": [], "image": []}
    misses: list[str] = []
    with container.mounted_layer(layers[0]) as root, Hypervisor(env.cfg.libvirt_uri) as hv, \
            warm_pool(env, "pool") as pool, warm_pool(env, "ipool", ref) as image_pool, \
            learned_pool(env, "lpool", ref) as lpool, \
            peers.oci_root(root) as oci, peersuite.PeerRounds(oci).bundles() as peer_rounds, \
            snapfast.standby_pool(env, "spool", shapes.standby_count(env.cfg, snapfast.SHAPE)
                                  ) as (spool, keeper):
        container.run_once(root)
        snapfast.prime(ref, spool)  # the snapshot of the shape made, a standby of it wanted
        shapes.prime(refs, spool.cfg.pool_socket)  # and of the other shapes' templates
        pools = {"warm launch": image_pool, "warm launch (generic VM)": pool}
        if plan.warm_up:
            rawboot.boot_once(env, hv)
            launch.launch_once(ref)
            for each in pools.values():
                fill_pool(each)
                launch.launch_once(ref, each.cfg.pool_socket)
        for i in range(plan.rounds):
            loads.append(load_average()[0])
            log.info("round %d/%d (load %s)", i + 1, plan.rounds, loads[-1])
            per_round = max(1, plan.container_runs // plan.rounds)
            samples["container"] += [container.run_once(root) for _ in range(per_round)]
            peer_rounds.round()
            boot = rawboot.boot_once(env, hv)
            samples["raw boot"].append(boot.total_s)
            samples["raw boot: qemu"].append(boot.qemu_s)
            cold = launch.launch_once(ref)
            samples["cold launch"].append(cold.running_s)
            if cold.vm_boot_s is not None:
                samples["cold launch: vm boot"].append(cold.vm_boot_s)
            for phase, seconds in cold.phases.items():
                samples.setdefault("cold launch: " + phase, []).append(seconds)
            _snapshot_round(samples, ref, spool.cfg.pool_socket, keeper,
                            own_2cpu=i < plan.extra_runs, misses=misses)
            if i < plan.extra_runs:  # memory, a port, 2 tasks, 3 layers, 3 vCPUs: ~8 s
                shapes.shapes_round(refs, spool.cfg.pool_socket, keeper, snapfast.standby_ready,
                                    functools.partial(_add_launch, samples), misses,
                                    MAX_STANDBY_MISSES)
            for kind, each in (("generic", pool), ("image", image_pool)):
                pool_private[kind] += _idle_private(hv, each)
            fill_pool(pool)
            _warm_launch(samples, "warm launch (generic VM)", pool, ref, layers_attached=False)
            pooled_rounds(samples, {"generic": pool, "learned": lpool}, ref, i)
            for each in pools.values():
                fill_pool(each)
                pool_rss += _idle_rss(hv, each)
            fill_pool(lpool)  # its refill after the pooled run would overlap the boots below
            if i < plan.run_true_runs:
                boot_s, start_s = density.start_on_booted(env, hv, layers)
                samples["hypervm boot"].append(boot_s)
                samples["start on booted vm"].append(start_s)
                boot_s, _ = density.start_on_booted(env, hv, layers, TUNED_CMDLINE)
                samples["hypervm boot" + TUNED_CMDLINE].append(boot_s)
    samples.update(peer_rounds.samples)
    return Rounds(samples, loads, pool_rss, pool_private, misses)


#: the samples of a pod of 2 vCPUs (snapfast.TWO_VCPUS) started from the snapshot: on the
#: standby of the 1 vCPU template (``snapshot_launch_2cpu_standby_*``), on an own clone
#: (``snapshot_launch_2cpu_*``)
SNAPSHOT_2CPU = ("snapshot launch (standby, 2 vCPUs)", "snapshot launch (2 vCPUs)")
#: standby launches of a run served by another clone and taken again (details.standby_misses):
#: a rotation of the shared snapshot costs two (the new template, the stale standby dropped);
#: more than two rotations in a run say something is wrong
MAX_STANDBY_MISSES = 4


def _snapshot_round(samples: dict[str, list[float]], ref: str, sock: Path,
                    keeper: StandbyKeeper, own_2cpu: bool = True,
                    misses: list[str] | None = None) -> None:
    """One start from the snapshot of each kind: on the standby (``sock``: the standby pool)
    and on an own clone (of 2 vCPUs only with ``own_2cpu``), of the launch's shape (1 vCPU)
    and of 2 vCPUs (the second hot-plugged and onlined on the launch's clock). The standby is
    ready before each standby launch, and before the own clones, so the keeper's next clone
    after a standby launch overlaps none. A standby launch that another clone served is
    never a sample: with ``misses`` (the run's), taken again after the next standby is ready,
    up to MAX_STANDBY_MISSES in the run (each noted there), else RuntimeError."""
    starts = [("snapshot launch (standby)", sock, launch.CPUS),
              (SNAPSHOT_2CPU[0], sock, snapfast.TWO_VCPUS),
              ("snapshot launch", None, launch.CPUS)]
    if own_2cpu:
        starts.append((SNAPSHOT_2CPU[1], None, snapfast.TWO_VCPUS))
    for kind, pool_sock, cpus in starts:
        while True:
            snapfast.standby_ready(keeper)
            snap = launch.launch_once(ref, pool_sock, snapshot=True, cpus=cpus)
            if pool_sock is None or snap.standby or misses is None \
                    or len(misses) >= MAX_STANDBY_MISSES:
                break
            # the store rotated the template under the standby (HYPERVM_SNAPSHOT_MAX_CLONES,
            # _MAX_AGE: the key is shared with every launch of the host): this launch made
            # the new template, the next one's claim drops the stale standby, and the keeper
            # then clones the new template: the third is a sample
            log.warning("%s: not on the standby (rotated snapshot?): discarded", kind)
            misses.append(kind)
        if snap.standby != (pool_sock is not None):
            raise RuntimeError(f"{kind}: not the expected clone (see the executor log)")
        samples.setdefault(kind, []).append(snap.running_s)
        for phase, seconds in snap.phases.items():
            samples.setdefault(f"{kind}: {phase}", []).append(seconds)


def _add_launch(samples: dict[str, list[float]], kind: str, snap: launch.Launch) -> None:
    samples.setdefault(kind, []).append(snap.running_s)
    for phase, seconds in snap.phases.items():
        samples.setdefault(f"{kind}: {phase}", []).append(seconds)


def _warm_rounds(env: VMEnv, plan: Plan, ref: str, samples: dict[str, list[float]]
                 ) -> list[float]:
    """``warm launch``, ``warm launch (ports)`` and in the first ``plan.extra_runs`` rounds
    ``warm launch (cpus 0.5)`` (WARM_CPUS), one of each per round, with only their own pool
    running (WARM_ALONE_NOTE), the pool full before each; the load before each round."""
    loads = []
    with warm_pool(env, "ipool", ref) as image_pool:
        if plan.warm_up:
            fill_pool(image_pool)
            launch.launch_once(ref, image_pool.cfg.pool_socket)
        for i in range(plan.rounds):
            fill_pool(image_pool)
            loads.append(load_average()[0])
            log.info("warm launch round %d/%d, its pool alone (load %s)", i + 1, plan.rounds,
                     loads[-1])
            _warm_launch(samples, "warm launch", image_pool, ref, layers_attached=True)
            fill_pool(image_pool)
            _warm_launch(samples, "warm launch (ports)", image_pool, ref, layers_attached=True,
                         port=launch.free_port())
            if i < plan.extra_runs:
                fill_pool(image_pool)
                _warm_launch(samples, WARM_CPUS_KIND, image_pool, ref, layers_attached=True,
                             cpus=WARM_CPUS)
    return loads


WARM_CPUS_KIND = f"warm launch (cpus {WARM_CPUS:g})"


def _warm_launch(samples: dict[str, list[float]], kind: str, pool: WarmPool, ref: str, *,
                 layers_attached: bool, port: int | None = None,
                 cpus: float = launch.CPUS) -> None:
    """One warm launch from ``pool`` (full), its ``kind`` checked: an image pool's VM
    (``layers_attached``) or a generic one; with ``port``, the task publishes that host port:
    the claim publishes it on the VM (warm_launch_ports_p50_s); ``cpus``: the task's."""
    warm = launch.launch_once(ref, pool.cfg.pool_socket, port=port, cpus=cpus)
    if not warm.warm or warm.warm_layers != layers_attached:
        raise RuntimeError(f"{kind}: not the expected pool VM (see the executor log)")
    samples.setdefault(kind, []).append(warm.running_s)
    for phase, seconds in warm.phases.items():
        samples.setdefault(f"{kind}: {phase}", []).append(seconds)


def _idle_rss(hv: Hypervisor, pool: WarmPool) -> list[float]:
    from bench.vmenv import rss_mib

    pids = [hv.qemu_pid(name) for name in pool.idle_vms()]
    return [round(r, 1) for r in (rss_mib(pid) for pid in pids if pid) if r is not None]


def _idle_private(hv: Hypervisor, pool: WarmPool) -> list[float]:
    """Private_Clean + Private_Dirty MiB of each idle VM's QEMU in ``pool`` (peers.rollup, as
    bench.idlemem --pool reads them)."""
    pids = [hv.qemu_pid(name) for name in pool.idle_vms()]
    private = (peers.rollup(pid)["private"] for pid in pids if pid)
    return [round(mib, 1) for mib in private if mib > 0]  # 0: the QEMU is gone


@contextlib.contextmanager
def warm_pool(env: VMEnv, name: str, image: str | None = None,
              learn: int = 0) -> Iterator[WarmPool]:
    """A warm pool of the launch shape on a socket of its own (``hypervm run`` and the cold
    launches, which set HYPERVM_POOL=off, never take from it): ``POOL_SIZE`` generic VMs, or
    with ``image`` one VM with that image's layers attached, or with ``learn`` only VMs of
    the images run through it (executor.pool.learn)."""
    from bench.images import scratch_dir
    from bench.vmenv import bench_name

    sock_dir = scratch_dir(name)
    cfg = dataclasses.replace(env.cfg, pool_socket_override=sock_dir / "pool.sock")
    config = PoolConfig(size=0 if image or learn else POOL_SIZE,
                        images=(image,) if image else (), learn_images=learn,
                        vcpus=1, memory_mib=launch.MEMORY_MIB, name=bench_name(name))
    pool = WarmPool(cfg, config, accel=env.accel)
    pool.add_service(RUN_OP, RunService(pool))  # as hypervm pool serve: the fast hypervm run
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


@contextlib.contextmanager
def learned_pool(env: VMEnv, name: str, ref: str) -> Iterator[WarmPool]:
    """A pool that learns one image, after ``hypervm run ref -- true``'s first run through it
    (no VM for it yet: served cold, untimed): what a user's pool is after the first run."""
    with warm_pool(env, name, learn=1) as pool:
        peersuite.run_true_pooled(ref, pool.cfg.pool_socket)
        yield pool


def pooled_rounds(samples: dict[str, list[float]], pools: dict[str, WarmPool],
                  ref: str, first: int = 0) -> None:
    """One pooled ``hypervm run … true`` from each pool (by the kind of VM it serves:
    peersuite.POOLED), each full before its sample; ``first``: which goes first (alternate it
    over the rounds)."""
    kinds = list(pools)
    for kind in kinds[first % len(kinds):] + kinds[:first % len(kinds)]:
        fill_pool(pools[kind])
        samples.setdefault(peersuite.POOLED[kind], []).append(
            peersuite.pooled_sample(pools[kind], ref, kind))


def fill_pool(pool: WarmPool) -> None:
    """Wait until ``pool`` is full: its refill boots never overlap what is timed next."""
    if not pool.wait_full(POOL_FILL_S):
        raise RuntimeError(f"the warm pool did not fill within {POOL_FILL_S:g} s: "
                           f"{pool.status()}")


def _fill(doc: dict[str, Any], samples: dict[str, list[float]], hits: list[float],
          dens: density.DensityResult, imported: images.ImportResult, plan: Plan) -> None:
    summaries = {name: summarize(v) for name, v in samples.items() if v}
    doc["details"]["summaries"] = {n: s.as_dict() for n, s in summaries.items()}
    doc["details"]["samples"] = {n: [round(x, 4) for x in v] for n, v in samples.items()}
    raw, cold, warm = summaries["raw boot"], summaries["cold launch"], summaries["warm launch"]
    generic = summaries["warm launch (generic VM)"]
    ctr, run_true = summaries["container"], summaries[coldphase.RUN]
    raw_cold = summaries[coldphase.RAW]
    doc.update({
        "raw_boot_p50_s": p(raw.p50), "raw_boot_p95_s": p(raw.p95),
        "container_p50_s": p(ctr.p50), "container_p95_s": p(ctr.p95),
        "cold_launch_p50_s": p(cold.p50), "cold_launch_p95_s": p(cold.p95),
        "warm_launch_p50_s": p(warm.p50), "warm_launch_p95_s": p(warm.p95),
        "warm_launch_generic_p50_s": p(generic.p50), "warm_launch_generic_p95_s": p(generic.p95),
        "run_true_p50_s": p(run_true.p50), "run_true_p95_s": p(run_true.p95),
        "raw_boot_cold_host_p50_s": p(raw_cold.p50),
        "raw_boot_cold_host_p95_s": p(raw_cold.p95),
        "idle_vm_rss_mib": dens.idle_rss_mib,
        "max_concurrent_vms": dens.max_concurrent_vms,
        "import_mb_s": round(imported.mb_s, 2),
        "cache_hit_extra_s": p(summarize(hits).p50),
        **shapes.headline(samples),
    })
    doc["notes"]["snapshot_launch_shapes"] = shapes.NOTE.format(rounds=plan.extra_runs)
    for key in ("warm_launch_p50_s", "warm_launch_p95_s", "warm_launch_generic_p50_s",
                "warm_launch_generic_p95_s"):
        doc["notes"][key] = WARM_POOL_NOTE.format(size=POOL_SIZE)
    for key in ("warm_launch_p50_s", "warm_launch_p95_s"):
        doc["notes"][key] += "; " + WARM_ALONE_NOTE
    bounded = summaries.get(WARM_CPUS_KIND)
    doc["warm_launch_cpus_p50_s"] = p(bounded.p50) if bounded else None
    doc["warm_launch_cpus_p95_s"] = p(bounded.p95) if bounded else None
    doc["notes"]["warm_launch_cpus_p50_s"] = doc["notes"]["warm_launch_cpus_p95_s"] = (
        f"warm_launch_p50_s's launch (the image pool, full before each launch) of a task with "
        f"cpus {WARM_CPUS:g}: with the executor's 0.1, {WARM_CPUS + 0.1:g} of the VM's one "
        "vCPU, so the claim sets a CPU bound (QEMU's cgroup quota) that the suite's task of a "
        f"whole vCPU never pays; taken in the first {plan.extra_runs} warm rounds, after "
        "warm_launch_ports_p50_s, with only its pool running (no other measurement's "
        "background work overlaps it); phases in details.summaries['" + WARM_CPUS_KIND +
        ": ...']")
    doc["notes"]["run_true_p50_s"] = doc["notes"]["raw_boot_cold_host_p50_s"] = (
        COLD_HOST_NOTE.format(rounds=plan.cold_rounds))
    paired = coldphase.paired_p50(samples[coldphase.RUN], samples[coldphase.RAW])
    doc["details"]["run_true_minus_raw_boot_cold_host_paired_p50_s"] = (
        None if paired is None else p(paired))
    doc["max_concurrent_vms_limit"] = dens.limit
    doc["notes"]["max_concurrent_vms"] = (
        f"idle 128 MiB HyperVMs + 1 probe VM; search stopped: {dens.stopped_because}"
        + (" (a lower bound: the cap was reached)" if dens.capped else ""))
    last = dens.levels[-1] if dens.levels else None
    doc["idle_vm_pss_mib"] = density.median_or_none(last.idle_pss_mib) if last else None
    doc["idle_vm_private_dirty_mib"] = (density.median_or_none(last.idle_private_mib)
                                        if last else None)
    doc["notes"]["idle_vm_private_dirty_mib"] = (
        "Private_Dirty of each idle VM's QEMU (guest RAM, translation cache, heap, relocated "
        "data), with the most idle VMs of the density search: what one more VM costs at least; "
        "idle_vm_rss_mib also counts the QEMU binary, its libraries and the kernel file, which "
        "every VM shares")
    if dens.idle_rss_mib is None:
        doc["notes"]["idle_vm_rss_mib"] = "no idle VM was measured"
    doc["notes"]["idle_pool_vm_private_mib"] = (
        "Private_Clean + Private_Dirty of the generic warm pool's idle VMs' QEMUs (median of "
        "every round's; the image pool's VM in details, by kind): booted, TCG translations "
        "flushed, one warm-up container run, as bench.idlemem --pool measures them; read "
        "before each round's first generic claim, so each has been idle since the last round "
        "ended at least (past density.SETTLE_S); idle_vm_private_mib is a cold-booted VM")
    doc["notes"]["idle_pool_vm_rss_mib"] = (
        "QEMU VmRSS of the warm pools' idle VMs at the end of each round (median): booted, TCG "
        "translations flushed, then one warm-up container run, whose translations stay for the "
        "claimer's START; idle_vm_rss_mib is a VM booted by a HyperVM and left idle")
    doc["notes"]["cold_launch_p50_s"] = doc["notes"]["cold_launch_p95_s"] = (
        f"a one-task LAUNCH with cpus {launch.CPUS:g} + the executor's 0.1 = one whole vCPU, so "
        "no CFS quota throttles the VM (below that the executor caps the vCPU and the guest "
        "boot slows in proportion); phases from the executor log in details.summaries")
    doc["notes"]["cache_hit_extra_s"] = (
        "ImageStore.resolve of the cached launch image by tag, as each launch does before its "
        f"VM boots (pull policy 'missing': no registry request); p50 of {len(hits)}. A pull "
        "that looks the tag up again (--pull always) costs a manifest request and a skopeo "
        "subprocess: details.import.cache_hit_big_image_p50_s")
    doc["notes"]["import_mb_s"] = (
        f"{imported.import_s:.2f} s to pull a {plan.big_image_mb} MB incompressible image "
        "into an empty cache (fetch, verify, unpack, mkfs.erofs); MB/s of compressed bytes")
    doc["details"]["import"] = {
        "seconds": round(imported.import_s, 3),
        "cache_hit_big_image_p50_s": p(summarize(imported.cache_hit_s).p50),
        "cache_hit_by_digest_p50_s": round(summarize(imported.cache_hit_by_digest_s).p50, 6),
        "offline_lookup_p50_s": round(summarize(imported.offline_lookup_s).p50, 6)}
    doc["details"]["cache_hit_s"] = [round(x, 4) for x in hits]
    vm_boot = summaries.get("cold launch: vm boot")
    floor = summaries.get("start on booted vm")
    plain, tuned = summaries.get("hypervm boot"), summaries.get("hypervm boot" + TUNED_CMDLINE)
    doc["ratios"] = {
        "cold_launch_p50 / raw_boot_p50": ratio(cold.p50, raw.p50),
        "cold_launch_p95 / raw_boot_p95": ratio(cold.p95, raw.p95),
        "cold_launch_p50 / container_p50": ratio(cold.p50, ctr.p50),
        "raw_boot_p50 / container_p50": ratio(raw.p50, ctr.p50),
        "run_true_p50 / raw_boot_p50": ratio(run_true.p50, raw.p50),
        "run_true_p50 / raw_boot_cold_host_p50": ratio(run_true.p50, raw_cold.p50),
        "run_true_p50 / container_p50": ratio(run_true.p50, ctr.p50),
        "cold_launch_vm_boot_p50 / raw_boot_p50":
            ratio(vm_boot.p50 if vm_boot else None, raw.p50),
        "warm_launch_p50 / container_p50": ratio(warm.p50, ctr.p50),
        "warm_launch_generic_p50 / container_p50": ratio(generic.p50, ctr.p50),
        "warm_launch_p50 / warm_launch_generic_p50": ratio(warm.p50, generic.p50),
        "warm_launch_p50 / cold_launch_p50": ratio(warm.p50, cold.p50),
        "warm_launch_p50 / raw_boot_p50": ratio(warm.p50, raw.p50),
        "start_on_booted_vm_p50 / container_p50": ratio(floor.p50 if floor else None, ctr.p50),
        f"hypervm_boot{TUNED_CMDLINE}_p50 / hypervm_boot_p50": ratio(
            tuned.p50 if tuned else None, plain.p50 if plain else None),
    }


#: the TCG translation cache sizes whose idle RSS is measured besides QEMU's default (None)
TB_CACHE_CHOICES = (None, 24, 8)


def _idle_memory(env: VMEnv, layers: list[Path], tb_cache_mib: int | None) -> dict[str, Any]:
    """RSS and PSS of one idle HyperVM's QEMU with the given translation cache cap."""
    from bench.vmenv import private_dirty_mib, pss_mib, rss_mib
    from executor.vm import HyperVM

    cfg = dataclasses.replace(env.cfg, tb_cache_mib=tb_cache_mib)
    with Hypervisor(env.cfg.libvirt_uri) as hv:
        with HyperVM(cfg, density.pod(layers, "tb"), hypervisor=hv, accel=env.accel) as vm:
            vm.boot()
            boot_s = vm.boot_seconds
            time.sleep(density.SETTLE_S)
            pid = hv.qemu_pid(vm.name)
            rss, pss = (rss_mib(pid), pss_mib(pid)) if pid else (None, None)
            private = private_dirty_mib(pid) if pid else None
    return {"rss_mib": rss and round(rss, 1), "pss_mib": pss and round(pss, 1),
            "private_dirty_mib": private and round(private, 1),
            "boot_s": boot_s and round(boot_s, 3)}


def _rss_breakdown(env: VMEnv, layers: list[Path]) -> list[dict[str, Any]]:
    """The largest resident mappings of one idle HyperVM's QEMU (after it settled)."""
    from executor.vm import HyperVM

    with Hypervisor(env.cfg.libvirt_uri) as hv:
        with HyperVM(env.cfg, density.pod(layers, "rss"), hypervisor=hv, accel=env.accel) as vm:
            vm.boot()
            time.sleep(density.SETTLE_S)
            pid = hv.qemu_pid(vm.name)
            return rss_by_mapping(pid, 6) if pid else []
