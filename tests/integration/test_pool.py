"""The warm pool with real VMs: pre-booted empty HyperVMs get a pod's layers (hot-added SCSI
disks) and mounts (binds in QEMU's mount namespace) at claim time; a VM serves one pod only;
a dead claimer's VM is reaped; stopping the pool leaves nothing behind."""

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

from bench.vmenv import guest_ram_pages
from executor.launcher import boot_vm
from executor.libvirt.bounds import resource_bounds
from executor.libvirt.hypervisor import Hypervisor
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from executor.vm import HyperVM
from hypervm.podspec import Container, Mount, PodSpec, Process, Resources, Rootfs
from tests.conftest import (
    REPO,
    TEARDOWN_GRACE_S,
    TEST_TAG,
    domains_after_teardown,
    live_qemus,
    our_domains,
)
from tests.integration import imagebuild
from tests.integration.imagebuild import private_store
from tests.integration.registry import Registry
from tests.integration.test_snapshot_vcpus import _cfs_quota, _vcpu_threads
from tests.mesos.agent import AgentDouble

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]
POOL_NAME = f"{TEST_TAG}-pool"
FILL = 240.0  # two TCG boots, one after the other, on a loaded machine


def pool_vms() -> set[str]:
    return our_domains(f"hypervm-{POOL_NAME}")


@pytest.fixture(scope="module")
def pooled(host_cfg: Any) -> Iterator[tuple[Any, WarmPool]]:
    """A pool of two 1 vCPU / 128 MiB VMs on a socket of its own, and the config to reach it."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-pool-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=2, vcpus=1, memory_mib=128, name=POOL_NAME),
                    reap_interval=0.5)
    pool.start()
    try:
        assert pool.wait_full(FILL), pool.status()
        yield cfg, pool
    finally:
        pool.stop()
        sock_dir.rmdir()  # the socket is gone too
    assert pool_vms() == set(), "stopping the pool must destroy its idle VMs"


def recorded(hv: Any, name: str, timeout: float = 10.0) -> dict[str, str]:
    """The claimed VM's metadata once the pool recorded the claim (it does that
    RECORD_DELAY_S after answering: executor.pool.deferred)."""
    deadline = time.monotonic() + timeout
    while (meta := hv.metadata(name)).get("pool-state") != "claimed":
        if time.monotonic() > deadline:
            return meta
        time.sleep(0.05)
    return meta


@pytest.fixture
def no_leaked_domains(pooled: Any) -> Iterator[None]:
    """The shared leak check, minus the VMs the pool boots meanwhile (they are still its own)."""
    before = our_domains()
    yield
    _, pool = pooled
    deadline = time.monotonic() + TEARDOWN_GRACE_S  # VMs whose QEMU exited: libvirtd ends them
    while (leaked := our_domains() - before - pool.unclaimed()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name in leaked:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True,
                       check=False)
    assert not leaked, f"test leaked domains: {sorted(leaked)}"


@pytest.fixture(scope="module")
def layers(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A two-layer image (so two disks are hot-added) and the busybox one, pulled."""
    ref = imagebuild.push(imagebuild.busybox_base(tmp_path_factory.mktemp("bb")), registry.host,
                          "pool-busybox", "1")
    multi = imagebuild.push(imagebuild.multilayer(tmp_path_factory.mktemp("ml")), registry.host,
                            "pool-multi", "1")
    with private_store() as store:
        yield store.pull(ref), store.pull(multi)


def run(vm: HyperVM, container: Container, timeout: float = 60.0) -> tuple[int, str]:
    out: list[bytes] = []
    done = threading.Event()
    status: dict[str, Any] = {}
    vm.start(container, on_stdout=out.append, on_stderr=out.append,
             on_exit=lambda s: (status.__setitem__("s", s), done.set()))
    assert done.wait(timeout), "the container did not exit"
    return status["s"].code, b"".join(out).decode()


def true_pod(name: str, layers: tuple[Path, ...], memory_mib: int = 128
             ) -> tuple[Container, PodSpec]:
    """A one-container pod running ``true``, of the pool's shape unless ``memory_mib`` says."""
    container = Container("main", Rootfs(layers=layers), Process(args=("true",)))
    return container, PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                              resources=Resources(cpus=1, memory_mib=memory_mib))


def shared_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hypervm-pool-share-"))
    path.chmod(0o755)  # QEMU (libvirt-qemu) reads it
    return path


