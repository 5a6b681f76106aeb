"""One host identity per VM: each VM's QEMU runs as a uid:gid of its own (issue 15 finding 10).

With one shared QEMU user, a guest that escapes into its QEMU process owns every other VM's
shares, disks and sockets. Instead each VM gets a uid (its gid is the same number) from
``HostConfig.vm_uid_range`` (HYPERVM_VM_UID_RANGE, default 200000-265535): libvirt runs its
QEMU as that user (a static DAC ``<seclabel>``, executor.libvirt.domain_xml.SecLabel), and only that
VM's writable shares belong to it (mode 0750, no access for others); its run dir is root's with
its group (Hypervisor.prepare_run_dir).

Allocation is race-free across processes (the CLI, every executor and the pool daemon boot
VMs): under an exclusive flock of ``/run/hypervm/identities/lock`` (one registry per host,
whatever HYPERVM_RUN_DIR a process has: uids are the host's) a uid is free when no
reservation names it; a reservation (``identities/<uid>``, holding the domain name and its
owner: the allocating process's pid and start time) stands while that domain's QEMU runs
(libvirt's pid file names a live process: no libvirt call, which would wait for other VMs being
started), while its owner lives (however slow its boot), and for :data:`RESERVATION_GRACE_S`
after it was made. So a uid is released when its VM and its owner are gone, even when the owner
died by SIGKILL; :func:`release` only makes it sooner. A uid a volume grant
record names (:mod:`executor.libvirt.grants`: its ACL entry may still be on a ``run -v``
directory, its owner SIGKILLed) is not handed out until ``hypervm gc`` or ``rm`` took it off.
Uids are handed out round-robin (a cursor file), so a uid comes back only after the whole range
went round; :func:`take_back` returns a VM's writable shares to root when it ends, and
:mod:`executor.volume_files` hands what it made in a ``run -v`` directory to that directory's
owner (its grant record keeps the uid out of reuse until that is done).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from executor.libvirt import grants
from executor.libvirt.owners import process_start_time
from hypervm.config import DEFAULT_RUN_DIR
from hypervm.dirlock import locked_dir
from hypervm.errors import HostError
from hypervm.frozen import frozen_dataclass

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

#: the host's registry of VM uids (root only)
REGISTRY = Path(DEFAULT_RUN_DIR) / "identities"
#: where libvirt (qemu:///system) keeps ``<domain>.pid`` while the domain's QEMU runs
LIBVIRT_PID_DIR = Path("/run/libvirt/qemu")
#: a reservation without its domain (yet) stands this long: createXML comes right after
RESERVATION_GRACE_S = 120.0
#: what a VM's own directories allow: its QEMU everything, nobody else but root anything
OWNED_DIR_MODE = 0o750


@frozen_dataclass
class Identity:
    """The uid:gid a VM's QEMU runs as (one of its own from the VM uid range)."""

    uid: int
    gid: int

    @property
    def pair(self) -> tuple[int, int]:
        return self.uid, self.gid


def _locked(directory: Path) -> contextlib.AbstractContextManager[None]:
    return locked_dir(directory, "lock")


def _read(path: Path) -> tuple[str, float, str] | None:
    """A reservation's domain name, its time (mtime) and its owner ("" if not recorded)."""
    try:
        lines = path.read_text().splitlines()
        return (lines[0].strip() if lines else ""), path.stat().st_mtime, (
            lines[1].strip() if len(lines) > 1 else "")
    except OSError:
        return None


