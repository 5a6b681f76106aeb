"""The ``hypervm`` command line: a thin front end over the same layers the executor uses.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module's parser
sets ``func`` (a callable taking the parsed args and returning the exit status). Every
:class:`HyperVMError` becomes one line on stderr and exit status 1 (or the error's own
``exit_status``) — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from hypervm.errors import HyperVMError

#: modules that contribute sub-commands, in help order
COMMAND_MODULES = (
    "executor.cli.run",
    "executor.cli.ps",
    "executor.cli.logs",
    "executor.cli.execute",
    "executor.cli.detach",
    "executor.cli.lifecycle",
    "executor.cli.demo",
    "executor.cli.doctor",
    "executor.cli.gc",
    "executor.cli.pool",
    "executor.cli.images",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypervm", description="Run containers in lightweight VMs (HyperVMs)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real import error inside the module: surface it
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="hypervm: %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except HyperVMError as e:
        print(f"hypervm: error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``hypervm images | head``): exit quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
