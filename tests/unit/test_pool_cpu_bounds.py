"""A claimed VM's CPU bound is set meanwhile its shares' grant records are written
(executor.pool.adopt.give_devices): both are done before it returns (the START comes after),
a failure of either raises, and the bound's thread is never left running."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from executor.libvirt import vcpucap
from executor.pool import adopt
from hypervm.errors import HypervisorError, HyperVMError
from hypervm.podspec import Resources

BOUNDED = Resources(cpus=1, memory_mib=256, cpu_limit=0.6)


class Hv:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.shares_began = threading.Event()
        self.bounds_began = threading.Event()
        self.overlapped: list[bool] = []
        self.bounds: list[Any] = []

    def set_cpu_bounds(self, name: str, cputune: Any) -> None:
        self.bounds_began.set()
        self.shares_began.wait(5)
        if self.fail:
            raise HypervisorError(f"cannot set the CPU bounds of VM {name}")
        self.bounds.append((name, cputune))


def _vm(hv: Hv, tmp_path: Path, resources: Resources = BOUNDED,
        shares_error: Exception | None = None) -> Any:
    def give_owned_shares() -> None:
        hv.shares_began.set()
        if shares_error is not None:
            raise shares_error
        # the grant record's fsync: the bound's libvirt calls run meanwhile
        if resources.cpu_limit is not None:
            hv.overlapped.append(hv.bounds_began.wait(2))

    return SimpleNamespace(name="hypervm-pool-x", run_dir=tmp_path, share_tags={},
                           pod=SimpleNamespace(resources=resources),
                           give_owned_shares=give_owned_shares)


def test_the_cpu_bound_is_set_meanwhile_the_grant_and_before_the_return(
        tmp_path: Path) -> None:
    hv = Hv()
    adopt.give_devices(_vm(hv, tmp_path), hv, [], attach_layers=False)
    assert hv.overlapped == [True]
    assert [name for name, _ in hv.bounds] == ["hypervm-pool-x"]
    assert hv.bounds[0][1].quota_us is not None


def test_a_failed_cpu_bound_fails_the_adoption(tmp_path: Path) -> None:
    hv = Hv(fail=True)
    with pytest.raises(HypervisorError, match="CPU bounds"):
        adopt.give_devices(_vm(hv, tmp_path), hv, [], attach_layers=False)


def test_a_failed_grant_waits_for_the_bound_and_raises_its_own_error(tmp_path: Path) -> None:
    hv = Hv()
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(HyperVMError, match="grant"):
        adopt.give_devices(_vm(hv, tmp_path, shares_error=HyperVMError("grant failed")), hv,
                           [], attach_layers=False)
    assert hv.bounds  # it ran to its end before the error was raised
    left = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("cpu-bounds-") for name in left)


def test_an_unbounded_vm_sets_no_bound(tmp_path: Path) -> None:
    hv = Hv()
    adopt.give_devices(_vm(hv, tmp_path, Resources(cpus=1, memory_mib=256)), hv, [],
                       attach_layers=False)
    assert hv.bounds == []


# --- a claimed pool VM: the bound written into its vCPUs' cgroups (adopt.bound_pool_vcpus) ---

DOMAIN = "machine/qemu-7-hypervm-pool-x.libvirt-qemu"


class PidHv(Hv):
    def __init__(self, pid: int | None = 42) -> None:
        super().__init__()
        self.shares_began.set()
        self.pid = pid

    def qemu_pid(self, name: str) -> int | None:
        return self.pid


@pytest.fixture
def cgroupfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup v1 cpu hierarchy with libvirt's layout for QEMU 42 of one vCPU."""
    monkeypatch.setattr(vcpucap, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(vcpucap, "PROC", tmp_path / "proc")
    (tmp_path / "proc" / "42").mkdir(parents=True)
    (tmp_path / "proc" / "42" / "cgroup").write_text(f"1:cpu:/{DOMAIN}/emulator\n")
    vcpu = tmp_path / "cg" / "cpu" / DOMAIN / "vcpu0"
    vcpu.mkdir(parents=True)
    (vcpu / "cpu.cfs_quota_us").write_text("-1")
    (vcpu / "cpu.cfs_period_us").write_text("100000")
    return tmp_path / "cg" / "cpu" / DOMAIN


def _quota(domain: Path, n: int = 0) -> tuple[int, int]:
    return (int((domain / f"vcpu{n}" / "cpu.cfs_quota_us").read_text()),
            int((domain / f"vcpu{n}" / "cpu.cfs_period_us").read_text()))


def test_a_pool_vms_bound_is_written_into_its_vcpu_cgroups_not_through_libvirt(
        tmp_path: Path, cgroupfs: Path) -> None:
    hv = PidHv()
    adopt.bound_pool_vcpus(_vm(hv, tmp_path), hv)
    assert _quota(cgroupfs) == (60_000, 100_000)  # 0.6 of the 1 vCPU
    assert hv.bounds == []


def test_every_present_vcpu_of_a_pool_vm_is_bounded(tmp_path: Path, cgroupfs: Path) -> None:
    spare = cgroupfs / "vcpu1"
    spare.mkdir()
    (spare / "cpu.cfs_quota_us").write_text("-1")
    (spare / "cpu.cfs_period_us").write_text("100000")
    hv = PidHv()
    adopt.bound_pool_vcpus(_vm(hv, tmp_path), hv)
    assert _quota(cgroupfs, 0) == _quota(cgroupfs, 1) == (60_000, 100_000)


def test_a_pool_vm_of_more_vcpus_than_cgroups_is_bounded_by_libvirt(
        tmp_path: Path, cgroupfs: Path) -> None:
    hv = PidHv()
    adopt.bound_pool_vcpus(_vm(hv, tmp_path, Resources(cpus=2, memory_mib=256,
                                                       cpu_limit=1.0)), hv)
    assert [name for name, _ in hv.bounds] == ["hypervm-pool-x"]  # never left unbounded


@pytest.mark.parametrize("layout", ["no pid", "not libvirt's"])
def test_a_host_layout_not_libvirts_leaves_the_bound_to_libvirt(
        tmp_path: Path, cgroupfs: Path, layout: str) -> None:
    hv = PidHv(pid=None if layout == "no pid" else 42)
    (tmp_path / "proc" / "42" / "cgroup").write_text("1:cpu:/elsewhere\n")
    adopt.bound_pool_vcpus(_vm(hv, tmp_path), hv)
    assert [name for name, _ in hv.bounds] == ["hypervm-pool-x"]
    assert hv.bounds[0][1].quota_us == 60_000


def test_a_failed_libvirt_bound_fails_the_pool_vms_adoption(tmp_path: Path,
                                                            cgroupfs: Path) -> None:
    hv = PidHv(pid=None)
    hv.fail = True
    with pytest.raises(HypervisorError, match="CPU bounds"):
        adopt.bound_pool_vcpus(_vm(hv, tmp_path), hv)


def test_an_unbounded_pool_vm_gets_no_bound(tmp_path: Path, cgroupfs: Path) -> None:
    hv = PidHv()
    adopt.bound_pool_vcpus(_vm(hv, tmp_path, Resources(cpus=1, memory_mib=256)), hv)
    assert _quota(cgroupfs) == (-1, 100_000)
    assert hv.bounds == []


def test_a_claimed_vm_bound_by_its_caller_gets_no_second_bound(tmp_path: Path) -> None:
    hv = Hv()
    adopt.give_devices(_vm(hv, tmp_path), hv, [], attach_layers=False, cpu_bound=False)
    assert hv.bounds == []
