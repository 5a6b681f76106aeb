"""How the ``hypervm`` command line reports: exit statuses, usage errors, help with examples.

hypervm's own failures exit :data:`EXIT_HYPERVM` (125, as docker), so they never look like the
workload's status: 126 (not executable), 127 (not found) and 128+N (killed by signal N) are the
command's, as every other status the command exits with.
"""

from __future__ import annotations

import argparse
import os
import sys

#: typing.TYPE_CHECKING without importing typing (~3 ms of a cold run's start)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: exit status of every hypervm failure (bad input, usage errors, libvirt, images)
EXIT_HYPERVM = 125

#: each command's examples (its help's epilog), by command path; a module may set its own
EXAMPLES = {
    "run": (
        "hypervm run alpine:3.19 -- echo hello\n"
        "hypervm run -v /srv/data:/data:ro -e HOME --env-file app.env alpine -- ls /data\n"
        "hypervm run --cpus 1.5 --memory 1g --pull never localhost:5000/app:1\n"
        "hypervm run --rootfs ./rootfs -- /bin/sh -c 'exit 3'; echo $?   # 3"),
    "demo": "hypervm demo",
    "doctor": "hypervm doctor            # checks, then the effective configuration",
    "gc": "hypervm gc                # leftovers of dead owners\nhypervm gc --all",
    "pool": "hypervm pool serve --size 2\nhypervm pool status",
    "pool serve": "hypervm pool serve --size 2 --image alpine:3.19",
    "pool status": "hypervm pool status",
    "pull": "hypervm pull alpine:3.19\nhypervm pull docker-archive:./app.tar",
    "images": "hypervm images",
    "completion": ("hypervm completion bash > /etc/bash_completion.d/hypervm\n"
                   "hypervm completion zsh > \"${fpath[1]}/_hypervm\""),
}


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing shutil, as argparse's own
    formatter does for its width (with bz2 and lzma ~2.5 ms of every command's start, issue 17;
    a cold run imports shutil no more before its createXML): ``$COLUMNS`` when a positive
    number, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class LineFormatter(argparse.HelpFormatter):
    """Fills each line of a description or epilog on its own; indented lines (examples) are
    kept as they are. Its width is argparse's (:func:`terminal_columns`)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # deferred: help text only (argparse imports it there too); every command's start
        # imported it for this (~1 ms of a cold run before its createXML)
        import textwrap

        return "\n".join(indent + line if line.startswith(" ") else
                         textwrap.fill(line, width, initial_indent=indent,
                                       subsequent_indent=indent + "  ") or indent
                         for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors exit 125 (hypervm's own failure), not 2, and
    whose formatter is :class:`LineFormatter` unless told otherwise (its sub-commands' parsers
    too: argparse validates each argument with a formatter as it is added)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", LineFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_HYPERVM, f"{self.prog}: error: {message}\n")


class VersionAction(argparse.Action):
    """``--version``: reads the package metadata only when asked (importlib.metadata costs
    ~20 ms at every start otherwise)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print hypervm's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"hypervm {version()}")
        parser.exit(0)


def version() -> str:
    """The installed package's version (setup.cfg), or ``unknown`` when run from a bare tree."""
    from importlib import metadata  # optional: only --version needs it (~20 ms to import)

    try:
        return metadata.version("hypervm")
    except metadata.PackageNotFoundError:
        return "unknown"


def subcommands(parser: argparse.ArgumentParser,
                path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (command path, parser) below ``parser``, e.g. ``("pool serve", ...)``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                found.append((full, sub))
                found.extend(subcommands(sub, full))
    return found


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give every command without an epilog its examples from :data:`EXAMPLES`."""
    for path, sub in subcommands(parser):
        sub.formatter_class = LineFormatter
        if sub.epilog is None and path in EXAMPLES:
            lines = "\n".join(f"  {line}" for line in EXAMPLES[path].splitlines())
            sub.epilog = f"examples:\n{lines}"
