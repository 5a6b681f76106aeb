"""A cold ``hypervm run``'s libvirt, loaded and connected by a forked child beside the CLI's
imports: the **starter**.

Before a cold run's createXML, its CLI spends ~15 ms loading libvirt's C library (~170 shared
objects) and ~3 ms connecting, all on one core while the machine's second core idles (the guest
has not started). A thread cannot take that load: glibc's loader lock would make the main
thread wait at its own extension imports (DEVELOPERS.md). A forked child has its own loader:
the console script (``executor.cli.fastrun``) forks it first thing for a foreground cold run
that will create its own domain (:func:`fork_ahead`); it imports libvirt and opens the
connection while the parent imports and builds the run's values; the parent's
``Hypervisor.create`` sends it the domain XML (:meth:`Starter.create`) and it calls createXML
with ``VIR_DOMAIN_START_AUTODESTROY``, as the CLI did, and answers. The parent does not load
libvirt before createXML; it opens its own connection after it, while the guest boots, for
everything else (events, destroy, monitor commands).

The child holds its connection, and so the VM, for the VM's life. It ends when the parent ends:
its pipe's EOF, its death (polled: another process may hold the pipe), or its ``gone`` (it
destroyed the domain, or its QEMU exited). Without ``gone`` it destroys the domain itself first
(a parent killed by SIGKILL), and in either case closes its connection only once libvirtd has
torn the domain down (its pid file gone); or the parent's ``end`` leaves it the VM's end (its
uid, its run dir: ``executor.libvirt.vmend``). Closing an autodestroy connection before the
teardown would run the auto-destroy on libvirtd's main loop, which would wait for the domain and
stall every client (``executor.libvirt.linger``). If the child itself is killed, its connection
closes and libvirtd destroys the domain: the VM never outlives its owner either way.

The pipe protocol (each message a 4-byte big-endian length, then that many bytes of JSON;
sizes are bounded both ways and the parent's wait for the answer by :data:`REPLY_TIMEOUT`):

    parent → child  {"uri": URI, "name": NAME, "xml": XML}      at most MAX_REQUEST bytes
    child → parent  {"uuid": UUID}                               created (the domain NAME)
                    {"error": TEXT, "connect": BOOL}             nothing created; ``connect``:
                                                                 libvirt could not be reached
    parent → child  {"gone": true}   (optional) the domain is destroyed or its QEMU exited
                    {"end": {...}}   (or) its QEMU was told to exit: the child ends the VM
    then EOF: the parent is done (or dead).

The child is ours, but its answer is still read as untrusted bytes: a wrong size, bad JSON, a
missing or oversized field, silence past the timeout or an EOF is a :class:`StarterError` (the
child is killed: its connection's auto-destroy removes anything it created), never a hang.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import sys
import time
import types as _types
from collections.abc import Mapping, Sequence

from executor.libvirt import vmend

#: typing.TYPE_CHECKING without importing typing (this module is imported by the console
#: script's start: executor.cli.fastrun)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

#: hypervm.config.DEFAULT_LIBVIRT_URI (importing it costs the console script ~20 ms)
DEFAULT_URI = "qemu:///system"
URI_VARIABLE = "HYPERVM_LIBVIRT_URI"
#: a domain's XML is a few KiB; a pod with many layers and shares stays far below this
MAX_REQUEST = 4 << 20
#: an answer is a UUID or libvirt's error text
MAX_REPLY = 64 << 10
MAX_TEXT = 16 << 10
#: how long createXML may take before the parent gives up (and kills the child)
REPLY_TIMEOUT = 120.0
#: the child's niceness until the parent sends its request (see _child)
NICE = 19
#: where libvirt (qemu:///system) keeps ``<domain>.pid`` while the domain's QEMU runs
#: (executor.libvirt.qemu_process.LIBVIRT_PID_DIR: importing that module, or linger, loads
#: logging and traceback, ~6 ms of the child's CPU at the run's end, beside the CLI's own end
#: and libvirtd's teardown on a two-core host)
LIBVIRT_PID_DIR = "/run/libvirt/qemu"
#: the child's wait for libvirtd's teardown of its domain (executor.libvirt.linger's bounds)
TEARDOWN_TIMEOUT_S = 30.0
TEARDOWN_POLL_S = 0.05
#: how often the child, waiting for its parent's message, checks that the parent lives (a pipe
#: held elsewhere, e.g. by a forked process of the parent's, gives no EOF)
PARENT_POLL_S = 0.5
STARTER_HINT = "start libvirtd: virtlogd -d; libvirtd -d (or HYPERVM_STARTER=off)"


class StarterError(Exception):
    """The starter's answer is missing, late or malformed (its child is killed)."""


