"""A pool daemon whose libvirt client libvirtd drops heals by itself (executor.pool.reconnect):
libvirtd disconnects it (``virt-admin client-disconnect``, which disturbs no other client: no
libvirtd restart on a shared host), the daemon reconnects, takes its idle VM back, serves real
launches afterwards (the taken-back VM, then a VM booted after the outage), and on a SIGTERM
right after a second disconnect still destroys its VMs. A standby clone is taken back with its
spare vCPU capped again, and serves the next launch.

A real libvirtd restart (what a platform team's upgrade does) runs only with
``HYPERVM_TEST_LIBVIRTD_RESTART=1`` (``make test``'s last step), and skips itself while other
domains run on the host: a restart would end other users' runs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.cli.fastrun import RUN_OP
from executor.launcher import Launcher, boot_vm
from executor.libvirt import vcpucap
from executor.libvirt.bounds import CFS_PERIOD_US
from executor.libvirt.hypervisor import Hypervisor
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.snapshot import store
from executor.snapshot.keeper import StandbyKeeper
from tests.conftest import REPO, TEARDOWN_GRACE_S, TEST_TAG, our_domains
from tests.integration.test_snapshot import _pod
from tests.integration.test_snapshot_standby import SHAPE, _vcpu_quotas

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600)]
FILL = 240.0
CLI = [sys.executable, "-m", "executor.cli"]
ADMIN = ["virt-admin", "-c", "libvirtd:///system"]


def libvirt_clients(pid: int) -> list[str]:
    """The ids of libvirtd's clients that process ``pid`` opened."""
    listing = subprocess.run([*ADMIN, "srv-clients-list", "libvirtd"], capture_output=True,
                             text=True, check=True).stdout
    ids = [line.split()[0] for line in listing.splitlines()[2:] if line.strip()]
    mine = []
    for client in ids:
        info = subprocess.run([*ADMIN, "client-info", "libvirtd", client], capture_output=True,
                              text=True, check=False).stdout  # gone meanwhile: no info
        if re.search(rf"^unix_process_id\s*:\s*{pid}$", info, re.MULTILINE):
            mine.append(client)
    return mine


def disconnect(pid: int) -> list[str]:
    """libvirtd drops every connection of process ``pid``."""
    clients = libvirt_clients(pid)
    for client in clients:
        subprocess.run([*ADMIN, "client-disconnect", "libvirtd", client], capture_output=True,
                       check=True)
    return clients


#: where `make services` has a hand-started libvirtd write its log
LIBVIRTD_LOG = "/var/log/hypervm-libvirtd.log"


def others_domains(ours: set[str]) -> set[str]:
    """Every running domain on the host but ``ours`` (other users' VMs: a restart ends theirs)."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return {name for name in out.split() if name} - ours


def restart_libvirtd() -> None:
    """systemd's restart, or (a libvirtd started by hand: ``setsid -f catatonit -- libvirtd``)
    SIGTERM and start it again; its domains' QEMUs run on meanwhile."""
    systemd = shutil.which("systemctl") and subprocess.run(
        ["systemctl", "is-active", "--quiet", "libvirtd"], check=False).returncode == 0
    if systemd:
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
    else:
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, "libvirtd did not stop")
        with open(os.devnull, "rb") as null, open(LIBVIRTD_LOG, "ab") as log:  # as `make services`
            subprocess.run(["setsid", "-f", "catatonit", "--", "libvirtd"], check=True,
                           stdin=null, stdout=log, stderr=log)
    wait_for(lambda: subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                                    capture_output=True, check=False).returncode == 0, 60,
             "libvirtd did not come back")


