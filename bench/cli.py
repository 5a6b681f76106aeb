"""``python -m bench [--quick]``: run the benchmark, print a table, write JSON and the plot."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bench import results, suite

ROWS = (
    ("container baseline p50", "container_p50_s", "s"),
    ("raw boot p50", "raw_boot_p50_s", "s"),
    ("cold launch p50", "cold_launch_p50_s", "s"),
    ("cold launch p95", "cold_launch_p95_s", "s"),
    ("warm launch p50 (image VM)", "warm_launch_p50_s", "s"),
    ("warm launch p95 (image VM)", "warm_launch_p95_s", "s"),
    ("warm launch p50 (generic VM)", "warm_launch_generic_p50_s", "s"),
    ("hypervm run true p50", "run_true_p50_s", "s"),
    ("raw boot p50 (cold phase, no pool)", "raw_boot_cold_host_p50_s", "s"),
    ("idle VM QEMU RSS", "idle_vm_rss_mib", "MiB"),
    ("idle VM QEMU private dirty", "idle_vm_private_dirty_mib", "MiB"),
    ("idle pool VM QEMU RSS", "idle_pool_vm_rss_mib", "MiB"),
    ("idle pool VM QEMU private", "idle_pool_vm_private_mib", "MiB"),
    ("VMs at once (latency < 2x)", "max_concurrent_vms", ""),
    ("hypervm run true p50 (pool)", "run_true_pool_p50_s", "s"),
    ("hypervm run true p50 (pool, generic VM)", "run_true_pool_generic_p50_s", "s"),
    ("idle VM QEMU private", "idle_vm_private_mib", "MiB"),
    ("idle snapshot clone QEMU private", "snapshot_clone_idle_private_mib", "MiB"),
    ("runc start p50", "runc_start_p50_s", "s"),
    ("runsc start p50", "runsc_start_p50_s", "s"),
    ("runsc run true p50", "runsc_run_true_p50_s", "s"),
    ("runsc idle PSS", "runsc_idle_pss_mib", "MiB"),
    ("snapshot launch p50 (own clone)", "snapshot_launch_p50_s", "s"),
    ("snapshot launch p50 (standby clone)", "snapshot_launch_standby_p50_s", "s"),
    ("snapshot launch p50 (standby, 2 vCPUs)", "snapshot_launch_2cpu_standby_p50_s", "s"),
    ("snapshot launch p95 (standby, 2 vCPUs)", "snapshot_launch_2cpu_standby_p95_s", "s"),
    ("snapshot launch p50 (own clone, 2 vCPUs)", "snapshot_launch_2cpu_p50_s", "s"),
    ("snapshot launch p50 (standby, 1 GiB)", "snapshot_launch_shape_1vcpu_1gib_p50_s", "s"),
    ("snapshot launch p50 (standby, 2 vCPUs + port)", "snapshot_launch_shape_2vcpus_1port_p50_s",
     "s"),
    ("snapshot launch p50 (standby, 2 containers)", "snapshot_launch_shape_2containers_p50_s",
     "s"),
    ("snapshot launch p50 (standby, 3 layers)", "snapshot_launch_shape_3layers_p50_s", "s"),
    ("snapshot launch p50 (standby, 3 vCPUs)", "snapshot_launch_shape_3vcpus_p50_s", "s"),
    ("warm launch p50 (ports)", "warm_launch_ports_p50_s", "s"),
    ("warm launch p50 (cpus 0.5)", "warm_launch_cpus_p50_s", "s"),
    ("image import", "import_mb_s", "MB/s"),
    ("cache hit", "cache_hit_extra_s", "s"),
)


#: the PNG's idle memory panel: label, key (private MiB of one idle sandbox)
MEMORY_BARS = (
    ("VM, cold-booted", "idle_vm_private_mib"),
    ("pool VM (warmed up)", "idle_pool_vm_private_mib"),
    ("snapshot clone", "snapshot_clone_idle_private_mib"),
    ("runsc sandbox", "runsc_idle_private_mib"),
    ("runc container", "runc_idle_private_mib"),
)


def table(doc: dict[str, Any]) -> str:
    lines = [f"{'figure':32} {'value':>12}"]
    for label, key, unit in ROWS:
        value = doc.get(key)
        text = "null" if value is None else f"{value:g} {unit}".strip()
        lines.append(f"{label:32} {text:>12}")
    if doc.get("max_concurrent_vms_limit"):
        lines.append(f"{'VMs at once: what ran out':32} {doc['max_concurrent_vms_limit']}")
    lines.append("")
    if doc.get("peers"):
        from bench.peersuite import peer_lines

        lines += [*peer_lines(doc), ""]
    lines += [f"{name:40} {value}" for name, value in doc.get("ratios", {}).items()]
    lines.append("")
    for key, target in doc.get("targets", {}).items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"target {key} {target['op']} {target['limit']}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a handful of runs (smoke test), not the real figures")
    parser.add_argument("--out", type=Path, default=results.LATEST,
                        help=f"JSON to write (default {results.LATEST}); the PNG goes beside it")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vmimage", "executor", "tests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = suite.QUICK if args.quick else suite.FULL
    doc, samples, density = suite.run(plan)
    problems = results.validate(doc)
    results.write(doc, args.out)
    if not args.no_plot:
        from bench.plot import plot

        shown = {k: v for k, v in samples.items() if ":" not in k}
        title = (f"hypervm {plan.mode} bench, {doc['machine']['cores']} cores, "
                 f"{doc['machine']['accel']}, commit {(doc['commit'] or '?')[:10]}")
        plot(shown, density, args.out.with_name(args.out.stem + ".png"), title,
             doc["details"].get("density_baseline_s"), doc.get("peers"),
             {label: doc.get(key) for label, key in MEMORY_BARS})
    print(table(doc))
    print(f"\nwrote {args.out} in {doc['duration_s']} s")
    if problems:
        print("incomplete result: " + json.dumps(problems), file=sys.stderr)
        return 1
    return 0
