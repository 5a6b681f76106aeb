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
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from bench import images, launch, results, suite
from bench.vmenv import VMEnv

log = logging.getLogger(__name__)


def measure(rounds: int, baseline: Path | None = None) -> dict[str, list[float]]:
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}
    trees: list[tuple[str, Path | None]] = [("", None)]
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
            suite._fill_pool(pool)
            launch.launch_once(ref, sock)  # warm-up, not counted
            for i in range(rounds):
                log.info("round %d of %d (load %.2f)", i + 1, rounds, os.getloadavg()[0])
                for label, tree in trees if i % 2 == 0 else trees[::-1]:
                    suite._fill_pool(pool)
                    add(label + "warm launch", launch.launch_once(ref, sock,
                                                                  executor_tree=tree))
                    suite._fill_pool(pool)
                    add(label + "warm launch (ports)", launch.launch_once(
                        ref, sock, port=launch.free_port(), executor_tree=tree))
    return samples


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.warmfast", 9,
                              lambda a: measure(a.rounds, a.baseline), results.quick_summary,
                              argv, results.baseline_option)


if __name__ == "__main__":
    sys.exit(main())