def test_an_idle_pool_vm_holds_no_guest_pages_of_zeros(pooled: Any) -> None:
    """Once warmed up, a pool VM gives back its guest RAM pages of zeros as a settled cold VM
    does (HyperQEMU's discard-zero-pages): an idle 128 MiB pool VM held ~5.8 MiB of them."""
    cfg, pool = pooled
    if pool.boot_files is None or not pool.boot_files.discards_zero_pages(cfg):
        pytest.skip("this QEMU or host keeps the zero pages (no HyperQEMU zero-discard, KVM)")
    names = pool.idle_vms()
    assert names, pool.status()
    for name in names:
        ram = guest_ram_pages(pool.hypervisor.qemu_pid(name))
        assert ram["resident_kib"] > 4096, ram  # the guest kernel at least: RAM was found
        assert ram["zero_kib"] < 1024, f"{name} keeps {ram['zero_kib']} KiB of zero pages"


def test_a_warm_vm_runs_the_pod_with_its_layers_and_mounts(pooled: Any, layers: Any) -> None:
    cfg, pool = pooled
    busybox, _ = layers
    ro, rw = shared_dir(), shared_dir()
    (ro / "in.txt").write_text("from the host\n")
    os.chmod(rw, 0o777)
    script = ("cat /in/in.txt; echo made-in-vm > /out/vm.txt; "
              "if (echo x > /in/nope) 2>/dev/null; then echo ro-broken; fi; "
              "ls /in; cat /proc/cpuinfo | grep -c ^processor")
    container = Container("main", Rootfs(layers=busybox.layers),
                          Process(args=("/bin/sh", "-c", script)),
                          mounts=(Mount(type="9p", destination="/in", source=ro, readonly=True),
                                  Mount(type="9p", destination="/out", source=rw)))
    pod = PodSpec(name=f"{TEST_TAG}-warm", containers=(container,),
                  resources=Resources(cpus=1, memory_mib=128, cpu_limit=0.5))
    claims = pool.claims
    try:
        with boot_vm(cfg, pod) as vm:
            assert vm.warm and vm.name.startswith(f"hypervm-{POOL_NAME}-")
            assert pool.claims == claims + 1
            with Hypervisor(cfg.libvirt_uri, events=False) as hv:
                meta = recorded(hv, vm.name)
                # the CPU bound (written at the take-over) is in place once the VM is handed
                # over, before anything starts in it; libvirt reads it from the cgroups
                sched = hv.conn.lookupByName(vm.name).schedulerParameters()
            quota = resource_bounds(pod.resources)[0].quota_us
            assert sched["vcpu_quota"] == quota
            # written into the cgroup of the vCPU thread itself (executor.pool.adopt), before
            # the START: the guest's process never runs unbounded
            pid = hv.qemu_pid(vm.name)
            assert pid is not None
            tids = _vcpu_threads(cfg, vm.name)
            assert [_cfs_quota(pid, tid) for tid in tids.values()] == [quota]
            # the pool wrote the pod's entries and made this process the owner
            assert meta["pod"] == pod.name and meta["owner-pid"] == str(os.getpid())
            assert (meta["pool"], meta["pool-state"]) == (POOL_NAME, "claimed")
            code, out = run(vm, container)
            assert code == 0, out
            assert out.split() == ["from", "the", "host", "in.txt", "1"], out
            assert (rw / "vm.txt").read_text() == "made-in-vm\n"
            assert not (ro / "nope").exists()
            name = vm.name
        assert name not in our_domains(name), "the warm VM must go with its pod"
        assert not (cfg.vms_dir / name).exists()
        # the bound directories were never touched by the run dir's removal
        assert (ro / "in.txt").read_text() == "from the host\n"
        assert (rw / "vm.txt").exists()
    finally:
        subprocess.run(["rm", "-rf", str(ro), str(rw)], check=False)


def test_a_warm_vms_guest_plants_no_real_link_or_setuid_file(pooled: Any, layers: Any) -> None:
    """Issue 15: the pool's share (sandboxes bind-mounted into it) is 9p mapped like a cold
    VM's: what the guest makes there is a plain file on the host."""
    import stat

    cfg, pool = pooled
    # the previous test's VM went back to the pool: its replacement may still be booting
    assert pool.wait_full(FILL), pool.status()
    busybox, _ = layers
    sandbox = shared_dir()
    script = ("cd /sb && ln -s /etc/passwd link && echo x > suid && chmod 4755 suid && "
              "mkfifo fifo && ls -l link suid fifo | cut -c1-10")
    container = Container("main", Rootfs(layers=busybox.layers),
                          Process(args=("/bin/sh", "-c", script)),
                          mounts=(Mount(type="9p", destination="/sb", source=sandbox,
                                        owned=True),))
    pod = PodSpec(name=f"{TEST_TAG}-plant", containers=(container,),
                  resources=Resources(cpus=1, memory_mib=128))
    try:
        with boot_vm(cfg, pod) as vm:
            assert vm.warm
            code, out = run(vm, container)
        assert code == 0, out
        assert out.split() == ["prw-r--r--", "lrwxrwxrwx", "-rwsr-xr-x"], out
        for name in ("link", "suid", "fifo"):
            mode = os.lstat(sandbox / name).st_mode
            assert stat.S_ISREG(mode) and not mode & stat.S_ISUID, (name, oct(mode))
    finally:
        subprocess.run(["rm", "-rf", str(sandbox)], check=False)


