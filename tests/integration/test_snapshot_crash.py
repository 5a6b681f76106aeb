"""A pool daemon SIGKILLed while it makes a snapshot's template (its boot, its save into the
store) leaves no VM running (libvirtd auto-destroys the template with the daemon's
connection), no entry a launch would use (the half-written one is a temporary directory), and
what it does leave (the template's run dir, the temporary entry) ``hypervm gc`` selects; while
the daemon lives, gc leaves its template alone (it records the daemon as its owner).

gc runs here as ``dry_run`` (a real gc on this shared host would also end other engineers'
leftovers); the store's part is removed for real (the test's store is its own)."""

from __future__ import annotations

import dataclasses
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

from executor.cli.gc import collect_garbage
from executor.libvirt.hypervisor import Hypervisor
from executor.snapshot import standby, store
from executor.snapshot.store import Shape
from tests.conftest import REPO, TEST_TAG, our_domains
from vmimage.boot import resolve_boot

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.usefixtures("no_leaked_domains")]
SHAPE = Shape(1, 128, tenant=f"{TEST_TAG}-crash")
#: the daemon, with the snapshot store of the test (``fresh_store``'s root, argv[1])
DAEMON = ("import sys\nfrom pathlib import Path\nfrom executor.snapshot import store\n"
          "root = Path(sys.argv.pop(1))\nstore.snapshots_dir = lambda cfg: root\n"
          "from executor.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
WAIT_S = 120.0


@pytest.fixture
def daemon(host_cfg: Any, fresh_store: Path) -> Iterator[tuple[Any, subprocess.Popen[str]]]:
    """A pool daemon of no idle VMs keeping a standby of SHAPE (so it makes SHAPE's template
    into the test's store at once), and the config that reaches it. Killed at the end, every
    VM it left destroyed (and the test fails: none may be left)."""
    sock = Path(tempfile.mkdtemp(prefix="hypervm-crash-")) / "pool.sock"
    name = f"{TEST_TAG}-crash"
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(sock), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(fresh_store), "pool", "serve",
                             "--size", "0", "--standby", "1", "--learn-images", "0",
                             "--name", name], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock, use_pool=True)
    try:
        yield cfg, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", str(sock.parent)], check=False)
    left = our_domains(f"hypervm-{name}-") | set(_templates(cfg, proc.pid))
    for vm in left:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", vm], check=False,
                       capture_output=True)
        subprocess.run(["rm", "-rf", str(cfg.vms_dir / vm)], check=False)
    assert not left, f"left behind: {left}"


def _until(what: Any, timeout: float = WAIT_S, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := what()):
            return found
        time.sleep(every)
    return None


def _ask(cfg: Any, key: str) -> None:
    """Ask for a standby of SHAPE (again: the daemon serves its socket before its keeper
    registers the ``standby`` operation): none is ready, the daemon now wants SHAPE."""
    assert standby.take(cfg, SHAPE, key, "hypervm-template-00000000") is None


def _templates(cfg: Any, owner: int) -> list[str]:
    with Hypervisor(cfg.libvirt_uri, events=False) as hv:
        return [d.name for d in hv.list_ours() if d.name.startswith("hypervm-template-")
                and d.metadata.get("owner-pid") == str(owner)]


def _temporary(root: Path, name: str) -> Path | None:
    """The daemon's temporary entry's ``name`` file once it has bytes."""
    for tmp in root.glob(".*"):
        with_bytes = tmp / name
        if with_bytes.is_file() and with_bytes.stat().st_size > 0:
            return with_bytes
    return None