class Daemon:
    """``hypervm pool serve`` (1 idle VM of 1 vCPU / 128 MiB) on a socket of its own; its log
    (--verbose) in a file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="hypervm-pool-rc-"))
        self.env = {**os.environ, "HYPERVM_POOL_SOCKET": str(self.dir / "pool.sock"),
                    "PYTHONPATH": str(REPO)}
        self.log = self.dir / "daemon.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*CLI, "--verbose", "pool", "serve", "--size", "1", "--vcpus", "1",
                 "--memory", "128", "--learn-images", "0", "--name", name],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    def status(self) -> dict[str, Any]:
        out = subprocess.run([*CLI, "pool", "status"], env=self.env, capture_output=True,
                             text=True, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def vms(self) -> set[str]:
        return our_domains(f"hypervm-{self.name}-")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "run", "--name", f"{TEST_TAG}-rc", "--quiet", "--memory",
                               "128", *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=180, check=False)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def wait_for(what: Any, timeout: float = FILL, why: str = "timed out") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, why
        time.sleep(0.2)
    return value


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """Every VM of the daemon's pool left at the end is destroyed (and fails the test)."""
    made = Daemon(f"{TEST_TAG}-rc{os.getpid() % 1000}")
    try:
        yield made
    finally:
        print(made.text()[-6000:])
        made.end()
        left = made.vms()
        for vm in left:
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", vm], check=False,
                           capture_output=True)
    assert not left, f"left behind: {left}"


def test_a_dropped_libvirt_client_reconnects_serves_and_cleans_up(
        daemon: Daemon, host_cfg: Any, image_ref: str, busybox_rootfs: Path) -> None:
    Launcher(host_cfg).resolve(image_ref)  # cached: the pool serves its fast run
    wait_for(lambda: daemon.status().get("ready") == 1)
    (idle,) = daemon.vms()
    assert disconnect(daemon.proc.pid), "the daemon has no libvirt client"
    # the reaper's next listing fails: the daemon reconnects and takes its idle VM back
    healed = wait_for(lambda: (s := daemon.status()).get("outages") == 1 and s["connected"]
                      and s, 60, "the daemon did not reconnect")
    assert healed["ready"] == 1 and healed["boots"] == 1 and daemon.vms() == {idle}
    assert libvirt_clients(daemon.proc.pid), "no new libvirt client"

    # a fast run on the VM taken back (the daemon's own launch, on its reopened connection)
    result = daemon.run(image_ref, "--", "sh", "-c", "echo taken back")
    assert (result.returncode, result.stdout) == (0, "taken back\n"), result.stderr
    after = daemon.status()
    assert after["claims"] == 1 and after["services"][RUN_OP]["served"] == 1, after
    wait_for(lambda: idle not in daemon.vms(), TEARDOWN_GRACE_S, "the claimed VM still runs")
    # a VM booted after the outage, claimed by a full run (the client adopts it)
    wait_for(lambda: daemon.status().get("ready") == 1)
    result = daemon.run("--rootfs", str(busybox_rootfs), "--", "sh", "-c", "echo refilled")
    assert (result.returncode, result.stdout) == (0, "refilled\n"), result.stderr
    assert daemon.status()["claims"] == 2

    # dropped again, and SIGTERMed before it noticed: it reconnects to destroy its VMs
    wait_for(lambda: daemon.status().get("ready") == 1)
    assert disconnect(daemon.proc.pid)
    os.killpg(daemon.proc.pid, signal.SIGTERM)
    assert daemon.proc.wait(60) == 0
    assert wait_for(lambda: not daemon.vms(), TEARDOWN_GRACE_S, f"left: {daemon.vms()}")
    text = daemon.text()
    assert "left running for `hypervm gc`" not in text
    assert text.count("lost the libvirt connection") <= 2  # once per outage, not per call
    assert "client socket is closed" not in text  # no reaper warning every interval


