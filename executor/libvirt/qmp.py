"""A snapshot clone's load through a QEMU monitor of our own, not libvirt's.

Why: loading a clone (executor.libvirt.migration) takes 7-8 QMP commands (two ``getfd``, the
template memory's map, a capability, ``migrate-incoming``, ``query-status`` until it is loaded,
``cont``), and each through libvirt's ``qemuMonitorCommand`` costs 1.5 ms on a quiet host and
2-5 ms under load (libvirtd's RPC, its domain job, its monitor thread), all of it on an
own-clone start's clock before the guest runs. QEMU answers the same command on a socket of
its own in ~0.1 ms.

How, without resolving a path a guest can write: root listens on a socket in the VM's run dir
(root's, 0750 with the VM's group: :meth:`Listener.open`), mode 0660 root:<that group>, and the
clone's QEMU *connects* to it as it starts (``-chardev socket,path=…`` client, ``-mon
…,mode=control``: :func:`qemu_args`). Root then accepts exactly one connection and
refuses it unless its peer (``SO_PEERCRED``) is the domain's QEMU (the pid libvirt's pid file
gives, executor.libvirt.qemu_process), so neither another VM's QEMU sharing libvirt's QEMU user
nor anything else that can reach the socket gets the snapshot's fds. The connection is used
before the clone runs any guest code and closed once it runs (``cont``); the listening socket
is unlinked at the accept: nothing of it is left to a guest that escapes later. libvirt sees
the state changes through QEMU's events on its own monitor, as it does for
``qemuMonitorCommand``'s pass-through.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hypervm.errors import HypervisorError

log = logging.getLogger(__name__)

#: the chardev of the monitor (our own id: libvirt's are ``char…``)
CHARDEV_ID = "hvqmp"
#: how long QEMU may take to connect after its domain was created (it connects as it starts:
#: before createXML returns) and to answer one command
TIMEOUT_S = 10.0
#: what one reply may hold (a load's replies are a few hundred bytes)
MAX_LINE = 1 << 20


def qemu_args(path: Path) -> tuple[str, ...]:
    """QEMU's arguments connecting a control monitor to root's socket at ``path``
    (:meth:`Listener.open`) as it starts."""
    quoted = str(path).replace(",", ",,")  # QEMU's option syntax
    return ("-chardev", f"socket,id={CHARDEV_ID},path={quoted}",
            "-mon", f"chardev={CHARDEV_ID},mode=control")


class Listener:
    """Root's listening socket a clone's QEMU connects its monitor to (one connection)."""

    def __init__(self, path: Path, sock: socket.socket) -> None:
        self.path = path
        self._sock: socket.socket | None = sock

    @classmethod
    def open(cls, path: Path) -> Listener:
        """Listen at ``path`` (in a run dir root prepared: its group is the VM's), mode 0660
        with that group, so the VM's QEMU can connect and no one else but root."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            os.chown(path, 0 if os.geteuid() == 0 else -1, path.parent.stat().st_gid)
            os.chmod(path, 0o660)
            sock.listen(1)
        except OSError as e:
            sock.close()
            _unlink(path)
            raise HypervisorError(f"cannot listen for a QEMU monitor at {path}: {e}") from e
        return cls(path, sock)

    def accept(self, pid: int, timeout: float = TIMEOUT_S) -> Monitor:
        """The monitor of the QEMU of pid ``pid`` (QMP capabilities negotiated); the listening
        socket is closed and unlinked first. HypervisorError when no connection comes within
        ``timeout`` or its peer is another process."""
        listening, self._sock = self._sock, None
        if listening is None:
            raise HypervisorError(f"the QEMU monitor socket {self.path} was used already")
        try:
            listening.settimeout(timeout)
            conn, _ = listening.accept()
        except OSError as e:
            raise HypervisorError(f"no QEMU connected its monitor to {self.path}: {e}") from e
        finally:
            listening.close()
            _unlink(self.path)
        try:
            peer, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_PEERCRED, 12))
            if peer != pid:
                raise HypervisorError(f"the monitor socket {self.path} was connected by "
                                      f"pid {peer}, not by the VM's QEMU ({pid}): refused")
            monitor = Monitor(conn, timeout)
            monitor.handshake()
        except OSError as e:
            conn.close()
            raise HypervisorError(f"the QEMU monitor at {self.path} failed: {e}") from e
        except BaseException:
            conn.close()
            raise
        return monitor

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            _unlink(self.path)


class Monitor:
    """One QMP connection; :meth:`monitor` has ``Hypervisor.monitor``'s signature, so
    executor.libvirt.migration runs on either."""

    def __init__(self, sock: socket.socket, timeout: float = TIMEOUT_S) -> None:
        self._sock = sock
        self._buf = b""
        self._timeout = timeout

    def handshake(self) -> None:
        greeting = self._read(time.monotonic() + self._timeout)
        if "QMP" not in greeting:
            raise HypervisorError(f"not a QMP greeting: {str(greeting)[:200]}")
        self.monitor("", {"execute": "qmp_capabilities"})

    def monitor(self, name: str, command: Mapping[str, Any], files: Sequence[int] = ()) -> Any:
        """Run ``command`` (``files``: fds passed with it); its ``return``, or HypervisorError
        with QEMU's ``error``. ``name``: the VM's, for errors."""
        data = json.dumps(command).encode() + b"\n"
        deadline = time.monotonic() + self._timeout  # events included: QEMU's are not trusted
        try:
            if files:
                self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", files))])
            else:
                self._sock.sendall(data)
            while True:
                reply = self._read(deadline)
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    desc = reply["error"].get("desc", reply["error"]) \
                        if isinstance(reply["error"], dict) else reply["error"]
                    raise HypervisorError(f"VM {name}: {command.get('execute')} failed: "
                                          f"{str(desc)[:300]}")
                # an event ({"event": …}): libvirt's monitor gets it too
        except OSError as e:
            raise HypervisorError(f"VM {name}: {command.get('execute')}: its QEMU monitor "
                                  f"failed: {e}") from e

    def _read(self, deadline: float) -> dict[str, Any]:
        """The next JSON line from QEMU by ``deadline`` (monotonic), bounded in size."""
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise HypervisorError("a QEMU monitor reply too long")
            left = deadline - time.monotonic()
            if left <= 0:
                raise HypervisorError("no QEMU monitor reply in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as e:
                raise HypervisorError("no QEMU monitor reply in time") from e
            if not chunk:
                raise HypervisorError("the QEMU monitor closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError as e:
            raise HypervisorError(f"a QEMU monitor reply is not JSON: {line[:200]!r}") from e
        if not isinstance(value, dict):
            raise HypervisorError(f"a QEMU monitor reply is not an object: {line[:200]!r}")
        return value

    def close(self) -> None:
        self._sock.close()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("cannot remove %s: %s", path, e)
