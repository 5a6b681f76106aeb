"""The fast ``hypervm run`` (executor.cli.fastrun, executor.cli.fastrun_serve): which command
lines it takes, the run protocol's messages both ways, the client against a fake daemon, and
the daemon's side of the gate (run's own parser, the caller's settings)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executor.cli import fastrun, fastrun_serve
from hypervm.config import config_from_env

IMAGE = "127.0.0.1:5000/busybox:1"


# --- the client's gate ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["run", IMAGE],
    ["run", IMAGE, "--", "true"],
    ["run", "--name", "b1", "--quiet", "--cpus", "1", "--memory", "128", IMAGE, "--", "true"],
    ["run", "--memory=128", "-q", "--rm", "--pull", "missing", "--network", "user", IMAGE, "sh"],
    ["run", "-w", "/tmp", "-u", "1:1", "--entrypoint", "sh", "--tenant", "t", "--grace", "1",
     "--boot-timeout", "30", IMAGE],
    ["run", IMAGE, "-v", "/x:/y", "-it"],  # after IMAGE everything is the command
])
def test_plain_foreground_runs_take_the_fast_path(argv: list[str]) -> None:
    assert fastrun.gate(argv) == ([], None)


@pytest.mark.parametrize(("argv", "why"), [
    (["--verbose", "run", IMAGE], "not a run"),
    (["ps"], "not a run"),
    (["run", "-v", "/srv:/srv", IMAGE], "-v"),
    (["run", "--volume=/srv:/srv", IMAGE], "--volume"),
    (["run", "-it", IMAGE], "-it"),
    (["run", "-i", IMAGE], "-i"),
    (["run", "-t", IMAGE], "-t"),
    (["run", "-d", IMAGE], "-d"),
    (["run", "-p", "8080:80", IMAGE], "-p"),
    (["run", "--rootfs", "/r", "--", "true"], "--rootfs"),
    (["run", "--env-file", "f", IMAGE], "--env-file"),
    (["run", "--insecure-registry", "h:1", IMAGE], "--insecure-registry"),
    (["run", "--pull", "always", IMAGE], "--pull always"),
    (["run", "--pull=never", IMAGE], "--pull never"),
    (["run", "--network", "none", IMAGE], "--network none"),
    (["run", "--mem", "128", IMAGE], "--mem"),            # an abbreviation argparse would take
    (["run", "-eFOO=1", IMAGE], "-eFOO=1"),
    (["run", "--help"], "--help"),
    (["run", "-q=1", IMAGE], "-q=1"),
    (["run", "--quiet=1", IMAGE], "takes no value"),
    (["run", "--memory"], "no value"),
    (["run", "--name", "-v", IMAGE], "looks like an option"),
    (["run", "--", IMAGE, "true"], "--"),
    (["run", "docker-archive:img.tar"], "docker-archive"),
    (["run", "oci:layout"], "oci"),
    (["run", "docker-daemon:busybox:1"], "docker-daemon"),
    (["run", "--memory", "128"], "no image"),
])
def test_anything_else_runs_the_full_cli(argv: list[str], why: str) -> None:
    keys, reason = fastrun.gate(argv)
    assert keys == [] and reason is not None and why in reason


def test_env_keys_without_value_are_collected() -> None:
    keys, why = fastrun.gate(["run", "-e", "HOME", "--env", "A=1", "--env=TERM", IMAGE])
    assert why is None and keys == ["HOME", "TERM"]
    request = fastrun.run_request(["-e", "HOME", IMAGE], keys,
                                  {"HOME": "/root", "OTHER": "x", "HYPERVM_POOL": "auto"})
    assert request["environ"] == {"HOME": "/root"}  # TERM unset here: skipped, as docker does
    assert request["settings"] == {"HYPERVM_POOL": "auto"}


def test_socket_path_follows_the_settings() -> None:
    assert fastrun.socket_path({"HYPERVM_POOL": "OFF"}) is None
    assert fastrun.socket_path({"HYPERVM_POOL_SOCKET": "/s/p.sock"}) == "/s/p.sock"
    assert fastrun.socket_path({"HYPERVM_RUN_DIR": "/r"}) == "/r/pool.sock"
    assert fastrun.socket_path({}) == str(config_from_env({}).pool_socket)


# --- the protocol's messages ------------------------------------------------------------------

def test_a_run_request_round_trips() -> None:
    request = json.loads(json.dumps(fastrun.run_request(["--memory", "128", IMAGE], [], {})))
    argv, environ, settings = fastrun.parse_run_request(request)
    assert argv == ["--memory", "128", IMAGE] and environ == {} and settings == {}


@pytest.mark.parametrize("fds", [[], [5], [5, 6, 7]])
def test_the_go_comes_with_exactly_stdout_and_stderr(fds: list[int]) -> None:
    fastrun.check_descriptors([5, 6])
    with pytest.raises(fastrun.RequestError, match="descriptors"):
        fastrun.check_descriptors(fds)


@pytest.mark.parametrize(("request_", "fds", "field"), [
    ({}, [5, 6], "argv"),
    ({"argv": "run x"}, [5, 6], "argv"),
    ({"argv": [1]}, [5, 6], "argv"),
    ({"argv": ["a\x00b"]}, [5, 6], "argv"),
    ({"argv": ["x"] * (fastrun.MAX_ARGS + 1)}, [5, 6], "argv"),
    ({"argv": [], "environ": {"K": 1}}, [5, 6], "environ"),
    ({"argv": [], "environ": ["K=1"]}, [5, 6], "environ"),
    ({"argv": [], "settings": {"PATH": "/bin"}}, [5, 6], "settings"),
    ({"argv": [], "settings": {f"HYPERVM_{i}": "" for i in range(fastrun.MAX_ENV + 1)}},
     [5, 6], "settings"),
])
def test_malformed_run_requests_are_refused(request_: dict[str, Any], fds: list[int],
                                            field: str) -> None:
    with pytest.raises(fastrun.RequestError, match=field):
        fastrun.parse_run_request(request_)


def test_control_lines_carry_only_forwarded_signals() -> None:
    assert fastrun.parse_control(fastrun.control_line(signal.SIGTERM)) == signal.SIGTERM
    for bad in (b'{"signal": 9}', b'{"signal": true}', b'{"signal": "15"}', b"[15]", b"x",
                b'{"signal": 1e9}'):
        with pytest.raises(fastrun.RequestError):
            fastrun.parse_control(bad)


@pytest.mark.parametrize(("line", "parsed"), [
    (b'{"exit": 0}\n', ("exit", 0)),
    (b'{"exit": 255}\n', ("exit", 255)),
    (b'{"fallback": "no warm VM"}\n', ("fallback", "no warm VM")),
    # an older pool, or one refusing our uid: its error comes before anything ran
    (b'{"error": "op: unknown operation \'run\'"}\n', ("fallback", "op: unknown operation 'run'")),
])
def test_replies(line: bytes, parsed: tuple[str, Any]) -> None:
    assert fastrun.parse_reply(line) == parsed


@pytest.mark.parametrize("line", [b'{"exit": 256}', b'{"exit": -1}', b'{"exit": true}',
                                  b'{"exit": "0"}', b'{"exit": 0, "x": 1}', b'{"fallback": 1}',
                                  b'{"error": 1}', b'{"error": "x", "exit": 0}',
                                  b"[]", b"\xff", b""])
def test_a_broken_reply_is_an_error_never_a_fallback(line: bytes) -> None:
    assert fastrun.parse_reply(line)[0] == "error"


# --- the client against a fake daemon ---------------------------------------------------------

def _fake_daemon(path: Path, serve: Callable[[socket.socket, dict[str, Any], list[int]], None]
                 ) -> threading.Thread:
    """``serve(conn, request, fds)``: ``fds`` the descriptors sent with the request (none)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            line, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
            serve(conn, json.loads(line), fds)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _run_fast(tmp_path: Path, argv: list[str]) -> int | None:
    return fastrun.run_fast(argv, {"HYPERVM_POOL_SOCKET": str(tmp_path / "pool.sock")})


