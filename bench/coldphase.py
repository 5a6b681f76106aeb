"""A cold ``hypervm run IMAGE -- true`` and its raw-boot baseline in a cold host's conditions:
no pool daemon, no standby clone, no other VM of the bench running, as on a host where a run
is cold at all (with a pool running, the run is pooled). ``bench.suite`` takes this phase
before its pools start (``run_true_p50_s``, ``raw_boot_cold_host_p50_s``) and
``bench.runfast`` before its pooled phase, so both tools measure the cold run alike.

Each round takes one raw boot (bench.rawboot) and one cold run (bench.runtrue) per tree, in an
order that rotates over the rounds, so neither always follows the other (a run's teardown, the
page cache it warmed) and a drift in the machine's load hits both alike. Why a phase of its
own: bench/README.md, "The cold phase".
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bench import runtrue
from bench.rawboot import boot_once
from bench.stampfiles import read_stamps
from bench.vmenv import VMEnv, load_average
from executor.libvirt.hypervisor import Hypervisor

log = logging.getLogger(__name__)

#: the sample names of the phase: its raw boot, this tree's cold run, another tree's
RAW = "raw boot (cold host)"
RUN = "hypervm run true"
BASELINE_RUN = "baseline hypervm run true"
#: the raw boot's vCPU time on a CPU at READY (bench.vcpu); a stamped cold run's is its
#: ``stamp: vcpu.run_at_READY took`` (bench/stamps)
RAW_VCPU = "raw boot (cold host) vCPU at READY"
RUN_VCPU = "stamp: vcpu.run_at_READY took"

T = TypeVar("T")


def rotated(items: Sequence[T], i: int) -> list[T]:
    """``items`` in round ``i``'s order: rotated by ``i``, so that over ``len(items)`` rounds
    each goes first once (for two: alternating); every other cycle of ``len(items)`` rounds
    reversed, so that over ``2 × len(items)`` rounds each also follows every other one as
    often within a round (rotation alone put, of three, the third right after the second in
    two rounds of three and the second after the third in one)."""
    k = i % len(items) if items else 0
    order = [*items[k:], *items[:k]]
    return order[::-1] if items and (i // len(items)) % 2 else order


def paired_p50(values: Sequence[float], baselines: Sequence[float]) -> float | None:
    """Median of the per-round differences ``values[i] - baselines[i]`` (None if empty):
    what a change costs with each round's load in both terms."""
    if len(values) != len(baselines):
        raise ValueError(f"{len(values)} values against {len(baselines)} baselines")
    return statistics.median(a - b for a, b in zip(values, baselines, strict=True)) \
        if values else None


def measure(env: VMEnv, hv: Hypervisor, ref: str, rounds: int,
            samples: dict[str, list[float]], *, baseline: Path | None = None,
            stamps: bool = False, warm_up: bool = True) -> list[float]:
    """``rounds`` rounds of the phase into ``samples`` (RAW, RUN, with ``baseline`` also
    BASELINE_RUN: that source tree's cold run); ``stamps``: each cold run's CLI stamps its
    path (bench.runfast --stamps). ``warm_up``: one untimed raw boot and run first (page cache,
    libvirt). Returns the load before each round. Call it with no VM of the bench running."""
    def raw() -> None:
        boot = boot_once(env, hv)
        samples.setdefault(RAW, []).append(boot.total_s)
        if boot.vcpu_s is not None:
            samples.setdefault(RAW_VCPU, []).append(boot.vcpu_s)

    def run(name: str, tree: Path) -> Callable[[], None]:
        def sample() -> None:
            out = Path(tempfile.mkdtemp(prefix="hypervm-bench-stamps-")) if stamps else None
            samples.setdefault(name, []).append(runtrue.run_once(ref, tree, out))
            if out is not None:
                read_stamps(out, samples, name.removesuffix(RUN))
                out.rmdir()
        return sample

    steps = [raw, run(RUN, runtrue.REPO)]
    if baseline is not None:
        steps.append(run(BASELINE_RUN, baseline))
    if warm_up:
        boot_once(env, hv)
        runtrue.run_once(ref)
    loads = []
    for i in range(rounds):
        loads.append(load_average()[0])
        log.info("cold phase round %d/%d, no pool (load %s)", i + 1, rounds, loads[-1])
        for step in rotated(steps, i):
            step()
    return loads
