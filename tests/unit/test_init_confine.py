"""init's container confinement (init/src/confine.c), black-box on the host.

``make confine-check`` links confine.c into a small program that confines itself as init
confines a container process (Docker's default capabilities, no_new_privs when asked, the
seccomp filter), then tries what a container must not do. And the parser's verdicts on the
START/PREPARE ``limits`` and ``process.no_new_privs`` fields (PROTOCOL.md), through the fuzz
harness of test_init_fuzz.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit import test_init_fuzz as fuzz
from tests.unit.test_init_fuzz import START, _with, classify, jframe

harness = fuzz.harness  # the fuzz harness fixture: the parser's verdicts

INIT_DIR = Path(__file__).resolve().parents[2] / "init"
DOCKER_CAPS = "00000000a80425fb"

needs_tools = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("gcc") is None,
    reason="make and gcc are needed to build the check",
)


@pytest.fixture(scope="module")
def confine_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the confinement drops capabilities: run as root")
    build = tmp_path_factory.mktemp("confine-build")
    made = subprocess.run(["make", "-C", str(INIT_DIR), f"BUILD={build}", "confine-check"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    return build / "confine-check"


def probe(binary: Path, *args: str) -> dict[str, str]:
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


@needs_tools
def test_root_keeps_only_dockers_capabilities(confine_check: Path) -> None:
    got = probe(confine_check)
    assert got["confine"] == "ok"
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == DOCKER_CAPS
    assert got["CapInh"] == got["CapAmb"] == "0000000000000000"
    assert got["Seccomp"] == "2" and got["NoNewPrivs"] == "0"


@needs_tools
def test_a_user_has_no_capabilities_but_the_bounding_set(confine_check: Path) -> None:
    got = probe(confine_check, "--uid", "1000", "--no-new-privs")
    assert got["CapEff"] == got["CapPrm"] == "0000000000000000"
    assert got["CapBnd"] == DOCKER_CAPS and got["NoNewPrivs"] == "1"


@needs_tools
@pytest.mark.parametrize("args", [(), ("--uid", "1000", "--no-new-privs")])
def test_the_filter_refuses_dockers_blocked_syscalls(confine_check: Path,
                                                     args: tuple[str, ...]) -> None:
    got = probe(confine_check, *args)
    for name in ("unshare_user", "unshare_fs", "clone_newuser", "keyctl", "add_key", "bpf",
                 "userfaultfd", "perf_event_open", "mount", "io_uring_setup",
                 "personality_odd", "socket_vsock"):
        assert got[name] == "EPERM", (name, got)
    assert got["clone3"] == "ENOSYS"  # so libc falls back to clone(), whose flags it sees
    for name in ("getpid", "personality_query", "socket_inet"):
        assert got[name] == "ok", (name, got)
    # another ABI than x86_64 (int 0x80, x32) kills the process: SIGSYS
    assert got["i386_syscall"] == got["x32_syscall"] == "signal=31"


@needs_tools
def test_the_filters_search_gives_every_syscall_numbers_verdict(confine_check: Path) -> None:
    """The filter searches the denied numbers (a binary search, not a list: cheaper for the
    kernel to install under TCG); emulated over every syscall number 0-1023 and the
    argument-dependent cases, it gives each the verdict of the denied list, no more, no less."""
    got = probe(confine_check, "--verdicts")
    assert int(got["verdict_list"]) >= 60
    assert got["verdict_denied"] == got["verdict_list"]
    assert got["verdict_mismatches"] == "0", got


@needs_tools
@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("limits", 5, "limits"),
        ("limits", {"memory": 1024}, "limits.memory"),
        ("limits", {"memory": -1}, "limits.memory"),
        ("limits", {"memory": 1.5e6}, "limits.memory"),
        ("limits", {"memory": 2**51}, "limits.memory"),
        ("limits", {"memory": "64m"}, "limits.memory"),
        ("limits", {"pids": 1}, "limits.pids"),
        ("limits", {"pids": 2**23}, "limits.pids"),
        ("limits", {"scratch": 4096}, "limits.scratch"),
        ("process.no_new_privs", 1, "process.no_new_privs"),
    ],
)
def test_limit_field_errors_name_the_field(harness: Path, path: str, value: object,
                                           field: str) -> None:
    (line,) = classify(harness, jframe(0x10, 5, _with(START, path, value)))
    assert line.startswith("FRAME type=0x10 id=5 ERROR EINVAL "), line
    assert line.split(" ", 5)[5].startswith(f"{field}:"), line


@needs_tools
def test_limits_are_optional_and_zero_means_none(harness: Path) -> None:
    full = _with(START, "limits", {"memory": 64 << 20, "pids": 100, "scratch": 1 << 30})
    full["process"]["no_new_privs"] = False
    zero = _with(START, "limits", {"memory": 0, "pids": 0, "scratch": 0})
    prepare = {"rootfs": {"layers": ["l0"]}, "limits": {"scratch": 8 << 20}}
    bad_prepare = {"rootfs": {"layers": ["l0"]}, "limits": {"scratch": 1}}
    lines = classify(harness, jframe(0x10, 1, full) + jframe(0x10, 2, zero)
                     + jframe(0x16, 3, prepare) + jframe(0x16, 4, bad_prepare))
    assert lines[:3] == ["FRAME type=0x10 id=1 OK", "FRAME type=0x10 id=2 OK",
                         "FRAME type=0x16 id=3 OK"]
    assert lines[3].startswith("FRAME type=0x16 id=4 ERROR EINVAL limits.scratch:"), lines
