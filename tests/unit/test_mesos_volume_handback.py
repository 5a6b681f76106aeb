"""What a Mesos task's VM makes in its shares (its sandbox, HOST_PATH volumes) is handed back
when the VM ends, as for ``run -v`` (executor.volume_access): left to the VM's uid, it would
belong to the uid's next holder (another tenant's VM, once the range went round). Recorded
while anything may remain, so the uid allocator skips the uid and ``hypervm gc`` finishes the
work of an executor that was SIGKILLed."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import volume_access
from executor.libvirt import identity
from executor.libvirt.grants import granted_uids
from executor.mesos import runtime
from executor.mesos.runtime import PodPlan, VMPod
from executor.mesos.taskinfo import parse_task
from hypervm.config import MesosPolicy, config_from_env
from hypervm.podspec import Container, Process, Rootfs

A = 200001  # the VM's QEMU uid
OPERATOR = 1234  # the owner of the host directory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


class FakeVM:
    """HyperVM's side of the shares: given to the VM's uid (before_shares first), taken
    back when it is destroyed."""

    def __init__(self, pod: Any, before_shares: Any) -> None:
        self.owned = {m.source for c in pod.containers for m in c.mounts if m.owned}
        before_shares((A, A))
        for source in self.owned:
            identity.give(source, identity.Identity(A, A))

    def destroy(self) -> None:
        for source in self.owned:
            identity.take_back(source, identity.Identity(A, A))


class FakeLauncher:
    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        yield

    def resolve(self, *_: Any) -> Any:
        return type("Image", (), {"layers": (Path("/l"),), "config": None})()

    def user_resolver(self, _: Any) -> Any:
        return None


def _task(host: Path) -> dict[str, Any]:
    return {"name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
            "command": {"value": "true"},
            "container": {"type": "MESOS", "mesos": {"image": {
                "type": "DOCKER", "docker": {"name": "busybox"}}},
                "volumes": [{"container_path": "/data", "mode": "RW", "source": {
                    "type": "HOST_PATH", "host_path": {"path": str(host)}}}]}}


@pytest.fixture
def booted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[VMPod, Path, Path]]:
    """A pod whose (fake) VM of uid A runs, with its sandbox (0750 root:root, as a real
    agent makes it) and a HOST_PATH volume (0700, OPERATOR's) shared."""
    cfg = config_from_env({"HYPERVM_STATE_DIR": str(tmp_path / "state"),
                           "HYPERVM_RUN_DIR": str(tmp_path / "run"), "HYPERVM_POOL": "off"})
    sandbox, host = tmp_path / "sandbox", tmp_path / "srv" / "data"
    sandbox.mkdir(mode=0o750)
    host.mkdir(parents=True, mode=0o700)
    os.chown(host, OPERATOR, OPERATOR)
    spec = parse_task(_task(host), "task", policy=MesosPolicy(host_path_prefixes=(
        str(tmp_path / "srv"),)))
    plan = PodPlan("p", (spec,), 1, 128, sandbox, {"t1": sandbox},
                   host_path_prefixes=(str(tmp_path / "srv"),))

    def build(task: Any, name: str, *_: Any, **__: Any) -> Container:
        return Container(name=name, rootfs=Rootfs(layers=(Path("/l"),)),
                         process=Process(args=("true",)), mounts=runtime.task_mounts(task, plan))

    monkeypatch.setattr(runtime, "build_container", build)
    monkeypatch.setattr(runtime, "boot_vm", lambda _cfg, pod, created, before_shares, **_:
                        created(FakeVM(pod, before_shares)))
    monkeypatch.setattr(identity, "holder", {A: "hypervm-p-1"}.get)
    pod = VMPod(cfg, plan, launcher=FakeLauncher())  # type: ignore[arg-type]
    pod.boot()
    yield pod, sandbox, host
    pod.destroy()


def _guest_makes(uid: int, path: Path, is_dir: bool = False) -> Path:
    """What 9p (mapped) makes on the host for a guest's file: the QEMU uid's, owner-only."""
    if is_dir:
        path.mkdir(mode=0o700)
    else:
        path.write_text("tenant data")
        path.chmod(0o600)
    os.chown(path, uid, uid)
    return path


def _owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_what_a_task_made_in_its_sandbox_and_host_path_goes_back_when_its_vm_ends(
        booted: tuple[VMPod, Path, Path]) -> None:
    pod, sandbox, host = booted
    assert _owner(sandbox)[0] == A  # the VM's own while it runs
    out = _guest_makes(A, sandbox / "out.txt")
    deep = _guest_makes(A, _guest_makes(A, sandbox / "d", is_dir=True) / "f")
    made = _guest_makes(A, host / "result")
    records = pod.cfg.state_dir / "volume-grants"
    assert granted_uids(records) == {A}  # the uid stays out of reuse meanwhile
    pod.destroy()
    assert _owner(sandbox)[:2] == (0, 0)
    assert _owner(out) == (0, 0, 0o600) and _owner(deep) == (0, 0, 0o600)
    assert _owner(made) == (OPERATOR, OPERATOR, 0o600)  # the HOST_PATH directory's owner
    assert volume_access.ACL_XATTR not in os.listxattr(host)  # its entry went with the VM
    assert granted_uids(records) == set()


def test_gc_hands_back_the_shares_of_a_sigkilled_executors_vm(
        booted: tuple[VMPod, Path, Path]) -> None:
    """The executor was SIGKILLed: libvirt destroyed its VM, nothing was handed back; the
    records keep uid A out of reuse until gc finishes it."""
    pod, sandbox, host = booted
    out = _guest_makes(A, sandbox / "out.txt")
    made = _guest_makes(A, host / "result")
    records = pod.cfg.state_dir / "volume-grants"
    held, pod._volumes = pod._volumes, None  # the owner died: it never ends its hold
    assert granted_uids(records) == {A}
    released = volume_access.release_stale(pod.cfg, runs=lambda domain: False, grace=0)
    assert {(g.path, g.owned) for g in released} == {(str(sandbox), True), (str(host), False)}
    assert _owner(sandbox)[:2] == (0, 0) and _owner(out)[:2] == (0, 0)
    assert _owner(made)[:2] == (OPERATOR, OPERATOR)
    assert granted_uids(records) == set()
    assert held is not None
    held.close()  # a hold ended after gc finished it changes nothing (its records are gone)
    assert _owner(sandbox)[:2] == (0, 0) and granted_uids(records) == set()
