"""hypervm beside runc and gVisor in one run: latency samples taken in the suite's rounds
(:class:`PeerRounds`), then workloads, idle memory and network throughput (:func:`measure`),
and the headline keys with every figure as a ratio to runc (:func:`fill`).

``python -m bench.peersuite [--quick] [--out FILE]`` runs only this part (images, the peers,
hypervm's own side of each figure, no latency rounds of the main suite) and writes a partial
result clearly marked ``"partial": true``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import peers
from bench.container import mounted_layer
from bench.peers import oci_root
from bench.runtrue import TIMEOUT, hypervm_argv
from bench.stats import ratio, summarize
from bench.vmenv import GUEST_MIB, VMEnv, bench_name

log = logging.getLogger(__name__)

#: guest memory and writable layer (a tmpfs in guest RAM) for the workloads: the syscall
#: workload unpacks ~50 MB into /tmp
WORK_MIB, WORK_WRITABLE_MIB = 512, 256
NET_MB = 20
IDLE_COUNT = 3
PEER_NAMES = ("runc", "runsc")


@dataclass
class PeerRounds:
    """Bundles on the busybox root for the latency rounds; one sample of each per round."""
    root: Path
    samples: dict[str, list[float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def bundles(self) -> Iterator[PeerRounds]:
        with peers.bundle(self.root, ("true",)) as true_b, \
                peers.bundle(self.root, ("echo", "up")) as echo_b:
            self._true, self._echo = true_b, echo_b
            yield self

    def round(self) -> None:
        for rt in (peers.RUNC, peers.RUNSC):
            self.samples.setdefault(f"{rt.name} start", []).append(peers.start(rt, self._echo))
            self.samples.setdefault(f"{rt.name} run true", []).append(
                peers.run_true(rt, self._true))


def run_true_pooled(ref: str, pool_socket: Path) -> float:
    """``hypervm run --memory 128 IMAGE -- true`` taking its VM from the warm pool at
    ``pool_socket`` (the suite's generic pool: 1 vCPU, 128 MiB, a NIC)."""
    argv = [*hypervm_argv(), "run", "--name", bench_name("runpool"), "--quiet", "--cpus", "1",
            "--memory", str(GUEST_MIB), ref, "--", "true"]
    env = {**os.environ, "HYPERVM_POOL": "auto", "HYPERVM_POOL_SOCKET": str(pool_socket)}
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=env)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"hypervm run (pool) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


#: the pooled run's samples by the kind of pool VM that served them: a learned image VM (a pool
#: that learned the image at its first run, as a user's does: ``run_true_pool_p50_s``) and a
#: generic VM (``run_true_pool_generic_p50_s``)
POOLED = {"learned": "hypervm run true (pool)", "generic": "hypervm run true (pool, generic VM)"}
POOLED_NOTE = ("hypervm run --cpus 1 --memory 128 IMAGE -- true with a warm pool serving: "
               "{what}; the pool refilled before each sample")
POOLED_WHAT = {
    "learned": "served by the image VM of a pool that learned the image at its first run "
               "(hypervm pool serve --learn-images, the default), as every run after the first "
               "is when the pool has refilled",
    "generic": "served by a generic pool VM (the image's layers hot-added at the claim, the "
               "container made by its START): a run of an image the pool has not learned, or "
               "one that comes before the learned VM's replacement has booted"}


def pooled_sample(pool: Any, ref: str, expected: str) -> float:
    """One :func:`run_true_pooled` from ``pool`` (a WarmPool of this process), checked to be
    served by the ``expected`` kind of VM (``served_by`` of its status: generic, image,
    learned)."""
    before = dict(pool.served_by)
    took = run_true_pooled(ref, pool.cfg.pool_socket)
    served = [kind for kind, n in pool.served_by.items() if n != before.get(kind)]
    if served != [expected]:
        raise RuntimeError(f"hypervm run (pool): served by {served or 'no pool VM'}, not a "
                           f"{expected} VM")
    return took


