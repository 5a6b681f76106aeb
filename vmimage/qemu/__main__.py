"""``python -m vmimage.qemu build|path``: build HyperQEMU (if missing), or print the path of the
QEMU HyperVMs run on now. ``build`` is what ``make qemu`` runs.
"""

from __future__ import annotations

import sys

from vmimage import buildcli
from vmimage.qemu import ensure_qemu, find_qemu


def main(argv: list[str] | None = None) -> int:
    return buildcli.main("vmimage.qemu", "Build or locate the QEMU HyperVMs run on.",
                         ensure_qemu, find_qemu, argv)


if __name__ == "__main__":
    sys.exit(main())
