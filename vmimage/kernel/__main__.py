"""``python -m vmimage.kernel build|path``: build (if missing) or locate the guest kernel.

Prints the kernel's path on stdout; ``build`` is what ``make kernel`` runs.
"""

from __future__ import annotations

import sys

from vmimage import buildcli
from vmimage.kernel import ensure_kernel, find_kernel


def main(argv: list[str] | None = None) -> int:
    return buildcli.main("vmimage.kernel", "Build or locate the HyperVM guest kernel.",
                         ensure_kernel, find_kernel, argv)


if __name__ == "__main__":
    sys.exit(main())
