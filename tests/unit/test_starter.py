"""The cold run's starter child (executor.libvirt.starter): its pipe protocol, bounded both
ways; a real child against libvirt's ``test:///default`` driver and an unreachable daemon."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.cli import fastrun
from executor.libvirt import linger, starter
from executor.libvirt.qemu_process import LIBVIRT_PID_DIR
from executor.libvirt.starter import StarterError
from hypervm.errors import HostError, HypervisorError

UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_message_round_trips(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, starter.encode({"uuid": "u-1"}) + starter.encode({"gone": True}))
    assert starter.read_message(r, 100) == {"uuid": "u-1"}
    assert starter.read_message(r, 100) == {"gone": True}
    os.close(w)
    assert starter.read_message(r, 100) is None  # EOF


@pytest.mark.parametrize(("data", "why"), [
    ((1 << 31).to_bytes(4, "big"), r"bytes \(at most"),  # refused before reading a byte of it
    (b"\x00\x00\x00\x05[1,2", "cut short"),
    (b"\x00\x00", "cut short"),
    (b"\x00\x00\x00\x04nope", "not JSON"),
    (b"\x00\x00\x00\x03[1]", "not an object"),
])
def test_a_garbled_message_is_an_error(pipe: tuple[int, int], data: bytes, why: str) -> None:
    r, w = pipe
    os.write(w, data)
    os.close(w)
    with pytest.raises(StarterError, match=why):
        starter.read_message(r, starter.MAX_REPLY, time.monotonic() + 5)


def test_silence_is_an_error_not_a_hang(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"\x00\x00")  # half a header, then nothing
    began = time.monotonic()
    with pytest.raises(StarterError, match="in time"):
        starter.read_message(r, starter.MAX_REPLY, time.monotonic() + 0.2)
    assert time.monotonic() - began < 2


@pytest.mark.parametrize("reply", [
    {}, {"uuid": 3}, {"uuid": "x" * 65}, {"uuid": "u", "extra": 1}, {"error": "no"},
    {"error": "x" * (starter.MAX_TEXT + 1), "connect": False}, {"error": "no", "connect": 1},
])
def test_a_malformed_answer_is_an_error(reply: dict[str, object]) -> None:
    with pytest.raises(StarterError, match="malformed"):
        starter.parse_reply(reply)


def test_answers() -> None:
    assert starter.parse_reply({"uuid": "u-1"}) == ("ok", "u-1", False)
    assert starter.parse_reply({"error": "no", "connect": True}) == ("error", "no", True)
    with pytest.raises(StarterError, match="without an answer"):
        starter.parse_reply(None)


@pytest.mark.parametrize("answer", [
    b"\x7f\xff\xff\xff", b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x09not json!", b"",
])
def test_a_hostile_answer_kills_and_reaps_the_child(answer: bytes) -> None:
    """Whatever the child answers (an oversized length, a wrong shape, garbage, nothing and
    EOF), the parent gets a StarterError, the child is killed (its connection's auto-destroy
    removes what it made) and reaped: no zombie, no hang."""
    child = subprocess.Popen(["sleep", "60"])
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    os.write(from_w, answer)
    os.close(from_w)
    held = starter.Starter(child.pid, to_w, from_r, "test:///default")
    try:
        with pytest.raises(StarterError):
            held.create("test:///default", "hypervm-unit-s", "<domain/>", timeout=5)
        with pytest.raises(ChildProcessError):  # reaped already
            os.waitpid(child.pid, os.WNOHANG)
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)
    finally:
        os.close(to_r)
        if child.returncode is None and os.path.exists(f"/proc/{child.pid}"):
            child.kill()


@contextlib.contextmanager
def _silent_child() -> Iterator[tuple[starter.Starter, int]]:
    """A Starter whose 'child' (``sleep 60``) never reads nor answers: (it, the child's pid)."""
    child = subprocess.Popen(["sleep", "60"])
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        yield starter.Starter(child.pid, to_w, from_r, "test:///default"), child.pid
    finally:
        os.close(to_r)
        os.close(from_w)
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_silent_child_is_killed_after_the_timeout() -> None:
    with _silent_child() as (held, pid):
        began = time.monotonic()
        with pytest.raises(StarterError, match="in time"):
            held.create("test:///default", "hypervm-unit-s", "<domain/>", timeout=0.3)
        assert time.monotonic() - began < 3
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_request_is_used_once_and_bounded() -> None:
    with _silent_child() as (held, _):
        with pytest.raises(StarterError, match="at most"):
            held.create("test:///default", "n", "x" * (starter.MAX_REQUEST + 1))
        with pytest.raises(StarterError, match="already used"):
            held.create("test:///default", "n", "<domain/>")


# --- a real starter child ---------------------------------------------------------------------

def _forked(uri: str) -> starter.Starter:
    held = starter.fork_ahead({starter.URI_VARIABLE: uri})
    assert held is not None
    assert starter.take() is held and starter.take() is None  # handed over once
    return held


def _ended(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return True
        except ChildProcessError:  # reaped already (Starter.close reaps an ended child)
            return True
        time.sleep(0.02)
    return False


def test_a_refused_createxml_is_todays_error() -> None:
    """libvirt's refusal comes back as the CLI's own createXML gave it (test:///default has no
    auto-destroy: it refuses the flag), and the child ends."""
    pytest.importorskip("libvirt")
    held = _forked("test:///default")
    with pytest.raises(HypervisorError, match="cannot start VM hypervm-unit-s: ") as info:
        starter.create_by(held, "test:///default", "hypervm-unit-s", "<domain type='test'>"
                          "<name>hypervm-unit-s</name><memory>1024</memory>"
                          "<os><type>hvm</type></os></domain>", "start libvirtd")
    assert "flag" in str(info.value).lower() or "support" in str(info.value).lower()
    assert _ended(held.pid)


def test_an_unreachable_libvirt_is_todays_connect_error() -> None:
    pytest.importorskip("libvirt")
    held = _forked(UNREACHABLE)
    with pytest.raises(HostError, match=r"cannot connect to libvirt at qemu\+unix") as info:
        starter.create_by(held, UNREACHABLE, "hypervm-unit-s", "<domain/>", "start libvirtd")
    assert info.value.hint == "start libvirtd"
    assert _ended(held.pid)


def test_the_child_connects_where_the_run_says() -> None:
    """The child connects to $HYPERVM_LIBVIRT_URI ahead; a configuration file naming another
    URI is followed (here: the unreachable one named ahead, test:/// asked)."""
    pytest.importorskip("libvirt")
    held = _forked(UNREACHABLE)
    with pytest.raises(HypervisorError, match="cannot start VM"):  # test:///'s refusal
        starter.create_by(held, "test:///default", "hypervm-unit-s", "<domain/>", "hint")
    assert _ended(held.pid)


def test_the_child_holds_none_of_our_descriptors_and_ends_with_us() -> None:
    """A pipe of ours (the run's stdout, say) sees its EOF once we close our end: the child
    does not hold it. Closing our link ends the child (nothing created): no zombie."""
    pytest.importorskip("libvirt")
    r, w = os.pipe()
    os.set_inheritable(w, True)
    held = _forked("test:///default")
    os.close(w)
    try:
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
    held.close()
    assert _ended(held.pid)


_KILLED_PARENT = """
import os, sys, time
from executor.libvirt import starter
held = starter.fork_ahead({starter.URI_VARIABLE: "test:///default"})
holder = os.fork()  # holds our ends of the child's pipes: no EOF reaches the child
if holder == 0:
    time.sleep(60)
    os._exit(0)
print(held.pid, holder, flush=True)
time.sleep(float(sys.argv[1]))
os.kill(os.getpid(), 9)
"""


def _gone(pid: int, timeout: float = 10) -> bool:
    """``pid`` (not our child: reaped by whoever adopted it) has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("lives_s", [0.0, 0.5])
def test_the_child_ends_with_its_killed_parent_whoever_holds_its_pipe(lives_s: float) -> None:
    """The parent killed (SIGKILL) while a process of its own holds the pipe's other end: no
    EOF comes, and the waiting child sees its parent gone by polling (PARENT_POLL_S), whether
    the parent died before or after the child began to wait."""
    pytest.importorskip("libvirt")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, str(lives_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child, holder = (int(pid) for pid in proc.stdout.readline().split())
    try:
        proc.wait(timeout=10)
        assert _gone(child), "the starter child outlived its killed parent"
    finally:
        for pid in (holder, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        proc.stdout.close()


def test_a_lazy_module_runs_at_its_first_use(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hypervm_unit_lazy.py").write_text(
        "import sys\nsys.hypervm_unit_lazy_ran = True\nVALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hypervm_unit_lazy", raising=False)
    module = starter.lazy_module("hypervm_unit_lazy")
    assert not hasattr(sys, "hypervm_unit_lazy_ran")
    assert module.VALUE == 7
    assert sys.hypervm_unit_lazy_ran  # type: ignore[attr-defined]
    assert starter.lazy_module("hypervm_unit_lazy") is module
    del sys.hypervm_unit_lazy_ran  # type: ignore[attr-defined]


# --- who forks one ----------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "env", "forks"), [
    (["run", "--quiet", "busybox", "--", "true"], {}, True),
    (["run", "busybox"], {"HYPERVM_POOL": "off"}, True),
    (["run", "busybox"], {"HYPERVM_STARTER": "off"}, False),
    (["run", "busybox"], {"HYPERVM_SNAPSHOT": "on"}, False),
    (["run", "-d", "busybox"], {}, False),  # a supervised run: its box creates the domain
    (["run", "-t", "busybox"], {}, False),
    (["run", "-v", "/srv:/srv", "busybox"], {}, False),  # not the fast path's options
    (["ps"], {}, False),
    (["run", "oci:dir"], {}, False),
])
def test_only_a_plain_cold_foreground_run_forks_a_starter(
        tmp_path: Path, argv: list[str], env: dict[str, str], forks: bool) -> None:
    environ = {"HYPERVM_RUN_DIR": str(tmp_path), "HYPERVM_CONFIG": str(tmp_path / "none"), **env}
    assert fastrun._cold_run(argv, environ) is forks


def test_no_starter_beside_a_pool_socket(tmp_path: Path) -> None:
    (tmp_path / "pool.sock").touch()  # a pool that may serve it (the full CLI's claim)
    assert not fastrun._cold_run(["run", "busybox"], {"HYPERVM_RUN_DIR": str(tmp_path),
                                                      "HYPERVM_CONFIG": str(tmp_path / "none")})


@pytest.mark.parametrize(("text", "env", "forks"), [
    ('starter = "off"\n', {}, False), ("starter = false\n", {}, False),
    ('snapshot = "on"\n', {}, False), ('starter = "off"\n', {"HYPERVM_STARTER": "on"}, True),
    ('accel = "tcg"\n', {}, True), ("not toml [", {}, True),  # the full CLI refuses that file
])
def test_the_configuration_file_can_turn_it_off(tmp_path: Path, text: str,
                                                env: dict[str, str], forks: bool) -> None:
    (tmp_path / "config.toml").write_text(text)
    environ = {"HYPERVM_RUN_DIR": str(tmp_path), "HYPERVM_CONFIG": str(tmp_path / "config.toml"),
               **env}
    assert fastrun._cold_run(["run", "busybox"], environ) is forks


class _FakeStarter:
    """A starter whose answer never comes (the wait is interrupted), or whose child made the
    domain: what the Hypervisor tells it."""

    def __init__(self, answer: BaseException | None = None) -> None:
        self.answer, self.sent, self.closed = answer, [], []

    def create(self, uri: str, name: str, xml: str) -> tuple[str, str, bool]:
        self.sent.append(name)
        if self.answer is not None:
            raise self.answer
        return "ok", "uuid-1", False

    def close(self, gone: bool = False) -> None:
        self.closed.append(gone)


@pytest.fixture
def _spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """A domain's values, its run directories not prepared (root's chown and QEMU's reach are
    tests/unit/test_hypervisor.py's)."""
    from executor.libvirt import rundir
    from tests.unit.test_hypervisor import make_spec

    monkeypatch.setattr(rundir, "prepare", lambda directory, label: None)
    return make_spec(tmp_path, identity=(64000, 64000))


def test_an_interrupted_wait_closes_the_link(_spec: object) -> None:
    """A KeyboardInterrupt while the parent waits for the answer: the link is closed without
    ``gone``, so the child destroys the domain if its createXML made one."""
    from executor.libvirt.hypervisor import Hypervisor

    fake = _FakeStarter(KeyboardInterrupt())
    hv = Hypervisor("test:///default", starter=fake)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        hv.create(_spec)  # type: ignore[arg-type]
    assert fake.sent == ["hypervm-unit-1"] and fake.closed == [False]
    hv.close()
    assert fake.closed == [False]  # not twice


def test_the_parent_connects_only_when_it_needs_to_and_says_gone(_spec: object) -> None:
    """After the starter's createXML the parent has no connection of its own until it uses
    one; a destroy (here of a domain its test:/// does not know) or a forget tells the child
    the domain is gone, which it then only waits for."""
    pytest.importorskip("libvirt")
    from executor.libvirt.hypervisor import Hypervisor

    fake = _FakeStarter()
    hv = Hypervisor("test:///default", starter=fake)  # type: ignore[arg-type]
    vm = hv.create(_spec)  # type: ignore[arg-type]
    assert (vm.name, vm.uuid) == ("hypervm-unit-1", "uuid-1")
    assert hv._conn is None  # no libvirt connection of the CLI's own yet
    assert not hv.forget("hypervm-unit-1")  # the child holds its auto-destroy, not us
    hv.close()
    assert fake.closed == [True]
    fake = _FakeStarter()
    hv = Hypervisor("test:///default", starter=fake)  # type: ignore[arg-type]
    hv.create(_spec)  # type: ignore[arg-type]
    hv.close()  # neither destroyed nor gone: the child destroys it
    assert fake.closed == [False]



def test_the_childs_teardown_wait_loads_nothing_and_is_bounded(tmp_path: Path) -> None:
    """The answered child's wait for libvirtd's teardown (its domain's pid file removed)
    imports neither linger nor logging (~6 ms of its CPU at the run's end, beside the CLI's
    own end), returns once the file is gone, and at its timeout when it stays; the pid
    files' directory is libvirt's, as qemu_process has it."""
    assert Path(starter.LIBVIRT_PID_DIR) == LIBVIRT_PID_DIR
    assert (starter.TEARDOWN_TIMEOUT_S, starter.TEARDOWN_POLL_S) == (linger.TEARDOWN_TIMEOUT_S,
                                                                    linger.POLL_S)
    going, staying = tmp_path / "going.pid", tmp_path / "staying.pid"
    going.write_text("1")
    staying.write_text("1")
    code = f"""
import os, sys, threading, time
import executor.libvirt.starter as s
threading.Timer(0.2, os.unlink, ({str(going)!r},)).start()
before, t = set(sys.modules), time.monotonic()
s.wait_teardown({str(going)!r}, 10)
gone, t = time.monotonic() - t, time.monotonic()
s.wait_teardown({str(staying)!r}, 0.1)
print(sorted(set(sys.modules) - before), round(gone, 2), round(time.monotonic() - t, 2))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    loaded, gone, bounded = out.rsplit(" ", 2)
    assert loaded == "[]", loaded
    assert 0.15 <= float(gone) < 2
    assert 0.1 <= float(bounded) < 1
