"""``python -m vmimage.qemu build|path``: build (if missing) or locate the QEMU HyperVMs run on.

Prints the emulator's path on stdout; ``build`` is what ``make qemu`` runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from executor.config import config_from_env
from executor.errors import HyperVMError
from vmimage.qemu import ensure_qemu, find_qemu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmimage.qemu",
                                     description="Build or locate the QEMU HyperVMs run on.")
    parser.add_argument("action", choices=("build", "path"),
                        help="build: build HyperQEMU if missing, then print the path; "
                             "path: print the QEMU VMs use now")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="vmimage.qemu: %(message)s")
    try:
        cfg = config_from_env()
        qemu = ensure_qemu(cfg) if args.action == "build" else find_qemu(cfg)
    except HyperVMError as e:
        print(f"vmimage.qemu: error: {e}", file=sys.stderr)
        return 1
    print(qemu.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
