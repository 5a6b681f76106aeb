"""A running domain's state to a file and back: QEMU's own migration stream over a file
descriptor passed through libvirt's monitor (``Hypervisor.monitor``).

Why not libvirt's save/restore: ``virDomainRestoreFlags`` refuses an XML whose UUID differs
from the saved one ("Target domain uuid … does not match source"), and one UUID runs once, so
clones of one saved VM could not run side by side. Here the clone is an ordinary domain of its
own name and UUID, started by the designer with ``-incoming defer``; its QEMU reads the
template's stream from an fd that root opened (QEMU, running as the VM's own uid, could not
open the 0600 file itself) and runs once it is loaded.

With HyperQEMU's ``ram-template`` (vmimage/qemu/ram-template.patch), the template's RAM goes
into a file of its own (``memory``), not the stream: QEMU's ``x-ignore-shared`` capability on
both sides leaves the template's RAM (a shared memfd) out of it, and a clone maps that file
privately (copy-on-write) in place of its own RAM before the stream loads, so the pages it only
reads are the host's page cache of the file, shared by every clone of the template. QEMU gets
only a read-only fd of it, never its path nor a writable fd: a compromised clone's QEMU cannot
change the file, hence any other clone's memory. The small RAM blocks (firmware, ACPI tables)
travel in the stream as before.
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
#: the name the template memory file's fd has in QEMU
MEMORY_FD_NAME = "hypervm-memory"
#: the capability leaving shared RAM (the template's memfd) out of the stream
IGNORE_SHARED = {"execute": "migrate-set-capabilities", "arguments": {
    "capabilities": [{"capability": "x-ignore-shared", "state": True}]}}
#: no announcement after the load. QEMU's default (5 rounds over ~0.8 s) has the NIC's backend
#: send RARPs and, as the template's virtio-net negotiated GUEST_ANNOUNCE, raises a config
#: interrupt each round on which the guest kernel sends gratuitous ARPs itself (its notify
#: work, ARP, the control queue's ack): guest code on a clone's vCPU, translated anew by TCG,
#: while it handles RESEED and its first START, for switches a clone never has (its NIC is its
#: own slirp: nothing learnt its MAC anywhere). Set before the stream loads: virtio-net arms
#: its announce timer in its post-load (rounds 0: none)
NO_ANNOUNCE = {"execute": "migrate-set-parameters", "arguments": {"announce-rounds": 0}}
POLL_S = 0.005
#: a clone's load (0.2 MB with ram-template) is done within a few ms of its migrate-incoming,
#: on the start's clock: asked for every ms (a query on our own monitor takes ~0.5 ms)
LOAD_POLL_S = 0.001


def save(hv: Any, name: str, fd: int, timeout: float, memory_fd: int | None = None) -> None:
    """Stop domain ``name`` and write its whole state (devices, RAM) to ``fd`` (a file open
    for writing); returns once QEMU says the migration completed. The domain stays paused.
    With ``memory_fd`` (a QEMU with ``ram-template``, guest RAM in a shared memfd), its RAM
    goes into that file instead (its non-zero pages, at their offsets) and the stream holds
    the rest."""
    hv.monitor(name, {"execute": "stop"})
    if memory_fd is not None:
        hv.monitor(name, IGNORE_SHARED)
    _migrate_out(hv, name, fd, timeout)
    if memory_fd is not None:
        hv.monitor(name, {"execute": "getfd", "arguments": {"fdname": MEMORY_FD_NAME}},
                   [memory_fd])
        hv.monitor(name, {"execute": "x-hypervm-ram-template-save",
                          "arguments": {"fdname": MEMORY_FD_NAME}})


def _migrate_out(hv: Any, name: str, fd: int, timeout: float) -> None:
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


def restore(hv: Any, name: str, stream: Path, timeout: float,
            memory: Path | None = None) -> None:
    """Load ``stream`` (written by :func:`save`) into domain ``name``, which the designer
    started waiting for it (``-incoming defer``), and let it run. ``hv``: what runs its QMP
    commands (``monitor(name, command, files)``): the Hypervisor (libvirt's monitor), or a
    clone's own monitor (executor.libvirt.qmp)."""
    load(hv, name, stream, timeout, memory)
    resume(hv, name)


def load(hv: Any, name: str, stream: Path, timeout: float, memory: Path | None = None) -> None:
    """Load ``stream`` into domain ``name`` (waiting for it, ``-incoming defer``) and leave it
    paused (libvirt starts QEMU with -S): no guest code has run in it when this returns.
    ``memory``: the template's RAM file (:func:`save`'s ``memory_fd``), mapped copy-on-write
    as the clone's RAM first (its QEMU gets a read-only fd of it)."""
    if memory is not None:
        _give(hv, name, memory, MEMORY_FD_NAME)
        hv.monitor(name, {"execute": "x-hypervm-ram-template-map",
                          "arguments": {"fdname": MEMORY_FD_NAME}})
        hv.monitor(name, IGNORE_SHARED)
    _give(hv, name, stream, FD_NAME)  # first: a stream removed since its lookup fails here
    hv.monitor(name, NO_ANNOUNCE)
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
        time.sleep(LOAD_POLL_S)


def _give(hv: Any, name: str, path: Path, fdname: str) -> None:
    """Open ``path`` read-only (root opens it: QEMU could not, and must not write it) and pass
    the fd to domain ``name``'s QEMU as ``fdname``."""
    try:  # another launch may have removed the entry since its lookup: boot cold then
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise HypervisorError(f"VM {name}: cannot open the snapshot {path}: {e.strerror}") from e
    try:
        hv.monitor(name, {"execute": "getfd", "arguments": {"fdname": fdname}}, [fd])
    finally:
        os.close(fd)  # QEMU has its own copy


def resume(hv: Any, name: str) -> None:
    """Let the loaded domain ``name`` run (:func:`load`)."""
    hv.monitor(name, {"execute": "cont"})
