"""How the ``hypervm`` command line reports: exit statuses, usage errors, help with examples.

hypervm's own failures exit :data:`EXIT_HYPERVM` (125, as docker), so they never look like the
workload's status: 126 (not executable), 127 (not found) and 128+N (killed by signal N) are the
command's, as every other status the command exits with.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import NoReturn

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


class LineFormatter(argparse.HelpFormatter):
    """Fills each line of a description or epilog on its own; indented lines (examples) are
    kept as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line if line.startswith(" ") else
                         textwrap.fill(line, width, initial_indent=indent,
                                       subsequent_indent=indent + "  ") or indent
                         for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors exit 125 (hypervm's own failure), not 2."""

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
