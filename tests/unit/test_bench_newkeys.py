"""bench: the figures issue 18 still lacked (a pod of 2 vCPUs from the 1 vCPU standby, an idle
pool VM's private memory, a warm launch with a CPU bound): their target, table rows, peer
rows and the order the suite takes the snapshot starts in (pure, fast: no VM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import launch, results, snapfast, suite

NEW_KEYS = ("snapshot_launch_2cpu_standby_p50_s", "idle_pool_vm_private_mib",
            "warm_launch_cpus_p50_s")


def doc_with(**values: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {k: 1.0 for k in results.REQUIRED_KEYS}
    doc.update(machine={"cores": 2, "memory_mib": 24000, "accel": "tcg"}, commit="0" * 40,
               max_concurrent_vms_limit="latency (CPU)", notes={})
    for key in results.PER_KIND_KEYS:
        doc[key] = {"hypervm": 2.0, "runsc": 1.0, "runc": 0.5}
    doc.update(values)
    return doc


def test_the_new_figures_are_required() -> None:
    assert set(NEW_KEYS) <= set(results.REQUIRED_KEYS)
    doc = doc_with()
    del doc["warm_launch_cpus_p50_s"]
    doc["idle_pool_vm_private_mib"] = None
    problems = results.validate(doc)
    assert "missing key warm_launch_cpus_p50_s" in problems
    assert "idle_pool_vm_private_mib is null without a note saying why" in problems


@pytest.mark.parametrize(("value", "runsc", "limit", "met"), [
    (0.10, 0.11, 0.11, True),    # under 0.3 s and under gVisor's start
    (0.12, 0.11, 0.11, False),   # under 0.3 s, slower than gVisor
    (0.31, 0.50, 0.30, False),   # faster than gVisor, over 0.3 s
    (0.25, 0.40, 0.30, True),
])
def test_two_vcpu_standby_start_is_held_to_300_ms_and_to_gvisor(
        value: float, runsc: float, limit: float, met: bool) -> None:
    target = results.check_targets(doc_with(snapshot_launch_2cpu_standby_p50_s=value,
                                            runsc_start_p50_s=runsc))
    stated = target["snapshot_launch_2cpu_standby_p50_s"]
    assert stated["limit"] == pytest.approx(limit) and stated["met"] is met
    assert stated["bound"] == 0.3 and stated["factor"] == 1.0
    assert stated["relative_to"] == "runsc_start_p50_s"


def test_two_vcpu_standby_target_unknown_without_gvisor_or_the_value() -> None:
    for missing in ("runsc_start_p50_s", "snapshot_launch_2cpu_standby_p50_s"):
        doc = doc_with(snapshot_launch_2cpu_standby_p50_s=0.1, runsc_start_p50_s=0.2)
        doc[missing] = None
        assert results.check_targets(doc)["snapshot_launch_2cpu_standby_p50_s"]["met"] is None


def test_the_old_targets_keep_their_shape() -> None:
    targets = results.check_targets(doc_with(raw_boot_p50_s=2.0, cold_launch_p50_s=2.5))
    assert targets["cold_launch_p50_s"] == {"op": "<=", "limit": 2.6, "relative_to":
                                            "raw_boot_p50_s", "factor": 1.3, "value": 2.5,
                                            "met": True}
    assert targets["warm_launch_p50_s"] == {"op": "<=", "limit": 0.06, "relative_to": None,
                                            "bound": 0.06, "value": 1.0, "met": False}


def test_table_and_peer_rows_show_the_new_figures() -> None:
    from bench.cli import table
    from bench.peersuite import peer_lines, peer_table

    doc = doc_with(snapshot_launch_2cpu_standby_p50_s=0.2, runsc_start_p50_s=0.1,
                   runc_start_p50_s=0.05, idle_pool_vm_private_mib=30.0,
                   idle_vm_private_mib=20.0, runsc_idle_private_mib=15.0,
                   runc_idle_private_mib=1.5, warm_launch_cpus_p50_s=0.031)
    doc["targets"] = results.check_targets(doc)
    text = table(doc)
    assert "snapshot launch p50 (standby, 2 vCPUs)" in text and "0.2 s" in text
    assert "idle pool VM QEMU private" in text and "30 MiB" in text
    assert "warm launch p50 (cpus 0.5)" in text and "0.031 s" in text
    assert "target snapshot_launch_2cpu_standby_p50_s <= 0.1: MISSED" in text
    rows = peer_table(doc)
    assert rows["start p50, 2 vCPUs, standby (s)"]["ratio_to_runc"] == {"hypervm": 4.0,
                                                                        "runsc": 2.0}
    assert rows["idle private (MiB)"]["ratio_to_runc"] == {"hypervm cold": 13.333,
                                                           "hypervm warm": 20.0,
                                                           "runsc": 10.0}
    doc["peers"] = rows
    assert any(line.startswith("idle private (MiB)") for line in peer_lines(doc))


def launched(standby: bool) -> launch.Launch:
    return launch.Launch(0.1, False, False, None, {"clone: load": 0.02}, snapshot=True,
                         standby=standby)


def test_snapshot_round_waits_for_the_standby_before_each_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[Any, ...]] = []
    monkeypatch.setattr(snapfast, "standby_ready", lambda keeper: events.append(("ready",)))

    def launch_once(ref: str, sock: Path | None = None, *, snapshot: bool,
                    cpus: float) -> launch.Launch:
        assert snapshot
        events.append(("launch", sock is not None, cpus))
        return launched(standby=sock is not None)

    monkeypatch.setattr(launch, "launch_once", launch_once)
    samples: dict[str, list[float]] = {}
    suite._snapshot_round(samples, "ref", Path("/run/x/pool.sock"),
                          keeper=None)  # type: ignore[arg-type]
    one, two = launch.CPUS, snapfast.TWO_VCPUS
    assert events == [("ready",), ("launch", True, one), ("ready",), ("launch", True, two),
                      ("ready",), ("launch", False, one), ("ready",), ("launch", False, two)]
    assert samples["snapshot launch (standby, 2 vCPUs)"] == [0.1]
    assert samples["snapshot launch (2 vCPUs)"] == [0.1]
    assert samples["snapshot launch (standby, 2 vCPUs): clone: load"] == [0.02]
    assert set(suite.SNAPSHOT_2CPU) < set(samples)


def test_snapshot_round_refuses_a_start_on_the_wrong_clone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapfast, "standby_ready", lambda keeper: None)
    monkeypatch.setattr(launch, "launch_once",
                        lambda ref, sock=None, *, snapshot, cpus: launched(standby=False))
    with pytest.raises(RuntimeError, match="standby.*not the expected clone"):
        suite._snapshot_round({}, "ref", Path("/run/x/pool.sock"),
                              keeper=None)  # type: ignore[arg-type]


def test_snapshot_round_leaves_the_own_two_vcpu_clone_out_when_told(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cpus_of: list[tuple[bool, float]] = []
    monkeypatch.setattr(snapfast, "standby_ready", lambda keeper: None)

    def launch_once(ref: str, sock: Path | None = None, *, snapshot: bool,
                    cpus: float) -> launch.Launch:
        cpus_of.append((sock is not None, cpus))
        return launched(standby=sock is not None)

    monkeypatch.setattr(launch, "launch_once", launch_once)
    samples: dict[str, list[float]] = {}
    suite._snapshot_round(samples, "ref", Path("/run/x/pool.sock"),
                          keeper=None, own_2cpu=False)  # type: ignore[arg-type]
    assert cpus_of == [(True, launch.CPUS), (True, snapfast.TWO_VCPUS), (False, launch.CPUS)]
    assert "snapshot launch (2 vCPUs)" not in samples


def test_plot_draws_the_idle_memory_panel_when_given(tmp_path: Path) -> None:
    from bench.cli import MEMORY_BARS
    from bench.plot import plot

    samples = {"warm launch (cpus 0.5)": [0.03, 0.025], "snapshot launch (2 vCPUs)": [0.4]}
    density = [{"idle_vms": 0, "probe_p50_s": 1.0}]
    memory = {label: 10.0 + i for i, (label, _) in enumerate(MEMORY_BARS)}
    memory["runc container"] = None  # not measured: no bar
    with_memory = plot(samples, density, tmp_path / "m.png", "t", memory=memory)
    without = plot(samples, density, tmp_path / "n.png", "t")
    from matplotlib import image

    assert image.imread(with_memory).shape[1] > image.imread(without).shape[1]
    assert {key for _, key in MEMORY_BARS} >= {"idle_vm_private_mib", "idle_pool_vm_private_mib"}


@pytest.mark.parametrize("missed", [1, 2])  # a rotation: the new template, the stale standby
def test_a_standby_launch_served_by_another_clone_is_discarded_and_taken_again(
        monkeypatch: pytest.MonkeyPatch, missed: int) -> None:
    served = iter([False] * missed + [True, True, False, False])
    ready: list[int] = []
    monkeypatch.setattr(snapfast, "standby_ready", lambda keeper: ready.append(1))

    def launch_once(ref: str, sock: Path | None = None, *, snapshot: bool,
                    cpus: float) -> launch.Launch:
        return launch.Launch(0.5 if len(ready) <= missed else 0.1, False, False, None, {},
                             snapshot=True, standby=next(served))

    monkeypatch.setattr(launch, "launch_once", launch_once)
    samples: dict[str, list[float]] = {}
    misses: list[str] = []
    suite._snapshot_round(samples, "ref", Path("/run/x/pool.sock"), keeper=None,  # type: ignore[arg-type]
                          misses=misses)
    assert misses == ["snapshot launch (standby)"] * missed
    assert samples["snapshot launch (standby)"] == [0.1]  # a miss (0.5 s) is no sample
    assert len(ready) == 4 + missed  # the standby ready again before each try


def test_standby_misses_are_bounded_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapfast, "standby_ready", lambda keeper: None)
    monkeypatch.setattr(launch, "launch_once",
                        lambda ref, sock=None, *, snapshot, cpus: launched(standby=False))
    misses = ["x"] * suite.MAX_STANDBY_MISSES
    with pytest.raises(RuntimeError, match="not the expected clone"):
        suite._snapshot_round({}, "ref", Path("/run/x/pool.sock"), keeper=None,  # type: ignore[arg-type]
                              misses=misses)
    assert len(misses) == suite.MAX_STANDBY_MISSES
