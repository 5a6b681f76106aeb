"""A running QEMU's threads' time on a CPU (/proc's schedstat, ns resolution): its vCPU
thread's is the guest's own work under TCG (translation and execution), which the other
users' load moves less than a boot's wall time, and its wait for a core tells that load
apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from executor.libvirt.qemu_process import LIBVIRT_PID_DIR

#: how QEMU names the first vCPU's thread (``CPU 0/TCG``, ``CPU 0/KVM``)
VCPU0 = "CPU 0/"


def qemu_pid(domain: str) -> int | None:
    """The pid of the running domain's QEMU per libvirt's pid file (None: not running)."""
    try:
        return int((LIBVIRT_PID_DIR / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _threads(pid: int) -> Iterator[tuple[str, int, int]]:
    """(name, ns on a CPU, ns waiting for one) of each live thread of ``pid`` (none when it
    is gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
        except (OSError, ValueError):
            continue  # ended meanwhile
        yield comm, run_ns, wait_ns


def threads_cpu_s(pid: int) -> dict[str, float]:
    """Each live thread's time on a CPU (s) by its name (threads of one name summed)."""
    out: dict[str, float] = {}
    for comm, run_ns, _ in _threads(pid):
        out[comm] = out.get(comm, 0.0) + run_ns / 1e9
    return out


def vcpu_s(pid: int) -> tuple[float, float] | None:
    """(time on a CPU, time waiting for one) in s of the first vCPU thread of QEMU ``pid``;
    None when it has none (or is gone)."""
    for comm, run_ns, wait_ns in _threads(pid):
        if comm.startswith(VCPU0):
            return run_ns / 1e9, wait_ns / 1e9
    return None
