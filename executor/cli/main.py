"""The ``hypervm`` command line: a thin front end over the same layers the executor uses.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module's parser
sets ``func`` (a callable taking the parsed args and returning the exit status). Every
:class:`HyperVMError` becomes one line on stderr and exit status 125 (or the error's own
``exit_status``) — never a traceback; usage errors exit 125 too (``executor/cli/usage.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from executor.cli.usage import EXIT_HYPERVM, LineFormatter, Parser, VersionAction, add_examples
from executor.libvirt import linger
from hypervm.errors import HyperVMError
from hypervm.settings import load_config_file

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
    "executor.cli.completion",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hypervm", description="Run containers in lightweight VMs (HyperVMs).",
        formatter_class=LineFormatter,
        epilog="Exit status: the command's own; 125 when hypervm itself fails (bad input, "
               "libvirt, images); 126/127 when the command cannot run or is not found; "
               "128+N when it is killed by signal N.\n"
               "Settings: /etc/hypervm/config.toml (or $HYPERVM_CONFIG), then HYPERVM_* "
               "variables; see hypervm doctor.")
    parser.add_argument("--verbose", action="count", default=0,
                        help="log more (--verbose info, twice debug); -v of run is a volume, "
                             "as in docker")
    parser.add_argument("--version", action=VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real import error inside the module: surface it
                raise
            continue
        module.register(subparsers)
    add_examples(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``hypervm`` command; ``argv`` None: this process's arguments, and the process
    ends here once done (executor.libvirt.linger: no wait for libvirtd's teardown of a VM)."""
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors 125
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_HYPERVM)
    if argv is None and linger.pending():
        linger.exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="hypervm: %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_HYPERVM
    try:
        load_config_file(os.environ)
        return int(args.func(args))
    except HyperVMError as e:
        print(f"hypervm: error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", EXIT_HYPERVM)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``hypervm images | head``): exit quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
