"""A running domain's state to a file and back: QEMU's own migration stream over a file
descriptor passed through libvirt's monitor (``Hypervisor.monitor``).

Why not libvirt's save/restore: ``virDomainRestoreFlags`` refuses an XML whose UUID differs
from the saved one ("Target domain uuid … does not match source"), and one UUID runs once, so
clones of one saved VM could not run side by side. Here the clone is an ordinary domain of its
own name and UUID, started by the designer with ``-incoming defer``; its QEMU reads the
template's stream from an fd that root opened (QEMU, running as the VM's own uid, could not
open the 0600 file itself) and runs once it is loaded.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hypervm.errors import HypervisorError

log = logging.getLogger(__name__)

#: the name the stream's fd has in QEMU (QMP getfd)
FD_NAME = "hypervm-snapshot"
POLL_S = 0.005


def save(hv: Any, name: str, fd: int, timeout: float) -> None:
    """Stop domain ``name`` and write its whole state (devices, RAM) to ``fd`` (a file open
    for writing); returns once QEMU says the migration completed. The domain stays paused."""
    hv.monitor(name, {"execute": "stop"})
    hv.monitor(name, {"execute": "getfd", "arguments": {"fdname": FD_NAME}}, [fd])
    hv.monitor(name, {"execute": "migrate", "arguments": {"uri": f"fd:{FD_NAME}"}})
    deadline = time.monotonic() + timeout
    while True:
        status = (hv.monitor(name, {"execute": "query-migrate"}) or {}).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled", None):
            raise HypervisorError(f"cannot save VM {name}: its migration {status or 'vanished'}")
        if time.monotonic() > deadline:
            hv.monitor(name, {"execute": "migrate_cancel"})
            raise HypervisorError(f"cannot save VM {name}: not done in {timeout:g} s")
        time.sleep(POLL_S)


def restore(hv: Any, name: str, stream: Path, timeout: float) -> None:
    """Load ``stream`` (written by :func:`save`) into domain ``name``, which the designer
    started waiting for it (``-incoming defer``), and let it run."""
    load(hv, name, stream, timeout)
    resume(hv, name)


def load(hv: Any, name: str, stream: Path, timeout: float) -> None:
    """Load ``stream`` into domain ``name`` (waiting for it, ``-incoming defer``) and leave it
    paused (libvirt starts QEMU with -S): no guest code has run in it when this returns."""
    try:  # another launch may have removed the entry since its lookup: boot cold then
        fd = os.open(stream, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise HypervisorError(f"VM {name}: cannot open the snapshot {stream}: {e.strerror}") from e
    try:
        hv.monitor(name, {"execute": "getfd", "arguments": {"fdname": FD_NAME}}, [fd])
    finally:
        os.close(fd)  # QEMU has its own copy
    hv.monitor(name, {"execute": "migrate-incoming", "arguments": {"uri": f"fd:{FD_NAME}"}})
    deadline = time.monotonic() + timeout
    while True:
        status = (hv.monitor(name, {"execute": "query-status"}) or {}).get("status")
        if status in ("paused", "running"):
            return
        if status != "inmigrate":
            raise HypervisorError(f"VM {name} did not load its snapshot (QEMU is {status!r})",
                                  hint=f"see /var/log/libvirt/qemu/{name}.log")
        if time.monotonic() > deadline:
            raise HypervisorError(f"VM {name} did not load its snapshot in {timeout:g} s")
        time.sleep(POLL_S)


def resume(hv: Any, name: str) -> None:
    """Let the loaded domain ``name`` run (:func:`load`)."""
    hv.monitor(name, {"execute": "cont"})
