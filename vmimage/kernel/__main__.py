"""``python -m vmimage.kernel build|path``: build (if missing) or locate the guest kernel.

Prints the kernel's path on stdout; ``build`` is what ``make kernel`` runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from executor.config import config_from_env
from executor.errors import HyperVMError
from vmimage.kernel import ensure_kernel, find_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmimage.kernel",
                                     description="Build or locate the HyperVM guest kernel.")
    parser.add_argument("action", choices=("build", "path"),
                        help="build: build if missing, then print the path; path: print it or fail")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="vmimage.kernel: %(message)s")
    try:
        cfg = config_from_env()
        kernel = ensure_kernel(cfg) if args.action == "build" else find_kernel(cfg)
    except HyperVMError as e:
        print(f"vmimage.kernel: error: {e}", file=sys.stderr)
        return 1
    print(kernel.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
