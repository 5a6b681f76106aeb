"""Foreground runs: start processes in a HyperVM, wait for them, kill them with a grace period.

Shared by ``hypervm run`` and the demo; the Mesos executor uses :func:`kill_with_grace`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from executor.guest.protocol import ExitStatus
from executor.vm import HyperVM, ProcessHandle
from hypervm.errors import HyperVMError
from hypervm.podspec import Container

log = logging.getLogger(__name__)


@dataclass
class RunningProcess:
    """A started process and the event its exit sets."""

    handle: ProcessHandle | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    status: ExitStatus | None = None

    def on_exit(self, status: ExitStatus) -> None:
        self.status = status
        self.exited.set()


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def start_streaming(vm: HyperVM, container: Container, stdout: BinaryIO,
                    stderr: BinaryIO) -> RunningProcess:
    """Start ``container`` with its output copied to the given binary streams."""
    running = RunningProcess()
    running.handle = vm.start(container, on_stdout=_writer(stdout), on_stderr=_writer(stderr),
                              on_exit=running.on_exit)
    return running


def kill_with_grace(vm: HyperVM, running: RunningProcess, grace: float) -> None:
    """SIGTERM, then SIGKILL once ``grace`` seconds pass without an exit."""
    if running.exited.is_set() or running.handle is None:
        return
    try:
        log.info("sending SIGTERM to %s (grace %.1f s)", running.handle.container, grace)
        vm.signal(running.handle, signal.SIGTERM)
        if running.exited.wait(grace):
            return
        log.info("grace period over: sending SIGKILL to %s", running.handle.container)
        vm.signal(running.handle, signal.SIGKILL)
    except HyperVMError as e:  # the process may exit between our check and the signal
        log.debug("signal to %s failed: %s", running.handle.container, e)
    running.exited.wait(grace + 5)


def forward_stdin(vm: HyperVM, running: RunningProcess, source: BinaryIO) -> threading.Thread:
    """Copy ``source`` to the process's stdin in a daemon thread; EOF closes the guest stdin."""

    def pump() -> None:
        try:
            while not running.exited.is_set():
                data = source.read1(64 * 1024) if hasattr(source, "read1") else source.read(4096)
                assert running.handle is not None
                vm.send_stdin(running.handle, data)
                if not data:
                    return
        except (OSError, HyperVMError) as e:
            log.debug("stdin forwarding stopped: %s", e)

    thread = threading.Thread(target=pump, name="stdin", daemon=True)
    thread.start()
    return thread
