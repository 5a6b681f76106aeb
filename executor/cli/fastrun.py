"""The ``hypervm`` entry point, with the fast path of a plain foreground ``hypervm run``.

A foreground ``hypervm run IMAGE [-- CMD...]`` spends most of its time starting Python and
importing what a launch needs (libvirt, the VM driver, the image store: ~0.14 s). When a warm
pool serves, its daemon has all of that imported already, so this client, which imports only
the standard library's socket, json, os, signal and sys, asks the daemon to run the whole pod
(``executor.cli.fastrun_serve``): claim, START, output, exit status, teardown. The workload's
stdout and stderr go straight to ours: we pass our descriptors 1 and 2 with the request
(SCM_RIGHTS) and the daemon writes the guest's output into them.

The fast path is taken only when :func:`gate` accepts the command line (options whose meaning
does not depend on this process: no host paths, no terminal, no stdin, a registry image, see
``FAST_OPTIONS``) and a pool socket answers; the daemon may still refuse (a ``fallback``
reply: an image not in the cache, a shape it does not serve, other settings than its own, a
bad option) before anything was written to our output. Then, and whenever the fast path is not
taken, the full CLI (``executor.cli.main``) runs as before, so results never differ.

Protocol on the pool socket (one JSON line each way, then control lines from us):

    → {"op": "fastrun", "argv": ["--memory", "128", "busybox", "--", "true"],
       "environ": {"KEY": "value"}, "settings": {"HYPERVM_POOL_SOCKET": "...", ...}}
    ← {"fallback": "why"}                  nothing ran: run the full CLI
    ← {"error": "why", ...}                the pool refused it (e.g. an older pool without
                                           this operation): nothing ran, as a fallback
    ← {"accepted": true}                   a VM is claimed; nothing runs before our go
    → {"go": true} + fds 1, 2              run it, writing into our stdout and stderr
    → {"signal": 15}                       (after our go) we got SIGINT/SIGTERM/SIGHUP: stop it
    ← {"exit": 0}                          the run's exit status (our output is complete)

``argv`` are our arguments after ``run``; ``environ`` the values of the ``-e KEY`` variables
(without ``=VALUE``) that we have; ``settings`` our ``HYPERVM_*`` variables (the daemon serves
only a caller whose settings give its own host configuration). Closing the connection before
the ``exit`` line kills the run and destroys its VM; closing it before our go runs nothing.

The daemon's first answer (``fallback`` or ``accepted``) must come within
:data:`ACCEPT_TIMEOUT`: a daemon that hangs after accepting the connection would otherwise hang
us. Without it we close the connection and run the full CLI: safe, because the daemon runs
nothing without our ``go`` (a late ``accepted`` finds the connection closed and the claimed VM
is destroyed), so the command never runs twice; and our stdout and stderr go only with the go,
so a hung daemon holds none of them (a caller reading our output to its end would wait for
it). After our go only the ``exit`` line is
awaited, however long the run takes, and a lost one is an error (125), never a second run. (The
operation was ``run`` before the go step; a pool from then answers ``fastrun`` with an error,
a fallback: the two never mix.)
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence

#: typing.TYPE_CHECKING without importing typing (~3 ms of every fast run's start under TCG's
#: loaded hosts: its annotations are never evaluated)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

#: hypervm.config.DEFAULT_RUN_DIR (a unit test keeps them equal; importing it costs ~20 ms)
DEFAULT_RUN_DIR = "/run/hypervm"
MAX_LINE = 64 * 1024
#: executor.pool.claim.CLAIM_TIMEOUT: how long connecting and sending the request may take
CONNECT_TIMEOUT = 5.0
#: how long the daemon's first answer (``fallback`` or ``accepted``) may take: its claim of a
#: VM (the pool's own claim times out after 5 s) and the pod's adoption (~20-40 ms)
ACCEPT_TIMEOUT = 10.0
#: the pool socket's operation (``run`` was the one without the accept/go step)
RUN_OP = "fastrun"
GO_LINE = b'{"go": true}\n'
MAX_ARGS = 4096
MAX_ENV = 1024
#: the options of ``run`` the fast path takes: name → takes a value; the values the daemon
#: must see for some (``--pull`` other than missing pulls and prints progress: full CLI)
FAST_OPTIONS = {
    "--cpus": True, "--memory": True, "-e": True, "--env": True, "-w": True,
    "--workdir": True, "-u": True, "--user": True, "--entrypoint": True, "--pull": True,
    "--tenant": True, "--network": True, "--name": True, "--grace": True,
    "--boot-timeout": True, "-q": False, "--quiet": False, "--rm": False,
}
FIXED_VALUES = {"--pull": ("missing",), "--network": ("user",)}
#: image sources read from a path (relative to our directory, which the daemon does not share)
#: or from another daemon: the full CLI
LOCAL_SOURCES = ("docker-archive:", "oci:", "docker-daemon:")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: the exit status of hypervm's own failure (executor.cli.usage.EXIT_HYPERVM)
EXIT_HYPERVM = 125
SETTINGS_PREFIX = "HYPERVM_"


class RequestError(ValueError):
    """A malformed message on the run protocol (the daemon refuses it; we run the full CLI)."""


def gate(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """(the ``-e KEY`` names, None) when the fast path may run ``hypervm ARGV``, else
    ([], why not). Conservative: any option, form or value not in ``FAST_OPTIONS`` (an
    abbreviation, ``-it``, ``-eX``, ``--help``, a global option before ``run``) means no."""
    if not argv or argv[0] != "run":
        return [], "not a run"
    keys: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            if arg.startswith(LOCAL_SOURCES):
                return [], f"{arg.split(':')[0]}: images are read by the full CLI"
            return keys, None  # IMAGE: everything after it is the command
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in FAST_OPTIONS:
            return [], f"option {name} is not served by the fast path"
        if FAST_OPTIONS[name]:
            if not eq:
                i += 1
                if i >= len(argv):
                    return [], f"{name} has no value"
                value = argv[i]
            if value.startswith("-"):
                return [], f"{name} {value}: a value that looks like an option"
            if value not in FIXED_VALUES.get(name, (value,)):
                return [], f"{name} {value} is not served by the fast path"
            if name in ("-e", "--env") and "=" not in value:
                keys.append(value)
        elif eq:
            return [], f"{name} takes no value"
        i += 1
    return [], "no image"


def socket_path(environ: Mapping[str, str]) -> str | None:
    """The pool socket as our variables name it (None: HYPERVM_POOL=off). The configuration
    file may name another: the daemon then answers ``fallback`` (it checks our settings)."""
    if environ.get("HYPERVM_POOL", "").lower() == "off":
        return None
    if environ.get("HYPERVM_POOL_SOCKET"):
        return environ["HYPERVM_POOL_SOCKET"]
    return os.path.join(environ.get("HYPERVM_RUN_DIR") or DEFAULT_RUN_DIR, "pool.sock")


def run_request(argv: Sequence[str], keys: Sequence[str],
                environ: Mapping[str, str]) -> dict[str, Any]:
    """The request for ``hypervm run ARGV`` (``argv`` after ``run``), with the values of the
    ``-e KEY`` ``keys`` we have and our ``HYPERVM_*`` settings."""
    return {"op": RUN_OP, "argv": list(argv),
            "environ": {k: environ[k] for k in keys if k in environ},
            "settings": {k: v for k, v in environ.items() if k.startswith(SETTINGS_PREFIX)}}


def _strings(value: Any, what: str, limit: int) -> None:
    if not isinstance(value, list) or len(value) > limit or not all(
            isinstance(x, str) and "\x00" not in x for x in value):
        raise RequestError(f"run.{what}: must be a list of at most {limit} strings")


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ENV or not all(
            isinstance(k, str) and isinstance(v, str) and "\x00" not in k + v
            for k, v in value.items()):
        raise RequestError(f"run.{what}: must be an object of at most {MAX_ENV} strings")
    return dict(value)


def check_descriptors(fds: Sequence[int]) -> None:
    """The go comes with the client's stdout and stderr; RequestError otherwise (the caller
    closes them)."""
    if len(fds) != 2:
        raise RequestError(f"run: needs 2 descriptors (stdout, stderr), got {len(fds)}")


def parse_run_request(message: Mapping[str, Any]
                      ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(argv, environ, settings) of a run request; RequestError when it is malformed."""
    argv = message.get("argv")
    _strings(argv, "argv", MAX_ARGS)
    environ = _string_map(message.get("environ", {}), "environ")
    settings = _string_map(message.get("settings", {}), "settings")
    if not all(k.startswith(SETTINGS_PREFIX) for k in settings):
        raise RequestError(f"run.settings: only {SETTINGS_PREFIX}* variables")
    return list(argv), environ, settings  # type: ignore[arg-type]