def hypervm_workload(ref: str, script: str) -> float:
    argv = [*hypervm_argv(), "run", "--name", bench_name("work"), "--quiet", "--memory",
            str(WORK_MIB), "--network", "none", ref, "--", "sh", "-c", script]
    env = {**os.environ, "HYPERVM_POOL": "off",
           "HYPERVM_WRITABLE_LAYER_MIB": str(WORK_WRITABLE_MIB)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=peers.TIMEOUT,
                          check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"hypervm workload failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return peers.inner_seconds(proc.stdout)


def hypervm_idle_memory(env: VMEnv, layers: list[Path], count: int,
                        clones: bool = False) -> list[dict[str, float]]:
    """PSS and private MiB of the QEMU of each of ``count`` idle 128 MiB HyperVMs at once, and
    where the private MiB are (by mapping); ``clones``: idle clones of one template (snapshot
    starts), not cold-booted VMs."""
    from bench import density  # heavy (libvirt, executor.vm): only this measurement needs it

    measured = (density.idle_clone_memory(env, layers, count, density.SETTLE_S) if clones else
                density.idle_qemu_memory(env, layers, count, density.SETTLE_S,
                                         accel=env.accel))
    return [{"pss_mib": round(m["pss"], 1), "private_mib": round(m["private"], 1),
             "processes": 1, "private_by_mapping": m["by_mapping"]}
            for m in measured]


def measure(env: VMEnv, busybox_root: Path, busybox_layers: list[Path], work_ref: str,
            work_layer: Path, runs: int) -> dict[str, Any]:
    """Workloads (``runs`` each, interleaved), idle memory, network: by sandbox kind."""
    out: dict[str, Any] = {"syscall_workload": {}, "pipe_workload": {}, "idle_memory": {},
                           "network_mb_s": {}}
    scripts = {"syscall_workload": peers.SYSCALL_SCRIPT, "pipe_workload": peers.PIPE_SCRIPT}
    with mounted_layer(work_layer) as work_lower, oci_root(work_lower) as work_root:
        for i in range(runs):
            log.info("peer workloads %d/%d", i + 1, runs)
            for name, script in scripts.items():
                for rt in (peers.RUNC, peers.RUNSC):
                    out[name].setdefault(rt.name, []).append(peers.workload(rt, work_root, script))
                out[name].setdefault("hypervm", []).append(hypervm_workload(work_ref, script))
    for rt in (peers.RUNC, peers.RUNSC):
        out["idle_memory"][rt.name] = peers.idle_memory(rt, busybox_root, IDLE_COUNT)
        out["network_mb_s"][rt.name] = peers.network_mb_s(rt, busybox_root, NET_MB)
    out["idle_memory"]["hypervm"] = hypervm_idle_memory(env, busybox_layers, IDLE_COUNT)
    out["idle_clone_memory"] = hypervm_idle_memory(env, busybox_layers, IDLE_COUNT, clones=True)
    from bench import network

    through = network.through_port(env.cfg, busybox_layers[0], NET_MB, 5)
    out["network_mb_s"]["hypervm"] = through["vm_to_host_download_MBps"]
    return out


SNAPSHOT_2CPU_NOTE = (
    "the snapshot launches of a pod of 2 vCPUs (task cpus 1.9 + the executor's 0.1), in the "
    "same rounds: *_2cpu_standby_*: on the standby clone the pool daemon keeps for the "
    "template (2 vCPUs present, 1 online), its second vCPU onlined on the launch's clock "
    "(issue 18's start for any shape: target <= 0.3 s and <= runsc_start_p50_s); *_2cpu_*: on "
    "a clone of its own, in the first rounds only (the suite's Plan.extra_runs). The standby "
    "is ready before each standby launch and before the own clones (the keeper's next clone "
    "overlaps no sample); phases in details.summaries["
    "'snapshot launch (standby, 2 vCPUs): ...']")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _idle(measured: dict[str, Any], kind: str, key: str) -> float | None:
    return _median_of(measured["idle_memory"].get(kind, []), key)


def _median_of(entries: list[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in entries]
    return round(statistics.median(values), 1) if values else None


def fill(doc: dict[str, Any], samples: dict[str, list[float]], measured: dict[str, Any]
         ) -> None:
    """The peer headline keys, notes, ``peers`` (one table: every figure and its ratio to
    runc) and the details."""
    def p50(name: str) -> float | None:
        values = samples.get(name)
        return round(summarize(values).p50, 4) if values else None

    def p95(name: str) -> float | None:
        values = samples.get(name)
        return round(summarize(values).p95, 4) if values else None

    work = {k: {kind: _median(v) for kind, v in measured[k].items()}
            for k in ("syscall_workload", "pipe_workload")}
    doc.update({
        "runc_start_p50_s": p50("runc start"), "runsc_start_p50_s": p50("runsc start"),
        "runc_run_true_p50_s": p50("runc run true"),
        "runsc_run_true_p50_s": p50("runsc run true"),
        "run_true_pool_p50_s": p50(POOLED["learned"]),
        "run_true_pool_generic_p50_s": p50(POOLED["generic"]),
        "runc_start_p95_s": p95("runc start"), "runsc_start_p95_s": p95("runsc start"),
        "runc_run_true_p95_s": p95("runc run true"),
        "runsc_run_true_p95_s": p95("runsc run true"),
        "run_true_pool_p95_s": p95(POOLED["learned"]),
        "run_true_pool_generic_p95_s": p95(POOLED["generic"]),
        "snapshot_launch_p50_s": p50("snapshot launch"),
        "snapshot_launch_p95_s": p95("snapshot launch"),
        "snapshot_launch_standby_p50_s": p50("snapshot launch (standby)"),
        "snapshot_launch_standby_p95_s": p95("snapshot launch (standby)"),
        "snapshot_launch_2cpu_standby_p50_s": p50("snapshot launch (standby, 2 vCPUs)"),
        "snapshot_launch_2cpu_standby_p95_s": p95("snapshot launch (standby, 2 vCPUs)"),
        "snapshot_launch_2cpu_p50_s": p50("snapshot launch (2 vCPUs)"),
        "snapshot_launch_2cpu_p95_s": p95("snapshot launch (2 vCPUs)"),
        "warm_launch_ports_p50_s": p50("warm launch (ports)"),
        "warm_launch_ports_p95_s": p95("warm launch (ports)"),
        "idle_vm_private_mib": _idle(measured, "hypervm", "private_mib"),
        "idle_vm_qemu_pss_mib": _idle(measured, "hypervm", "pss_mib"),
        "snapshot_clone_idle_private_mib": _median_of(measured.get("idle_clone_memory", []),
                                                      "private_mib"),
        "runsc_idle_pss_mib": _idle(measured, "runsc", "pss_mib"),
        "runsc_idle_private_mib": _idle(measured, "runsc", "private_mib"),
        "runc_idle_pss_mib": _idle(measured, "runc", "pss_mib"),
        "runc_idle_private_mib": _idle(measured, "runc", "private_mib"),
        "syscall_workload_s": work["syscall_workload"],
        "pipe_workload_s": work["pipe_workload"],
        "network_mb_s": measured["network_mb_s"],
    })
    notes = doc.setdefault("notes", {})
    for kind, key in (("learned", "run_true_pool"), ("generic", "run_true_pool_generic")):
        for stat in ("p50", "p95"):
            notes[f"{key}_{stat}_s"] = POOLED_NOTE.format(what=POOLED_WHAT[kind])
    notes["snapshot_launch_p50_s"] = (
        "LAUNCH → TASK_RUNNING with HYPERVM_SNAPSHOT=on and HYPERVM_POOL=off: the executor starts "
        "a clone of its own from the snapshot of the task's shape (made by an untimed launch "
        "before the rounds) — a start for any shape with no VM waiting; phases in "
        "details.summaries['snapshot launch: …']. snapshot_launch_standby_p50_s: the same "
        "launch on a standby clone a pool daemon keeps for the shape (pool serve --standby 1, "
        "executor.snapshot.keeper: the snapshot loaded, reseeded and run ahead, ready before "
        "each launch; it costs about an idle pool VM's memory while it waits)")
    for key in ("snapshot_launch_2cpu_standby_p50_s", "snapshot_launch_2cpu_standby_p95_s",
                "snapshot_launch_2cpu_p50_s", "snapshot_launch_2cpu_p95_s"):
        notes[key] = (
            SNAPSHOT_2CPU_NOTE if doc[key] is not None else
            "not measured in this run (bench.peersuite alone runs no snapshot launch)")
    notes["warm_launch_ports_p50_s"] = (
        "warm_launch_p50_s's launch (the image pool, full before each launch) of a task with "
        "one port in its ports resources: the pool checks the port as a cold boot does, "
        "answers the claim and publishes the port on the claimed VM (QEMU hostfwd_add over the "
        "monitor) while the claimer takes it over, which waits for it before its START; "
        "measured with warm_launch_p50_s, its pool alone (nothing else of the bench running); "
        "phases in details.summaries['warm launch (ports): ...']"
        if doc["warm_launch_ports_p50_s"] is not None else
        "not measured in this run (bench.peersuite alone runs no warm launch)")
    notes["network_mb_s"] = (
        f"download of {NET_MB} MB from busybox httpd in the sandbox to host curl on 127.0.0.1: "
        "hypervm through a published port (QEMU user-mode hostfwd); runc in the host's network "
        "namespace, runsc with --network=host (neither publishes ports without a CNI setup)")
    notes["syscall_workload_s"] = (
        f"tar x of a {peers.TREE_DIRS * peers.TREE_FILES}-file ~50 MB tree into /tmp (a "
        "tmpfs) + stat of every entry, timed by the sandbox's clock (/proc/uptime), median; "
        f"hypervm with {WORK_MIB} MiB, cold, under TCG")
    notes["pipe_workload_s"] = (
        "head -c 50000000 /dev/zero | sha256sum, timed inside, median. hypervm runs it under "
        "TCG (every guest instruction translated, no KVM on this host); gVisor's ptrace "
        "platform pays a host context switch per syscall; runc runs natively")
    notes["idle_vm_private_mib"] = (
        "Private_Clean + Private_Dirty of an idle 128 MiB HyperVM's QEMU (median of "
        f"{IDLE_COUNT} at once); runsc_idle_*: sentry + gofer + ptrace stubs of an idle "
        "`sleep` sandbox, summed. snapshot_clone_idle_private_mib: the same of "
        f"{IDLE_COUNT} idle clones of one template at once (pods started with "
        "HYPERVM_SNAPSHOT=on, no pool: what snapshot starts and standby clones are); with "
        "HyperQEMU's ram-template they map the template's RAM from one file, copy-on-write")
    doc["peers"] = peer_table(doc)
    doc.setdefault("details", {})["peers"] = measured


#: rows of the peer table: figure -> (hypervm key or value path, runsc, runc)
def peer_table(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every peer figure by sandbox, with its ratio to runc."""
    def per_kind(key: str) -> dict[str, Any]:
        value = doc.get(key) or {}
        return {k: value.get(k) for k in ("hypervm", "runsc", "runc")}

    rows: dict[str, dict[str, Any]] = {
        "start p50 (s)": {"hypervm cold": doc.get("cold_launch_p50_s"),
                          "hypervm warm": doc.get("warm_launch_p50_s"),
                          "runsc": doc.get("runsc_start_p50_s"),
                          "runc": doc.get("runc_start_p50_s")},
        "run true p50 (s)": {"hypervm cold": doc.get("run_true_p50_s"),
                             "hypervm warm": doc.get("run_true_pool_p50_s"),
                             "runsc": doc.get("runsc_run_true_p50_s"),
                             "runc": doc.get("runc_run_true_p50_s")},
        "start p50, 2 vCPUs, standby (s)": {
            "hypervm": doc.get("snapshot_launch_2cpu_standby_p50_s"),
            "runsc": doc.get("runsc_start_p50_s"), "runc": doc.get("runc_start_p50_s")},
        "idle PSS (MiB)": {"hypervm": doc.get("idle_vm_qemu_pss_mib"),
                           "runsc": doc.get("runsc_idle_pss_mib"),
                           "runc": doc.get("runc_idle_pss_mib")},
        "idle private (MiB)": {"hypervm cold": doc.get("idle_vm_private_mib"),
                               "hypervm warm": doc.get("idle_pool_vm_private_mib"),
                               "runsc": doc.get("runsc_idle_private_mib"),
                               "runc": doc.get("runc_idle_private_mib")},
        "syscall workload (s)": per_kind("syscall_workload_s"),
        "pipe workload (s)": per_kind("pipe_workload_s"),
        "network (MB/s)": per_kind("network_mb_s"),
    }
    for row in rows.values():
        base = row.get("runc")
        row["ratio_to_runc"] = {k: ratio(v, base) for k, v in row.items() if k != "runc"}
    return rows


def peer_lines(doc: dict[str, Any]) -> list[str]:
    """The peer table as text (value, and x runc)."""
    table = doc.get("peers") or {}
    lines = [f"{'peers (x runc)':24} " + "  ".join(f"{k:>20}" for k in
             ("hypervm cold", "hypervm warm", "runsc", "runc"))]
    for name, row in table.items():
        cells = []
        for kind in ("hypervm cold", "hypervm warm", "runsc", "runc"):
            key = "hypervm" if kind == "hypervm cold" and kind not in row else kind
            value = row.get(key)
            times = row.get("ratio_to_runc", {}).get(key)
            cells.append("-" if value is None else
                         f"{value:g}" + ("" if times is None else f" ({times:g}x)"))
        lines.append(f"{name:24} " + "  ".join(f"{c:>20}" for c in cells))
    return lines


def _main(argv: list[str] | None = None) -> int:
    """Run only the peer part (a partial result)."""
    import argparse

    from bench import images, launch, results, suite
    from bench.results import git_commit, machine_info

    parser = argparse.ArgumentParser(prog="python -m bench.peersuite")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR / "peers-partial.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vmimage", "executor", "tests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rounds, runs = (2, 1) if args.quick else (10, 3)
    env = VMEnv.load()
    doc: dict[str, Any] = {"partial": True, "mode": "peers-only", "machine":
                           machine_info(env.accel), "commit": git_commit(suite.REPO)}
    with images.serve_images(None, with_work=True) as imgs:
        work_ref = imgs.work_ref
        assert work_ref is not None, "serve_images(with_work=True) pushes the work image"
        layers, _ = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        work_layers, _ = images.warm_shared_cache(env.cfg, work_ref, 0)
        samples: dict[str, list[float]] = {}
        with mounted_layer(layers[0]) as lower, oci_root(lower) as root, \
                PeerRounds(root).bundles() as pr, suite.warm_pool(env, "pool") as pool, \
                suite.learned_pool(env, "lpool", imgs.busybox_ref) as lpool:
            for _ in range(rounds):
                pr.round()
                suite.pooled_rounds(samples, {"generic": pool, "learned": lpool},
                                    imgs.busybox_ref)
                samples.setdefault("cold launch", []).append(
                    launch.launch_once(imgs.busybox_ref).running_s)
            samples.update(pr.samples)
            measured = measure(env, root, layers, work_ref, work_layers[0], runs)
    doc["cold_launch_p50_s"] = round(summarize(samples["cold launch"]).p50, 4)
    fill(doc, samples, measured)
    doc["details"]["samples"] = samples
    doc["machine"]["loadavg_after"] = list(os.getloadavg())
    results.write(doc, args.out)
    print("\n".join(peer_lines(doc)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main())

