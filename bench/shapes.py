"""The start from a standby for pods of other shapes than the bench's launch (issue 18: "for any
shape"): ``python -m bench.snapfast`` takes one sample of each of :data:`SHAPES` a round, in
the same rounds as ``runsc start``; ``bench/results/latest.json`` keeps them as
``snapshot_launch_shapes`` ({shape: {p50_s, p95_s, n}}).

How each shape meets the snapshot (executor/snapshot/): the template is keyed by memory size,
tenant and vCPU capacity (store.template_shape), not by ports, images or task count, so

- ``1 vCPU, 1 GiB``: a template (and standby) of its own memory size (memory is not hot-plugged);
- ``2 vCPUs, 1 port``: the 128 MiB template's standby, its spare vCPU onlined, the port added
  (QEMU ``hostfwd_add``) after the claim;
- ``2 containers``: a LAUNCH_GROUP of two tasks (0.45 cpus and 48 MiB each: the same 1 vCPU,
  128 MiB VM as the launch), two STARTs in the guest;
- ``3 layers``: an image of three layers (tests' multilayer image): three LUNs hot-added;
- ``3 vCPUs``: above the host's 2 (``HYPERVM_SNAPSHOT_VCPUS``' default): a template of capacity
  3 of its own with all three present and online (designer.present_vcpus, online_vcpus):
  RESEED onlines none.

The bench's standby pool keeps one standby per template shape (:func:`standby_count`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import images, launch
from bench.stats import summarize
from executor.snapshot import store
from executor.snapshot.keeper import StandbyKeeper
from executor.snapshot.store import Shape
from hypervm.config import HostConfig
from tests.integration import imagebuild


@dataclass(frozen=True)
class PodShape:
    #: each task's cpus and mem (the executor adds 0.1 cpus and 32 MiB once)
    cpus: float = launch.CPUS
    mem: int = launch.TASK_MEM
    tasks: int = 1
    port: bool = False
    #: the three-layer image instead of busybox
    layers3: bool = False

    def vm(self) -> Shape:
        """The VM's shape (executor.mesos.taskinfo.vm_size's rule)."""
        vcpus = max(1, math.ceil(self.cpus * self.tasks + 0.1 - 1e-9))
        return Shape(vcpus, self.mem * self.tasks + 32)


#: the shapes measured beside the bench's own (1 vCPU and 2 vCPUs, 128 MiB, one task)
SHAPES: dict[str, PodShape] = {
    "1 vCPU, 1 GiB": PodShape(mem=1024 - 32),
    "2 vCPUs, 1 port": PodShape(cpus=1.9, port=True),
    "2 containers": PodShape(cpus=0.45, mem=48, tasks=2),
    "3 layers": PodShape(layers3=True),
    "3 vCPUs": PodShape(cpus=2.9),
}
#: the result document's note on ``snapshot_launch_shapes`` (bench.suite)
NOTE = ("LAUNCH -> TASK_RUNNING through the executor on a standby clone (HYPERVM_SNAPSHOT=on, "
        "the bench's standby pool keeping one standby per template: memory size and vCPU "
        "capacity) for pods of other shapes than the launch's: '1 vCPU, 1 GiB' (a template and "
        "standby of its own memory size), '2 vCPUs, 1 port' (the 128 MiB standby, its spare "
        "vCPU onlined, the port added by hostfwd_add), '2 containers' (a LAUNCH_GROUP of two "
        "tasks, 1 vCPU and 128 MiB in all), '3 layers' (a 3-layer image: 3 LUNs hot-added), "
        "'3 vCPUs' (above the host's 2: a template of its own capacity); one sample of each in "
        "the first {rounds} rounds, after the round's snapshot starts; each "
        "snapshot_launch_shape_<shape>_p50_s is held in targets to issue 18's <= 0.3 s and <= "
        "runsc_start_p50_s; phases in details.summaries['snapshot launch (standby, <shape>): …']")
#: the sample name of a shape's standby start
LABEL = "snapshot launch (standby, {})"
#: shapes issue 18's target ("for any shape: p50 <= 0.3 s and no slower than gVisor's start")
#: is checked on in ``targets`` as ``snapshot_launch_shape_<slug>_p50_s``: all of them
TARGET_SHAPES = tuple(SHAPES)


def slug(name: str) -> str:
    """``2 vCPUs, 1 port`` -> ``2vcpus_1port``: a shape's part of a headline key."""
    return "".join(c for c in name.lower().replace(", ", "_").replace(" ", "") if c.isalnum()
                   or c == "_")