def control_line(signum: int) -> bytes:
    return json.dumps({"signal": signum}).encode() + b"\n"


def parse_control(line: bytes) -> int:
    """The signal of a control line from the client; RequestError unless a forwarded one."""
    try:
        message = json.loads(line)
    except ValueError as e:
        raise RequestError(f"control: not JSON ({e})") from e
    signum = message.get("signal") if isinstance(message, dict) else None
    if signum not in [int(s) for s in FORWARDED_SIGNALS] or isinstance(signum, bool):
        raise RequestError(f"control: not a forwarded signal: {signum!r:.50}")
    return int(signum)


def parse_go(line: bytes) -> bool:
    """Whether a line from the client is its go."""
    try:
        return bool(json.loads(line) == {"go": True})
    except ValueError:
        return False


def parse_reply(line: bytes) -> tuple[str, Any]:
    """``("exit", status)``, ``("accepted", True)``, ``("fallback", why)`` or ``("error",
    what)`` (a broken reply)."""
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if reply == {"accepted": True}:
        return "accepted", True
    if isinstance(reply, dict) and set(reply) == {"exit"}:
        code = reply["exit"]
        if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255:
            return "exit", code
    if isinstance(reply, dict) and set(reply) == {"fallback"} and isinstance(
            reply["fallback"], str):
        return "fallback", reply["fallback"]
    if isinstance(reply, dict) and isinstance(reply.get("error"), str) and "exit" not in reply:
        # the pool refused the request before any service ran (a pool without the fast
        # run: "unknown operation"; a uid it does not serve): nothing ran
        return "fallback", reply["error"]
    return "error", f"malformed reply from the warm pool: {line[:200]!r}"


