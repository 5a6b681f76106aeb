"""The user libvirtd runs QEMU as (its DAC base label), kept per libvirtd instance.

Every cold VM asks it (``Hypervisor.confines_per_vm``: each VM's QEMU gets a uid of its own
only where libvirt switches users): ``getCapabilities`` and parsing its XML took ~2-4 ms of each
``hypervm run`` before createXML (issue 17). The label comes from the QEMU driver's
configuration (``qemu.conf``: ``user``, ``group``, ``security_driver``), which libvirtd reads
when it starts; so it is kept in :data:`CACHE` under the identity of the daemon that serves
``qemu:///system``: its pid and start time (``/run/libvirtd.pid``, checked against
``/proc``), its socket's inode and mtime (made anew at each start) and qemu.conf's inode, size
and mtime. Any difference, a modular ``virtqemud`` (whose socket the client may pick), another
URI, a process that is not root, or a cache file that is not root's alone (owner, mode, a
symlink) means asking libvirt, as before. The file lives in the host's root-owned run
directory (no guest or tenant can write there); a wrong label in it would let VMs run as
libvirt's shared user, hence the checks on its owner and mode.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from executor.libvirt.owners import parse_start_time
from hypervm.config import DEFAULT_RUN_DIR
from hypervm.jsonfile import replace_json

log = logging.getLogger(__name__)

#: the one URI whose daemon we can identify (the local system daemon)
SYSTEM_URI = "qemu:///system"
CACHE = Path(DEFAULT_RUN_DIR) / "libvirt-dac-label.json"
PID_FILE = Path("/run/libvirtd.pid")
SOCKET = Path("/run/libvirt/libvirt-sock")
#: modular daemons: when its socket exists, the client may talk to it, not to libvirtd
MODULAR_SOCKET = Path("/run/libvirt/virtqemud-sock")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
MAX_BYTES = 4096

Label = tuple[int, int] | None


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def daemon_key(pid_file: Path = PID_FILE, socket: Path = SOCKET,
               modular_socket: Path = MODULAR_SOCKET, qemu_conf: Path = QEMU_CONF,
               proc: Path = Path("/proc")) -> list[object] | None:
    """What identifies the running libvirtd and its QEMU configuration; None when it cannot
    be told (no pid file, the pid not a live ``libvirtd``, no socket, a modular daemon)."""
    if modular_socket.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        comm = (proc / str(pid) / "comm").read_text().strip()
        started = parse_start_time((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None
    sock = _stat_key(socket)
    if comm != "libvirtd" or started is None or sock is None:
        return None
    return [pid, started, sock, _stat_key(qemu_conf)]


def _owned_by_root_alone(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read(path: Path, key: list[object]) -> tuple[bool, Label]:
    """(True, label) when ``path`` holds a label for the daemon ``key`` and only root could
    have written it (the file and its directory); (False, None) otherwise."""
    try:
        if not _owned_by_root_alone(path.parent.stat()):
            return False, None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _owned_by_root_alone(st):
            log.warning("%s is not root's alone: asking libvirt for its QEMU user", path)
            return False, None
        doc = json.loads(os.read(fd, MAX_BYTES))
    except (OSError, ValueError):
        return False, None
    finally:
        os.close(fd)
    if not isinstance(doc, dict) or doc.get("daemon") != json.loads(json.dumps(key)):
        return False, None
    label = doc.get("label")
    if label is None:
        return True, None
    if (isinstance(label, list) and len(label) == 2
            and all(type(x) is int and 0 <= x < 2**32 for x in label)):
        return True, (label[0], label[1])
    return False, None


def write(path: Path, key: list[object], label: Label) -> None:
    """Keep ``label`` for the daemon ``key`` (atomically: a reader sees the old or the new)."""
    try:
        replace_json(path, {"daemon": key, "label": list(label) if label is not None else None},
                     0o644)
    except OSError as e:
        log.debug("cannot keep libvirt's QEMU user in %s: %s", path, e)


def qemu_label(uri: str, ask: Callable[[], Label], path: Path = CACHE,
               key: Callable[[], list[object] | None] = daemon_key) -> Label:
    """libvirt's QEMU user for ``uri``: the kept one when its daemon is the same, else
    ``ask()`` (getCapabilities), kept for the next caller where the daemon can be told."""
    if uri != SYSTEM_URI or os.geteuid() != 0:
        return ask()
    daemon = key()
    if daemon is None:
        return ask()
    found, label = read(path, daemon)
    if found:
        return label
    label = ask()
    if path.parent.is_dir():
        write(path, daemon, label)
    return label
