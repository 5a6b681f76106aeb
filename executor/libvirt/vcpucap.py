"""The host's bound on a snapshot clone's spare vCPUs: present in QEMU, offline in the guest
(its template's init took them offline before READY, executor.snapshot.template), and not granted to
the pod. The guest is hostile: it can online a spare CPU itself, so each spare vCPU thread's
cgroup (libvirt's ``…/vcpuN`` of the domain) gets a CFS quota of 0.1 % of a core from the
moment the clone exists (before its state is loaded: no guest code ran yet) until a claim
grants it; a granted vCPU gets the pod's normal bound (executor.libvirt.bounds).

Root writes only paths it derives itself: the cgroup mount (``/sys/fs/cgroup``, root's), the
domain's cgroup from the kernel's ``/proc/<QEMU pid>/cgroup`` (QEMU cannot move itself: the
cgroupfs is root's), QEMU's pid from libvirt's root-owned pid file; every component is
checked (no ``..``, libvirt's ``emulator`` leaf, a ``vcpuN`` directory that exists)."""

from __future__ import annotations

from pathlib import Path

from executor.libvirt.bounds import CFS_PERIOD_US
from executor.libvirt.domain import CpuTune
from hypervm.errors import HostError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
#: a spare vCPU's bound: 1 ms of CPU a second (cgroup v1 and v2 take quotas from 1 ms, periods
#: up to 1 s): a guest that onlines it gets ~0.1 % of a core more, never a vCPU's worth
SPARE_QUOTA_US = 1000
SPARE_PERIOD_US = 1_000_000


def domain_cgroup(pid: int) -> tuple[Path, bool]:
    """The cpu cgroup directory of the domain whose QEMU is ``pid`` (libvirt keeps QEMU's
    main thread in its ``emulator`` child) and whether it is cgroup v2; HostError when the
    host has no cpu controller or the layout is not libvirt's."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError as e:
        raise HostError(f"cannot read the cgroups of QEMU {pid}: {e}") from e
    root = CGROUP_ROOT
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return _checked(root / "cpu", path), False
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and "cpu" in _read(root / "cgroup.controllers").split():
            return _checked(root, path), True
    raise HostError(f"QEMU {pid} is in no cpu cgroup: its spare vCPUs cannot be bounded",
                    hint="enable the cpu cgroup controller for libvirt's machines")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _checked(mount: Path, path: str) -> Path:
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[-1] != "emulator" or any(p in ("", ".", "..") for p in parts):
        raise HostError(f"QEMU's cgroup {path!r:.200} is not libvirt's …/emulator")
    return mount.joinpath(*parts[:-1])


def cap(domain: tuple[Path, bool], vcpus: range) -> None:
    """Bound each vCPU of ``vcpus`` to :data:`SPARE_QUOTA_US` a :data:`SPARE_PERIOD_US`."""
    for n in vcpus:
        _write(domain, n, SPARE_QUOTA_US, SPARE_PERIOD_US)


def grant(domain: tuple[Path, bool], vcpus: range, quota_us: int | None,
          period_us: int) -> None:
    """Give each vCPU of ``vcpus`` the pod's bound: ``quota_us`` a ``period_us`` (None: none)."""
    for n in vcpus:
        _write(domain, n, quota_us, period_us)


def _write(domain: tuple[Path, bool], n: int, quota_us: int | None, period_us: int) -> None:
    """Set vCPU ``n``'s CFS bound. v1 takes quota and period apart: written in the order that
    never lets the ratio exceed the larger of the old and the new one."""
    base, v2 = domain
    directory = base / f"vcpu{n}"
    if not directory.is_dir():
        raise HostError(f"no cgroup of vCPU {n} in {base}: it cannot be bounded")
    quota = "max" if v2 and quota_us is None else str(quota_us if quota_us is not None else -1)
    try:
        if v2:
            (directory / "cpu.max").write_text(f"{quota} {period_us}")
            return
        old_period = int((directory / "cpu.cfs_period_us").read_text())
        tighter = quota_us is not None and quota_us * old_period <= period_us * _quota(directory)
        steps = [("cpu.cfs_quota_us", quota), ("cpu.cfs_period_us", str(period_us))]
        for name, value in steps if tighter else reversed(steps):
            (directory / name).write_text(value)
    except (OSError, ValueError) as e:
        raise HostError(f"cannot bound vCPU {n} in {base}: {e}") from e


def _quota(directory: Path) -> int:
    """v1's current quota of ``directory`` (a very large one for none)."""
    quota = int((directory / "cpu.cfs_quota_us").read_text())
    return quota if quota >= 0 else 1 << 62


def bound(pid: int | None, present: int, granted: int, cputune: CpuTune, *,
          exact: bool = False) -> None:
    """Of the ``present`` vCPUs of the domain whose QEMU is ``pid``, give 1..``granted``-1 the
    pod's ``cputune`` (vCPU 0 has it from libvirt) and cap the others (the spares); done again
    after libvirt set the pod's bound (it writes every vCPU's cgroup). Idempotent.
    ``exact``: before any hot-plug, QEMU must have no vCPU beyond ``present`` (HostError): a
    clone or standby of another template than the claimer's (whose vCPUs a waiting standby may
    run uncapped: designer.online_vcpus) is refused, never run with a vCPU neither granted nor
    capped."""
    if present <= 1:
        return
    if pid is None:
        raise HostError(f"the QEMU of a clone with {present - 1} spare vCPUs is unknown: "
                        "they cannot be bounded")
    domain = domain_cgroup(pid)
    if exact and (domain[0] / f"vcpu{present}").exists():
        raise HostError(f"the clone has more vCPUs than the {present} of its template: "
                        "refused")
    grant(domain, range(1, min(granted, present)), cputune.quota_us,
          cputune.period_us or CFS_PERIOD_US)
    cap(domain, range(max(granted, 1), present))
