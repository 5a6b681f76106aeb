"""The ``build|path`` command line of an artefact built once per machine (``python -m
vmimage.kernel``, ``python -m vmimage.qemu``): prints the artefact's path on stdout."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypervm.config import HostConfig, config_from_env
from hypervm.errors import HyperVMError


def main(prog: str, description: str, ensure: Callable[[HostConfig], Any],
         find: Callable[[HostConfig], Any], argv: list[str] | None = None) -> int:
    """``ensure``/``find`` return an object with a ``path``; errors become one line + status 1."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("action", choices=("build", "path"),
                        help="build: build if missing, then print the path; path: print the "
                             "path of what is used now, or fail")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"{prog}: %(message)s")
    try:
        cfg = config_from_env()
        path: Path = (ensure if args.action == "build" else find)(cfg).path
    except HyperVMError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