# --- framing (both sides) ---------------------------------------------------------------------

def encode(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return len(data).to_bytes(4, "big") + data


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    """``size`` bytes from ``fd``; b"" at EOF before the first, StarterError at EOF after it
    or past the monotonic ``deadline``."""
    data = b""
    while len(data) < size:
        if deadline is not None:
            import select  # deferred: only a read with a deadline needs it (the parent's, once)

            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise StarterError("no answer in time")
        chunk = os.read(fd, size - len(data))
        if not chunk:
            if data:
                raise StarterError("a message cut short")
            return b""
        data += chunk
    return data


def read_message(fd: int, limit: int, deadline: float | None = None) -> dict[str, Any] | None:
    """The next message on ``fd`` (None at EOF); StarterError when it is larger than
    ``limit``, not a JSON object, cut short, or later than ``deadline``."""
    head = _read_exact(fd, 4, deadline)
    if not head:
        return None
    size = int.from_bytes(head, "big")
    if size > limit:
        raise StarterError(f"a message of {size} bytes (at most {limit})")
    body = _read_exact(fd, size, deadline)
    if len(body) != size:
        raise StarterError("a message cut short")
    try:
        message = json.loads(body)
    except ValueError as e:
        raise StarterError(f"not JSON: {body[:80]!r}") from e
    if not isinstance(message, dict):
        raise StarterError(f"not an object: {body[:80]!r}")
    return message


def parse_reply(reply: Mapping[str, Any] | None) -> tuple[str, str, bool]:
    """``("ok", uuid, False)`` or ``("error", text, connect)``; StarterError for anything
    else (an EOF: None)."""
    if reply is None:
        raise StarterError("it ended without an answer")
    if set(reply) == {"uuid"} and _text(reply["uuid"], 64):
        return "ok", reply["uuid"], False
    if set(reply) == {"error", "connect"} and _text(reply["error"], MAX_TEXT) \
            and isinstance(reply["connect"], bool):
        return "error", reply["error"], reply["connect"]
    raise StarterError(f"a malformed answer: {json.dumps(reply)[:120]}")


def _text(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


# --- the parent's side ------------------------------------------------------------------------

class Starter:
    """The parent's end of a forked starter: one createXML, then its link to the child."""

    def __init__(self, pid: int, to_child: int, from_child: int, uri: str) -> None:
        self.pid, self.uri = pid, uri
        self._to_child: int | None = to_child
        self._from_child: int | None = from_child
        self._used = False

    def create(self, uri: str, name: str, xml: str,
               timeout: float = REPLY_TIMEOUT) -> tuple[str, str, bool]:
        """Have the child create the domain ``name`` from ``xml`` on ``uri``: see
        :func:`parse_reply`. Once only; StarterError (the child killed) when it cannot."""
        if self._used or self._to_child is None or self._from_child is None:
            raise StarterError("already used")
        self._used = True
        request = encode({"uri": uri, "name": name, "xml": xml})
        try:  # the run waits for it now: its createXML at our priority (root may raise it)
            os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0))
        except OSError:
            pass  # not root: it finishes at its own
        if len(request) - 4 > MAX_REQUEST:
            self.kill()
            raise StarterError(f"a domain XML of {len(request)} bytes (at most {MAX_REQUEST})")
        try:
            _write_all(self._to_child, request)
            kind, value, connect = parse_reply(
                read_message(self._from_child, MAX_REPLY, time.monotonic() + timeout))
        except (OSError, StarterError) as e:
            self.kill()
            raise StarterError(str(e)) from e
        if kind != "ok":
            self.close()  # nothing was created: the child ends at once
        return kind, value, connect

    def close(self, gone: bool = False) -> None:
        """End the link: ``gone`` tells the child the domain is destroyed or its QEMU has
        exited (it only waits for libvirtd's teardown); otherwise it destroys the domain
        itself. Idempotent."""
        to_child, self._to_child = self._to_child, None
        from_child, self._from_child = self._from_child, None
        if to_child is not None:
            if gone:
                try:
                    _write_all(to_child, encode({"gone": True}))
                except OSError:
                    pass  # the child is gone: its connection's close destroyed the domain
            os.close(to_child)
        if from_child is not None:
            os.close(from_child)
        self._reap()

    def hand_end(self, run_dir: str, release: bool, kill_after: float) -> bool:
        """Leave the end of the domain it created to the child (``executor.libvirt.vmend``:
        the caller has told its QEMU to exit) and end the link, not waiting for the child.
        False when no created domain is linked or the child cannot be told: then the caller
        ends the VM."""
        if not self._used or self._to_child is None:
            return False
        try:
            _write_all(self._to_child, encode(vmend.end_message(run_dir, release, kill_after)))
        except OSError:
            return False
        self.close()
        return True

    def kill(self) -> None:
        """Kill the child (its connection's auto-destroy removes what it created) and reap
        it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _reap(self) -> None:
        """No zombie: reap the child if it has ended (else it ends after us, an orphan)."""
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def create_by(held: Starter, uri: str, name: str, xml: str, connect_hint: str) -> str:
    """The UUID of the domain ``name`` the starter created from ``xml`` on ``uri``; the errors
    a createXML of the CLI's own gave (HypervisorError, HostError), with their hints."""
    # deferred: this module is imported by the console script before anything of hypervm
    from hypervm.errors import HostError, HypervisorError

    try:
        kind, value, connect = held.create(uri, name, xml)
    except StarterError as e:
        raise HostError(f"cannot start VM {name}: the process creating it failed: {e}",
                        hint=STARTER_HINT) from e
    if kind == "ok":
        return value
    if connect:
        raise HostError(f"cannot connect to libvirt at {uri}: {value}", hint=connect_hint)
    raise HypervisorError(f"cannot start VM {name}: {value}", hint=create_hint(value))


