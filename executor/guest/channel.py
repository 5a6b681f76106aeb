"""The host end of the guest channel: a unix socket to the VM's virtio-serial port.

One reader thread decodes frames (executor.guest.protocol) and dispatches them: replies resolve
the pending request with the same id, STDOUT/STDERR/EXIT go to the callbacks registered for the
process handle. Requests block the caller until their reply arrives.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.guest import protocol as proto
from executor.guest.log_limit import GuestLog
from executor.guest.protocol import ExitStatus, Frame, MsgType
from hypervm.errors import BootError, GuestError, ProtocolError
from hypervm.frozen import frozen_dataclass

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 30.0


def connect_socket(path: Path, timeout: float) -> socket.socket:
    """Connect to the channel socket QEMU listens on, retrying while QEMU starts."""
    try:
        return _connect_once(path)
    except OSError:
        pass  # not listening yet: wait for it below
    # deferred: a domain's QEMU has bound its channel socket when createXML returns, so a cold
    # run connects at once and never imports tenacity (~10 ms of CPU in the guest's boot
    # window, DEVELOPERS.md "A cold `hypervm run`"); only a socket not there yet is waited for
    import tenacity

    retrying = tenacity.Retrying(
        wait=tenacity.wait_fixed(0.02),
        stop=tenacity.stop_after_delay(min(timeout, 10.0)),
        retry=tenacity.retry_if_exception_type(OSError),
        reraise=True,
    )
    try:
        return retrying(_connect_once, path)
    except OSError as e:
        raise BootError(f"cannot connect to the guest channel {path}: {e}") from e


def _connect_once(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def peer_closed(sock: socket.socket) -> bool:
    """The other end closed ``sock`` (e.g. a VM's QEMU exited); pending input does not count:
    nothing is consumed."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def check_version(ready: dict[str, Any]) -> None:
    version = ready.get("version")
    if version != proto.VERSION:
        raise ProtocolError(
            f"guest init speaks protocol version {version}, this host speaks "
            f"{proto.VERSION}; rebuild the initrd (make initrd)"
        )


class RawChannel:
    """A channel socket served without a reader thread, so that the connection can be handed to
    another process afterwards (the warm pool talks to its VMs so before a claim). Frames read
    past the one awaited are kept for the next wait."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = proto.FrameDecoder()
        self._frames: collections.deque[Frame] = collections.deque()

    def await_frame(self, want: Callable[[Frame], bool], what: str, timeout: float) -> Frame:
        """The first frame ``want`` accepts (others are dropped); BootError on timeout/EOF."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                while self._frames:
                    frame = self._frames.popleft()
                    if want(frame):
                        return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BootError(f"the guest init sent no {what} within {timeout:.0f} s")
                self.sock.settimeout(remaining)
                data = self.sock.recv(64 * 1024)
                if not data:
                    raise BootError(f"the guest closed the channel before {what}")
                self._frames.extend(self._decoder.feed(data))
        except TimeoutError as e:
            raise BootError(f"the guest init sent no {what} within {timeout:.0f} s") from e
        except OSError as e:
            raise BootError(f"guest channel failed before {what}: {e}") from e
        finally:
            self.sock.settimeout(None)

    def ready(self, timeout: float) -> dict[str, Any]:
        """Wait for READY on a freshly connected channel; returns its payload."""
        ready = self.await_frame(lambda f: f.type == MsgType.READY, "READY",
                                 timeout).guest_json()
        ready = proto.ready_fields(ready)
        check_version(ready)
        return ready

    def request(self, type_: MsgType, request_id: int, payload: dict[str, Any],
                timeout: float) -> dict[str, Any]:
        """One request and its reply; GuestError on an ERROR reply."""
        self.sock.sendall(proto.encode_json(type_, request_id, payload))
        frame = self.await_frame(
            lambda f: f.id == request_id and f.type in (MsgType.OK, MsgType.ERROR),
            f"reply to {type_.name}", timeout)
        reply = frame.guest_json()
        if frame.type is MsgType.ERROR:
            code, message, errno = proto.error_fields(reply)
            raise GuestError(code, message, errno=errno)
        return reply

    def await_exit(self, handle: int, timeout: float) -> ExitStatus:
        frame = self.await_frame(lambda f: f.id == handle and f.type == MsgType.EXIT,
                                 f"EXIT of process {handle}", timeout)
        return ExitStatus.from_payload(frame.guest_json())


@frozen_dataclass
class PendingReply:
    """A request sent on a GuestChannel whose reply is still awaited."""

    type: MsgType
    request_id: int
    future: Future[dict[str, Any]]


@dataclass
class ProcessCallbacks:
    """What a process's output and exit are handed to, as they arrive from the guest."""

    on_stdout: Callable[[bytes], None]
    on_stderr: Callable[[bytes], None]
    on_exit: Callable[[ExitStatus], None]


class GuestChannel:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._processes: dict[int, ProcessCallbacks] = {}
        self._ready: Future[dict[str, Any]] = Future()
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None
        #: called once with the reason when the channel fails or the guest goes away
        self.on_disconnect: Callable[[str], None] | None = None
        #: lines the guest can cause, rate-limited (one bucket per channel, i.e. per VM)
        self.guest_log = GuestLog(log, f"guest channel {socket_path.parent.name}")

    # -- connection -------------------------------------------------------------------------

    def connect(self, timeout: float) -> dict[str, Any]:
        """Connect to the socket QEMU created and wait for READY; returns its payload."""
        return self.attach(connect_socket(self.socket_path, timeout), timeout)

    def attach(self, sock: socket.socket, timeout: float,
               ready: dict[str, Any] | None = None) -> dict[str, Any]:
        """Serve an already connected socket; ``ready``: the READY payload someone else read
        from it (a warm pool hands over its connection to a booted VM), else wait for READY."""
        self._sock = sock
        if ready is not None:
            self._ready.set_result(ready)
        self._reader = threading.Thread(target=self._read_loop, name="guest-channel", daemon=True)
        self._reader.start()
        try:
            ready = self._ready.result(timeout)
        except FutureTimeout as e:
            raise BootError(f"the guest init sent no READY within {timeout:.0f} s") from e
        check_version(ready)
        return ready

    def close(self) -> None:
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)
        self._fail_all("the guest channel was closed")

    # -- requests -----------------------------------------------------------------------------

    def request(self, type_: MsgType, payload: dict[str, Any],
                timeout: float = DEFAULT_REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send a request and wait for its reply; GuestError on an ERROR reply."""
        return self.wait_reply(self.send_request(type_, payload), timeout)

    def send_request(self, type_: MsgType, payload: dict[str, Any]) -> PendingReply:
        """Send a request without waiting for its reply (init handles requests in the order
        they come: a later request sees this one done); :meth:`wait_reply` waits for it."""
        future: Future[dict[str, Any]] = Future()
        with self._state_lock:
            if self._closed.is_set():
                raise ProtocolError("the guest channel is closed")
            request_id = next(self._ids)
            self._pending[request_id] = future
        log.debug("-> %s #%d %s", type_.name, request_id, payload)
        try:
            self._send(proto.encode_json(type_, request_id, payload))
        except BaseException:
            with self._state_lock:
                self._pending.pop(request_id, None)
            raise
        return PendingReply(type_, request_id, future)

    def wait_reply(self, pending: PendingReply, timeout: float | None = None) -> dict[str, Any]:
        """The reply to a request :meth:`send_request` sent; GuestError on an ERROR reply,
        ProtocolError when none comes within ``timeout`` (default DEFAULT_REQUEST_TIMEOUT)
        or the channel ends."""
        if timeout is None:
            timeout = DEFAULT_REQUEST_TIMEOUT
        try:
            return pending.future.result(timeout)
        except FutureTimeout as e:
            with self._state_lock:
                self._pending.pop(pending.request_id, None)
            raise ProtocolError(f"no reply to {pending.type.name} within {timeout:.0f} s") from e

    def register_process(self, handle: int, callbacks: ProcessCallbacks) -> None:
        """Register before sending START/EXEC: output may arrive before the reply."""
        with self._state_lock:
            self._processes[handle] = callbacks

    def unregister_process(self, handle: int) -> None:
        with self._state_lock:
            self._processes.pop(handle, None)

    def send_stdin(self, handle: int, data: bytes) -> None:
        for frame in proto.encode_stdin(handle, data):
            self._send(frame)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise ProtocolError("the guest channel is not connected")
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as e:
                raise ProtocolError(f"cannot write to the guest channel: {e}") from e

    # -- reader thread ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Fails closed: whatever ends the loop (EOF, a bad frame, any exception a hostile
        payload provokes) fails the pending requests, loses the processes and tells
        ``on_disconnect``; nothing the guest sends can leave the channel half alive."""
        broke: str | None = None
        try:
            self._read_frames()
        except (OSError, ProtocolError) as e:
            broke = f"the guest channel broke: {e}"
        except Exception as e:  # noqa: BLE001 - a hostile guest must not kill us silently
            broke = f"the guest channel broke: {type(e).__name__}: {proto.clip_text(e, 200)}"
        if not self._closed.is_set():
            self._closed.set()
            self.guest_log.flush()
            reason = broke or "the guest closed the channel"
            log.log(logging.WARNING if broke else logging.INFO, "%s: %s",
                    self.socket_path.parent.name, reason)
            self._fail_all(reason)
            self._lose_processes(broke)
            if self.on_disconnect is not None:
                try:
                    self.on_disconnect(reason)
                except Exception:
                    log.exception("handling the end of the guest channel failed")

    def _read_frames(self) -> None:
        decoder = proto.FrameDecoder()
        while not self._closed.is_set():
            sock = self._sock
            if sock is None:
                return
            data = sock.recv(256 * 1024)
            if not data:
                return
            for frame in decoder.feed(data):
                self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type in (MsgType.STDOUT, MsgType.STDERR, MsgType.EXIT):
            with self._state_lock:
                callbacks = self._processes.get(frame.id)
            if callbacks is None:
                self.guest_log.debug("frame %s for unknown process handle %d dropped",
                                     frame.type.name, frame.id)
                return
            if frame.type is MsgType.STDOUT:
                callbacks.on_stdout(frame.payload)
            elif frame.type is MsgType.STDERR:
                callbacks.on_stderr(frame.payload)
            else:
                status = ExitStatus.from_payload(frame.guest_json())
                self.unregister_process(frame.id)
                callbacks.on_exit(status)
            return
        self.guest_log.debug("<- %s #%d %r", frame.type.name, frame.id, frame.payload[:200])
        if frame.type is MsgType.READY:
            if not self._ready.done():
                self._ready.set_result(proto.ready_fields(frame.guest_json()))
            return
        if frame.type in (MsgType.OK, MsgType.ERROR):
            body = frame.guest_json()  # checked before the request is resolved: a bad
            error = proto.error_fields(body) if frame.type is MsgType.ERROR else None  # reply
            if error is not None and frame.id == 0:  # fails it with the channel
                raise ProtocolError(f"guest init reported a channel error: {error[1]}")
            with self._state_lock:
                future = self._pending.pop(frame.id, None)
            if future is None:
                self.guest_log.warning("reply %s for unknown request %d dropped",
                                       frame.type.name, frame.id)
                return
            if error is None:
                future.set_result(body)
            else:
                future.set_exception(GuestError(error[0], error[1], errno=error[2]))
            return
        raise ProtocolError(f"unexpected {frame.type.name} frame from the guest")

    def _lose_processes(self, reason: str | None) -> None:
        """Processes whose EXIT can no longer arrive end as lost (status and signal None)."""
        with self._state_lock:
            processes, self._processes = self._processes, {}
        for callbacks in processes.values():
            callbacks.on_exit(ExitStatus(status=None, signal=None, reason=reason))

    def _fail_all(self, reason: str) -> None:
        with self._state_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ProtocolError(reason))
        if not self._ready.done():
            self._ready.set_exception(BootError(reason))