def test_two_layers_are_hot_added_in_order(pooled: Any, layers: Any) -> None:
    cfg, pool = pooled
    # the previous test's VM went back to the pool: its replacement may still be booting
    assert pool.wait_full(FILL), pool.status()
    _, multi = layers
    container = Container("main", Rootfs(layers=multi.layers), Process(
        args=("/bin/sh", "-c", "ls /data; ls /opq"), env=multi.config.env))
    pod = PodSpec(name=f"{TEST_TAG}-multi", containers=(container,),
                  resources=Resources(cpus=1, memory_mib=128))
    assert len(multi.layers) >= 2
    with boot_vm(cfg, pod) as vm:
        assert vm.warm
        code, out = run(vm, container)
    assert code == 0, out
    assert out.split() == ["keep.txt", "new.txt", "same.txt", "fresh.txt"], out


def test_a_pool_vm_serves_one_pod_only(pooled: Any, layers: Any) -> None:
    cfg, pool = pooled
    busybox, _ = layers
    assert pool.wait_full(FILL), pool.status()
    container = Container("main", Rootfs(layers=busybox.layers),
                          Process(args=("/bin/sh", "-c", "echo $HOSTNAME")))
    seen: list[str] = []
    for i in range(3):
        pod = PodSpec(name=f"{TEST_TAG}-once{i}", containers=(container,),
                      resources=Resources(cpus=1, memory_mib=128))
        with boot_vm(cfg, pod) as vm:
            if vm.warm:
                seen.append(vm.name)
            assert run(vm, container)[0] == 0
    assert len(seen) >= 2, "two VMs were ready: at least two pods start warm"
    assert len(set(seen)) == len(seen), f"a pool VM was handed out twice: {seen}"
    for name in seen:
        assert name not in pool_vms()
    assert pool.wait_full(FILL)
    assert not pool_vms() & set(seen)


def test_other_shapes_boot_cold(pooled: Any, layers: Any) -> None:
    cfg, pool = pooled
    busybox, _ = layers
    container, pod = true_pod("big", busybox.layers, memory_mib=192)
    claims = pool.claims
    with boot_vm(cfg, pod) as vm:
        assert not vm.warm and vm.name.startswith(f"hypervm-{TEST_TAG}-big-")
        assert run(vm, container)[0] == 0
    assert pool.claims == claims


def test_an_image_vm_serves_only_pods_of_its_layers(pooled: Any, layers: Any) -> None:
    """A pool told to keep an image warm boots VMs with its layers attached and mounted; a pod
    of those layers gets one (nothing to hot-add), a pod of another image never does."""
    cfg, pool = pooled
    # the previous test's VM went back to the pool: its replacement may still be booting
    assert pool.wait_full(FILL), pool.status()
    busybox, multi = layers
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-pool-img-"))
    img_cfg = dataclasses.replace(cfg, pool_socket_override=sock_dir / "pool.sock")
    resolved = {busybox.ref: busybox.layers}
    image_pool = WarmPool(img_cfg, PoolConfig(size=0, images=(busybox.ref,), vcpus=1,
                                              memory_mib=128, name=f"{POOL_NAME}-img"),
                          resolve=resolved.__getitem__)
    image_pool.start()
    try:
        assert image_pool.wait_full(FILL), image_pool.status()
        (image_vm,) = image_pool.unclaimed()
        # another image's pod: the image VM is not for it, and there is no generic VM
        other, pod = true_pod("img-other", multi.layers)
        with boot_vm(img_cfg, pod) as vm:
            assert not vm.warm
            assert run(vm, other)[0] == 0
        assert image_pool.unclaimed() == {image_vm} and image_pool.claims == 0
        container = Container("main", Rootfs(layers=busybox.layers),
                              Process(args=("/bin/sh", "-c", "ls /bin/busybox; mount")))
        pod = PodSpec(name=f"{TEST_TAG}-img", containers=(container,),
                      resources=Resources(cpus=1, memory_mib=128))
        with boot_vm(img_cfg, pod) as vm:
            assert vm.warm and vm.warm_layers and vm.name == image_vm
            with Hypervisor(cfg.libvirt_uri, events=False) as hv:
                (info,) = [d for d in hv.list_ours() if d.name == vm.name]
            # the warm-up layer and the image's own, nothing else
            assert set(info.disk_paths) == {*busybox.layers, image_pool._boot_layer}
            assert len(info.disk_paths) == len(busybox.layers) + 1
            code, out = run(vm, container)
        assert code == 0, out
        assert "/bin/busybox" in out and "overlay on / " in out, out
        assert image_pool.claims == 1
    finally:
        image_pool.stop()
        sock_dir.rmdir()