@pytest.mark.parametrize("point", ["boot", "save"])
def test_a_daemon_killed_making_a_template_leaves_nothing_gc_misses(
        daemon: tuple[Any, subprocess.Popen[str]], fresh_store: Path, point: str) -> None:
    cfg, proc = daemon
    assert _until(lambda: cfg.pool_socket.exists() or proc.poll() is not None, 60)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    # a launch's request for a standby: the daemon now wants SHAPE and makes its template
    key = store.snapshot_key(resolve_boot(cfg), cfg, SHAPE)
    found = _until(lambda: _ask(cfg, key) or _until(lambda: _templates(cfg, proc.pid), 2))
    assert found, "the template records the daemon as its owner"
    template = found[0]
    # while the daemon lives, gc leaves its template alone
    with Hypervisor(cfg.libvirt_uri, events=False) as hv:
        report = collect_garbage(cfg, hv, dry_run=True)
    assert template not in [lo.name for lo in report.destroyed], report.destroyed
    assert template in report.kept
    assert report.removed_snapshot_parts == [], "a live writer's entry is its own"
    if point == "save":  # its stream (or RAM) is being written into the store
        assert _until(lambda: _temporary(fresh_store, "state")
                      or _temporary(fresh_store, "memory"), 60), "the save started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # no VM outlives its owner: libvirtd ends the template with the daemon's connection
    assert _until(lambda: not our_domains(template), 15), f"{template} outlived its daemon"
    # the half-written entry is never one a launch (or the next daemon) uses
    assert store.lookup(cfg, key) is None
    left = sorted(p.name for p in fresh_store.glob(".*"))
    assert left, "the dead writer's temporary entry (what gc must remove)"
    # gc selects what is left: the template's run dir (once past the grace a run dir being
    # created has) and the temporary entry; nothing else of the store
    run_dir = cfg.vms_dir / template
    if run_dir.exists():
        os.utime(run_dir, (0, 0))
    with Hypervisor(cfg.libvirt_uri, events=False) as hv:
        report = collect_garbage(cfg, hv, dry_run=True)
    assert template not in [lo.name for lo in report.destroyed]
    assert not run_dir.exists() or run_dir in report.removed_dirs
    assert sorted(p.name for p in report.removed_snapshot_parts) == left
    assert sorted(p.name for p in store.remove_stale_writes(cfg)) == left
    assert not list(fresh_store.glob(".*"))
    subprocess.run(["rm", "-rf", str(run_dir)], check=False)



#: a HYPERVM_SNAPSHOT=on launch (no pool) of a pod whose shape has no snapshot yet, with the
#: snapshot store of the test (argv[1])
LAUNCH = ("import dataclasses, sys, time\nfrom pathlib import Path\n"
          "from executor.snapshot import store\n"
          "root = Path(sys.argv[1])\nstore.snapshots_dir = lambda cfg: root\n"
          "from executor.launcher import boot_vm\nfrom hypervm.config import config_from_env\n"
          "from tests.integration.test_snapshot import _pod\n"
          "cfg = dataclasses.replace(config_from_env(), use_pool=False, use_snapshot=True)\n"
          "vm = boot_vm(cfg, _pod(cfg, 'crash', 1, 128))\ntime.sleep(300)\n")


def test_a_launch_killed_making_a_template_leaves_no_vm_and_no_entry(
        host_cfg: Any, fresh_store: Path) -> None:
    """The same for a launch that makes its shape's template (HYPERVM_SNAPSHOT=on): its own
    libvirt connection auto-destroys the template."""
    cfg = host_cfg
    launch = subprocess.Popen([sys.executable, "-c", LAUNCH, str(fresh_store)],
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    template = None
    try:
        found = _until(lambda: _templates(cfg, launch.pid) or launch.poll() is not None)
        assert isinstance(found, list), launch.stderr.read() if launch.stderr else ""
        template = found[0]
        os.kill(launch.pid, signal.SIGKILL)
        launch.wait()
        assert _until(lambda: not our_domains(template), 15), f"{template} outlived its launch"
        key = store.snapshot_key(resolve_boot(cfg), cfg, Shape(1, 128))
        assert store.lookup(cfg, key) is None
        left = sorted(p.name for p in fresh_store.glob(".*"))
        assert left and sorted(p.name for p in store.remove_stale_writes(cfg)) == left
    finally:
        if launch.poll() is None:
            launch.kill()
        launch.wait()
        for vm in _templates(cfg, launch.pid):
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", vm], check=False,
                           capture_output=True)
        if template is not None:
            subprocess.run(["rm", "-rf", str(cfg.vms_dir / template)], check=False)
