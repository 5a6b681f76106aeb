"""``hypervm run IMAGE -- true`` cold and pooled beside its yardsticks, measured in one run with
the suite's own code: ``python -m bench.runfast [--rounds N] [--out FILE]``.

Two phases, as the suite takes them. The cold phase (bench.coldphase), before any pool starts:
each round a raw boot (bench.rawboot) and a cold ``hypervm run`` (bench.runtrue), in rotating
order, with no VM of ours around, as a cold run happens on a host where no pool runs. Then the
pooled phase, the suite's warm pools started: each round one pooled run with a VM of each pool
(bench.suite.pooled_rounds: a generic VM, and the image VM of a pool that learned the image at
its first run; which goes first alternates), and ``runsc run … true`` / ``runc run … true``
on the same image's root (bench.peers). A few minutes, where ``make bench`` takes half an
hour: for checking a change to the run path; ``--baseline DIR`` (another commit's tree, ``git
archive BASE | tar -x -C DIR``) adds its cold run to each cold round.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import coldphase, images, peers, results, suite
from bench.container import mounted_layer
from bench.peers import oci_root
from bench.peersuite import PeerRounds
from bench.vmenv import VMEnv, load_average
from executor.libvirt.hypervisor import Hypervisor

log = logging.getLogger(__name__)


def measure(rounds: int, baseline: Path | None = None,
            stamps: bool = False) -> dict[str, list[float]]:
    """``baseline``: also a cold run with that source tree's code in each cold round (the
    order rotates; compile both trees first when PYTHONDONTWRITEBYTECODE is set, or the first
    runs of each pay for their bytecode). ``stamps``: each cold run's CLI stamps its path
    (bench/stamps: ``stamp: NAME began`` and ``took``, s after its exec; ``baseline stamp: …``
    for the baseline's), which shows a change of a few ms before createXML that the whole
    run's noise hides on a shared machine. The load before each round of each phase is in
    the samples (``load: cold phase``, ``load: pooled phase``)."""
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    with images.serve_images(None) as imgs, Hypervisor(env.cfg.libvirt_uri) as hv:
        layers, _ = images.warm_shared_cache(env.cfg, imgs.busybox_ref, 0)
        samples["load: cold phase"] = coldphase.measure(
            env, hv, imgs.busybox_ref, rounds, samples, baseline=baseline, stamps=stamps)
        with mounted_layer(layers[0]) as lower, oci_root(lower) as root, \
                PeerRounds(root).bundles() as pr, suite.warm_pool(env, "pool") as pool, \
                suite.learned_pool(env, "lpool", imgs.busybox_ref) as lpool:
            for i in range(rounds):
                add("load: pooled phase", load_average()[0])
                log.info("pooled round %d of %d", i + 1, rounds)
                suite.pooled_rounds(samples, {"generic": pool, "learned": lpool},
                                    imgs.busybox_ref, i)
                for rt in (peers.RUNSC, peers.RUNC):
                    add(f"{rt.name} run true", peers.run_true(rt, pr._true))
    return samples


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    out = results.quick_summary({k: v for k, v in samples.items() if not k.startswith("load: ")})
    out["load p50"] = {k.removeprefix("load: "): round(statistics.median(v), 2)
                       for k, v in samples.items() if k.startswith("load: ") and v}
    raw = out.get(coldphase.RAW, {}).get("p50_s")
    cold = out.get(coldphase.RUN, {}).get("p50_s")
    if raw and cold:
        out["cold run true / raw boot"] = round(cold / raw, 3)
    if raw and (base := out.get(coldphase.BASELINE_RUN, {}).get("p50_s")):
        out["baseline cold run true / raw boot"] = round(base / raw, 3)
    if samples.get(coldphase.RUN) and samples.get(coldphase.RAW):
        out["cold run true - raw boot, paired p50 (s)"] = round(coldphase.paired_p50(
            samples[coldphase.RUN], samples[coldphase.RAW]) or 0.0, 4)
    run_vcpu, raw_vcpu = samples.get(coldphase.RUN_VCPU), samples.get(coldphase.RAW_VCPU)
    if run_vcpu and raw_vcpu and len(run_vcpu) == len(raw_vcpu):  # --stamps, every round
        out["cold run vCPU at READY - raw boot's, paired p50 (s)"] = round(
            coldphase.paired_p50(run_vcpu, raw_vcpu) or 0.0, 4)
    if samples.get(coldphase.BASELINE_RUN):
        out["cold run true - baseline, paired p50 (s)"] = round(coldphase.paired_p50(
            samples[coldphase.RUN], samples[coldphase.BASELINE_RUN]) or 0.0, 4)
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
