"""Template memory with real VMs (HyperQEMU's ``ram-template``): the clones of one template map
its RAM from one read-only file, copy-on-write; what a clone writes never reaches the file (nor
any other clone); two tenants' clones never map one file; idle clones drop their start's TCG
translations; a QEMU without the feature (Debian's) still starts clones, from the whole
stream."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench.vmenv import private_by_mapping
from executor.launcher import boot_vm
from executor.libvirt import migration
from executor.libvirt.hypervisor import Hypervisor
from executor.snapshot import store
from executor.snapshot.store import Shape
from executor.vm import SETTLED_FLUSH_S
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Container, PodSpec, Process, Resources, Rootfs
from tests.conftest import TEST_TAG, our_domains, run_to_exit
from vmimage.boot import resolve_boot
from vmimage.rootfs import ensure_warmup_layer

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.usefixtures("no_leaked_domains")]

#: ~6 MB of guest memory written by the shell (a variable: od's hex of 2 MB), then its length
WRITE_MEMORY = ("x=$(head -c 2000000 /dev/urandom | od -An -tx1); echo ${#x}; "
                "head -c 16 /dev/urandom | od -An -tx1")


def _pod(cfg: Any, name: str, script: str, tenant: str = "default") -> PodSpec:
    layer = ensure_warmup_layer(cfg.rootfs_dir)
    container = Container("c", Rootfs(layers=(layer,)),
                          Process(args=("/bin/sh", "-c", script), env=("PATH=/bin",)))
    return PodSpec(name=f"{TEST_TAG}-{name}", containers=(container,),
                   resources=Resources(cpus=1, memory_mib=128),
                   network=NetworkSpec(tenant=tenant))


def _mapped_inodes(cfg: Any, vm: Any) -> set[int]:
    """The inodes of the files named ``memory`` the VM's QEMU maps privately (copy-on-write)."""
    with Hypervisor(cfg.libvirt_uri) as hv:
        pid = hv.qemu_pid(vm.name)
    assert pid is not None
    inodes = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith("/memory"):
            assert fields[1] == "rw-p", line  # private: a write is the clone's own copy
            inodes.add(int(fields[4]))
    return inodes


def _translations_mib(cfg: Any, vm: Any) -> float:
    """Private MiB of the VM's QEMU's TCG translation buffer."""
    with Hypervisor(cfg.libvirt_uri) as hv:
        pid = hv.qemu_pid(vm.name)
    assert pid is not None
    rows = private_by_mapping(pid, top=50)
    return sum(r["private_mib"] for r in rows if r["name"] == "TCG translation buffer")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _needs_ram_template(cfg: Any) -> Any:
    boot = resolve_boot(cfg)
    if not boot.qemu.shares_template_memory:
        pytest.skip(f"{boot.qemu.path} has no ram-template (run make qemu)")
    return boot


def test_clones_map_one_template_file_and_what_they_write_stays_theirs(
        host_cfg: Any, fresh_store: Path) -> None:
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = _needs_ram_template(cfg)
    vms = []
    try:
        vms.append(boot_vm(cfg, _pod(cfg, "ma", WRITE_MEMORY)))
        entry = store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(1, 128)))
        assert entry is not None and entry.memory is not None
        assert os.stat(entry.memory).st_mode & 0o777 == 0o600
        # sparse: the template's non-zero pages only, the RAM's size
        st = os.stat(entry.memory)
        assert st.st_size == 128 << 20 and st.st_blocks * 512 < 64 << 20
        before = _sha256(entry.memory)
        vms.append(boot_vm(cfg, _pod(cfg, "mb", WRITE_MEMORY)))
        assert all(vm.warm for vm in vms)
        inode = os.stat(entry.memory).st_ino
        for vm in vms:
            assert _mapped_inodes(cfg, vm) == {inode}
        outs = []
        for vm in vms:  # each writes ~6 MB of its guest memory
            code, out = run_to_exit(vm, vm.pod.containers[0], timeout=120)
            assert code == 0, out
            assert int(out.split("\n")[0]) >= 6_000_000, out
            outs.append(out.split("\n")[1])
        assert outs[0] != outs[1]  # reseeded: RNGs of their own
        assert _sha256(entry.memory) == before  # copy-on-write: the file never changes
    finally:
        for vm in vms:
            vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-m") == set()
    assert our_domains("hypervm-template-") == set()