def _read_line(sock: socket.socket, deadline: float | None = None) -> bytes:
    """One line (the daemon sends nothing behind it before our next line); TimeoutError past
    the monotonic ``deadline``."""
    data = b""
    while not data.endswith(b"\n") and len(data) <= MAX_LINE:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _connect(path: str) -> socket.socket | None:
    if not os.path.exists(path):  # no pool: the full CLI, which does not need socket
        return None
    # deferred: only a pool socket that exists needs it, a cold run without a pool does not
    # import socket (with array: ~2 ms at every start, issue 17)
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)  # a pool whose backlog is full: the full CLI
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _send_control(sock: socket.socket, signum: int) -> None:
    try:
        sock.sendall(control_line(signum))
    except OSError:
        pass  # the daemon is gone: its reply (none) says so


class _Interrupted(Exception):
    """A forwarded signal came before our go: nothing runs, we stop waiting."""


def _accepted(sock: socket.socket, request: dict[str, Any]) -> tuple[str, Any]:
    """Send the request with our stdout and stderr; the daemon's first answer. Nothing has
    run whatever it is: no answer in time (a hung daemon), a closed connection or a request
    that could not be sent is a fallback."""
    try:
        sock.sendall(json.dumps(request).encode() + b"\n")
    except OSError as e:
        return "fallback", f"cannot send the request: {e}"
    try:
        data = _read_line(sock, time.monotonic() + ACCEPT_TIMEOUT)
    except TimeoutError:
        sys.stderr.write(f"hypervm: warning: the warm pool did not answer within "
                         f"{ACCEPT_TIMEOUT:g} s: running without the fast path\n")
        return "fallback", "no answer in time"
    except OSError as e:
        return "fallback", f"the warm pool's connection broke: {e}"
    return parse_reply(data) if data else ("fallback", "the warm pool went away")


