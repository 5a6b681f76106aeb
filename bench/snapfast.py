"""The start from a snapshot alone, for checking a change to executor/snapshot/:
``python -m bench.snapfast [--rounds N] [--out FILE] [--baseline DIR]``.

Each round takes one sample of the suite's ``snapshot launch (standby)`` (bench.launch.launch_once
with HYPERVM_SNAPSHOT=on, the executor reaching a pool daemon that keeps no idle VM and one standby
clone of the launch shape, ready before each launch: executor.snapshot.keeper) and one of ``snapshot
launch`` (HYPERVM_POOL=off: the executor starts a clone of its own, the path of any shape with no VM
waiting), with the phases of each (``clone: …`` from the executor's log: snapshot lookup, create
(libvirt + QEMU start, or taking the standby), load (the migration stream), vcpus (the hot-plug of a
pod's vCPUs beyond the template's 2 present), reseed (RESEED, which brings them online, and the
layers' hot-add), pod (ports, NIC, binds)). Then the same two of a pod of 2 vCPUs (``… (2 vCPUs)``:
the same snapshot and standby, its second vCPU onlined; a shape never launched before in the first
round). A few minutes.

``--baseline DIR`` (another commit's source tree, ``git archive BASE | tar -x -C DIR``): each
round also takes the ``snapshot launch (standby)`` and ``snapshot launch`` samples with the
executor run from DIR (``baseline …``), interleaved with this tree's (the daemon runs from this
tree; the baseline's own clones use the snapshot its own tree keys, made untimed first).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import container, images, launch, peers, peersuite, results, shapes, vmenv
from bench.vmenv import VMEnv, bench_name
from executor.libvirt.qemu_process import LIBVIRT_PID_DIR
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.snapshot import store
from executor.snapshot.keeper import StandbyKeeper
from executor.snapshot.store import Shape

log = logging.getLogger(__name__)

#: the launch's shape (bench.launch: 0.9 + the executor's 0.1 CPU, 96 + 32 MiB)
SHAPE = Shape(1, launch.MEMORY_MIB)
STANDBY_READY_S = 120.0


@contextlib.contextmanager
def standby_pool(env: VMEnv, name: str,
                 standby: int = 1) -> Iterator[tuple[WarmPool, StandbyKeeper]]:
    """A pool daemon of no idle VMs and ``standby`` standby shapes on a socket of its own (a
    launch with the suite's other pools' sockets would claim a warm VM instead)."""
    sock_dir = images.scratch_dir(name)
    cfg = dataclasses.replace(env.cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=0, standby=standby, vcpus=1,
                                    memory_mib=launch.MEMORY_MIB,
                                    name=bench_name(name)), accel=env.accel)
    keeper = StandbyKeeper(pool)
    try:
        with pool, keeper:
            yield pool, keeper
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def standby_ready(keeper: StandbyKeeper, shape: Shape = SHAPE) -> None:
    """The standby of ``shape``'s template (store.template_shape: the keeper keeps one per
    memory size and tenant, with the template's vCPU capacity) is ready, and those of the
    other templates the keeper keeps (bench.shapes): one being made again after a launch of
    its shape would overlap the next sample."""
    wanted = [store.template_shape(keeper.cfg, shape),
              *(Shape(vcpus, mib) for vcpus, mib in keeper.status()["shapes"])]
    for each in dict.fromkeys(wanted):
        if not keeper.wait_ready(each, STANDBY_READY_S):
            raise RuntimeError(f"no standby clone within {STANDBY_READY_S:g} s: "
                               f"{keeper.status()}")


def prime(ref: str, pool: WarmPool) -> None:
    """Untimed: the snapshot of the launch shape made (when the store has none), then the
    shape asked for, so the daemon keeps a standby of it."""
    launch.launch_once(ref, snapshot=True)
    launch.launch_once(ref, pool.cfg.pool_socket, snapshot=True)


def standby_memory(keeper: StandbyKeeper) -> dict[str, float]:
    """What the ready standby's QEMU holds while it waits (MiB): RSS, PSS, and its private
    memory (Private_Clean + Private_Dirty: what one more costs the host at least)."""
    name = keeper.ready_names()[0]
    pid = int((LIBVIRT_PID_DIR / f"{name}.pid").read_text().strip())
    private = [vmenv.private_dirty_mib(pid), vmenv._rollup_mib(pid, "Private_Clean")]
    return {"rss_mib": vmenv.rss_mib(pid) or 0.0, "pss_mib": vmenv.pss_mib(pid) or 0.0,
            "private_mib": sum(x or 0.0 for x in private)}


#: the task's cpus of a 2 vCPU launch (with the executor's 0.1)
TWO_VCPUS = 1.9


def two_vcpu_round(ref: str, sock: Path, keeper: StandbyKeeper,
                   add: Callable[[str, launch.Launch], None]) -> None:
    """A launch of 2 vCPUs from the standby made for the template (of 2 vCPUs present, 1
    online), and one from a clone of its own: the second vCPU's onlining on the launch's clock
    (the first round's is of a shape never launched before)."""
    standby_ready(keeper)
    snap = launch.launch_once(ref, sock, snapshot=True, cpus=TWO_VCPUS)
    if not snap.standby:
        raise RuntimeError("the 2 vCPU launch did not start on the standby")
    add("snapshot launch (standby, 2 vCPUs)", snap)
    add("snapshot launch (2 vCPUs)", launch.launch_once(ref, snapshot=True, cpus=TWO_VCPUS))


def measure(rounds: int, baseline: Path | None = None,
            two_vcpus: bool = True, other_shapes: bool = True) -> dict[str, list[float]]:
    env = VMEnv.load()
    samples: dict[str, list[float]] = {}
    trees: list[tuple[str, Path | None]] = [("", None)]
    if baseline is not None:
        trees = [("baseline ", baseline), *trees]

    def add(kind: str, snap: launch.Launch) -> None:
        samples.setdefault(kind, []).append(snap.running_s)
        for phase, seconds in snap.phases.items():
            samples.setdefault(f"{kind}: {phase}", []).append(seconds)

    with images.serve_images(None) as imgs:
        ref = imgs.busybox_ref
        layers, _ = images.warm_shared_cache(env.cfg, ref, 0)
        standby = shapes.standby_count(env.cfg, SHAPE) if other_shapes else 1
        with standby_pool(env, "spool", standby) as (pool, keeper), \
                container.mounted_layer(layers[0]) as lower, peers.oci_root(lower) as oci, \
                peersuite.PeerRounds(oci).bundles() as peer_rounds, \
                shapes.multilayer_ref(imgs) as multi_ref:
            sock = pool.cfg.pool_socket
            refs = {False: ref, True: multi_ref}
            prime(ref, pool)
            if other_shapes:
                images.warm_shared_cache(env.cfg, multi_ref, 0)
                shapes.prime(refs, sock)
            if baseline is not None:  # untimed: the baseline's snapshot (its key may differ)
                launch.launch_once(ref, snapshot=True, executor_tree=baseline)
            for i in range(rounds):
                log.info("round %d of %d (load %.2f)", i + 1, rounds, os.getloadavg()[0])
                peer_rounds.round()  # runc and runsc start on the same image, same minute
                for label, tree in trees if i % 2 == 0 else trees[::-1]:
                    standby_ready(keeper)
                    if not label:  # settled: made at least a launch ago
                        for what, mib in standby_memory(keeper).items():
                            samples.setdefault(f"standby waiting: {what}", []).append(mib)
                    snap = launch.launch_once(ref, sock, snapshot=True, executor_tree=tree)
                    if tree is None and not snap.standby:
                        raise RuntimeError("not started on the standby (see the executor log)")
                    add(label + "snapshot launch (standby)", snap)
                for label, tree in trees if i % 2 == 0 else trees[::-1]:
                    add(label + "snapshot launch",
                        launch.launch_once(ref, snapshot=True, executor_tree=tree))
                if two_vcpus:  # this tree: the same snapshot and standby, a vCPU hot-plugged
                    two_vcpu_round(ref, sock, keeper, add)
                if other_shapes:  # this tree: memory, a port, 2 tasks, 3 layers, 3 vCPUs
                    shapes.shapes_round(refs, sock, keeper, standby_ready, add)
            samples.update(peer_rounds.samples)
    return samples


def options(parser: argparse.ArgumentParser) -> None:
    results.baseline_option(parser)
    parser.add_argument("--no-shapes", dest="shapes", action="store_false",
                        help="leave out the other shapes (bench.shapes.SHAPES)")


def summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Each sample list's p50/p95, and the shapes' (``snapshot_launch_shapes``)."""
    return {**results.quick_summary(samples), **shapes.headline(samples)}


def main(argv: list[str] | None = None) -> int:
    return results.quick_main("python -m bench.snapfast", 9,
                              lambda a: measure(a.rounds, a.baseline, other_shapes=a.shapes),
                              summary, argv, options)


if __name__ == "__main__":
    sys.exit(main())
