"""A VM's end without waiting for libvirtd's teardown: the pidfd on QEMU
(executor.libvirt.qemu_process) and closing the connection after the teardown
(executor.libvirt.linger)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from executor.libvirt import linger
from executor.libvirt.qemu_process import QemuProcess

DOMAIN = "hypervm-t-exit-1234"


def fake_qemu(tmp_path: Path, domain: str = DOMAIN) -> subprocess.Popen[bytes]:
    """A process whose command line names ``domain`` as QEMU's does, and its pid file."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                             "-name", f"guest={domain},debug-threads=on"],
                            stdin=subprocess.PIPE)
    (tmp_path / f"{domain}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while b"guest=" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the fake QEMU did not start"
        time.sleep(0.01)  # until its exec: before it, the command line is pytest's
    return proc


def test_pidfd_sees_the_exit_before_anyone_reaps_it(tmp_path: Path) -> None:
    proc = fake_qemu(tmp_path)
    qemu = QemuProcess.of(DOMAIN, tmp_path)
    assert qemu is not None and qemu.pid == proc.pid
    try:
        assert not qemu.exited()
        assert not qemu.wait_exit(0.05)
        proc.stdin.close()
        assert qemu.wait_exit(5.0)
        # a zombie still answers kill(pid, 0), which is what libvirtd polls
        assert Path(f"/proc/{proc.pid}").exists()
        assert qemu.exited()
    finally:
        qemu.close()
        proc.wait()


def test_stop_ends_qemu_with_sigterm_then_sigkill(tmp_path: Path) -> None:
    proc = fake_qemu(tmp_path)  # SIGTERM ends it
    qemu = QemuProcess.of(DOMAIN, tmp_path)
    assert qemu is not None
    try:
        assert qemu.stop(5.0)
        assert proc.wait(5.0) == -signal.SIGTERM
    finally:
        qemu.close()
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, "
                                 "flush=True); sys.stdin.read()", "-name", f"guest={DOMAIN}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert stubborn.stdout.readline() == b"1\n"  # SIGTERM is ignored from here on
    (tmp_path / f"{DOMAIN}.pid").write_text(f"{stubborn.pid}\n")
    qemu = QemuProcess.of(DOMAIN, tmp_path)
    assert qemu is not None
    try:
        assert qemu.stop(0.2)
        assert stubborn.wait(5.0) == -signal.SIGKILL
    finally:
        qemu.close()


def test_a_pid_file_naming_another_process_is_refused(tmp_path: Path) -> None:
    proc = fake_qemu(tmp_path, "hypervm-t-other-1")
    (tmp_path / f"{DOMAIN}.pid").write_text(f"{proc.pid}\n")  # not DOMAIN's QEMU
    try:
        assert QemuProcess.of(DOMAIN, tmp_path) is None
        # a prefix of the name is not the name
        assert QemuProcess.of("hypervm-t-other", tmp_path) is None
    finally:
        proc.stdin.close()
        proc.wait()


def test_no_pid_file_no_watch(tmp_path: Path) -> None:
    assert QemuProcess.of(DOMAIN, tmp_path) is None
    (tmp_path / f"{DOMAIN}.pid").write_text("garbage")
    assert QemuProcess.of(DOMAIN, tmp_path) is None


class FakeConnection:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def test_the_connection_closes_only_once_the_teardown_is_done(tmp_path: Path) -> None:
    pid_file = tmp_path / f"{DOMAIN}.pid"
    pid_file.write_text("1\n")
    conn = FakeConnection()
    linger.close_when_gone(conn, DOMAIN, tmp_path)
    assert DOMAIN in linger.pending()
    assert not conn.closed.wait(0.3)
    pid_file.unlink()  # libvirtd's qemuProcessStop removes it
    assert conn.closed.wait(5.0)
    deadline = time.monotonic() + 5
    while DOMAIN in linger.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert DOMAIN not in linger.pending()


def test_already_torn_down_closes_at_once(tmp_path: Path) -> None:
    conn = FakeConnection()
    linger.close_when_gone(conn, DOMAIN, tmp_path)
    assert conn.closed.is_set()
    assert DOMAIN not in linger.pending()


def test_exit_now_returns_at_once_and_a_child_holds_the_socket(tmp_path: Path) -> None:
    """The process exits with its code at once (its output pipes closed) while its libvirt
    socket (here one end of a socketpair) stays open in a child until the domain's pid file
    is gone; the parent never closes the connection itself."""
    pid_file = tmp_path / f"{DOMAIN}.pid"
    pid_file.write_text("1\n")
    ours, theirs = socket.socketpair()
    script = textwrap.dedent(f"""
        from pathlib import Path
        from executor.libvirt import linger
        class Conn:
            def close(self):
                raise SystemExit("closed in the parent")
        linger.close_when_gone(Conn(), {DOMAIN!r}, Path({str(tmp_path)!r}))
        print("done", flush=True)
        linger.exit_now(7)
    """)
    try:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=20, cwd=Path(__file__).resolve().parents[2],
                              pass_fds=(theirs.fileno(),), check=False)
        assert time.monotonic() - started < 10
        assert (proc.returncode, proc.stdout, proc.stderr) == (7, "done\n", "")
        theirs.close()
        ours.settimeout(0.5)
        with pytest.raises(TimeoutError):
            ours.recv(1)  # still open: the holder has it
        pid_file.unlink()  # libvirtd's teardown is done
        ours.settimeout(5.0)
        assert ours.recv(1) == b""  # the holder exited
    finally:
        ours.close()
        theirs.close()