def template_shapes(cfg: HostConfig, base: Shape) -> set[Shape]:
    """The templates the bench's launches and :data:`SHAPES` start from."""
    return {store.template_shape(cfg, s) for s in [base, *(p.vm() for p in SHAPES.values())]}


def standby_count(cfg: HostConfig, base: Shape) -> int:
    """Standbys the pool keeps: one per template shape, so each shape finds its own ready."""
    return len(template_shapes(cfg, base))


@contextlib.contextmanager
def multilayer_ref(imgs: images.BenchImages) -> Iterator[str]:
    """The tests' three-layer image pushed to the bench's registry (untimed)."""
    work = images.scratch_dir("multi")
    try:
        built = imagebuild.multilayer(work / "layout")
        yield imagebuild.push(built, imgs.registry_host, "bench-multi", "1")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def launch_shape(shape: PodShape, refs: dict[bool, str], sock: Path | None) -> launch.Launch:
    """One launch of ``shape`` (on the standby pool at ``sock``; an own clone without it)."""
    return launch.launch_once(refs[shape.layers3], sock,
                              launch.free_port() if shape.port else None, snapshot=True,
                              cpus=shape.cpus, mem=shape.mem, tasks=shape.tasks)


def prime(refs: dict[bool, str], sock: Path) -> None:
    """Untimed: each shape's template made (own clone) and its standby wanted (a request)."""
    for shape in SHAPES.values():
        launch_shape(shape, refs, None)
        launch_shape(shape, refs, sock)


def shapes_round(refs: dict[bool, str], sock: Path, keeper: StandbyKeeper,
                 ready: Callable[[StandbyKeeper, Shape], None],
                 add: Callable[[str, launch.Launch], None],
                 misses: list[str] | None = None, max_misses: int = 0) -> None:
    """One standby start of each shape, its template's standby ready before it. A start that
    another clone served (a rotation of the shared template: bench.suite's standby misses) is
    no sample: noted in ``misses`` and taken again while they number under ``max_misses``,
    else RuntimeError."""
    for name, shape in SHAPES.items():
        while True:
            ready(keeper, shape.vm())
            snap = launch_shape(shape, refs, sock)
            if snap.standby:
                break
            if misses is None or len(misses) >= max_misses:
                raise RuntimeError(f"the {name} launch did not start on a standby")
            misses.append(LABEL.format(name))
        add(LABEL.format(name), snap)


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """``snapshot_launch_shapes``: {shape: {p50_s, p95_s, n}} of the shapes measured."""
    out: dict[str, dict[str, Any]] = {}
    for name in SHAPES:
        values = samples.get(LABEL.format(name))
        if values:
            s = summarize(values)
            out[name] = {"p50_s": round(s.p50, 4), "p95_s": round(s.p95, 4), "n": len(values)}
    return out


def headline(samples: dict[str, list[float]]) -> dict[str, Any]:
    """The result document's keys: ``snapshot_launch_shapes`` and, per shape the target covers,
    ``snapshot_launch_shape_<slug>_p50_s`` (None when not measured)."""
    shapes = summary(samples)
    doc: dict[str, Any] = {"snapshot_launch_shapes": shapes}
    for name in TARGET_SHAPES:
        doc[f"snapshot_launch_shape_{slug(name)}_p50_s"] = shapes.get(name, {}).get("p50_s")
    return doc
