"""``hypervm exec``: run a command in a running container: a detached one (by name) or a
Mesos task's (``--task``, through the executor's socket)."""

from __future__ import annotations

import argparse
import os

from executor import session
from executor.cli import run_inputs
from executor.cli.console import interact
from executor.cli.run import parse_user
from executor.mesos.exec_socket import socket_path
from executor.supervisor.box import find
from hypervm.config import config_from_env
from hypervm.errors import HyperVMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "exec", help="run a command in a running container",
        usage="hypervm exec [options] NAME CMD [ARGS...]\n"
              "       hypervm exec [options] --task TASK_ID CMD [ARGS...]",
        description="Start CMD in the container's namespaces, next to its main process, with "
                    "the container's environment; exit with its status. --task reaches the "
                    "VM of a Mesos task on this agent (root only).",
        epilog="examples:\n  hypervm exec -it web sh\n  hypervm exec --task my-task -- ps")
    p.add_argument("-i", "--interactive", action="store_true", help="forward our stdin")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (repeatable)")
    p.add_argument("-w", "--workdir", default=None, metavar="DIR", help="working directory")
    p.add_argument("-u", "--user", default=None, metavar="UID[:GID]", help="numeric ids")
    p.add_argument("--task", default=None, metavar="TASK_ID",
                   help="a Mesos task's container on this agent instead of NAME")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="NAME CMD")
    p.set_defaults(func=exec_command)


def exec_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    argv = list(args.argv)
    if args.task is None:
        if not argv:
            raise HyperVMError("hypervm exec: give NAME and CMD (see hypervm exec -h)")
        name = argv.pop(0)
        box = find(cfg, name)
        if box.current().get("status") != "running":
            raise HyperVMError(f"container {name} is not running")
        path = box.socket
    else:
        name, path = f"task {args.task}", socket_path(cfg, args.task)
        if not path.exists():
            raise HyperVMError(f"no running task {args.task} with a HyperVM on this agent")
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise HyperVMError("hypervm exec: no command given (hypervm exec NAME CMD [ARGS...])")
    env = run_inputs.environment(args.env, (), os.environ)
    request = {"op": "exec", "args": argv, "env": list(env),
               "cwd": args.workdir, "stdin": args.interactive, "tty": args.tty}
    if args.user is not None:
        request["uid"], request["gid"] = parse_user(args.user)
    try:
        sock = session.connect(path)
    except OSError as e:  # a socket left by an executor that was killed
        raise HyperVMError(f"{name} does not answer on {path}: {e.strerror or e}") from e
    with sock:
        sock.sendall(session.encode_json(session.REQUEST, request))
        return interact(sock, stdin=args.interactive, tty=args.tty, name=name)
