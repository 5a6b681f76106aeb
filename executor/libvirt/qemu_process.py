"""A running domain's QEMU process, watched through a pidfd: whether it has exited, without a
libvirt call.

Why not ask libvirt: once QEMU exits, libvirtd holds the domain while it tears it down
(qemuProcessStop); every call naming the domain (lookupByName, destroy) waits for that, and
libvirtd first waits until the exited QEMU is *reaped* (virProcessKillPainfully polls
``kill(pid, 0)`` every 200 ms). QEMU is daemonized, so its parent is PID 1 of the host; where
PID 1 reaps orphans late (a container's or microVM's init, not systemd), that is 1-2 s per VM
(``hypervm doctor`` measures it). A pidfd becomes readable when the process exits, reaped or
not, so a caller that only needs "QEMU is gone" learns it at once; libvirtd finishes the
teardown of a transient domain by itself when its QEMU exits (the monitor's EOF).
"""

from __future__ import annotations

import logging
import os
import select
import signal
from pathlib import Path

log = logging.getLogger(__name__)

#: where libvirt (qemu:///system) keeps ``<domain>.pid`` while the domain's QEMU runs
LIBVIRT_PID_DIR = Path("/run/libvirt/qemu")


def _cmdline_names(pid: int, domain: str) -> bool:
    """/proc/<pid>/cmdline is a QEMU of ``domain`` (``-name guest=<domain>,...``)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = f"guest={domain}".encode()
    return any(arg == wanted or arg.startswith(wanted + b",") for arg in args)


class QemuProcess:
    """A pidfd on one domain's QEMU. :meth:`of` opens it while the domain runs."""

    def __init__(self, domain: str, pid: int, pidfd: int) -> None:
        self.domain = domain
        self.pid = pid
        self._fd: int | None = pidfd

    @classmethod
    def of(cls, domain: str, pid_dir: Path = LIBVIRT_PID_DIR) -> QemuProcess | None:
        """The QEMU of ``domain`` per libvirt's pid file (root's), checked by its command line
        once the pidfd pins it (a recycled pid cannot pass); None when it cannot be had
        (not running, no pidfd support): callers then ask libvirt."""
        try:
            pid = int((pid_dir / f"{domain}.pid").read_text().strip())
            fd = os.pidfd_open(pid)
        except (OSError, ValueError, AttributeError) as e:
            log.debug("no pidfd on the QEMU of %s: %s", domain, e)
            return None
        if not _cmdline_names(pid, domain):
            os.close(fd)
            log.debug("pid %d is not the QEMU of %s", pid, domain)
            return None
        return cls(domain, pid, fd)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for QEMU to exit; True once it has."""
        if self._fd is None:
            raise ValueError(f"the pidfd on the QEMU of {self.domain} is closed")
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def exited(self) -> bool:
        return self.wait_exit(0)

    def kill(self, signum: int) -> None:
        """Send ``signum`` to this QEMU (never to a recycled pid: the pidfd pins it)."""
        if self._fd is None:
            raise ValueError(f"the pidfd on the QEMU of {self.domain} is closed")
        try:
            signal.pidfd_send_signal(self._fd, signum)
        except ProcessLookupError:
            pass  # it has exited already

    def terminate(self) -> None:
        """SIGTERM: QEMU exits without asking its guest (:meth:`stop` waits for it)."""
        self.kill(signal.SIGTERM)

    def stop(self, timeout: float) -> bool:
        """End this QEMU: SIGTERM (it exits without asking its guest), then SIGKILL, each given
        ``timeout`` seconds; True once it has exited."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            self.kill(signum)
            if self.wait_exit(timeout):
                return True
        return False

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        return f"QemuProcess({self.domain!r}, pid={self.pid})"