def test_a_standby_is_taken_back_capped_after_its_daemons_client_was_dropped(
        host_cfg: Any, fresh_store: Path) -> None:
    """In-process (the keeper's state is read directly): only the pool's own libvirt client
    is dropped, not the launches' (theirs auto-destroy their VMs)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-sb-rc-"))
    name = f"{TEST_TAG}-sbrc"
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock",
                              use_pool=True, use_snapshot=True, snapshot_max_clones=100)
    pool = WarmPool(cfg, PoolConfig(size=0, standby=1, vcpus=1, memory_mib=128, name=name),
                    reap_interval=0.5)
    keeper = StandbyKeeper(pool, refill_delay=0.0)
    before = set(libvirt_clients(os.getpid()))
    vms = []
    try:
        with pool, keeper:
            (client,) = set(libvirt_clients(os.getpid())) - before  # the pool's connection
            for each in ("first", "second"):  # the snapshot made; the shape wanted
                vms.append(boot_vm(cfg, _pod(cfg, each, 1, 128)))
            for vm in vms:
                vm.destroy()
            assert keeper.wait_ready(store.template_shape(cfg, SHAPE), 120), keeper.status()
            (standby,) = keeper.ready_names()
            capped = [-1, 1000] if store.template_shape(cfg, SHAPE).vcpus > 1 else [-1]
            assert _vcpu_quotas(cfg, standby) in (capped, [None] * len(capped))
            if capped != [-1] and _vcpu_quotas(cfg, standby) == capped:
                # as a restarted libvirtd rewriting the vCPUs' cgroups would leave it
                with Hypervisor(cfg.libvirt_uri) as hv:
                    pid = hv.qemu_pid(standby)
                assert pid is not None
                vcpucap.grant(vcpucap.domain_cgroup(pid), range(1, 2), None, CFS_PERIOD_US)
                assert _vcpu_quotas(cfg, standby) == [-1, -1]
            subprocess.run([*ADMIN, "client-disconnect", "libvirtd", client],
                           capture_output=True, check=True)
            wait_for(lambda: pool.status().get("outages") == 1 and pool.connected, 60,
                     "the daemon did not reconnect")
            assert keeper.ready_names() == [standby], "the standby is taken back"
            assert _vcpu_quotas(cfg, standby) in (capped, [None] * len(capped))
            vms.append(boot_vm(cfg, _pod(cfg, "third", 1, 128)))
            assert vms[-1].name == standby and keeper.status()["taken"] == 1
            vms[-1].destroy()
    finally:
        for vm in vms:
            vm.destroy()
        sock_dir.rmdir()
        deadline = time.monotonic() + TEARDOWN_GRACE_S
        while (left := our_domains(f"hypervm-{name}")) and time.monotonic() < deadline:
            time.sleep(0.2)
        for domain in left:  # a stop that could not destroy them: fails the test below
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", domain], check=False,
                           capture_output=True)
    assert not left, f"stopping the pool must destroy its standbys: {left}"


@pytest.mark.skipif(os.environ.get("HYPERVM_TEST_LIBVIRTD_RESTART") != "1",
                    reason="restarts libvirtd (every VM's management on the host): set "
                           "HYPERVM_TEST_LIBVIRTD_RESTART=1 on a host of your own")
def test_a_libvirtd_restart_is_healed(daemon: Daemon, busybox_rootfs: Path) -> None:
    wait_for(lambda: daemon.status().get("ready") == 1)
    (idle,) = daemon.vms()
    if others := others_domains(daemon.vms()):  # `make test`'s last step, on a shared host
        pytest.skip(f"other VMs run on this host ({len(others)}): a restart would end them")
    restart_libvirtd()
    healed = wait_for(lambda: (s := daemon.status()).get("outages", 0) >= 1 and s["connected"]
                      and s, 60, "the daemon did not reconnect")
    assert healed["ready"] == 1 and daemon.vms() == {idle}
    result = daemon.run("--rootfs", str(busybox_rootfs), "--", "sh", "-c", "echo restarted")
    assert (result.returncode, result.stdout) == (0, "restarted\n"), result.stderr
    os.killpg(daemon.proc.pid, signal.SIGTERM)
    assert daemon.proc.wait(60) == 0
    assert wait_for(lambda: not daemon.vms(), TEARDOWN_GRACE_S, f"left: {daemon.vms()}")
