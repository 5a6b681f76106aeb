"""``hypervm completion bash|zsh``: print the shell completion script (made by shtab)."""

from __future__ import annotations

import argparse
import sys

import shtab

SHELLS = ("bash", "zsh")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "completion", help="print a shell completion script",
        description="Print the completion script of SHELL on stdout: source it, or install it "
                    "where your shell looks for completions.")
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=completion_command)


def completion_command(args: argparse.Namespace) -> int:
    from executor.cli.main import build_parser  # cycle: main registers this module

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
