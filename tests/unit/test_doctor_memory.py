"""``hypervm doctor`` reports the host's KSM and whether HyperVMs take part (HYPERVM_KSM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from executor.cli.doctor import CHECKS
from executor.cli.doctor_memory import check_ksm
from hypervm.config import HostConfig


def cfg_for(tmp_path: Path, ksm: bool) -> HostConfig:
    return dataclasses.replace(HostConfig(state_dir=tmp_path, run_dir=tmp_path / "run",
                                          libvirt_uri="test:///default", accel="tcg"), ksm=ksm)


def ksm_dir(tmp_path: Path, run: int, sharing: int = 0, shared: int = 0) -> Path:
    d = tmp_path / "ksm"
    d.mkdir(parents=True)
    for name, value in (("run", run), ("pages_sharing", sharing), ("pages_shared", shared)):
        (d / name).write_text(f"{value}\n")
    return d


def test_doctor_runs_the_ksm_check() -> None:
    assert check_ksm in CHECKS


def test_off_by_default_says_why_whatever_the_host_runs(tmp_path: Path) -> None:
    for run, state in ((0, "is off"), (1, "runs")):
        d = ksm_dir(tmp_path / str(run), run)
        result = check_ksm(cfg_for(tmp_path, ksm=False), d)
        assert result.ok and not result.warn
        assert f"host KSM {state}" in result.detail and "never share a page" in result.detail
        assert "HYPERVM_KSM=off" in result.detail


def test_asked_for_but_not_running_warns_with_the_fix(tmp_path: Path) -> None:
    d = ksm_dir(tmp_path, 0)
    result = check_ksm(cfg_for(tmp_path, ksm=True), d)
    assert result.ok and result.warn
    assert f"echo 1 > {d}/run" in result.fix and result.fix in result.detail


def test_running_reports_what_it_saves(tmp_path: Path) -> None:
    d = ksm_dir(tmp_path, 1, sharing=2560, shared=100)
    result = check_ksm(cfg_for(tmp_path, ksm=True), d)
    assert result.ok and not result.warn
    assert "100 pages kept for 2560 mappings" in result.detail and "~10 MiB" in result.detail


def test_a_kernel_without_ksm(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert not check_ksm(cfg_for(tmp_path, ksm=False), missing).warn
    result = check_ksm(cfg_for(tmp_path, ksm=True), missing)
    assert result.ok and result.warn and "merges nothing" in result.detail
