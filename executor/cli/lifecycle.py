"""``hypervm stop``, ``kill``, ``rm`` and ``wait``: a detached container's end, through its
supervisor's socket (executor.supervisor)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from executor import session, volume_access
from executor.supervisor.box import Box, find
from hypervm.config import config_from_env
from hypervm.errors import HyperVMError, InvalidSpec


def parse_signal(value: str) -> int:
    name = value.upper()
    if name.isdigit():
        number = int(name)
    else:
        try:
            number = int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            number = 0
    if not 0 < number <= 64:
        raise InvalidSpec("--signal", f"{value!r} is not a signal",
                          hint="a name or number, e.g. -s TERM or -s 9")
    return number


def _running(box: Box) -> bool:
    return box.current().get("status") == "running" and box.supervisor_alive()


def _stopped(box: Box, timeout: float) -> bool:
    """Wait until the supervisor is gone (it exits once the VM is powered off)."""
    deadline = time.monotonic() + timeout
    while box.supervisor_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stop", help="stop containers (SIGTERM, then SIGKILL)",
        description="Send SIGTERM to the container's main process and SIGKILL after the "
                    "grace period; the VM is powered off and the container kept (see rm).",
        epilog="examples:\n  hypervm stop -t 10 web")
    p.add_argument("-t", "--time", type=float, default=None, metavar="SECS",
                   help="grace period before SIGKILL (default: the run's --grace)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=stop_command)
    p = subparsers.add_parser(
        "kill", help="send a signal to containers' main processes",
        description="Send a signal (default SIGKILL) to the container's main process.",
        epilog="examples:\n  hypervm kill -s HUP web")
    p.add_argument("-s", "--signal", default="KILL", help="name or number (default KILL)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=kill_command)
    p = subparsers.add_parser(
        "rm", help="remove containers",
        description="Remove stopped containers (their state and logs); -f stops running "
                    "ones first (SIGKILL).",
        epilog="examples:\n  hypervm rm -f web")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=rm_command)
    p = subparsers.add_parser(
        "wait", help="wait for containers to exit and print their exit codes",
        description="Block until each container exits; print its exit code.",
        epilog="examples:\n  hypervm wait web")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=wait_command)


def stop_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    for name in args.names:
        box = find(cfg, name)
        if _running(box):
            request = {"op": "stop"}
            if args.time is not None:
                request["timeout"] = args.time
            session.call(box.socket, request, timeout=(args.time or 30) + 60)
            _stopped(box, 30)
        print(name)
    return 0


def kill_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    signum = parse_signal(args.signal)
    for name in args.names:
        box = find(cfg, name)
        if not _running(box):
            raise HyperVMError(f"container {name} is not running")
        session.call(box.socket, {"op": "kill", "signal": signum})
        print(name)
    return 0


def rm_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    for name in args.names:
        box = find(cfg, name)
        if _running(box):
            if not args.force:
                raise HyperVMError(f"container {name} is running: stop it first, or hypervm "
                                   f"rm -f {name}")
            force_end(box)
        vm_id = box.read().get("id")
        if isinstance(vm_id, str) and not box.supervisor_alive():
            # a SIGKILLed supervisor's volume ACL entries (else gc's); its VM had started
            # (it has an id), so no grace for a QEMU yet to start
            stuck: list[volume_access.Unfinished] = []
            volume_access.release_stale(cfg, only=vm_id, grace=0, unfinished=stuck)
            for left in stuck:
                print(f"{name}: kept the volume grant record {left.record} (uid "
                      f"{left.grant.uid} stays out of use): {left.why}", file=sys.stderr)
        box.remove()
        print(name)
    return 0


def force_end(box: Box) -> None:
    """SIGKILL through the supervisor; if it does not end, the supervisor itself is killed
    (libvirt then destroys the VM, whose connection it held)."""
    try:
        session.call(box.socket, {"op": "kill", "signal": int(signal.SIGKILL)}, timeout=10)
    except (OSError, HyperVMError):
        pass
    if not _stopped(box, 20):
        pid = box.read().get("supervisor_pid")
        if isinstance(pid, int) and box.supervisor_alive():
            os.kill(pid, signal.SIGKILL)
            _stopped(box, 10)


def wait_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    for name in args.names:
        box = find(cfg, name)
        if _running(box):
            reply = session.call(box.socket, {"op": "wait"}, timeout=None)
            print(reply.get("exit_code"))
        else:
            print(box.current().get("exit_code"))
        _stopped(box, 30)  # the supervisor powers the VM off, then exits
    return 0
