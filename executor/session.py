"""Sessions on a host-side unix socket: how ``hypervm exec``/``attach``/``stop``… reach a VM
another process owns (the per-VM supervisor of a detached run, the Mesos executor).

The wire: frames of ``type (1 byte) | length (4 bytes, big endian) | payload``. The client
opens with one REQUEST (a JSON object with ``op``); simple ops get one REPLY; streaming ops
(exec, attach) get OUT/ERR frames and end with one EXIT, while the client sends IN, EOF
(close stdin) and RESIZE. The sockets are root-only (0600 in a 0700 directory): both ends are
trusted, but frames are still bounded so a broken client cannot exhaust the server.

:class:`ExecSession` serves an exec on any HyperVM; the supervisor and the executor share it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from executor.guest.protocol import EXEC_FAILURE_STATUS, ExitStatus
from executor.vm import HyperVM, ProcessHandle
from hypervm.errors import GuestError, HyperVMError, InvalidSpec
from hypervm.podspec import Process

log = logging.getLogger(__name__)

REQUEST, REPLY = b"Q", b"R"
OUT, ERR, EXIT = b"O", b"E", b"X"
IN, EOF, RESIZE = b"I", b"C", b"W"
KINDS = frozenset({REQUEST, REPLY, OUT, ERR, EXIT, IN, EOF, RESIZE})
HEADER = struct.Struct(">cI")
MAX_FRAME = 1024 * 1024
#: frames queued for a slow client before it is dropped (the VM's channel never waits for it)
MAX_QUEUED = 512


class WireError(HyperVMError):
    """The session socket sent something that is not a frame, or went away."""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: bytes, obj: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(obj).encode())


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise WireError("the session socket closed inside a frame")
            return None
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The next (kind, payload), or None at a clean end of stream."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    if kind not in KINDS or length > MAX_FRAME:
        raise WireError(f"bad session frame (kind {kind!r}, {length} bytes)")
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        raise WireError("the session socket closed inside a frame")
    return kind, payload


def frame_json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError as e:
        raise WireError(f"a session frame carries invalid JSON: {e}") from e
    if not isinstance(value, dict):
        raise WireError("a session frame's JSON is not an object")
    return value


def connect(path: Any, timeout: float | None = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def call(path: Any, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """One simple request → its REPLY; a reply carrying ``error`` raises HyperVMError."""
    with connect(path) as sock:
        sock.settimeout(timeout)
        sock.sendall(encode_json(REQUEST, request))
        frame = read_frame(sock)
    if frame is None or frame[0] != REPLY:
        raise WireError(f"no reply to {request.get('op')} on {path}")
    reply = frame_json(frame[1])
    if reply.get("error"):
        raise HyperVMError(str(reply["error"]))
    return reply


def exit_payload(status: ExitStatus) -> dict[str, Any]:
    return {"exit_code": status.code, "status": status.describe()}


class Sink:
    """Frames for one client, written by a thread of its own through a bounded queue: the
    guest channel's reader never blocks on a slow client (a client too slow is dropped)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = threading.Event()
        self._queue: queue.Queue[bytes | None] = queue.Queue(MAX_QUEUED)
        threading.Thread(target=self._pump, name="session-out", daemon=True).start()

    def send(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            log.warning("a session client is too slow: dropping it")
            self.close()

    def finish(self, data: bytes = b"") -> None:
        """Send ``data`` last, then close once everything queued went out."""
        if data:
            self.send(data)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            self.close()

    def _pump(self) -> None:
        while not self.closed.is_set():
            data = self._queue.get()
            if data is None:
                break
            try:
                self.sock.sendall(data)
            except OSError:
                break
        self.close()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def exec_process(request: dict[str, Any], base: Process) -> Process:
    """The Process an exec request asks for: the container's env, overridden by the request."""
    args = request.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidSpec("exec.args", "no command given", hint="hypervm exec NAME CMD [ARGS...]")
    env = dict(item.split("=", 1) for item in base.env)
    env.update(item.split("=", 1) for item in request.get("env", []) if "=" in item)
    process = Process(args=tuple(args), env=tuple(f"{k}={v}" for k, v in env.items()),
                      cwd=request.get("cwd") or base.cwd,
                      uid=int(request.get("uid", base.uid)), gid=int(request.get("gid", base.gid)),
                      stdin=bool(request.get("stdin")))
    if request.get("tty"):
        process = replace(process, tty=True)
    process.validate("exec")
    return process


def resize(vm: HyperVM, target: ProcessHandle, payload: bytes) -> None:
    """A RESIZE from the client; a failure (no tty, an older init) is only logged."""
    try:
        size = frame_json(payload)
        vm.resize(target, int(size.get("rows", 24)), int(size.get("cols", 80)))
    except (HyperVMError, ValueError, TypeError) as e:
        log.debug("resize refused: %s", e)


def pump_input(sock: socket.socket, vm: HyperVM, handle: Callable[[], ProcessHandle | None],
               stdin: bool, done: threading.Event, eof_on_close: bool = True) -> None:
    """Client frames → the guest process: IN, EOF, RESIZE, until the client goes (which
    closes the process's stdin when ``eof_on_close``: not for a detaching attach) or the
    session ends."""
    try:
        while not done.is_set():
            frame = read_frame(sock)
            target = handle()
            if frame is None:
                if eof_on_close and stdin and target is not None and not done.is_set():
                    vm.send_stdin(target, b"")
                return
            kind, payload = frame
            if target is None:
                continue
            if kind == IN and stdin and payload:
                vm.send_stdin(target, payload)
            elif kind == EOF and stdin:
                vm.send_stdin(target, b"")
            elif kind == RESIZE:
                resize(vm, target, payload)
    except (OSError, HyperVMError, ValueError) as e:
        log.debug("session input stopped: %s", e)


class ExecSession:
    """One ``exec`` on ``vm``'s container ``container``: output to the client, its input to
    the process; returns when the process exits (the client's going does not kill it)."""

    def __init__(self, vm: HyperVM, container: str, base: Process) -> None:
        self.vm = vm
        self.container = container
        self.base = base

    def serve(self, sock: socket.socket, request: dict[str, Any]) -> None:
        sink = Sink(sock)
        try:
            process = exec_process(request, self.base)
        except (InvalidSpec, ValueError, TypeError) as e:
            sink.finish(encode_json(EXIT, {"exit_code": 125, "error": str(e)}))
            sink.closed.wait(5)
            return
        done = threading.Event()

        def exited(status: ExitStatus) -> None:
            done.set()
            sink.finish(encode_json(EXIT, exit_payload(status)))

        try:
            handle = self.vm.exec(self.container, process,
                                  on_stdout=lambda d: sink.send(encode(OUT, d)),
                                  on_stderr=lambda d: sink.send(encode(ERR, d)),
                                  on_exit=exited)
        except GuestError as e:
            code = EXEC_FAILURE_STATUS.get(e.code, 126)
            sink.finish(encode_json(EXIT, {"exit_code": code, "error": str(e)}))
            sink.closed.wait(5)
            return
        except HyperVMError as e:
            sink.finish(encode_json(EXIT, {"exit_code": 125, "error": str(e)}))
            sink.closed.wait(5)
            return
        pump_input(sock, self.vm, lambda: handle, process.stdin, done)
        done.wait()
        sink.closed.wait(5)


class SessionServer:
    """A unix socket server: one thread per client, ``dispatch(sock, request)`` serves it."""

    def __init__(self, path: Any, dispatch: Callable[[socket.socket, dict[str, Any]], None]):
        self.path = path
        self._dispatch = dispatch
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chmod(str(path), 0o600)
        self._sock.listen(16)
        self._closed = threading.Event()
        self._active = 0
        self._active_lock = threading.Lock()
        threading.Thread(target=self._accept, name="session-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="session",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._active_lock:
            self._active += 1
        try:
            self._serve_one(conn)
        finally:
            with self._active_lock:
                self._active -= 1

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                frame = read_frame(conn)
                if frame is None or frame[0] != REQUEST:
                    return
                self._dispatch(conn, frame_json(frame[1]))
            except (OSError, HyperVMError) as e:
                log.debug("session ended: %s", e)
                try:
                    conn.sendall(encode_json(REPLY, {"error": str(e)}))
                except OSError:
                    pass

    def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the sessions being served to end."""
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.close()
        finally:
            try:
                os.unlink(str(self.path))
            except OSError:
                pass
