"""Pods with published ports start warm (issue 18 part 2): the pool publishes a claimed VM's
ports over its QEMU monitor (``hostfwd_add``) after it answers the claim, meanwhile the
claimer's take-over and first START, which waits for them before its reply. Real VMs: a server
in the guest is reached from the host through the port, from the launcher and from
``hypervm run -p``; a taken port fails the claim with the cold boot's error and leaks nothing;
a VM that loses a port after the check is destroyed, never handed out; the Mesos executor
takes a warm VM for a task with a ``ports`` resource."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import network
from executor.launcher import boot_vm
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from hypervm.errors import NetworkError
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import HYPERVM, REPO, TEST_TAG, our_domains
from tests.integration.test_network import curl, free_port, listening_on, wait_for_http
from tests.integration.test_network_mesos import ports_task
from tests.integration.test_pool import recorded
from tests.mesos.fixtures import vm_agents

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]
POOL_NAME = f"{TEST_TAG}-ppool"
FILL = 240.0
SERVE = 'mkdir -p /www && echo "$TOKEN" > /www/index.html && exec httpd -f -p 80 -h /www'


def pool_vms() -> set[str]:
    return our_domains(f"hypervm-{POOL_NAME}")


@pytest.fixture(scope="module")
def pooled(host_cfg: Any) -> Iterator[tuple[Any, WarmPool]]:
    """A pool of one 1 vCPU / 128 MiB generic VM on a socket of its own."""
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-ppool-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=1, vcpus=1, memory_mib=128, name=POOL_NAME),
                    reap_interval=0.5, refill_delay=0.0)
    pool.start()
    try:
        assert pool.wait_full(FILL), pool.status()
        yield cfg, pool
    finally:
        pool.stop()
        sock_dir.rmdir()
    assert pool_vms() == set(), "stopping the pool must destroy its idle VMs"


@pytest.fixture
def no_leaked_domains(pooled: Any) -> Iterator[None]:
    """The shared leak check, minus the VMs the pool boots meanwhile (still its own)."""
    before = our_domains()
    yield
    _, pool = pooled
    leaked = our_domains() - before - pool.unclaimed()
    for name in leaked:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True,
                       check=False)
    assert not leaked, f"test leaked domains: {sorted(leaked)}"


@pytest.fixture(scope="module")
def busybox_layer(busybox_rootfs: Path, host_cfg: Any) -> Iterator[Path]:
    from vmimage.rootfs import build_layer_image

    host_cfg.rootfs_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TEST_TAG}-pports-", suffix=".erofs",
                                dir=host_cfg.rootfs_dir)
    os.close(fd)
    build_layer_image(busybox_rootfs, Path(name))
    yield Path(name)
    Path(name).unlink(missing_ok=True)


def web_pod(layer: Path, name: str, *ports: PortMapping, token: str = "") -> tuple[Container,
                                                                                   PodSpec]:
    container = Container("web", Rootfs(layers=(layer,)),
                          Process(args=("sh", "-c", SERVE), env=(f"TOKEN={token}",)))
    return container, PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                              resources=Resources(cpus=1, memory_mib=128),
                              network=NetworkSpec(ports=ports))


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_warm_vm_serves_its_published_port(pooled: Any, busybox_layer: Path) -> None:
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    port, token = free_port(), f"warm-{TEST_TAG}"
    mapping = PortMapping(port, 80, "tcp", "127.0.0.1")
    container, pod = web_pod(busybox_layer, "pweb", mapping, token=token)
    idle = set(pool.idle_vms())
    claims = pool.claims
    exited = threading.Event()
    with boot_vm(cfg, pod) as vm:
        assert vm.warm and vm.name in idle and pool.claims == claims + 1
        vm.start(container, on_exit=lambda _: exited.set())
        # published before the START returned (the pool publishes meanwhile: ports_later)
        assert listening_on(port)
        assert wait_for_http(f"http://127.0.0.1:{port}/", 60) == f"{token}\n".encode()
        assert not exited.is_set()
        # recorded on the VM as a cold VM records its ports
        assert recorded(pool._hv, vm.name)["port.0"] == mapping.describe()
    assert not listening_on(port), "the port goes with the VM"
    assert curl(f"http://127.0.0.1:{port}/", 2).returncode != 0


def test_hypervm_run_publish_takes_a_warm_vm(pooled: Any, busybox_rootfs: Path) -> None:
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    port, token = free_port(), f"cli-{TEST_TAG}"
    claims = pool.claims
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(cfg.pool_socket)}
    proc = subprocess.Popen(
        [*HYPERVM, "run", "--name", TEST_TAG, "--memory", "128", "-p", f"127.0.0.1:{port}:80",
         "-e", f"TOKEN={token}", "--rootfs", str(busybox_rootfs), "--", "sh", "-c", SERVE],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/", 90) == f"{token}\n".encode()
        assert pool.claims == claims + 1, "hypervm run -p booted cold"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert not listening_on(port)


def test_a_taken_port_fails_the_claim_like_a_cold_boot(pooled: Any, busybox_layer: Path,
                                                       host_cfg: Any) -> None:
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    idle, claims = set(pool.idle_vms()), pool.claims
    with taken_port() as taken:
        port = taken.getsockname()[1]
        _, pod = web_pod(busybox_layer, "ptaken", PortMapping(port, 80, "tcp", "127.0.0.1"))
        with pytest.raises(NetworkError) as warm:
            boot_vm(cfg, pod)
        with pytest.raises(NetworkError) as cold:
            boot_vm(dataclasses.replace(cfg, use_pool=False), pod)
    assert str(warm.value) == str(cold.value)
    assert f"host port {port}/tcp is already in use" in str(warm.value)
    # checked before a VM was taken: the idle VM is still the pool's, nothing else runs
    assert set(pool.idle_vms()) == idle and pool.claims == claims
    assert not list(host_cfg.vms_dir.glob(f"hypervm-{TEST_TAG}-ptaken-*"))


def test_a_vm_that_loses_a_port_is_destroyed(pooled: Any, busybox_layer: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU refusing the port (taken after the check: here the check is skipped) fails the
    claim, or the first START (which waits for the ports the pool publishes meanwhile), with
    the cold boot's error; the VM, which had the first port published, is destroyed, not
    handed out, and the pool boots a replacement."""
    cfg, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    (victim,) = pool.idle_vms()
    monkeypatch.setattr(network, "check_host_ports", lambda spec: None)
    first = PortMapping(free_port(), 80, "tcp", "127.0.0.1")
    with taken_port() as taken:
        port = taken.getsockname()[1]
        container, pod = web_pod(busybox_layer, "prace", first,
                                 PortMapping(port, 81, "tcp", "127.0.0.1"))
        with pytest.raises(NetworkError, match=f"127.0.0.1:{port}->81/tcp") as err:
            with boot_vm(cfg, pod) as vm:
                vm.start(container)
    assert "a host port is taken" in str(err.value)
    assert victim not in our_domains() and not (cfg.vms_dir / victim).exists()
    assert not listening_on(first.host_port), "the first port went with the VM"
    monkeypatch.undo()
    assert pool.wait_full(FILL), pool.status()
    assert victim not in pool.idle_vms()


