"""GuestChannel against a scripted fake guest on a real unix socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.guest import protocol as proto
from executor.guest.channel import GuestChannel, ProcessCallbacks
from executor.guest.protocol import FrameDecoder, MsgType
from hypervm.errors import BootError, GuestError, ProtocolError

Handler = Callable[[socket.socket, proto.Frame], None]


class FakeGuest:
    """Listens like QEMU's channel socket; sends READY on connect; replies via ``handler``."""

    def __init__(self, path: Path, ready: dict | None = None, handler: Handler | None = None):
        self.path = path
        self.ready = ready if ready is not None else {"version": proto.VERSION, "kernel": "6.1"}
        self.handler = handler or (lambda conn, f: conn.sendall(
            proto.encode_json(MsgType.OK, f.id, {})))
        self.received: list[proto.Frame] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            try:
                conn.sendall(proto.encode_json(MsgType.READY, 0, self.ready))
                decoder = FrameDecoder()
                while data := conn.recv(65536):
                    for frame in decoder.feed(data):
                        self.received.append(frame)
                        self.handler(conn, frame)
            except (BrokenPipeError, ConnectionResetError):
                return  # the host hung up (destroyed the VM) while we answered: as a guest

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "ch.sock"


@pytest.fixture
def channel(sock_path: Path) -> Iterator[GuestChannel]:
    ch = GuestChannel(sock_path)
    yield ch
    ch.close()


def test_connect_returns_ready(sock_path: Path, channel: GuestChannel) -> None:
    guest = FakeGuest(sock_path)
    assert channel.connect(timeout=5)["kernel"] == "6.1"
    guest.close()


def test_version_mismatch_is_refused(sock_path: Path, channel: GuestChannel) -> None:
    FakeGuest(sock_path, ready={"version": 99})
    with pytest.raises(ProtocolError, match="version 99.*speaks 1"):
        channel.connect(timeout=5)


def test_no_socket_is_a_boot_error(sock_path: Path, channel: GuestChannel) -> None:
    with pytest.raises(BootError, match="cannot connect"):
        channel.connect(timeout=0.2)


def test_a_socket_that_appears_later_is_waited_for(sock_path: Path,
                                                   channel: GuestChannel) -> None:
    """QEMU not listening yet: the first attempt fails, the retry connects once it is."""
    timer = threading.Timer(0.15, lambda: FakeGuest(sock_path))
    timer.start()
    try:
        assert channel.connect(timeout=5)["kernel"] == "6.1"
    finally:
        timer.join()


