"""A cold run's VM end left to its starter child (executor.libvirt.vmend): the request's shape
both ways, the parent's side over a real pipe, what the child finishes, and which VMs the CLI
hands over (executor.vm.HyperVM.discard)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from executor.libvirt import identity, starter, vmend
from executor.vm import HyperVM
from hypervm.config import config_from_env
from hypervm.netspec import NetworkSpec, PortMapping
from hypervm.podspec import Container, Mount, PodSpec, Process, Rootfs

NAME = "hypervm-unit-e1"


def _end(**changes: object) -> dict[str, object]:
    end: dict[str, object] = {"run_dir": f"/run/hypervm/vms/{NAME}", "release": True,
                              "kill_after": 2.0}
    return {"end": {**end, **changes}}


def test_a_well_formed_request_round_trips() -> None:
    message = vmend.end_message(f"/run/hypervm/vms/{NAME}", True, 2.0)
    assert message == _end()
    assert vmend.parse_end(message, NAME) == message["end"]
    assert vmend.parse_end(_end(release=False, kill_after=0), NAME) is not None


@pytest.mark.parametrize("message", [
    None, {}, {"gone": True}, {"end": None}, {"end": "x"},
    _end(run_dir="run/hypervm/vms/" + NAME),  # relative
    _end(run_dir="/run/hypervm/vms/hypervm-other"),  # another domain's directory
    _end(run_dir=f"/run/hypervm/vms/{NAME}/"),  # not the normal form
    _end(run_dir=f"/run/hypervm/vms/../vms/{NAME}"),
    _end(run_dir=f"/run/\0/{NAME}"),
    _end(run_dir="/" + "a" * vmend.MAX_RUN_DIR + "/" + NAME),
    _end(run_dir=7),
    _end(release="yes"), _end(release=1),
    _end(kill_after=True), _end(kill_after="2"), _end(kill_after=-1),
    _end(kill_after=vmend.MAX_KILL_AFTER + 1),
    {"end": {"run_dir": f"/run/hypervm/vms/{NAME}", "release": True}},  # a field missing
    {"end": {"run_dir": f"/run/hypervm/vms/{NAME}", "release": True, "kill_after": 2.0,
             "more": 1}},  # one too many
])
def test_anything_else_is_no_request(message: dict[str, object] | None) -> None:
    """A malformed request is none: the child then only destroys the domain, as for a parent
    that died without a word, and removes nothing."""
    assert vmend.parse_end(message, NAME) is None


def test_finish_frees_the_uid_and_removes_the_run_dir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[str] = []
    monkeypatch.setattr(identity, "release", released.append)
    run_dir = tmp_path / NAME
    (run_dir / "sub").mkdir(parents=True)
    (run_dir / "console.log").write_text("x")
    vmend.finish(NAME, {"run_dir": str(run_dir), "release": True, "kill_after": 1})
    assert released == [NAME] and not run_dir.exists()
    run_dir.mkdir()
    vmend.finish(NAME, {"run_dir": str(run_dir), "release": False, "kill_after": 1})
    assert released == [NAME] and not run_dir.exists()  # no uid of its own: none freed


def test_the_parent_hands_the_end_over_once_and_only_after_a_create() -> None:
    child = subprocess.Popen(["sleep", "60"])
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        held = starter.Starter(child.pid, to_w, from_r, "test:///default")
        assert not held.hand_end("/run/x/" + NAME, True, 2.0)  # nothing created yet
        held._used = True  # as after its create's answer
        assert held.hand_end(f"/run/hypervm/vms/{NAME}", True, 2.0)
        assert starter.read_message(to_r, vmend.MAX_END) == _end()
        assert starter.read_message(to_r, vmend.MAX_END) is None  # the link is closed
        assert not held.hand_end(f"/run/hypervm/vms/{NAME}", True, 2.0)
    finally:
        os.close(to_r)
        os.close(from_w)
        child.kill()
        child.wait()


class _Qemu:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def terminate(self) -> None:
        self.calls.append("terminate")

    def stop(self, timeout: float) -> bool:
        self.calls.append("stop")
        return True

    def exited(self) -> bool:
        return "stop" in self.calls

    def close(self) -> None:
        self.calls.append("close")


class _Starter:
    def __init__(self, takes: bool) -> None:
        self.takes = takes
        self.asked: list[tuple[str, bool, float]] = []

    def hand_end(self, run_dir: str, release: bool, kill_after: float) -> bool:
        self.asked.append((run_dir, release, kill_after))
        return self.takes


class _Hypervisor:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")

    def forget(self, name: str) -> bool:
        self.calls.append("forget")
        return False


def _vm(tmp_path: Path, takes: bool, mounts: tuple[Mount, ...] = (),
        net: NetworkSpec | None = None) -> HyperVM:
    layer = tmp_path / "layer.erofs"
    layer.write_bytes(b"")
    container = Container(name="c", rootfs=Rootfs(layers=(layer,)),
                          process=Process(args=("true",)), mounts=mounts)
    vm = HyperVM(config_from_env({}), PodSpec(name="e", containers=(container,),
                                              network=net or NetworkSpec()),
                 hypervisor=_Hypervisor(), run_dir=tmp_path / "vm")
    vm.assign_devices()  # as its boot does
    vm.run_dir.mkdir()
    vm._own_hypervisor = True  # as a cold run's, which made its own
    vm._qemu, vm._starter = _Qemu(), _Starter(takes)  # type: ignore[assignment]
    vm.identity = identity.Identity(200011, 200011)
    return vm


def test_a_cold_run_leaves_its_vms_end_to_the_starter(tmp_path: Path) -> None:
    """Its QEMU told to exit, the end handed over, nothing waited for: the uid and the run
    directory are the child's to free (not ours: it frees them once QEMU is gone)."""
    vm = _vm(tmp_path, takes=True)
    vm.discard(timeout=2.0)
    assert vm._starter.asked == [(str(vm.run_dir), True, 2.0)]  # type: ignore[union-attr]
    assert vm._qemu is not None and vm._qemu.calls == ["terminate", "close"]  # type: ignore[attr-defined]
    assert vm.identity is None and vm.run_dir.exists()
    assert vm._hypervisor.calls == ["close"]  # type: ignore[union-attr]
    vm.destroy()  # idempotent: nothing more
    assert vm._hypervisor.calls == ["close"]  # type: ignore[union-attr]