def _accept(conn: socket.socket, fds: list[int] | None = None) -> bytes:
    """The daemon's ``accepted``; the client's next line (its go, b"" if it closed), and the
    descriptors that came with it into ``fds``."""
    conn.sendall(b'{"accepted": true}\n')
    line, given, _flags, _addr = socket.recv_fds(conn, 4096, 4)
    if fds is not None:
        fds.extend(given)
    else:
        for fd in given:
            os.close(fd)
    return line


def test_the_daemon_writes_into_our_descriptors_and_gives_the_status(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    def serve(conn: socket.socket, request: dict[str, Any], with_request: list[int]) -> None:
        assert request["op"] == "fastrun" and request["argv"] == [IMAGE, "--", "true"]
        assert with_request == []  # the output descriptors come with the go only
        fds: list[int] = []
        assert fastrun.parse_go(_accept(conn, fds))  # nothing runs before the client's go
        os.write(fds[0], b"to stdout\n")
        os.write(fds[1], b"to stderr\n")
        for fd in fds:
            os.close(fd)
        conn.sendall(b'{"exit": 3}\n')

    thread = _fake_daemon(tmp_path / "pool.sock", serve)
    assert _run_fast(tmp_path, ["run", IMAGE, "--", "true"]) == 3
    thread.join(5)
    out, err = capfd.readouterr()
    assert out == "to stdout\n" and err == "to stderr\n"


def test_a_fallback_reply_leaves_the_run_to_the_full_cli(tmp_path: Path) -> None:
    thread = _fake_daemon(tmp_path / "pool.sock",
                          lambda conn, _r, fds: conn.sendall(b'{"fallback": "not cached"}\n'))
    assert _run_fast(tmp_path, ["run", IMAGE]) is None
    thread.join(5)


def test_no_socket_or_a_gated_line_runs_the_full_cli(tmp_path: Path) -> None:
    assert _run_fast(tmp_path, ["run", IMAGE]) is None  # nothing listens
    thread = _fake_daemon(tmp_path / "pool.sock", lambda *_: pytest.fail("must not connect"))
    assert _run_fast(tmp_path, ["run", "-it", IMAGE]) is None
    assert thread.is_alive()  # never connected


def test_a_daemon_gone_during_the_run_is_an_error_not_a_second_run(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    thread = _fake_daemon(tmp_path / "pool.sock", lambda conn, _r, fds: _accept(conn))
    assert _run_fast(tmp_path, ["run", IMAGE]) == fastrun.EXIT_HYPERVM
    thread.join(5)
    assert "went away during the run" in capfd.readouterr().err


def test_a_daemon_gone_before_it_accepted_ran_nothing_so_the_full_cli_runs(
        tmp_path: Path) -> None:
    thread = _fake_daemon(tmp_path / "pool.sock", lambda conn, _r, fds: None)
    assert _run_fast(tmp_path, ["run", IMAGE]) is None
    thread.join(5)


def test_a_daemon_that_hangs_after_accepting_the_connection_does_not_hang_us(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """The daemon takes the request and answers nothing (hung): we stop waiting after
    ACCEPT_TIMEOUT and leave the run to the full CLI. That is safe: when the daemon comes to
    it, its ``accepted`` finds our connection closed, no go, and it runs nothing."""
    monkeypatch.setattr(fastrun, "ACCEPT_TIMEOUT", 0.5)
    after_us: list[bytes] = []
    gave_up = threading.Event()

    def hang(conn: socket.socket, _request: dict[str, Any], fds: list[int]) -> None:
        after_us.extend(b"fd" for _ in fds)  # a hung daemon holds none of our descriptors
        gave_up.wait(10)  # hung until the client has given up
        try:
            after_us.append(_accept(conn))
        except OSError:
            after_us.append(b"")

    thread = _fake_daemon(tmp_path / "pool.sock", hang)
    started = time.monotonic()
    assert _run_fast(tmp_path, ["run", IMAGE, "--", "true"]) is None
    assert time.monotonic() - started < 5
    gave_up.set()
    thread.join(5)
    assert after_us == [b""]  # no go: nothing may run
    assert "did not answer within 0.5 s" in capfd.readouterr().err


def test_a_signal_before_our_go_runs_nothing(tmp_path: Path) -> None:
    """SIGTERM while we wait for the daemon's answer: we stop waiting and exit 128+15; the
    daemon's late ``accepted`` gets no go."""
    after_us: list[bytes] = []

    def serve(conn: socket.socket, _request: dict[str, Any], fds: list[int]) -> None:
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        time.sleep(0.2)
        try:
            after_us.append(_accept(conn))
        except OSError:
            after_us.append(b"")

    thread = _fake_daemon(tmp_path / "pool.sock", serve)
    before = signal.getsignal(signal.SIGTERM)
    assert _run_fast(tmp_path, ["run", IMAGE, "sleep", "60"]) == 128 + signal.SIGTERM
    thread.join(5)
    assert after_us == [b""]
    assert signal.getsignal(signal.SIGTERM) == before


def test_our_sigterm_is_forwarded_and_its_status_returned(tmp_path: Path) -> None:
    seen: list[int] = []

    def serve(conn: socket.socket, _request: dict[str, Any], fds: list[int]) -> None:
        assert fastrun.parse_go(_accept(conn))
        # to the client, this process's main thread (a real client has no other thread)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        seen.append(fastrun.parse_control(conn.makefile("rb").readline()))
        conn.sendall(b'{"exit": 143}\n')

    thread = _fake_daemon(tmp_path / "pool.sock", serve)
    before = signal.getsignal(signal.SIGTERM)
    assert _run_fast(tmp_path, ["run", IMAGE, "sleep", "60"]) == 143
    thread.join(5)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before  # our handlers are put back


def test_the_client_imports_nothing_heavy() -> None:
    code = ("import sys, executor.cli.fastrun; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('executor', 'hypervm', 'vmimage', 'libvirt', 'dataclasses', 'argparse', "
            "'typing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(fastrun.__file__).parents[2]).stdout
    assert out.strip() == "['executor', 'executor.cli', 'executor.cli.fastrun']"


# --- the daemon's gate ------------------------------------------------------------------------

def _parsed(argv: list[str]) -> Any:
    return fastrun_serve.run_parser().parse_args(["run", *argv])


@pytest.mark.parametrize(("argv", "why"), [
    (["-v", "/srv:/srv", IMAGE], "-v"), (["-p", "80:80", IMAGE], "-p"),
    (["-it", IMAGE], "-i"), (["-t", IMAGE], "-t"), (["-d", IMAGE], "-d"),
    (["--rootfs", "/r", "--", "true"], "--rootfs"), (["--env-file", "f", IMAGE], "--env-file"),
    (["--insecure-registry", "h", IMAGE], "--insecure-registry"),
    (["--pull", "never", IMAGE], "--pull never"), (["--network", "none", IMAGE], "--network"),
    (["--memory", "128"], "no image"), (["oci:dir"], "local image"),
])
def test_the_daemon_leaves_what_it_does_not_serve_to_the_full_cli(argv: list[str],
                                                                  why: str) -> None:
    assert why in (fastrun_serve.unserved(_parsed(argv)) or "")


def test_the_daemon_serves_the_bench_line() -> None:
    args = _parsed(["--name", "b", "--quiet", "--cpus", "1", "--memory", "128", IMAGE, "--",
                    "true"])
    assert fastrun_serve.unserved(args) is None and args.argv == ["true"]


def test_a_usage_error_is_a_silent_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--cpus"], ["--help"], ["--pull", "sometimes", IMAGE]):
        with pytest.raises(fastrun_serve.Fallback):
            _parsed(argv)
    assert capsys.readouterr() == ("", "")  # the full CLI prints the error, once


def test_the_callers_settings_give_its_configuration(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERVM_CONFIG", str(tmp_path / "none.toml"))
    settings = {"HYPERVM_CONFIG": str(tmp_path / "none.toml"),
                "HYPERVM_POOL_SOCKET": "/s/pool.sock", "HYPERVM_STATE_DIR": "/st"}
    assert fastrun_serve.client_config(settings) == config_from_env(settings)
    assert fastrun_serve.client_config(settings) != config_from_env(
        {**settings, "HYPERVM_STATE_DIR": "/other"})


# --- the pool daemon's services ---------------------------------------------------------------

def _daemon_pool(tmp_path: Path) -> Any:
    from executor.pool.daemon import WarmPool  # the test's own: the module above needs none
    from executor.pool.protocol import PoolConfig

    return WarmPool(config_from_env({"HYPERVM_RUN_DIR": str(tmp_path)}), PoolConfig(size=1))


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_a_service_gets_the_request_and_owns_its_descriptors(tmp_path: Path) -> None:
    pool = _daemon_pool(tmp_path)
    got: list[Any] = []

    def service(conn: socket.socket, pid: int, request: dict[str, Any], fds: list[int],
                rest: bytes) -> None:
        got.append((pid, request, len(fds), rest))
        for fd in fds:
            os.close(fd)
        conn.sendall(b'{"exit": 0}\n')

    pool.add_service("run", service)
    ours, theirs = socket.socketpair()
    before = _open_fds()
    # a control line right behind the request may arrive with it: the service gets it
    socket.send_fds(ours, [b'{"op": "run", "argv": []}\n{"signal": 15}\n'], [1, 2])
    pool._handle(theirs)
    assert ours.recv(100) == b'{"exit": 0}\n'
    assert got == [(os.getpid(), {"op": "run", "argv": []}, 2, b'{"signal": 15}\n')]
    assert _open_fds() <= before  # nothing leaked (theirs is closed by the daemon)
    ours.close()


def test_descriptors_sent_with_another_op_are_closed(tmp_path: Path) -> None:
    pool = _daemon_pool(tmp_path)
    ours, theirs = socket.socketpair()
    before = _open_fds()
    socket.send_fds(ours, [b'{"op": "nosuch"}\n'], [1, 2])
    pool._handle(theirs)
    assert b"unknown operation" in ours.recv(1000)
    assert _open_fds() <= before
    ours.close()


def test_the_client_watch_reads_what_came_with_the_request_then_sees_the_end() -> None:
    ours, theirs = socket.socketpair()
    watch = fastrun_serve._ClientWatch(theirs, b'{"signal": 2}\n{"sig')
    assert watch.changed.wait(5) and watch.signum == signal.SIGINT
    ours.sendall(b'nal": 15}\n')  # the first signal stays the one
    ours.close()
    assert watch.gone.wait(5) and watch.signum == signal.SIGINT
    theirs.close()


def test_a_bad_control_line_ends_the_run_as_a_gone_client() -> None:
    ours, theirs = socket.socketpair()
    watch = fastrun_serve._ClientWatch(theirs)
    ours.sendall(b'{"signal": 9}\n')
    assert watch.gone.wait(5) and watch.signum is None
    ours.close()
    theirs.close()


def test_a_pool_without_the_fast_run_leaves_it_to_the_full_cli(tmp_path: Path) -> None:
    pool = _daemon_pool(tmp_path)  # no add_service: as a pool from before the fast run
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "old.sock"))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        pool._handle(conn)

    handler = threading.Thread(target=serve, daemon=True)
    handler.start()
    assert fastrun.run_fast(["run", IMAGE], {"HYPERVM_POOL_SOCKET": str(tmp_path / "old.sock")}
                            ) is None
    handler.join(5)
    server.close()


class _ClaimedVM:
    name = "hypervm-fast-test"

    def __init__(self) -> None:
        self.destroyed = False

    def destroy(self) -> None:
        self.destroyed = True


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claim: Any) -> Any:
    service = fastrun_serve.RunService(_daemon_pool(tmp_path))
    monkeypatch.setattr(service, "_claim", claim)
    return service


def _pipes() -> list[int]:
    """Two descriptors standing for the client's stdout and stderr (the service closes them)."""
    (r1, w1), (r2, w2) = os.pipe(), os.pipe()
    os.close(r1)
    os.close(r2)
    return [w1, w2]


@pytest.mark.parametrize("client", ["gave up", "silent", "says something else"])
def test_the_daemon_runs_nothing_without_the_clients_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: str) -> None:
    """A claimed VM whose client never says go (it gave up waiting for a slow daemon and runs
    the full CLI) is destroyed unused: the command must not run twice."""
    vm = _ClaimedVM()
    service = _service(tmp_path, monkeypatch, lambda *_: (vm, None))
    monkeypatch.setattr(service, "_run", lambda *_: pytest.fail("ran without the go"))
    monkeypatch.setattr(fastrun_serve, "GO_TIMEOUT", 0.3)
    ours, theirs = socket.socketpair()
    if client == "gave up":
        ours.close()
    elif client == "says something else":
        socket.send_fds(ours, [b'{"signal": 15}\n'], _pipes())
    service(theirs, 1, fastrun.run_request([IMAGE], [], {}), [])
    assert vm.destroyed
    assert service.status() == {"served": 0, "failed": 0, "abandoned": 1, "refused": {}}
    theirs.close()
    if client != "gave up":
        assert ours.recv(100) == b'{"accepted": true}\n'
        ours.close()


def test_the_daemon_runs_once_the_client_said_go(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vm = _ClaimedVM()
    service = _service(tmp_path, monkeypatch, lambda *_: (vm, None))
    ran: list[bytes] = []

    def run(watch: Any, *_: Any) -> None:
        ran.append(b"ran")
        return None  # as when the client went away during the run

    monkeypatch.setattr(service, "_run", run)
    ours, theirs = socket.socketpair()
    socket.send_fds(ours, [fastrun.GO_LINE], _pipes())
    service(theirs, 1, fastrun.run_request([IMAGE], [], {}), [])
    assert ran == [b"ran"] and vm.destroyed
    assert service.status() == {"served": 1, "failed": 0, "abandoned": 1, "refused": {}}
    ours.close()
    theirs.close()


def test_refusals_are_counted_by_reason(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def claim(*_: Any) -> Any:
        raise fastrun_serve.Fallback("no warm VM serves this pod", "no warm VM")

    service = _service(tmp_path, monkeypatch, claim)
    for fds in ([], [], _pipes()):  # descriptors with the request: a malformed request
        ours, theirs = socket.socketpair()
        service(theirs, 1, fastrun.run_request([IMAGE], [], {}), fds)
        assert b"fallback" in ours.recv(1000)
        ours.close()
        theirs.close()
    assert service.status()["refused"] == {"no warm VM": 2, "bad request": 1}
    assert service.fallbacks == 3 and service.served == 0


def test_pool_status_shows_the_fast_run_counters(tmp_path: Path) -> None:
    """``hypervm pool status``: served, failed, abandoned and refused (by reason) fast runs,
    in the JSON the socket answers and in the text output."""
    from executor.cli import pool as pool_cli

    pool = _daemon_pool(tmp_path)
    service = fastrun_serve.RunService(pool)
    pool.add_service(fastrun.RUN_OP, service)
    for what, reason in (("served", ""), ("served", ""), ("failed", ""), ("abandoned", ""),
                         ("refused", "no warm VM"), ("refused", "image not cached"),
                         ("refused", "no warm VM")):
        service.counts.add(what, reason)
    ours, theirs = socket.socketpair()
    ours.sendall(b'{"op": "status"}\n')
    pool._handle(theirs)
    status = json.loads(ours.makefile("rb").readline())
    ours.close()
    assert status["services"] == {"fastrun": {
        "served": 2, "failed": 1, "abandoned": 1,
        "refused": {"no warm VM": 2, "image not cached": 1}}}
    lines = pool_cli.status_lines(status)
    assert lines[-1] == ("fast runs: 2 served, 1 failed, 1 abandoned, 3 refused (image not "
                         "cached 1, no warm VM 2)")
    assert lines[0].startswith("pool ") and "0 ready" in lines[0]
    status.pop("services")  # a pool without the fast run (or from before the counters)
    assert pool_cli.status_lines(status)[-1] == "fast runs: not served by this pool"


def test_a_daemon_that_gave_up_on_our_go_leaves_the_run_to_the_full_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """We were slow to say go (stopped, say) and the daemon closed the connection: the go
    cannot arrive, nothing ran, the full CLI runs it."""
    real_send_fds = socket.send_fds
    closed = threading.Event()

    def late_go(sock: socket.socket, buffers: Any, fds: Any, *args: Any) -> int:
        closed.wait(5)
        return real_send_fds(sock, buffers, fds, *args)

    def serve(conn: socket.socket, _request: dict[str, Any], fds: list[int]) -> None:
        conn.sendall(b'{"accepted": true}\n')
        conn.shutdown(socket.SHUT_RDWR)
        closed.set()

    monkeypatch.setattr(socket, "send_fds", late_go)  # the module fastrun imports
    thread = _fake_daemon(tmp_path / "pool.sock", serve)
    assert _run_fast(tmp_path, ["run", IMAGE]) is None
    thread.join(5)