def create_hint(message: str) -> str | None:
    """The fix a createXML refusal's ``message`` suggests (None: none we know)."""
    if "Permission denied" in message:
        return (
            "kernel, initrd, disk images and shared dirs must be readable by the VM's QEMU "
            "user (its own uid, or libvirt-qemu), and not under /root; libvirt's "
            "/var/lib/libvirt/qemu must be traversable (chmod o+x, hypervm doctor)"
        )
    if "No such file" in message:
        return "check that the kernel, initrd and disk images exist (hypervm doctor)"
    if "kvm" in message.lower():
        return "set HYPERVM_ACCEL=tcg to run without KVM"
    return None


def lazy_module(name: str) -> ModuleType:
    """``import name``, executed at the first use of one of its attributes (a :class:`_Later`
    module, under its lock): a cold run's CLI then loads libvirt's C library (~15 ms) only once
    its starter child has made its createXML."""
    if name in sys.modules:
        return sys.modules[name]
    module = _later_module(name)
    if module is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return module


#: standard modules a cold run's CLI imports (through dataclasses, logging, ElementTree) before
#: its createXML but uses only on paths a run seldom takes there: inspect with ast and dis
#: (dataclasses' for a class without a docstring, ~7 ms), traceback with linecache, tokenize
#: and textwrap (logging's text of an exception, ~3 ms), ElementPath (``find``: the parse of a
#: domain's XML, not its build, ~0.7 ms)
LATER_MODULES = ("inspect", "traceback", "xml.etree.ElementPath")
_later_lock = _thread.RLock()
_loading: set[str] = set()


class _Later(_types.ModuleType):
    """A module whose code runs at the first use of an attribute it does not have yet (its
    ``__spec__``, ``__name__``… it has: an ``import`` of it elsewhere, which reads
    ``__spec__``, loads nothing, unlike ``importlib.util.LazyLoader``'s), under a lock: a
    thread that asks for an attribute while another loads it waits for the load."""

    def __getattr__(self, attr: str) -> Any:
        if not _load(self):  # asked for by its own code as it runs: a partial module's error
            raise AttributeError(f"partially initialized module {self.__name__!r} has no "
                                 f"attribute {attr!r}")
        return getattr(self, attr)


