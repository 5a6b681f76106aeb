"""The host's bound on a clone's spare vCPUs (executor.libvirt.vcpucap), on a fake cgroupfs and
procfs: the domain's cgroup from the kernel's view of QEMU, the spares capped, the granted
vCPUs given the pod's bound, both cgroup versions, and refusals of a layout not libvirt's."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.libvirt import vcpucap
from executor.libvirt.domain import CpuTune
from hypervm.errors import HostError

DOMAIN = "machine/qemu-7-hypervm-web-1.libvirt-qemu"


@pytest.fixture(autouse=True)
def fake_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vcpucap, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(vcpucap, "PROC", tmp_path / "proc")


def _v1(tmp_path: Path, vcpus: int = 3) -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(
        f"4:memory:/{DOMAIN}\n1:cpu:/{DOMAIN}/emulator\n0::/{DOMAIN}/emulator\n")
    for n in range(vcpus):
        d = root / "cpu" / DOMAIN / f"vcpu{n}"
        d.mkdir(parents=True)
        (d / "cpu.cfs_quota_us").write_text("-1")
        (d / "cpu.cfs_period_us").write_text("100000")
    return root, proc


def _v1_bound(root: Path, n: int) -> tuple[int, int]:
    d = root / "cpu" / DOMAIN / f"vcpu{n}"
    return int((d / "cpu.cfs_quota_us").read_text()), int((d / "cpu.cfs_period_us").read_text())


def test_the_domains_cgroup_is_the_parent_of_qemus_emulator_cgroup(tmp_path: Path) -> None:
    root, proc = _v1(tmp_path)
    assert vcpucap.domain_cgroup(42) == (root / "cpu" / DOMAIN, False)
    (proc / "42" / "cgroup").write_text(f"0::/{DOMAIN}/emulator\n")
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids")
    assert vcpucap.domain_cgroup(42) == (root / DOMAIN, True)


@pytest.mark.parametrize("path", ["/machine/x.libvirt-qemu", "/emulator",
                                  "/machine/../../etc/emulator", "/machine//emulator"])
def test_a_cgroup_not_libvirts_is_refused(tmp_path: Path, path: str) -> None:
    root, proc = _v1(tmp_path)
    (proc / "42" / "cgroup").write_text(f"1:cpu:{path}\n")
    with pytest.raises(HostError, match="not libvirt's"):
        vcpucap.domain_cgroup(42)


def test_no_cpu_controller_is_an_error_not_an_unbounded_spare(tmp_path: Path) -> None:
    root, proc = _v1(tmp_path)
    (proc / "42" / "cgroup").write_text(f"4:memory:/{DOMAIN}\n0::/{DOMAIN}/emulator\n")
    with pytest.raises(HostError, match="no cpu cgroup"):
        vcpucap.domain_cgroup(42)
    with pytest.raises(HostError, match="QEMU .* is unknown"):
        vcpucap.bound(None, 2, 1, CpuTune())


def test_spares_are_capped_granted_ones_get_the_pods_bound_v1(tmp_path: Path) -> None:
    root, _ = _v1(tmp_path)
    domain = (root / "cpu" / DOMAIN, False)
    vcpucap.cap(domain, range(1, 3))
    assert [_v1_bound(root, n) for n in range(3)] == [
        (-1, 100000), (1000, 1_000_000), (1000, 1_000_000)]
    vcpucap.grant(domain, range(1, 2), 50000, 100000)  # a fractional pod's quota per vCPU
    vcpucap.grant(domain, range(2, 3), None, 100000)  # no CPU limit
    assert [_v1_bound(root, n) for n in range(3)] == [
        (-1, 100000), (50000, 100000), (-1, 100000)]


def test_bound_grants_the_pods_present_vcpus_and_caps_the_rest(tmp_path: Path) -> None:
    root, _ = _v1(tmp_path)
    vcpucap.bound(42, 3, 1, CpuTune())  # a clone as it is made, or a 1-vCPU pod's
    assert [_v1_bound(root, n)[0] for n in range(3)] == [-1, 1000, 1000]
    vcpucap.bound(42, 3, 2, CpuTune(period_us=100000, quota_us=25000))
    assert [_v1_bound(root, n) for n in range(3)] == [(-1, 100000), (25000, 100000),
                                                      (1000, 1_000_000)]
    vcpucap.bound(42, 3, 5, CpuTune())  # more than present: the rest hot-plugged by libvirt
    assert [_v1_bound(root, n)[0] for n in range(3)] == [-1, -1, -1]
    vcpucap.bound(None, 1, 1, CpuTune())  # nothing spare: nothing to do, no QEMU needed


def test_a_clone_of_more_vcpus_than_its_template_is_refused_before_any_is_granted(
        tmp_path: Path) -> None:
    """Before a hot-plug (``exact``), a clone whose QEMU has more vCPUs than the claimer's
    template has present (a standby of a template above the shared capacity, whose vCPUs run
    uncapped while it waits, taken for a pod of fewer) is refused, nothing written; after the
    hot-plug (not exact) the further ones are libvirt's, bounded with the pod's quota."""
    root, _ = _v1(tmp_path, vcpus=3)
    with pytest.raises(HostError, match="more vCPUs than the 2 of its template"):
        vcpucap.bound(42, 2, 1, CpuTune(), exact=True)
    assert [_v1_bound(root, n)[0] for n in range(3)] == [-1, -1, -1]
    vcpucap.bound(42, 3, 3, CpuTune(), exact=True)
    vcpucap.bound(42, 2, 3, CpuTune())  # after a hot-plug of a third
    assert [_v1_bound(root, n)[0] for n in range(3)] == [-1, -1, -1]


def test_v2_writes_quota_and_period_at_once(tmp_path: Path) -> None:
    d = tmp_path / DOMAIN / "vcpu1"
    d.mkdir(parents=True)
    (d / "cpu.max").write_text("max 100000")
    vcpucap.cap((tmp_path / DOMAIN, True), range(1, 2))
    assert (d / "cpu.max").read_text() == "1000 1000000"
    vcpucap.grant((tmp_path / DOMAIN, True), range(1, 2), None, 100000)
    assert (d / "cpu.max").read_text() == "max 100000"


def test_a_vcpu_without_its_cgroup_is_an_error(tmp_path: Path) -> None:
    root, _ = _v1(tmp_path, vcpus=1)
    with pytest.raises(HostError, match="no cgroup of vCPU 1"):
        vcpucap.cap((root / "cpu" / DOMAIN, False), range(1, 2))
