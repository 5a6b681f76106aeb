"""Rotated task output files and the executor's small pure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.mesos.logs import RotatingFile, rotation_from_env
from executor.mesos.runtime import ExitStatus
from executor.mesos.tasks import exit_message
from hypervm.errors import InvalidSpec


def test_rotation_keeps_backups(tmp_path: Path) -> None:
    out = RotatingFile(tmp_path / "stdout", max_bytes=10, backups=2)
    for chunk in (b"aaaaaaaa", b"bbbbbbbb", b"cccccccc", b"dddddddd"):
        out.write(chunk)
    out.close()
    assert (tmp_path / "stdout").read_bytes() == b"dddddddd"
    assert (tmp_path / "stdout.1").read_bytes() == b"cccccccc"
    assert (tmp_path / "stdout.2").read_bytes() == b"bbbbbbbb"
    assert not (tmp_path / "stdout.3").exists()


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "stderr").write_bytes(b"old\n")
    out = RotatingFile(tmp_path / "stderr")
    out.write(b"new\n")
    out.close()
    assert (tmp_path / "stderr").read_bytes() == b"old\nnew\n"


def test_write_after_close_does_not_raise(tmp_path: Path) -> None:
    out = RotatingFile(tmp_path / "stdout")
    out.close()
    out.write(b"late")  # output racing the exit must never kill the executor


def test_rotation_settings() -> None:
    assert rotation_from_env({}) == (10 * 1024 * 1024, 5)
    assert rotation_from_env({"HYPERVM_LOG_MAX_BYTES": "1000", "HYPERVM_LOG_BACKUPS": "0"}) == (
        1000, 0)
    with pytest.raises(InvalidSpec) as info:
        rotation_from_env({"HYPERVM_LOG_MAX_BYTES": "10MB"})
    assert info.value.field == "HYPERVM_LOG_MAX_BYTES"


def test_exit_messages() -> None:
    assert exit_message(ExitStatus(3, None)) == "Command exited with status 3"
    assert exit_message(ExitStatus(None, 9)) == "Command terminated with signal SIGKILL (Killed)"
    assert "99" in exit_message(ExitStatus(None, 99))
