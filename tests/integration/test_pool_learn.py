"""A warm pool that learns the images run through it, with real VMs: the second ``hypervm run``
of an image gets an image VM (its layers attached, its container prepared); another tenant's pod
or another image's never does; the learned set stays within its bound and a forgotten image's
idle VM is destroyed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.cli.fastrun_serve import RUN_OP, RunService
from executor.launcher import Launcher, boot_vm
from executor.pool.daemon import WarmPool
from executor.pool.protocol import PoolConfig
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import REPO, TEST_TAG, domains_after_teardown, our_domains
from tests.integration import imagebuild
from tests.integration.registry import Registry
from tests.integration.test_pool import run

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(900)]
POOL_NAME = f"{TEST_TAG}-learn"
FILL = 240.0


@dataclasses.dataclass
class Learning:
    pool: WarmPool
    cfg: Any
    env: dict[str, str]
    ref: str
    other: str
    images: dict[str, Any]


@pytest.fixture(scope="module")
def learning(host_cfg: Any, image_ref: str, registry: Registry,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Learning]:
    """A pool of one generic VM that learns 2 images, serving fast runs on a socket of its
    own; two images in the host cache (as `hypervm pull` leaves them)."""
    other = imagebuild.push(imagebuild.multilayer(tmp_path_factory.mktemp("ml")), registry.host,
                            "learn-multi", "1")
    launcher = Launcher(host_cfg)
    images = {ref: launcher.resolve(ref) for ref in (image_ref, other)}
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-learn-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=1, vcpus=1, memory_mib=128, name=POOL_NAME,
                                    learn_images=2), reap_interval=0.5)
    pool.add_service(RUN_OP, RunService(pool))
    pool.start()
    env = {**os.environ, "HYPERVM_POOL_SOCKET": str(cfg.pool_socket), "PYTHONPATH": str(REPO)}
    try:
        yield Learning(pool, cfg, env, image_ref, other, images)
    finally:
        pool.stop()
        sock_dir.rmdir()
    assert domains_after_teardown(f"hypervm-{POOL_NAME}") == set()


def wait_until(what: Callable[[], bool], pool: WarmPool, timeout: float = FILL) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.2)


def learned(pool: WarmPool) -> dict[tuple[str, str], int]:
    """(tenant, image) -> its ready VMs."""
    return {(i["tenant"], i["image"]): i["ready"] for i in pool.status()["learned"]}


def generic_ready(pool: WarmPool) -> bool:
    status = pool.status()
    return status["ready"] - sum(i["ready"] for i in status["learned"]) >= 1


def fast_run(lr: Learning, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "executor.cli", "run", "--name",
                           f"{TEST_TAG}-learn", "--quiet", "--memory", "128", lr.ref, "--",
                           *args], env=lr.env, cwd=REPO, capture_output=True, timeout=180,
                          check=False)


def pod(lr: Learning, ref: str, tenant: str) -> tuple[Container, PodSpec]:
    container = Container("main", Rootfs(layers=lr.images[ref].layers), Process(args=("true",)))
    return container, PodSpec(name=f"{TEST_TAG}-learn", containers=(container,),
                              resources=Resources(cpus=1, memory_mib=128),
                              network=NetworkSpec(tenant=tenant), image=lr.images[ref].ref)


def test_the_second_run_of_an_image_gets_an_image_vm(learning: Learning) -> None:
    lr, pool = learning, learning.pool
    ref = lr.images[lr.ref].ref
    wait_until(lambda: generic_ready(pool), pool)
    first = fast_run(lr, "true")
    assert first.returncode == 0, first.stderr.decode()
    assert pool.status()["served_by"] == {"generic": 1, "image": 0, "learned": 0}
    wait_until(lambda: learned(pool).get(("default", ref)) == 1, pool)
    second = fast_run(lr, "sh", "-c", "echo learned; ls /bin/busybox")
    assert (second.returncode, second.stdout) == (0, b"learned\n/bin/busybox\n"), second
    assert pool.status()["served_by"]["learned"] == 1
    assert pool.status()["served_by"]["generic"] == 1


def test_another_tenant_or_image_never_gets_it_and_the_bound_holds(learning: Learning) -> None:
    lr, pool = learning, learning.pool
    ref, other = lr.images[lr.ref].ref, lr.images[lr.other].ref
    wait_until(lambda: learned(pool).get(("default", ref)) == 1 and generic_ready(pool), pool)
    with pool._cond:
        (kept,) = [vm.name for vm in pool._idle if vm.kept_for == "default"]
    served = dict(pool.status()["served_by"])
    # another tenant's pod of the same image: the generic VM (or a cold boot), never `kept`
    container, spec = pod(lr, lr.ref, "other-tenant")
    with boot_vm(lr.cfg, spec) as vm:
        assert vm.name != kept and not vm.warm_layers
        assert run(vm, container)[0] == 0
    assert kept in pool.idle_vms()
    # another image's pod (the default tenant's): not `kept` either; it is learned, and the
    # oldest of 3 learned images, the default tenant's first, is forgotten: its VM destroyed
    wait_until(lambda: generic_ready(pool), pool)
    container, spec = pod(lr, lr.other, "default")
    with boot_vm(lr.cfg, spec) as vm:
        assert vm.name != kept and not vm.warm_layers
        assert run(vm, container)[0] == 0
    assert set(learned(pool)) == {("other-tenant", ref), ("default", other)}
    assert pool.status()["served_by"]["learned"] == served["learned"]
    wait_until(lambda: kept not in our_domains(kept), pool, timeout=30)
    assert kept not in pool.unclaimed()
    # the other tenant's run is served by its own learned VM now
    wait_until(lambda: learned(pool).get(("other-tenant", ref)) == 1, pool)
    container, spec = pod(lr, lr.ref, "other-tenant")
    with boot_vm(lr.cfg, spec) as vm:
        assert vm.warm_layers
        assert run(vm, container)[0] == 0
    assert pool.status()["served_by"]["learned"] == served["learned"] + 1