def _load(module: ModuleType) -> bool:
    """Run a :class:`_Later` module's code (once); False while it runs in this thread."""
    with _later_lock:
        if type(module) is not _Later:
            return True
        if module.__name__ in _loading:
            return False
        _loading.add(module.__name__)
        try:
            module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]
        finally:
            _loading.discard(module.__name__)
        module.__class__ = _types.ModuleType  # type: ignore[assignment]  # (narrowed: _Later)
        return True


def defer_modules(names: Sequence[str] = LATER_MODULES) -> None:
    """Put ``names`` in ``sys.modules`` as :class:`_Later` modules, which this process's cold
    run loads at their first use, where before its imports ran them on the way to createXML.
    A cold ``run … true`` never uses them: until session 19 ``Starter.create`` loaded them
    once the domain was created (~8-9 ms of CPU in the guest's boot window, on a two-core
    host whose other core the guest's QEMU and libvirtd share; DEVELOPERS.md, task coldend);
    a run that needs one (an exception's text, a dataclass without a docstring) loads it then,
    under the lock."""
    for name in names:
        if name not in sys.modules:
            _later_module(name)


def _later_module(name: str) -> ModuleType | None:
    """``name`` in ``sys.modules`` as a :class:`_Later` module (None: no such module)."""
    import importlib.util  # deferred: loaded by site already; the console script's is lighter

    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Later
    sys.modules[name] = module
    return module


_ahead: list[Starter] = []


def wanted(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether this process's ``hypervm ARGV`` (a foreground cold run, already through
    ``fastrun.gate``, without a pool socket) should fork a starter: not with snapshots (a
    start from one creates no domain of its own) or ``HYPERVM_STARTER=off`` (the variables,
    else the configuration file)."""
    if not argv or argv[0] != "run":
        return False
    names = ("HYPERVM_STARTER", "HYPERVM_SNAPSHOT")
    values = {env: environ[env] for env in names if env in environ}
    if len(values) < len(names):
        from_file = _file_settings(environ)
        values = {env: values.get(env, from_file.get(env, "")) for env in names}
    return (values["HYPERVM_STARTER"].lower() != "off"
            and values["HYPERVM_SNAPSHOT"].lower() != "on")


def _file_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The configuration file's values by variable (hypervm.settings.read_config_file; {}: no
    file, or one the full CLI will refuse with its own error)."""
    # hypervm.settings.config_path's path, checked without importing it (~20 ms) on a host
    # without a configuration file
    path = environ.get("HYPERVM_CONFIG") or "/etc/hypervm/config.toml"
    if not os.path.exists(path):
        return {}
    # deferred: a host with a configuration file only (the full CLI imports both anyway)
    from hypervm import settings
    from hypervm.errors import HyperVMError  # deferred: as settings

    try:
        return settings.read_config_file(settings.config_path(environ))
    except HyperVMError:
        return {}


def fork_ahead(environ: Mapping[str, str]) -> Starter | None:
    """Fork the starter for this process's one cold run (:func:`take` hands it over); None
    when the fork fails (the run connects itself, as without one)."""
    uri = environ.get(URI_VARIABLE) or DEFAULT_URI
    to_child_r, to_child_w = os.pipe()  # non-inheritable: no exec'd program of ours gets them
    from_child_r, from_child_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        stream.flush()
    parent = os.getpid()  # not the child's getppid(): we may be dead, the child adopted, by then
    try:
        pid = os.fork()
    except OSError:
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
        return None
    if pid == 0:
        _child(to_child_r, from_child_w, uri, parent)
    os.close(to_child_r)
    os.close(from_child_w)
    starter = Starter(pid, to_child_w, from_child_r, uri)
    _ahead.append(starter)
    return starter


def take() -> Starter | None:
    """The starter this process forked, once (the cold run's Hypervisor takes it)."""
    return _ahead.pop() if _ahead else None


# --- the child --------------------------------------------------------------------------------

def _child(rfd: int, wfd: int, uri: str, parent: int) -> None:
    """The starter's life (never returns: no Python clean-up of the parent's state)."""
    try:
        # a core of its own is what it is for: when none is free, the run's own work (on
        # which its createXML waits anyway) goes first; the parent raises it back then
        os.nice(NICE)
        _detach((rfd, wfd))
        _serve(rfd, wfd, uri, parent)
    except BaseException:  # noqa: BLE001, S110 - nothing of the parent's may run here
        pass
    finally:
        os._exit(0)


