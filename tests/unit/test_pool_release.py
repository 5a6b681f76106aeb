"""A claimer hands its pool VM back for teardown (executor.pool.release): only the process the
pool handed it to may, and the pool ends its QEMU through a pidfd before it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from executor.pool import release
from hypervm.errors import PoolError

VM = "hypervm-pool-1a2b3c4d"


def test_only_the_process_the_vm_was_handed_to_may_release_it() -> None:
    claims = {VM: release.claimer(os.getpid())}
    release.check_claimer(claims, VM, os.getpid())
    with pytest.raises(PoolError, match="not a claimed VM"):
        release.check_claimer(claims, "hypervm-pool-other", os.getpid())
    with pytest.raises(PoolError, match="not pid 1's"):
        release.check_claimer(claims, VM, 1)
    recycled = {VM: (os.getpid(), 1)}  # same pid, another process (start time)
    with pytest.raises(PoolError, match="not pid"):
        release.check_claimer(recycled, VM, os.getpid())
    gone = {VM: (os.getpid(), None)}
    with pytest.raises(PoolError, match="not pid"):
        release.check_claimer(gone, VM, os.getpid())


@pytest.mark.parametrize(("script", "signal_seen"), [
    ("import time; open(sys.argv[-1], 'w').close(); time.sleep(60)", -15),  # dies of SIGTERM
    ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
     "open(sys.argv[-1], 'w').close(); time.sleep(60)", -9),              # needs SIGKILL
])
def test_qemu_is_ended_through_its_pidfd(tmp_path: Path, script: str, signal_seen: int) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; " + script, "-name",
                             f"guest={VM},debug-threads=on", str(ready)])
    (tmp_path / f"{VM}.pid").write_text(f"{proc.pid}\n")
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # it runs (exec done: its command line names the VM), handlers set
        assert release.stop_qemu(VM, timeout=1.0, pid_dir=tmp_path)
        assert proc.wait(5) == signal_seen
    finally:
        proc.kill()
        proc.wait()


def test_no_pid_file_leaves_it_to_libvirt(tmp_path: Path) -> None:
    assert release.stop_qemu(VM, pid_dir=tmp_path) is False


@pytest.mark.parametrize("request_", [{"op": "release"}, {"op": "release", "vm": "x"},
                                      {"op": "release", "vm": "hypervm-../../etc"},
                                      {"op": "release", "vm": 3}])
def test_malformed_releases_are_refused(request_: dict[str, Any]) -> None:
    with pytest.raises(PoolError, match="release.vm"):
        release.parse_release(request_)
    assert release.parse_release(release.release_request(VM)) == VM


def test_a_reply_other_than_released_is_an_error() -> None:
    release.check_released({"released": VM}, VM)
    with pytest.raises(PoolError, match="not pid"):
        release.check_released({"error": "hypervm-pool-x is not pid 3's to release"}, VM)
    with pytest.raises(PoolError, match="malformed"):
        release.check_released({"released": "hypervm-pool-other"}, VM)


class FakeHypervisor:
    def __init__(self) -> None:
        self.destroyed: list[str] = []

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        pass

    def destroy(self, name: str) -> None:
        self.destroyed.append(name)


def test_the_pool_takes_back_only_what_it_handed_out_and_only_once(tmp_path: Path) -> None:
    from executor.pool.daemon import WarmPool
    from executor.pool.idle import IdleVM as _Idle
    from executor.pool.protocol import PoolConfig
    from hypervm.config import config_from_env

    pool = WarmPool(config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)}), PoolConfig(size=1))
    pool._hv = FakeHypervisor()
    pool._stopping.set()
    a, b = socket.socketpair()
    b.close()
    pool._idle.append(_Idle("vm0", tmp_path / "vm0", a, {"version": 1}))
    with pytest.raises(PoolError, match="not a claimed VM"):
        pool._release(os.getpid(), "vm0")  # idle: nobody's to release
    _, sock = pool.claim(1, 128, os.getpid())
    sock.close()
    with pytest.raises(PoolError, match="not pid 1's"):
        pool._release(1, "vm0")
    assert pool._hv.destroyed == []
    pool._release(os.getpid(), "vm0")  # no QEMU to watch here: destroyed through libvirt
    assert pool._hv.destroyed == ["vm0"] and pool.releases == 1
    with pytest.raises(PoolError, match="not a claimed VM"):
        pool._release(os.getpid(), "vm0")
