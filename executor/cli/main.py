"""The ``hypervm`` command line: a thin front end over the same layers the executor uses.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module's parser
sets ``func`` (a callable taking the parsed args and returning the exit status). Every
:class:`HyperVMError` becomes one line on stderr and exit status 125 (or the error's own
``exit_status``) — never a traceback; usage errors exit 125 too (``executor/cli/usage.py``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
import threading

from executor.cli.usage import EXIT_HYPERVM, LineFormatter, Parser, VersionAction, add_examples
from executor.libvirt import linger
from hypervm.errors import HyperVMError
from hypervm.settings import load_config_file

#: each command's module (a module may register several), in help order: a command line
#: naming one command imports only its module (``hypervm run`` has no use for doctor or pool)
COMMANDS = {
    "run": "executor.cli.run",
    "ps": "executor.cli.ps", "inspect": "executor.cli.ps",
    "logs": "executor.cli.logs",
    "exec": "executor.cli.execute",
    "attach": "executor.cli.detach",
    "stop": "executor.cli.lifecycle", "kill": "executor.cli.lifecycle",
    "rm": "executor.cli.lifecycle", "wait": "executor.cli.lifecycle",
    "demo": "executor.cli.demo",
    "doctor": "executor.cli.doctor",
    "gc": "executor.cli.gc",
    "pool": "executor.cli.pool",
    "pull": "executor.cli.images", "images": "executor.cli.images",
    "completion": "executor.cli.completion",
}
#: commands whose process ends without the interpreter's teardown once they return (stdio
#: and logging flushed, linger's connections held by its child as before): the module and GC
#: clean-up of a run's ~200 modules took ~8 ms of every cold ``hypervm run`` (issue 17: 10.5
#: vs 2.2 ms p50 from the exit to the parent's wait, 8 runs each at load ~2.4); a thread that
#: is not a daemon keeps the interpreter's exit, which waits for it
ENDS_NOW = frozenset({"run"})
#: modules that contribute sub-commands, in help order
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


def command_modules(argv: list[str] | None) -> tuple[str, ...]:
    """The modules a parser for ``argv`` needs: the named command's, or all (help, errors)."""
    words = [arg for arg in argv or () if not arg.startswith("-")]
    if words and words[0] in COMMANDS:
        return (COMMANDS[words[0]],)
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``argv`` only of the command it names."""
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
    for name in command_modules(argv):
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
    if argv is None:
        gc.disable()  # this process's start-up: end_of_startup turns it back on
    command: str | None = None
    try:
        code, command = _main(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors 125
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_HYPERVM)
    if argv is None and (linger.pending() or (command in ENDS_NOW and not _other_threads())):
        logging.shutdown()  # what the interpreter's exit would flush (handlers of ours)
        linger.exit_now(code)
    return code


def _other_threads() -> bool:
    """A thread the interpreter's exit would wait for (not a daemon) is still running."""
    return any(t is not threading.main_thread() and not t.daemon and t.is_alive()
               for t in threading.enumerate())


def end_of_startup() -> None:
    """What this process's start-up made (modules, classes, functions: ~100k objects of a
    ``hypervm run``'s imports) lives until it exits: into the cyclic GC's permanent generation
    (``gc.freeze``, never scanned again), and the GC back on for what the command makes. The
    GC is off until here (``gc.disable`` at the process's start): its ~33 collections among
    those objects took ~4-6 ms before a cold run's createXML (issue 17); the order is the one
    ``gc.freeze``'s documentation gives (disable early, freeze, enable)."""
    gc.freeze()
    gc.enable()


def _main(argv: list[str] | None) -> tuple[int, str | None]:
    """The command's exit status and the command's name (None: none given)."""
    process = argv is None
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if process:
        end_of_startup()
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="hypervm: %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_HYPERVM, None
    command = getattr(args, "command", None)
    try:
        load_config_file(os.environ)
        return int(args.func(args)), command
    except HyperVMError as e:
        print(f"hypervm: error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", EXIT_HYPERVM), command
    except KeyboardInterrupt:
        return 130, command
    except BrokenPipeError:
        # the reader went away (``hypervm images | head``): exit quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141, command


if __name__ == "__main__":
    sys.exit(main())