CLAIMER = """
import sys
from pathlib import Path
from hypervm.config import config_from_env
from executor.pool import claim as warm
lease, sock = warm.claim(config_from_env(), 1, 128)
print(lease.vm, flush=True)
sys.stdin.read()
"""


def test_a_dead_claimers_vm_is_reaped(pooled: Any) -> None:
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(cfg.pool_socket), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CLAIMER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        name = proc.stdout.readline().strip() if proc.stdout else ""
        assert name.startswith(f"hypervm-{POOL_NAME}-"), name
        assert name in pool_vms()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while name in pool_vms() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert name not in pool_vms(), "the reaper must destroy a dead claimer's VM"
        assert not (cfg.vms_dir / name).exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_pooled_cli_run_returns_once_qemu_exited(pooled: Any, busybox_rootfs: Path) -> None:
    """``hypervm run`` on a warm VM hands it back to the pool once the workload has exited and
    returns once the VM's QEMU has exited, without waiting for libvirtd's teardown (the pool
    does); its run dir is gone then and the domain soon after."""
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    claims, releases = pool.claims, pool.releases
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(cfg.pool_socket), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "executor.cli", "run", "--name",
                             f"{TEST_TAG}-pooledcli", "--cpus", "1", "--memory", "128",
                             "--rootfs", str(busybox_rootfs), "--", "sh", "-c", "echo warm"],
                            env=env, cwd=REPO, capture_output=True, timeout=120, check=False)
    assert (result.returncode, result.stdout) == (0, b"warm\n"), result.stderr.decode()
    assert pool.claims == claims + 1, "the run did not take a warm VM"
    assert pool.releases == releases + 1, "the run did not hand its VM back to the pool"
    (name,) = [n for n in our_domains(f"hypervm-{POOL_NAME}-") - pool.unclaimed()] or [None]
    if name is not None:  # still being torn down by libvirtd
        assert live_qemus(name) == [], "hypervm run returned before QEMU exited"
        assert not (cfg.vms_dir / name).exists()
    leftover = domains_after_teardown(f"hypervm-{POOL_NAME}-") - pool.unclaimed()
    assert not leftover, "libvirtd did not end the claimed VM"


