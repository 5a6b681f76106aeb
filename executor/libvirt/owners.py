"""Who owns a HyperVM, and which of our domains are leftovers (pure, apart from reading
/proc for a pid's start time).

Every domain records its owner process (pid and start time: pids are recycled) in its
metadata. The owner's libvirt connection auto-destroys its VMs; what slips through (libvirtd
restarted, a claimed pool VM, a crash) is selected here and destroyed by ``hypervm gc`` and the
warm pool's reaper.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from executor.libvirt.domain import DOMAIN_PREFIX, META_OWNER_PID, META_OWNER_START
from hypervm.frozen import frozen_dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False

if TYPE_CHECKING:  # only for annotations
    from executor.libvirt.events import DomainInfo

#: a run dir without a domain is left alone this long: its VM may be being created right now
ORPHAN_DIR_GRACE_S = 120.0


@frozen_dataclass
class Leftover:
    """One of our domains that gc removes (its owner is gone, it stopped, or --all), and why."""

    name: str
    reason: str


# --- owner identity ---------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None
    when no such process exists. With the pid it identifies a process across pid reuse."""
    try:
        return parse_start_time(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def parse_start_time(stat: str) -> int | None:
    """Field 22 (starttime) of a /proc/<pid>/stat line."""
    # the command name (field 2) may contain spaces and parentheses: split after its last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_metadata(pid: int | None = None) -> dict[str, str]:
    """The metadata entries naming ``pid`` (default: this process) as a VM's owner."""
    pid = os.getpid() if pid is None else pid
    meta = {META_OWNER_PID: str(pid)}
    start = process_start_time(pid)
    if start is not None:
        meta[META_OWNER_START] = str(start)
    return meta


# --- selection (pure) -------------------------------------------------------------------------


StartTimeOf = Callable[[int], "int | None"]


def owner_gone(metadata: Mapping[str, str], start_time_of: StartTimeOf) -> str | None:
    """Why the owner recorded in ``metadata`` is gone, or None while it lives."""
    raw_pid = metadata.get(META_OWNER_PID)
    try:
        pid = int(raw_pid) if raw_pid is not None else None
    except ValueError:
        pid = None
    if pid is None or pid <= 0:
        return f"no valid owner pid recorded ({raw_pid!r})"
    started = start_time_of(pid)
    if started is None:
        return f"owner pid {pid} is gone"
    recorded = metadata.get(META_OWNER_START)
    if recorded is not None and recorded != str(started):
        return f"owner pid {pid} was reused (started at {started}, owner at {recorded})"
    return None


def select_leftovers(
    domains: Iterable[DomainInfo], start_time_of: StartTimeOf, *, everything: bool = False
) -> list[Leftover]:
    """The domains to destroy: all of ours with ``everything``, else those without a live owner
    (and stopped persistent ones: ours are transient, a defined one is a leftover)."""
    leftovers = []
    for dom in domains:
        if everything:
            reason: str | None = "--all"
        elif not dom.running:
            reason = "not running"
        else:
            reason = owner_gone(dom.metadata, start_time_of)
        if reason is not None:
            leftovers.append(Leftover(dom.name, reason))
    return leftovers


def select_orphan_dirs(
    entries: Iterable[tuple[str, float]],
    live: Iterable[str],
    now: float,
    grace: float = ORPHAN_DIR_GRACE_S,
) -> list[str]:
    """Run dirs (``(name, mtime)``) named like our domains that no domain uses, older than
    ``grace`` seconds."""
    live_names = set(live)
    return sorted(
        name
        for name, mtime in entries
        if name.startswith(DOMAIN_PREFIX) and name not in live_names and now - mtime > grace
    )
