"""A running QEMU's threads' time on a CPU (/proc's schedstat, ns resolution): its vCPU
thread's is the guest's own work under TCG (translation and execution), which the other
users' load moves less than a boot's wall time, and its wait for a core tells that load
apart."""

from __future__ import annotations

from pathlib import Path

#: how QEMU names the first vCPU's thread (``CPU 0/TCG``, ``CPU 0/KVM``)
VCPU0 = "CPU 0/"


def threads_cpu_s(pid: int) -> dict[str, float]:
    """Each live thread's time on a CPU (s) by its name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        out[comm] = out.get(comm, 0.0) + ns / 1e9
    return out


def vcpu_s(pid: int) -> tuple[float, float] | None:
    """(time on a CPU, time waiting for one) in s of the first vCPU thread of QEMU ``pid``;
    None when it has none (or is gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            if not (task / "comm").read_text().startswith(VCPU0):
                continue
            run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
        except (OSError, ValueError):
            continue
        return run_ns / 1e9, wait_ns / 1e9
    return None