def test_a_listening_socket_is_connected_without_importing_tenacity(tmp_path: Path) -> None:
    """A cold run's domain has its channel socket bound when createXML returns: connecting
    waits for nothing, so tenacity is not imported in the guest's boot window (~10 ms of CPU
    there, DEVELOPERS.md "A cold `hypervm run`"); a socket not there yet is still waited for
    (above)."""
    path = tmp_path / "ch.sock"
    code = ("import socket, sys\n"
            "from pathlib import Path\n"
            "from executor.guest.channel import connect_socket\n"
            "server = socket.socket(socket.AF_UNIX)\n"
            f"server.bind({str(path)!r}); server.listen(1)\n"
            f"connect_socket(Path({str(path)!r}), 5.0).close()\n"
            "print('tenacity' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert out.strip() == "False"


def test_start_streams_output_then_exit(sock_path: Path, channel: GuestChannel) -> None:
    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        body = frame.json()
        handle = body["handle"]
        conn.sendall(proto.encode(MsgType.STDOUT, handle, b"out\n")
                     + proto.encode_json(MsgType.OK, frame.id, {"pid": 42})
                     + proto.encode(MsgType.STDERR, handle, b"err\n")
                     + proto.encode_json(MsgType.EXIT, handle, {"status": 3, "signal": None}))

    FakeGuest(sock_path, handler=handler)
    channel.connect(timeout=5)
    out, err, exits = [], [], []
    done = threading.Event()
    channel.register_process(9, ProcessCallbacks(out.append, err.append,
                                                 lambda s: (exits.append(s), done.set())))
    assert channel.request(MsgType.START, {"handle": 9}) == {"pid": 42}
    assert done.wait(5)
    assert (out, err, [e.code for e in exits]) == ([b"out\n"], [b"err\n"], [3])


def test_error_reply_raises_guest_error(sock_path: Path, channel: GuestChannel) -> None:
    FakeGuest(sock_path, handler=lambda conn, f: conn.sendall(proto.encode_json(
        MsgType.ERROR, f.id, {"code": "ENOENT", "message": "nope: not found", "errno": 2})))
    channel.connect(timeout=5)
    with pytest.raises(GuestError) as info:
        channel.request(MsgType.START, {})
    assert (info.value.code, info.value.errno) == ("ENOENT", 2)


def test_guest_disconnect_fails_pending_requests(sock_path: Path, channel: GuestChannel) -> None:
    reasons: list[str] = []
    FakeGuest(sock_path, handler=lambda conn, f: conn.shutdown(socket.SHUT_RDWR))
    channel.on_disconnect = reasons.append
    channel.connect(timeout=5)
    with pytest.raises(ProtocolError):
        channel.request(MsgType.PING, {}, timeout=5)
    assert reasons


def test_channel_error_frame_closes_the_channel(sock_path: Path, channel: GuestChannel) -> None:
    FakeGuest(sock_path, handler=lambda conn, f: conn.sendall(proto.encode_json(
        MsgType.ERROR, 0, {"code": "EPROTO", "message": "garbage"})))
    channel.connect(timeout=5)
    with pytest.raises(ProtocolError):
        channel.request(MsgType.PING, {}, timeout=5)


def test_stdin_frames_reach_the_guest(sock_path: Path, channel: GuestChannel) -> None:
    guest = FakeGuest(sock_path)
    channel.connect(timeout=5)
    channel.send_stdin(5, b"hello")
    channel.send_stdin(5, b"")
    channel.request(MsgType.PING, {})  # replies are ordered after the STDIN frames
    assert [(f.type, f.id, f.payload) for f in guest.received[:2]] == [
        (MsgType.STDIN, 5, b"hello"), (MsgType.STDIN, 5, b"")]


def test_vm_going_away_reports_running_processes_lost(sock_path: Path,
                                                      channel: GuestChannel) -> None:
    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        conn.sendall(proto.encode_json(MsgType.OK, frame.id, {"pid": 1}))
        conn.shutdown(socket.SHUT_RDWR)  # QEMU died: the socket closes

    FakeGuest(sock_path, handler=handler)
    channel.connect(timeout=5)
    exits: list = []
    done = threading.Event()
    channel.register_process(3, ProcessCallbacks(lambda b: None, lambda b: None,
                                                 lambda s: (exits.append(s), done.set())))
    channel.request(MsgType.START, {"handle": 3})
    assert done.wait(5)
    assert exits[0].lost and exits[0].code == 255
    assert "VM stopped" in exits[0].describe()


def test_raw_channel_keeps_frames_read_past_the_awaited_one() -> None:
    """The pool's channel: a reply and the EXIT after it may arrive in one read."""
    import socket as socketlib

    from executor.guest import protocol as proto
    from executor.guest.channel import RawChannel
    from executor.guest.protocol import MsgType
    from hypervm.errors import BootError, GuestError

    host, guest = socketlib.socketpair()
    try:
        channel = RawChannel(host)
        guest.sendall(proto.encode_json(MsgType.READY, 0, {"version": proto.VERSION}))
        assert channel.ready(2)["version"] == proto.VERSION
        guest.sendall(proto.encode_json(MsgType.OK, 7, {"pid": 3})
                      + proto.encode(MsgType.STDOUT, 9, b"noise")
                      + proto.encode_json(MsgType.EXIT, 9, {"status": 0, "signal": None}))
        assert channel.request(MsgType.START, 7, {}, 2) == {"pid": 3}
        assert channel.await_exit(9, 2).code == 0
        guest.sendall(proto.encode_json(MsgType.ERROR, 8, {"code": "EINVAL", "message": "x"}))
        with pytest.raises(GuestError) as info:
            channel.request(MsgType.NETWORK, 8, {}, 2)
        assert info.value.code == "EINVAL"
        with pytest.raises(BootError, match="no EXIT of process 5 within"):
            channel.await_exit(5, 0.2)
        guest.setblocking(False)
        while True:  # read what the host sent, so closing is a clean EOF, not a reset
            try:
                if not guest.recv(65536):
                    break
            except BlockingIOError:
                break
        guest.close()
        with pytest.raises(BootError, match="closed the channel"):
            channel.await_exit(5, 2)
    finally:
        host.close()


# -- a hostile guest: any bad frame fails the channel closed ----------------------------------


def _hostile_exit(payload: bytes) -> Handler:
    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        handle = frame.json()["handle"]
        conn.sendall(proto.encode_json(MsgType.OK, frame.id, {"pid": 7})
                     + proto.encode(MsgType.EXIT, handle, payload))
    return handler


@pytest.mark.parametrize("payload", [
    b"[" * 200_000 + b"]" * 200_000,  # RecursionError in json.loads: the reader died silently
    b'{"status": 100000000000000000000, "signal": null}',  # reached the scheduler's SQLite
    b'{"status": "0", "signal": null}',
])
def test_a_hostile_exit_fails_the_channel_closed(sock_path: Path, channel: GuestChannel,
                                                 payload: bytes) -> None:
    FakeGuest(sock_path, handler=_hostile_exit(payload))
    reasons: list[str] = []
    channel.on_disconnect = reasons.append
    channel.connect(timeout=5)
    exits: list = []
    done = threading.Event()
    channel.register_process(4, ProcessCallbacks(lambda b: None, lambda b: None,
                                                 lambda s: (exits.append(s), done.set())))
    channel.request(MsgType.START, {"handle": 4})
    assert done.wait(5), "the process was never reported: the reader died silently"
    assert exits[0].lost and "guest channel broke" in exits[0].describe()
    assert reasons and "guest channel broke" in reasons[0]
    with pytest.raises(ProtocolError, match="closed"):
        channel.request(MsgType.PING, {}, timeout=1)


def test_a_hostile_reply_fails_the_pending_request(sock_path: Path,
                                                   channel: GuestChannel) -> None:
    FakeGuest(sock_path, handler=lambda conn, f: conn.sendall(
        proto.encode(MsgType.OK, f.id, b"[" * 100_000)))
    channel.connect(timeout=5)
    import time
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="guest channel broke"):
        channel.request(MsgType.PING, {}, timeout=10)
    assert time.monotonic() - started < 5


