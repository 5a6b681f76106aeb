"""Issue 17, part 2: ``run -it`` on a real terminal (a pty), in a real VM: an interactive
shell, window size changes, Ctrl-P Ctrl-Q, ``attach`` and the shell's exit."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HYPERVM, REPO, TEST_TAG, our_domains, run_hypervm

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_domains")]


class Terminal:
    """The CLI on a pty of its own (its controlling terminal), driven through the master."""

    def __init__(self, *args: str, rows: int = 30, cols: int = 100) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols, slave)
        self.proc = subprocess.Popen(
            [*HYPERVM, *args], cwd=REPO, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # noqa: PLW1509
        self.slave = slave
        self.seen = b""

    def resize(self, rows: int, cols: int, fd: int | None = None) -> None:
        fcntl.ioctl(self.slave if fd is None else fd, termios.TIOCSWINSZ,
                    struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern.encode())
        while time.monotonic() < deadline:
            match = regex.search(self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the CLI exited and closed the slave
                    time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen; got {self.seen[-500:]!r}")

    def close(self) -> int:
        try:
            code = self.proc.wait(30)
        finally:
            os.close(self.master)
            os.close(self.slave)
        return code


@pytest.fixture
def shell_name() -> Iterator[str]:
    name = f"{TEST_TAG}-tty"
    yield name
    run_hypervm("rm", "-f", name)


def test_run_it_shell_resize_detach_attach(busybox_rootfs: Path, shell_name: str) -> None:
    term = Terminal("run", "-it", "--name", shell_name, "--rootfs", str(busybox_rootfs),
                    "--", "sh")
    try:
        term.expect(r"# ")
        term.type("echo $((6*7))\r")
        term.expect(r"\r\n42\r\n")
        term.type("[ -t 0 ] && [ -t 1 ] && stty size\r")
        term.expect(r"\r\n30 100\r\n")
        term.resize(40, 120)
        time.sleep(1)  # SIGWINCH → RESIZE
        term.type("stty size\r")
        term.expect(r"\r\n40 120\r\n")
        term.type("\x10\x11")
        term.expect("detached from")
    finally:
        code = term.close()
    assert code == 0
    ps = run_hypervm("ps").stdout.decode()
    assert shell_name in ps

    term = Terminal("attach", shell_name, rows=25, cols=90)
    try:
        term.type("\r")
        term.expect(r"# ")
        term.type("stty size; echo again-$((1+1))\r")
        term.expect(r"25 90\r\nagain-2\r\n")
        term.type("exit 3\r")
    finally:
        code = term.close()
    assert code == 3
    state = run_hypervm("inspect", shell_name).stdout.decode()
    assert '"exit_code": 3' in state
    deadline = time.monotonic() + 20  # the supervisor powers the VM off after the exit
    while our_domains(f"hypervm-{shell_name}-") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_domains(f"hypervm-{shell_name}-")


def test_exec_it_gets_a_terminal(busybox_rootfs: Path, shell_name: str) -> None:
    started = run_hypervm("run", "-d", "--name", shell_name, "--rootfs", str(busybox_rootfs),
                          "--", "sleep", "600")
    assert started.returncode == 0, started.stderr.decode()
    term = Terminal("exec", "-it", shell_name, "sh", rows=20, cols=70)
    try:
        term.expect(r"# ")
        term.type("stty size; tty >/dev/null && echo has-tty\r")
        term.expect(r"20 70\r\n")
        term.type("exit 4\r")
    finally:
        code = term.close()
    assert code == 4
    piped = run_hypervm("exec", shell_name, "sh", "-c", "[ -t 1 ] || echo no-tty")
    assert piped.stdout == b"no-tty\n"
