"""The pool daemon's side of the fast ``hypervm run`` (the client and the protocol are in
``executor.cli.fastrun``): the daemon, which has libvirt and the image store loaded, runs a
caller's whole pod on one of its VMs.

A request is served only when it is the run the full CLI would do on a pool VM (else the
reply is ``fallback`` and the caller runs the full CLI, which then does exactly what it always
did): the caller's ``HYPERVM_*`` settings (and the configuration file) give this daemon's host
configuration; ``run``'s own parser accepts the arguments and none asks for something the fast
path leaves to the full CLI (``unserved``); the image is in the cache (``--pull missing``: no
pull, no progress lines); the pod fits a pool VM and one is claimed. All of this happens before
anything is written to the caller's output. Then the daemon answers ``accepted`` and runs
nothing until the caller's ``go`` (a caller that gave up waiting, or died, has closed the
connection: the VM is destroyed unused, so a caller that fell back to the full CLI never sees
its command run twice). Then the pod runs as ``executor.cli.run.run_pod``
runs it: the guest's stdout and stderr are written into the caller's descriptors, a forwarded
signal stops the workload (SIGTERM, SIGKILL after ``--grace``), and the exit status is the
same (the workload's own, 126/127, 128+N, 125 with hypervm's error line).

The claimed VM is this daemon's (the claim names its pid as the owner). It is never handed to
anyone else: after the run it goes back to the pool's release, which destroys it; if the
caller's connection closes before the exit status was sent (the caller died), the run is
killed by destroying the VM at once.

Who may ask: whoever may claim (the pool socket is 0600, and the daemon serves uid 0 and its
own uid only), i.e. whoever could run the full ``hypervm run`` with this pool anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from executor.cli import follow, run_inputs
from executor.cli import run as run_cli
from executor.cli.fastrun import (
    LOCAL_SOURCES,
    RUN_OP,
    RequestError,
    check_descriptors,
    parse_control,
    parse_go,
    parse_run_request,
)
from executor.cli.usage import EXIT_HYPERVM
from executor.guest.protocol import EXEC_FAILURE_STATUS
from executor.launcher import Launcher
from executor.pool.adopt import claim_vm
from executor.pool.daemon import WarmPool
from executor.runner import RunningProcess, kill_with_grace, start_streaming
from executor.vm import HyperVM
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import GuestError, HyperVMError
from hypervm.limits import default_limits
from hypervm.podspec import PodSpec
from hypervm.settings import load_config_file

log = logging.getLogger(__name__)

__all__ = ["RUN_OP", "Fallback", "RunService"]

#: the control-line reader's limit (a control line is ~20 bytes)
MAX_CONTROL = 4096


class Fallback(Exception):
    """The daemon does not run this request: the caller runs the full CLI. ``reason``: its
    kind, counted in ``hypervm pool status`` (the message may name an image)."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class _QuietParser(argparse.ArgumentParser):
    """``run``'s parser without output: a usage error (or --help) is the full CLI's to print."""

    def error(self, message: str) -> NoReturn:
        raise Fallback(f"arguments: {message}", "arguments")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise Fallback("arguments: the full CLI prints this", "arguments")

    def _print_message(self, message: str, file: Any = None) -> None:
        pass  # --help: the caller's full CLI prints it


def run_parser() -> argparse.ArgumentParser:
    parser = _QuietParser(prog="hypervm", add_help=False)
    run_cli.register(parser.add_subparsers(dest="command"))
    return parser


def unserved(args: argparse.Namespace) -> str | None:
    """Why the fast path leaves a parsed ``run`` to the full CLI (None: it serves it)."""
    checks = (
        (args.rootfs is not None, "--rootfs"), (args.volume, "-v"), (args.publish, "-p"),
        (args.interactive, "-i"), (args.tty, "-t"), (args.detach, "-d"),
        (args.env_file, "--env-file"), (args.insecure_registry, "--insecure-registry"),
        (args.pull != "missing", f"--pull {args.pull}"),
        (args.network != "user", f"--network {args.network}"),
        (args.image is None, "no image"),
        (args.image is not None and args.image.startswith(LOCAL_SOURCES), "a local image"),
    )
    return next((what for hit, what in checks if hit), None)


def client_config(settings: dict[str, str]) -> HostConfig:
    """The host configuration the caller's full CLI would use (its settings, then the
    configuration file they name)."""
    environ = dict(settings)
    load_config_file(environ)
    return config_from_env(environ)


@dataclass
class _Run:
    pod: PodSpec
    grace: float
    boot_timeout: float


