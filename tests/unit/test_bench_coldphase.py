"""bench.coldphase: the order of a cold round's samples, the paired difference, and the suite's
use of the phase (its keys, target and note; pure, fast: no VM)."""

from __future__ import annotations

import pytest

from bench import coldphase, results, suite
from tests.unit.test_bench_newkeys import doc_with as complete_doc


def test_rotation_puts_each_first_once_and_alternates_two() -> None:
    items = ["raw", "run", "baseline"]
    orders = [coldphase.rotated(items, i) for i in range(3)]
    assert [o[0] for o in orders] == items
    assert all(sorted(o) == sorted(items) for o in orders)
    assert coldphase.rotated(items, 6) == items
    # over 2 x 3 rounds each follows each other one within a round as often (twice)
    follows = [(o[j], o[j + 1]) for o in (coldphase.rotated(items, i) for i in range(6))
               for j in range(2)]
    assert all(follows.count((a, b)) == 2 for a in items for b in items if a != b)
    assert [coldphase.rotated(["raw", "run"], i) for i in range(2)] == [
        ["raw", "run"], ["run", "raw"]]
    assert coldphase.rotated([], 5) == []


def test_paired_p50_is_the_median_of_each_round_s_difference() -> None:
    # the medians differ by 0.1; each round's pair by 0.3 (the load moved both alike)
    runs, raws = [1.3, 2.3, 1.5], [1.0, 2.0, 1.2]
    assert coldphase.paired_p50(runs, raws) == pytest.approx(0.3)
    assert coldphase.paired_p50([], []) is None
    with pytest.raises(ValueError):
        coldphase.paired_p50([1.0], [])


@pytest.mark.parametrize(("run", "cold_raw", "raw", "met"), [
    (1.25, 1.0, 0.9, True),    # 1.25x its own phase's raw boot, whatever the rounds' raw boot
    (1.35, 1.0, 1.2, False),   # 1.35x: missed, though under 1.3x the interleaved raw boot
])
def test_run_true_is_held_to_the_cold_phase_raw_boot(
        run: float, cold_raw: float, raw: float, met: bool) -> None:
    target = results.check_targets(complete_doc(
        run_true_p50_s=run, raw_boot_cold_host_p50_s=cold_raw, raw_boot_p50_s=raw))
    stated = target["run_true_p50_s"]
    assert stated["relative_to"] == "raw_boot_cold_host_p50_s"
    assert stated["limit"] == pytest.approx(1.3 * cold_raw) and stated["met"] is met
    assert target["cold_launch_p50_s"]["relative_to"] == "raw_boot_p50_s"


def test_the_cold_phase_s_raw_boot_is_required() -> None:
    doc = complete_doc()
    del doc["raw_boot_cold_host_p50_s"]
    assert "missing key raw_boot_cold_host_p50_s" in results.validate(doc)


def test_the_suite_takes_the_cold_phase_in_every_plan() -> None:
    assert suite.FULL.cold_rounds >= 10 and suite.QUICK.cold_rounds >= 1
    note = suite.COLD_HOST_NOTE.format(rounds=suite.FULL.cold_rounds)
    assert "no pool daemon" in note and str(suite.FULL.cold_rounds) in note
