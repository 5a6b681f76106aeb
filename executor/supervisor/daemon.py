"""The supervisor process: ``python -m executor.supervisor BOX READY_FD``.

``hypervm run -d`` writes the pod into the box, starts this in a session of its own and waits
on READY_FD for one JSON line: ``{"id": VM}`` once the container runs, or ``{"error": ...,
"exit_code": N}``. From then on this process is the VM's owner: it holds the libvirt connection
(the domain is auto-destroyed with it) and the ACL entries that let the VM's QEMU reach its
``-v`` directories (executor.volume_access; taken off when the VM is powered off, before
``stop`` and ``wait`` answer; if this process is SIGKILLed, ``hypervm gc`` takes them off),
logs the output, records the exit, serves the box's socket, and exits once the container's
main process has exited and the VM is powered off (SIGTERM stops the container first, with
the run's grace period).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from executor.guest.protocol import EXEC_FAILURE_STATUS, ExitStatus
from executor.launcher import boot_vm
from executor.runner import RunningProcess, kill_with_grace
from executor.session import (
    EXIT,
    OUT,
    REPLY,
    ExecSession,
    SessionServer,
    Sink,
    encode,
    encode_json,
    exit_payload,
    pump_input,
)
from executor.supervisor.box import Box, add_event, now
from executor.supervisor.logfile import LogWriter
from executor.vm import HyperVM
from executor.volume_access import VolumeHold
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import GuestError, HyperVMError
from hypervm.podspec import Container, PodSpec

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, cfg: HostConfig, box: Box, spec: dict[str, Any]) -> None:
        self.cfg = cfg
        self.box = box
        self.pod: PodSpec = spec["pod"]
        self.container: Container = self.pod.containers[0]
        self.grace = float(spec.get("grace", 3.0))
        self.boot_timeout = float(spec.get("boot_timeout", 60.0))
        self.autoremove = bool(spec.get("autoremove"))
        self.state: dict[str, Any] = {
            "name": box.name, "id": None, "image": spec.get("image"),
            "command": list(self.container.process.args), "created": now(),
            "status": "created", "supervisor_pid": os.getpid(),
            "tty": self.container.process.tty, "interactive": self.container.process.stdin,
            "cpus": self.pod.resources.cpus, "memory_mib": self.pod.resources.memory_mib,
            "ports": [p.describe() for p in self.pod.network.ports], "events": []}
        self._state_lock = threading.Lock()
        self.vm: HyperVM | None = None
        #: what the VM holds while it runs: its volumes' ACL entries
        self.held = VolumeHold(cfg, self.container.mounts)
        self.running = RunningProcess()
        self.recorded = threading.Event()  # the exit is in the state
        self.stop_requested = threading.Event()
        self.sinks: set[Sink] = set()
        self.log = LogWriter(box.log_file)

    def update(self, event: str | None = None, **fields: Any) -> None:
        with self._state_lock:
            self.state.update(fields)
            if event is not None:
                add_event(self.state, event)
            self.box.write(self.state)

    # -- output -------------------------------------------------------------------------------

    def _output(self, stream: str) -> Any:
        kind = OUT if stream == "stdout" else b"E"

        def write(data: bytes) -> None:
            self.log.write(stream, data)
            for sink in list(self.sinks):
                sink.send(encode(kind, data))
        return write

    # -- the run ------------------------------------------------------------------------------

    def run(self, ready_fd: int) -> int:
        self.update("create")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        try:
            vm = boot_vm(self.cfg, self.pod, timeout=self.boot_timeout,
                         before_shares=self.held.before_shares)
        except BaseException as e:
            self.held.close()
            if isinstance(e, HyperVMError):
                return self._failed(ready_fd, str(e), 125)
            raise
        with self.held, vm:
            self.vm = vm
            self.update("start", id=vm.name, status="running", started=now())
            try:
                self.running.handle = vm.start(
                    self.container, on_stdout=self._output("stdout"),
                    on_stderr=self._output("stderr"), on_exit=self.running.on_exit)
            except GuestError as e:
                vm.poweroff(timeout=2.0)
                self.held.close()
                what = "command not found" if e.code == "ENOENT" else "command not executable"
                return self._failed(ready_fd, f"{self.container.process.args[0]}: {what} in the "
                                              f"container", EXEC_FAILURE_STATUS.get(e.code, 126))
            server = SessionServer(self.box.socket, self.dispatch)
            _report(ready_fd, {"id": vm.name})
            try:
                self._wait_exit(vm)
                server.drain(10.0)  # the replies to stop and wait go out before we do
            finally:
                server.close()
        self.log.close()
        if self.autoremove:
            self.box.remove()
        return 0

    def _wait_exit(self, vm: HyperVM) -> None:
        while not self.running.exited.wait(0.2):
            if self.stop_requested.is_set():
                self.update("stop")
                kill_with_grace(vm, self.running, self.grace)
                break
        status = self.running.status or ExitStatus(None, None, "the supervisor stopped")
        self.update("die", status="exited", exit_code=status.code, finished=now(),
                    exit=status.describe(), oom_killed=status.oom_killed)
        for sink in list(self.sinks):
            sink.finish(encode_json(EXIT, exit_payload(status)))
        vm.poweroff(timeout=2.0)
        self.held.close()  # the VM's access to its volumes goes with it
        self.recorded.set()  # wait and stop answer once the VM is gone
        for sink in list(self.sinks):
            sink.closed.wait(2)

    def _failed(self, ready_fd: int, message: str, code: int) -> int:
        log.error("%s", message)
        self.update("die", status="exited", exit_code=code, finished=now(), error=message)
        _report(ready_fd, {"error": message, "exit_code": code})
        self.log.close()
        self.box.remove()
        return 1

    # -- requests on the box's socket ---------------------------------------------------------

    def dispatch(self, sock: socket.socket, request: dict[str, Any]) -> None:
        op = request.get("op")
        vm = self.vm
        assert vm is not None
        if op == "exec":
            ExecSession(vm, self.container.name, self.container.process).serve(sock, request)
        elif op == "attach":
            self.attach(vm, sock)
        elif op == "stop":
            self.update("stop")
            kill_with_grace(vm, self.running, float(request.get("timeout", self.grace)))
            self.recorded.wait()
            _reply(sock, {"exit_code": self.state.get("exit_code")})
        elif op == "kill":
            signum = int(request.get("signal", signal.SIGKILL))
            self.update("kill", signal=signum)
            if not self.running.exited.is_set() and self.running.handle is not None:
                vm.signal(self.running.handle, signum)
            _reply(sock, {"ok": True})
        elif op == "wait":
            self.recorded.wait()
            _reply(sock, {"exit_code": self.state.get("exit_code")})
        elif op == "inspect":
            _reply(sock, dict(self.state))
        else:
            _reply(sock, {"error": f"unknown request {op!r}"})

    def attach(self, vm: HyperVM, sock: socket.socket) -> None:
        """Stream the main process's output to ``sock`` (and its input from it, when the
        container was started with -i) until it exits or the client detaches."""
        sink = Sink(sock)
        if self.recorded.is_set():
            sink.finish(encode_json(EXIT, {"exit_code": self.state.get("exit_code")}))
            sink.closed.wait(2)
            return
        self.sinks.add(sink)
        self.update("attach")
        try:
            pump_input(sock, vm, lambda: self.running.handle, self.container.process.stdin,
                       self.running.exited, eof_on_close=False)
            if self.running.exited.is_set():
                sink.closed.wait(5)
        finally:
            self.sinks.discard(sink)
            self.update("detach")


def _reply(sock: socket.socket, body: dict[str, Any]) -> None:
    sock.sendall(encode_json(REPLY, body))


def _report(fd: int, body: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(body).encode() + b"\n")
        os.close(fd)
    except OSError as e:
        log.debug("the CLI went before the report: %s", e)


def main(argv: list[str]) -> int:
    box = Box(Path(argv[0]))
    ready_fd = int(argv[1])
    logging.basicConfig(filename=str(box.supervisor_log), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = pickle.loads(box.pod_file.read_bytes())  # root wrote it into the root-only box
    box.pod_file.unlink()
    try:
        return Supervisor(config_from_env(), box, spec).run(ready_fd)
    except Exception:
        log.exception("the supervisor failed")
        _report(ready_fd, {"error": "the supervisor failed: see " + str(box.supervisor_log),
                           "exit_code": 125})
        raise
