"""The client end of a session (executor.session) on our terminal: ``exec``, ``attach`` and
``run -t``. With a tty the host terminal goes raw (restored on every exit), window size changes
(SIGWINCH) are forwarded, and Ctrl-P Ctrl-Q detaches (the process keeps running)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

from executor.session import (
    EOF,
    ERR,
    EXIT,
    IN,
    OUT,
    RESIZE,
    encode,
    encode_json,
    frame_json,
    read_frame,
)

DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, as docker


def window_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class DetachFilter:
    """Finds Ctrl-P Ctrl-Q in the typed bytes, also across reads."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send, whether to detach now)."""
        data, self.held = self.held + data, b""
        index = data.find(DETACH_KEYS)
        if index >= 0:
            return data[:index], True
        if data.endswith(DETACH_KEYS[:1]):
            data, self.held = data[:-1], DETACH_KEYS[:1]
        return data, False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Console:
    def __init__(self, sock: socket.socket, *, stdin: bool, tty: bool) -> None:
        self.sock = sock
        self.stdin = stdin
        self.tty = tty and os.isatty(0)
        self.filter = DetachFilter()
        self.resized = True  # send the size once at the start
        self.detached = False

    def run(self) -> dict[str, Any] | None:
        """The EXIT payload, or None when detached (or the session ended without one)."""
        previous = signal.signal(signal.SIGWINCH, self._on_winch) if self.tty else None
        try:
            with raw_terminal(0, self.tty):
                return self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)

    def _on_winch(self, *_: object) -> None:
        self.resized = True

    def _loop(self) -> dict[str, Any] | None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "sock")
        if self.stdin:
            selector.register(0, selectors.EVENT_READ, "stdin")
        while True:
            if self.resized and self.tty:
                self.resized = False
                size = window_size(0)
                if size is not None:
                    self.sock.sendall(encode_json(RESIZE, {"rows": size[0], "cols": size[1]}))
            for key, _ in selector.select(0.2):
                if key.data == "stdin":
                    if not self._typed(selector):
                        return None
                    continue
                frame = read_frame(self.sock)
                if frame is None:
                    return None
                kind, payload = frame
                if kind == OUT:
                    _write_all(1, payload)
                elif kind == ERR:
                    _write_all(2, payload)
                elif kind == EXIT:
                    return frame_json(payload)

    def _typed(self, selector: selectors.BaseSelector) -> bool:
        """Forward what was typed; False when the user detached."""
        data = os.read(0, 64 * 1024)
        if not data:
            selector.unregister(0)
            self.sock.sendall(encode(EOF))
            return True
        if self.tty:
            data, detach = self.filter.feed(data)
            if data:
                self.sock.sendall(encode(IN, data))
            if detach:
                self.detached = True
                return False
            return True
        self.sock.sendall(encode(IN, data))
        return True


def interact(sock: socket.socket, *, stdin: bool, tty: bool, name: str) -> int:
    """Run a session on our terminal; the remote exit code, or 0 when detached."""
    console = Console(sock, stdin=stdin, tty=tty)
    result = console.run()
    if result is None:
        if console.detached:
            print(f"\r\nhypervm: detached from {name} (hypervm attach {name})", file=sys.stderr)
            return 0
        print(f"hypervm: error: the session with {name} ended without an exit status",
              file=sys.stderr)
        return 125
    if result.get("error"):
        print(f"hypervm: error: {result['error']}", file=sys.stderr)
    return int(result.get("exit_code", 125))
