"""``hypervm run -d`` (and ``run -t``): hand the VM to its supervisor (executor.supervisor);
``hypervm attach``: our terminal on the main process of a running container."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import executor
from executor.supervisor.box import SUPERVISOR_MODULE, Box, find
from hypervm.config import HostConfig, config_from_env
from hypervm.errors import HyperVMError
from hypervm.podspec import PodSpec


def start(cfg: HostConfig, pod: PodSpec, args: argparse.Namespace, image: str | None,
          on_booted: Callable[[], object] | None = None) -> int:
    """Start ``pod`` under a supervisor; with -d print its name, else attach to it."""
    box = Box.create(cfg, pod.name)
    spec = {"pod": pod, "grace": args.grace, "boot_timeout": args.boot_timeout,
            "autoremove": args.rm, "image": image}
    import pickle  # optional: only -d/-t runs (a foreground run imports this module)

    fd = os.open(box.pod_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(spec, f)
    try:
        report = _spawn(box, args.boot_timeout + 120)
    except BaseException:
        box.remove()
        raise
    if on_booted is not None:
        on_booted()
    if "error" in report:
        print(f"hypervm: error: {report['error']}", file=sys.stderr)
        return int(report.get("exit_code", 125))
    if args.detach:
        print(pod.name)
        return 0
    return attach_box(box, stdin=pod.containers[0].process.stdin, tty=args.tty)


def _spawn(box: Box, timeout: float) -> dict:
    """Start the supervisor in a session of its own; its one-line report (or an error)."""
    read_end, write_end = os.pipe()
    env = dict(os.environ)
    root = str(Path(executor.__file__).resolve().parents[1])  # our tree, wherever run from
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    with open(box.supervisor_log, "ab") as errors:
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", SUPERVISOR_MODULE, str(box.path), str(write_end)],
            pass_fds=(write_end,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errors, cwd="/", env=env)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 1.0)
            if ready:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                data += chunk
    if b"\n" not in data:
        tail = _tail(box.supervisor_log)
        raise HyperVMError(f"the supervisor of {box.name} did not start the VM"
                           + (f": {tail}" if tail else ""))
    return json.loads(data.split(b"\n", 1)[0])


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def attach_box(box: Box, *, stdin: bool, tty: bool) -> int:
    # optional: only attaching needs the session client (a foreground run imports this
    # module for its options: ~4 ms of its start)
    from executor import session
    from executor.cli.console import interact  # optional: as the session client

    sock = session.connect(box.socket)
    with sock:
        sock.sendall(session.encode_json(session.REQUEST, {"op": "attach"}))
        return interact(sock, stdin=stdin, tty=tty, name=box.name)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attach", help="attach our terminal to a running container",
        description="Stream the container's output to ours and, when it was started with -i, "
                    "our input to it. Ctrl-P Ctrl-Q detaches (with -t); the container keeps "
                    "running. Exits with the container's status when it ends.",
        epilog="examples:\n  hypervm run -d -it --name shell IMAGE -- sh\n  hypervm attach shell")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=attach_command)


def attach_command(args: argparse.Namespace) -> int:
    box = find(config_from_env(), args.name)
    state = box.current()
    if state.get("status") != "running":
        raise HyperVMError(f"container {args.name} is not running (hypervm logs {args.name})")
    return attach_box(box, stdin=bool(state.get("interactive")), tty=bool(state.get("tty")))
