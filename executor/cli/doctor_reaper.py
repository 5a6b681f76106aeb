"""``hypervm doctor``: how soon an exited QEMU is reaped on this host.

libvirt daemonizes QEMU, so its parent is the nearest child subreaper above libvirtd, else PID 1.
Once a QEMU exits, libvirtd's teardown of its domain waits until the zombie is reaped
(virProcessKillPainfully polls ``kill(pid, 0)``) and holds the domain meanwhile: systemd reaps at
once, but the init of a container or microVM may take seconds. ``hypervm run`` no longer waits
for that (executor.libvirt.qemu_process), but every other libvirt call naming such a domain does,
and the next launch competes with it. Fix: run libvirtd under a reaper (``catatonit -- libvirtd``,
in the foreground: catatonit makes itself a subreaper), or as a systemd service.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from executor.cli.check import Check

#: slower than this, reaping shows in every VM's teardown
SLOW_REAP_S = 0.3
MAX_WAIT_S = 3.0
POLL_S = 0.01


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``; None when it is gone (reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[1])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def orphan_reaping() -> tuple[float | None, int | None]:
    """Seconds from an orphan's exit to its reaping (None: not within MAX_WAIT_S), and its
    reaper's pid (None when it went before we saw it). The orphan is ours: its reaper is
    libvirtd's QEMUs' too when both trees end at PID 1."""
    out = subprocess.run(["sh", "-c", "sleep 0.2 </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    pid = int(out.strip())
    exited_at: float | None = None
    reaper: int | None = None
    deadline = time.monotonic() + MAX_WAIT_S + 0.5
    while time.monotonic() < deadline:
        found = _stat(pid)
        if found is None:
            return (time.monotonic() - exited_at if exited_at is not None else 0.0), reaper
        state, reaper = found
        if state == "Z" and exited_at is None:
            exited_at = time.monotonic()
        time.sleep(POLL_S)
    return None, reaper


def libvirtd_parent() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _comm(int(entry.name)) == "libvirtd":
            found = _stat(int(entry.name))
            if found is not None:
                return found[1]
    return None


def check_reaper(_cfg: object = None) -> Check:
    parent = libvirtd_parent()
    if parent is not None and parent != 1:
        return Check("reaper", True, f"libvirtd runs under {_comm(parent)} (pid {parent}), "
                     "which reaps its exited QEMUs")
    seconds, reaper = orphan_reaping()
    who = f"PID 1 ({_comm(1)})" if reaper in (1, None) else f"{_comm(reaper)} (pid {reaper})"
    if seconds is not None and seconds <= SLOW_REAP_S:
        return Check("reaper", True, f"{who} reaps exited processes in {seconds:.2f} s")
    took = f"{seconds:.1f} s" if seconds is not None else f"more than {MAX_WAIT_S:g} s"
    return Check("reaper", True, f"{who} reaps exited processes after {took}: libvirtd holds "
                 f"each ended VM that long (its teardown waits for the reaping); run libvirtd "
                 f"under a reaper: catatonit -- libvirtd (in the foreground), or systemd",
                 warn=True)
