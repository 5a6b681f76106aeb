"""``hypervm doctor`` reports how shares are confined, and a work dir that cannot confine them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from executor.cli.doctor import check_shares
from hypervm.config import HostConfig


def cfg_for(tmp_path: Path) -> HostConfig:
    return HostConfig(state_dir=tmp_path, run_dir=tmp_path / "run",
                      libvirt_uri="test:///default", accel="tcg")


def test_shares_report_mapped_on_a_filesystem_with_xattrs(tmp_path: Path) -> None:
    result = check_shares(cfg_for(tmp_path), tmp_path)
    assert result.ok and "accessmode mapped" in result.detail


def test_a_work_dir_without_user_xattrs_fails_with_the_fix(tmp_path: Path) -> None:
    mnt = tmp_path / "noxattr"
    mnt.mkdir()
    # ramfs has no user xattrs (tmpfs gained them in Linux 6.6)
    made = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here: {made.stderr.decode()[-200:]}")
    try:
        result = check_shares(cfg_for(tmp_path), mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert not result.ok and "user xattrs" in result.detail and "--work_dir" in result.fix
