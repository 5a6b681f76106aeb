"""executor.libvirt.qmp: a clone's load through a QMP monitor of our own, against a fake QEMU
that connects to root's socket as QEMU's ``-chardev socket`` client does."""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import socket
import stat
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from executor.libvirt import migration, qmp
from executor.libvirt.designer import INCOMING_ARGS, clone_domain
from executor.libvirt.domain_xml import domain_xml
from hypervm.config import config_from_env
from hypervm.errors import HypervisorError
from tests.unit.test_snapshot import BOOT


class FakeQemu(threading.Thread):
    """Connects to ``path``, greets, answers each command (``event_first``: an event before
    each reply), records the commands and the fds that came with them."""

    def __init__(self, path: Path, *, event_first: bool = False, reply: bytes | None = None
                 ) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))  # as QEMU does while it starts, before root accepts
        self.event_first, self.reply = event_first, reply
        self.commands: list[str] = []
        self.fds: list[int] = []
        self.received = b""

    def run(self) -> None:
        try:
            self._serve()
        except OSError:  # root closed it (a refused peer, an error)
            pass
        finally:
            self.sock.close()

    def _serve(self) -> None:
        self.sock.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        buf = b""
        while True:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            if not data:
                return
            self.received += data
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    self.fds += list(array.array("i", payload[:len(payload) // 4 * 4]))
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                command = json.loads(line)["execute"]
                self.commands.append(command)
                if self.event_first:
                    self.sock.sendall(b'{"event": "RESUME", "data": {}}\n')
                if self.reply is not None:
                    self.sock.sendall(self.reply)
                elif command == "query-status":
                    self.sock.sendall(b'{"return": {"status": "paused"}}\n')
                elif command == "bad":
                    self.sock.sendall(b'{"error": {"class": "GenericError", "desc": "no"}}\n')
                else:
                    self.sock.sendall(b'{"return": {}}\n')


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "vm"
    directory.mkdir(mode=0o750)
    return directory


def test_qemu_connects_a_control_monitor_to_roots_socket_as_it_starts(run_dir: Path) -> None:
    args = qmp.qemu_args(run_dir / "q,m.sock")
    assert args == ("-chardev", f"socket,id=hvqmp,path={run_dir}/q,,m.sock",
                    "-mon", "chardev=hvqmp,mode=control")
    cfg = config_from_env()
    spec = clone_domain("hypervm-web-2", "hypervm-template-1", BOOT, cfg, run_dir, 2, 128, {},
                        monitor_args=args)
    xml = ET.fromstring(domain_xml(spec))
    values = [a.get("value") for a in xml.iter() if a.tag.endswith("}arg")]
    assert values[-6:] == [*INCOMING_ARGS, *args]  # no guest device: a QEMU monitor


def test_the_socket_is_roots_for_the_vms_group_only_and_gone_once_accepted(
        run_dir: Path) -> None:
    path = run_dir / "qmp.sock"
    listener = qmp.Listener.open(path)
    mode = path.lstat()
    assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
    assert mode.st_gid == run_dir.stat().st_gid
    qemu = FakeQemu(path)
    qemu.start()
    monitor = listener.accept(os.getpid(), timeout=5)
    assert not path.exists()  # nothing left to connect to once the clone runs guest code
    assert monitor.monitor("c", {"execute": "query-status"}) == {"status": "paused"}
    monitor.close()
    qemu.join(5)
    assert qemu.commands == ["qmp_capabilities", "query-status"]


def test_a_peer_other_than_the_vms_qemu_is_refused_and_gets_nothing(run_dir: Path) -> None:
    """Another process that reached the socket first (e.g. another VM's QEMU under libvirt's
    shared QEMU user) is not the QEMU whose pid libvirt gave: no command, no fd goes to it."""
    path = run_dir / "qmp.sock"
    listener = qmp.Listener.open(path)
    impostor = FakeQemu(path)
    impostor.start()
    with pytest.raises(HypervisorError, match="not by the VM's QEMU"):
        listener.accept(os.getpid() + 1, timeout=5)  # the QEMU is another process
    impostor.join(5)
    assert impostor.received == b"" and impostor.fds == []
    assert not path.exists()


def test_no_connection_in_time_is_an_error(run_dir: Path) -> None:
    listener = qmp.Listener.open(run_dir / "qmp.sock")
    with pytest.raises(HypervisorError, match="no QEMU connected"):
        listener.accept(os.getpid(), timeout=0.05)
    assert not (run_dir / "qmp.sock").exists()


def test_a_clone_loads_through_it_with_read_only_fds_events_skipped(
        run_dir: Path, tmp_path: Path) -> None:
    state, memory = tmp_path / "state", tmp_path / "memory"
    state.write_bytes(b"QEVM")
    memory.write_bytes(b"\0" * 4096)
    path = run_dir / "qmp.sock"
    listener = qmp.Listener.open(path)
    qemu = FakeQemu(path, event_first=True)
    qemu.start()
    monitor = listener.accept(os.getpid(), timeout=5)
    migration.restore(monitor, "c", state, timeout=5, memory=memory)
    monitor.close()
    qemu.join(5)
    assert qemu.commands == ["qmp_capabilities", "getfd", "x-hypervm-ram-template-map",
                             "migrate-set-capabilities", "getfd", "migrate-set-parameters",
                             "migrate-incoming", "query-status", "cont"]
    assert len(qemu.fds) == 2
    inodes = []
    for fd in qemu.fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        inodes.append(os.fstat(fd).st_ino)
        os.close(fd)
    assert inodes == [memory.stat().st_ino, state.stat().st_ino]


@pytest.mark.parametrize(("reply", "error"), [
    (b'{"error": {"class": "GenericError", "desc": "no"}}\n', "bad failed: no"),
    (b"not json\n", "not JSON"),
    (b"[1]\n", "not an object"),
    (b"x" * (qmp.MAX_LINE + 70000), "too long"),
])
def test_what_qemu_answers_is_checked(run_dir: Path, reply: bytes, error: str) -> None:
    path = run_dir / "qmp.sock"
    listener = qmp.Listener.open(path)
    qemu = FakeQemu(path)
    qemu.start()
    monitor = listener.accept(os.getpid(), timeout=5)
    qemu.reply = reply
    with pytest.raises(HypervisorError, match=error):
        monitor.monitor("c", {"execute": "bad"})
    monitor.close()
    qemu.join(5)


def test_a_qemu_that_only_sends_events_cannot_hold_a_command_past_its_timeout(
        run_dir: Path) -> None:
    """Events are skipped, but the command's one deadline counts them: a QEMU streaming
    events (for 3 s here, then closing) gets the timeout's error, not the stream's end."""
    path = run_dir / "qmp.sock"
    listener = qmp.Listener.open(path)
    qemu = FakeQemu(path)
    qemu.start()
    monitor = listener.accept(os.getpid(), timeout=0.3)
    qemu.reply = b""
    streaming = threading.Event()

    def stream() -> None:
        deadline = time.monotonic() + 3.0
        streaming.set()
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                qemu.sock.sendall(b'{"event": "RESUME", "data": {}}\n')
                time.sleep(0.01)
            qemu.sock.shutdown(socket.SHUT_WR)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    streaming.wait(5)
    with pytest.raises(HypervisorError, match="no QEMU monitor reply in time"):
        monitor.monitor("c", {"execute": "query-status"})
    monitor.close()
    streamer.join(5)
    qemu.join(5)