class _Output:
    """One of the caller's descriptors: the guest's bytes written in full; nothing after
    :meth:`close`, nothing more once the reader went away (as a closed pipe drops output)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view and self._fd is not None:
                try:
                    view = view[os.write(self._fd, view):]
                except BlockingIOError:  # the caller's descriptor is non-blocking
                    select.select([], [self._fd], [])
                except OSError as e:
                    log.debug("the caller's output is gone: %s", e)
                    return

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _ClientWatch:
    """Reads the caller's control lines: a forwarded signal, or the connection's end."""

    def __init__(self, conn: socket.socket, pending: bytes = b"") -> None:
        self.signum: int | None = None
        self._pending = pending
        self.gone = threading.Event()
        self.changed = threading.Event()
        self._conn = conn
        threading.Thread(target=self._read, name="fastrun-client", daemon=True).start()

    def _read(self) -> None:
        data, chunk = b"", self._pending  # what came with the request first
        try:
            while True:
                if not chunk and not (chunk := self._conn.recv(MAX_CONTROL)):
                    break
                data, chunk = data + chunk, b""
                while b"\n" in data:
                    line, data = data.split(b"\n", 1)
                    self.signum = self.signum or parse_control(line)
                    self.changed.set()
                if len(data) > MAX_CONTROL:
                    raise RequestError("control: line too long")
        except (OSError, RequestError) as e:
            log.info("fast run client: %s", e)
        self.gone.set()
        self.changed.set()


class RunService:
    """The ``fastrun`` operation of a warm pool (``WarmPool.add_service``)."""

    def __init__(self, pool: WarmPool) -> None:
        self.pool = pool
        self.cfg = pool.cfg
        self.launcher = Launcher(pool.cfg)
        self._parser = run_parser()
        self.counts = RunCounts()

    @property
    def served(self) -> int:
        return self.counts.served

    @property
    def fallbacks(self) -> int:
        return sum(self.counts.refused.values())

    def status(self) -> dict[str, Any]:
        """The counters ``hypervm pool status`` shows (WarmPool.status)."""
        return self.counts.as_dict()

    def __call__(self, conn: socket.socket, pid: int, request: dict[str, Any],
                 fds: list[int], rest: bytes = b"") -> None:
        for fd in fds:  # our client sends its stdout and stderr with its go, not here
            os.close(fd)
        outputs: list[_Output] = []
        try:
            try:
                if fds or rest:
                    raise RequestError("run: the request comes alone (descriptors with the go)")
                vm, run = self._claim(*parse_run_request(request))
            except (Fallback, RequestError) as e:
                log.info("fast run for pid %d: not served (%s)", pid, e)
                self.counts.add("refused", getattr(e, "reason", "bad request"))
                _send(conn, {"fallback": str(e)})
                return
            _send(conn, {"accepted": True})
            after, given = _await_go(conn)
            outputs = [_Output(fd) for fd in given]
            if after is None:  # the client gave up waiting for us, or died: nothing ran
                log.warning("fast run client %d did not say go: destroying %s unused", pid,
                            vm.name)
                self.counts.add("abandoned")
                vm.destroy()
                return
            conn.settimeout(None)
            self.counts.add("served")
            t_run = time.monotonic()
            log.info("fast run for pid %d on %s", pid, vm.name)
            try:
                code = self._run(_ClientWatch(conn, after), vm, run, outputs[0], outputs[1])
            except BaseException:  # the VM is this daemon's: no reaper would ever take it
                self.counts.add("failed")
                vm.destroy()
                raise
        finally:
            for out in outputs:
                out.close()
        if code is None:  # the caller is gone: its VM goes with it, now
            log.info("fast run client %d went away: destroying %s", pid, vm.name)
            self.counts.add("abandoned")
            vm.destroy()
            return
        log.debug("fast run on %s: exit %d after %.1f ms", vm.name, code,
                  (time.monotonic() - t_run) * 1e3)
        _send(conn, {"exit": code})
        vm.poweroff(timeout=2.0)  # the pool's release: destroyed, never claimed again

    def _claim(self, argv: list[str], environ: dict[str, str],
               settings: dict[str, str]) -> tuple[HyperVM, _Run]:
        try:
            t0 = time.monotonic()
            cfg = client_config(settings)
        except HyperVMError as e:
            raise Fallback(f"settings: {e}", "settings") from e
        if not cfg.use_pool or dataclasses.replace(cfg, use_pool=self.cfg.use_pool) != self.cfg:
            raise Fallback("the caller's settings are not this pool's", "settings")
        args = self._parser.parse_args(["run", *argv])
        t1 = time.monotonic()
        if (why := unserved(args)) is not None:
            raise Fallback(f"{why} is the full CLI's", "unserved option")
        with contextlib.ExitStack() as hold:
            try:
                hold.enter_context(self.launcher.hold())  # no gc of the layers until claimed
                pod = self._pod(args, environ)
                t2 = time.monotonic()
                vm = claim_vm(self.cfg, pod, hypervisor=self.pool.hypervisor,
                              timeout=args.boot_timeout)
            except HyperVMError as e:  # the full CLI reports it (or pulls, or boots cold)
                raise Fallback(str(e), "launch error") from e
        if vm is None:
            raise Fallback("no warm VM serves this pod", "no warm VM")
        log.debug("fast run: settings and arguments %.1f ms, pod %.1f ms, claim %.1f ms",
                  (t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.monotonic() - t2) * 1e3)
        return vm, _Run(pod, args.grace, args.boot_timeout)

    def _pod(self, args: argparse.Namespace, environ: dict[str, str]) -> PodSpec:
        """The pod ``executor.cli.run.run_image`` builds, from a cached image only."""
        run_cli.resolve_name(args)
        resources = run_inputs.resources(args.cpus, args.memory)
        net = run_cli.network_from_args(args)
        image = self.launcher.images.image(args.image)
        if image is None:
            raise Fallback(f"{args.image} is not in the image cache", "image not cached")
        command, entrypoint = run_cli.image_command(args)
        process = self.launcher.process(
            image, command=command, entrypoint=entrypoint,
            env=run_inputs.environment(args.env, (), environ), cwd=args.workdir,
            user=args.user, stdin=False)
        process.validate("process")
        return run_cli.single_pod(args.name, image.layers, process, resources, net,
                                  default_limits(self.cfg), image=image.ref)

    def _run(self, watch: _ClientWatch, vm: HyperVM, run: _Run, out: _Output,
             err: _Output) -> int | None:
        """``run_pod``'s loop: the exit status, or None once the caller is gone."""
        container = run.pod.containers[0]
        if watch.signum is not None or watch.gone.is_set():
            return None if watch.gone.is_set() else 128 + watch.signum  # type: ignore[operator]
        try:
            running = start_streaming(vm, container, out, err)  # type: ignore[arg-type]
        except GuestError as e:
            if e.code in EXEC_FAILURE_STATUS:
                err.write(f"{follow.exec_failure(container, e.code)}\n".encode())
                return EXEC_FAILURE_STATUS[e.code]
            self.counts.add("failed")
            return _error(err, e)
        except HyperVMError as e:
            self.counts.add("failed")
            return _error(err, e)
        done = threading.Event()
        threading.Thread(target=_tell_exit, args=(running, watch, done), daemon=True,
                         name="fastrun-exit").start()
        try:
            while not running.exited.is_set():
                watch.changed.wait()
                watch.changed.clear()  # whatever sets it again sets its cause first
                if running.exited.is_set():
                    break
                if watch.gone.is_set():
                    return None
                if watch.signum is not None:
                    kill_with_grace(vm, running, run.grace)
                    break
        finally:
            done.set()
        return _status(running, container.name, watch.signum, err)