def _detach(keep: tuple[int, ...]) -> None:
    """Away from the parent's terminal signals and descriptors: a caller reading the run's
    output to its end never waits for us, nor does any descriptor it passed stay open here.
    A SIGTERM too is the parent's to act on (one meant for the whole group): its death is what
    ends us, and that we poll for (:func:`_next_message`)."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _next_message(fd: int, limit: int, parent: int) -> dict[str, Any] | None:
    """The parent's next message; None at its EOF, its death (seen within PARENT_POLL_S) or a
    malformed message. A message the parent wrote before it died is still read (a run's
    ``end``: it exits right after)."""
    import select  # deferred: the child's (the console script's start does not need it)

    while not select.select([fd], [], [], PARENT_POLL_S)[0]:
        if os.getppid() != parent:
            return None
    try:
        return read_message(fd, limit)
    except (StarterError, OSError):
        return None


def _serve(rfd: int, wfd: int, uri: str, parent: int) -> None:
    # deferred: the child's whole job; the parent must not load libvirt before its createXML
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors go to the parent
    # an event loop, as the CLI's own connection has: libvirtd's keepalives get answers
    libvirt.virEventRegisterDefaultImpl()
    _in_thread(lambda: _run_events(libvirt))
    conn, failure = _open(libvirt, uri)
    request = _next_message(rfd, MAX_REQUEST, parent)
    if request is None or not (_text(request.get("uri"), 4096) and _text(request.get("name"), 256)
                               and _text(request.get("xml"), MAX_REQUEST)):
        return  # the parent ended (or sent nonsense: it sees our EOF)
    if request["uri"] != uri:  # the configuration file names another: connect to that one
        if conn is not None:
            conn.close()
        conn, failure = _open(libvirt, request["uri"])
    if conn is None:
        _write_all(wfd, encode({"error": failure[:MAX_TEXT], "connect": True}))
        return
    try:
        dom = conn.createXML(request["xml"], libvirt.VIR_DOMAIN_START_AUTODESTROY)
    except libvirt.libvirtError as e:
        text = e.get_error_message() or str(e)
        _write_all(wfd, encode({"error": text[:MAX_TEXT], "connect": False}))
        return
    try:
        _write_all(wfd, encode({"uuid": dom.UUIDString()}))
    except OSError:
        pass  # the parent is gone: its message below is None
    message = _next_message(rfd, vmend.MAX_END, parent)
    pid_file = os.path.join(LIBVIRT_PID_DIR, f"{request['name']}.pid")
    end = vmend.parse_end(message, request["name"])
    if end is not None:  # its QEMU was told to exit: the VM's end is ours
        wait_teardown(pid_file, end["kill_after"])
    if message != {"gone": True} and (end is None or os.path.exists(pid_file)):
        try:  # the parent ended without ending the VM (killed), or its QEMU is still there:
            dom.destroy()  # end it, as the connection's close would, but not on libvirtd's
        except libvirt.libvirtError:  # main loop
            pass  # already gone
    wait_teardown(pid_file, TEARDOWN_TIMEOUT_S)
    if end is not None and not os.path.exists(pid_file):
        vmend.finish(request["name"], end)
    # our exit closes the connection: libvirtd has nothing left to auto-destroy


def wait_teardown(pid_file: str, timeout: float) -> None:
    """Until libvirtd has torn the domain down (its pid file removed), at most ``timeout`` s:
    executor.libvirt.linger.wait_gone without importing linger (see LIBVIRT_PID_DIR)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(TEARDOWN_POLL_S)


def _open(libvirt: Any, uri: str) -> tuple[Any, str]:
    try:
        return libvirt.open(uri), ""
    except libvirt.libvirtError as e:
        return None, e.get_error_message() or str(e)


def _run_events(libvirt: Any) -> None:
    """libvirt's event loop (the thread's life)."""
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)  # never spin


def _in_thread(target: Any) -> None:
    """``target`` on a thread of its own, which never holds the child's exit (``os._exit``):
    ``_thread``'s, not ``threading``'s (which this child would import for it, with weakref:
    ~0.7 ms on its way to the request)."""
    _thread.start_new_thread(target, ())