@pytest.mark.parametrize("why", ["mount", "port", "starter gone"])
def test_a_vm_with_mounts_or_ports_or_a_starter_gone_is_ended_by_us(
        tmp_path: Path, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mounts' grants and shares go back by us once QEMU is gone, published host ports are
    free when we return (a next run may take them); a child that cannot be told leaves the
    end to us: QEMU waited for, the uid freed, the run directory removed."""
    released: list[str] = []
    monkeypatch.setattr(identity, "release", released.append)
    (tmp_path / "data").mkdir()
    mounts = (Mount(type="9p", source=tmp_path / "data", destination="/data"),)
    ports = NetworkSpec(ports=(PortMapping(8080, 80, "tcp", "127.0.0.1"),))
    vm = _vm(tmp_path, takes=why != "starter gone", mounts=mounts if why == "mount" else (),
             net=ports if why == "port" else None)
    vm.identity = None  # no shares to give back in this test: only the mount's presence
    vm.discard(timeout=2.0)
    assert vm._qemu is not None and vm._qemu.calls[:2] == ["terminate", "stop"]  # type: ignore[attr-defined]
    assert vm._starter.asked == ([(str(vm.run_dir), False, 2.0)] if why == "starter gone"  # type: ignore[union-attr]
                                 else [])
    assert not vm.run_dir.exists()
