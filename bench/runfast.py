"""``hypervm run IMAGE -- true`` cold and pooled beside its yardsticks, measured in one run with
the suite's own code: ``python -m bench.runfast [--rounds N] [--out FILE]``.

Each round takes one sample of: the raw boot (bench.rawboot), ``hypervm run`` cold
(bench.runtrue) and with a VM of the suite's warm pools (bench.suite.pooled_rounds: a generic
VM, and the image VM of a pool that learned the image at its first run; which goes first
alternates), and ``runsc run … true`` / ``runc run … true`` on the same image's root
(bench.peers). A few minutes, where ``make bench`` takes half an hour: for checking a change to
the run path; ``--baseline DIR`` (another commit's tree, ``git archive BASE | tar -x -C DIR``)
adds its cold run beside.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import images, peers, results, runtrue, suite
from bench.container import mounted_layer
from bench.peers import oci_root
from bench.peersuite import PeerRounds
from bench.rawboot import boot_once
from bench.vmenv import VMEnv
from bench.warmfast import read_stamps
from executor.libvirt.hypervisor import Hypervisor

log = logging.getLogger(__name__)


def measure(rounds: int, baseline: Path | None = None,
            stamps: bool = False) -> dict[str, list[float]]:
    """``baseline``: also a cold run with that source tree's code, right after this tree's
    (which goes first alternates; compile both trees first when PYTHONDONTWRITEBYTECODE is
    set, or the first runs of each pay for their bytecode). ``stamps``: each cold run's CLI
    stamps its path (bench/stamps: ``stamp: NAME began`` and ``took``, s after its exec;
    ``baseline stamp: …`` for the baseline's), which shows a change of a few ms before
    createXML that the whole run's noise hides on a shared machine."""
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    with images.serve_images(None) as imgs, Hypervisor(env.cfg.libvirt_uri) as hv:
        layers, _ = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        with mounted_layer(layers[0]) as lower, oci_root(lower) as root, \
                PeerRounds(root).bundles() as pr, suite.warm_pool(env, "pool") as pool, \
                suite.learned_pool(env, "lpool", imgs.busybox_ref) as lpool:
            for i in range(rounds):
                log.info("round %d of %d", i + 1, rounds)
                for each in (pool, lpool):  # the last round's pooled runs' refills done
                    suite.fill_pool(each)
                add("raw boot", boot_once(env, hv).total_s)
                cold = [("hypervm run true", runtrue.REPO)]
                if baseline is not None:  # which goes first alternates
                    cold = [*cold, ("baseline hypervm run true", baseline)][::1 - 2 * (i % 2)]
                for name, tree in cold:
                    out = Path(tempfile.mkdtemp(prefix="hypervm-bench-stamps-")) if stamps \
                        else None
                    add(name, runtrue.run_once(imgs.busybox_ref, tree, out))
                    if out is not None:
                        read_stamps(out, samples, name.removesuffix("hypervm run true"))
                        out.rmdir()
                suite.pooled_rounds(samples, {"generic": pool, "learned": lpool},
                                    imgs.busybox_ref, i)
                for rt in (peers.RUNSC, peers.RUNC):
                    add(f"{rt.name} run true", peers.run_true(rt, pr._true))
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    out = results.quick_summary(samples)
    raw = out.get("raw boot", {}).get("p50_s")
    cold = out.get("hypervm run true", {}).get("p50_s")
    if raw and cold:
        out["cold run true / raw boot"] = round(cold / raw, 3)
    if raw and (base := out.get("baseline hypervm run true", {}).get("p50_s")):
        out["baseline cold run true / raw boot"] = round(base / raw, 3)
    return out


def _options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)
    parser.add_argument("--stamps", action="store_true",
                        help="stamp each cold run's path (bench/stamps), in ms after its exec")


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.runfast", 7,
                              lambda a: measure(a.rounds, a.baseline, a.stamps), summary, argv,
                              _options)


if __name__ == "__main__":
    sys.exit(main())
