"""The warm launch alone, for checking a change to the pool/adopt/launch path:
``python -m bench.warmfast [--rounds N] [--out FILE]``.

Each round takes one sample of the suite's ``warm launch`` (bench.launch.launch_once from the
suite's image pool: LAUNCH through the agent double to the real ``hypervm-executor`` →
TASK_RUNNING) and one of ``warm launch (ports)`` (the same task publishing a host port), with the
phases of each (bench.launch.phases). A few minutes, where ``make bench`` takes half an hour.

``--baseline DIR`` (a source tree of another commit, e.g. ``git archive BASE | tar -x -C DIR``):
each round also takes the same two samples with the executor run from DIR, interleaved with
this tree's, so a before/after comparison sees the same machine load (the machine is shared).
The pool daemon runs from this tree for both.

``--cpus C``: the task's cpus (default the suite's 0.9: with the executor's 0.1 the VM's one
vCPU, unbounded; below it the VM gets a CPU bound, set at the claim).

``--stamps``: the executor is launched with bench/stamps/sitecustomize.py, which stamps each
function of its launch path; each round adds ``stamp: NAME began`` (s after the executor's
on_launch began) and ``stamp: NAME took`` samples of the warm launch (with ``--baseline``, the
baseline's as ``baseline stamp: …``; a function the baseline lacks is not stamped; not of
the ports launch): where the host's time goes, the guest's START included. Comparing the
stamps of both arms sees a change of a few ms that the whole launch's noise hides on a shared
machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import images, launch, results, suite
from bench.stampfiles import read_stamps
from bench.vmenv import VMEnv

log = logging.getLogger(__name__)


STAMPS = Path(__file__).resolve().parent / "stamps"


def _stamped(tree: Path | None, out: Path) -> Path:
    """The executor's PYTHONPATH for a stamped launch (launch.launch_once's ``executor_tree``),
    its stamps written into ``out``."""
    os.environ["HYPERVM_BENCH_STAMPS"] = str(out)  # the executor gets every HYPERVM_* variable
    return Path(f"{STAMPS}{os.pathsep}{tree or launch.REPO}")



def measure(rounds: int, baseline: Path | None = None, stamps: bool = False,
            cpus: float = launch.CPUS) -> dict[str, list[float]]:
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}
    trees: list[tuple[str, Path | None]] = [("", None)]
    out = Path(tempfile.mkdtemp(prefix="hypervm-bench-stamps-"))
    if baseline is not None:
        trees = [("baseline ", baseline), *trees]

    def add(kind: str, warm: launch.Launch) -> None:
        if not warm.warm or not warm.warm_layers:
            raise RuntimeError(f"{kind}: not an image pool VM (see the executor log)")
        samples.setdefault(kind, []).append(warm.running_s)
        for phase, seconds in warm.phases.items():
            samples.setdefault(f"{kind}: {phase}", []).append(seconds)

    with images.serve_images(None) as imgs:
        ref = imgs.busybox_ref
        images.warm_shared_cache(env.cfg, ref, 0)
        with suite.warm_pool(env, "wpool", ref) as pool:
            sock = pool.cfg.pool_socket
            suite.fill_pool(pool)
            launch.launch_once(ref, sock)  # warm-up, not counted
            for i in range(rounds):
                log.info("round %d of %d (load %.2f)", i + 1, rounds, os.getloadavg()[0])
                for label, tree in trees if i % 2 == 0 else trees[::-1]:
                    suite.fill_pool(pool)
                    add(label + "warm launch", launch.launch_once(
                        ref, sock, executor_tree=_stamped(tree, out) if stamps else tree,
                        cpus=cpus))
                    os.environ.pop("HYPERVM_BENCH_STAMPS", None)
                    if stamps:
                        read_stamps(out, samples, label)
                    suite.fill_pool(pool)
                    add(label + "warm launch (ports)", launch.launch_once(
                        ref, sock, port=launch.free_port(), executor_tree=tree, cpus=cpus))
    shutil.rmtree(out, ignore_errors=True)
    return samples


def _options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)
    parser.add_argument("--stamps", action="store_true",
                        help="stamp the executor's launch path (bench/stamps/sitecustomize.py)")
    parser.add_argument("--cpus", type=float, default=launch.CPUS,
                        help="the task's cpus (below 0.9 the VM's 1 vCPU gets a CPU bound)")


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.warmfast", 9,
                              lambda a: measure(a.rounds, a.baseline, a.stamps, a.cpus),
                              results.quick_summary, argv, _options)


if __name__ == "__main__":
    sys.exit(main())
