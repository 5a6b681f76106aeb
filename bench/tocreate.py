"""Exec → createXML of a cold ``hypervm run IMAGE -- true``: the host's part before its VM is
created (Python start, imports, the image's cache hit, the domain's preparation), which a
whole run's noise hides on a shared machine: ``python -m bench.tocreate [--rounds N]
[--baseline DIR] [--out FILE]``.

Each sample runs the CLI as ``bench.runtrue`` does with ``bench/stamps`` first on its path and
HYPERVM_BENCH_TO_CREATE set: the CLI stops when its domain's createXML begins (no VM is
created; its uid reservation is released) and reports when that was, in ms after its exec,
and its CPU time by then. ``--baseline DIR`` (another commit's tree, ``git archive BASE | tar
-x -C DIR``, compiled) takes a sample of it beside each of this tree's, which goes first
alternating. Seconds per round, where ``bench.runfast`` takes a boot per sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import images, results, runtrue
from bench.vmenv import GUEST_MIB, VMEnv, bench_name


def sample(ref: str, tree: Path) -> tuple[float, float]:
    """(ms from exec to createXML, the CLI's CPU ms by then) of one cold run of ``tree``."""
    with tempfile.TemporaryDirectory(prefix="hypervm-bench-tocreate-") as work:
        out = Path(work) / "at-create"
        env = runtrue.tree_env(tree)
        env["PYTHONPATH"] = os.pathsep.join((str(runtrue.STAMPS), env["PYTHONPATH"]))
        env.update(HYPERVM_BENCH_TO_CREATE=str(out), HYPERVM_POOL="off")
        argv = [*runtrue.hypervm_argv(), "run", "--name", bench_name("tocreate"), "--quiet",
                "--memory", str(GUEST_MIB), ref, "--", "true"]
        env["HYPERVM_BENCH_STAMPS_T0"] = repr(time.perf_counter())
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=runtrue.TIMEOUT,
                              check=False, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"hypervm run did not reach createXML ({proc.returncode}): "
                               f"{proc.stderr[-2000:]}")
        at, cpu = out.read_text().split()
    return float(at), float(cpu)


def measure(rounds: int, baseline: Path | None = None) -> dict[str, list[float]]:
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}
    with images.serve_images(None) as imgs:
        images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        trees = [("", runtrue.REPO)] + ([("baseline ", baseline)] if baseline else [])
        for i in range(rounds):
            for label, tree in trees[::1 - 2 * (i % 2)]:
                at, cpu = sample(imgs.busybox_ref, tree)
                samples.setdefault(f"{label}exec to createXML ms", []).append(at)
                samples.setdefault(f"{label}CPU to createXML ms", []).append(cpu)
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: {"p50": round(statistics.median(values), 1),
                                  "min": round(min(values), 1), "n": len(values)}
                           for name, values in samples.items()}
    for name in ("exec to createXML ms", "CPU to createXML ms"):
        if f"baseline {name}" in samples:
            paired = [a - b for a, b in zip(samples[name], samples[f"baseline {name}"],
                                            strict=True)]
            out[f"{name}: this - baseline, paired p50"] = round(statistics.median(paired), 1)
    return out


def _options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.tocreate", 20,
                              lambda a: measure(a.rounds, a.baseline), summary, argv, _options)


if __name__ == "__main__":
    sys.exit(main())
