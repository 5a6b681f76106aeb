"""The guest init builds as a static binary with -Wall -Wextra -Werror, idempotently.

Builds into a temporary directory (make BUILD=...), so the shared init/build is left alone.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

INIT_DIR = Path(__file__).resolve().parents[2] / "init"

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("gcc") is None,
    reason="make and gcc are needed to build the init",
)


def _make(build: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(INIT_DIR), f"BUILD={build}", *targets],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    build = tmp_path_factory.mktemp("init-build")
    result = _make(build)
    assert result.returncode == 0, result.stdout + result.stderr
    return build / "hypervm-init", result.stdout


def test_builds_with_werror_and_no_warning(built: tuple[Path, str]) -> None:
    binary, log = built
    assert binary.is_file()
    assert "-Werror" in log and "-Wall" in log and "-Wextra" in log
    assert "warning:" not in log


def test_binary_is_static(built: tuple[Path, str]) -> None:
    binary, _ = built
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF"
    # a dynamically linked ELF names its program interpreter (ld-linux / ld-musl)
    assert b"/ld-linux" not in data and b"ld-musl-x86_64.so" not in data
    if shutil.which("file"):
        described = subprocess.run(["file", str(binary)], capture_output=True, text=True).stdout
        assert "statically linked" in described


def test_make_is_idempotent(built: tuple[Path, str]) -> None:
    binary, _ = built
    before = binary.stat().st_mtime_ns
    again = _make(binary.parent)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout
    assert binary.stat().st_mtime_ns == before


def test_refuses_to_run_unless_pid_1(built: tuple[Path, str]) -> None:
    binary, _ = built
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "hypervm-init: runs only as PID 1" in result.stderr


def test_shim_mode_rejects_bad_arguments(built: tuple[Path, str]) -> None:
    binary, _ = built
    result = subprocess.run(
        [str(binary), "--shim", "not-a-pid"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert "usage: hypervm-init --shim PID STATUS-FD" in result.stderr


def test_clean_removes_the_build(tmp_path: Path) -> None:
    build = tmp_path / "b"
    assert _make(build).returncode == 0
    assert _make(build, "clean").returncode == 0
    assert not build.exists()
