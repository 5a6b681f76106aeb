"""bench.peers.rollup: a process's RSS, PSS and private memory from /proc/PID/smaps_rollup."""

from __future__ import annotations

import os

from bench import peers


def test_rollup_reports_rss_pss_and_private_of_a_process() -> None:
    mine = peers.rollup(os.getpid())
    assert mine["rss"] > 0 and mine["rss"] >= mine["pss"] >= mine["private"] > 0


def test_rollup_of_a_process_that_is_gone_is_zeros() -> None:
    assert peers.rollup(2**22 + 1) == {"rss": 0.0, "pss": 0.0, "private": 0.0}  # > pid_max