def this_process() -> str:
    """The owner of the reservations this process makes: ``pid:start time``."""
    pid = os.getpid()
    return f"{pid}:{process_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    """The process ``pid:start time`` still runs (a recycled pid has another start time)."""
    pid, _, start = owner.partition(":")
    try:
        return start != "None" and process_start_time(int(pid)) == int(start)
    except ValueError:
        return False


def pick_uid(first: int, last: int, cursor: int, taken: set[int]) -> int | None:
    """The first uid at or after ``cursor`` (wrapping round within first..last) not taken."""
    size = last - first + 1
    start = cursor - first if first <= cursor <= last else 0
    for step in range(size):
        uid = first + (start + step) % size
        if uid not in taken:
            return uid
    return None


def qemu_runs(domain: str) -> bool:
    """The domain's QEMU process runs (libvirt's pid file for it names a live process)."""
    try:
        pid = int((LIBVIRT_PID_DIR / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def allocate(uid_range: tuple[int, int], domain: str, runs: Callable[[str], bool] = qemu_runs,
             clock: Callable[[], float] = time.time, directory: Path = REGISTRY,
             grants_dir: Path | None = None, owner: str | None = None) -> Identity:
    """Reserve a free uid of ``uid_range`` for the VM ``domain``, held while ``owner`` (by
    default this process) lives; ``runs(name)``: whether the domain of a reservation still
    runs; ``grants_dir``: the volume grant records (:mod:`executor.libvirt.grants`), whose
    uids are not free while a record names them. HostError when the range is exhausted."""
    first, last = uid_range
    with _locked(directory):
        taken = _reserved(directory, runs, clock())
        granted = grants.granted_uids(grants_dir) - taken if grants_dir is not None else set()
        cursor_file = directory / "next"
        try:
            cursor = int(cursor_file.read_text())
        except (OSError, ValueError):
            cursor = first
        uid = pick_uid(first, last, cursor, taken | granted)
        if uid is None:
            raise HostError(f"every VM uid of {first}-{last} is in use ({len(taken)} VMs, "
                            f"{len(granted)} more still named by a volume grant)",
                            hint="run hypervm gc, or widen HYPERVM_VM_UID_RANGE")
        (directory / str(uid)).write_text(f"{domain}\n{owner or this_process()}\n")
        cursor_file.write_text(str(uid + 1))
    log.debug("%s runs as uid %d", domain, uid)
    return Identity(uid, uid)


def _reserved(directory: Path, runs: Callable[[str], bool], now: float) -> set[int]:
    """The uids whose reservation stands; lapsed reservations removed (the caller holds the
    registry's lock)."""
    taken: set[int] = set()
    for path in directory.iterdir():
        if not path.name.isdigit():
            continue
        found = _read(path)
        if found is not None and _stands(*found, runs, now):
            taken.add(int(path.name))
        else:
            path.unlink(missing_ok=True)  # its VM is gone: the uid is free again
    return taken


def _stands(domain: str, made: float, owner: str, runs: Callable[[str], bool],
            now: float) -> bool:
    """Its domain runs, its owner lives (none recorded: an older version's), or it is younger
    than the grace (the domain is created right after)."""
    return (now - made < RESERVATION_GRACE_S or runs(domain)
            or (bool(owner) and owner_alive(owner)))


def release(domain: str, directory: Path = REGISTRY) -> None:
    """The VM ``domain`` is gone: free its uid now (its reservation would lapse anyway)."""
    with contextlib.suppress(OSError), _locked(directory):
        for path in directory.iterdir():
            found = _read(path) if path.name.isdigit() else None
            if found is not None and found[0] == domain:
                path.unlink()


def holder(uid: int, directory: Path = REGISTRY) -> str | None:
    """The domain ``uid`` is reserved for, or None: its own reservation read alone (a launch
    asks this for its VM; :func:`in_use` reads every reservation of the host)."""
    found = _read(directory / str(uid))
    return found[0] if found is not None else None


def in_use(directory: Path = REGISTRY) -> dict[int, str]:
    """uid -> domain of every reservation (for ``hypervm doctor``)."""
    out = {}
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            found = _read(path) if path.name.isdigit() else None
            if found is not None:
                out[int(path.name)] = found[0]
    return out


def give(directory: Path, identity: Identity) -> None:
    """Make ``directory`` (not its contents) the VM's own: its owner, mode 0750 (no access
    for other VMs' users, whatever mode it was made with). No-op unless root."""
    if os.geteuid() != 0:
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, identity.uid, identity.gid)
            os.fchmod(fd, os.fstat(fd).st_mode & 0o750 | 0o700)
        finally:
            os.close(fd)
    except OSError as e:
        raise HostError(f"cannot give {directory} to the VM's user {identity.uid}: {e}") from e


def take_back(directory: Path, identity: Identity) -> None:
    """The VM is gone: ``directory`` returns to root if it still is that VM's (a later holder
    of the uid must not reach what this VM wrote). Never raises."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_uid == identity.uid:
                os.fchown(fd, 0, 0)
        finally:
            os.close(fd)


#: libvirt (qemu:///system) keeps each QEMU's private files (master key, monitor socket) in
#: ``domain-N-NAME/`` below it, given to the VM's user; the directory itself is 0750
#: libvirt-qemu by default, which only the shared user could traverse
LIBVIRT_QEMU_DIR = Path("/var/lib/libvirt/qemu")


def open_libvirt_dir(path: Path = LIBVIRT_QEMU_DIR) -> None:
    """Let every VM's user traverse (not list) libvirt's per-domain directory root."""
    try:
        mode = path.stat().st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o001)
            log.info("%s: added search permission for others (each VM's QEMU runs as its own "
                     "uid and must reach its domain-* directory)", path)
    except OSError as e:
        raise HostError(f"cannot let VM users traverse {path}: {e}",
                        hint=f"chmod o+x {path}") from e


def for_vm(cfg: Any, hypervisor: Any, domain: str) -> Identity | None:
    """A uid of its own for the VM ``domain`` about to be created, or None where libvirt
    does not switch users (no DAC, not root: QEMU then runs as libvirt's user or ours)."""
    if not hypervisor.confines_per_vm():
        return None
    open_libvirt_dir()
    return allocate(cfg.vm_uid_range, domain, directory=REGISTRY,
                    grants_dir=grants.keeper(cfg).records)