def test_the_executor_takes_warm_vms(pooled: Any, registry: Registry,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    ref = imagebuild.push(imagebuild.busybox_base(tmp_path_factory.mktemp("ex")), registry.host,
                          "pool-exec", "1")
    workdir = Path(tempfile.mkdtemp(prefix="hypervm-pool-agent-"))
    workdir.chmod(0o755)
    agent = AgentDouble(workdir / "agent", runtime=None, executor_id=f"{TEST_TAG}-poolexec",
                        env={"HYPERVM_POOL_SOCKET": str(cfg.pool_socket)})
    claims = pool.claims
    try:
        agent.start_executor()
        agent.wait_subscribed(timeout=30)
        agent.launch_group([{
            "task_id": {"value": "w"}, "name": "w",
            "container": {"type": "MESOS",
                          "mesos": {"image": {"type": "DOCKER", "docker": {"name": ref}}}},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                          # + the executor's own 32 MiB: the pool's 128
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 96}}],
            "command": {"value": "echo warm > $MESOS_SANDBOX/from-vm; echo out"}}])
        assert agent.wait_terminal("w", 120)["state"] == "TASK_FINISHED"
        assert agent.states("w") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        assert agent.wait_executor_exit(60) == 0
        assert pool.claims == claims + 1
        sandbox = agent.sandbox / "tasks" / "w"
        assert (sandbox / "stdout").read_text() == "out\n"
        assert (sandbox / "from-vm").read_text() == "warm\n"
        assert agent.violations == []
    finally:
        agent.stop()
        print(agent.executor_log()[-6000:])
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_pool_serve_and_status_from_the_cli(tmp_path: Path) -> None:
    """``hypervm pool serve`` fills, ``status`` reports it, SIGTERM destroys the idle VM."""
    sock = Path(tempfile.mkdtemp(prefix="hypervm-pool-cli-")) / "pool.sock"
    name = f"{TEST_TAG}-clipool"
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(sock), "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "executor.cli"]
    serve = subprocess.Popen([*cli, "pool", "serve", "--size", "1", "--name", name], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + FILL
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            out = subprocess.run([*cli, "pool", "status"], env=env, capture_output=True,
                                 text=True, check=False)
            if out.returncode == 0:
                import json

                status = json.loads(out.stdout)
                if status["ready"] == 1:
                    break
            time.sleep(0.5)
        assert status.get("ready") == 1, status
        assert (status["name"], status["vcpus"], status["memory_mib"]) == (name, 1, 128)
        vms = our_domains(f"hypervm-{name}-")
        assert len(vms) == 1
        # a second daemon on the same socket is refused with one line
        second = subprocess.run([*cli, "pool", "serve", "--size", "1"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 125  # hypervm's own failure
        assert second.stderr.strip().splitlines() == [
            f"hypervm: error: a warm pool already serves at {sock} (stop it first, or set "
            "HYPERVM_POOL_SOCKET)"]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
        assert our_domains(f"hypervm-{name}-") == set()
        assert not sock.exists()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for vm in our_domains(f"hypervm-{name}-"):
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", vm], check=False)
        subprocess.run(["rm", "-rf", str(sock.parent)], check=False)


def test_bad_pool_settings_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(tmp_path / "p.sock"),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "executor.cli", "pool", "serve", "--size", "0"],
                         env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 125
    assert out.stderr.strip().splitlines() == [
        "hypervm: error: pool.size: 0 idle VMs in all is out of range "
        "(keep size + images × per_image within 1..64)"]
    out = subprocess.run([sys.executable, "-m", "executor.cli", "pool", "serve", "--image",
                          "web:1", "--image", "web:1"],
                         env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 125
    assert out.stderr.strip().splitlines() == [
        "hypervm: error: pool.images: docker.io/library/web:1 is listed twice "
        "(list each image once; --per-image sets how many VMs)"]
    out = subprocess.run([sys.executable, "-m", "executor.cli", "pool", "status"], env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 125
    assert out.stderr.strip() == f"hypervm: error: no warm pool serves at {tmp_path / 'p.sock'}"


def test_a_failed_hand_over_boots_cold_and_leaves_nothing(pooled: Any, layers: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """When giving the pod to the claimed VM fails midway, that VM is destroyed (it is ours
    by then) and the pod boots cold: the launch does not fail."""
    from executor.pool import claim as warm
    from hypervm.errors import PoolError

    cfg, pool = pooled
    busybox, _ = layers
    assert pool.wait_full(FILL), pool.status()

    def broken_bind(*_: object) -> None:
        raise PoolError("injected: cannot bind")

    monkeypatch.setattr(warm, "start_bind", broken_bind)
    share = shared_dir()
    container = Container("main", Rootfs(layers=busybox.layers),
                          Process(args=("/bin/sh", "-c", "ls /s; echo ok")),
                          mounts=(Mount(type="9p", destination="/s", source=share),))
    pod = PodSpec(name=f"{TEST_TAG}-fallback", containers=(container,),
                  resources=Resources(cpus=1, memory_mib=128))
    claims, before = pool.claims, pool_vms()
    try:
        with boot_vm(cfg, pod) as vm:
            assert not vm.warm and vm.name.startswith(f"hypervm-{TEST_TAG}-fallback-")
            assert pool.claims == claims + 1
            taken = before - pool_vms()
            assert len(taken) == 1, "exactly the claimed VM is gone"
            assert run(vm, container) == (0, "ok\n")
    finally:
        share.rmdir()


def test_idle_vms_that_died_are_skipped(pooled: Any, layers: Any) -> None:
    """Pool VMs destroyed behind the pool's back (``hypervm gc --all``, a crash) are never
    handed out: the claim discards them, and with none left the pod boots cold."""
    cfg, pool = pooled
    busybox, _ = layers
    assert pool.wait_full(FILL), pool.status()
    victims = pool.unclaimed()
    assert len(victims) == 2
    for victim in victims:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", victim], check=True,
                       capture_output=True)
    container, pod = true_pod("skip", busybox.layers)
    claims = pool.claims
    with boot_vm(cfg, pod) as vm:
        assert not vm.warm and vm.name not in victims
        assert run(vm, container)[0] == 0
    assert pool.claims == claims
    assert not victims & pool.unclaimed()
    for victim in victims:
        assert not (cfg.vms_dir / victim).exists()
    assert pool.wait_full(FILL), "the pool refills after losing its VMs"
