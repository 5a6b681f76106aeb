"""A claimer hands its pool VM back for teardown (executor.pool.release): only the VM's live
owner may, only for a VM of this pool, and the pool owns it before destroying it."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from executor.libvirt.owners import owner_metadata
from executor.pool import release
from hypervm.errors import PoolError

VM = "hypervm-pool-1a2b3c4d"
OURS = {"pool": "pool"}


class FakeHypervisor:
    def __init__(self, metadata: dict[str, str]) -> None:
        self.meta = dict(metadata)
        self.writes: list[dict[str, str]] = []

    def metadata(self, name: str) -> dict[str, str]:
        return dict(self.meta) if name == VM else {}

    def set_metadata(self, name: str, entries: dict[str, str]) -> None:
        self.writes.append(dict(entries))
        self.meta = dict(entries)


def claimed_by(pid: int) -> dict[str, str]:
    return {**OURS, "pool-state": "claimed", "pod": "web", **owner_metadata(pid)}


def test_the_owner_hands_its_vm_back_and_the_pool_owns_it_before_the_destroy() -> None:
    hv = FakeHypervisor(claimed_by(os.getpid()))
    destroyed: list[tuple[str, dict[str, str]]] = []
    release.release_vm(hv, VM, os.getpid(), OURS, {"pool-state": "released"},
                       lambda name: destroyed.append((name, dict(hv.meta))))
    assert [name for name, _ in destroyed] == [VM]
    at_destroy = destroyed[0][1]
    assert at_destroy["pool-state"] == "released" and at_destroy["pod"] == "web"
    assert release.is_owner(at_destroy, os.getpid())  # the pool (this test) answers for it


@pytest.mark.parametrize("metadata", [
    {},                                                          # gone, or not ours at all
    {"pool": "another", **owner_metadata(os.getpid())},          # another pool's VM
    {**OURS, **owner_metadata(1)},                               # someone else's claim
    {**OURS, "owner-pid": str(os.getpid()), "owner-start": "1"},  # a recycled pid
])
def test_only_the_live_owner_of_one_of_our_vms_may_release_it(metadata: dict[str, str]) -> None:
    hv = FakeHypervisor(metadata)
    with pytest.raises(PoolError):
        release.release_vm(hv, VM, os.getpid(), OURS, {"pool-state": "released"},
                           lambda name: pytest.fail("destroyed a VM not released by its owner"))
    assert hv.writes == []


class FakeQemu:
    def __init__(self, exits: threading.Event) -> None:
        self.exits = exits
        self.closed = False

    def wait_exit(self, timeout: float) -> bool:
        return self.exits.wait(timeout)

    def close(self) -> None:
        self.closed = True


def test_the_reply_waits_for_qemus_exit_not_for_the_teardown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exited, teardown_done = threading.Event(), threading.Event()
    qemu = FakeQemu(exited)
    monkeypatch.setattr(release.QemuProcess, "of", classmethod(lambda cls, name: qemu))

    def discard(_name: str) -> None:
        exited.set()  # libvirt's destroy ends QEMU first ...
        teardown_done.wait(10)  # ... then waits for the teardown

    hv = FakeHypervisor(claimed_by(os.getpid()))
    release.release_vm(hv, VM, os.getpid(), OURS, {}, discard)
    assert exited.is_set() and not teardown_done.is_set() and qemu.closed
    teardown_done.set()


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
