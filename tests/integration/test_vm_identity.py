"""Issue 15 finding 10: one QEMU cannot open another VM's shares, run files or libvirt files.

Two real VMs, each with a sandbox-like (owned) share it writes into; then, with exactly the
credentials VM A's QEMU has (uid, gid, groups from /proc), the host tries to open what is VM
B's. With one QEMU user for all VMs every open succeeded."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.libvirt import identity
from hypervm.podspec import Container, Mount, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, run_to_exit
from tests.integration.imagebuild import private_store
from vmimage.images import ImageStore

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]


@pytest.fixture
def store() -> Iterator[ImageStore]:
    with private_store() as s:
        yield s


@pytest.fixture
def sandboxes() -> Iterator[list[Path]]:
    """Two sandbox dirs made the way an agent makes them (root, 0755, world-traversable
    parents)."""
    made = []
    for _ in range(2):
        path = Path(tempfile.mkdtemp(prefix="hypervm-ident-", dir="/var/tmp"))
        path.chmod(0o755)
        made.append(path)
    yield made
    subprocess.run(["rm", "-rf", *map(str, made)], check=False)


def qemu_creds(vm: Any) -> tuple[int, int, list[int]]:
    """uid, gid and groups of the VM's QEMU process, as the kernel sees them."""
    pid = vm._hypervisor.qemu_pid(vm.name)
    assert pid is not None
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1]),
            [int(g) for g in fields["Groups"].split()])


def as_qemu(creds: tuple[int, int, list[int]], *argv: str) -> subprocess.CompletedProcess:
    uid, gid, groups = creds
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args, *argv],
                          capture_output=True, text=True, check=False, timeout=30)


def writer_pod(name: str, layers: tuple[Path, ...], sandbox: Path) -> tuple[Container, PodSpec]:
    container = Container("main", Rootfs(layers=layers),
                          Process(args=("/bin/sh", "-c", "echo secret > /sandbox/file")),
                          mounts=(Mount(type="9p", destination="/sandbox", source=sandbox,
                                        owned=True),))
    return container, PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                              resources=Resources(cpus=1, memory_mib=128))


def test_one_qemu_cannot_open_another_vms_files(vm_factory: Any, host_cfg: Any, image_ref: str,
                                                store: ImageStore,
                                                sandboxes: list[Path]) -> None:
    image = store.pull(image_ref)
    vms = []
    for name, sandbox in zip(("ida", "idb"), sandboxes, strict=True):
        container, pod = writer_pod(name, image.layers, sandbox)
        vm = vm_factory(pod)
        code, out = run_to_exit(vm, container)
        assert code == 0, out
        vms.append(vm)
    a, b = vms
    creds_a, creds_b = qemu_creds(a), qemu_creds(b)
    assert creds_a[0] != creds_b[0] and creds_a[1] != creds_b[1], (creds_a, creds_b)
    first, last = host_cfg.vm_uid_range
    assert first <= creds_a[0] <= last and first <= creds_b[0] <= last
    # the test can tell: A's QEMU credentials open A's own share
    assert as_qemu(creds_a, "cat", str(sandboxes[0] / "file")).stdout == "secret\n"
    # libvirt's private directory of VM B (domain-ID-<first 20 characters of the name>)
    libvirt_b = [p for p in identity.LIBVIRT_QEMU_DIR.glob("domain-*")
                 if p.stat().st_uid == creds_b[0]]
    assert libvirt_b, "libvirt's private directory of VM B"
    for target in (sandboxes[1] / "file", sandboxes[1], b.console_log, b.channel_socket,
                   b.run_dir, libvirt_b[0] / "master-key.aes"):
        result = as_qemu(creds_a, "cat", str(target))
        assert result.returncode != 0 and "Permission denied" in result.stderr, (target, result)
    result = as_qemu(creds_a, "touch", str(sandboxes[1] / "planted"))
    assert result.returncode != 0 and not (sandboxes[1] / "planted").exists()
    # nor its own run dir, where root (virtlogd, at every rotation) makes the console log
    for argv in (("mv", str(a.console_log), str(a.run_dir / "moved")),
                 ("ln", "-s", "/etc/passwd", str(a.run_dir / "console.log.0"))):
        result = as_qemu(creds_a, *argv)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (argv, result)
    assert sorted(p.name for p in a.run_dir.iterdir()) == ["channel.sock", "console.log"]
    # what every VM shares is readable by all and chowned to none of them
    from vmimage.initrd import ensure_initrd
    from vmimage.kernel import find_kernel

    kernel = find_kernel(host_cfg)
    for shared in (*image.layers, kernel.path, ensure_initrd(host_cfg, kernel)):
        st = shared.stat()
        assert st.st_uid not in (creds_a[0], creds_b[0]), shared
        assert stat.S_IMODE(st.st_mode) & 0o444 == 0o444, shared
    assert as_qemu(creds_a, "head", "-c1", str(image.layers[0])).returncode == 0
    for vm in vms:
        vm.destroy()
    # gone: uids free again, the sandboxes back to root
    reserved = identity.in_use()
    assert creds_a[0] not in reserved and creds_b[0] not in reserved
    assert all(os.stat(s).st_uid == 0 for s in sandboxes)


def test_pool_vms_get_their_own_uid_at_boot_and_the_pods_shares_at_claim(
        host_cfg: Any, image_ref: str, store: ImageStore, sandboxes: list[Path]) -> None:
    """A pool VM boots before anyone knows whose pod it will run: it runs as its own uid from
    boot on; the claimer gives the pod's sandbox to that uid."""
    import dataclasses

    from executor.launcher import boot_vm
    from executor.pool.daemon import WarmPool
    from executor.pool.protocol import PoolConfig
    from executor.vm import HyperVM

    image = store.pull(image_ref)
    sock_dir = Path(tempfile.mkdtemp(prefix="hypervm-ident-pool-"))
    cfg = dataclasses.replace(host_cfg, pool_socket_override=sock_dir / "pool.sock")
    pool = WarmPool(cfg, PoolConfig(size=2, vcpus=1, memory_mib=128, name=f"{TEST_TAG}-idp"))
    pool.start()
    vms: list[HyperVM] = []
    try:
        assert pool.wait_full(240), pool.status()
        idle = pool.idle_vms()
        for name, sandbox in zip(("pa", "pb"), sandboxes, strict=True):
            container, pod = writer_pod(name, image.layers, sandbox)
            vm = boot_vm(cfg, pod)
            vms.append(vm)
            assert vm.warm and vm.name in idle
            code, out = run_to_exit(vm, container)
            assert code == 0, out
        a, b = vms
        creds_a, creds_b = qemu_creds(a), qemu_creds(b)
        assert creds_a[0] != creds_b[0] and a.identity is not None
        assert (creds_a[0], creds_a[1]) == a.identity.pair
        assert os.stat(sandboxes[0]).st_uid == creds_a[0]
        assert as_qemu(creds_a, "cat", str(sandboxes[0] / "file")).stdout == "secret\n"
        for target in (sandboxes[1] / "file", b.run_dir, b.channel_socket):
            result = as_qemu(creds_a, "cat", str(target))
            assert result.returncode != 0 and "Permission denied" in result.stderr, (target,
                                                                                    result)
    finally:
        for vm in vms:
            vm.destroy()
        pool.stop()
        sock_dir.rmdir()
    assert all(os.stat(s).st_uid == 0 for s in sandboxes)
