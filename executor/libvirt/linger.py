"""Closing the libvirt connection of a VM whose QEMU has exited, without anyone waiting for
libvirtd's teardown of it.

Once QEMU exits, libvirtd tears the transient domain down by itself (the monitor's EOF), and
holds the domain meanwhile: 1-2 s per VM where the host's PID 1 reaps orphans late
(executor.libvirt.qemu_process). Closing the connection that created the domain with
VIR_DOMAIN_START_AUTODESTROY in that window runs the auto-destroy on libvirtd's *main loop*,
which then waits for the domain too: every client of libvirtd (other VMs' launches included)
stalls. So the connection is closed only once the domain's pid file is gone (libvirtd removes
it in qemuProcessStop): from a thread in a long-lived process (:func:`close_when_gone`), and,
when the process is about to exit (the ``hypervm`` command), by a child that inherits the
connection's socket, holds it until then and exits (:func:`exit_now`). Any other process
waits for them at exit (atexit), as it did before. If the holder dies early, the auto-destroy
simply runs: the VM never outlives its owner either way.
"""

from __future__ import annotations

import atexit
import logging
import os
import stat
import sys
import threading
import time
from pathlib import Path

from executor.libvirt.qemu_process import LIBVIRT_PID_DIR

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

log = logging.getLogger(__name__)

#: libvirtd's own bound on a teardown is longer, but nothing of ours waits past this
TEARDOWN_TIMEOUT_S = 30.0
POLL_S = 0.05

_lock = threading.Lock()
#: domain -> (its connection, its pid file): connections waiting for libvirtd's teardown
_pending: dict[str, tuple[Any, Path]] = {}


def close_when_gone(hypervisor: Any, domain: str, pid_dir: Path = LIBVIRT_PID_DIR) -> None:
    """Close ``hypervisor`` (an executor.libvirt.hypervisor.Hypervisor) once libvirtd has torn
    ``domain`` down (at once when it has already); returns without waiting."""
    pid_file = pid_dir / f"{domain}.pid"
    if not pid_file.exists():
        hypervisor.close()
        return
    with _lock:
        _pending[domain] = (hypervisor, pid_file)
    threading.Thread(target=_close_later, args=(domain,), name="libvirt-linger",
                     daemon=True).start()


def pending() -> list[str]:
    """Domains whose connection still waits for their teardown."""
    with _lock:
        return sorted(_pending)


def wait_gone(pid_files: list[Path], timeout: float) -> None:
    """Until libvirtd has torn the domains down (their pid files removed), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in pid_files) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _close_later(domain: str) -> None:
    with _lock:
        entry = _pending.get(domain)
    if entry is None:
        return
    wait_gone([entry[1]], TEARDOWN_TIMEOUT_S)
    with _lock:
        entry = _pending.pop(domain, None)
    if entry is not None:
        entry[0].close()


def close_pending() -> None:
    """Wait (bounded) for every pending teardown and close its connection: at interpreter
    exit, which would otherwise close them while libvirtd still holds their domains."""
    with _lock:
        entries = list(_pending.items())
    wait_gone([pid_file for _, (_, pid_file) in entries], TEARDOWN_TIMEOUT_S)
    for domain, _ in entries:
        with _lock:
            entry = _pending.pop(domain, None)
        if entry is not None:
            entry[0].close()


atexit.register(close_pending)


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` now (stdio flushed, no interpreter clean-up, which would
    close the waiting connections): a child holds those connections' sockets until their
    domains are gone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    with _lock:
        pid_files = [pid_file for _, pid_file in _pending.values()]
        if pid_files and os.fork() == 0:
            _hold(pid_files)
    os._exit(code)


def _hold(pid_files: list[Path]) -> NoReturn:
    """The child of :func:`exit_now`: keep only sockets (the libvirt connections), away from
    the caller's terminal and pipes, until the domains are gone; never run Python clean-up."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                try:
                    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                        os.close(fd)
                except OSError:
                    pass
        wait_gone(pid_files, TEARDOWN_TIMEOUT_S)
    finally:
        os._exit(0)
