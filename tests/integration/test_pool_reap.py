"""A pool daemon that dies leaves no VM behind for long: SIGTERM (a CI run's to its process
group) ends it with its idle and booting VMs destroyed; after a SIGKILL, which no process
survives to clean up, its VMs carry its (dead) pid as their owner and the next daemon of the
pool reaps them."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from tests.conftest import REPO, TEST_TAG, our_domains

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600)]
FILL = 240.0
CLI = [sys.executable, "-m", "executor.cli"]


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A pool name of this test's, the environment of a daemon on a socket of its own; every
    VM of the pool left at the end is destroyed (and fails the test)."""
    name = f"{TEST_TAG}-reap{os.getpid() % 1000}"
    sock = Path(tempfile.mkdtemp(prefix="hypervm-pool-reap-")) / "pool.sock"
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(sock), "PYTHONPATH": str(REPO)}
    yield name, env, sock
    left = our_domains(f"hypervm-{name}-")
    for vm in left:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", vm], check=False,
                       capture_output=True)
    subprocess.run(["rm", "-rf", str(sock.parent)], check=False)
    assert not left, f"left behind: {left}"


def serve(name: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "pool", "serve", "--size", "1", "--learn-images", "0",
                             "--name", name], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([*CLI, "pool", "status"], env=env, capture_output=True, text=True,
                         check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def wait_for(what: Any, timeout: float = FILL) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def test_sigterm_to_the_group_mid_boot_leaves_no_vm(daemon: Any) -> None:
    name, env, _ = daemon
    proc = serve(name, env)
    try:
        # the first VM's domain exists: it is booting (not ready yet, or only just)
        wait_for(lambda: our_domains(f"hypervm-{name}-"))
        os.killpg(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_for(lambda: not our_domains(f"hypervm-{name}-"), 10)
    print(f"stop took {took:.2f} s")  # a figure for the notes, not a bound (bench/ has those)


def test_a_killed_daemons_vms_are_reaped_by_the_next_daemon(daemon: Any, host_cfg: Any
                                                            ) -> None:
    name, env, sock = daemon
    proc = serve(name, env)
    try:
        wait_for(lambda: status(env).get("ready") == 1)
        (left,) = our_domains(f"hypervm-{name}-")
    finally:
        proc.kill()  # SIGKILL: nothing of it runs to clean up
        proc.wait()
    assert our_domains(f"hypervm-{name}-") == {left}  # owned by a dead pid now
    sock.unlink(missing_ok=True)
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock)
    pool = WarmPool(cfg, PoolConfig(size=1, name=name), reap_interval=0.5)
    pool.start()
    try:
        wait_for(lambda: left not in our_domains(f"hypervm-{name}-"), 30)
    finally:
        pool.stop()
    assert wait_for(lambda: not our_domains(f"hypervm-{name}-"), 10)