#: how long the daemon waits for the client's go after its ``accepted`` (the client sends it at
#: once; one that does not has given up or died)
GO_TIMEOUT = 5.0


def _await_go(conn: socket.socket) -> tuple[bytes | None, list[int]]:
    """Read the client's go line and the two descriptors (its stdout and stderr) that come
    with it: (what came behind the line, the descriptors), or (None, whatever descriptors
    came) when the client closed the connection, sent something else or nothing in
    :data:`GO_TIMEOUT`."""
    data, fds = b"", list[int]()
    deadline = time.monotonic() + GO_TIMEOUT
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or len(data) > MAX_CONTROL:
                return None, fds
            conn.settimeout(left)
            chunk, more, _flags, _addr = socket.recv_fds(conn, MAX_CONTROL, 2)
            fds += more
            if not chunk:
                return None, fds
            data += chunk
        check_descriptors(fds)
    except (OSError, RequestError) as e:
        log.info("fast run client: %s", e)
        return None, fds
    line, _, after = data.partition(b"\n")
    return (after if parse_go(line) else None), fds


class RunCounts:
    """What the run service did since the daemon started (``hypervm pool status``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: runs started (accepted, and the client said go)
        self.served = 0
        #: of those, runs that ended with hypervm's own failure (125 and its error line)
        self.failed = 0
        #: VMs claimed for a client that gave up waiting or went away (destroyed)
        self.abandoned = 0
        #: requests left to the full CLI, by reason (Fallback.reason)
        self.refused: dict[str, int] = {}

    def add(self, what: str, reason: str = "") -> None:
        with self._lock:
            if what == "refused":
                self.refused[reason] = self.refused.get(reason, 0) + 1
            else:
                setattr(self, what, getattr(self, what) + 1)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"served": self.served, "failed": self.failed, "abandoned": self.abandoned,
                    "refused": dict(self.refused)}


def _tell_exit(running: RunningProcess, watch: _ClientWatch, done: threading.Event) -> None:
    """Wake the run loop when the workload exits (it waits for the client's news too)."""
    while not running.exited.wait(1.0):
        if done.is_set():
            return
    watch.changed.set()


def _status(running: RunningProcess, name: str, signum: int | None, err: _Output) -> int:
    if running.status is None:
        return 128 + (signum or signal.SIGKILL)
    if (note := follow.ending_note(name, running.status)) is not None:
        err.write(f"{note}\n".encode())
    return running.status.code


def _error(err: _Output, e: HyperVMError) -> int:
    err.write(f"hypervm: error: {e}\n".encode())
    return getattr(e, "exit_status", EXIT_HYPERVM)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError as e:
        log.debug("fast run client went away: %s", e)
