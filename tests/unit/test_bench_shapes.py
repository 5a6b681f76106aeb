"""bench.shapes: the pod shapes bench.snapfast and the suite start from a standby beside the
launch's (issue 18 "for any shape"), their VM shapes and templates, the result keys and their
targets, and a round's order and misses (pure, fast: no VM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import launch, results, shapes, snapfast
from executor.snapshot.store import Shape
from hypervm.config import config_from_env
from tests.unit.test_bench_newkeys import doc_with


def test_each_shape_is_the_vm_the_executor_sizes() -> None:
    vms = {name: shape.vm() for name, shape in shapes.SHAPES.items()}
    assert vms == {"1 vCPU, 1 GiB": Shape(1, 1024), "2 vCPUs, 1 port": Shape(2, 128),
                   "2 containers": Shape(1, 128), "3 layers": Shape(1, 128),
                   "3 vCPUs": Shape(3, 128)}
    assert shapes.SHAPES["2 containers"].tasks == 2 and shapes.SHAPES["3 layers"].layers3
    assert shapes.SHAPES["2 vCPUs, 1 port"].port


@pytest.mark.parametrize(("capacity", "templates"), [("2", 3), ("4", 2)])
def test_the_pool_keeps_one_standby_per_template(capacity: str, templates: int) -> None:
    """2 shared vCPUs: 128 MiB, 1 GiB and the 3 vCPU pod's own; 4: the 3 vCPU pod shares."""
    cfg = config_from_env({"HYPERVM_SNAPSHOT_VCPUS": capacity})
    assert shapes.standby_count(cfg, snapfast.SHAPE) == templates


def test_the_result_keys_are_the_targets_keys() -> None:
    samples = {shapes.LABEL.format(name): [0.1, 0.2, 0.3] for name in shapes.SHAPES}
    del samples[shapes.LABEL.format("3 layers")]
    doc = shapes.headline(samples)
    keys = {k for k in doc if k != "snapshot_launch_shapes"}
    assert keys == set(results.SHAPE_TARGET_KEYS) <= set(results.TARGETS)
    assert doc["snapshot_launch_shape_3layers_p50_s"] is None  # not measured
    assert doc["snapshot_launch_shape_3vcpus_p50_s"] == 0.2
    assert doc["snapshot_launch_shapes"]["1 vCPU, 1 GiB"] == {"p50_s": 0.2, "p95_s": 0.29,
                                                              "n": 3}
    assert "3 layers" not in doc["snapshot_launch_shapes"]


@pytest.mark.parametrize(("value", "runsc", "met"), [
    (0.10, 0.11, True), (0.12, 0.11, False), (0.31, 0.5, False), (None, 0.1, None)])
def test_each_shape_is_held_to_300_ms_and_to_gvisor(value: float | None, runsc: float,
                                                     met: bool | None) -> None:
    doc = doc_with(runsc_start_p50_s=runsc, **{k: value for k in results.SHAPE_TARGET_KEYS})
    for key in results.SHAPE_TARGET_KEYS:
        target = results.check_targets(doc)[key]
        assert target["met"] is met and target["bound"] == 0.3
        assert target["relative_to"] == "runsc_start_p50_s" and target["factor"] == 1.0


def test_the_table_shows_the_shapes() -> None:
    from bench.cli import table

    text = table(doc_with(snapshot_launch_shape_3vcpus_p50_s=0.223))
    assert "snapshot launch p50 (standby, 3 vCPUs)" in text and "0.223 s" in text


def fake_launch(standby: list[bool], seen: list[tuple[Any, ...]]) -> Any:
    served = iter(standby)

    def launch_once(ref: str, sock: Path | None = None, port: int | None = None, *,
                    snapshot: bool, cpus: float, mem: int, tasks: int) -> launch.Launch:
        assert snapshot
        seen.append(("launch", ref, port is not None, cpus, mem, tasks))
        return launch.Launch(0.1, False, False, None, {"clone: reseed": 0.01}, snapshot=True,
                             standby=next(served))
    return launch_once


def test_a_round_starts_each_shape_on_its_templates_standby(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(launch, "launch_once", fake_launch([True] * 5, seen))
    samples: dict[str, list[float]] = {}
    shapes.shapes_round({False: "busybox", True: "multi"}, Path("/run/x/pool.sock"), None,  # type: ignore[arg-type]
                        lambda keeper, shape: seen.append(("ready", shape)),
                        lambda kind, snap: samples.setdefault(kind, []).append(snap.running_s))
    assert seen[0] == ("ready", Shape(1, 1024)) and seen[1][0] == "launch"
    assert [s[0] for s in seen] == ["ready", "launch"] * 5
    launches = [s[1:] for s in seen if s[0] == "launch"]
    assert launches == [("busybox", False, 0.9, 992, 1), ("busybox", True, 1.9, 96, 1),
                        ("busybox", False, 0.45, 48, 2), ("multi", False, 0.9, 96, 1),
                        ("busybox", False, 2.9, 96, 1)]
    assert set(samples) == {shapes.LABEL.format(n) for n in shapes.SHAPES}


def test_a_start_on_another_clone_is_no_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(launch, "launch_once", fake_launch([False, True] + [True] * 4, seen))
    samples: dict[str, list[float]] = {}
    misses: list[str] = []
    shapes.shapes_round({False: "b", True: "m"}, Path("/s"), None,  # type: ignore[arg-type]
                        lambda keeper, shape: None,
                        lambda kind, snap: samples.setdefault(kind, []).append(1.0), misses, 4)
    assert misses == [shapes.LABEL.format("1 vCPU, 1 GiB")]
    assert all(v == [1.0] for v in samples.values()) and len(samples) == 5
    monkeypatch.setattr(launch, "launch_once", fake_launch([False] * 3, seen))
    with pytest.raises(RuntimeError, match="did not start on a standby"):
        shapes.shapes_round({False: "b", True: "m"}, Path("/s"), None,  # type: ignore[arg-type]
                            lambda keeper, shape: None, lambda kind, snap: None, [], 0)


def test_a_task_asks_for_its_memory() -> None:
    mem = [r for r in launch.task("t", "ref", mem=992)["resources"] if r["name"] == "mem"]
    assert mem == [{"name": "mem", "type": "SCALAR", "scalar": {"value": 992}}]
