"""A foreground ``hypervm run`` once its VM is booted: the container started with its output
relayed to ours, our stdin forwarded, a stop request turned into a kill with grace, the VM
discarded; then the exit status and the line on how the container ended.

Nothing here is needed to create the VM's domain, so ``run_pod`` imports this module while the
guest boots (boot_vm's ``booting``), not before createXML (issue 17).
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

from executor.guest.protocol import EXEC_FAILURE_STATUS, ExitStatus
from executor.runner import RunningProcess, forward_stdin, kill_with_grace, start_streaming
from executor.vm import HyperVM
from hypervm.errors import GuestError
from hypervm.podspec import Container

if TYPE_CHECKING:
    from executor.cli.run import StopRequest


def relay(vm: HyperVM, container: Container, stop: StopRequest,
          grace: float) -> RunningProcess | int:
    """Run ``container`` in the booted ``vm`` until it exits or ``stop`` (then killed with
    ``grace``), its output streamed to ours; the VM is discarded after. An int: the exit
    status of a START the guest refused (its error line is on stderr)."""
    try:
        running = start_streaming(vm, container, sys.stdout.buffer, sys.stderr.buffer)
    except GuestError as e:
        if e.code in EXEC_FAILURE_STATUS:
            print(exec_failure(container, e.code), file=sys.stderr)
            return EXEC_FAILURE_STATUS[e.code]
        raise
    if container.process.stdin:
        forward_stdin(vm, running, sys.stdin.buffer)
    while not running.exited.wait(0.1):
        if stop.event.is_set():
            kill_with_grace(vm, running, grace)
            break
    vm.discard(timeout=2.0)  # a volume holds all a process wrote: no guest power-off
    return running


def exit_status(container: Container, running: RunningProcess, signum: int | None) -> int:
    """The run's exit status once its VM is gone (a note on stderr where it says more);
    ``signum``: the stop request's signal, if one came."""
    if running.status is None:
        return 128 + (signum or signal.SIGKILL)
    if (note := ending_note(container.name, running.status)) is not None:
        print(note, file=sys.stderr)
    return running.status.code


def exec_failure(container: Container, code: str) -> str:
    """The error line of a START the guest refused with ``code`` (in EXEC_FAILURE_STATUS)."""
    what = "command not found" if code == "ENOENT" else "command not executable"
    return f"hypervm: error: {container.process.args[0]}: {what} in the container"


def ending_note(name: str, status: ExitStatus) -> str | None:
    """What a run says on stderr of how its container ended, beside its exit status."""
    if status.oom_killed:
        return (f"hypervm: {name}: killed: out of memory in the container (exit "
                f"{status.code}; give the VM more with --memory)")
    if status.lost:
        return f"hypervm: error: the command was {status.describe()}"
    return None