def test_guest_caused_log_lines_are_rate_limited(sock_path: Path, channel: GuestChannel,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """10 000 replies to no request: a burst of lines, then a count of what was suppressed."""
    def handler(conn: socket.socket, frame: proto.Frame) -> None:
        flood = b"".join(proto.encode_json(MsgType.OK, 10_000 + i, {}) for i in range(10_000))
        conn.sendall(flood + proto.encode_json(MsgType.OK, frame.id, {}))

    FakeGuest(sock_path, handler=handler)
    channel.connect(timeout=5)
    with caplog.at_level("WARNING", logger="executor.guest.channel"):
        channel.request(MsgType.PING, {})
        channel.guest_log.flush()
    dropped = [r for r in caplog.records if "unknown request" in r.getMessage()]
    assert 0 < len(dropped) <= 40
    assert any("lines caused by the guest suppressed" in r.getMessage() for r in caplog.records)


def test_a_booted_vm_whose_channel_breaks_is_destroyed(tmp_path: Path) -> None:
    """Fail closed at the VM level: nothing of a guest we can no longer talk to keeps running."""
    from executor.vm import HyperVM
    from hypervm.config import HostConfig
    from hypervm.podspec import Container, PodSpec, Process, Rootfs

    class Hypervisor:
        destroyed: list[str] = []

        def destroy(self, name: str) -> None:
            self.destroyed.append(name)

    cfg = HostConfig(state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                     libvirt_uri="test:///default", accel="tcg")
    pod = PodSpec(name="p", containers=(Container("c", Rootfs(layers=(tmp_path / "l",)),
                                                  Process(args=("true",))),))
    hv = Hypervisor()
    vm = HyperVM(cfg, pod, hypervisor=hv)
    sock_path = tmp_path / "ch.sock"
    FakeGuest(sock_path, handler=lambda conn, f: conn.sendall(
        proto.encode(MsgType.OK, f.id, b"[" * 100_000)))
    vm._channel = GuestChannel(sock_path)
    vm._channel.connect(timeout=5)
    vm.fail_closed()
    with pytest.raises(ProtocolError, match="guest channel broke"):
        vm.ping(timeout=5)
    import time
    deadline = time.monotonic() + 5
    while not hv.destroyed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hv.destroyed == [vm.name]