@pytest.fixture
def pool_agent(pooled: Any) -> Iterator[Any]:
    cfg, _ = pooled
    with vm_agents("hypervm-ppool-agent-", f"{TEST_TAG}-ppoolexec") as make:
        yield lambda: make(env={"HYPERVM_POOL_SOCKET": str(cfg.pool_socket)})


def test_the_executor_serves_a_ports_task_from_a_warm_vm(pooled: Any, pool_agent: Any,
                                                         image_ref: str) -> None:
    _, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    port, claims = free_port(), pool.claims
    agent = pool_agent()
    script = ('mkdir -p /www && echo "$PORT0 $PORT_80" > /www/index.html && '
              "exec httpd -f -p 80 -h /www")
    # 0.5 cpus / 96 MiB + the executor's 0.1 / 32: the pool's 1 vCPU / 128 MiB
    agent.launch_group([ports_task("web", script, image_ref, port, 80)])
    agent.wait_state("web", "TASK_RUNNING", 120)
    assert pool.claims == claims + 1, "the task booted cold"
    assert wait_for_http(f"http://127.0.0.1:{port}/", 60) == f"{port} {port}\n".encode()
    agent.kill("web")
    assert agent.wait_terminal("web", 60)["state"] == "TASK_KILLED"
    assert agent.wait_executor_exit(60) == 0
    assert not listening_on(port)


def test_a_taken_port_fails_the_mesos_task_with_the_reason(pooled: Any, pool_agent: Any,
                                                           image_ref: str) -> None:
    _, pool = pooled
    assert pool.wait_full(FILL), pool.status()
    idle, claims = set(pool.idle_vms()), pool.claims
    with taken_port() as taken:
        port = taken.getsockname()[1]
        agent = pool_agent()
        agent.launch_group([ports_task("t", "true", image_ref, port, 80)])
        status = agent.wait_terminal("t", 120)
    assert status["state"] == "TASK_FAILED"
    assert f"host port {port}/tcp is already in use" in status["message"]
    assert agent.wait_executor_exit(60) == 0
    assert set(pool.idle_vms()) == idle and pool.claims == claims