def test_two_tenants_clones_never_map_one_template_file(
        host_cfg: Any, fresh_store: Path) -> None:
    """Pages shared between tenants would be a timing channel (Flush+Reload on the shared page
    cache) and share the template's boot secrets: each tenant's clones map its own file."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = _needs_ram_template(cfg)
    vms: dict[str, Any] = {}
    try:
        for name, tenant in (("na", "acme"), ("nb", "globex")):
            vms[tenant] = boot_vm(cfg, _pod(cfg, name, "true", tenant))
        inodes = {}
        for tenant, vm in vms.items():
            entry = store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(1, 128, tenant)))
            assert vm.warm and entry is not None and entry.memory is not None
            inodes[tenant] = os.stat(entry.memory).st_ino
            assert _mapped_inodes(cfg, vm) == {inodes[tenant]}
        assert inodes["acme"] != inodes["globex"]
        # idle clones drop their start's translations as cold VMs do (~9.5 MiB kept before)
        time.sleep(SETTLED_FLUSH_S + 2.0)
        for vm in vms.values():
            assert _translations_mib(cfg, vm) < 4.0
    finally:
        for vm in vms.values():
            vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-n") == set()


def test_a_qemu_without_ram_template_starts_clones_from_the_whole_stream(
        host_cfg: Any, fresh_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERVM_QEMU", "distro")
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = resolve_boot(cfg)
    assert boot.qemu.kind == "distro" and not boot.qemu.shares_template_memory
    vm = boot_vm(cfg, _pod(cfg, "da", "echo cloned"))
    try:
        assert vm.warm
        entry = store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(1, 128)))
        assert entry is not None and entry.memory is None
        assert not (entry.state.parent / "memory").exists()
        assert _mapped_inodes(cfg, vm) == set()
        code, out = run_to_exit(vm, vm.pod.containers[0])
        assert (code, out.strip()) == (0, "cloned")
    finally:
        vm.destroy()
    assert our_domains(f"hypervm-{TEST_TAG}-d") == set()


def test_a_clones_qemu_refuses_a_writable_template_file(
        host_cfg: Any, fresh_store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """HyperQEMU maps a template's memory file only from a read-only fd (ram-template.patch):
    handed a writable one (a host bug), the clone's QEMU refuses, the host sees the refusal (a
    QMP error reply is an error: it was once ignored, and the clone ran on empty RAM), the
    launch boots cold, the entry is made anew, and nothing was written to the file."""
    cfg = dataclasses.replace(host_cfg, use_pool=False, use_snapshot=True)
    boot = _needs_ram_template(cfg)
    vm = boot_vm(cfg, _pod(cfg, "wa", "true"))  # makes the template and its memory file
    vm.destroy()
    entry = store.lookup(cfg, store.snapshot_key(boot, cfg, Shape(1, 128)))
    assert entry is not None and entry.memory is not None
    before = _sha256(entry.memory)
    kept = tmp_path / "memory"  # the file's inode, after the failed load discards the entry
    os.link(entry.memory, kept)
    real_open = os.open

    def writable(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == entry.memory:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(migration.os, "open", writable)
    with caplog.at_level(logging.WARNING, logger="executor.snapshot"):
        vm = boot_vm(cfg, _pod(cfg, "wb", WRITE_MEMORY))
    try:
        assert not vm.warm  # no clone: a cold boot
        assert "must be open read-only" in caplog.text, caplog.text
        code, out = run_to_exit(vm, vm.pod.containers[0], timeout=120)
        assert code == 0, out
    finally:
        vm.destroy()
    assert _sha256(kept) == before  # nothing was written through the fd
    assert "did not load: removed" in caplog.text  # a failed load: the entry is made anew
    assert store.lookup(cfg, entry.state.parent.name) is None
    assert our_domains(f"hypervm-{TEST_TAG}-w") == set()
