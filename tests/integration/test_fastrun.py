"""The fast ``hypervm run`` with real VMs: the pool daemon runs a plain foreground run for the
thin client (executor.cli.fastrun); output, exit statuses, signals, a client killed mid-run,
and the fallback to the full CLI when the pool cannot serve the run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.cli.fastrun_serve import RUN_OP, RunService
from executor.launcher import Launcher
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from tests.conftest import (
    REPO,
    TEARDOWN_GRACE_S,
    TEST_TAG,
    domains_after_teardown,
    our_domains,
)
from tests.integration import imagebuild
from tests.integration.registry import Registry

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600)]
POOL_NAME = f"{TEST_TAG}-fast"
FILL = 240.0


@dataclasses.dataclass
class FastPool:
    pool: WarmPool
    service: RunService
    env: dict[str, str]
    ref: str


@pytest.fixture(scope="module")
def fast(host_cfg: Any, image_ref: str) -> Iterator[FastPool]:
    """A one-VM pool serving fast runs on a socket of its own; the image in the host cache."""
    Launcher(host_cfg).resolve(image_ref)  # what `hypervm pull` does
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-fast-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=1, vcpus=1, memory_mib=128, name=POOL_NAME),
                    reap_interval=0.5)
    service = RunService(pool)
    pool.add_service(RUN_OP, service)
    pool.start()
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(cfg.pool_socket), "PYTHONPATH": str(REPO)}
    try:
        yield FastPool(pool, service, env, image_ref)
    finally:
        pool.stop()
        sock_dir.rmdir()
    assert domains_after_teardown(f"hypervm-{POOL_NAME}") == set()


def _argv(fp: FastPool, *args: str, memory: str = "128", ref: str | None = None) -> list[str]:
    return [sys.executable, "-m", "executor.cli", "run", "--name", f"{TEST_TAG}-fast",
            "--quiet", "--memory", memory, ref or fp.ref, "--", *args]


def _run(fp: FastPool, *args: str, memory: str = "128") -> subprocess.CompletedProcess[bytes]:
    assert fp.pool.wait_full(FILL), fp.pool.status()
    served = fp.service.served
    result = subprocess.run(_argv(fp, *args, memory=memory), env=fp.env, cwd=REPO,
                            capture_output=True, timeout=180, check=False)
    if memory == "128":
        assert fp.service.served == served + 1, result.stderr.decode()
    return result


def _gone(name: str, timeout: float = TEARDOWN_GRACE_S) -> bool:
    deadline = time.monotonic() + timeout
    while name in our_domains(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    return name not in our_domains(name)


def test_output_and_the_workloads_own_status(fast: FastPool) -> None:
    result = _run(fast, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert _run(fast, "true").returncode == 0


def test_not_found_and_killed_by_a_signal(fast: FastPool) -> None:
    result = _run(fast, "nosuch")
    assert result.returncode == 127
    assert b"nosuch: command not found in the container" in result.stderr
    assert _run(fast, "sh", "-c", "kill -9 $$").returncode == 128 + 9


def _start_sleeper(fast: FastPool) -> tuple[subprocess.Popen[bytes], str]:
    """A fast run of ``sleep 60``, once it runs; the name of its VM."""
    assert fast.pool.wait_full(FILL), fast.pool.status()
    idle = set(fast.pool.idle_vms())
    served = fast.service.served
    proc = subprocess.Popen(_argv(fast, "sh", "-c", "echo started; exec sleep 60"),
                            env=fast.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert fast.service.served == served + 1
    (name,) = idle - set(fast.pool.idle_vms())
    return proc, name


def test_sigterm_is_forwarded_to_the_workload(fast: FastPool) -> None:
    proc, name = _start_sleeper(fast)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert _gone(name)


def test_a_killed_client_leaves_no_vm_and_nothing_is_reused(fast: FastPool) -> None:
    proc, name = _start_sleeper(fast)
    proc.kill()
    proc.wait(10)
    assert _gone(name), f"{name} outlived its killed client"
    assert name not in fast.pool.idle_vms() and name not in fast.pool.unclaimed()
    result = _run(fast, "true")  # the next run gets another VM
    assert result.returncode == 0 and name not in fast.pool.idle_vms()


def test_a_shape_the_pool_lacks_runs_through_the_full_cli(fast: FastPool) -> None:
    fallbacks, served = fast.service.fallbacks, fast.service.served
    result = _run(fast, "sh", "-c", "echo cold; exit 4", memory="256")
    assert (result.returncode, result.stdout) == (4, b"cold\n"), result.stderr.decode()
    assert fast.service.fallbacks == fallbacks + 1 and fast.service.served == served


def test_bad_input_is_the_full_clis_error(fast: FastPool) -> None:
    fallbacks = fast.service.fallbacks
    result = subprocess.run(_argv(fast, "true", memory="5x"), env=fast.env, cwd=REPO,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 125 and b"--memory" in result.stderr
    assert result.stderr.count(b"error") == 1  # printed once, by the full CLI
    assert fast.service.fallbacks == fallbacks + 1


def test_an_image_not_in_the_cache_is_pulled_by_the_full_cli(
        fast: FastPool, registry: Registry, tmp_path: Path) -> None:
    ref = imagebuild.push(imagebuild.busybox_base(tmp_path / "layout"), registry.host,
                          f"fastmiss-{TEST_TAG}", "1")
    assert fast.pool.wait_full(FILL), fast.pool.status()
    fallbacks, served, claims = fast.service.fallbacks, fast.service.served, fast.pool.claims
    result = subprocess.run(_argv(fast, "echo", "pulled", ref=ref), env=fast.env, cwd=REPO,
                            capture_output=True, timeout=300, check=False)
    assert (result.returncode, result.stdout) == (0, b"pulled\n"), result.stderr.decode()
    assert fast.service.fallbacks == fallbacks + 1 and fast.service.served == served
    assert fast.pool.claims == claims + 1  # the full CLI took the pool's VM


def test_a_daemon_hung_after_accepting_leaves_the_run_to_the_full_cli(
        fast: FastPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon takes the request and hangs (here right after claiming a VM for it): the
    client stops waiting after ACCEPT_TIMEOUT (10 s) and runs the full CLI, which runs the
    command once; the daemon, when it comes back, gets no go and destroys its VM unused."""
    assert fast.pool.wait_full(FILL), fast.pool.status()
    release, claimed = threading.Event(), []
    real = fast.service._claim

    def hung(*args: Any) -> Any:
        vm, run = real(*args)
        claimed.append(vm.name)
        release.wait(300)
        return vm, run

    monkeypatch.setattr(fast.service, "_claim", hung)
    before = fast.service.status()
    try:
        started = time.monotonic()
        # our output is a pipe read to its end: a daemon holding our descriptors would hang
        # this (they go to the daemon only with our go)
        result = subprocess.run(_argv(fast, "echo", "ran"), env=fast.env, cwd=REPO,
                                capture_output=True, timeout=120, check=False)
    finally:
        release.set()
    assert (result.returncode, result.stdout) == (0, b"ran\n"), result.stderr.decode()
    assert b"did not answer within 10 s" in result.stderr
    assert time.monotonic() - started >= 10
    deadline = time.monotonic() + 30
    while fast.service.status()["abandoned"] == before["abandoned"]:
        assert time.monotonic() < deadline, fast.service.status()
        time.sleep(0.1)
    after = fast.service.status()
    assert after["served"] == before["served"] and after["abandoned"] == before["abandoned"] + 1
    assert fast.pool.status()["services"][RUN_OP] == after  # what hypervm pool status shows
    assert _gone(claimed[0]), f"{claimed[0]}, claimed for a client that gave up, is still there"