def _exchange(sock: socket.socket, request: dict[str, Any], got: list[int],
              phase: list[str]) -> tuple[str, Any]:
    """The request, our go once it is accepted, the exit status. A run whose exit line is
    lost is an error (it may have run: never run it twice)."""
    try:
        fds = [sys.stdout.fileno(), sys.stderr.fileno()]
    except (OSError, ValueError, AttributeError) as e:  # no stdout/stderr descriptor
        return "fallback", f"no descriptor to write the output into: {e}"
    kind, value = _accepted(sock, request)
    if kind != "accepted":
        return kind, value
    phase[0] = "going"
    if got:  # a signal came while we read the answer: nothing ran, nothing will
        return "fallback", "interrupted"
    import socket  # deferred: imported by _connect already (see there)

    try:
        socket.send_fds(sock, [GO_LINE], fds)
    except OSError as e:  # the daemon closed the connection (it gave up on us): no go arrived
        return "fallback", f"the warm pool's connection broke before our go: {e}"
    phase[0] = "running"
    if got:  # a signal that came while the go went out
        _send_control(sock, got[0])
    sock.settimeout(None)  # the reply comes when the run is over
    try:
        data = _read_line(sock)
    except OSError as e:
        return "error", f"the warm pool's connection broke during the run: {e}"
    if not data:
        return "error", "the warm pool went away during the run"
    kind, value = parse_reply(data)
    return ("error", f"unexpected reply from the warm pool: {data[:200]!r}") \
        if kind not in ("exit", "error") else (kind, value)


def run_fast(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """Run ``hypervm ARGV`` through the pool daemon: its exit status, or None when the full
    CLI must run it (nothing has run and nothing was written)."""
    keys, why = gate(argv)
    path = socket_path(environ) if why is None else None
    sock = _connect(path) if path is not None else None
    if sock is None:
        return None
    got: list[int] = []
    phase = ["request"]  # then "going" (our go is on its way), "running", "done"

    def forward(signum: int, _frame: object) -> None:
        got.append(signum)
        if phase[0] == "request":
            raise _Interrupted  # nothing runs before our go: stop waiting for the daemon
        if phase[0] == "running":
            _send_control(sock, signum)
        # "going": sent right behind the go

    previous: dict[int, Any] = {}
    try:
        try:
            for forwarded in FORWARDED_SIGNALS:
                previous[forwarded] = signal.signal(forwarded, forward)
            kind, value = _exchange(sock, run_request(argv[1:], keys, environ), got, phase)
        finally:
            phase[0] = "done"
            sock.close()  # before our go, this tells the daemon not to run anything
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except _Interrupted:
        kind, value = "fallback", "interrupted"
    if kind == "exit":
        return int(value)
    if kind == "fallback":
        return 128 + got[0] if got else None
    sys.stderr.write(f"hypervm: error: {value}\n")
    return EXIT_HYPERVM


def _cold_run(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether ``hypervm ARGV`` is a foreground run that creates its own domain (the fast
    path's options, no pool socket): its libvirt is loaded and connected by a forked starter
    child while this process imports (executor.libvirt.starter)."""
    if gate(argv)[1] is not None:
        return False
    path = socket_path(environ)
    if path is not None and os.path.exists(path):
        return False  # a pool may serve it (the full CLI's claim)
    from executor.libvirt import starter  # deferred: see main

    return starter.wanted(argv, environ)


def main() -> int:
    """The ``hypervm`` console script."""
    code = run_fast(sys.argv[1:], os.environ)
    if code is None and _cold_run(sys.argv[1:], os.environ):
        # deferred: a cold run's only (see _cold_run)
        from executor.libvirt import starter

        if starter.fork_ahead(os.environ) is not None:
            # before the full CLI imports them: loaded once its VM is created, ~10 ms
            starter.defer_modules()
    if code is not None:
        # the run is over and our output complete (the daemon wrote it): no interpreter
        # teardown to wait for
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    # the full CLI's imports run without the cyclic GC: executor.cli.main.end_of_startup
    gc.disable()
    # the full CLI, imported only here: the fast path must not pay its ~40 ms of imports
    from executor.cli import main as full

    return full.main()
